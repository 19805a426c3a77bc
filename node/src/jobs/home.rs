//! A job's supervision, driven against the network: the submitter drives
//! it for the first placement, and the job's home members — the peers
//! that keep its tenure ([`crate::quorum`]) — drive it from then on, so
//! that the job outlives its executor and its submitter.
//!
//! What to do is decided by [`Supervision`] (`shoal_resources::compute`):
//! read the tenure at a majority, place the job anew when no executor
//! holds it, give the new executor the tenure, abandon a placement that
//! lost a race. This module carries its asks to the members, places jobs
//! with the same [`Placement`](shoal_resources::compute::Placement) as a
//! first submission, and reads a job's state from its home for `status`.
//!
//! Each member also fetches the job's module when it takes the job, so
//! that the job can run again after its submitter and its executor are
//! gone (a download makes the member one of its providers). Inputs are not
//! copied per job: a job whose inputs nobody holds any more cannot run
//! again, so a submitter that leaves pins them first.
//!
//! Every member supervises every job it keeps, the nearest to the job's
//! key first: a member further away waits longer before its first read,
//! so that in the common case one supervisor acts; two at once are safe
//! (the tenure admits one grantee at a time) and only cost a placement
//! abandoned.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use shoal_overlay::Key;
use shoal_resources::compute::{JobResult, PlaceError, SuperviseAction, Supervision};

use super::SubmitError;
use shoal_resources::quorum::{Ending, Grantee, MAX_TENANCIES, Tenancy, Timing, View};

use super::protocol::Request;
use super::submission::Submission;
use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};
use crate::quorum::{Entry, Kind, Reply, Wire, members_of};

/// How long an ask to the members may take.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member waits before its first read of a job it just joined,
/// per place in distance order: the submitter places the job meanwhile,
/// and the home steps in only if it did not.
const RANK_DELAY: Duration = Duration::from_secs(10);
/// How long placing a job may take before the caller is told (the home
/// goes on trying).
const PLACE_WITHIN: Duration = Duration::from_secs(30);
/// Placements nobody answered tried again, at most.
const PLACE_ATTEMPTS: u32 = 3;
/// How often a supervisor looks at its own record of the tenure.
const LAPSE_CHECK: Duration = Duration::from_millis(250);
/// How much longer, per place in distance order, a member waits after its
/// own record says the grantee lapsed before it reads the tenure.
const LAPSE_STAGGER: Duration = Duration::from_secs(1);

/// A job as its supervisor knows it.
pub(crate) struct Supervised {
    pub(crate) job: Key,
    pub(crate) submission: Submission,
    pub(crate) bytes: Vec<u8>,
    pub(crate) peers: Vec<PeerId>,
    pub(crate) timing: Timing,
    /// The executors placed on, by key.
    pub(crate) executors: HashMap<Key, PeerId>,
    /// The executor to place it on next, if one was asked for
    /// (`shoal job move --to`).
    pub(crate) to: Option<PeerId>,
}

/// What one drive of a supervision did that its caller cares about.
#[derive(Debug, Default)]
pub(crate) struct Drove {
    /// A grant that got its tenure: the executor and its grant number.
    pub(crate) granted: Option<(PeerId, u64, u32)>,
    /// Why the last placement failed, if it did.
    pub(crate) failed: Option<super::SubmitError>,
}

