//! Submitting a job: its blobs, its home, its first placement, and
//! following its output.
//!
//! [`Jobs::submit`] signs the job's submission, hands it to the job's home
//! (the peers nearest its key keep its tenure, `crate::quorum`), places it
//! as the home would ([`home::drive`]), and returns once an executor holds
//! it (running or queued) or it cannot be placed. A task then mirrors the
//! job's output from its executor here, following the job to the next
//! executor if the home places it again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use serde::{Deserialize, Serialize};
use shoal_overlay::{Key, PeerInfo};
use shoal_resources::compute::offer::{class_for, offer_key};
use shoal_resources::compute::{
    Candidate, JobKind, JobRecord, JobResult, JobSpec, JobState, Load, Needs, PlaceAction, PlaceError, Placed,
    Placement, SlotOffer,
};

use super::home::{self, Supervised};
use super::log::JobLog;
use super::protocol::{Answer, Event, JOBS_PROTOCOL, MAX_ANSWER_BYTES, Request, WireNeeds, check_spec};
use super::submission::Submission;
use super::{Jobs, micros};
use crate::addr::{NodeAddr, key_of_peer};
use crate::client::{Client, now};
use crate::quorum::{Kind, Reply, Wire, members_of};
use shoal_resources::compute::Supervision;
use shoal_resources::quorum::{Ending, LetGo, Timing};

/// Jobs this peer keeps having submitted, at most (the oldest go).
pub const KEPT_SUBMITTED: usize = 100_000;
/// Bytes of output the jobs kept may hold together: past it the oldest
/// ended jobs go.
pub const KEPT_LOG_BYTES: u64 = 512 << 20;
/// Additions between two counts of the bytes kept.
const COUNT_EVERY: usize = 64;
/// How long a probe may take (dial included).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a claim or a cancel may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Results of jobs placed elsewhere than where this peer placed them,
/// checked with their home per notice, at most.
const MAX_CHECKS_PER_NOTICE: usize = 8;
/// How long a move may take: the job stops, its home takes the release,
/// and it is placed anew.
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Peers that keep a job's tenure (its home), at most.
pub const HOME_SIZE: usize = 5;
/// How long the slot class's providers and the offers read are reused.
const OFFER_TTL: Duration = Duration::from_secs(10);
/// Candidates whose offers are read per placement, at most.
const MAX_CANDIDATES: usize = 20;
/// Jobs whose output is watched at once on one executor, at most.
pub const WATCHES_PER_EXECUTOR: usize = 64;
/// Files remembered as shared, at most.
const REMEMBERED_FILES: usize = 1024;

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct Submit {
    /// The job's spec (module or command, arguments, inputs, limits).
    pub spec: JobSpec,
    /// Leave the job to its home once placed: this peer does not mirror
    /// its output (read it from the executor, `shoal job logs`), and its
    /// status is read from its home. For batches of thousands.
    pub detach: bool,
}

/// Why a job could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The spec is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No peer offers a fitting slot, or none took the job.
    #[error("{error} (wanted: {wanted}){}", if refusals.is_empty() { String::new() } else { format!(": {}", refusals.join("; ")) })]
    Place {
        /// Why in short.
        error: PlaceError,
        /// What the job asked for.
        wanted: String,
        /// Each refusal heard: by whom, why.
        refusals: Vec<String>,
    },
    /// The node failed.
    #[error(transparent)]
    Node(#[from] crate::NodeError),
}

/// A job as the CLI shows it (`shoal jobs`, `shoal job status`,
/// `shoal run --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id (its key).
    pub job_id: String,
    /// `queued`, `placed`, `running`, `ended` or `cancelled`; on the
    /// executor that ran it, `lost` when it lost the job's tenure (cut
    /// off, or placed again elsewhere) before its end (`error` says why;
    /// the job's home places it again).
    pub state: String,
    /// The executor's peer id.
    pub peer: Option<String>,
    /// The lease token of the placement.
    pub token: Option<u64>,
    /// Its exit code, once ended.
    pub exit_code: Option<i32>,
    /// Why it failed, if it did not exit on its own.
    pub error: Option<String>,
    /// The directory blob of its `/out`.
    pub output: Option<String>,
    /// When it was submitted, placed, started and ended (milliseconds
    /// since the Unix epoch).
    pub queued: u64,
    /// See `queued`.
    pub placed: Option<u64>,
    /// See `queued`.
    pub started: Option<u64>,
    /// See `queued`.
    pub ended: Option<u64>,
    /// Its place in the executor's queue (1: next), while it waits.
    pub position: Option<u32>,
    /// Whether this peer submitted it (else it runs here, or was read
    /// from its home).
    pub submitted_here: bool,
    /// Each placement, oldest first, as the job's home recorded it (only
    /// when asked: `shoal job status`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PlacementView>,
}

/// One placement of a job, as its home's members recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementView {
    /// The lease token (grant number) of the placement.
    pub token: u64,
    /// The executor's peer id, if it could be found.
    pub peer: Option<String>,
    /// When the home granted it (milliseconds since the Unix epoch).
    pub placed: u64,
    /// Whether the executor ran it (its lease was renewed).
    pub ran: bool,
    /// Checkpoints the home took from this placement.
    pub checkpoints: u64,
    /// When the last of them came.
    pub last_checkpoint: Option<u64>,
    /// When it ended.
    pub ended: Option<u64>,
    /// Why: `done`, `executor lost` (crashed or cut off: its lease
    /// lapsed), `drained`, `moved`, `rebalanced` (its executor was busy
    /// while another sat idle), `released`, or `never ran` (placed again
    /// before it started); none while it lasts.
    pub why: Option<String>,
}

/// A peer's slots as `shoal slots` shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    /// The peer.
    pub peer: String,
    /// Slots free now.
    pub free: u32,
    /// Slots in all.
    pub total: u32,
    /// Memory per slot, bytes.
    pub memory: u64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The kinds of job it runs (`wasm`, `native`).
    pub kinds: Vec<String>,
    /// Jobs running.
    pub running: u32,
    /// Jobs queued.
    pub queued: u32,
}

/// A job this peer submitted.
pub(crate) struct Submitted {
    pub(crate) job: Key,
    pub(crate) log: Arc<JobLog>,
    pub(crate) record: Mutex<JobRecord>,
    /// The executor and the lease token.
    pub(crate) placed: Mutex<Option<(PeerId, u64)>>,
    pub(crate) position: Mutex<Option<u32>>,
    /// Tells the supervising task to cancel.
    pub(crate) cancel: tokio::sync::Notify,
    /// Whether this peer follows it (mirrors its output, keeps its view).
    pub(crate) followed: bool,
}

