//! The control API: HTTP/JSON on loopback, guarded by a token.
//!
//! `shoal up` serves it and writes its address and a fresh token into
//! `control.json` in the data directory (readable by the owner only); every
//! other subcommand reads that file and calls the API. Requests carry
//! `Authorization: Bearer TOKEN`; answers are JSON, errors `{"error": "..."}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use tokio::sync::Notify;

use crate::Client;

/// File in the data directory with the API's address and token.
pub const CONTROL_FILE: &str = "control.json";

/// Where the API listens and the token it wants.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlInfo {
    /// The loopback address.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: String,
}

/// A peer as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    /// The libp2p peer id.
    pub peer_id: String,
    /// The overlay key.
    pub key: String,
    /// Known addresses.
    pub addrs: Vec<String>,
    /// In `GET /v1/peers`: the peer failed repeatedly and is left out of
    /// lookups until it answers again (probed now and then, dropped after
    /// about 80 minutes). Always false in lookup results.
    #[serde(default)]
    pub stale: bool,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The peer id.
    pub peer_id: String,
    /// The overlay key.
    pub key: String,
    /// Listen addresses, each ending in `/p2p/PEER_ID`.
    pub listening: Vec<String>,
    /// Peers in the routing table.
    pub peers: usize,
    /// Records held for others (values and providers).
    pub records: usize,
    /// The swarm key's fingerprint in a private swarm; none in an open one.
    pub swarm: Option<String>,
}

/// Body of `POST /v1/lookup` and `POST /v1/record/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRequest {
    /// 64 hex digits.
    pub key: String,
}

/// Body of `POST /v1/record/put`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutRequest {
    /// 64 hex digits.
    pub key: String,
    /// The value, as text.
    pub value: String,
}

/// `POST /v1/lookup`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LookupView {
    /// The closest peers that answered, closest first.
    pub peers: Vec<PeerView>,
    /// Hops to the closest (see BENCHMARKS.md).
    pub hops: u8,
    /// Requests sent.
    pub requests: u32,
    /// Milliseconds from start to result.
    pub duration_ms: f64,
}

/// `POST /v1/record/put`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutView {
    /// Home members that confirmed.
    pub stored: usize,
}

/// `POST /v1/record/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordView {
    /// Whether a record was found.
    pub found: bool,
    /// Its value as text (lossy for non-UTF-8 bytes).
    pub value: Option<String>,
    /// Its version.
    pub seq: Option<u64>,
}

/// Most keys one `POST /v1/provide` may announce.
pub const MAX_PROVIDE_KEYS: usize = 100_000;

/// Body of `POST /v1/provide`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProvideRequest {
    /// Keys, 64 hex digits each.
    pub keys: Vec<String>,
}

/// `POST /v1/provide`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProvideView {
    /// Keys announced.
    pub keys: usize,
    /// Keys every home member confirmed.
    pub stored_everywhere: usize,
    /// Keys no home member confirmed.
    pub unconfirmed: usize,
    /// Lookups it took.
    pub lookups: u32,
    /// Store messages sent.
    pub stores: u32,
    /// Milliseconds from start to the last answer.
    pub duration_ms: f64,
}

struct AppState {
    client: Client,
    token: String,
    shutdown: Arc<Notify>,
    /// Requests being answered; past [`MAX_REQUESTS`] the API says busy.
    requests: Arc<tokio::sync::Semaphore>,
    downloads: std::sync::Mutex<Jobs<String>>,
    shares: std::sync::Mutex<Jobs<ShareView>>,
}

/// Requests the API answers at once; more are told to come back.
pub const MAX_REQUESTS: usize = 64;
/// Largest request body in general (a key, a path, a ticket).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest body of `POST /v1/provide`: 100,000 keys as JSON are about 7 MB.
pub const MAX_PROVIDE_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Finished jobs (downloads, shares) kept for their callers to read, at
/// most, of each kind.
const KEPT_JOBS: usize = 256;

/// Long operations (downloads, shares) run as numbered jobs that the CLI
/// polls: every poll is a short call, so a daemon that stops answering is
/// noticed within a call's timeout, however long the job.
struct Jobs<T> {
    next: u64,
    running: std::collections::BTreeMap<u64, Arc<Job<T>>>,
}

impl<T> Default for Jobs<T> {
    fn default() -> Self {
        Jobs {
            next: 0,
            running: std::collections::BTreeMap::new(),
        }
    }
}

