//! The executor: a peer that offers slots. It publishes its offer, answers
//! probes, and takes *grants*: a job's supervisor (its submitter first,
//! then its home) gives it a job as grant `n` of the job's tenure, which a
//! fixed set of members keeps (`shoal_resources::quorum`). The executor
//! renews every tenure it holds with the members — batched, one request
//! per member each round — starts a job only once a majority confirmed its
//! grant, runs it (queued fairly across submitters while no slot is
//! free), commits its result to the members, and stops it the moment its
//! tenure runs out by its own clock: a cut-off executor does not keep
//! running work the home has placed elsewhere.
//!
//! The decisions are sans-IO machines: [`Tenure`] (when to renew, whether
//! the job may run, the result it must adopt) and [`FairQueue`]; this
//! module feeds them the clock and the network and runs what they decide.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use shoal_overlay::Key;
use shoal_resources::compute::engine::snapshot::SNAPSHOT_DIR;
use shoal_resources::compute::engine::{
    CHECKPOINT_EXIT, Cancel, JobDir, Limits, NativeRunner, Outcome, Pause, Run, RunError, Warm, WasmEngine,
};
use shoal_resources::compute::offer::{SlotOffer, offer_key};
use shoal_resources::compute::{FairQueue, JobKind, JobResult, JobSpec, Load, Needs, Steal};
use shoal_resources::quorum::{
    Answer as Vote, Grantee, LetGo, Outcome as Tallied, Request as Ask, Saved, Tally, Tenure, Timing,
};
use shoal_resources::store::{BlobStore, Import, Reuse};

use super::log::{Ended, JobLog};
use super::protocol::{Answer, Event, MAX_NOTICES, MAX_REQUEST_BYTES, Request};
use super::submission::Submission;
use super::{ComputeConfig, micros};
use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};
use crate::quorum::{MAX_MEMBERS, Reply, Wire, members_of};

/// Jobs waiting for a slot here, at most (each keeps its spec, at most
/// 16 KiB: 320 MiB at worst).
pub const MAX_QUEUED: usize = 20_000;
/// Ended jobs whose logs are kept for watchers, at most.
pub const KEPT_ENDED: usize = 256;
/// Bytes of output the ended jobs kept may hold together, at most.
pub const KEPT_LOG_BYTES: u64 = 256 << 20;
/// Streams of the jobs protocol served at once, at most.
const MAX_STREAMS: usize = 1024;
/// Largest module accepted, bytes.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;
/// Output bytes a watcher is sent per batch.
const WATCH_BATCH: usize = 1 << 20;
/// How long a batch of renewals or commits to one member may take.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the job's home may take to fetch and keep a checkpoint.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the tenures are looked at when nothing else wakes them.
const TEND_EVERY: Duration = Duration::from_millis(100);
/// How long a stepping module let go may take to pause and have its
/// snapshot kept by its home (then it is stopped, and goes on from its
/// last checkpoint).
const PAUSE_STOP: Duration = Duration::from_secs(60);
/// How long a job let go may take to stop.
const RELEASE_STOP: Duration = Duration::from_secs(10);
/// How often the queue is looked at for jobs to hand on (a round runs
/// at most once a second, [`Steal`]).
const STEAL_EVERY: Duration = Duration::from_millis(500);
/// Jobs a drain moves at once, at most.
const DRAINING_AT_ONCE: usize = 8;
/// Results waiting to be told to their submitters, at most (past it a
/// submitter reads the job's end from its home).
const MAX_NOTICES_WAITING: usize = 100_000;

/// A job here: waiting for its tenure, queued, running, or ended.
pub(crate) struct Hosted {
    pub(crate) spec: JobSpec,
    /// Who submitted it (from its signed submission).
    pub(crate) submitter: PeerId,
    /// The grant number: the fencing token of this placement.
    pub(crate) token: u64,
    /// The members that keep its tenure.
    members: Vec<PeerId>,
    /// The checkpoint to start from.
    from: Option<Saved>,
    /// A later snapshot to go on from if it can be fetched (see
    /// `Request::Grant`), and the peer that sent the grant.
    newer: Option<(Saved, PeerId)>,
    /// The snapshot this run saved as it paused for a move: the next
    /// grant goes on from it.
    paused_as: Mutex<Option<Saved>>,
    pub(crate) log: Arc<JobLog>,
    pub(crate) cancel: Cancel,
    /// Pauses a stepping module between two steps, to save it whole
    /// (`shoal_resources::compute::engine::snapshot`).
    pause: Pause,
    /// Held while a snapshot is asked for and shared (a periodic one, or
    /// a move's): one at a time.
    snapshotting: tokio::sync::Mutex<()>,
    /// The snapshot pages its last checkpoint shared (taken by the one
    /// sharing now): the next share does not hash those unchanged again.
    pages: Mutex<Option<Reuse>>,
    /// Why it was stopped, if the executor stopped it.
    pub(crate) stopped: Mutex<Option<String>>,
    /// Microseconds since the epoch.
    pub(crate) queued_at: u64,
    tend: Mutex<Tend>,
    /// Its signed submission, and its tenure's timing: what placing it
    /// anew takes.
    submission: Vec<u8>,
    timing: Timing,
    /// Whether its run is under way here.
    running: std::sync::atomic::AtomicBool,
}

/// A hosted job's tenure and its result on the way to the members.
struct Tend {
    tenure: Tenure,
    /// Confirmed once: started, queued, or committing what it adopted.
    admitted: bool,
    /// The result being committed: its bytes, the tally of the latest
    /// attempt, and whether that attempt was sent.
    commit: Option<(Vec<u8>, Tally, bool)>,
    /// Over: committed, lost, or dropped.
    done: bool,
    /// Checkpoints saved by this grant so far.
    saves: u64,
    /// Whether it holds a slot reserved at its grant.
    reserved: bool,
}

impl Hosted {
    /// Stops the job, saying why.
    fn stop(&self, why: &str) {
        lock(&self.stopped).get_or_insert_with(|| why.to_string());
        self.cancel.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct State {
    queue: FairQueue,
    running: u32,
    /// Grants waiting for their first confirmed renewal: each will take a
    /// slot or a place in the queue, so probes count them.
    awaiting: u32,
    /// Of those, the ones that took a free slot when granted: the slot is
    /// theirs once confirmed, whatever was granted after them.
    reserved: u32,
    hosted: BTreeMap<Key, Arc<Hosted>>,
    /// Ended jobs, oldest first (their logs stay in `hosted` until dropped).
    ended: VecDeque<Key>,
    /// Committed results to tell their submitters, by submitter.
    notices: HashMap<PeerId, Vec<(Key, Vec<u8>)>>,
    /// How many those are.
    noticed: usize,
}

/// The executor of a peer that offers slots.
pub(crate) struct Executor {
    pub(crate) config: ComputeConfig,
    pub(crate) engine: Arc<WasmEngine>,
    offer: SlotOffer,
    state: Mutex<State>,
    dir: PathBuf,
    /// Wakes the tenures' task (a grant, a go, a result to commit).
    wake: tokio::sync::Notify,
    /// This peer.
    local: PeerId,
    /// Set by `shoal drain`: no new grants, every job moved elsewhere.
    draining: std::sync::atomic::AtomicBool,
    /// Turns for [`Request::Prepare`]: [`PREPARING`] at a time.
    preparing: tokio::sync::Semaphore,
    /// An instance made ready for a moved job (see `prepare`), numbered.
    warm: Mutex<Option<(u64, Warm)>>,
}

/// How long an instance made ready for a moved job waits for it.
const WARM_FOR: Duration = Duration::from_secs(30);

/// How long a moved job's next executor waits for the snapshot its last
/// executor paused it with before it goes on from the one its home keeps.
const NEWER_WITHIN: Duration = Duration::from_secs(5);

/// How long a moved job's next executor may take to get ready (fetch and
/// compile its module, fetch its pre-copy) while the job still runs.
const PREPARE_WITHIN: Duration = Duration::from_secs(10);

/// Preparations for a moved job one executor makes at once.
const PREPARING: usize = 2;

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("slots", &self.config.slots)
            .finish_non_exhaustive()
    }
}

/// A snapshot of an executor's load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadNow {
    pub(crate) free: u32,
    pub(crate) queued: u32,
    pub(crate) running: u32,
}

/// Who a member's reply in a batch is for.
#[derive(Clone, Copy, Debug)]
enum For {
    Renewal(u64),
    Commit,
}

