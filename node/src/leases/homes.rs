//! The members' duty for the named leases this peer keeps: moving a
//! lease's member set to the name's home as it is now
//! ([`shoal_resources::rehome`]), so that a lease outlives the peers that
//! first kept it and stays where an acquirer looks for it.
//!
//! Every look (a quarter of `gone_after`, between 1 and 10 s), for each
//! lease whose current set this peer belongs to (at most
//! [`LOOKS_AT_ONCE`] at a time, in turn), it asks the other members
//! whether they are there (`Describe`). Only the member with the lowest
//! overlay key among those that answered and still serve the set goes on:
//! it looks up the peers nearest the name (when a member is gone or the
//! set stuck, else at most every minute), and moves the set there when a
//! member has not answered for `gone_after`, when two or more of the set
//! are no longer among the nearest (a member silent for less than
//! `gone_after` has the benefit of the doubt), or when a move sealed the
//! set and did not finish within three terms (its mover crashed). The new
//! set is the nearest peers, without the gone ones; it needs three at
//! least.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::PeerId;
use shoal_overlay::Key;
use shoal_resources::rehome::{Ballot, Next, Rehome, RehomeRequest};
use tokio::sync::mpsc;

use super::HOME_SIZE;
use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};
use crate::quorum::{Entry, Kind, Reply, Wire, addrs_of, ask_each, members_of, peers_of};

/// How long a member may be silent before the set moves without it, by
/// default.
pub const GONE_AFTER: Duration = Duration::from_secs(60);
/// How long one ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Fewest members a moved set has.
const MIN_MEMBERS: usize = 3;

/// What the duty remembers between looks.
#[derive(Default)]
struct Memory {
    /// Since when each member of each lease has not answered.
    silent: BTreeMap<(Key, PeerId), Instant>,
    /// Since when each lease's set has been sealed here without moving.
    sealed: BTreeMap<Key, Instant>,
    /// Leases whose set moved on without this member, though it never
    /// learned so itself (it was sealed for a value that was not chosen):
    /// its moves would only find the set moved again.
    left: BTreeSet<Key>,
    /// When each lease's home was last looked up while its set was whole:
    /// then a lookup (an overlay query) is spent at most every
    /// [`HOME_EVERY`].
    homed: BTreeMap<Key, Instant>,
}

/// How often the home of a lease whose members all answer is looked up,
/// to see whether nearer peers joined.
const HOME_EVERY: Duration = Duration::from_secs(60);

/// Looks (and the moves they start) under way at once, at most.
const LOOKS_AT_ONCE: usize = 8;

