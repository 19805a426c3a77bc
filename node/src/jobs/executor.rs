//! The executor: a peer that offers slots. It publishes its offer, answers
//! probes, takes claims (granting a fenced lease on each, running the job
//! when a slot is free and queueing it fairly across submitters when
//! none is), runs jobs on the engine, keeps each job's log for watchers,
//! and stops a job whose lease lapses.
//!
//! The decisions are the sans-IO machines of
//! `shoal_resources::compute` ([`Leases`], [`FairQueue`]); this module
//! feeds them the clock and the network and runs what they decide.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use shoal_overlay::Key;
use shoal_resources::compute::engine::{Cancel, JobDir, Limits, NativeRunner, Outcome, Run, RunError, WasmEngine};
use shoal_resources::compute::offer::{SlotOffer, offer_key};
use shoal_resources::compute::{FairQueue, JobKind, JobSpec, Leases, Needs};
use shoal_resources::store::Import;

use super::log::{Ended, JobLog};
use super::protocol::{Answer, Event, MAX_REQUEST_BYTES, Request, check_spec};
use super::{ComputeConfig, micros};
use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};

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

/// Why a job whose lease lapsed was stopped.
const LAPSED: &str = "its lease lapsed (its submitter stopped renewing it): stopped by the executor";

/// A job here, queued or running.
pub(crate) struct Hosted {
    pub(crate) spec: JobSpec,
    pub(crate) token: u64,
    pub(crate) log: Arc<JobLog>,
    pub(crate) cancel: Cancel,
    /// Why it was stopped, if the executor stopped it.
    pub(crate) stopped: Mutex<Option<String>>,
    /// Microseconds since the epoch.
    pub(crate) queued_at: u64,
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
    leases: Leases,
    queue: FairQueue,
    running: u32,
    hosted: BTreeMap<Key, Arc<Hosted>>,
    /// Ended jobs, oldest first (their logs stay in `hosted` until dropped).
    ended: VecDeque<Key>,
}

/// The executor of a peer that offers slots.
pub(crate) struct Executor {
    pub(crate) config: ComputeConfig,
    pub(crate) engine: Arc<WasmEngine>,
    offer: SlotOffer,
    state: Mutex<State>,
    dir: PathBuf,
    token_file: PathBuf,
}

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

