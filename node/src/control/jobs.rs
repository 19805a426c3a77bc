//! The jobs' routes: run, list, status, output, cancel; the swarm's slots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use shoal_overlay::Key;
use shoal_resources::compute::{JobKind, JobSpec};

use super::api::*;
use super::{ApiError, AppState, failure, node_failure, parse_key};
use crate::jobs::protocol::check_input_name;
use crate::jobs::{Submit, SubmitError};

/// Longest a call for output waits for more.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Jobs listed unless asked for more.
const LISTED: usize = 1000;
/// Jobs listed at most.
const MAX_LISTED: usize = 100_000;
/// Jobs one `POST /v1/jobs/many` may ask for.
pub(super) const MAX_REPEAT: u32 = 100_000;
/// Placements of one batch under way at once.
const PLACING_AT_ONCE: usize = 16;

/// The routes of this module.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/jobs", get(list).post(run))
        .route("/v1/jobs/many", axum::routing::post(many))
        .route("/v1/jobs/{id}", get(status_route).delete(cancel))
        .route("/v1/jobs/{id}/output", get(output))
        .route("/v1/jobs/{id}/checkpoint", axum::routing::post(checkpoint))
        .route("/v1/jobs/{id}/move", axum::routing::post(move_job))
        .route("/v1/drain", axum::routing::post(drain))
        .route("/v1/slots", get(slots))
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    failure(StatusCode::BAD_REQUEST, message)
}

/// A module or input named by the caller: an absolute path is shared
/// first; else it must be a content id.
async fn blob_of(state: &AppState, what: &str, role: &str) -> Result<Key, ApiError> {
    let path = PathBuf::from(what);
    if path.is_absolute() {
        if !path.is_file() {
            return Err(bad(format!("{role} {what}: no such file")));
        }
        return state
            .client
            .jobs()
            .share_file(path)
            .await
            .map_err(|e| bad(format!("{role} {what}: {}", crate::error::error_chain(&e))));
    }
    let id: Key = what.parse().map_err(|_| {
        bad(format!(
            "{role} {what:?} is neither a file nor a content id (64 hex digits)"
        ))
    })?;
    if !state.client.blob_store().contains(&id)
        && state.client.get_providers(id).await.map_err(node_failure)?.is_empty()
    {
        return Err(bad(format!("{role} {id}: no peer provides it")));
    }
    Ok(id)
}

/// The spec a request asks for, its module and inputs shared.
async fn spec_of(state: &AppState, body: RunRequest) -> Result<JobSpec, ApiError> {
    let module = match (&body.module, body.native) {
        (Some(_), true) => return Err(bad("a native job runs a command, not a module")),
        (None, false) => return Err(bad("a WebAssembly job needs a module")),
        (None, true) => None,
        (Some(module), false) => {
            let path = PathBuf::from(module);
            if path.is_absolute() {
                let bytes = read_module(&path).await?;
                state
                    .client
                    .jobs()
                    .check_module(&bytes)
                    .map_err(|e| bad(format!("{module}: {e}")))?;
            }
            Some(blob_of(state, module, "module").await?)
        }
    };
    let mut inputs = Vec::new();
    for (what, name) in &body.inputs {
        check_input_name(name).map_err(bad)?;
        inputs.push((blob_of(state, what, "input").await?, name.clone()));
    }
    Ok(JobSpec {
        kind: Some(if body.native { JobKind::Native } else { JobKind::Wasm }),
        module,
        args: body.args,
        env: body.env,
        inputs,
        memory: body.memory,
        timeout_ms: body.timeout_ms,
        labels: body.labels,
        replicas: body.replicas,
    })
}

fn submit_failure(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Node(e) => node_failure(e),
        other => bad(other),
    }
}

async fn run(State(state): State<Arc<AppState>>, Json(body): Json<RunRequest>) -> Result<Json<JobView>, ApiError> {
    let detach = body.detach;
    let spec = spec_of(&state, body).await?;
    let job = state
        .client
        .jobs()
        .submit(Submit { spec, detach })
        .await
        .map_err(submit_failure)?;
    let view = state
        .client
        .jobs()
        .status(job)
        .await
        .map_err(node_failure)?
        .ok_or_else(|| failure(StatusCode::INTERNAL_SERVER_ERROR, "the job placed is not known"))?;
    Ok(Json(view))
}

