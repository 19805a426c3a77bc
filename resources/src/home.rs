//! What every home duty shares: who belongs to a key's home, when the next
//! round of duties is due, how many lookups one round may spend and where
//! it spends them, and how long a failing action waits before it is tried
//! again.
//!
//! A *home duty* is work that the peers nearest a key do for it because
//! they are nearest: keep copies of a pinned blob ([`pin`](crate::pin)),
//! and later supervise a job or arbitrate a named lease. Each duty is a
//! sans-IO machine that the node and the simulator drive alike; the pieces
//! here are the parts those machines have in common, so that a new duty
//! reuses them rather than growing its own copy:
//!
//! - [`is_member`]: membership, given the peers known nearest the key;
//! - [`Rounds`]: the round timer, its first round offset by a phase the
//!   driver draws (so that a swarm's peers do not act in step), and the
//!   round counter that back-off counts in;
//! - [`Budget`]: a bounded number of lookups per round, starting each round
//!   at a rotating place, so that many keys cost a steady trickle of
//!   lookups rather than a burst, and every key gets its turn;
//! - [`Backoff`]: per key, the round before which a failed action is not
//!   tried again, doubling up to a cap.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

/// Whether `local` is among the `size` peers closest to `key`, given the
/// peers it knows nearest to `key` (at least `size` of them if it knows
/// that many; any order; `local` itself may be among them and does not
/// count against itself). Peers that `declined` the key (see the overlay's
/// `decline`) are left out of the home, `local` included. A home of size 0
/// has no members.
pub fn is_member(local: &Key, key: &Key, size: u8, known: impl IntoIterator<Item = Key>, declined: &[Key]) -> bool {
    let mine = local.distance(key);
    let closer = known
        .into_iter()
        .filter(|k| k.distance(key) < mine && !declined.contains(k))
        .count();
    closer < usize::from(size) && !declined.contains(local)
}

/// The round timer of a duty: rounds every `every`, the first one `every +
/// phase` after the start, and the number of rounds begun so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rounds {
    every: Duration,
    next: Instant,
    begun: u64,
}

impl Rounds {
    /// Rounds every `every`, the first at `now + every + phase` (the driver
    /// draws `phase`, below `every`, from its seeded generator).
    pub fn new(now: Instant, every: Duration, phase: Duration) -> Self {
        Rounds {
            every,
            next: now + every + phase,
            begun: 0,
        }
    }

    /// When the next round is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Rounds begun so far (the clock [`Backoff`] counts in).
    pub fn begun(&self) -> u64 {
        self.begun
    }

    /// A round begins at `now`: the next is due `every` later.
    pub fn begin(&mut self, now: Instant) -> u64 {
        self.begun += 1;
        self.next = now + self.every;
        self.begun
    }
}

/// At most `limit` lookups a round, handed out starting at a place that
/// moves on by `limit` every round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    limit: usize,
    start: usize,
}

impl Budget {
    /// A budget of `limit` lookups per round.
    pub fn new(limit: usize) -> Self {
        Budget { limit, start: 0 }
    }

    /// The order in which a round visits `len` items (indices), starting at
    /// this round's place; the next round starts `limit` further on.
    pub fn order(&mut self, len: usize) -> impl Iterator<Item = usize> + use<> {
        let start = self.start % len.max(1);
        self.start = self.start.wrapping_add(self.limit);
        (0..len).map(move |i| (i + start) % len)
    }

    /// Most lookups per round.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Per key, the failures in a row and the first round that may try again:
/// the next round after a first failure, then twice as many rounds after
/// each further one, at most `cap` — so that what nobody can serve any
/// more is not asked for (and logged) every round forever, and what failed
/// for a moment is soon tried again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    cap: u64,
    failed: BTreeMap<Key, (u32, u64)>,
}

impl Backoff {
    /// Waits of at most `cap` rounds.
    pub fn new(cap: u64) -> Self {
        Backoff {
            cap,
            failed: BTreeMap::new(),
        }
    }

    /// Whether `key` still waits out a failure at round `round`.
    pub fn waiting(&self, key: &Key, round: u64) -> bool {
        self.failed.get(key).is_some_and(|(_, next)| round < *next)
    }