/// Runs the duty until the node stops.
pub(crate) async fn run(node: WeakClient, gone_after: Duration) {
    let every = (gone_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let memory = Arc::new(Mutex::new(Memory::default()));
    // Keys with a look or a move under way, and the permits they hold.
    let busy: Arc<Mutex<BTreeSet<Key>>> = Arc::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(LOOKS_AT_ONCE));
    let mut cursor = 0usize;
    loop {
        tokio::time::sleep(every).await;
        let Some(client) = node.upgrade() else { return };
        let mut kept = client.quorum.entries_where(|_, e| {
            e.kind == Kind::Lease && e.home.moved().is_none() && e.peers.contains(&client.peer_id())
        });
        {
            let keys: BTreeSet<Key> = kept.iter().map(|(k, _)| *k).collect();
            let mut m = lock(&memory);
            m.silent.retain(|(k, _), _| keys.contains(k));
            m.sealed.retain(|k, _| keys.contains(k));
            m.left.retain(|k| keys.contains(k));
            m.homed.retain(|k, _| keys.contains(k));
            kept.retain(|(k, _)| !m.left.contains(k));
        }
        // Each look starts where the last stopped, so that every lease has
        // its turn however many there are.
        if !kept.is_empty() {
            let start = cursor % kept.len();
            kept.rotate_left(start);
        }
        for (key, entry) in kept {
            if lock(&busy).contains(&key) {
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            cursor += 1;
            lock(&busy).insert(key);
            let (client, memory, busy) = (client.clone(), memory.clone(), busy.clone());
            tokio::spawn(async move {
                if let Some(to) = look(&client, key, &entry, gone_after, &memory).await
                    && let Some(next) = rehome(&client, key, &entry, to).await
                    && !next.members.contains(&client.key())
                    && client.quorum.entry(&key).is_some_and(|e| e.home.moved().is_none())
                {
                    lock(&memory).left.insert(key);
                }
                lock(&busy).remove(&key);
                drop(permit);
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether this member should move the set of `key` now, and where to.
async fn look(
    client: &Client,
    key: Key,
    entry: &Entry,
    gone_after: Duration,
    memory: &Mutex<Memory>,
) -> Option<Vec<PeerId>> {
    let me = client.peer_id();
    let others: Vec<PeerId> = entry.peers.iter().filter(|p| **p != me).copied().collect();
    let mut replies = ask_each(client, &others, &Wire::Describe { key }, ASK_TIMEOUT);
    // Who answered, and the set each serves (or knows the key moved to).
    let mut answered: BTreeMap<PeerId, u64> = BTreeMap::new();
    while let Some((peer, reply)) = replies.next().await {
        match reply {
            Ok(Reply::Entry { epoch, .. }) => {
                answered.insert(peer, epoch);
            }
            Ok(_) => {
                answered.insert(peer, entry.home.epoch());
            }
            Err(_) => {}
        }
    }
    let at = Instant::now();
    let (gone, silent, stuck) = {
        let mut m = lock(memory);
        for p in &others {
            if answered.contains_key(p) {
                m.silent.remove(&(key, *p));
            } else {
                m.silent.entry((key, *p)).or_insert(at);
            }
        }
        let sealed_since = if entry.home.sealed() {
            Some(*m.sealed.entry(key).or_insert(at))
        } else {
            m.sealed.remove(&key);
            None
        };
        let silent_for = |p: &PeerId| m.silent.get(&(key, *p)).map(|since| at.duration_since(*since));
        let gone: BTreeSet<PeerId> = others
            .iter()
            .filter(|p| silent_for(p).is_some_and(|d| d >= gone_after))
            .copied()
            .collect();
        let silent: BTreeSet<PeerId> = others.iter().filter(|p| silent_for(p).is_some()).copied().collect();
        let stuck = sealed_since.is_some_and(|since| at.duration_since(since) >= entry.timing.fresh_for() * 3);
        (gone, silent, stuck)
    };
    // The lowest key among those that answered and still serve this set
    // moves it (one that moved on already does not look at it any more).
    let mine = client.key();
    let epoch = entry.home.epoch();
    if answered
        .iter()
        .any(|(p, e)| *e <= epoch && key_of_peer(p).is_some_and(|k| k < mine))
    {
        return None;
    }
    // With every member there, only new peers nearer the name could move
    // the set: worth an overlay lookup now and then, not every look.
    if gone.is_empty() && !stuck {
        let mut m = lock(memory);
        if m.homed
            .get(&key)
            .is_some_and(|last| at.duration_since(*last) < HOME_EVERY)
        {
            return None;
        }
        m.homed.insert(key, at);
    }
    let home = crate::jobs::home::nearest_peers(client, key, HOME_SIZE + gone.len())
        .await
        .ok()?;
    // A lookup that found fewer peers than a full home says nothing about
    // who is nearest (the overlay may not know them all yet): only gone
    // members move the set then.
    let full = home.len() >= HOME_SIZE + gone.len();
    // Peers not in the set join it only if they answer now (the overlay's
    // table may still name a peer that died).
    let newcomers: Vec<PeerId> = home
        .iter()
        .filter(|p| !entry.peers.contains(p) && **p != me)
        .copied()
        .collect();
    let mut alive = BTreeSet::new();
    let mut replies = ask_each(client, &newcomers, &Wire::Describe { key }, ASK_TIMEOUT);
    while let Some((peer, reply)) = replies.next().await {
        if reply.is_ok() {
            alive.insert(peer);
        }
    }
    let to: Vec<PeerId> = home
        .into_iter()
        .filter(|p| !gone.contains(p) && (entry.peers.contains(p) || *p == me || alive.contains(p)))
        .take(HOME_SIZE)
        .collect();
    // Members no longer among the nearest; one silent but not yet gone
    // has the benefit of the doubt.
    let outside = entry
        .peers
        .iter()
        .filter(|p| full && !gone.contains(p) && !silent.contains(p) && !to.contains(p))
        .count();
    if to.len() < MIN_MEMBERS || !(stuck || !gone.is_empty() || outside >= 2) {
        return None;
    }
    Some(to)
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