impl Executor {
    /// An executor keeping its jobs' directories under `data_dir/jobs`.
    pub(crate) fn new(
        config: ComputeConfig,
        engine: Arc<WasmEngine>,
        data_dir: &std::path::Path,
        local: PeerId,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("jobs");
        std::fs::create_dir_all(&dir)?;
        let mut kinds = vec![JobKind::Wasm];
        if config.allow_native {
            kinds.push(JobKind::Native);
        }
        let offer = SlotOffer {
            kinds,
            slots: config.slots,
            slot_memory: config.slot_memory,
            labels: config.labels.clone(),
        };
        Ok(Executor {
            state: Mutex::new(State {
                queue: FairQueue::new(MAX_QUEUED),
                running: 0,
                awaiting: 0,
                reserved: 0,
                hosted: BTreeMap::new(),
                ended: VecDeque::new(),
                notices: HashMap::new(),
                noticed: 0,
            }),
            config,
            engine,
            offer,
            dir,
            wake: tokio::sync::Notify::new(),
            local,
            draining: std::sync::atomic::AtomicBool::new(false),
            preparing: tokio::sync::Semaphore::new(PREPARING),
            warm: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The offer this executor publishes.
    pub(crate) fn offer(&self) -> &SlotOffer {
        &self.offer
    }

    pub(crate) fn load(&self) -> LoadNow {
        let state = self.lock();
        LoadNow {
            free: self
                .config
                .slots
                .saturating_sub(state.running.saturating_add(state.reserved)),
            queued: (state.queue.len() as u32).saturating_add(state.awaiting.saturating_sub(state.reserved)),
            running: state.running,
        }
    }

    /// The jobs here (running, queued, or ended and still kept).
    pub(crate) fn hosted(&self) -> Vec<(Key, Arc<Hosted>)> {
        self.lock().hosted.iter().map(|(k, h)| (*k, h.clone())).collect()
    }

    pub(crate) fn job(&self, job: &Key) -> Option<Arc<Hosted>> {
        self.lock().hosted.get(job).cloned()
    }

    /// Where `job` waits in the queue (0: first), if it does.
    pub(crate) fn position(&self, job: &Key) -> Option<usize> {
        self.lock().queue.position(job)
    }

    /// Why this executor would not run `spec` for `submitter`, if it would not.
    fn refusal(&self, submitter: &PeerId, spec: &JobSpec) -> Option<String> {
        let kind = spec.kind.unwrap_or(JobKind::Wasm);
        if kind == JobKind::Native {
            if !self.config.allow_native {
                return Some("this peer does not run native commands (it was not started with --allow-native)".into());
            }
            if !self.config.trust.contains(submitter) {
                return Some(format!(
                    "this peer runs native commands only for the peers it trusts, and {submitter} is not one (--trust)"
                ));
            }
        }
        let needs = Needs {
            kind: Some(kind),
            memory: spec.memory,
            labels: spec.labels.clone(),
        };
        if !self.offer.fits(&needs) {
            return Some(format!(
                "the job does not fit a slot here (memory {} of {} bytes, labels {:?})",
                spec.memory, self.offer.slot_memory, self.offer.labels
            ));
        }
        None
    }

    /// Takes grant `n` of `job`: it runs once a majority of `members`
    /// confirms the grant.
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        local: Key,
        job: Key,
        submission: &[u8],
        n: u64,
        members: &[serde_bytes::ByteBuf],
        timing: Timing,
        (from, newer): (Option<Saved>, Option<(Saved, PeerId)>),
    ) -> Answer {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Answer::Refused("this peer is draining: it takes no new jobs".into());
        }
        let bytes = submission.to_vec();
        let Some(submission) = Submission::decode(submission) else {
            return Answer::Refused("the submission does not decode".into());
        };
        let submitter = match submission.check(&job) {
            Ok(submitter) => submitter,
            Err(why) => return Answer::Refused(why),
        };
        if let Some(reason) = self.refusal(&submitter, &submission.spec) {
            return Answer::Refused(reason);
        }
        let members: Vec<PeerId> = members.iter().filter_map(|b| PeerId::from_bytes(b).ok()).collect();
        if members.is_empty() || members.len() > MAX_MEMBERS {
            return Answer::Refused(format!("a job's tenure has 1 to {MAX_MEMBERS} members"));
        }
        if timing.term.is_zero() || timing.margin >= timing.term || timing.term > Duration::from_secs(3600) {
            return Answer::Refused("the term must be positive, at most an hour, and above the margin".into());
        }
        let mut state = self.lock();
        if let Some(held) = state.hosted.get(&job).cloned() {
            let done = lock(&held.tend).done;
            if !done && held.token >= n {
                return Answer::Refused(format!("this peer holds grant {} of job {job} already", held.token));
            }
            if !done {
                held.stop("placed again with a later grant");
                let mut tend = lock(&held.tend);
                tend.done = true;
                if !tend.admitted {
                    state.awaiting = state.awaiting.saturating_sub(1);
                    if tend.reserved {
                        state.reserved = state.reserved.saturating_sub(1);
                    }
                }
            }
            if state.queue.remove(&job) {
                held.log.lose("placed again with a later grant");
            }
        }
        if state.queue.len() >= MAX_QUEUED {
            return Answer::Refused(format!("{MAX_QUEUED} jobs wait here already"));
        }
        let tenure = Tenure::new(now(), Grantee { peer: local, n }, members_of(&members), timing);
        let reserve = state.running.saturating_add(state.reserved) < self.config.slots;
        let hosted = Arc::new(Hosted {
            spec: submission.spec,
            submitter,
            token: n,
            members,
            from,
            newer,
            paused_as: Mutex::new(None),
            log: Arc::default(),
            cancel: Cancel::default(),
            pause: Pause::default(),
            snapshotting: tokio::sync::Mutex::new(()),
            pages: Mutex::new(None),
            stopped: Mutex::new(None),
            queued_at: micros(now()),
            tend: Mutex::new(Tend {
                tenure,
                admitted: false,
                commit: None,
                done: false,
                saves: 0,
                reserved: reserve,
            }),
            submission: bytes,
            timing,
            running: std::sync::atomic::AtomicBool::new(false),
        });
        state.ended.retain(|k| *k != job);
        state.hosted.insert(job, hosted);
        let position = if reserve {
            state.reserved += 1;
            0
        } else {
            (state.queue.len() as u32).saturating_add(state.awaiting.saturating_sub(state.reserved)) + 1
        };
        state.awaiting += 1;
        drop(state);
        self.wake.notify_one();
        Answer::Accepted { position }
    }

    /// Grant `n` of `job` got its tenure: renew at once.
    fn go(&self, job: &Key, n: u64) -> Answer {
        match self.job(job) {
            Some(hosted) if hosted.token == n => {
                lock(&hosted.tend).tenure.renew_now(now());
                self.wake.notify_one();
                Answer::Done
            }
            _ => Answer::Refused(format!("this peer holds no grant {n} of job {job}")),
        }
    }

    /// Drops grant `n` of `job` (it did not get its tenure).
    fn drop_grant(self: &Arc<Self>, job: &Key, n: u64) -> Answer {
        match self.job(job) {
            Some(hosted) if hosted.token == n => {
                lock(&hosted.tend).tenure.stop();
                self.wake.notify_one();
                Answer::Done
            }
            _ => Answer::Refused(format!("this peer holds no grant {n} of job {job}")),
        }
    }

    /// Cancels `job` for its submitter: it stops, and its result says so.
    fn cancel(&self, from: &PeerId, job: &Key) -> Answer {
        let Some(hosted) = self.job(job) else {
            return Answer::Refused(format!("this peer does not hold job {job}"));
        };
        if hosted.submitter != *from {
            return Answer::Refused("only the job's submitter may cancel it".into());
        }
        let queued = self.lock().queue.remove(job);
        hosted.stop("cancelled by its submitter");
        if queued || !lock(&hosted.tend).admitted {
            // Not running: its result is the cancel itself.
            self.finished(job, &hosted, Outcome::failed(RunError::Cancelled), None, None);
        }
        Answer::Done
    }

    /// A run ended (or a job was cancelled before it ran): its result goes
    /// to the members; the slot goes to the next job.
    fn finished(&self, job: &Key, hosted: &Hosted, outcome: Outcome, output: Option<Key>, started: Option<u64>) {
        let stopped = lock(&hosted.stopped).clone();
        let error = match (&outcome.error, stopped) {
            (Some(RunError::Cancelled), Some(why)) => Some(why),
            (error, _) => error.as_ref().map(ToString::to_string),
        };
        let at = now();
        let result = JobResult {
            exit_code: outcome.exit_code,
            error: error.map(|e| truncate(&e)),
            output,
            started_at: started.map_or(at, shoal_overlay::Instant::from_micros),
            ended_at: at,
            executor: Some(self.local.to_bytes()),
        };
        let members = members_of(&hosted.members);
        lock(&hosted.tend).commit = Some((result.encode(), Tally::new(members), false));
        self.wake.notify_one();
        let _ = job;
    }

    /// Starts `job` in the slot it reserved, or one free now, else queues
    /// it.
    fn admit(self: &Arc<Self>, node: &WeakClient, job: Key, hosted: Arc<Hosted>, reserved: bool) {
        let mut state = self.lock();
        if reserved {
            state.reserved = state.reserved.saturating_sub(1);
        }
        if reserved || (state.running.saturating_add(state.reserved) < self.config.slots && state.queue.is_empty()) {
            state.running += 1;
            drop(state);
            self.clone().spawn_run(node.clone(), job, hosted);
            return;
        }
        let submitter = key_of_peer(&hosted.submitter).unwrap_or(job);
        if let Err(e) = state.queue.push(submitter, job) {
            drop(state);
            hosted.stop(&e.to_string());
            self.finished(
                &job,
                &hosted,
                Outcome::failed(RunError::Spawn(e.to_string())),
                None,
                None,
            );
        }
    }

    /// A slot freed: the next job waiting whose tenure still holds.
    fn next(self: &Arc<Self>, node: &WeakClient) {
        {
            let mut state = self.lock();
            state.running = state.running.saturating_sub(1);
        }
        self.fill(node);
    }

    /// Starts queued jobs while slots are free (not running, not reserved).
    fn fill(self: &Arc<Self>, node: &WeakClient) {
        loop {
            let next = {
                let mut state = self.lock();
                if state.running.saturating_add(state.reserved) >= self.config.slots {
                    return;
                }
                let mut next = None;
                while let Some((_, waiting)) = state.queue.pop() {
                    if let Some(h) = state.hosted.get(&waiting).cloned()
                        && !h.cancel.is_cancelled()
                    {
                        state.running += 1;
                        next = Some((waiting, h));
                        break;
                    }
                }
                next
            };
            let Some((job, hosted)) = next else { return };
            self.clone().spawn_run(node.clone(), job, hosted);
        }
    }

    /// Drops the oldest ended jobs past [`KEPT_ENDED`], or while their logs
    /// hold more than [`KEPT_LOG_BYTES`].
    fn forget_old(&self) {
        let mut state = self.lock();
        let mut bytes: u64 = state
            .ended
            .iter()
            .filter_map(|k| state.hosted.get(k))
            .map(|h| h.log.len())
            .sum();
        while state.ended.len() > KEPT_ENDED || (bytes > KEPT_LOG_BYTES && state.ended.len() > 1) {
            let Some(old) = state.ended.pop_front() else { break };
            if let Some(h) = state.hosted.remove(&old) {
                bytes = bytes.saturating_sub(h.log.len());
            }
        }
    }

    fn spawn_run(self: Arc<Self>, node: WeakClient, job: Key, hosted: Arc<Hosted>) {
        hosted.running.store(true, std::sync::atomic::Ordering::Release);
        let periodic = tokio::spawn(self.clone().snapshots(node.clone(), job, hosted.clone()));
        tokio::spawn(async move {
            let _periodic = AbortOnDrop(periodic);
            let (outcome, output) = match node.upgrade() {
                Some(client) => self.run(&client, job, &hosted).await,
                None => (
                    Outcome {
                        exit_code: 125,
                        error: Some(RunError::Io("the node stopped".into())),
                    },
                    None,
                ),
            };
            let started = hosted.log.progress().0;
            // A run stopped because its tenure ended has no result to
            // commit: the home places the job again; nor has one paused
            // to go elsewhere (its release follows).
            let paused = matches!(outcome.error, Some(RunError::Paused { .. }));
            if !lock(&hosted.tend).done && !paused {
                self.finished(&job, &hosted, outcome, output, started);
            }
            hosted.running.store(false, std::sync::atomic::Ordering::Release);
            self.next(&node);
        });
    }

    /// Every `snapshot_every` while `job` runs, if it is a stepping
    /// module: has it saved whole as it goes on, and its home keep that as
    /// its checkpoint (a crash here then loses at most that much work).
    async fn snapshots(self: Arc<Self>, node: WeakClient, job: Key, hosted: Arc<Hosted>) {
        let (Some(module), every) = (hosted.spec.module, self.config.snapshot_every) else {
            return;
        };
        if every.is_zero() {
            return;
        }
        let running = || hosted.running.load(std::sync::atomic::Ordering::Acquire);
        loop {
            tokio::time::sleep(every).await;
            let Some(client) = node.upgrade() else { return };
            if !running() || !self.engine.steps(&module) {
                continue;
            }
            let _one = hosted.snapshotting.lock().await;
            if hosted.pause.is_stopping() {
                return;
            }
            let asked = std::time::Instant::now();
            hosted.pause.save();
            while running() && hosted.pause.saved().is_none() && asked.elapsed() < PAUSE_STOP {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if hosted.pause.saved() != Some(true) || !running() {
                continue;
            }
            let root = self.dir.join(format!("{job}-{}", hosted.token));
            match self.checkpoint(&client, job, &hosted, &JobDir::at(&root)).await {
                Ok(id) => tracing::debug!("job {job}: snapshot {id} kept by its home"),
                Err(e) => tracing::info!("job {job}: a periodic snapshot was not kept: {e}"),
            }
        }
    }

    /// Fetches what the job needs, runs it, and shares its `/out`.
    async fn run(&self, client: &Client, job: Key, hosted: &Hosted) -> (Outcome, Option<Key>) {
        let root = self.dir.join(format!("{job}-{}", hosted.token));
        let result = self.run_in(client, job, &root, hosted).await;
        if matches!(&result, Ok((outcome, _)) if matches!(outcome.error, Some(RunError::Paused { .. }))) {
            // Paused for a move: its release waits for this run to end,
            // not for its files to go (a next run here has its own
            // directory, named by its token).
            let root = root.clone();
            tokio::spawn(async move { tokio::fs::remove_dir_all(&root).await });
        } else {
            let _ = tokio::fs::remove_dir_all(&root).await;
        }
        match result {
            Ok(done) => done,
            Err(e) => (
                Outcome {
                    exit_code: 125,
                    error: Some(RunError::Io(e)),
                },
                None,
            ),
        }
    }

    async fn run_in(
        &self,
        client: &Client,
        job: Key,
        root: &std::path::Path,
        hosted: &Hosted,
    ) -> Result<(Outcome, Option<Key>), String> {
        let dir = JobDir::create(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let spec = &hosted.spec;
        let module = match spec.module {
            Some(id) if spec.kind != Some(JobKind::Native) => {
                fetch(client, id)
                    .await
                    .map_err(|e| format!("cannot fetch the module {id}: {e}"))?;
                let store = client.blob_store().clone();
                Some((
                    id,
                    tokio::task::spawn_blocking(move || store.read_small(&id, MAX_MODULE_BYTES))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("cannot read the module {id}: {e}"))?,
                ))
            }
            _ => None,
        };
        // Compiled while the inputs and the checkpoint arrive (a job moved
        // here mid-run waits for both).
        let compiling = module.clone().map(|(_, bytes)| {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                // A module that does not compile is refused by the run.
                let _ = engine.check(&bytes);
                started.elapsed()
            })
        });
        for (id, name) in &spec.inputs {
            fetch(client, *id)
                .await
                .map_err(|e| format!("cannot fetch input {name} ({id}): {e}"))?;
            let (store, id, path) = (client.blob_store().clone(), *id, dir.inputs().join(name));
            tokio::task::spawn_blocking(move || store.export(&id, &path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot write input {name}: {e}"))?;
        }
        // Placed again: the job goes on from its last checkpoint. One that
        // nobody can send any more is a loss of time, not of the job: it
        // starts from the beginning.
        let fetching = std::time::Instant::now();
        // A snapshot its last executor saved as it paused it for a move
        // comes first: from that executor, or the home if it saved it
        // there meanwhile. Once the job goes on from it, this grant has
        // its home keep it.
        let mut adopted = None;
        let mut checkpoint = None;
        if let Some((newer, granter)) = &hosted.newer
            && let Some(id) = checkpoint_id(newer)
        {
            let sources: Vec<PeerId> = std::iter::once(*granter)
                .chain(hosted.members.iter().copied())
                .collect();
            match tokio::time::timeout(NEWER_WITHIN, fetch_checkpoint(client, id, &sources)).await {
                Ok(Ok(id)) => {
                    adopted = Some(id);
                    checkpoint = Some(Ok(id));
                }
                Ok(Err(e)) => tracing::info!("job {job}: {e}: it goes on from the checkpoint its home keeps"),
                Err(_) => tracing::info!(
                    "job {job}: its last snapshot {id} did not arrive within {} s: it goes on from the checkpoint its home keeps",
                    NEWER_WITHIN.as_secs()
                ),
            }
        }
        if checkpoint.is_none() {
            checkpoint = match hosted.from.as_ref().map(checkpoint_id) {
                None => None,
                Some(None) => Some(Err("the checkpoint does not name a blob".to_string())),
                // A majority of the job's home keeps it: asked first, the
                // overlay only if they cannot send it.
                Some(Some(id)) => Some(fetch_checkpoint(client, id, &hosted.members).await),
            };
        }
        if let Some(compiling) = compiling
            && let Ok(took) = compiling.await
        {
            tracing::debug!("job {job}: its module is compiled ({} ms)", took.as_millis());
        }
        if let Some(fetched) = checkpoint {
            // Snapshot pages are linked only for a stepping module (see
            // `lay_out`); any other job gets copies of its files.
            let link = module.as_ref().is_some_and(|(id, _)| self.engine.steps(id));
            let restored = match fetched {
                Ok(id) => {
                    let (store, to) = (client.blob_store().clone(), dir.checkpoints());
                    tokio::task::spawn_blocking(move || lay_out(&store, id, &to, link))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|laid| laid.map(|linked| (id, linked)))
                        .map_err(|e| format!("cannot write checkpoint {id}: {e}"))
                }
                Err(e) => Err(e),
            };
            match restored {
                Ok((id, linked)) => tracing::info!(
                    "job {job}: goes on from checkpoint {id}, in place in {} ms ({linked} snapshot pages linked)",
                    fetching.elapsed().as_millis()
                ),
                Err(why) => {
                    tracing::warn!("{why}: the job starts from the beginning");
                    let _ = std::fs::remove_dir_all(dir.checkpoints());
                    std::fs::create_dir_all(dir.checkpoints()).map_err(|e| e.to_string())?;
                }
            }
        }
        if hosted.cancel.is_cancelled() {
            return Ok((
                Outcome {
                    exit_code: 130,
                    error: Some(RunError::Cancelled),
                },
                None,
            ));
        }
        let limits = Limits {
            memory: if spec.memory == 0 {
                self.config.slot_memory
            } else {
                spec.memory
            },
            timeout: if spec.timeout_ms == 0 {
                self.config.default_timeout
            } else {
                Duration::from_millis(spec.timeout_ms)
            },
            out_bytes: self.config.out_bytes,
            log_bytes: self.config.log_bytes,
        };
        let env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (engine, log, cancel, run_dir) = (
            self.engine.clone(),
            hosted.log.clone(),
            hosted.cancel.clone(),
            dir.clone(),
        );
        let args = spec.args.clone();
        hosted.log.start(micros(now()));
        let outcome = loop {
            let (engine, log, cancel, pause, run_dir, env, args, module) = (
                engine.clone(),
                log.clone(),
                cancel.clone(),
                hosted.pause.clone(),
                run_dir.clone(),
                env.clone(),
                args.clone(),
                module.clone(),
            );
            // Made ready for this job before it came (see `prepare`).
            let warm = module.as_ref().and_then(|(id, _)| self.take_warm(id));
            let running = tokio::task::spawn_blocking(move || {
                let run = |args| Run {
                    args,
                    env: &env,
                    dir: &run_dir,
                    limits,
                    sink: log.clone(),
                    cancel: &cancel,
                    pause: &pause,
                    clock: std::time::Instant::now,
                };
                match module {
                    Some((id, bytes)) => {
                        let mut argv = vec!["job.wasm".to_string()];
                        argv.extend(args.iter().cloned());
                        engine.run_warm(id, &bytes, run(&argv), warm)
                    }
                    None => {
                        let (command, rest) = args.split_first().map_or(("", &[][..]), |(c, r)| (c.as_str(), r));
                        NativeRunner.run(command, run(rest))
                    }
                }
            });
            let outcome = match adopted.take() {
                // Kept by its home while it runs.
                Some(id) => {
                    let keep = async {
                        match self
                            .save_at_home(client, job, hosted, id, std::time::Instant::now())
                            .await
                        {
                            Ok(_) => tracing::debug!("job {job}: its home keeps the snapshot it went on from"),
                            Err(e) => {
                                tracing::info!("job {job}: its home did not keep the snapshot it went on from: {e}")
                            }
                        }
                    };
                    futures::join!(running, keep).0
                }
                None => running.await,
            }
            .map_err(|e| e.to_string())?;
            if let Some(RunError::Paused { memory }) = outcome.error {
                // Paused to go elsewhere (a drain, a move): its snapshot
                // is under /ckpt, shared from here, and goes with the
                // next grant, which has the home keep it (see
                // `Request::Grant`): the pause does not wait for that.
                let started = std::time::Instant::now();
                match self.share_checkpoint(client, job, hosted, &dir).await {
                    Ok(id) => {
                        let saved = {
                            let tend = lock(&hosted.tend);
                            Saved {
                                by: tend.tenure.grantee(),
                                seq: tend.saves + 1,
                                state: id.to_bytes().to_vec(),
                            }
                        };
                        *lock(&hosted.paused_as) = Some(saved);
                        tracing::info!(
                            "job {job}: paused and saved whole ({memory} bytes of memory) as {id} in {} ms",
                            started.elapsed().as_millis()
                        );
                    }
                    Err(e) => tracing::warn!("job {job}: its snapshot was not saved: {e}"),
                }
                break outcome;
            }
            if outcome.exit_code != CHECKPOINT_EXIT || outcome.error.is_some() || hosted.cancel.is_cancelled() {
                break outcome;
            }
            if !lock(&hosted.tend).tenure.may_act(now()) {
                // Its tenure ran out meanwhile: not this executor's to run.
                break Outcome::failed(RunError::Cancelled);
            }
            // "Saved my state under /ckpt: run me again."
            if let Err(e) = self.checkpoint(client, job, hosted, &dir).await {
                tracing::warn!("job {job}: its checkpoint was not saved: {e}");
            }
        };
        if matches!(outcome.error, Some(RunError::Paused { .. })) {
            return Ok((outcome, None));
        }
        let wrote = std::fs::read_dir(dir.outputs())
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let output = if wrote && outcome.error.is_none() {
            let (info, _) = client
                .files()
                .share(dir.outputs(), Import::Copy)
                .await
                .map_err(|e| format!("cannot share /out: {e}"))?;
            if spec.replicas > 0 {
                // Before the result commits: once the job counts as ended,
                // its output's home is fetching copies, so the output
                // outlives this executor. A pin that cannot be stored
                // leaves the output provided here only: said in the log.
                if let Err(e) = client.pins().pin(info.id, spec.replicas).await {
                    let why = format!("the output {} was not pinned: {e}", info.id);
                    tracing::warn!("job {job}: {why}");
                    shoal_resources::compute::engine::Sink::write(
                        &*hosted.log,
                        shoal_resources::compute::engine::Stream::Stderr,
                        format!("shoal: {why}\n").as_bytes(),
                    );
                }
            }
            Some(info.id)
        } else {
            None
        };
        Ok((outcome, output))
    }

    /// Saves the job's `/ckpt` as a blob (provided here) and has the job's
    /// home keep it under this grant: a majority must fetch it and take
    /// the save, so that the job can go on from it whoever is gone.
    async fn checkpoint(&self, client: &Client, job: Key, hosted: &Hosted, dir: &JobDir) -> Result<Key, String> {
        let sharing = std::time::Instant::now();
        let id = self.share_checkpoint(client, job, hosted, dir).await?;
        self.save_at_home(client, job, hosted, id, sharing).await
    }

    /// Shares `dir`'s `/ckpt` (its snapshot pages that did not change are
    /// not hashed again), provided from here at once and announced in the
    /// background.
    async fn share_checkpoint(&self, client: &Client, job: Key, hosted: &Hosted, dir: &JobDir) -> Result<Key, String> {
        let sharing = std::time::Instant::now();
        let reuse = lock(&hosted.pages)
            .take()
            .unwrap_or_else(|| Reuse::under(format!("{SNAPSHOT_DIR}/memory")));
        let (info, _, reuse, announce) = client
            .files()
            .share_unannounced(dir.checkpoints(), Import::Copy, Arc::default(), Some(reuse))
            .await
            .map_err(|e| format!("cannot share /ckpt: {}", crate::error::error_chain(&e)))?;
        // The home fetches it from here (see `quorum::keep`); the overlay
        // hears of it meanwhile.
        let announcing = client.clone();
        tokio::spawn(async move {
            if let Err(e) = announce.run(&announcing).await {
                tracing::debug!("job {job}: its checkpoint is not announced: {e}");
            }
        });
        if let Some(reuse) = reuse {
            tracing::debug!(
                "job {job}: /ckpt shared in {} ms ({} pages hashed, {} unchanged)",
                sharing.elapsed().as_millis(),
                reuse.counts.0,
                reuse.counts.1
            );
            *lock(&hosted.pages) = Some(reuse);
        }
        Ok(info.id)
    }

    /// Has `job`'s home keep checkpoint `id` (held here) as this grant's
    /// newest save; answers once a majority keeps it. `sharing`: when the
    /// checkpoint began to be shared, for the log.
    async fn save_at_home(
        &self,
        client: &Client,
        job: Key,
        hosted: &Hosted,
        id: Key,
        sharing: std::time::Instant,
    ) -> Result<Key, String> {
        let info = shoal_resources::BlobInfo { id, size: 0 };
        let shared_in = sharing.elapsed();
        let (by, seq, members) = {
            let mut tend = lock(&hosted.tend);
            tend.saves += 1;
            (tend.tenure.grantee(), tend.saves, tend.tenure.members().clone())
        };
        let save = Ask::Save(Saved {
            by,
            seq,
            state: info.id.to_bytes().to_vec(),
        });
        let wire = Wire::Ask {
            key: job,
            request: save,
            epoch: 0,
        };
        let mut tally = Tally::new(members);
        let mut replies = crate::quorum::ask_each(client, &hosted.members, &wire, CHECKPOINT_TIMEOUT);
        while let Some((peer, reply)) = replies.next().await {
            let Some(member) = key_of_peer(&peer) else { continue };
            let outcome = match reply {
                Ok(Reply::Answer(Vote::Ok)) => tally.agree(member),
                _ => tally.refuse(member),
            };
            match outcome {
                Tallied::Agreed => {
                    tracing::info!(
                        "job {job}: checkpoint {seq} saved ({}): shared in {} ms, kept by a majority {} ms later",
                        info.id,
                        shared_in.as_millis(),
                        (sharing.elapsed() - shared_in).as_millis()
                    );
                    return Ok(info.id);
                }
                Tallied::Refused => break,
                Tallied::Open => {}
            }
        }
        Err("no majority of the job's home took it".into())
    }

    /// Gets ready for a job of `module` that goes on from `checkpoint`
    /// (asked by `from`, its executor, before it pauses the job): the
    /// module compiled and the checkpoint held here, so that the grant
    /// that follows starts at once. Any peer may ask, as any may probe or
    /// claim: it costs this peer a fetch and a compile, [`PREPARING`] at
    /// a time, and nothing runs.
    async fn prepare(self: &Arc<Self>, client: &Client, from: PeerId, module: Key, checkpoint: Option<Key>) -> Answer {
        if self.draining() {
            return Answer::Refused("this peer is draining".into());
        }
        if !self.offer.kinds.contains(&JobKind::Wasm) {
            return Answer::Refused("this peer runs no WebAssembly jobs".into());
        }
        let Ok(_turn) = self.preparing.try_acquire() else {
            return Answer::Refused(format!("{PREPARING} preparations under way here"));
        };
        let started = std::time::Instant::now();
        let ready = async {
            fetch(client, module)
                .await
                .map_err(|e| format!("cannot fetch the module {module}: {e}"))?;
            let (store, engine) = (client.blob_store().clone(), self.engine.clone());
            tokio::task::spawn_blocking(move || {
                let bytes = store
                    .read_small(&module, MAX_MODULE_BYTES)
                    .map_err(|e| format!("cannot read the module {module}: {e}"))?;
                engine.check(&bytes).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            if let Some(id) = checkpoint {
                fetch_checkpoint(client, id, &[from]).await?;
                // An instance with the pre-copy in its memory: the job's
                // last snapshot then puts back only what changed since
                // (one made ready already serves as well).
                if self.holds_warm(&module) {
                    return Ok(());
                }
                let scratch = self.dir.join(format!("warm-{module}"));
                let (store, engine, memory) = (
                    client.blob_store().clone(),
                    self.engine.clone(),
                    self.config.slot_memory,
                );
                let made = tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(&scratch);
                    let ckpt = scratch.join("ckpt");
                    let made = lay_out(&store, id, &ckpt, true).and_then(|_| {
                        let bytes = store
                            .read_small(&module, MAX_MODULE_BYTES)
                            .map_err(|e| format!("cannot read the module {module}: {e}"))?;
                        engine.warm(module, &bytes, &ckpt, memory).map_err(|e| e.to_string())
                    });
                    // The pages it read stay open in it.
                    let _ = std::fs::remove_dir_all(&scratch);
                    made
                })
                .await
                .map_err(|e| e.to_string())?;
                match made {
                    Ok(warm) => self.keep_warm(warm),
                    // Not needed to go on: the job reads every page then.
                    Err(e) => tracing::info!("module {module}: no instance made ready: {e}"),
                }
            }
            Ok::<_, String>(())
        };
        match ready.await {
            Ok(()) => {
                tracing::info!(
                    "ready for a job of module {module} moved here by {from} ({} ms)",
                    started.elapsed().as_millis()
                );
                Answer::Done
            }
            Err(why) => Answer::Refused(why),
        }
    }

    /// Keeps `warm` for the job it was made for (one at a time: it holds
    /// a job's memory), for [`WARM_FOR`] at most.
    fn keep_warm(self: &Arc<Self>, warm: Warm) {
        let serial = {
            let mut held = lock(&self.warm);
            let serial = held.as_ref().map_or(0, |(n, _)| n + 1);
            *held = Some((serial, warm));
            serial
        };
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(WARM_FOR).await;
            if let Some(this) = this.upgrade() {
                let mut held = lock(&this.warm);
                if held.as_ref().is_some_and(|(n, _)| *n == serial) {
                    *held = None;
                }
            }
        });
    }

    /// Whether an instance is ready for a job of `module`.
    fn holds_warm(&self, module: &Key) -> bool {
        lock(&self.warm).as_ref().is_some_and(|(_, w)| w.module() == *module)
    }

    /// The instance made ready for a job of `module`, if any.
    fn take_warm(&self, module: &Key) -> Option<Warm> {
        let mut held = lock(&self.warm);
        if held.as_ref().is_some_and(|(_, w)| w.module() == *module) {
            return held.take().map(|(_, w)| w);
        }
        None
    }

    /// Saves the checkpoint of `job` now, for its submitter
    /// (`shoal job checkpoint`); answers once the job's home keeps it.
    async fn checkpoint_now(self: &Arc<Self>, client: &Client, from: &PeerId, job: Key) -> Answer {
        let Some(hosted) = self.job(&job) else {
            return Answer::Refused(format!("this peer does not hold job {job}"));
        };
        if hosted.submitter != *from {
            return Answer::Refused("only the job's submitter may ask for its checkpoint".into());
        }
        let root = self.dir.join(format!("{job}-{}", hosted.token));
        if !root.exists() {
            return Answer::Refused(format!("job {job} is not running here"));
        }
        match self.checkpoint(client, job, &hosted, &JobDir::at(&root)).await {
            Ok(_) => Answer::Done,
            Err(e) => Answer::Refused(format!("the checkpoint was not saved: {e}")),
        }
    }

    /// One pass over the tenures held: renewals and commits due, grouped
    /// per member; jobs to admit (first confirmed) and to stop (tenure
    /// over).
    fn tend(self: &Arc<Self>, node: &WeakClient, client: &Client, answers: &tokio::sync::mpsc::UnboundedSender<Batch>) {
        let at = now();
        let mut batches: HashMap<PeerId, Vec<(Key, For, Ask)>> = HashMap::new();
        let mut admit = Vec::new();
        let mut lost = Vec::new();
        // Grants no longer awaiting their first confirmation, and slots
        // reserved for grants that were lost (the state's lock is taken
        // after each job's, never while holding one).
        let mut settled = 0u32;
        let mut unreserved = 0u32;
        for (job, hosted) in self.hosted() {
            let mut guard = lock(&hosted.tend);
            let tend = &mut *guard;
            if tend.done {
                continue;
            }
            let grantee = tend.tenure.grantee();
            let mut due = Vec::new();
            if let Some(round) = tend.tenure.poll_renew(at) {
                due.push((For::Renewal(round), Ask::Renew(grantee)));
                if let Some((_, tally, sent)) = tend.commit.as_mut() {
                    *tally = Tally::new(tend.tenure.members().clone());
                    *sent = false;
                }
            }
            if let Some((bytes, _, sent)) = tend.commit.as_mut()
                && !*sent
                && tend.tenure.may_act(at)
            {
                *sent = true;
                due.push((
                    For::Commit,
                    Ask::Commit {
                        by: grantee,
                        result: bytes.clone(),
                    },
                ));
            }
            for member in &hosted.members {
                for (what, ask) in &due {
                    batches.entry(*member).or_default().push((job, *what, ask.clone()));
                }
            }
            if tend.tenure.may_act(at) && !tend.admitted {
                tend.admitted = true;
                settled += 1;
                if tend.tenure.adopted().is_some() && tend.reserved {
                    // Nothing to run: its reserved slot goes back.
                    unreserved += 1;
                }
                match tend.tenure.adopted() {
                    // An earlier grant may have committed this result: it
                    // is this grant's result too.
                    Some(result) => {
                        let members = tend.tenure.members().clone();
                        tend.commit = Some((result.to_vec(), Tally::new(members), false));
                        drop(guard);
                        self.wake.notify_one();
                    }
                    None => admit.push((job, hosted.clone(), tend.reserved)),
                }
                continue;
            }
            if let Some(why) = tend.tenure.ended().map(|why| format!("{why:?}")) {
                tend.done = true;
                if !tend.admitted {
                    settled += 1;
                    if tend.reserved {
                        unreserved += 1;
                    }
                }
                lost.push((job, hosted.clone(), why));
            }
        }
        if settled > 0 || unreserved > 0 {
            let mut state = self.lock();
            state.awaiting = state.awaiting.saturating_sub(settled);
            state.reserved = state.reserved.saturating_sub(unreserved);
        }
        for (job, hosted, reserved) in admit {
            self.admit(node, job, hosted, reserved);
        }
        if unreserved > 0 {
            self.fill(node);
        }
        for (job, hosted, why) in lost {
            let why = format!(
                "this executor lost the job's tenure ({}) before its result was committed: its home places it again",
                why.to_lowercase()
            );
            tracing::info!("job {job}: {why}");
            hosted.stop(&why);
            let queued = self.lock().queue.remove(&job);
            hosted.log.lose(&why);
            let mut state = self.lock();
            state.ended.push_back(job);
            let _ = queued;
        }
        self.forget_old();
        // Each ask joins its member's next batch: one batch on its way to a
        // member at a time, however many jobs are held here.
        for (member, items) in batches {
            for (job, what, ask) in items {
                let (client, answers) = (client.clone(), answers.clone());
                tokio::spawn(async move {
                    let reply = crate::quorum::ask_one(&client, member, job, ask, MEMBER_TIMEOUT)
                        .await
                        .map(|reply| Reply::Many(vec![reply]));
                    let _ = answers.send(Batch {
                        member,
                        whom: vec![(job, what)],
                        reply,
                    });
                });
            }
        }
    }

    /// A member's replies to one batch.
    fn heard(self: &Arc<Self>, batch: Batch) {
        let Some(member) = key_of_peer(&batch.member) else {
            return;
        };
        let replies = match batch.reply {
            Ok(Reply::Many(replies)) if replies.len() == batch.whom.len() => replies,
            _ => return,
        };
        let at = now();
        for ((job, what), reply) in batch.whom.into_iter().zip(replies) {
            let Some(hosted) = self.job(&job) else { continue };
            let vote = match reply {
                Reply::Answer(vote) => vote,
                _ => continue,
            };
            let mut guard = lock(&hosted.tend);
            let tend = &mut *guard;
            match what {
                For::Renewal(round) => tend.tenure.handle_answer(at, round, member, &vote),
                For::Commit => {
                    let Some((bytes, tally, _)) = tend.commit.as_mut() else {
                        continue;
                    };
                    let outcome = match vote {
                        Vote::Ok => tally.agree(member),
                        _ => tally.refuse(member),
                    };
                    if outcome == Tallied::Agreed && !tend.done {
                        let bytes = bytes.clone();
                        tend.done = true;
                        tend.tenure.stop();
                        drop(guard);
                        self.committed(job, &hosted, &bytes);
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    /// Lets `job` go: stops it here (`why` is what its log says, `reason`
    /// what its home's history keeps), gives its tenure back to its home,
    /// and places it anew on another peer (`to`, if given) from its newest
    /// checkpoint. Returns the new executor and grant.
    pub(crate) async fn release(
        self: &Arc<Self>,
        client: &Client,
        job: Key,
        (reason, why): (LetGo, &str),
        to: Option<PeerId>,
    ) -> Result<(PeerId, u64), String> {
        if to == Some(self.local) {
            return Err(format!("job {job} runs on {to:?} already", to = self.local));
        }
        let hosted = self.job(&job).ok_or_else(|| format!("job {job} is not on this peer"))?;
        // A stepping module is paused between two steps and saved whole
        // (its tenure still held, so its home takes the snapshot): it goes
        // on elsewhere from where it was, not from its last checkpoint.
        let steps = hosted.spec.module.is_some_and(|id| self.engine.steps(&id));
        let running = || hosted.running.load(std::sync::atomic::Ordering::Acquire);
        let _one = if steps {
            Some(hosted.snapshotting.lock().await)
        } else {
            None
        };
        let mut chosen = None;
        if steps && running() {
            // First a pre-copy: saved while it goes on, and kept by its
            // home; the pause then sends only the pages changed since.
            let copying = std::time::Instant::now();
            hosted.pause.save();
            while running() && hosted.pause.saved().is_none() && copying.elapsed() < PAUSE_STOP {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let root = self.dir.join(format!("{job}-{}", hosted.token));
            let mut pre_copy = None;
            if hosted.pause.saved() == Some(true) && running() {
                match self.checkpoint(client, job, &hosted, &JobDir::at(&root)).await {
                    Ok(id) => {
                        tracing::info!(
                            "job {job}: pre-copy {id} kept by its home in {} ms while it ran",
                            copying.elapsed().as_millis()
                        );
                        pre_copy = Some(id);
                    }
                    Err(e) => tracing::info!("job {job}: no pre-copy ({e}): the pause sends it all"),
                }
            }
            // The next executor, chosen now, compiles the module and
            // fetches the pre-copy while the job still runs here: the
            // pause then waits for neither.
            if to.is_none() && running() {
                chosen = self.ready_next(client, job, &hosted, pre_copy).await;
            }
            let pausing = std::time::Instant::now();
            hosted.pause.stop();
            while running() && pausing.elapsed() < PAUSE_STOP {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tracing::info!("job {job}: paused for its move in {} ms", pausing.elapsed().as_millis());
            // The next executor fetches the snapshot it goes on from while
            // the home takes the release and the new grant.
            let paused_as = lock(&hosted.paused_as).as_ref().and_then(checkpoint_id);
            if let (Some(peer), Some(module), Some(id)) = (chosen, hosted.spec.module, paused_as) {
                let (client, request) = (
                    client.clone(),
                    Request::Prepare {
                        module,
                        checkpoint: Some(id),
                    },
                );
                tokio::spawn(async move {
                    if let Err(e) = super::submit::ask(&client, peer, &request, PREPARE_WITHIN).await {
                        tracing::debug!("job {job}: {peer} did not fetch its last snapshot ahead: {e}");
                    }
                });
            }
        }
        let grantee = {
            let mut state = self.lock();
            let mut tend = lock(&hosted.tend);
            if tend.done || tend.commit.is_some() {
                return Err(format!("job {job} has ended here"));
            }
            tend.done = true;
            tend.tenure.stop();
            if !tend.admitted {
                state.awaiting = state.awaiting.saturating_sub(1);
                if tend.reserved {
                    state.reserved = state.reserved.saturating_sub(1);
                }
            }
            let grantee = tend.tenure.grantee();
            drop(tend);
            state.queue.remove(&job);
            state.ended.push_back(job);
            grantee
        };
        hosted.stop(why);
        hosted.log.lose(why);
        // The run stops before the tenure goes: nothing runs it twice.
        let stopping = std::time::Instant::now();
        while hosted.running.load(std::sync::atomic::Ordering::Acquire) {
            if stopping.elapsed() > RELEASE_STOP {
                return Err(format!(
                    "job {job} did not stop within {} s: its home places it again once its tenure lapses",
                    RELEASE_STOP.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let wire = Wire::Ask {
            key: job,
            epoch: 0,
            request: shoal_resources::quorum::Request::Release {
                by: grantee,
                why: reason,
                // The snapshot it paused with, held here: whoever places
                // it next has the next executor go on from it.
                newer: lock(&hosted.paused_as).take(),
            },
        };
        let mut replies = crate::quorum::ask_each(client, &hosted.members, &wire, MEMBER_TIMEOUT);
        let mut released = 0;
        while let Some((_, reply)) = replies.next().await {
            if matches!(reply, Ok(Reply::Answer(Vote::Ok))) {
                released += 1;
            }
        }
        if released < hosted.members.len() / 2 + 1 {
            return Err(format!(
                "job {job} is stopped, but its home did not take the release ({released} of {}): it places the job again once the tenure lapses",
                hosted.members.len()
            ));
        }
        let submission = Submission::decode(&hosted.submission).ok_or("the submission does not decode")?;
        let mut supervised = super::home::Supervised {
            job,
            submission,
            bytes: hosted.submission.clone(),
            peers: hosted.members.clone(),
            timing: hosted.timing,
            executors: HashMap::new(),
            to: to.or(chosen),
        };
        let supervision = || {
            shoal_resources::compute::Supervision::new(
                now(),
                members_of(&hosted.members),
                hosted.timing,
                Duration::from_millis(200),
                MEMBER_TIMEOUT,
            )
        };
        let mut placed = super::home::place_now(client, &mut supervised, supervision(), grantee.n).await;
        if let (Err(e), None, Some(ready)) = (&placed, to, chosen) {
            // The peer got ready, but its slot went to another job
            // meanwhile: any other will do.
            tracing::info!("job {job}: {ready} got ready but did not take it ({e}); placing it anywhere");
            supervised.to = None;
            placed = super::home::place_now(client, &mut supervised, supervision(), grantee.n).await;
        }
        let (peer, n, _) = placed.map_err(|e| {
            format!("job {job} is stopped and released, but placing it again failed (its home goes on trying): {e}")
        })?;
        tracing::info!("job {job}: {why}; placed on {peer} as grant {n}");
        Ok((peer, n))
    }

    /// Chooses where `job` (a stepping module about to pause for a move)
    /// goes next and has that peer get ready for it: its module compiled
    /// and `checkpoint` (the pre-copy) held. `None` when no peer could be
    /// chosen or got ready in time: the placement after the pause then
    /// chooses as for any job.
    async fn ready_next(&self, client: &Client, job: Key, hosted: &Hosted, checkpoint: Option<Key>) -> Option<PeerId> {
        let module = hosted.spec.module?;
        let started = std::time::Instant::now();
        let peer = match client
            .jobs()
            .choose(&hosted.spec.needs(), &hosted.spec, job, Some(client.key()))
            .await
        {
            Ok(peer) if peer != self.local => peer,
            Ok(_) => return None,
            Err(e) => {
                tracing::info!("job {job}: no next executor chosen before its pause: {e}");
                return None;
            }
        };
        let request = Request::Prepare { module, checkpoint };
        match super::submit::ask(client, peer, &request, PREPARE_WITHIN).await {
            Ok(Answer::Done) => {
                tracing::info!(
                    "job {job}: {peer} is ready to go on with it ({} ms)",
                    started.elapsed().as_millis()
                );
                Some(peer)
            }
            Ok(Answer::Refused(why)) => {
                tracing::info!("job {job}: {peer} did not get ready for it: {why}");
                None
            }
            other => {
                tracing::info!("job {job}: {peer} did not get ready for it: {other:?}");
                None
            }
        }
    }

    /// `shoal drain`: takes no new jobs from now on, and moves every job
    /// here elsewhere (from its newest checkpoint). Returns each job with
    /// where it went, or why it did not.
    pub(crate) async fn drain(self: &Arc<Self>, client: &Client) -> Vec<(Key, Result<(PeerId, u64), String>)> {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let jobs: Vec<Key> = self
            .hosted()
            .into_iter()
            .filter(|(_, h)| {
                let tend = lock(&h.tend);
                !tend.done && tend.commit.is_none()
            })
            .map(|(job, _)| job)
            .collect();
        futures::stream::iter(jobs)
            .map(|job| async move {
                (
                    job,
                    self.release(
                        client,
                        job,
                        (LetGo::Drained, "drained: its executor stopped offering slots"),
                        None,
                    )
                    .await,
                )
            })
            .buffer_unordered(DRAINING_AT_ONCE)
            .collect()
            .await
    }

    /// Whether `shoal drain` was run here.
    /// The jobs waiting here, in the order they would start, and since
    /// when each is here.
    fn queued_in_order(&self) -> Vec<(Key, shoal_overlay::Instant)> {
        let state = self.lock();
        state
            .queue
            .in_order()
            .into_iter()
            .filter_map(|job| {
                let hosted = state.hosted.get(&job)?;
                Some((job, shoal_overlay::Instant::from_micros(hosted.queued_at)))
            })
            .collect()
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The job's result is committed: its log ends.
    fn committed(&self, job: Key, hosted: &Hosted, bytes: &[u8]) {
        let Some(result) = JobResult::decode(bytes) else { return };
        hosted.log.end(Ended {
            exit_code: result.exit_code,
            error: result.error.clone(),
            output: result.output,
            at: micros(result.ended_at),
        });
        let mut state = self.lock();
        state.ended.push_back(job);
        // Its submitter hears of it (best effort: what counts is at the
        // job's home).
        if state.noticed < MAX_NOTICES_WAITING {
            state.noticed += 1;
            state
                .notices
                .entry(hosted.submitter)
                .or_default()
                .push((job, bytes.to_vec()));
        }
    }

    /// Tells submitters of their jobs' results committed since the last
    /// call, in batches of at most [`MAX_NOTICES`].
    fn tell_submitters(&self, client: &Client) {
        let notices = {
            let mut state = self.lock();
            state.noticed = 0;
            std::mem::take(&mut state.notices)
        };
        for (submitter, results) in notices {
            if submitter == self.local {
                client.jobs().heard_ended(submitter, results);
                continue;
            }
            let mut batches = vec![Vec::new()];
            let mut bytes_in_last = 0;
            for (job, bytes) in results {
                if batches.last().is_some_and(|b: &Vec<_>| b.len() == MAX_NOTICES)
                    || bytes_in_last + bytes.len() > MAX_REQUEST_BYTES / 2
                {
                    batches.push(Vec::new());
                    bytes_in_last = 0;
                }
                bytes_in_last += bytes.len() + 64;
                if let Some(last) = batches.last_mut() {
                    last.push((job, serde_bytes::ByteBuf::from(bytes)));
                }
            }
            for batch in batches.into_iter().filter(|b| !b.is_empty()) {
                let client = client.clone();
                tokio::spawn(async move {
                    let request = Request::Ended(batch);
                    if let Err(e) = super::submit::ask(&client, submitter, &request, MEMBER_TIMEOUT).await {
                        tracing::debug!("cannot tell {submitter} its jobs ended: {e}");
                    }
                });
            }
        }
    }
}

/// The largest listing of a checkpoint's files (as for any directory).
const MAX_CHECKPOINT_LISTING: u64 = 64 * 1024 * 1024;

/// Writes checkpoint `id` (a directory held in `store`) under `to`. With
/// `link` (the job is a stepping module), a snapshot's memory page is
/// linked to the store's copy rather than copied: the engine reads it
/// once and removes the snapshot before any of the job's code runs (a
/// stepping module has no start function), so nothing writes through
/// the link. Returns how many pages were linked.
fn lay_out(store: &BlobStore, id: Key, to: &std::path::Path, link: bool) -> Result<usize, String> {
    let bytes = store
        .read_small(&id, MAX_CHECKPOINT_LISTING)
        .map_err(|e| e.to_string())?;
    let pages = format!("{SNAPSHOT_DIR}/memory/");
    let mut linked = 0;
    let Ok(entries) = shoal_resources::collection::decode(&bytes) else {
        // One file, not a directory: it is what the checkpoint names.
        return Err("a checkpoint is a directory".into());
    };
    for entry in entries {
        let path = to.join(&entry.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let placed = if link && entry.path.starts_with(&pages) {
            linked += 1;
            store.link_out(&entry.blob.id, &path)
        } else {
            store.export(&entry.blob.id, &path)
        };
        placed.map_err(|e| format!("{}: {e}", entry.path))?;
    }
    Ok(linked)
}

/// The blob a saved checkpoint names.
fn checkpoint_id(saved: &Saved) -> Option<Key> {
    Some(Key::from_bytes(<[u8; 32]>::try_from(saved.state.as_slice()).ok()?))
}

/// A member's reply to one batch, and whom each of its answers is for.
struct Batch {
    member: PeerId,
    whom: Vec<(Key, For)>,
    reply: std::io::Result<Reply>,
}

/// An error as a result keeps it: at most 1 KiB.
fn truncate(text: &str) -> String {
    let mut end = text.len().min(1024);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Fetches checkpoint `id` from `sources` first (the overlay only if
/// they cannot send it); the job need not wait for its announcement.
async fn fetch_checkpoint(client: &Client, id: Key, sources: &[PeerId]) -> Result<Key, String> {
    client
        .files()
        .fetch_from_first(id, sources)
        .await
        .map(|()| id)
        .map_err(|e| format!("cannot fetch checkpoint {id}: {}", crate::error::error_chain(&e)))
}

/// Has blob `id` in the store, downloading it if need be.
pub(crate) async fn fetch(client: &Client, id: Key) -> Result<(), String> {
    if client.blob_store().contains(&id) {
        return Ok(());
    }
    client
        .files()
        .download(id, None, Arc::default(), None)
        .await
        .map(|_| ())
        .map_err(|e| crate::error::error_chain(&e))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the jobs protocol until the node stops: on a peer that offers
/// slots, publishes the offer first and tends the tenures held; on one
/// that does not, hears only of its own jobs' ends.
pub(crate) async fn run(
    node: WeakClient,
    executor: Option<Arc<Executor>>,
    mut incoming: crate::streams::IncomingStreams,
) {
    let tending = executor
        .clone()
        .map(|executor| tokio::spawn(tend(node.clone(), executor)));
    let stealing = executor
        .clone()
        .map(|executor| tokio::spawn(steal(node.clone(), executor)));
    let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = streams.clone().try_acquire_owned() else {
            tracing::debug!("jobs stream from {peer} refused: {MAX_STREAMS} open");
            continue;
        };
        let Some(client) = node.upgrade() else { break };
        let executor = executor.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&client, executor.as_ref(), peer, stream).await {
                tracing::debug!("jobs stream from {peer}: {e}");
            }
            drop(permit);
        });
    }
    if let Some(tending) = tending {
        tending.abort();
    }
    if let Some(stealing) = stealing {
        stealing.abort();
    }
}

/// While jobs wait here, hands the back of the queue to peers that have a
/// slot free ([`Steal`]): each job through its release to its home, which
/// places it on that peer under a new grant. The jobs of one round all
/// need what the first needs (the peers probed must fit them).
async fn steal(node: WeakClient, executor: Arc<Executor>) {
    let Some(client) = node.upgrade() else { return };
    let mut steal = Steal::new(u64::from_le_bytes(
        client.key().to_bytes()[..8].try_into().unwrap_or_default(),
    ));
    drop(client);
    loop {
        tokio::time::sleep(STEAL_EVERY).await;
        let Some(client) = node.upgrade() else { return };
        if executor.draining() {
            continue;
        }
        let waiting = executor.queued_in_order();
        let due = steal.due(now(), &waiting);
        let Some(first) = due.first().and_then(|job| executor.job(job)) else {
            continue;
        };
        let needs = first.spec.needs();
        let due: Vec<Key> = due
            .into_iter()
            .filter(|job| executor.job(job).is_some_and(|h| h.spec.needs() == needs))
            .collect();
        let (candidates, peers) = match client.jobs().candidates(&needs, &first.spec).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("work stealing: no candidates: {e}");
                continue;
            }
        };
        let fitting: Vec<Key> = candidates
            .iter()
            .filter(|c| c.offer.fits(&needs))
            .map(|c| c.peer)
            .collect();
        let probe = Request::Probe(super::protocol::WireNeeds {
            kind: needs.kind,
            memory: needs.memory,
            labels: needs.labels.clone(),
        });
        let asked = steal.pick(&fitting, &client.key()).into_iter().filter_map(|key| {
            let peer = peers.get(&key).copied()?;
            let (client, probe) = (client.clone(), probe.clone());
            Some(async move {
                match super::submit::ask(&client, peer, &probe, super::submit::PROBE_TIMEOUT).await {
                    Ok(Answer::Load {
                        free,
                        queued,
                        fits: true,
                        ..
                    }) => Some((key, Load { free, queued })),
                    _ => None,
                }
            })
        });
        let loads: Vec<(Key, Load)> = futures::future::join_all(asked).await.into_iter().flatten().collect();
        let handed = steal.assign(&due, &loads);
        futures::stream::iter(handed)
            .filter_map(|(job, to)| {
                let peer = peers.get(&to).copied();
                async move { Some((job, peer?)) }
            })
            .for_each_concurrent(DRAINING_AT_ONCE, |(job, peer)| {
                let (executor, client) = (executor.clone(), client.clone());
                async move {
                    let why = format!("handed to {peer}, which had a slot free while this peer's queue was long");
                    match executor
                        .release(&client, job, (LetGo::Rebalanced, &why), Some(peer))
                        .await
                    {
                        Ok((to, n)) => tracing::info!("job {job} handed to {to} (grant {n}): a slot was free there"),
                        Err(e) => tracing::debug!("job {job} not handed on: {e}"),
                    }
                }
            })
            .await;
    }
}

/// Publishes the offer, then tends the tenures held.
async fn tend(node: WeakClient, executor: Arc<Executor>) {
    if let Some(client) = node.upgrade() {
        let offer = executor.offer().clone();
        let publish = async {
            client.put_value(offer_key(&client.key()), offer.encode()).await?;
            client.provide(offer.classes()).await
        };
        if let Err(e) = publish.await {
            tracing::warn!("cannot publish the slot offer yet (it is republished with the records): {e}");
        }
    }
    let (answers, mut heard) = tokio::sync::mpsc::unbounded_channel();
    loop {
        {
            let Some(client) = node.upgrade() else { return };
            executor.tend(&node, &client, &answers);
            executor.tell_submitters(&client);
        }
        tokio::select! {
            batch = heard.recv() => {
                if let Some(batch) = batch {
                    executor.heard(batch);
                }
            }
            () = executor.wake.notified() => {}
            () = tokio::time::sleep(TEND_EVERY) => {}
        }
    }
}

/// Answers one request.
async fn serve(
    client: &Client,
    executor: Option<&Arc<Executor>>,
    peer: PeerId,
    mut stream: Stream,
) -> std::io::Result<()> {
    let request: Request = crate::codec::read_cbor(&mut stream, MAX_REQUEST_BYTES).await?;
    let (request, executor) = match (request, executor) {
        (Request::Ended(results), _) => {
            let results = results
                .into_iter()
                .map(|(job, bytes)| (job, bytes.into_vec()))
                .collect();
            client.jobs().heard_ended(peer, results);
            stream.write_all(&crate::codec::encode_cbor(&Answer::Done)?).await?;
            return stream.close().await;
        }
        (_, None) => {
            let refused = Answer::Refused("this peer offers no slots".into());
            stream.write_all(&crate::codec::encode_cbor(&refused)?).await?;
            return stream.close().await;
        }
        (request, Some(executor)) => (request, executor),
    };
    if let Request::Watch { job, from } = request {
        return watch(executor, job, from, stream).await;
    }
    if let Request::Release { job, to } = request {
        let answer = match executor.job(&job) {
            Some(hosted) if hosted.submitter != peer => Answer::Refused("only the job's submitter may move it".into()),
            _ => {
                let to = to.and_then(|b| PeerId::from_bytes(&b).ok());
                match executor
                    .release(
                        client,
                        job,
                        (LetGo::Moved, &format!("moved by its submitter {peer}")),
                        to,
                    )
                    .await
                {
                    Ok((peer, n)) => Answer::Moved {
                        peer: peer.to_bytes().into(),
                        n,
                    },
                    Err(why) => Answer::Refused(why),
                }
            }
        };
        stream.write_all(&crate::codec::encode_cbor(&answer)?).await?;
        return stream.close().await;
    }
    if let Request::Prepare { module, checkpoint } = request {
        let answer = executor.prepare(client, peer, module, checkpoint).await;
        stream.write_all(&crate::codec::encode_cbor(&answer)?).await?;
        return stream.close().await;
    }
    if let Request::Checkpoint { job } = request {
        let answer = executor.checkpoint_now(client, &peer, job).await;
        stream.write_all(&crate::codec::encode_cbor(&answer)?).await?;
        return stream.close().await;
    }
    let answer = answer(client, executor, peer, request);
    stream.write_all(&crate::codec::encode_cbor(&answer)?).await?;
    stream.close().await
}

/// The answer to a request from `peer` (a watch is answered by
/// [`watch`]): the same whether it came over the network or from this
/// peer itself.
pub(crate) fn answer(client: &Client, executor: &Arc<Executor>, peer: PeerId, request: Request) -> Answer {
    match request {
        Request::Probe(needs) => {
            let load = executor.load();
            Answer::Load {
                free: load.free,
                queued: load.queued,
                running: load.running,
                fits: executor.offer.fits(&Needs::from(&needs)) && !executor.draining(),
                offer: Some(executor.offer.clone()),
            }
        }
        Request::Grant {
            job,
            submission,
            n,
            members,
            timing,
            from,
            newer,
        } => executor.grant(
            client.key(),
            job,
            &submission,
            n,
            &members,
            timing,
            (from, newer.map(|newer| (newer, peer))),
        ),
        Request::Go { job, n } => executor.go(&job, n),
        Request::Drop { job, n } => executor.drop_grant(&job, n),
        Request::Cancel { job } => executor.cancel(&peer, &job),
        Request::Checkpoint { .. } => Answer::Refused("a checkpoint is answered on its own stream".into()),
        Request::Prepare { .. } => Answer::Refused("a preparation is answered on its own stream".into()),
        Request::Release { .. } => Answer::Refused("a move is answered on its own stream".into()),
        Request::Watch { .. } => Answer::Refused("a watch is a stream of its own".into()),
        Request::Ended(results) => {
            let results = results
                .into_iter()
                .map(|(job, bytes)| (job, bytes.into_vec()))
                .collect();
            client.jobs().heard_ended(peer, results);
            Answer::Done
        }
    }
}

/// Streams a job's events from output offset `from` until it ends.
async fn watch(executor: &Executor, job: Key, mut from: u64, mut stream: Stream) -> std::io::Result<()> {
    let Some(hosted) = executor.job(&job) else {
        stream.write_all(&crate::codec::encode_cbor(&Event::Unknown)?).await?;
        return stream.close().await;
    };
    let mut seen = hosted.log.subscribe();
    let mut started_sent = false;
    loop {
        seen.mark_unchanged();
        let events = hosted.log.events_from(from, WATCH_BATCH);
        let mut ended = false;
        for event in events {
            match &event {
                Event::Started { .. } if started_sent => continue,
                Event::Started { .. } => started_sent = true,
                Event::Output { offset, bytes, .. } => from = offset + bytes.len() as u64,
                Event::Ended { .. } | Event::Lost { .. } => ended = true,
                Event::Unknown => {}
            }
            stream.write_all(&crate::codec::encode_cbor(&event)?).await?;
        }
        stream.flush().await?;
        if ended {
            return stream.close().await;
        }
        hosted.log.changed_within(&mut seen, Duration::from_secs(5)).await;
    }
}