/// The jobs this peer submitted, oldest first.
#[derive(Default)]
pub(crate) struct Submissions {
    by_key: HashMap<Key, Arc<Submitted>>,
    order: VecDeque<Key>,
}

impl Submissions {
    fn add(&mut self, job: Arc<Submitted>) {
        self.order.push_back(job.job);
        self.by_key.insert(job.job, job);
        while self.order.len() > KEPT_SUBMITTED {
            let Some(old) = self.order.pop_front() else { break };
            self.by_key.remove(&old);
        }
        if self.order.len().is_multiple_of(COUNT_EVERY) {
            self.forget_bytes();
        }
    }

    /// Drops the oldest ended jobs while all logs hold more than
    /// [`KEPT_LOG_BYTES`].
    fn forget_bytes(&mut self) {
        let mut bytes: u64 = self.by_key.values().map(|s| s.log.len()).sum();
        let mut kept = VecDeque::with_capacity(self.order.len());
        while let Some(key) = self.order.pop_front() {
            let drop = bytes > KEPT_LOG_BYTES && self.by_key.get(&key).is_some_and(|s| s.log.progress().1.is_some());
            if drop {
                if let Some(s) = self.by_key.remove(&key) {
                    bytes = bytes.saturating_sub(s.log.len());
                }
            } else {
                kept.push_back(key);
            }
        }
        self.order = kept;
    }
}

/// Offers and class providers read lately.
#[derive(Default)]
pub(crate) struct OfferCache {
    classes: HashMap<Key, (std::time::Instant, Vec<PeerInfo<NodeAddr>>)>,
    offers: HashMap<Key, (std::time::Instant, Option<SlotOffer>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens a jobs stream to `peer`, sends `request` and reads one answer.
pub(crate) async fn ask(client: &Client, peer: PeerId, request: &Request, within: Duration) -> std::io::Result<Answer> {
    if peer == client.peer_id() {
        // This peer's own slots: no stream to itself.
        return match &client.compute.executor {
            Some(executor) => Ok(super::executor::answer(client, executor, peer, request.clone())),
            None => Err(std::io::Error::other("this peer offers no slots")),
        };
    }
    let _turn = client.stream_permit(peer).await;
    let mut stream = open(client, peer, request, within).await?;
    tokio::time::timeout(within, crate::codec::read_cbor(&mut stream, MAX_ANSWER_BYTES))
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))?
}

async fn open(client: &Client, peer: PeerId, request: &Request, within: Duration) -> std::io::Result<Stream> {
    let control = client.stream_control();
    let mut stream = tokio::time::timeout(within, control.open_stream(peer, JOBS_PROTOCOL))
        .await
        .map_err(|_| std::io::Error::other("timed out opening a stream"))?
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&crate::codec::encode_cbor(request)?).await?;
    stream.flush().await?;
    Ok(stream)
}

fn view_of(job: &Key, record: &JobRecord, executor: Option<PeerId>, submitted_here: bool) -> JobView {
    let ms = |at: shoal_overlay::Instant| at.as_micros() / 1000;
    let (state, exit_code, output, token) = match record.state {
        JobState::Queued => ("queued", None, None, None),
        JobState::Placed(p) => ("placed", None, None, Some(p.token)),
        JobState::Running(p) => ("running", None, None, Some(p.token)),
        JobState::Ended { by, exit_code, output } => ("ended", Some(exit_code), output, Some(by.token)),
        JobState::Cancelled => ("cancelled", Some(130), None, None),
    };
    JobView {
        job_id: job.to_string(),
        state: state.into(),
        peer: executor.map(|p| p.to_string()).or_else(|| {
            record
                .executor
                .as_ref()
                .and_then(|b| PeerId::from_bytes(b).ok())
                .map(|p| p.to_string())
        }),
        token,
        exit_code,
        error: record.error.clone(),
        output: output.map(|k| k.to_string()),
        queued: ms(record.queued_at),
        placed: record.placed_at.map(ms),
        started: record.started_at.map(ms),
        ended: record.ended_at.map(ms),
        position: None,
        submitted_here,
        history: Vec::new(),
    }
}

impl Submitted {
    /// An event from the executor (whose key is `executor`): into the log,
    /// and a first start into the record, whose writer `records` wakes.
    fn heard(&self, event: &Event, executor: Key, records: &tokio::sync::watch::Sender<u64>) {
        if let Event::Started { at } = *event
            && self.log.progress().0.is_none()
        {
            *lock(&self.position) = None;
            if let Some((_, token)) = *lock(&self.placed) {
                let by = Placed { peer: executor, token };
                let at = shoal_overlay::Instant::from_micros(at);
                let mut record = lock(&self.record);
                // The executor may start it before the placement's answer
                // reaches this peer: it was placed by then.
                if record.placed_at.is_some_and(|p| p > at) {
                    record.placed_at = Some(at.max(record.queued_at));
                }
                let _ = record.start(at, by);
            }
            records.send_modify(|n| *n += 1);
        }
        self.log.apply(event);
    }

    /// A detached job ended with `result`, committed at its home.
    fn settle(&self, result: &JobResult) {
        if self.log.progress().0.is_none() {
            self.log.apply(&Event::Started {
                at: micros(result.started_at),
            });
        }
        self.log.end(super::log::Ended {
            exit_code: result.exit_code,
            error: result.error.clone(),
            output: result.output,
            at: micros(result.ended_at),
        });
        *lock(&self.position) = None;
    }

    fn view(&self) -> JobView {
        let record = lock(&self.record).clone();
        let executor = lock(&self.placed).map(|(p, _)| p);
        let mut view = view_of(&self.job, &record, executor, true);
        // The log hears the end before the record is written: it counts.
        let (started, ended) = self.log.progress();
        if let Some(ended) = ended.filter(|_| view.state != "ended" && view.state != "cancelled") {
            view.state = "ended".into();
            view.exit_code = Some(ended.exit_code);
            view.error = ended.error;
            view.output = ended.output.map(|k| k.to_string());
            view.ended = Some(ended.at / 1000);
            view.started = view.started.or(started.map(|t| t / 1000)).or(view.ended);
        }
        if view.state == "placed" {
            view.position = *lock(&self.position);
        }
        view
    }
}