/// Runs `supervision`'s actions until it has none left for now.
pub(crate) async fn drive(client: &Client, job: &mut Supervised, supervision: &mut Supervision) -> Drove {
    let mut drove = Drove::default();
    let mut positions: HashMap<u64, u32> = HashMap::new();
    while let Some(action) = supervision.poll_action() {
        match action {
            SuperviseAction::Ask { ask, request } => {
                let wire = Wire::Ask {
                    key: job.job,
                    request,
                    epoch: 0,
                };
                let mut replies = crate::quorum::ask_each(client, &job.peers, &wire, ASK_TIMEOUT);
                while let Some((peer, reply)) = replies.next().await {
                    if let (Ok(Reply::Answer(answer)), Some(member)) = (reply, key_of_peer(&peer)) {
                        supervision.handle_answer(now(), ask, member, answer);
                    }
                    if supervision.has_actions() {
                        // Decided: the slower members' answers still land.
                        tokio::spawn(async move { while replies.next().await.is_some() {} });
                        break;
                    }
                }
                if !supervision.has_actions() {
                    supervision.handle_timeout(now());
                }
            }
            SuperviseAction::Place { n, avoid, from, newer } => {
                let spec = &job.submission.spec;
                let needs = spec.needs();
                let grant = Request::Grant {
                    job: job.job,
                    submission: job.bytes.clone(),
                    n,
                    members: job
                        .peers
                        .iter()
                        .map(|p| serde_bytes::ByteBuf::from(p.to_bytes()))
                        .collect(),
                    timing: job.timing,
                    from,
                    newer,
                };
                match client.jobs().place(&needs, spec, job.job, avoid, job.to, &grant).await {
                    Ok((peer, position)) => {
                        let key = key_of_peer(&peer);
                        if let Some(key) = key {
                            job.executors.insert(key, peer);
                        }
                        positions.insert(n, position);
                        supervision.handle_placed(now(), n, key);
                    }
                    Err(e) => {
                        drove.failed = Some(e);
                        supervision.handle_placed(now(), n, None);
                    }
                }
            }
            SuperviseAction::Granted(grantee) => {
                if let Some(peer) = job.executors.get(&grantee.peer).copied() {
                    let go = Request::Go {
                        job: job.job,
                        n: grantee.n,
                    };
                    // The executor renews at once; nobody waits for its word.
                    let teller = client.clone();
                    tokio::spawn(async move { super::submit::ask(&teller, peer, &go, ASK_TIMEOUT).await });
                    drove.granted = Some((peer, grantee.n, positions.get(&grantee.n).copied().unwrap_or(0)));
                }
            }
            SuperviseAction::Abandon(grantee) => {
                if let Some(peer) = job.executors.get(&grantee.peer).copied() {
                    let drop = Request::Drop {
                        job: job.job,
                        n: grantee.n,
                    };
                    let client = client.clone();
                    tokio::spawn(async move { super::submit::ask(&client, peer, &drop, ASK_TIMEOUT).await });
                }
            }
        }
    }
    drove
}

/// A job's state as its home keeps it: the member set, and the views of
/// the members that answered.
pub(crate) struct HomeState {
    pub(crate) peers: Vec<PeerId>,
    pub(crate) views: Vec<View>,
    pub(crate) histories: Vec<Vec<Tenancy>>,
}

impl HomeState {
    /// The result a majority of the set holds (committed), and the last
    /// grant that sent it.
    pub(crate) fn committed(&self) -> Option<(Grantee, JobResult)> {
        let majority = self.peers.len() / 2 + 1;
        let mut held: HashMap<&[u8], (usize, Grantee)> = HashMap::new();
        for (by, bytes) in self.views.iter().filter_map(|v| v.result.as_ref()) {
            let entry = held.entry(bytes.as_slice()).or_insert((0, *by));
            entry.0 += 1;
            if by.n > entry.1.n {
                entry.1 = *by;
            }
        }
        held.into_iter()
            .find(|(_, (n, _))| *n >= majority)
            .and_then(|(bytes, (_, by))| Some((by, JobResult::decode(bytes)?)))
    }

    /// The job's grants, oldest first, from what the members answering
    /// recorded: each as the members together saw it (the earliest grant
    /// time, ran if any saw it renewed, the most checkpoints, and the
    /// ending that says most: a commit, then a let-go, then a lapse).
    pub(crate) fn history(&self) -> Vec<Tenancy> {
        let mut merged = merge_histories(&self.histories);
        // Members that disagree (or make grants up) cannot make it long.
        let extra = merged.len().saturating_sub(2 * MAX_TENANCIES);
        merged.drain(..extra);
        merged
    }

    /// The newest grant any member answering holds.
    pub(crate) fn grantee(&self) -> Option<Grantee> {
        self.views.iter().filter_map(|v| v.grantee).max_by_key(|g| g.n)
    }
}