impl<T> Jobs<T> {
    /// Numbers `job` and keeps it, dropping the oldest past [`KEPT_JOBS`].
    fn add(&mut self, job: Arc<Job<T>>) -> u64 {
        self.next += 1;
        while self.running.len() >= KEPT_JOBS {
            let Some(oldest) = self.running.keys().next().copied() else {
                break;
            };
            self.running.remove(&oldest);
        }
        self.running.insert(self.next, job);
        self.next
    }
}

/// Job number `n` of `jobs`.
fn numbered<T>(jobs: &std::sync::Mutex<Jobs<T>>, n: u64, kind: &str) -> Result<Arc<Job<T>>, Failure> {
    jobs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .running
        .get(&n)
        .cloned()
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("no {kind} {n}")))
}

struct Job<T> {
    /// What it works on: a content id, or a path.
    label: String,
    progress: Arc<crate::files::Progress>,
    /// `Some(Ok(..))` once done, `Some(Err(..))` on failure.
    outcome: std::sync::Mutex<Option<Result<T, String>>>,
    /// Stops it (`DELETE /v1/downloads/N`).
    abort: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl<T: Clone + Send + 'static> Job<T> {
    fn new(label: String) -> Arc<Self> {
        Arc::new(Job {
            label,
            progress: Arc::default(),
            outcome: std::sync::Mutex::new(None),
            abort: std::sync::Mutex::new(None),
        })
    }

    fn outcome(&self) -> Option<Result<T, String>> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `work` to its end and keeps its outcome. In a task of its own,
    /// so that a panic in it still ends the job with an answer instead of
    /// leaving its caller polling.
    fn run<F>(self: &Arc<Self>, work: F, cancelled: String)
    where
        F: std::future::Future<Output = Result<T, crate::NodeError>> + Send + 'static,
    {
        let job = self.clone();
        tokio::spawn(async move {
            let inner = tokio::spawn(work);
            *job.abort.lock().unwrap_or_else(|p| p.into_inner()) = Some(inner.abort_handle());
            let outcome = match inner.await {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) if e.is_cancelled() => Err(cancelled),
                Err(e) => Err(format!("it failed inside the daemon ({e}); see its log")),
            };
            *job.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        });
    }
}

/// `GET /v1/shares/N`, and the answer to `POST /v1/share`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareJobView {
    /// The share's number.
    pub share: u64,
    /// The file or directory shared.
    pub path: String,
    /// Bytes to read in all.
    pub total: u64,
    /// Bytes read (and hashed) so far.
    pub read: u64,
    /// Whether it ended.
    pub done: bool,
    /// What it made, once done.
    pub result: Option<ShareView>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Body of `POST /v1/share`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareRequest {
    /// An absolute path to a file.
    pub path: String,
    /// Serve it from where it is instead of copying it into the store.
    #[serde(default)]
    pub in_place: bool,
}

/// `POST /v1/share`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareView {
    /// The content id (BLAKE3, as `b3sum` prints it).
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// A ticket: the id and this peer's addresses.
    pub ticket: String,
}

/// Body of `POST /v1/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GetRequest {
    /// A content id (64 hex digits) or a ticket.
    pub target: String,
    /// Where to write the file (absolute); none: keep it in the store only.
    pub out: Option<String>,
}

/// `GET /v1/downloads/N`, and the answer to `POST /v1/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DownloadView {
    /// The download's number.
    pub download: u64,
    /// The content id.
    pub id: String,
    /// Bytes in all (0 until known).
    pub size: u64,
    /// Bytes verified so far.
    pub verified: u64,
    /// Of those, bytes a saved partial download held when this one started.
    #[serde(default)]
    pub resumed: u64,
    /// Content bytes received from providers so far, verified or not.
    #[serde(default)]
    pub fetched: u64,
    /// Providers still delivering.
    pub providers: usize,
    /// Whether it ended.
    pub done: bool,
    /// Where the file was written, once done.
    pub out: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Body of `POST /v1/pin` and `POST /v1/unpin`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PinRequest {
    /// The content id.
    pub id: String,
    /// Copies the home keeps (pin only; default 3).
    pub replicas: Option<u8>,
}

/// One blob in `GET /v1/blobs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobView {
    /// The content id.
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// The file it is served from in place, if so.
    pub in_place: Option<String>,
    /// Served in place, and that file changed or went away since: it can no
    /// longer be served, and `get` or a pin duty fetches it again.
    #[serde(default)]
    pub changed: bool,
    /// Kept for its home (exempt from garbage collection).
    pub pinned: bool,
    /// A download in progress or interrupted (`get` again resumes it): it
    /// takes its whole size from the quota already.
    pub partial: bool,
}