impl<'a> Jobs<'a> {
    fn compute(&self) -> &'a super::Compute {
        &self.client.compute
    }

    /// Shares the file at `path` (absolute) for a job, unless it was
    /// shared already unchanged (same size and modification time) and the
    /// store still holds it: its id.
    pub async fn share_file(self, path: std::path::PathBuf) -> Result<Key, crate::NodeError> {
        let unreadable = |e: std::io::Error| crate::NodeError::Store(e.into());
        let meta = tokio::fs::metadata(&path).await.map_err(unreadable)?;
        let stamp = (meta.len(), meta.modified().map_err(unreadable)?);
        let known = lock(&self.compute().shared).get(&path).copied();
        if let Some((len, modified, id)) = known
            && (len, modified) == stamp
            && self.client.blob_store().contains(&id)
        {
            return Ok(id);
        }
        let (info, _) = self
            .client
            .files()
            .share(path.clone(), shoal_resources::store::Import::Copy)
            .await?;
        let mut shared = lock(&self.compute().shared);
        if shared.len() >= REMEMBERED_FILES {
            shared.clear();
        }
        shared.insert(path, (stamp.0, stamp.1, info.id));
        Ok(info.id)
    }

    /// The node's WebAssembly engine (to check a module before it is
    /// shared).
    pub fn check_module(&self, bytes: &[u8]) -> Result<(), String> {
        self.compute().engine.check(bytes).map_err(|e| e.to_string())
    }

    /// Submits `what`: signs it, hands it to the job's home (the peers
    /// that keep its tenure from then on), places it, and returns its id
    /// once an executor holds it (running or queued). A task then follows
    /// its output here; the home supervises it, so it completes whether or
    /// not this peer stays.
    pub async fn submit(self, what: Submit) -> Result<Key, SubmitError> {
        let (spec, detach) = (what.spec, what.detach);
        check_spec(&spec).map_err(SubmitError::Invalid)?;
        let client = self.client;
        if usize::from(spec.replicas) > client.replication {
            return Err(SubmitError::Invalid(format!(
                "--replicas must be between 1 and {} in this swarm (the output's home is its {} closest peers)",
                client.replication, client.replication
            )));
        }
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let nonce = u64::from_le_bytes(nonce);
        let (job, submission) = Submission::sign(&client.identity, spec.clone(), nonce)
            .ok_or_else(|| SubmitError::Invalid("this peer's identity cannot sign a submission".into()))?;
        let bytes = submission.encode();
        let submitted_at = now();
        let peers = self.home_of(job).await?;
        let term = self.compute().config.lease_term;
        let timing = Timing {
            term,
            margin: term / 10,
        };
        self.join(job, &peers, timing, &bytes).await?;
        let mut supervised = Supervised {
            job,
            submission,
            bytes,
            peers: peers.clone(),
            timing,
            executors: HashMap::new(),
            to: None,
        };
        // The first placement is this peer's: the home's own supervision
        // waits a little before it reads, and takes over from there. The
        // job is new (its key has a fresh nonce): placed as grant 1 without
        // a first read (a member refuses the number if another supervisor
        // placed it meanwhile, and this one then reads).
        let supervision = Supervision::first(
            now(),
            members_of(&peers),
            timing,
            Duration::from_millis(200),
            ASK_TIMEOUT,
        );
        let (peer, n, position) = home::place_now(client, &mut supervised, supervision, 0).await?;
        let submitted = Arc::new(Submitted {
            job,
            log: Arc::default(),
            record: Mutex::new(JobRecord::new(client.key(), submitted_at)),
            placed: Mutex::new(Some((peer, n))),
            position: Mutex::new((position > 0).then_some(position)),
            cancel: tokio::sync::Notify::new(),
            followed: !detach,
        });
        {
            let mut record = lock(&submitted.record);
            let by = Placed {
                peer: key_of_peer(&peer).unwrap_or(job),
                token: n,
            };
            let _ = record.place(now(), by);
            record.executor = Some(peer.to_bytes());
        }
        lock(&self.compute().submitted).add(submitted.clone());
        if !detach {
            tokio::spawn(follow(client.downgrade(), submitted));
        }
        Ok(job)
    }

    /// The peers that keep a job's tenure: the [`HOME_SIZE`] peers nearest
    /// its key that the overlay finds (this one among them if it is that
    /// near), their addresses noted.
    async fn home_of(&self, job: Key) -> Result<Vec<PeerId>, SubmitError> {
        Ok(home::nearest_peers(self.client, job, HOME_SIZE).await?)
    }

    /// Hands the job to its home: a majority must keep it.
    async fn join(&self, job: Key, peers: &[PeerId], timing: Timing, bytes: &[u8]) -> Result<(), SubmitError> {
        let wire = Wire::Join {
            kind: Kind::Job,
            key: job,
            peers: peers.to_vec(),
            timing,
            payload: bytes.to_vec(),
        };
        let mut replies = crate::quorum::ask_each(self.client, peers, &wire, ASK_TIMEOUT);
        let (mut joined, mut refusals) = (0, Vec::new());
        while let Some((peer, reply)) = replies.next().await {
            match reply {
                Ok(Reply::Joined) => joined += 1,
                Ok(Reply::Refused(why)) => refusals.push(format!("{peer}: {why}")),
                Ok(other) => refusals.push(format!("{peer}: {other:?}")),
                Err(e) => refusals.push(format!("{peer}: {e}")),
            }
        }
        if joined < peers.len() / 2 + 1 {
            return Err(SubmitError::Invalid(format!(
                "the job's home did not take it ({joined} of {} members): {}",
                peers.len(),
                refusals.join("; ")
            )));
        }
        Ok(())
    }

    /// Candidates for `needs`: the slot class's providers and the inputs'
    /// providers, with their offers.
    pub(crate) async fn candidates(
        &self,
        needs: &Needs,
        spec: &JobSpec,
    ) -> Result<(Vec<Candidate>, HashMap<Key, PeerId>), crate::NodeError> {
        let client = self.client;
        let mut peers: HashMap<Key, PeerInfo<NodeAddr>> = HashMap::new();
        for info in self.class_providers(class_for(needs)).await? {
            peers.insert(info.key, info);
        }
        let mut holders = std::collections::HashSet::new();
        for (input, _) in &spec.inputs {
            for info in client.get_providers(*input).await? {
                holders.insert(info.key);
                peers.entry(info.key).or_insert(info);
            }
        }
        let mut chosen: Vec<PeerInfo<NodeAddr>> = peers.into_values().collect();
        // Holders first, then the rest, at most MAX_CANDIDATES in all.
        chosen.sort_by_key(|p| (!holders.contains(&p.key), p.key));
        chosen.truncate(MAX_CANDIDATES);
        let offers = futures::future::join_all(chosen.iter().map(|p| self.offer_of(p.key))).await;
        let mut by_key = HashMap::new();
        let mut candidates = Vec::new();
        for (info, offer) in chosen.into_iter().zip(offers) {
            let Some(offer) = offer else { continue };
            by_key.insert(info.key, info.addr.peer);
            client.add_addresses(info.addr.peer, info.addr.addrs.clone()).await?;
            candidates.push(Candidate {
                peer: info.key,
                offer,
                holds_inputs: holders.contains(&info.key),
            });
        }
        Ok((candidates, by_key))
    }

    async fn class_providers(&self, class: Key) -> Result<Vec<PeerInfo<NodeAddr>>, crate::NodeError> {
        if let Some((at, found)) = lock(&self.compute().offers).classes.get(&class)
            && at.elapsed() < OFFER_TTL
        {
            return Ok(found.clone());
        }
        // One lookup at a time: placements that start together wait for it
        // rather than each looking the same class up.
        let _one = self.compute().lookups.lock().await;
        if let Some((at, found)) = lock(&self.compute().offers).classes.get(&class)
            && at.elapsed() < OFFER_TTL
        {
            return Ok(found.clone());
        }
        let found = self.client.get_providers(class).await?;
        if !found.is_empty() {
            lock(&self.compute().offers)
                .classes
                .insert(class, (std::time::Instant::now(), found.clone()));
        }
        Ok(found)
    }

    async fn offer_of(&self, peer: Key) -> Option<SlotOffer> {
        if peer == self.client.key() {
            return self.compute().executor.as_ref().map(|e| e.offer().clone());
        }
        if let Some((at, offer)) = lock(&self.compute().offers).offers.get(&peer)
            && at.elapsed() < OFFER_TTL
        {
            return offer.clone();
        }
        let _one = self.compute().lookups.lock().await;
        if let Some((at, offer)) = lock(&self.compute().offers).offers.get(&peer)
            && at.elapsed() < OFFER_TTL
        {
            return offer.clone();
        }
        let offer = match self.client.get_value(offer_key(&peer)).await {
            Ok(record) => record.and_then(|r| SlotOffer::decode(&r.value)),
            Err(_) => None,
        };
        lock(&self.compute().offers)
            .offers
            .insert(peer, (std::time::Instant::now(), offer.clone()));
        offer
    }

    /// Runs the placement machine to a claimed peer: the peer, the token,
    /// the lease term and the queue position.
    pub(crate) async fn place(
        &self,
        needs: &Needs,
        spec: &JobSpec,
        job: Key,
        avoid: Option<Key>,
        to: Option<PeerId>,
        grant: &Request,
    ) -> Result<(PeerId, u32), SubmitError> {
        self.place_or_choose(needs, spec, job, avoid, to, Some(grant)).await
    }

    /// The peer the placement machine would claim for the job, probed
    /// but not claimed: a moved job's next executor, chosen before the
    /// job pauses so that it can get ready.
    pub(crate) async fn choose(
        &self,
        needs: &Needs,
        spec: &JobSpec,
        job: Key,
        avoid: Option<Key>,
    ) -> Result<PeerId, SubmitError> {
        Ok(self.place_or_choose(needs, spec, job, avoid, None, None).await?.0)
    }

    /// [`place`](Self::place), or with no `grant`, [`choose`](Self::choose).
    async fn place_or_choose(
        &self,
        needs: &Needs,
        spec: &JobSpec,
        job: Key,
        avoid: Option<Key>,
        to: Option<PeerId>,
        grant: Option<&Request>,
    ) -> Result<(PeerId, u32), SubmitError> {
        let (mut candidates, peers) = self.candidates(needs, spec).await?;
        if let Some(to) = to {
            let key = key_of_peer(&to);
            candidates.retain(|c| Some(c.peer) == key);
            if candidates.is_empty() {
                return Err(SubmitError::Invalid(format!(
                    "{to} offers no slot for the job ({})",
                    wanted(needs)
                )));
            }
        } else if candidates.len() > 1 {
            candidates.retain(|c| Some(c.peer) != avoid);
        }
        if let (Some(to), Some(grant)) = (to, grant) {
            // The peer named (a move's target, chosen and made ready
            // already): claimed at once, its grant saying whether it fits.
            let refusal = match ask(self.client, to, grant, ASK_TIMEOUT).await {
                Ok(Answer::Accepted { position }) => return Ok((to, position)),
                Ok(Answer::Refused(why)) => format!("{to} refused: {why}"),
                Ok(other) => format!("{to} answered {other:?}"),
                Err(e) => format!("{to} did not answer: {e}"),
            };
            return Err(SubmitError::Place {
                error: PlaceError::NoAnswer,
                wanted: wanted(needs),
                refusals: vec![refusal],
            });
        }
        let seed = u64::from_le_bytes(job.to_bytes()[..8].try_into().unwrap_or_default())
            ^ match grant {
                Some(Request::Grant { n, .. }) => *n,
                _ => 0,
            };
        let mut placement = Placement::new(needs.clone(), self.compute().config.probes, PROBE_TIMEOUT, seed);
        placement.handle_candidates(now(), candidates);
        let wire = WireNeeds {
            kind: needs.kind,
            memory: needs.memory,
            labels: needs.labels.clone(),
        };
        let mut refusals = Vec::new();
        let mut accepted = None;
        let mut pending = FuturesUnordered::new();
        loop {
            while let Some(action) = placement.poll_action() {
                let (key, claim) = match action {
                    PlaceAction::Probe(key) => (key, false),
                    PlaceAction::Claim(key) => (key, true),
                };
                let Some(peer) = peers.get(&key).copied() else {
                    if claim {
                        placement.handle_claim(now(), key, false);
                    } else {
                        placement.handle_probe(now(), key, None);
                    }
                    continue;
                };
                let request = if claim {
                    match grant {
                        Some(grant) => grant.clone(),
                        // Chosen, not claimed.
                        None => return Ok((peer, 0)),
                    }
                } else {
                    Request::Probe(wire.clone())
                };
                let client = self.client.clone();
                pending.push(async move {
                    let within = if claim { ASK_TIMEOUT } else { PROBE_TIMEOUT };
                    (key, peer, claim, ask(&client, peer, &request, within).await)
                });
            }
            if let Some(outcome) = placement.poll_outcome() {
                return match outcome {
                    Ok(_) => accepted.ok_or_else(|| SubmitError::Invalid("the placement ended without a grant".into())),
                    Err(error) => {
                        // What was read may be stale: the next job asks afresh.
                        lock(&self.compute().offers).classes.remove(&class_for(needs));
                        Err(SubmitError::Place {
                            error,
                            wanted: wanted(needs),
                            refusals,
                        })
                    }
                };
            }
            let Some((key, peer, claim, answer)) = pending.next().await else {
                placement.handle_timeout(now());
                if placement.poll_outcome().is_none() && placement.poll_action().is_none() {
                    return Err(SubmitError::Place {
                        error: PlaceError::NoAnswer,
                        wanted: wanted(needs),
                        refusals,
                    });
                }
                continue;
            };
            match (claim, answer) {
                (
                    false,
                    Ok(Answer::Load {
                        free,
                        queued,
                        fits: true,
                        ..
                    }),
                ) => placement.handle_probe(now(), key, Some(Load { free, queued })),
                (false, _) => placement.handle_probe(now(), key, None),
                (true, Ok(Answer::Accepted { position })) => {
                    accepted = Some((peer, position));
                    placement.handle_claim(now(), key, true);
                }
                (true, Ok(Answer::Refused(why))) => {
                    refusals.push(format!("{peer} refused: {why}"));
                    placement.handle_claim(now(), key, false);
                }
                (true, Ok(other)) => {
                    refusals.push(format!("{peer} answered {other:?}"));
                    placement.handle_claim(now(), key, false);
                }
                (true, Err(e)) => {
                    refusals.push(format!("{peer} did not answer: {e}"));
                    placement.handle_claim(now(), key, false);
                }
            }
        }
    }

    /// A job this peer submitted or runs, or else its record read from its
    /// home.
    pub async fn status(self, job: Key) -> Result<Option<JobView>, crate::NodeError> {
        if let Some(view) = self.local(&job) {
            return Ok(Some(view));
        }
        // The submitter's record says what the submitter saw; the home's
        // members say what holds now (who has the job, its committed
        // result), whether or not the submitter is still there.
        let record = match self.client.get_value(job).await {
            Ok(Some(held)) => JobRecord::decode(&held.value),
            _ => None,
        };
        let home = home::read_home(self.client, job).await?;
        if record.is_none() && home.is_none() {
            return Ok(None);
        }
        let submitter = record.as_ref().map_or(job, |r| r.submitter);
        // Without the submitter's record (a detached job's submitter
        // writes none) when it was submitted is not known: the earliest
        // time known stands in for it, below.
        let unrecorded = record.is_none();
        let mut view = view_of(
            &job,
            &record.unwrap_or_else(|| JobRecord::new(submitter, now())),
            None,
            false,
        );
        let Some(home) = home else { return Ok(Some(view)) };
        let ms = |at: shoal_overlay::Instant| at.as_micros() / 1000;
        if let Some((by, result)) = home.committed() {
            view.state = "ended".into();
            view.exit_code = Some(result.exit_code);
            view.error = result.error.clone();
            view.output = result.output.map(|k| k.to_string());
            view.token = Some(by.n);
            view.started = Some(ms(result.started_at));
            view.ended = Some(ms(result.ended_at));
            view.placed = view.placed.or(view.started);
            if let Some(peer) = result.executor.as_ref().and_then(|b| PeerId::from_bytes(b).ok()) {
                view.peer = Some(peer.to_string());
            }
        } else if let Some(grantee) = home.grantee()
            && view.token != Some(grantee.n)
        {
            // Placed again since the submitter last wrote.
            view.state = "placed".into();
            view.token = Some(grantee.n);
            view.peer = home::peer_of(self.client, grantee.peer).await.map(|p| p.to_string());
            view.started = None;
            view.ended = None;
            view.exit_code = None;
        }
        if unrecorded {
            view.queued = view.placed.or(view.started).unwrap_or(view.queued);
        }
        Ok(Some(view))
    }

    /// `job`'s placements, oldest first, as the members of its home that
    /// answer recorded them (empty if none does).
    pub async fn history(self, job: Key) -> Result<Vec<PlacementView>, crate::NodeError> {
        let Some(home) = home::read_home(self.client, job).await? else {
            return Ok(Vec::new());
        };
        let ms = |at: shoal_overlay::Instant| at.as_micros() / 1000;
        let mut peers: HashMap<Key, Option<String>> = HashMap::new();
        let mut out = Vec::new();
        for t in home.history() {
            let peer = match peers.get(&t.by.peer) {
                Some(known) => known.clone(),
                None => {
                    let found = home::peer_of(self.client, t.by.peer).await.map(|p| p.to_string());
                    peers.insert(t.by.peer, found.clone());
                    found
                }
            };
            out.push(PlacementView {
                token: t.by.n,
                peer,
                placed: ms(t.granted_at),
                ran: t.acted,
                checkpoints: t.saves,
                last_checkpoint: t.saved_at.map(ms),
                ended: t.ended.map(|(at, _)| ms(at)),
                why: t.ended.map(|(_, why)| ending_text(why).to_string()),
            });
        }
        Ok(out)
    }

    /// `job` as this peer knows it (submitted or run here).
    /// Results the executor `from` committed for jobs submitted here
    /// ([`Request::Ended`]): a detached job, which nothing follows, learns
    /// its end from them. A result counts only from the executor this
    /// peer placed the job on; one from another (the job's home placed it
    /// again) is checked with the home first.
    pub(crate) fn heard_ended(&self, from: PeerId, results: Vec<(Key, Vec<u8>)>) {
        // Each check reads the job's home: a peer that names other
        // executors' jobs gets a few checked per notice, not hundreds.
        let mut checks = 0;
        for (job, bytes) in results.into_iter().take(super::protocol::MAX_NOTICES) {
            let Some(submitted) = lock(&self.compute().submitted).by_key.get(&job).cloned() else {
                continue;
            };
            if submitted.followed || submitted.log.progress().1.is_some() {
                continue;
            }
            let Some(result) = JobResult::decode(&bytes) else {
                continue;
            };
            if result.executor.as_deref() != Some(&from.to_bytes()[..]) {
                continue;
            }
            if lock(&submitted.placed).is_some_and(|(peer, _)| peer == from) {
                submitted.settle(&result);
                continue;
            }
            if checks == MAX_CHECKS_PER_NOTICE {
                continue;
            }
            checks += 1;
            let node = self.client.downgrade();
            tokio::spawn(async move {
                let Some(client) = node.upgrade() else { return };
                if let Ok(Some(home)) = home::read_home(&client, job).await
                    && let Some((_, result)) = home.committed()
                {
                    submitted.settle(&result);
                }
            });
        }
    }

    pub(crate) fn local_view(&self, job: &Key) -> Option<JobView> {
        self.local(job)
    }

    fn local(&self, job: &Key) -> Option<JobView> {
        if let Some(s) = lock(&self.compute().submitted).by_key.get(job).cloned()
            && s.followed
        {
            return Some(s.view());
        }
        let executor = self.compute().executor.as_ref()?;
        let hosted = executor.job(job)?;
        // A run that lost the job does not say where it is now: its home
        // does.
        let view = hosted_view(self.client.peer_id(), executor, job, &hosted);
        (view.state != "lost").then_some(view)
    }

    /// The jobs this peer submitted and the jobs it runs or queues, newest
    /// first (at most `limit`).
    pub fn list(self, limit: usize) -> Vec<JobView> {
        let mut views: Vec<JobView> = {
            let submitted = lock(&self.compute().submitted);
            submitted
                .order
                .iter()
                .rev()
                .take(limit)
                .filter_map(|k| submitted.by_key.get(k).cloned())
                .collect::<Vec<_>>()
        }
        .iter()
        .map(|s| s.view())
        .collect();
        if let Some(executor) = &self.compute().executor {
            for (job, hosted) in executor.hosted() {
                if !views.iter().any(|v| v.job_id == job.to_string()) {
                    views.push(hosted_view(self.client.peer_id(), executor, &job, &hosted));
                }
            }
        }
        views.truncate(limit);
        views
    }

    pub(crate) fn log_of(&self, job: &Key) -> Option<Arc<JobLog>> {
        if let Some(s) = lock(&self.compute().submitted).by_key.get(job)
            && s.followed
        {
            return Some(s.log.clone());
        }
        Some(self.compute().executor.as_ref()?.job(job)?.log.clone())
    }

    /// Reads a job's output from its executor (found through its record):
    /// a watch stream of its events from output byte `from` on.
    pub(crate) async fn remote_events(self, job: Key, from: u64) -> Result<Option<(PeerId, Stream)>, crate::NodeError> {
        // Who holds the job now, as its home says; else as its record says.
        let from_home = match home::read_home(self.client, job).await? {
            Some(home) => match home.committed() {
                Some((_, result)) => result.executor.as_ref().and_then(|b| PeerId::from_bytes(b).ok()),
                None => match home.grantee() {
                    Some(grantee) => home::peer_of(self.client, grantee.peer).await,
                    None => None,
                },
            },
            None => None,
        };
        let peer = match from_home {
            Some(peer) => peer,
            None => {
                let Some(record) = self.client.get_value(job).await? else {
                    return Ok(None);
                };
                let Some(record) = JobRecord::decode(&record.value) else {
                    return Ok(None);
                };
                let Some(peer) = record.executor.as_ref().and_then(|b| PeerId::from_bytes(b).ok()) else {
                    return Ok(None);
                };
                if let Some(key) = key_of_peer(&peer) {
                    home::peer_of(self.client, key).await;
                }
                peer
            }
        };
        let stream = open(self.client, peer, &Request::Watch { job, from }, ASK_TIMEOUT)
            .await
            .map_err(|e| crate::NodeError::Transport(format!("cannot reach the executor {peer}: {e}")))?;
        Ok(Some((peer, stream)))
    }

    /// Cancels `job`, which this peer submitted.
    pub fn cancel(self, job: Key) -> Result<(), String> {
        let submitted = lock(&self.compute().submitted).by_key.get(&job).cloned();
        match submitted {
            Some(s) if s.followed => {
                s.cancel.notify_one();
                Ok(())
            }
            Some(_) => {
                // Not followed here: ask whoever holds it now.
                let client = self.client.clone();
                tokio::spawn(async move {
                    let holder = match home::read_home(&client, job).await {
                        Ok(Some(home)) => match home.grantee() {
                            Some(grantee) => home::peer_of(&client, grantee.peer).await,
                            None => None,
                        },
                        _ => None,
                    };
                    match holder {
                        Some(peer) => {
                            if let Err(e) = ask(&client, peer, &Request::Cancel { job }, ASK_TIMEOUT).await {
                                tracing::warn!("cannot cancel job {job} on {peer}: {e}");
                            }
                        }
                        None => tracing::warn!("cannot cancel job {job}: its home names no executor"),
                    }
                });
                Ok(())
            }
            None => Err(format!(
                "job {job} was not submitted from this peer (cancel it where it was submitted)"
            )),
        }
    }

    /// The peer that holds `job`'s tenure now, as its home says; an error
    /// if it has ended or nobody holds it.
    async fn holder(&self, job: Key) -> Result<PeerId, String> {
        let holder = match home::read_home(self.client, job).await.map_err(|e| e.to_string())? {
            Some(home) if home.committed().is_some() => return Err(format!("job {job} has ended")),
            Some(home) => match home.grantee() {
                Some(grantee) => home::peer_of(self.client, grantee.peer).await,
                None => None,
            },
            None => None,
        };
        holder.ok_or_else(|| format!("job {job} is not placed on any peer now"))
    }

    /// Moves `job` (submitted here) off its executor: it stops there and
    /// runs anew on another peer (`to`, if given) from its newest
    /// checkpoint. Returns where it went and its new grant.
    pub async fn move_job(self, job: Key, to: Option<PeerId>) -> Result<(PeerId, u64), String> {
        let Some(submitted) = lock(&self.compute().submitted).by_key.get(&job).cloned() else {
            return Err(format!(
                "job {job} was not submitted from this peer (ask where it was submitted)"
            ));
        };
        let peer = self.holder(job).await?;
        if to == Some(peer) {
            return Err(format!("job {job} is on {peer} already"));
        }
        let (executor, n) = if peer == self.client.peer_id() {
            let here = self.compute().executor.as_ref().ok_or("this peer offers no slots")?;
            here.release(self.client, job, (LetGo::Moved, "moved by its submitter"), to)
                .await?
        } else {
            let request = Request::Release {
                job,
                to: to.map(|p| serde_bytes::ByteBuf::from(p.to_bytes())),
            };
            match ask(self.client, peer, &request, MOVE_TIMEOUT).await {
                Ok(Answer::Moved { peer: moved, n }) => (
                    PeerId::from_bytes(&moved).map_err(|_| format!("{peer} named no peer id"))?,
                    n,
                ),
                Ok(Answer::Refused(why)) => return Err(format!("{peer} refused: {why}")),
                Ok(other) => return Err(format!("{peer} answered {other:?}")),
                Err(e) => return Err(format!("cannot reach the executor {peer}: {e}")),
            }
        };
        *lock(&submitted.placed) = Some((executor, n));
        let mut record = lock(&submitted.record);
        let _ = record.place(
            now(),
            Placed {
                peer: key_of_peer(&executor).unwrap_or(job),
                token: n,
            },
        );
        record.executor = Some(executor.to_bytes());
        Ok((executor, n))
    }

    /// `shoal drain`: this peer takes no new jobs from now on, and every
    /// job here moves to another peer. Each job with where it went, or why
    /// it did not.
    pub async fn drain(self) -> Result<Vec<(Key, Result<(PeerId, u64), String>)>, String> {
        let here = self.compute().executor.as_ref().ok_or("this peer offers no slots")?;
        Ok(here.drain(self.client).await)
    }

    /// Asks the executor of `job` (which this peer submitted) to save the
    /// job's `/ckpt` now; returns once the job's home keeps it.
    pub async fn checkpoint(self, job: Key) -> Result<(), String> {
        if !lock(&self.compute().submitted).by_key.contains_key(&job) {
            return Err(format!(
                "job {job} was not submitted from this peer (ask where it was submitted)"
            ));
        }
        let peer = self.holder(job).await?;
        match ask(
            self.client,
            peer,
            &Request::Checkpoint { job },
            Duration::from_secs(300),
        )
        .await
        {
            Ok(Answer::Done) => Ok(()),
            Ok(Answer::Refused(why)) => Err(format!("{peer} refused: {why}")),
            Ok(other) => Err(format!("{peer} answered {other:?}")),
            Err(e) => Err(format!("cannot reach the executor {peer}: {e}")),
        }
    }

    /// The slot offers in the swarm, each with its load now.
    pub async fn slots(self) -> Result<Vec<SlotView>, crate::NodeError> {
        let client = self.client;
        let mut peers: HashMap<Key, PeerInfo<NodeAddr>> = HashMap::new();
        for kind in [JobKind::Wasm, JobKind::Native] {
            for info in client
                .get_providers(shoal_resources::compute::offer::kind_class(kind))
                .await?
            {
                peers.insert(info.key, info);
            }
        }
        let probes = peers.into_values().map(|info| async move {
            if let Some(executor) = self.compute().executor.as_ref().filter(|_| info.key == client.key()) {
                let load = executor.load();
                return Some(slot_view(
                    info.addr.peer,
                    executor.offer(),
                    load.free,
                    load.running,
                    load.queued,
                ));
            }
            client
                .add_addresses(info.addr.peer, info.addr.addrs.clone())
                .await
                .ok()?;
            let probe = Request::Probe(WireNeeds {
                kind: None,
                memory: 0,
                labels: BTreeMap::new(),
            });
            match ask(client, info.addr.peer, &probe, PROBE_TIMEOUT).await {
                Ok(Answer::Load {
                    free,
                    queued,
                    running,
                    offer: Some(offer),
                    ..
                }) => Some(slot_view(info.addr.peer, &offer, free, running, queued)),
                _ => None,
            }
        });
        let mut views: Vec<SlotView> = futures::future::join_all(probes).await.into_iter().flatten().collect();
        views.sort_by(|a, b| a.peer.cmp(&b.peer));
        Ok(views)
    }
}

