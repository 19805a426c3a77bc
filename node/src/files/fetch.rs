//! Downloading a blob from several providers at once: prove its size
//! first (the last group verifies only at the true size), then let one
//! worker per provider stream pull runs as the sans-IO
//! [`FetchPlan`](shoal_resources::FetchPlan) hands them out, verify each
//! group before it is written, and save what is verified so that a
//! cancelled download resumes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use shoal_overlay::Key;
use shoal_resources::blob::{empty_id, group_bytes, last_group};
use shoal_resources::store::{BlobStore, Partial, ReceiveError};
use shoal_resources::{BlobInfo, Failure, FetchPlan, ProviderId, proves_size};

use super::Progress;
use super::protocol::{BAD_REQUEST, BLOB_PROTOCOL, NOT_FOUND, OK, ask};
use crate::error::FetchError;

/// Streams opened to each provider, each pulling its own runs: while one
/// stream's run is being verified and written, the other's is on the wire.
pub const STREAMS_PER_PROVIDER: u32 = 2;
/// How long one run may take before the provider counts as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why blob `id` cannot be fetched when no other peer provides it: this
/// peer's own copy, served in place, changed (which tells the user more),
/// or simply no provider.
pub(crate) fn no_provider(store: &BlobStore, id: Key) -> FetchError {
    match store.changed_source(&id) {
        Some(path) => FetchError::Store(shoal_resources::store::StoreError::SourceChanged { id, path }),
        None => FetchError::NoProvider(id),
    }
}

/// One provider's stream, opened lazily (dialing the provider if need be).
async fn open(control: &mut crate::streams::Control, peer: PeerId, within: Duration) -> std::io::Result<Stream> {
    tokio::time::timeout(within, control.open_stream(peer, BLOB_PROTOCOL))
        .await
        .map_err(|_| std::io::Error::other("timed out opening a stream"))?
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// How long one provider may take to prove a size (dial included). Every
/// provider is asked at once and the first proof wins, so one across a
/// partition holds nothing up; this only bounds how long a download with
/// no reachable provider takes to say so.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one provider made of a request to prove a blob's size.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// It sent the last group at this size, and it verified.
    Proved(u64),
    /// It named a size it could not prove.
    Lied(u64),
    /// It did not answer in time, or does not hold the blob.
    Unreachable,
}