fn merge_histories(histories: &[Vec<Tenancy>]) -> Vec<Tenancy> {
    let says = |e: &Ending| match e {
        Ending::Committed => 3,
        Ending::LetGo(_) => 2,
        Ending::Lapsed => 1,
        Ending::Superseded => 0,
    };
    let mut by_grant: std::collections::BTreeMap<(u64, Key), Tenancy> = std::collections::BTreeMap::new();
    for t in histories.iter().flatten() {
        let Some(held) = by_grant.get_mut(&(t.by.n, t.by.peer)) else {
            by_grant.insert((t.by.n, t.by.peer), t.clone());
            continue;
        };
        held.granted_at = held.granted_at.min(t.granted_at);
        held.acted |= t.acted;
        held.saves = held.saves.max(t.saves);
        held.saved_at = held.saved_at.max(t.saved_at);
        held.ended = match (held.ended, t.ended) {
            (Some(a), Some(b)) if says(&b.1) > says(&a.1) || (says(&b.1) == says(&a.1) && b.0 < a.0) => Some(b),
            (None, b) => b,
            (a, _) => a,
        };
    }
    // A grant a member saw end by a lapse while it had not yet heard of
    // a renewal still ran if another member saw it renewed.
    by_grant
        .into_values()
        .map(|mut t| {
            if t.acted && matches!(t.ended, Some((_, Ending::Superseded))) {
                t.ended = t.ended.map(|(at, _)| (at, Ending::Lapsed));
            }
            t
        })
        .collect()
}

/// Reads a job's state from its home: the peers nearest its key that keep
/// it (`None` if none does).
pub(crate) async fn read_home(client: &Client, job: Key) -> Result<Option<HomeState>, crate::NodeError> {
    // The set was the nearest when the job was submitted; a few more cover
    // peers that joined nearer since.
    let asked = nearest_peers(client, job, super::submit::HOME_SIZE + 3).await?;
    let mut replies = crate::quorum::ask_each(client, &asked, &Wire::Describe { key: job }, ASK_TIMEOUT);
    let mut state: Option<HomeState> = None;
    while let Some((_, reply)) = replies.next().await {
        if let Ok(Reply::Entry {
            peers, view, history, ..
        }) = reply
        {
            let state = state.get_or_insert_with(|| HomeState {
                peers: peers.clone(),
                views: Vec::new(),
                histories: Vec::new(),
            });
            if state.peers == peers {
                state.views.push(view);
                // A member keeps at most this many; one that sends more
                // (each grant's peer is looked up for `status`) is cut.
                let mut history = history;
                let extra = history.len().saturating_sub(MAX_TENANCIES);
                history.drain(..extra);
                state.histories.push(history);
            }
        }
    }
    Ok(state)
}

/// Peers a routing table holds at most when it knows the whole swarm (one
/// bucket's worth): then the nearest peers to any key are known here.
const WHOLE_SWARM: usize = 20;

/// The peers nearest `key`: from the routing table when it holds the whole
/// swarm (a small swarm: no lookup), else by a lookup.
pub(crate) async fn nearest(
    client: &Client,
    key: Key,
) -> Result<Vec<shoal_overlay::PeerInfo<crate::addr::NodeAddr>>, crate::NodeError> {
    let known = client.peers().await?;
    if known.len() < WHOLE_SWARM {
        return Ok(known);
    }
    Ok(client.find_node(key).await?.peers)
}

/// The `count` peers nearest `key` (this one among them if it is that
/// near), their addresses noted.
pub(crate) async fn nearest_peers(client: &Client, key: Key, count: usize) -> Result<Vec<PeerId>, crate::NodeError> {
    let found = nearest(client, key).await?;
    let mut near: Vec<(Key, PeerId)> = vec![(client.key(), client.peer_id())];
    for info in found {
        if info.key != client.key() {
            client.add_addresses(info.addr.peer, info.addr.addrs.clone()).await?;
            near.push((info.key, info.addr.peer));
        }
    }
    near.sort_by_key(|(k, _)| k.distance(&key));
    near.dedup_by_key(|(k, _)| *k);
    near.truncate(count);
    Ok(near.into_iter().map(|(_, p)| p).collect())
}

/// The peer id of the peer with overlay key `key`, found through the
/// overlay (its addresses noted).
pub(crate) async fn peer_of(client: &Client, key: Key) -> Option<PeerId> {
    if key == client.key() {
        return Some(client.peer_id());
    }
    let found = client.find_node(key).await.ok()?;
    let info = found.peers.into_iter().find(|p| p.key == key)?;
    client
        .add_addresses(info.addr.peer, info.addr.addrs.clone())
        .await
        .ok()?;
    Some(info.addr.peer)
}