impl Executor {
    /// An executor keeping its jobs and token bound under `data_dir/jobs`.
    pub(crate) fn new(
        config: ComputeConfig,
        engine: Arc<WasmEngine>,
        data_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("jobs");
        std::fs::create_dir_all(&dir)?;
        let token_file = data_dir.join("lease-tokens");
        let persisted = match std::fs::read_to_string(&token_file) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| std::io::Error::other(format!("{} does not hold a token bound", token_file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
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
        let margin = config.lease_term / 5;
        Ok(Executor {
            state: Mutex::new(State {
                leases: Leases::new(config.lease_term, margin, persisted),
                queue: FairQueue::new(MAX_QUEUED),
                running: 0,
                hosted: BTreeMap::new(),
                ended: VecDeque::new(),
            }),
            config,
            engine,
            offer,
            dir,
            token_file,
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
            free: self.config.slots.saturating_sub(state.running),
            queued: state.queue.len() as u32,
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
        if let Err(reason) = check_spec(spec) {
            return Some(reason);
        }
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

    /// Takes a claim: grants the lease and starts or queues the job.
    fn claim(self: &Arc<Self>, client: &Client, submitter: PeerId, job: Key, spec: JobSpec) -> Answer {
        if let Some(reason) = self.refusal(&submitter, &spec) {
            return Answer::Refused(reason);
        }
        let Some(holder) = key_of_peer(&submitter) else {
            return Answer::Refused("the submitter's peer id carries no key".into());
        };
        let mut state = self.lock();
        if state.hosted.contains_key(&job) {
            return Answer::Refused(format!("job {job} is here already"));
        }
        let grant = state.leases.grant(now(), job, holder);
        if let Some(bound) = grant.persist
            && let Err(e) = persist(&self.token_file, bound)
        {
            let _ = state.leases.release(&job, grant.lease.token);
            return Answer::Refused(format!("the executor cannot save its token bound: {e}"));
        }
        let position = if state.running < self.config.slots && state.queue.is_empty() {
            0
        } else {
            if let Err(e) = state.queue.push(holder, job) {
                let _ = state.leases.release(&job, grant.lease.token);
                return Answer::Refused(e.to_string());
            }
            state.queue.position(&job).map_or(1, |p| p as u32 + 1)
        };
        let hosted = Arc::new(Hosted {
            spec,
            token: grant.lease.token,
            log: Arc::default(),
            cancel: Cancel::default(),
            stopped: Mutex::new(None),
            queued_at: micros(now()),
        });
        state.hosted.insert(job, hosted.clone());
        if position == 0 {
            state.running += 1;
            drop(state);
            self.clone().spawn_run(client.downgrade(), job, hosted);
        }
        Answer::Accepted {
            token: grant.lease.token,
            term_ms: self.config.lease_term.as_millis() as u64,
            position,
        }
    }

    fn renew(&self, job: &Key, token: u64) -> Answer {
        match self.lock().leases.renew(now(), job, token) {
            Ok(_) => Answer::Renewed {
                term_ms: self.config.lease_term.as_millis() as u64,
            },
            Err(e) => Answer::Refused(e.to_string()),
        }
    }

    fn renew_many(&self, leases: &[(Key, u64)]) -> Answer {
        let now = now();
        let mut state = self.lock();
        let refused = leases
            .iter()
            .filter_map(|(job, token)| {
                state
                    .leases
                    .renew(now, job, *token)
                    .err()
                    .map(|e| (*job, e.to_string()))
            })
            .collect();
        Answer::RenewedMany {
            term_ms: self.config.lease_term.as_millis() as u64,
            refused,
        }
    }

    /// Stops `job` held with `token`: a queued job leaves the queue and
    /// ends; a running one is cancelled and ends when it stops.
    fn cancel(self: &Arc<Self>, job: &Key, token: u64, why: &str) -> Answer {
        let mut state = self.lock();
        if let Err(e) = state.leases.release(job, token) {
            return Answer::Refused(e.to_string());
        }
        let Some(hosted) = state.hosted.get(job).cloned() else {
            return Answer::Cancelled;
        };
        hosted.stop(why);
        if state.queue.remove(job) {
            state.ended.push_back(*job);
            drop(state);
            hosted.log.end(Ended {
                exit_code: 130,
                error: Some(why.to_string()),
                output: None,
                at: micros(now()),
            });
            self.forget_old();
        }
        Answer::Cancelled
    }

    /// Stops the jobs whose leases lapsed by this executor's clock.
    fn stop_lapsed(self: &Arc<Self>) {
        loop {
            let lapsed = self.lock().leases.poll_lapsed(now());
            let Some(lease) = lapsed else { return };
            tracing::info!(
                "the lease on job {} lapsed (token {}): stopping it",
                lease.job,
                lease.token
            );
            // Released already by lapsing; cancel what runs or waits.
            let mut state = self.lock();
            if let Some(hosted) = state.hosted.get(&lease.job).cloned() {
                hosted.stop(LAPSED);
                if state.queue.remove(&lease.job) {
                    state.ended.push_back(lease.job);
                    drop(state);
                    hosted.log.end(Ended {
                        exit_code: 130,
                        error: Some(LAPSED.into()),
                        output: None,
                        at: micros(now()),
                    });
                }
            }
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
        tokio::spawn(async move {
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
            let stopped = lock(&hosted.stopped).clone();
            hosted.log.end(Ended {
                exit_code: outcome.exit_code,
                error: match (&outcome.error, stopped) {
                    (Some(RunError::Cancelled), Some(why)) => Some(why),
                    (error, _) => error.as_ref().map(ToString::to_string),
                },
                output,
                at: micros(now()),
            });
            let next = {
                let mut state = self.lock();
                let _ = state.leases.release(&job, hosted.token);
                state.ended.push_back(job);
                state.running = state.running.saturating_sub(1);
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
            self.forget_old();
            if let Some((waiting, h)) = next {
                self.spawn_run(node, waiting, h);
            }
        });
    }

    /// Fetches what the job needs, runs it, and shares its `/out`.
    async fn run(&self, client: &Client, job: Key, hosted: &Hosted) -> (Outcome, Option<Key>) {
        let root = self.dir.join(job.to_string());
        let result = self.run_in(client, &root, hosted).await;
        let _ = tokio::fs::remove_dir_all(&root).await;
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
        let outcome = tokio::task::spawn_blocking(move || {
            let run = |args| Run {
                args,
                env: &env,
                dir: &run_dir,
                limits,
                sink: log.clone(),
                cancel: &cancel,
                clock: std::time::Instant::now,
            };
            match module {
                Some((id, bytes)) => {
                    let mut argv = vec!["job.wasm".to_string()];
                    argv.extend(args.iter().cloned());
                    engine.run(id, &bytes, run(&argv))
                }
                None => {
                    let (command, rest) = args.split_first().map_or(("", &[][..]), |(c, r)| (c.as_str(), r));
                    NativeRunner.run(command, run(rest))
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        let wrote = std::fs::read_dir(dir.outputs())
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let output = if wrote && outcome.error.is_none() {
            let (info, _) = client
                .files()
                .share(dir.outputs(), Import::Copy)
                .await
                .map_err(|e| format!("cannot share /out: {e}"))?;
            Some(info.id)
        } else {
            None
        };
        Ok((outcome, output))
    }
}

/// Has blob `id` in the store, downloading it if need be.
async fn fetch(client: &Client, id: Key) -> Result<(), String> {
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

/// Writes the token bound durably before any token under it is given.
fn persist(path: &std::path::Path, bound: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, format!("{bound}\n").as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Publishes the offer, then serves the jobs protocol and stops lapsed
/// leases until the node stops.
pub(crate) async fn run(node: WeakClient, executor: Arc<Executor>, mut incoming: libp2p_stream::IncomingStreams) {
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
    let lapses = {
        let executor = executor.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                executor.stop_lapsed();
            }
        }
    };
    let lapses = tokio::spawn(lapses);
    let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = streams.clone().try_acquire_owned() else {
            tracing::debug!("jobs stream from {peer} refused: {MAX_STREAMS} open");
            continue;
        };
        let Some(client) = node.upgrade() else { break };
        let executor = executor.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&client, &executor, peer, stream).await {
                tracing::debug!("jobs stream from {peer}: {e}");
            }
            drop(permit);
        });
    }
    lapses.abort();
}

/// Answers one request.
async fn serve(client: &Client, executor: &Arc<Executor>, peer: PeerId, mut stream: Stream) -> std::io::Result<()> {
    let request: Request = crate::codec::read_cbor(&mut stream, MAX_REQUEST_BYTES).await?;
    if let Request::Watch { job, from } = request {
        return watch(executor, job, from, stream).await;
    }
    let answer = answer(client, executor, peer, request);
    stream.write_all(&crate::codec::encode_cbor(&answer)?).await?;
    stream.close().await
}

/// The answer to a request from `peer` (a watch is answered by
/// [`watch`]): the same whether it came over the network or from this
/// peer's own submissions.
pub(crate) fn answer(client: &Client, executor: &Arc<Executor>, peer: PeerId, request: Request) -> Answer {
    match request {
        Request::Probe(needs) => {
            let load = executor.load();
            Answer::Load {
                free: load.free,
                queued: load.queued,
                running: load.running,
                fits: executor.offer.fits(&Needs::from(&needs)),
                offer: Some(executor.offer.clone()),
            }
        }
        Request::Claim { job, spec, nonce } => {
            if spec.key(&key_of_peer(&peer).unwrap_or(job), nonce) != job {
                Answer::Refused("the job's key is not its spec, submitter and nonce".into())
            } else {
                executor.claim(client, peer, job, spec)
            }
        }
        Request::Renew { job, token } => executor.renew(&job, token),
        Request::RenewMany(leases) if leases.len() <= super::renew::PER_REQUEST => executor.renew_many(&leases),
        Request::RenewMany(_) => {
            Answer::Refused(format!("more than {} leases in one renewal", super::renew::PER_REQUEST))
        }
        Request::Cancel { job, token } => executor.cancel(&job, token, "cancelled by its submitter"),
        Request::Watch { .. } => Answer::Refused("a watch is a stream of its own".into()),
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
                Event::Ended { .. } => ended = true,
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