/// What a job needs, as an error names it.
fn wanted(needs: &Needs) -> String {
    let mut parts = vec![match needs.kind {
        Some(JobKind::Native) => {
            "native commands (a peer runs them only with --allow-native --trust YOUR_PEER_ID)".to_string()
        }
        _ => "WebAssembly".to_string(),
    }];
    if needs.memory > 0 {
        parts.push(format!("{} bytes of memory", needs.memory));
    }
    for (k, v) in &needs.labels {
        parts.push(format!("--where {k}={v}"));
    }
    parts.join(", ")
}

fn ending_text(why: Ending) -> &'static str {
    match why {
        Ending::Committed => "done",
        Ending::Lapsed => "executor lost",
        Ending::Superseded => "never ran",
        Ending::LetGo(LetGo::Drained) => "drained",
        Ending::LetGo(LetGo::Moved) => "moved",
        Ending::LetGo(LetGo::Rebalanced) => "rebalanced",
        Ending::LetGo(LetGo::Released) => "released",
    }
}

fn slot_view(peer: PeerId, offer: &SlotOffer, free: u32, running: u32, queued: u32) -> SlotView {
    SlotView {
        peer: peer.to_string(),
        free,
        total: offer.slots,
        memory: offer.slot_memory,
        labels: offer.labels.clone(),
        kinds: offer
            .kinds
            .iter()
            .map(|k| match k {
                JobKind::Wasm => "wasm".to_string(),
                JobKind::Native => "native".to_string(),
            })
            .collect(),
        running,
        queued,
    }
}