/// Asks `peer` for the last group of blob `id` at size `hint` (or, with no
/// hint or when its own size differs, at the size it names).
async fn probe(control: &crate::streams::Control, id: Key, hint: Option<u64>, peer: PeerId) -> Probe {
    let attempt = async {
        let mut control = control.clone();
        let Ok(mut stream) = open(&mut control, peer, PROBE_TIMEOUT).await else {
            return Probe::Unreachable;
        };
        let mut buffer = Vec::new();
        let mut candidate = hint;
        // At most two questions: the hint's last group, then (if the
        // provider names another size) that size's.
        for _ in 0..2 {
            let groups = candidate.map_or(0..0, last_group);
            let Ok((status, size, len)) = ask(&mut stream, &id, groups, &mut buffer).await else {
                return Probe::Unreachable;
            };
            match status {
                // BAD_REQUEST: the hint's last group is past the end of the
                // blob the provider holds, whose size it names.
                OK | BAD_REQUEST => {}
                _ => return Probe::Unreachable,
            }
            if candidate == Some(size) {
                let proof = buffer.get(..len).unwrap_or_default();
                return if status == OK && proves_size(&id, size, proof) {
                    Probe::Proved(size)
                } else {
                    Probe::Lied(size)
                };
            }
            candidate = Some(size);
        }
        Probe::Lied(candidate.unwrap_or_default())
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or(Probe::Unreachable)
}

/// The size of blob `id`, proved by whichever provider answers first: sizes
/// from tickets, listings, pin records and providers are claims, and
/// nothing is written, made room for or announced on a claim. `hint` is
/// the size claimed; a proved size that differs from it wins (and is
/// logged). Providers are asked all at once.
pub(crate) async fn prove_size(
    control: &crate::streams::Control,
    id: Key,
    hint: Option<u64>,
    providers: &[PeerId],
) -> Result<u64, FetchError> {
    if id == empty_id() {
        return Ok(0);
    }
    let mut probes: futures::stream::FuturesUnordered<_> = providers
        .iter()
        .map(|peer| async move { (*peer, probe(control, id, hint, *peer).await) })
        .collect();
    let (mut lying, mut unreachable) = (0, 0);
    while let Some((peer, probe)) = probes.next().await {
        match probe {
            Probe::Proved(size) => {
                if let Some(claimed) = hint.filter(|h| *h != size) {
                    tracing::warn!(
                        "{id}: claimed to be {claimed} bytes, but {peer} proved it is {size} bytes; fetching {size}"
                    );
                }
                return Ok(size);
            }
            Probe::Lied(size) => {
                tracing::warn!("{id}: {peer} says it is {size} bytes but cannot prove it");
                lying += 1;
            }
            Probe::Unreachable => unreachable += 1,
        }
    }
    Err(FetchError::SizeUnproven { id, lying, unreachable })
}

struct Shared {
    fetch: Mutex<FetchPlan>,
    partial: Partial,
    progress: Arc<Progress>,
    changed: tokio::sync::Notify,
    /// A local failure (disk full, permissions) that ends the download: no
    /// provider can help with it.
    fatal: Mutex<Option<std::io::Error>>,
}

impl Shared {
    fn is_fatal(&self) -> bool {
        self.fatal.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FetchPlan> {
        self.fetch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A finished fetch: the blob, and the blobs dropped to make room for it
/// (no longer held here, so no longer to be announced).
pub(crate) struct Fetched {
    pub(crate) info: BlobInfo,
    pub(crate) evicted: Vec<Key>,
    /// Whether this fetch downloaded it (else it was held already).
    pub(crate) downloaded: bool,
}

/// A download's worker tasks, stopped when the download is dropped (a
/// cancelled `get`): each has saved what it verified as it went.
struct Workers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &self.0 {
            w.abort();
        }
    }
}

/// Adds `size` to the progress's total in place of the `claimed` size that
/// was counted before the size was known.
fn count_size(progress: &Progress, claimed: Option<u64>, size: u64) {
    let claimed = claimed.unwrap_or(0);
    if size >= claimed {
        progress.size.fetch_add(size - claimed, Ordering::Relaxed);
    } else {
        progress.size.fetch_sub(claimed - size, Ordering::Relaxed);
    }
}

/// Downloads blob `id` from `providers` into `store` (or to `out`), several
/// at once, unless it is held. `claimed` is the size a ticket, listing or
/// pin claims (counted in `progress` already): the size fetched is the one
/// a provider proves first. The caller holds the blob's
/// [`Turns::turn`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch(
    store: BlobStore,
    control: crate::streams::Control,
    id: Key,
    claimed: Option<u64>,
    providers: Vec<PeerId>,
    progress: Arc<Progress>,
    out: Option<std::path::PathBuf>,
    quota: Option<u64>,
) -> Result<Fetched, FetchError> {
    if store.contains(&id)
        && let Some(size) = store.size(&id)?
    {
        let info = BlobInfo { id, size };
        count_size(&progress, claimed, size);
        progress.verified.fetch_add(size, Ordering::Relaxed);
        if let Some(out) = out {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.export(&id, &out))
                .await
                .map_err(|e| FetchError::Io(std::io::Error::other(e)))??;
        }
        return Ok(Fetched {
            info,
            evicted: Vec::new(),
            downloaded: false,
        });
    }
    if providers.is_empty() {
        return Err(no_provider(&store, id));
    }
    let info = BlobInfo {
        id,
        size: prove_size(&control, id, claimed, &providers).await?,
    };
    count_size(&progress, claimed, info.size);
    let (partial, evicted) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut evicted = Vec::new();
            if let Some(quota) = quota {
                // A resumed download's bytes are already counted.
                let held = std::fs::metadata(store.part_path(&info.id)).map_or(0, |m| m.len());
                evicted = store.make_room(
                    info.size.saturating_sub(held),
                    quota,
                    &[info.id],
                    std::time::SystemTime::now(),
                )?;
            }
            store.partial(info).map(|partial| (partial, evicted))
        })
        .await
        .map_err(|e| FetchError::Io(std::io::Error::other(e)))??
    };
    let mut plan = FetchPlan::new(info.size, partial.saved_have());
    let ids: BTreeMap<ProviderId, PeerId> = providers
        .iter()
        .enumerate()
        .flat_map(|(i, p)| (0..STREAMS_PER_PROVIDER).map(move |s| (i as u32 * STREAMS_PER_PROVIDER + s, *p)))
        .collect();
    let ids = Arc::new(ids);
    for id in ids.keys() {
        // Streams of one provider: numbered STREAMS_PER_PROVIDER apart.
        plan.add_stream(*id, *id / STREAMS_PER_PROVIDER);
    }
    progress.verified.fetch_add(plan.verified_bytes(), Ordering::Relaxed);
    progress.resumed.store(plan.verified_bytes(), Ordering::Relaxed);
    if plan.verified_bytes() > 0 {
        tracing::info!(
            "resuming {}: {:.1} of {:.1} MiB already verified",
            info.id,
            plan.verified_bytes() as f64 / (1024.0 * 1024.0),
            info.size as f64 / (1024.0 * 1024.0)
        );
    }
    progress.providers.store(providers.len(), Ordering::Relaxed);
    let shared = Arc::new(Shared {
        fetch: Mutex::new(plan),
        partial,
        progress,
        changed: tokio::sync::Notify::new(),
        fatal: Mutex::new(None),
    });
    let started = Instant::now();
    let mut workers = Workers(Vec::new());
    for (id, peer) in ids.iter() {
        let (shared, control, id, peer, blob, ids) =
            (shared.clone(), control.clone(), *id, *peer, info.id, ids.clone());
        workers.0.push(tokio::spawn(async move {
            worker(&shared, &control, id, peer, blob, &ids).await
        }));
    }
    // Done when every group is in, or when every worker has given up. A
    // worker still waiting on a slow or dead provider (up to RUN_TIMEOUT)
    // must not hold up a finished download: it is stopped.
    loop {
        let wait = shared.changed.notified();
        if shared.lock().is_complete() || workers.0.iter().all(|w| w.is_finished()) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
    }
    for w in &workers.0 {
        w.abort();
    }
    // An aborted worker stops at its next await; one in the middle of
    // writing a run finishes that write first. Wait for that, so nothing
    // touches the file once it is filed.
    for w in std::mem::take(&mut workers.0) {
        let _ = w.await;
    }
    let (complete, lying, unreachable, have) = {
        let plan = shared.lock();
        let mut delivered: BTreeMap<PeerId, u64> = BTreeMap::new();
        for (slot, bytes) in plan.delivered() {
            if let Some(peer) = ids.get(&slot) {
                *delivered.entry(*peer).or_default() += bytes;
            }
        }
        *shared.progress.delivered.lock().unwrap_or_else(|p| p.into_inner()) = delivered.into_iter().collect();
        let mut dropped: BTreeMap<PeerId, Failure> = BTreeMap::new();
        for (slot, peer) in ids.iter() {
            if let Some(why) = plan.dropped(*slot) {
                dropped.entry(*peer).or_insert(why);
            }
        }
        *shared.progress.dropped.lock().unwrap_or_else(|p| p.into_inner()) = dropped.into_iter().collect();
        let lying: std::collections::BTreeSet<PeerId> = ids
            .iter()
            .filter(|(slot, _)| plan.dropped(**slot) == Some(Failure::BadData))
            .map(|(_, peer)| *peer)
            .collect();
        (
            plan.is_complete(),
            lying.len(),
            providers.len() - lying.len(),
            plan.have().to_vec(),
        )
    };
    let shared2 = shared.clone();
    if let Some(e) = shared.fatal.lock().ok().and_then(|mut f| f.take()) {
        let _ = tokio::task::spawn_blocking(move || shared2.partial.save_have(&have)).await;
        return Err(FetchError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write the download of {}: {e}", info.id),
        )));
    }
    let shared2 = shared.clone();
    if !complete {
        let _ = tokio::task::spawn_blocking(move || shared2.partial.save_have(&have)).await;
        return Err(FetchError::ProvidersFailed {
            id: info.id,
            lying,
            unreachable,
        });
    }
    let transfer = started.elapsed();
    let done = tokio::task::spawn_blocking(move || shared2.partial.finish(out.as_deref()))
        .await
        .map_err(|e| FetchError::Io(std::io::Error::other(e)))??;
    let mib = info.size as f64 / (1024.0 * 1024.0);
    tracing::info!(
        "fetched {} ({mib:.1} MiB) from {} providers: transfer {:.2} s ({:.0} MiB/s), then {:.2} s to file it",
        info.id,
        providers.len(),
        transfer.as_secs_f64(),
        mib / transfer.as_secs_f64().max(1e-9),
        (started.elapsed() - transfer).as_secs_f64()
    );
    Ok(Fetched {
        info: done,
        evicted,
        downloaded: true,
    })
}