    /// An action on `key` failed at round `round`.
    pub fn failed(&mut self, key: Key, round: u64) {
        let entry = self.failed.entry(key).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(1);
        let wait = 1u64.checked_shl(entry.0 - 1).unwrap_or(u64::MAX).min(self.cap.max(1));
        entry.1 = round.saturating_add(wait);
    }

    /// An action on `key` succeeded, or `key` is no longer this peer's
    /// concern: the next failure starts over.
    pub fn forget(&mut self, key: &Key) {
        self.failed.remove(key);
    }

    /// Keeps only the keys `keep` says are still this peer's concern.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key) -> bool) {
        self.failed.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_counts_the_known_peers_nearer_the_key() {
        let id = Key::of_content(b"blob");
        let mut peers: Vec<Key> = (0..10u8).map(|n| Key::of_content(&[n, 1])).collect();
        peers.sort_by_key(|k| k.distance(&id));
        let others = |me: usize| -> Vec<Key> { peers.iter().copied().filter(|k| *k != peers[me]).collect() };
        // The 3rd nearest is a member of a home of 3, the 4th is not.
        assert!(is_member(&peers[2], &id, 3, others(2), &[]));
        assert!(!is_member(&peers[3], &id, 3, others(3), &[]));
        assert!(is_member(&peers[3], &id, 4, others(3), &[]));
        // A nearer peer that declined makes room for the 4th; the one that
        // declined is no member.
        assert!(is_member(&peers[3], &id, 3, others(3), &[peers[0]]));
        assert!(!is_member(&peers[0], &id, 3, others(0), &[peers[0]]));
        // A home of 0 has no members.
        assert!(!is_member(&peers[0], &id, 0, [], &[]));
        // Listed among the known, the local peer does not count against
        // itself.
        assert!(is_member(&peers[2], &id, 3, peers.clone(), &[]));
    }

    #[test]
    fn rounds_come_every_period_after_a_first_one_offset_by_the_phase() {
        let start = Instant::from_micros(1_000);
        let mut rounds = Rounds::new(start, Duration::from_secs(30), Duration::from_secs(7));
        assert_eq!(rounds.next(), start + Duration::from_secs(37));
        assert_eq!(rounds.begun(), 0);
        let late = start + Duration::from_secs(40);
        assert_eq!(rounds.begin(late), 1);
        assert_eq!(rounds.next(), late + Duration::from_secs(30));
        assert_eq!(rounds.begin(late + Duration::from_secs(30)), 2);
    }

    #[test]
    fn a_budget_starts_each_round_where_the_last_one_left_off() {
        let mut budget = Budget::new(2);
        assert_eq!(budget.limit(), 2);
        assert_eq!(budget.order(5).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(budget.order(5).collect::<Vec<_>>(), [2, 3, 4, 0, 1]);
        assert_eq!(budget.order(5).collect::<Vec<_>>(), [4, 0, 1, 2, 3]);
        assert_eq!(budget.order(0).count(), 0);
    }

    #[test]
    fn a_failing_key_is_tried_again_next_round_then_ever_less_often() {
        let mut backoff = Backoff::new(20);
        let (id, other) = (Key::of_content(b"a"), Key::of_content(b"b"));
        assert!(!backoff.waiting(&id, 0));
        // Failed at round 10: waits out round 10 only, then 2, 4, 8, 16,
        // 20, 20 rounds.
        let mut round = 10;
        let mut waits = Vec::new();
        for _ in 0..7 {
            backoff.failed(id, round);
            let next = (round..round + 100).find(|r| !backoff.waiting(&id, *r)).unwrap();
            waits.push(next - round);
            round = next;
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 20, 20]);
        assert!(!backoff.waiting(&other, round), "only the failing key waits");
        // A success ends the waiting, and the next failure starts over.
        backoff.failed(id, round);
        assert!(backoff.waiting(&id, round));
        backoff.forget(&id);
        assert!(!backoff.waiting(&id, round));
        backoff.failed(id, round);
        assert!(!backoff.waiting(&id, round + 1));
        // Many failures do not overflow the wait.
        for _ in 0..200 {
            backoff.failed(other, u64::MAX - 5);
        }
        assert!(backoff.waiting(&other, u64::MAX - 1));
        backoff.retain(|k| *k == id);
        assert!(!backoff.waiting(&other, u64::MAX - 1));
        assert!(backoff.waiting(&id, round));
    }
}