fn hosted_view(
    here: PeerId,
    executor: &super::executor::Executor,
    job: &Key,
    hosted: &super::executor::Hosted,
) -> JobView {
    let (started, ended) = hosted.log.progress();
    let lost = hosted.log.lost().filter(|_| ended.is_none());
    let state = match (&started, &ended, &lost) {
        (_, Some(_), _) => "ended",
        (_, None, Some(_)) => "lost",
        (Some(_), None, None) => "running",
        _ => "placed",
    };
    JobView {
        job_id: job.to_string(),
        state: state.into(),
        peer: Some(here.to_string()),
        token: Some(hosted.token),
        exit_code: ended.as_ref().map(|e| e.exit_code),
        error: ended.as_ref().and_then(|e| e.error.clone()).or(lost),
        output: ended.as_ref().and_then(|e| e.output).map(|k| k.to_string()),
        queued: hosted.queued_at / 1000,
        placed: Some(hosted.queued_at / 1000),
        started: started.map(|t| t / 1000),
        ended: ended.map(|e| e.at / 1000),
        position: executor.position(job).map(|p| p as u32 + 1),
        submitted_here: false,
        history: Vec::new(),
    }
}

/// Follows a submitted job to its end: mirrors its output from whichever
/// executor holds it (found again through its record when the one
/// mirrored loses it), and cancels it when asked.
async fn follow(node: crate::client::WeakClient, job: Arc<Submitted>) {
    let Some((mut peer, mut token)) = *lock(&job.placed) else {
        return;
    };
    let records = RecordWriter::start(node.clone(), job.clone());
    records.changed();
    loop {
        let Some(client) = node.upgrade() else { return };
        let mirrored = tokio::select! {
            mirrored = mirror(client.clone(), job.clone(), peer, records.wake.clone()) => mirrored,
            () = job.cancel.notified() => {
                let _ = ask(&client, peer, &Request::Cancel { job: job.job }, ASK_TIMEOUT).await;
                // The executor commits the cancel as the job's result, and
                // its end reaches the mirror.
                match tokio::time::timeout(ASK_TIMEOUT, mirror(client.clone(), job.clone(), peer, records.wake.clone())).await {
                    Ok(mirrored) => mirrored,
                    Err(_) => Err("the executor did not end the job in time".into()),
                }
            }
        };
        if mirrored.is_ok() {
            break;
        }
        // Lost where it was: its home places it again. Wait for the home
        // to name the next grant (or the end).
        let next = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(Some(home)) = home::read_home(&client, job.job).await else {
                continue;
            };
            if let Some((by, result)) = home.committed() {
                // It ran to its end under a later grant than the one
                // followed (placed again, and quick): that grant is the
                // job's placement.
                if by.n > token
                    && let Some(executor) = result.executor.as_ref().and_then(|b| PeerId::from_bytes(b).ok())
                {
                    *lock(&job.placed) = Some((executor, by.n));
                }
                job.log.end(super::log::Ended {
                    exit_code: result.exit_code,
                    error: result.error.clone(),
                    output: result.output,
                    at: micros(result.ended_at),
                });
                break None;
            }
            if let Some(grantee) = home.grantee().filter(|g| g.n > token)
                && let Some(executor) = home::peer_of(&client, grantee.peer).await
            {
                break Some((executor, grantee.n));
            }
        };
        let Some((next_peer, next_token)) = next else { break };
        (peer, token) = (next_peer, next_token);
        *lock(&job.placed) = Some((peer, token));
        let mut record = lock(&job.record);
        let _ = record.place(
            now(),
            Placed {
                peer: key_of_peer(&peer).unwrap_or(job.job),
                token,
            },
        );
        record.executor = Some(peer.to_bytes());
        drop(record);
        records.changed();
    }
    let (started, ended) = job.log.progress();
    let placed = *lock(&job.placed);
    {
        let mut record = lock(&job.record);
        if let (Some((peer, token)), Some(ended)) = (placed, ended) {
            let by = Placed {
                peer: key_of_peer(&peer).unwrap_or(job.job),
                token,
            };
            let _ = record.start(shoal_overlay::Instant::from_micros(started.unwrap_or(ended.at)), by);
            let _ = record.end(
                shoal_overlay::Instant::from_micros(ended.at),
                by,
                ended.exit_code,
                ended.output,
            );
            record.error = ended.error.map(|e| truncate(&e));
        }
    }
    *lock(&job.position) = None;
    records.changed();
    records.finish().await;
}