/// Pulls runs for one provider until the plan has nothing more for it.
async fn worker(
    shared: &Shared,
    control: &crate::streams::Control,
    me: ProviderId,
    peer: PeerId,
    id: Key,
    ids: &BTreeMap<ProviderId, PeerId>,
) {
    let mut link = Link {
        control: control.clone(),
        stream: None,
        buffer: Vec::new(),
        me,
        peer,
    };
    loop {
        let next = {
            let mut plan = shared.lock();
            if plan.is_complete() || plan.dropped(me).is_some() || shared.is_fatal() {
                None
            } else {
                Some(plan.next_range(me))
            }
        };
        let range = match next {
            None => break,
            Some(Some(range)) => range,
            Some(None) => {
                // Others hold the rest: wait for a change, then look again.
                let wait = shared.changed.notified();
                if shared.lock().is_complete() {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
                continue;
            }
        };
        let started = Instant::now();
        let result = link.run(shared, &id, range.clone()).await;
        {
            let mut plan = shared.lock();
            match result {
                Ok(()) => plan.finished(me, range, started.elapsed()),
                Err(why) => {
                    tracing::info!("provider {peer}: run {range:?} of {id} failed: {why:?}");
                    link.stream = None;
                    plan.failed(me, range, why);
                    let live: std::collections::BTreeSet<PeerId> = ids
                        .iter()
                        .filter(|(slot, _)| plan.dropped(**slot).is_none())
                        .map(|(_, p)| *p)
                        .collect();
                    shared.progress.providers.store(live.len(), Ordering::Relaxed);
                }
            }
            let have = plan.have().to_vec();
            drop(plan);
            // The bitmap is what a restart resumes from.
            if let Err(e) = shared.partial.save_have(&have) {
                tracing::warn!("cannot save download progress: {e}");
            }
        }
        shared.changed.notify_waiters();
    }
    shared.changed.notify_waiters();
}

/// One worker's connection to its provider: the stream, opened lazily and
/// reopened after a failure, and the payload buffer reused across runs.
struct Link {
    control: crate::streams::Control,
    stream: Option<Stream>,
    buffer: Vec<u8>,
    me: ProviderId,
    peer: PeerId,
}

impl Link {
    /// Fetches one run, verifies it and writes it; reports each verified
    /// group to the plan.
    async fn run(&mut self, shared: &Shared, id: &Key, range: std::ops::Range<u64>) -> Result<(), Failure> {
        if self.stream.is_none() {
            self.stream = Some(
                open(&mut self.control, self.peer, RUN_TIMEOUT)
                    .await
                    .map_err(|_| Failure::Unreachable)?,
            );
        }
        let Some(s) = self.stream.as_mut() else {
            return Err(Failure::Unreachable);
        };
        let (status, _, len) = tokio::time::timeout(RUN_TIMEOUT, ask(s, id, range.clone(), &mut self.buffer))
            .await
            .map_err(|_| Failure::Unreachable)?
            .map_err(|_| Failure::Unreachable)?;
        match status {
            OK => {}
            NOT_FOUND => return Err(Failure::NotFound),
            _ => return Err(Failure::Unreachable),
        }
        let size = shared.partial.info().size;
        let data = group_bytes(&range, size);
        shared.progress.fetched.fetch_add(data, Ordering::Relaxed);
        let (me, buffer) = (self.me, &self.buffer);
        // Verify and write off the async threads.
        let mut groups = Vec::new();
        let outcome =
            tokio::task::block_in_place(|| shared.partial.receive(&range, &buffer[..len], |g| groups.push(g)));
        {
            let mut plan = shared.lock();
            let mut bytes = 0;
            for g in groups {
                if plan.verified(me, g) {
                    bytes += group_bytes(&(g..g + 1), plan.size());
                }
            }
            shared.progress.verified.fetch_add(bytes, Ordering::Relaxed);
        }
        match outcome {
            Ok(()) => Ok(()),
            Err(ReceiveError::BadData) => Err(Failure::BadData),
            // The payload is in memory: a short one is the provider's fault.
            Err(ReceiveError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Failure::BadData),
            Err(ReceiveError::Io(e)) => {
                tracing::warn!("writing {id}: {e}");
                if let Ok(mut fatal) = shared.fatal.lock() {
                    fatal.get_or_insert(e);
                }
                Err(Failure::Unreachable)
            }
        }
    }
}