/// `POST /v1/down`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopping {
    /// Always true: the daemon stops.
    pub stopping: bool,
}

type Failure = (StatusCode, Json<serde_json::Value>);

fn failure(status: StatusCode, message: impl std::fmt::Display) -> Failure {
    (status, Json(serde_json::json!({ "error": message.to_string() })))
}

/// Every request passes here first: the token is checked before anything
/// of the request's body is read, then a place among the requests answered
/// at once is taken (or the caller is told the daemon is busy).
async fn authorize(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit, so timing does not reveal a prefix.
    let ok = given.is_some_and(|g| {
        g.len() == state.token.len()
            && g.bytes()
                .zip(state.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !ok {
        return failure(StatusCode::UNAUTHORIZED, "missing or wrong token (see control.json)").into_response();
    }
    let Ok(_place) = state.requests.clone().try_acquire_owned() else {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the daemon is answering {MAX_REQUESTS} requests already; try again shortly"),
        )
        .into_response();
    };
    next.run(request).await
}

fn parse_key(text: &str) -> Result<Key, Failure> {
    text.parse::<Key>()
        .map_err(|e| failure(StatusCode::BAD_REQUEST, format!("bad key {text:?}: {e}")))
}

/// A node error as an HTTP answer: the caller's fault (a bad value, path
/// or pin) is 400, the rest 503.
fn node_failure(e: crate::NodeError) -> Failure {
    use crate::NodeError as E;
    let status = match &e {
        E::Command(_) | E::Pin(_) | E::Store(shoal_resources::store::StoreError::Unreadable { .. }) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    failure(status, e)
}

fn view(peer: &shoal_overlay::PeerInfo<crate::NodeAddr>) -> PeerView {
    PeerView {
        peer_id: peer.addr.peer.to_string(),
        key: peer.key.to_string(),
        addrs: peer.addr.addrs.iter().map(ToString::to_string).collect(),
        stale: false,
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Status>, Failure> {
    let client = &state.client;
    let listening = client.listening().await.map_err(node_failure)?;
    let peers = client.peers().await.map_err(node_failure)?.len();
    let records = client.records_held().await.map_err(node_failure)?;
    Ok(Json(Status {
        peer_id: client.peer_id().to_string(),
        key: client.key().to_string(),
        listening: listening.iter().map(ToString::to_string).collect(),
        peers,
        records,
        swarm: client.swarm_fingerprint().map(str::to_string),
    }))
}

async fn peers(State(state): State<Arc<AppState>>) -> Result<Json<Vec<PeerView>>, Failure> {
    let table = state.client.routing_table().await.map_err(node_failure)?;
    let peers = table.iter().map(|(peer, stale)| PeerView {
        stale: *stale,
        ..view(peer)
    });
    Ok(Json(peers.collect()))
}

async fn lookup(State(state): State<Arc<AppState>>, Json(body): Json<KeyRequest>) -> Result<Json<LookupView>, Failure> {
    let key = parse_key(&body.key)?;
    let lookup = state.client.find_node(key).await.map_err(node_failure)?;
    Ok(Json(LookupView {
        peers: lookup.peers.iter().map(view).collect(),
        hops: lookup.stats.hops,
        requests: lookup.stats.requests,
        duration_ms: lookup.stats.duration.as_secs_f64() * 1e3,
    }))
}

async fn put(State(state): State<Arc<AppState>>, Json(body): Json<PutRequest>) -> Result<Json<PutView>, Failure> {
    let key = parse_key(&body.key)?;
    let stored = state
        .client
        .put_value(key, body.value.into_bytes())
        .await
        .map_err(node_failure)?;
    Ok(Json(PutView { stored }))
}

async fn get_record(
    State(state): State<Arc<AppState>>,
    Json(body): Json<KeyRequest>,
) -> Result<Json<RecordView>, Failure> {
    let key = parse_key(&body.key)?;
    let record = state.client.get_value(key).await.map_err(node_failure)?;
    Ok(Json(RecordView {
        found: record.is_some(),
        value: record.as_ref().map(|r| String::from_utf8_lossy(&r.value).into_owned()),
        seq: record.map(|r| r.seq),
    }))
}

async fn provide(
    State(state): State<Arc<AppState>>,
    Json(body): Json<ProvideRequest>,
) -> Result<Json<ProvideView>, Failure> {
    if body.keys.is_empty() || body.keys.len() > MAX_PROVIDE_KEYS {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            format!("give between 1 and {MAX_PROVIDE_KEYS} keys, not {}", body.keys.len()),
        ));
    }
    let keys = body.keys.iter().map(|k| parse_key(k)).collect::<Result<Vec<_>, _>>()?;
    let done = state.client.provide(keys).await.map_err(node_failure)?;
    Ok(Json(ProvideView {
        keys: done.keys,
        stored_everywhere: done.stored_everywhere,
        unconfirmed: done.unconfirmed,
        lookups: done.lookups,
        stores: done.stores,
        duration_ms: done.duration.as_secs_f64() * 1e3,
    }))
}

async fn providers(
    State(state): State<Arc<AppState>>,
    Json(body): Json<KeyRequest>,
) -> Result<Json<Vec<PeerView>>, Failure> {
    let key = parse_key(&body.key)?;
    let found = state.client.get_providers(key).await.map_err(node_failure)?;
    Ok(Json(found.iter().map(view).collect()))
}

async fn share(
    State(state): State<Arc<AppState>>,
    Json(body): Json<ShareRequest>,
) -> Result<Json<ShareJobView>, Failure> {
    let path = PathBuf::from(&body.path);
    // The daemon's working directory is nobody's business.
    if !path.is_absolute() {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not an absolute path (the CLI sends absolute ones)", body.path),
        ));
    }
    let how = if body.in_place {
        shoal_resources::store::Import::InPlace
    } else {
        shoal_resources::store::Import::Copy
    };
    let job = Job::new(body.path.clone());
    let n = state.shares.lock().unwrap_or_else(|p| p.into_inner()).add(job.clone());
    let (client, progress) = (state.client.clone(), job.progress.clone());
    job.run(
        async move {
            let (info, ticket) = client.files().share_counted(path, how, progress).await?;
            Ok(ShareView {
                id: info.id.to_string(),
                size: info.size,
                ticket: ticket.to_text(),
            })
        },
        "cancelled".into(),
    );
    Ok(Json(share_view(n, &job)))
}

fn share_view(n: u64, job: &Job<ShareView>) -> ShareJobView {
    use std::sync::atomic::Ordering::Relaxed;
    let outcome = job.outcome();
    ShareJobView {
        share: n,
        path: job.label.clone(),
        total: job.progress.size.load(Relaxed),
        read: job.progress.verified.load(Relaxed),
        done: outcome.is_some(),
        result: outcome.clone().and_then(Result::ok),
        error: outcome.and_then(Result::err),
    }
}

/// `GET /v1/shares/N`: how share N is going.
async fn share_status(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(n): axum::extract::Path<u64>,
) -> Result<Json<ShareJobView>, Failure> {
    let job = numbered(&state.shares, n, "share")?;
    Ok(Json(share_view(n, &job)))
}

fn download_view(n: u64, d: &Job<String>) -> DownloadView {
    use std::sync::atomic::Ordering::Relaxed;
    let outcome = d.outcome();
    DownloadView {
        download: n,
        id: d.label.clone(),
        size: d.progress.size.load(Relaxed),
        verified: d.progress.verified.load(Relaxed),
        resumed: d.progress.resumed.load(Relaxed),
        fetched: d.progress.fetched.load(Relaxed),
        providers: d.progress.providers.load(Relaxed),
        done: outcome.is_some(),
        out: outcome.clone().and_then(Result::ok).filter(|o| !o.is_empty()),
        error: outcome.and_then(Result::err),
    }
}

async fn get_blob(
    State(state): State<Arc<AppState>>,
    Json(body): Json<GetRequest>,
) -> Result<Json<DownloadView>, Failure> {
    let target = body.target.trim();
    let (id, ticket) = if target.starts_with(shoal_resources::ticket::TICKET_PREFIX) {
        let ticket = shoal_resources::Ticket::parse(target)
            .map_err(|e| failure(StatusCode::BAD_REQUEST, format!("malformed ticket: {e}")))?;
        (ticket.blob.id, Some(ticket))
    } else {
        (parse_key(target)?, None)
    };
    let out = body.out.map(PathBuf::from);
    if let Some(out) = &out {
        if !out.is_absolute() {
            return Err(failure(StatusCode::BAD_REQUEST, "the output path must be absolute"));
        }
        // Said now, not after the whole download.
        if let Some(parent) = out.parent()
            && !parent.is_dir()
        {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} is not a directory: create it first, or name another -o",
                    parent.display()
                ),
            ));
        }
    }
    let job = Job::new(id.to_string());
    let n = state
        .downloads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(job.clone());
    let (client, progress) = (state.client.clone(), job.progress.clone());
    job.run(
        async move {
            client.files().download(id, ticket, progress, out.clone()).await?;
            Ok(out.map(|o| o.display().to_string()).unwrap_or_default())
        },
        format!("cancelled; what arrived is kept, and getting {id} again resumes it"),
    );
    Ok(Json(download_view(n, &job)))
}