/// How often the home duty looks at every key it keeps, not only the
/// ones that just joined.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often it forgets the jobs that ended long ago
/// ([`crate::quorum::KEEP_FINISHED`]).
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The home duty: supervises every job this peer keeps the tenure of,
/// until its result is committed.
pub(crate) async fn run(node: WeakClient) {
    let mut supervised: HashMap<Key, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut look_at = std::time::Instant::now();
    let mut forget_at = std::time::Instant::now();
    loop {
        let Some(client) = node.upgrade() else { return };
        let at = now();
        // Done here (committed, or on its way): nothing to place.
        let wanted = |entry: &Entry| entry.kind == Kind::Job && entry.acceptor.view(at).result.is_none();
        // The keys that just joined; every key once a second (those kept
        // from before a restart, and any whose task ended). Looking at
        // every key on every join made a batch of n jobs cost n² here.
        let joined = client.quorum.take_joined();
        let new: Vec<(Key, Entry)> = if std::time::Instant::now() >= look_at {
            look_at = std::time::Instant::now() + LOOK_EVERY;
            supervised.retain(|_, task| !task.is_finished());
            if std::time::Instant::now() >= forget_at {
                forget_at = std::time::Instant::now() + FORGET_EVERY;
                let forgot = client.quorum.forget_finished(at - crate::quorum::KEEP_FINISHED);
                if forgot > 0 {
                    tracing::debug!("forgot {forgot} jobs that ended over a day ago");
                }
            }
            client
                .quorum
                .entries_where(|k, e| !supervised.contains_key(k) && wanted(e))
        } else {
            joined
                .into_iter()
                .filter(|k| !supervised.contains_key(k))
                .filter_map(|k| client.quorum.entry(&k).map(|e| (k, e)))
                .filter(|(_, e)| wanted(e))
                .collect()
        };
        for (key, entry) in new {
            if supervised.contains_key(&key) {
                continue;
            }
            let Some(submission) = Submission::decode(&entry.payload) else {
                continue;
            };
            let mut order: Vec<(Key, PeerId)> = entry
                .peers
                .iter()
                .filter_map(|p| key_of_peer(p).map(|k| (k, *p)))
                .collect();
            order.sort_by_key(|(k, _)| k.distance(&key));
            let rank = order
                .iter()
                .position(|(_, p)| *p == client.peer_id())
                .unwrap_or(order.len());
            let job = Supervised {
                job: key,
                submission,
                bytes: entry.payload.clone(),
                peers: entry.peers.clone(),
                timing: entry.timing,
                executors: HashMap::new(),
                to: None,
            };
            // The home keeps the job's module, so that the job can run
            // again whoever else goes. Inputs can be large: they are the
            // submitter's to pin (`shoal pin`), not copied per job.
            let blobs: Vec<Key> = job.submission.spec.module.into_iter().collect();
            let keeper = client.clone();
            tokio::spawn(async move {
                for id in blobs {
                    if let Err(e) = super::executor::fetch(&keeper, id).await {
                        tracing::info!("job {key}: cannot keep its blob {id} yet: {e}");
                    }
                }
            });
            supervised.insert(key, tokio::spawn(supervise(client.downgrade(), job, rank)));
        }
        let quorum = client.quorum.clone();
        drop(client);
        tokio::select! {
            () = quorum.joined.notified() => {}
            () = tokio::time::sleep_until(look_at.into()) => {}
        }
    }
}

