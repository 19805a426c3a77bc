//! The members' duty for the named leases this peer keeps: moving a
//! lease's member set to the name's home as it is now
//! ([`shoal_resources::rehome`]), so that a lease outlives the peers that
//! first kept it and stays where an acquirer looks for it.
//!
//! When and where a set moves is [`Watch`]'s rule (the simulator runs the
//! same); this module carries its asks. Every look (a quarter of
//! `gone_after`, between 1 and 10 s) it asks each peer that shares a set
//! with this one, once for all the leases they share
//! ([`Wire::Epochs`]), whether it is there and which set it serves; for
//! each lease whose watch says so it then looks the home up in the
//! overlay, asks the newcomers whether they are there, and moves the set
//! where the watch says (at most [`LOOKS_AT_ONCE`] lookups and moves at
//! a time).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use shoal_overlay::Key;
use shoal_resources::rehome::watch::{Serving, Step, Watch};
use shoal_resources::rehome::{Ballot, Next, Rehome, RehomeRequest};
use tokio::sync::mpsc;

use super::HOME_SIZE;
use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};
use crate::quorum::{Entry, Kind, MAX_BATCH, Reply, Wire, addrs_of, ask, ask_each, members_of, peers_of};

/// How long a member may be silent before the set moves without it, by
/// default.
pub const GONE_AFTER: Duration = Duration::from_secs(60);
/// How long one ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the duty remembers between looks.
#[derive(Default)]
struct Memory {
    /// Each lease's watch.
    watches: BTreeMap<Key, Watch>,
    /// Leases whose set moved on without this member, though it never
    /// learned so itself (it was sealed for a value that was not chosen):
    /// its moves would only find the set moved again. Kept with the epoch
    /// of the set it served then: a later set that names it again is
    /// watched.
    left: BTreeMap<Key, u64>,
}

/// Lookups and moves under way at once, at most.
const LOOKS_AT_ONCE: usize = 8;
/// Pings (one per peer sharing leases, per 256 of them) under way at once,
/// at most.
const PINGS_AT_ONCE: usize = 32;

/// Runs the duty until the node stops.
pub(crate) async fn run(node: WeakClient, gone_after: Duration) {
    let every = (gone_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let memory = Arc::new(Mutex::new(Memory::default()));
    // Keys with a lookup or a move under way.
    let busy: Arc<Mutex<BTreeSet<Key>>> = Arc::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(LOOKS_AT_ONCE));
    loop {
        tokio::time::sleep(every).await;
        let Some(client) = node.upgrade() else { return };
        let mut kept = client.quorum.entries_where(|_, e| {
            e.kind == Kind::Lease && e.home.moved().is_none() && e.peers.contains(&client.peer_id())
        });
        {
            let keys: BTreeSet<Key> = kept.iter().map(|(k, _)| *k).collect();
            let mut m = lock(&memory);
            m.watches.retain(|k, _| keys.contains(k));
            let epochs: BTreeMap<Key, u64> = kept.iter().map(|(k, e)| (*k, e.home.epoch())).collect();
            m.left.retain(|k, epoch| epochs.get(k) == Some(epoch));
            let busy = lock(&busy);
            kept.retain(|(k, _)| !m.left.contains_key(k) && !busy.contains(k));
        }
        let heard = ping(&client, &kept).await;
        for (key, entry) in kept {
            let set = members_of(&entry.peers);
            let serving = serving(&client, &entry, &set);
            let answered = heard.get(&key).cloned().unwrap_or_default();
            let step = lock(&memory)
                .watches
                .entry(key)
                .or_insert_with(|| Watch::new(gone_after, HOME_SIZE))
                .heard(steady(), serving, &answered);
            let Step::FindHome { count } = step else {
                continue;
            };
            lock(&busy).insert(key);
            let (client, memory, busy, permits) = (client.clone(), memory.clone(), busy.clone(), permits.clone());
            tokio::spawn(async move {
                if let Ok(_permit) = permits.acquire_owned().await
                    && let Some(to) = find_home(&client, key, &entry, count, &memory).await
                    && let Some(next) = rehome(&client, key, &entry, to).await
                    && !next.members.contains(&client.key())
                    && client.quorum.entry(&key).is_some_and(|e| e.home.moved().is_none())
                {
                    lock(&memory).left.insert(key, entry.home.epoch());
                }
                lock(&busy).remove(&key);
            });
        }
    }
}