async fn download_status(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(n): axum::extract::Path<u64>,
) -> Result<Json<DownloadView>, Failure> {
    let download = numbered(&state.downloads, n, "download")?;
    Ok(Json(download_view(n, &download)))
}

/// `DELETE /v1/downloads/N`: stops a download; what arrived is kept for a
/// later `get` of the same blob to resume from.
async fn cancel_download(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(n): axum::extract::Path<u64>,
) -> Result<Json<DownloadView>, Failure> {
    let download = numbered(&state.downloads, n, "download")?;
    if let Some(abort) = download.abort.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        abort.abort();
    }
    Ok(Json(download_view(n, &download)))
}

async fn blobs(State(state): State<Arc<AppState>>) -> Result<Json<Vec<BlobView>>, Failure> {
    let store = state.client.files().store().clone();
    let (list, partials) = tokio::task::spawn_blocking(move || {
        let partials = store
            .partials()?
            .into_iter()
            .map(|(_, id)| {
                let size = std::fs::metadata(store.part_path(&id)).map_or(0, |m| m.len());
                (id, size)
            })
            .collect::<Vec<_>>();
        let whole = store
            .list()?
            .into_iter()
            .map(|e| {
                let changed = e.in_place.is_some() && store.changed_source(&e.info.id).is_some();
                let pinned = store.is_pinned(&e.info.id);
                (e, changed, pinned)
            })
            .collect::<Vec<_>>();
        Ok::<_, shoal_resources::store::StoreError>((whole, partials))
    })
    .await
    .map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, e))?
    .map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let whole = list.into_iter().map(|(e, changed, pinned)| BlobView {
        id: e.info.id.to_string(),
        size: e.info.size,
        changed,
        in_place: e.in_place.map(|p| p.display().to_string()),
        pinned,
        partial: false,
    });
    let partial = partials.into_iter().map(|(id, size)| BlobView {
        id: id.to_string(),
        size,
        in_place: None,
        changed: false,
        pinned: false,
        partial: true,
    });
    Ok(Json(whole.chain(partial).collect()))
}