/// Drives `supervision` until the job is placed: returns the executor,
/// the grant number and the job's place in that executor's queue once
/// the grant holds the tenure. A grant above `after` that another
/// supervisor made, or a result already committed, ends it too.
pub(crate) async fn place_now(
    client: &Client,
    job: &mut Supervised,
    mut supervision: Supervision,
    after: u64,
) -> Result<(PeerId, u64, u32), SubmitError> {
    let started = std::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        supervision.handle_timeout(now());
        let drove = drive(client, job, &mut supervision).await;
        if let Some(granted) = drove.granted {
            return Ok(granted);
        }
        // Another supervisor placed it first (this peer was slow): it is
        // placed all the same.
        if let Some(grantee) = supervision
            .current()
            .filter(|g| g.n > after)
            .or_else(|| supervision.result().map(|(by, _)| *by))
            && let Some(peer) = peer_of(client, grantee.peer).await
        {
            return Ok((peer, grantee.n, 0));
        }
        match drove.failed {
            Some(SubmitError::Place {
                error: PlaceError::NoAnswer,
                ..
            }) if attempts < PLACE_ATTEMPTS => attempts += 1,
            Some(e) => return Err(e),
            None => {}
        }
        if started.elapsed() > PLACE_WITHIN {
            return Err(SubmitError::Invalid(format!(
                "job {} was not placed within {} s (its home goes on trying)",
                job.job,
                PLACE_WITHIN.as_secs()
            )));
        }
        let wait = supervision
            .poll_timeout()
            .map_or(Duration::from_millis(50), |t| t.saturating_since(now()))
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        tokio::time::sleep(wait).await;
    }
}

/// Watches this member's own record of a job's tenure. A member keeps
/// the tenure too: when its record says the grantee lapsed (no renewal
/// for a term), the executor is likely gone, and a supervisor need not
/// wait for its next read. Each rank waits [`LAPSE_STAGGER`] longer than
/// the nearer one, so that the nearest live member acts first and the
/// others hear of its placement.
struct LapseWatch {
    rank: u32,
    term: Duration,
    /// Since when the grantee looks lapsed here (or, after acting, when
    /// to look again).
    since: Option<std::time::Instant>,
}

impl LapseWatch {
    /// Whether this member should read the tenure now.
    fn due(&mut self, client: &Client, job: &Key) -> bool {
        self.due_at(client.quorum.view(job, now()), std::time::Instant::now())
    }

    /// [`LapseWatch::due`] with this member's `view` of the tenure at
    /// `at`.
    fn due_at(&mut self, view: Option<View>, at: std::time::Instant) -> bool {
        let lapsed = view.is_some_and(|v| v.grantee.is_some() && v.lapsed && v.result.is_none());
        if !lapsed {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(at);
        let waited = at.checked_duration_since(since);
        if waited.is_none_or(|w| w < LAPSE_STAGGER * self.rank) {
            return false;
        }
        // Acted: look again a term later if it still looks lapsed.
        self.since = Some(at + self.term);
        true
    }
}

/// Supervises one job from this home member until its result is
/// committed. The member nearest the job's key (`rank` 0) reads every half
/// term; the others read far less often (every `3 × rank` terms): they take
/// over only when it is gone.
async fn supervise(node: WeakClient, mut job: Supervised, rank: usize) {
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    let mut lapse = LapseWatch {
        rank,
        term: job.timing.term,
        since: None,
    };
    // The submitter places the job first, and nearer members step in
    // before this one; unless this member's own record says the grantee
    // lapsed (its executor gone), which cuts the wait short.
    let start = std::time::Instant::now() + RANK_DELAY * rank.saturating_add(1);
    while std::time::Instant::now() < start {
        {
            let Some(client) = node.upgrade() else { return };
            if holds_result(&client, &job.job) {
                return;
            }
            if lapse.due(&client, &job.job) {
                break;
            }
        }
        tokio::time::sleep(LAPSE_CHECK).await;
    }
    let members = members_of(&job.peers);
    let every = if rank == 0 {
        job.timing.term / 2
    } else {
        job.timing.term * 3 * rank
    };
    let mut supervision = Supervision::new(now(), members, job.timing, every, ASK_TIMEOUT);
    loop {
        let Some(client) = node.upgrade() else { return };
        if supervision.result().is_some() || holds_result(&client, &job.job) {
            return;
        }
        let at = now();
        if supervision.poll_timeout().is_some_and(|t| t <= at) {
            supervision.handle_timeout(at);
        }
        if lapse.due(&client, &job.job) {
            supervision.check_now(at);
        }
        let drove = drive(&client, &mut job, &mut supervision).await;
        if let Some(why) = drove.failed {
            tracing::info!("job {}: placing it again failed: {why}", job.job);
        }
        let wait = supervision
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.saturating_since(now()))
            .clamp(Duration::from_millis(10), LAPSE_CHECK);
        drop(client);
        tokio::time::sleep(wait).await;
    }
}