/// This member's view of the set it serves for `entry` (`set`, its
/// members), for its watch.
fn serving<'a>(client: &Client, entry: &Entry, set: &'a shoal_resources::quorum::Members) -> Serving<'a> {
    Serving {
        me: client.key(),
        set,
        epoch: entry.home.epoch(),
        sealed: entry.home.sealed(),
        timing: entry.timing,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The watches' clock: time since this process started, which only moves
/// forward (a wall clock stepped forward by `gone_after` would make every
/// member that missed one ping look gone at once, and one stepped back
/// would stop the watch for as long).
fn steady() -> shoal_overlay::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let since = START.get_or_init(std::time::Instant::now).elapsed();
    shoal_overlay::Instant::from_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

/// Asks every peer that shares a set of `kept` with this one, once for
/// all the leases they share, whether it is there: for each lease, the
/// other members that answered and the epoch each serves or knows the
/// lease moved to (a member that keeps nothing for it counts as serving
/// this peer's epoch, as one that answers `Describe` with `Unknown`).
async fn ping(client: &Client, kept: &[(Key, Entry)]) -> BTreeMap<Key, BTreeMap<Key, u64>> {
    let me = client.peer_id();
    let own: BTreeMap<Key, u64> = kept.iter().map(|(k, e)| (*k, e.home.epoch())).collect();
    let mut shared: BTreeMap<PeerId, Vec<Key>> = BTreeMap::new();
    for (key, entry) in kept {
        for peer in entry.peers.iter().filter(|p| **p != me) {
            shared.entry(*peer).or_default().push(*key);
        }
    }
    let mut asks = Vec::new();
    for (peer, keys) in shared {
        for chunk in keys.chunks(MAX_BATCH) {
            let (client, keys) = (client.clone(), chunk.to_vec());
            asks.push(async move {
                let wire = Wire::Epochs { keys: keys.clone() };
                let reply = match ask(&client, peer, wire, ASK_TIMEOUT).await {
                    Ok(reply) => Ok(reply),
                    // A peer from before `Epochs` cannot read it: one that
                    // answers `Describe` is there all the same (serving
                    // this peer's epochs, as far as this look can tell).
                    Err(_) => ask(&client, peer, Wire::Describe { key: keys[0] }, ASK_TIMEOUT)
                        .await
                        .map(|_| Reply::Unknown),
                };
                (peer, keys, reply)
            });
        }
    }
    // However many peers share leases with this one, a few dozen pings at
    // a time.
    let mut asks = futures::stream::iter(asks).buffer_unordered(PINGS_AT_ONCE);
    let mut heard: BTreeMap<Key, BTreeMap<Key, u64>> = BTreeMap::new();
    while let Some((peer, keys, reply)) = asks.next().await {
        let (Ok(reply), Some(member)) = (reply, key_of_peer(&peer)) else {
            continue;
        };
        let epochs = match reply {
            Reply::Epochs(epochs) if epochs.len() == keys.len() => epochs,
            _ => vec![None; keys.len()],
        };
        for (key, epoch) in keys.into_iter().zip(epochs) {
            let epoch = epoch.or_else(|| own.get(&key).copied()).unwrap_or_default();
            heard.entry(key).or_default().insert(member, epoch);
        }
    }
    heard
}

/// Where to move the set of `key`, if anywhere, once its watch asked for
/// the `count` peers nearest it.
async fn find_home(
    client: &Client,
    key: Key,
    entry: &Entry,
    count: usize,
    memory: &Mutex<Memory>,
) -> Option<Vec<PeerId>> {
    let set = members_of(&entry.peers);
    let serving = serving(client, entry, &set);
    let home = crate::jobs::home::nearest_peers(client, key, count).await.ok()?;
    let by_key: BTreeMap<Key, PeerId> = home.iter().filter_map(|p| Some((key_of_peer(p)?, *p))).collect();
    let home: Vec<Key> = home.iter().filter_map(key_of_peer).collect();
    let newcomers: Vec<PeerId> = lock(memory)
        .watches
        .get(&key)?
        .newcomers(serving, &home)
        .iter()
        .filter_map(|k| by_key.get(k).copied())
        .collect();
    let mut alive = BTreeSet::new();
    let mut replies = ask_each(client, &newcomers, &Wire::Describe { key }, ASK_TIMEOUT);
    while let Some((peer, reply)) = replies.next().await {
        if let (Ok(_), Some(k)) = (reply, key_of_peer(&peer)) {
            alive.insert(k);
        }
    }
    let to = lock(memory).watches.get_mut(&key)?.choose(serving, &home, &alive)?;
    // The set's own peers and the home's, by key.
    let peers: BTreeMap<Key, PeerId> = entry
        .peers
        .iter()
        .filter_map(|p| Some((key_of_peer(p)?, *p)))
        .chain(by_key)
        .collect();
    to.peers().iter().map(|k| peers.get(k).copied()).collect()
}

/// What comes back to a move: an answer to one of its asks.
type Heard = (u64, Key, Reply);

/// Moves the set of `key` to `to`, and says how it went in the log; the
/// set that serves the key now, if the move (or an earlier one) finished.
async fn rehome(client: &Client, key: Key, entry: &Entry, to: Vec<PeerId>) -> Option<Next> {
    let name = String::from_utf8_lossy(&entry.payload).into_owned();
    let mut peers: BTreeMap<Key, PeerId> = entry
        .peers
        .iter()
        .chain(&to)
        .filter_map(|p| key_of_peer(p).map(|k| (k, *p)))
        .collect();
    // A round above every one this peer used for the key: its own
    // promises, and the clock's microseconds (a move never repeats one).
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let ballot = Ballot {
        round: entry.home.next_round().max(clock),
        by: client.key(),
    };
    let mut mover = Rehome::new(
        now(),
        ballot,
        entry.home.installed().cloned(),
        members_of(&entry.peers),
        members_of(&to),
        addrs_of(&to),
        entry.timing,
    );
    let (heard_tx, mut heard) = mpsc::unbounded_channel::<Heard>();
    let deadline = tokio::time::Instant::now() + entry.timing.term * 4;
    loop {
        while let Some(action) = mover.poll_action() {
            if let RehomeRequest::Install(next) | RehomeRequest::Chosen(next) = &action.request
                && let Ok(named) = peers_of(&next.addrs, &next.members)
            {
                peers.extend(named.iter().filter_map(|p| key_of_peer(p).map(|k| (k, *p))));
            }
            let targets: Vec<PeerId> = action.to.peers().iter().filter_map(|k| peers.get(k)).copied().collect();
            let wire = Wire::Rehome {
                key,
                request: action.request,
                timing: entry.timing,
                payload: entry.payload.clone(),
            };
            let mut replies = ask_each(client, &targets, &wire, ASK_TIMEOUT);
            let (tx, ask) = (heard_tx.clone(), action.ask);
            tokio::spawn(async move {
                while let Some((peer, reply)) = replies.next().await {
                    if let (Some(member), Ok(reply)) = (key_of_peer(&peer), reply)
                        && tx.send((ask, member, reply)).is_err()
                    {
                        return;
                    }
                }
            });
        }
        if mover.is_done() || tokio::time::Instant::now() >= deadline {
            break;
        }
        let wake = mover
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.saturating_since(now()))
            .min(Duration::from_secs(1));
        tokio::select! {
            got = heard.recv() => {
                if let Some((ask, member, Reply::Rehome(answer))) = got {
                    mover.handle_answer(now(), ask, member, &answer);
                }
            }
            () = tokio::time::sleep(wake) => mover.handle_timeout(now()),
        }
    }
    match mover.outcome() {
        Some(Ok(next)) => {
            tracing::info!(
                "lease {name:?}: its member set moved to its home now (epoch {}, {} members)",
                next.epoch,
                next.members.len()
            );
            return Some(next.clone());
        }
        Some(Err(why)) => tracing::warn!("lease {name:?}: its member set could not move: {why}"),
        None => tracing::warn!("lease {name:?}: moving its member set took too long; another look tries again"),
    }
    None
}