async fn pin(State(state): State<Arc<AppState>>, Json(body): Json<PinRequest>) -> Result<Json<PutView>, Failure> {
    let id = parse_key(&body.id)?;
    let stored = state
        .client
        .pins()
        .pin(id, body.replicas.unwrap_or(3))
        .await
        .map_err(node_failure)?;
    Ok(Json(PutView { stored }))
}

async fn unpin(State(state): State<Arc<AppState>>, Json(body): Json<PinRequest>) -> Result<Json<PutView>, Failure> {
    let id = parse_key(&body.id)?;
    let stored = state.client.pins().unpin(id).await.map_err(node_failure)?;
    Ok(Json(PutView { stored }))
}

async fn down(State(state): State<Arc<AppState>>) -> Response {
    state.shutdown.notify_one();
    Json(Stopping { stopping: true }).into_response()
}

/// Serves the API on a loopback port for `client`, writes `control.json`
/// into `data_dir`, and returns the file's path. `shutdown` is notified when
/// a client asks the peer to stop.
pub async fn serve(client: Client, data_dir: &Path, shutdown: Arc<Notify>) -> std::io::Result<PathBuf> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let info = ControlInfo {
        addr: listener.local_addr()?,
        token: token.clone(),
    };
    let state = Arc::new(AppState {
        client,
        token,
        shutdown,
        requests: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS)),
        downloads: std::sync::Mutex::new(Jobs::default()),
        shares: std::sync::Mutex::new(Jobs::default()),
    });
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/lookup", post(lookup))
        .route("/v1/record/put", post(put))
        .route("/v1/record/get", post(get_record))
        .route(
            "/v1/provide",
            post(provide).layer(axum::extract::DefaultBodyLimit::max(MAX_PROVIDE_BODY_BYTES)),
        )
        .route("/v1/providers", post(providers))
        .route("/v1/share", post(share))
        .route("/v1/shares/{n}", get(share_status))
        .route("/v1/get", post(get_blob))
        .route("/v1/downloads/{n}", get(download_status).delete(cancel_download))
        .route("/v1/blobs", get(blobs))
        .route("/v1/pin", post(pin))
        .route("/v1/unpin", post(unpin))
        .route("/v1/down", post(down))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state);
    let path = data_dir.join(CONTROL_FILE);
    write_private(&path, &serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("control API stopped: {e}");
        }
    });
    Ok(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