/// Whether this member holds the job's result: then the job is done or
/// being committed, and the members that do not hold it (a majority, if it
/// is not committed yet) go on supervising. So a short job's members stop
/// as soon as its result reaches them, not after a read of the home.
fn holds_result(client: &Client, job: &Key) -> bool {
    client.quorum.view(job, now()).is_some_and(|v| v.result.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_resources::quorum::Grantee;
    use std::time::Instant;

    fn view(lapsed: bool) -> Option<View> {
        Some(View {
            grantee: Some(Grantee {
                peer: Key::of_content(b"executor"),
                n: 1,
            }),
            lapsed,
            fresh_for: Duration::ZERO,
            max_n: 1,
            saved: None,
            result: None,
            moved_with: None,
        })
    }

    fn watch(rank: u32) -> LapseWatch {
        LapseWatch {
            rank,
            term: Duration::from_secs(10),
            since: None,
        }
    }

    #[test]
    fn the_history_merges_what_each_member_saw_of_each_grant() {
        use shoal_resources::quorum::LetGo;
        let at = shoal_overlay::Instant::from_micros;
        let grant = |n| Grantee {
            peer: Key::of_content(&[n as u8]),
            n,
        };
        let tenancy = |n, granted, acted, saves, ended| Tenancy {
            by: grant(n),
            granted_at: at(granted),
            acted,
            saves,
            saved_at: (saves > 0).then(|| at(granted + saves)),
            ended,
        };
        // One member heard grant 1 renewed and saw it lapse; another never
        // heard a renewal but took more of its checkpoints. Grant 2's
        // release reached only the first.
        let a = vec![
            tenancy(1, 10, true, 2, Some((at(100), Ending::Lapsed))),
            tenancy(2, 101, true, 0, Some((at(200), Ending::LetGo(LetGo::Moved)))),
            tenancy(3, 201, false, 0, None),
        ];
        let b = vec![
            tenancy(1, 12, false, 3, Some((at(90), Ending::Superseded))),
            tenancy(2, 100, true, 0, Some((at(210), Ending::Lapsed))),
        ];
        let merged = merge_histories(&[a, b]);
        let seen: Vec<_> = merged
            .iter()
            .map(|t| (t.by.n, t.granted_at, t.acted, t.saves, t.ended))
            .collect();
        assert_eq!(
            seen,
            [
                (1, at(10), true, 3, Some((at(100), Ending::Lapsed))),
                (2, at(100), true, 0, Some((at(200), Ending::LetGo(LetGo::Moved)))),
                (3, at(201), false, 0, None),
            ]
        );
        // One member's view alone: a grant it saw superseded that another
        // saw renewed ran, and was lost.
        let c = vec![tenancy(4, 300, false, 0, Some((at(400), Ending::Superseded)))];
        let d = vec![tenancy(4, 300, true, 0, None)];
        assert_eq!(merge_histories(&[c, d])[0].ended, Some((at(400), Ending::Lapsed)));
    }

    #[test]
    fn the_nearest_member_acts_on_a_lapse_at_once_and_the_next_a_second_later() {
        let t = Instant::now();
        let (mut nearest, mut next) = (watch(0), watch(1));
        assert!(!nearest.due_at(view(false), t), "a fresh grantee: nothing to do");
        assert!(nearest.due_at(view(true), t));
        assert!(!next.due_at(view(true), t));
        assert!(!next.due_at(view(true), t + Duration::from_millis(500)));
        assert!(next.due_at(view(true), t + Duration::from_secs(1)));
        // Having acted, each looks again only a term later.
        assert!(!nearest.due_at(view(true), t + Duration::from_secs(5)));
        assert!(nearest.due_at(view(true), t + Duration::from_secs(10)));
        // A renewal (or a new grantee) resets it; an unplaced job is not a
        // lapse.
        let mut other = watch(0);
        assert!(!other.due_at(view(false), t));
        let mut unplaced = view(true);
        if let Some(v) = unplaced.as_mut() {
            v.grantee = None;
        }
        assert!(!other.due_at(unplaced, t));
        assert!(!other.due_at(None, t));
    }
}