/// `POST /v1/jobs/many`: `repeat` jobs of one spec (its module and inputs
/// shared once), placed several at a time; their ids, in order of
/// placement. The first that cannot be placed stops the rest.
async fn many(
    State(state): State<Arc<AppState>>,
    Json(body): Json<ManyRequest>,
) -> Result<Json<Vec<String>>, ApiError> {
    use futures::StreamExt;
    if body.repeat == 0 || body.repeat > MAX_REPEAT {
        return Err(bad(format!("repeat is 1 to {MAX_REPEAT}")));
    }
    let spec = spec_of(&state, body.job).await?;
    let client = state.client.clone();
    let mut placed = futures::stream::iter(0..body.repeat)
        .map(|_| {
            let (client, spec) = (client.clone(), spec.clone());
            async move { client.jobs().submit(Submit { spec, detach: true }).await }
        })
        .buffer_unordered(PLACING_AT_ONCE);
    let mut ids = Vec::with_capacity(body.repeat as usize);
    while let Some(job) = placed.next().await {
        ids.push(job.map_err(submit_failure)?.to_string());
    }
    Ok(Json(ids))
}

async fn read_module(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(crate::jobs::executor::MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > crate::jobs::executor::MAX_MODULE_BYTES {
        return Err(bad(format!(
            "{}: a module over {} bytes",
            path.display(),
            crate::jobs::executor::MAX_MODULE_BYTES
        )));
    }
    Ok(bytes)
}

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

/// `GET /v1/jobs?limit=N`: the newest N (default 1000) jobs here.
async fn list(State(state): State<Arc<AppState>>, Query(query): Query<ListQuery>) -> Json<Vec<JobView>> {
    Json(state.client.jobs().list(query.limit.unwrap_or(LISTED).min(MAX_LISTED)))
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    /// Whether to read the job's history from its home too.
    #[serde(default)]
    history: bool,
}

/// `GET /v1/jobs/{id}[?history=true]`: the job's state; with its history
/// (each placement, as its home's members recorded it) when asked.
async fn status_route(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<JobView>, ApiError> {
    let mut view = status(State(state.clone()), axum::extract::Path(id)).await?;
    if query.history {
        let job = parse_key(&view.job_id)?;
        view.history = state.client.jobs().history(job).await.map_err(node_failure)?;
    }
    Ok(view)
}

async fn status(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = parse_key(&id)?;
    state
        .client
        .jobs()
        .status(job)
        .await
        .map_err(node_failure)?
        .map(Json)
        .ok_or_else(|| {
            failure(
                StatusCode::NOT_FOUND,
                format!("no job {job} is known here or at its home"),
            )
        })
}

async fn cancel(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = parse_key(&id)?;
    state.client.jobs().cancel(job).map_err(bad)?;
    status(State(state), axum::extract::Path(id)).await
}

/// `POST /v1/jobs/{id}/checkpoint`: asks the job's executor to save its
/// `/ckpt` now (for a job this peer submitted).
async fn checkpoint(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = parse_key(&id)?;
    state.client.jobs().checkpoint(job).await.map_err(bad)?;
    status(State(state), axum::extract::Path(id)).await
}

/// `POST /v1/jobs/{id}/move`: stops the job (submitted here) where it
/// runs and places it anew from its newest checkpoint.
async fn move_job(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Json(request): Json<super::MoveRequest>,
) -> Result<Json<JobView>, ApiError> {
    let job = parse_key(&id)?;
    let to = match request.to.as_deref() {
        Some(to) => Some(
            to.parse::<libp2p::PeerId>()
                .map_err(|e| bad(format!("--to {to:?} is not a peer id: {e}")))?,
        ),
        None => None,
    };
    state.client.jobs().move_job(job, to).await.map_err(bad)?;
    status(State(state), axum::extract::Path(id)).await
}

/// `POST /v1/drain`: this peer takes no new jobs, and moves every job
/// it runs or queues to other peers.
async fn drain(State(state): State<Arc<AppState>>) -> Result<Json<Vec<super::Drained>>, ApiError> {
    let moved = state.client.jobs().drain().await.map_err(bad)?;
    Ok(Json(
        moved
            .into_iter()
            .map(|(job, result)| match result {
                Ok((peer, n)) => super::Drained {
                    job_id: job.to_string(),
                    peer: Some(peer.to_string()),
                    token: Some(n),
                    error: None,
                },
                Err(why) => super::Drained {
                    job_id: job.to_string(),
                    peer: None,
                    token: None,
                    error: Some(why),
                },
            })
            .collect(),
    ))
}

#[derive(serde::Deserialize)]
struct OutputQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn output(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(query): Query<OutputQuery>,
) -> Result<Json<OutputView>, ApiError> {
    let job = parse_key(&id)?;
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    match state.client.jobs().output(job, query.from, wait).await {
        Ok(Some(view)) => Ok(Json(view)),
        Ok(None) => Err(failure(
            StatusCode::NOT_FOUND,
            format!("no output of job {job}: it is not known here, and its record names no executor that keeps it"),
        )),
        Err(e) => Err(node_failure(e)),
    }
}

async fn slots(State(state): State<Arc<AppState>>) -> Result<Json<Vec<SlotView>>, ApiError> {
    state.client.jobs().slots().await.map(Json).map_err(node_failure)
}