/// An error as a record keeps it: at most 1 KiB.
fn truncate(text: &str) -> String {
    let mut end = text.len().min(1024);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Mirrors the executor's events for `job` into its log until it ends
/// (reconnecting from where it left off); `Err` if the executor does not
/// know the job.
async fn mirror(
    client: Client,
    job: Arc<Submitted>,
    peer: PeerId,
    records: Arc<tokio::sync::watch::Sender<u64>>,
) -> Result<(), String> {
    if peer == client.peer_id() {
        return mirror_here(&client, &job, &records).await;
    }
    let turns = lock(&client.compute.watching)
        .entry(peer)
        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(WATCHES_PER_EXECUTOR)))
        .clone();
    let _turn = turns.acquire_owned().await.map_err(|e| e.to_string())?;
    loop {
        let from = job.log.len();
        let stream = open(&client, peer, &Request::Watch { job: job.job, from }, ASK_TIMEOUT).await;
        if let Ok(mut stream) = stream {
            loop {
                match crate::codec::read_cbor::<Event, _>(&mut stream, MAX_ANSWER_BYTES).await {
                    Ok(Event::Unknown) => return Err(format!("the executor {peer} no longer knows the job")),
                    Ok(Event::Lost { why }) => return Err(why),
                    Ok(event) => {
                        job.heard(&event, key_of_peer(&peer).unwrap_or(job.job), &records);
                        if matches!(event, Event::Ended { .. }) {
                            return Ok(());
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`mirror`] for a job this peer runs itself: its log here is read
/// directly.
async fn mirror_here(
    client: &Client,
    job: &Submitted,
    records: &tokio::sync::watch::Sender<u64>,
) -> Result<(), String> {
    let Some(hosted) = client.compute.executor.as_ref().and_then(|e| e.job(&job.job)) else {
        return Err("this peer no longer knows the job".into());
    };
    let mut seen = hosted.log.subscribe();
    loop {
        seen.mark_unchanged();
        let mut ended = false;
        for event in hosted.log.events_from(job.log.len(), 1 << 20) {
            if let Event::Lost { why } = event {
                return Err(why);
            }
            ended |= matches!(event, Event::Ended { .. });
            job.heard(&event, client.key(), records);
        }
        if ended {
            return Ok(());
        }
        hosted.log.changed_within(&mut seen, Duration::from_secs(5)).await;
    }
}

/// Writes a job's record at its home whenever it changed, one write at a
/// time, the latest state each time.
struct RecordWriter {
    wake: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordWriter {
    fn start(node: crate::client::WeakClient, job: Arc<Submitted>) -> Self {
        let (wake, mut woken) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut written: Option<Vec<u8>> = None;
            while woken.changed().await.is_ok() {
                let value = lock(&job.record).encode();
                if written.as_ref() == Some(&value) {
                    continue;
                }
                let Some(client) = node.upgrade() else { return };
                match client.put_value(job.job, value.clone()).await {
                    Ok(_) => written = Some(value),
                    Err(e) => tracing::warn!("cannot write the record of job {}: {e}", job.job),
                }
            }
        });
        RecordWriter {
            wake: Arc::new(wake),
            task,
        }
    }

    fn changed(&self) {
        self.wake.send_modify(|n| *n += 1);
    }

    /// Waits for the last write, then stops.
    async fn finish(self) {
        let RecordWriter { wake, task } = self;
        drop(wake);
        let _ = task.await;
    }
}
