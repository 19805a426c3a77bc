//! The iterative lookup: a state machine that knows whom to ask next.
//!
//! It holds candidates sorted by distance to the target. A driver (the
//! [`Overlay`](crate::Overlay)) asks it for the next peer to query, and feeds
//! it each answer (`on_success`) or failure (`on_failure`). At most `alpha`
//! requests are in flight per path; the lookup ends when the `k` closest
//! candidates that did not fail have all answered, or nothing is left to ask.
//! Once `alpha` answers in a row bring nothing closer than the closest
//! candidate known, the path asks all of its `k` closest unasked candidates
//! at once, as the Kademlia paper prescribes for its final round.
//!
//! With `paths > 1` it runs disjoint paths (S/Kademlia): the seeds are dealt
//! round-robin to the paths, and no peer is queried by two paths, so one
//! adversarial region cannot capture every path.

use std::collections::BTreeSet;

use crate::{Addr, Key, PeerInfo};

/// Where a candidate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum State {
    NotContacted,
    Waiting,
    Succeeded,
    /// No answer within the stall timeout: the lookup moved on, but a late
    /// answer is still taken.
    Stalled,
    /// Failed, or skipped because another path claimed it.
    Failed,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
struct Candidate<A> {
    peer: PeerInfo<A>,
    state: State,
    /// Length of the chain of responses through which this peer was first
    /// learned: 0 for seeds from the local table.
    hops: u8,
    /// Requests sent to this peer so far.
    attempts: u8,
}

/// Requests a lookup sends one peer before it stops waiting for it: one
/// retry covers a lost message without waiting out the whole timeout.
pub const MAX_ATTEMPTS: u8 = 2;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
struct Path<A> {
    /// Sorted by distance, closest first; at most `capacity` long.
    candidates: Vec<Candidate<A>>,
    in_flight: usize,
    /// Answers in a row that brought no candidate closer than the closest.
    without_progress: usize,
}

/// A lookup's progress; see the module docs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub struct Lookup<A> {
    target: Key,
    k: usize,
    alpha: usize,
    capacity: usize,
    paths: Vec<Path<A>>,
    /// Peers queried by some path; only kept with disjoint paths.
    claimed: BTreeSet<Key>,
}

impl<A: Addr> Lookup<A> {
    /// A lookup for `target` starting from `seeds` (the local table's closest).
    pub fn new(target: Key, seeds: Vec<PeerInfo<A>>, k: usize, alpha: usize, paths: usize) -> Self {
        let paths_count = paths.clamp(1, alpha.max(1));
        let capacity = (3 * k).max(16);
        let mut lookup = Lookup {
            target,
            k,
            alpha: (alpha / paths_count).max(1),
            capacity,
            paths: (0..paths_count)
                .map(|_| Path {
                    candidates: Vec::new(),
                    in_flight: 0,
                    without_progress: 0,
                })
                .collect(),
            claimed: BTreeSet::new(),
        };
        for (i, seed) in seeds.into_iter().enumerate() {
            let path = i % paths_count;
            lookup.insert(path, seed, 0);
        }
        lookup
    }

    /// The key being looked up.
    pub fn target(&self) -> Key {
        self.target
    }

    /// Number of disjoint paths.
    pub fn path_count(&self) -> usize {
        self.paths.len()
    }

    fn insert(&mut self, path: usize, peer: PeerInfo<A>, hops: u8) {
        let target = self.target;
        let distance = peer.key.distance(&target);
        let candidates = &mut self.paths[path].candidates;
        let pos = match candidates.binary_search_by(|c| c.peer.key.distance(&target).cmp(&distance)) {
            Ok(_) => return, // already known on this path
            Err(pos) => pos,
        };
        if pos >= self.capacity {
            return;
        }
        candidates.insert(
            pos,
            Candidate {
                peer,
                state: State::NotContacted,
                hops,
                attempts: 0,
            },
        );
        if candidates.len() > self.capacity {
            // Drop the farthest candidate that is not awaiting an answer.
            if let Some(drop) = candidates
                .iter()
                .rposition(|c| !matches!(c.state, State::Waiting | State::Stalled))
            {
                candidates.remove(drop);
            }
        }
    }

    /// The next peer to query on some path, marked as in flight, with the
    /// path it belongs to. `None` when every path has `alpha` requests in
    /// flight or nothing worth asking.
    pub fn next_query(&mut self) -> Option<(usize, PeerInfo<A>)> {
        for path in 0..self.paths.len() {
            if let Some(peer) = self.next_on_path(path) {
                return Some((path, peer));
            }
        }
        None
    }

    fn next_on_path(&mut self, path_index: usize) -> Option<PeerInfo<A>> {
        let disjoint = self.paths.len() > 1;
        let (k, alpha) = (self.k, self.alpha);
        let path = &mut self.paths[path_index];
        let parallelism = if path.without_progress >= alpha { k } else { alpha };
        if path.in_flight >= parallelism {
            return None;
        }
        let mut live = 0;
        for c in path.candidates.iter_mut() {
            if live >= k {
                break;
            }
            match c.state {
                State::Failed | State::Stalled => continue,
                State::NotContacted => {
                    if disjoint && self.claimed.contains(&c.peer.key) {
                        c.state = State::Failed;
                        continue;
                    }
                    c.state = State::Waiting;
                    c.attempts = 1;
                    path.in_flight += 1;
                    if disjoint {
                        self.claimed.insert(c.peer.key);
                    }
                    return Some(c.peer.clone());
                }
                State::Waiting | State::Succeeded => live += 1,
            }
        }
        None
    }

    fn find(&mut self, path: usize, key: &Key) -> Option<&mut Candidate<A>> {
        let target = self.target;
        let distance = key.distance(&target);
        let candidates = &mut self.paths.get_mut(path)?.candidates;
        let pos = candidates
            .binary_search_by(|c| c.peer.key.distance(&target).cmp(&distance))
            .ok()?;
        Some(&mut candidates[pos])
    }

    /// `peer` on `path` answered with `closer` peers.
    pub fn on_success(&mut self, path: usize, peer: &Key, closer: Vec<PeerInfo<A>>) {
        let Some(c) = self.find(path, peer) else { return };
        let was = c.state;
        if was != State::Waiting && was != State::Stalled {
            return;
        }
        c.state = State::Succeeded;
        let hops = c.hops.saturating_add(1);
        if was == State::Waiting {
            self.paths[path].in_flight -= 1;
        }
        let closest_before = self.paths[path].candidates.first().map(|c| c.peer.key);
        for p in closer {
            self.insert(path, p, hops);
        }
        let state = &mut self.paths[path];
        if state.candidates.first().map(|c| c.peer.key) == closest_before {
            state.without_progress += 1;
        } else {
            state.without_progress = 0;
        }
    }

    /// Attempt `attempt` of the request to `peer` on `path` failed. A
    /// failure of an earlier attempt while a retry is out is ignored.
    pub fn on_failure(&mut self, path: usize, peer: &Key, attempt: u8) {
        let Some(c) = self.find(path, peer) else { return };
        let was = c.state;
        if (was != State::Waiting && was != State::Stalled) || attempt < c.attempts {
            return;
        }
        c.state = State::Failed;
        if was == State::Waiting {
            self.paths[path].in_flight -= 1;
        }
    }

    /// The request to `peer` on `path` has not answered in time. Returns
    /// true when the caller should send it once more (the lookup keeps
    /// waiting for it); otherwise the lookup stops waiting for it — it no
    /// longer counts as in flight or among the closest to wait for — but
    /// still takes its answer if it comes.
    #[must_use]
    pub fn on_stall(&mut self, path: usize, peer: &Key) -> bool {
        let Some(c) = self.find(path, peer) else { return false };
        if c.state != State::Waiting {
            return false;
        }
        if c.attempts < MAX_ATTEMPTS {
            c.attempts += 1;
            return true;
        }
        c.state = State::Stalled;
        self.paths[path].in_flight -= 1;
        false
    }

    /// Which attempt the request to `peer` on `path` is at.
    pub fn attempts(&self, path: usize, peer: &Key) -> u8 {
        let target = self.target;
        let distance = peer.distance(&target);
        self.paths
            .get(path)
            .and_then(|p| {
                p.candidates
                    .binary_search_by(|c| c.peer.key.distance(&target).cmp(&distance))
                    .ok()
                    .map(|i| p.candidates[i].attempts)
            })
            .unwrap_or(0)
    }

    /// Whether the lookup is over: no path has a request in flight or a
    /// candidate left to ask among its `k` closest live ones.
    pub fn is_finished(&self) -> bool {
        self.paths.iter().all(|path| {
            if path.in_flight > 0 {
                return false;
            }
            let mut live = 0;
            for c in &path.candidates {
                if live >= self.k {
                    break;
                }
                match c.state {
                    State::Failed | State::Stalled => {}
                    State::Succeeded => live += 1,
                    State::NotContacted => {
                        if !(self.paths.len() > 1 && self.claimed.contains(&c.peer.key)) {
                            return false;
                        }
                    }
                    State::Waiting => return false,
                }
            }
            true
        })
    }

    /// The up-to-`count` closest peers that answered, over all paths, closest
    /// first, and the hop count of the closest (see `BENCHMARKS.md`).
    pub fn result(&self, count: usize) -> (Vec<PeerInfo<A>>, u8) {
        let mut answered: Vec<&Candidate<A>> = self
            .paths
            .iter()
            .flat_map(|p| p.candidates.iter())
            .filter(|c| c.state == State::Succeeded)
            .collect();
        let target = self.target;
        answered.sort_by_key(|c| c.peer.key.distance(&target));
        answered.dedup_by(|a, b| a.peer.key == b.peer.key);
        let hops = answered.first().map_or(0, |c| c.hops);
        (answered.into_iter().take(count).map(|c| c.peer.clone()).collect(), hops)
    }

    /// The peers that answered, closest first (for the store phase).
    pub fn answered(&self, count: usize) -> Vec<PeerInfo<A>> {
        self.result(count).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// Runs a lookup against a fully known set of peers where each peer
    /// answers with the `k` closest it knows (all of them): it must find the
    /// true closest `k`.
    #[test]
    fn finds_true_closest_in_a_static_world() {
        for paths in [1, 2, 3] {
            let mut rng = Rng::seed_from_u64(paths as u64);
            let peers: Vec<PeerInfo<u32>> = (0..200).map(|i| PeerInfo::new(rng.key(), i)).collect();
            let target = rng.key();
            let mut by_distance = peers.clone();
            by_distance.sort_by_key(|p| p.key.distance(&target));
            let seeds = peers[..6].to_vec();
            let mut lookup = Lookup::new(target, seeds, 20, 3, paths);
            let mut steps = 0;
            // The path that queried each peer: with disjoint paths, no peer
            // is queried by two.
            let mut queried_by = std::collections::BTreeMap::new();
            while !lookup.is_finished() {
                steps += 1;
                assert!(steps < 10_000, "lookup livelocked");
                let Some((path, peer)) = lookup.next_query() else {
                    panic!("not finished, yet nothing to ask and nothing in flight")
                };
                let first = *queried_by.entry(peer.key).or_insert(path);
                assert!(
                    paths == 1 || first == path,
                    "peer {} queried by paths {first} and {path}",
                    peer.addr
                );
                // Each peer knows a random third of the world.
                let mut known: Vec<PeerInfo<u32>> = peers
                    .iter()
                    .filter(|p| (p.addr + peer.addr) % 3 == 0)
                    .cloned()
                    .collect();
                known.sort_by_key(|p| p.key.distance(&target));
                known.truncate(20);
                if peer.addr % 17 == 5 {
                    lookup.on_failure(path, &peer.key, 1);
                } else {
                    lookup.on_success(path, &peer.key, known);
                }
            }
            let (result, _hops) = lookup.result(20);
            let closest_live = by_distance.iter().find(|p| p.addr % 17 != 5).unwrap();
            assert_eq!(result.first(), Some(closest_live), "paths = {paths}");
            let used: BTreeSet<usize> = queried_by.values().copied().collect();
            assert_eq!(used.len(), paths, "every path queried someone");
        }
    }

    #[test]
    fn a_stalled_peer_is_routed_around_and_its_late_answer_still_counts() {
        let mut rng = Rng::seed_from_u64(10);
        let target = rng.key();
        let slow = PeerInfo::new(target.random_in_bucket(30, &rng.key()), 1u32);
        let other = PeerInfo::new(target.random_in_bucket(2, &rng.key()), 2u32);
        let hidden = PeerInfo::new(target.random_in_bucket(60, &rng.key()), 3u32);
        let mut lookup = Lookup::new(target, vec![slow.clone(), other.clone()], 20, 1, 1);
        let (p, first) = lookup.next_query().unwrap();
        assert_eq!(first, slow, "closest first");
        assert!(lookup.next_query().is_none(), "alpha = 1 is in flight");
        assert!(lookup.on_stall(p, &slow.key), "the first stall asks for a retry");
        assert!(lookup.next_query().is_none(), "still waiting on the retry");
        assert!(!lookup.on_stall(p, &slow.key), "the second stall gives up waiting");
        let (q, second) = lookup.next_query().expect("the stall frees the slot");
        assert_eq!(second, other);
        lookup.on_success(q, &other.key, vec![]);
        assert!(lookup.is_finished(), "nothing left to wait for");
        // The slow peer answers after all, naming a closer peer.
        lookup.on_success(p, &slow.key, vec![hidden.clone()]);
        assert!(!lookup.is_finished());
        let (r, third) = lookup.next_query().unwrap();
        assert_eq!(third, hidden);
        lookup.on_success(r, &hidden.key, vec![]);
        assert_eq!(lookup.result(20).0, vec![hidden, slow, other]);
    }

    #[test]
    fn a_failed_first_attempt_does_not_cancel_its_retry() {
        let mut rng = Rng::seed_from_u64(12);
        let target = rng.key();
        let peer = PeerInfo::new(target.random_in_bucket(20, &rng.key()), 1u32);
        let mut lookup = Lookup::new(target, vec![peer.clone()], 20, 3, 1);
        let (p, _) = lookup.next_query().unwrap();
        assert!(lookup.on_stall(p, &peer.key));
        lookup.on_failure(p, &peer.key, 1);
        assert!(!lookup.is_finished(), "the retry is still out");
        lookup.on_success(p, &peer.key, vec![]);
        assert!(lookup.is_finished());
        assert_eq!(lookup.result(20).0, vec![peer]);
    }

    #[test]
    fn hop_counts_follow_the_chain_of_responses() {
        let mut rng = Rng::seed_from_u64(9);
        let target = rng.key();
        let far = PeerInfo::new(target.random_in_bucket(0, &rng.key()), 1u32);
        let mid = PeerInfo::new(target.random_in_bucket(8, &rng.key()), 2u32);
        let near = PeerInfo::new(target.random_in_bucket(40, &rng.key()), 3u32);
        let mut lookup = Lookup::new(target, vec![far.clone()], 20, 3, 1);
        let (p, _) = lookup.next_query().unwrap();
        lookup.on_success(p, &far.key, vec![mid.clone()]);
        let (q, _) = lookup.next_query().unwrap();
        lookup.on_success(q, &mid.key, vec![near.clone()]);
        let (r, _) = lookup.next_query().unwrap();
        lookup.on_success(r, &near.key, vec![]);
        assert!(lookup.is_finished());
        let (result, hops) = lookup.result(20);
        assert_eq!(result[0], near);
        assert_eq!(hops, 2);
    }

    fn peers_around(rng: &mut Rng, target: &Key, n: u32) -> Vec<PeerInfo<u32>> {
        (0..n)
            .map(|i| PeerInfo::new(target.random_in_bucket(10 + (i as usize % 100), &rng.key()), i))
            .collect()
    }

    #[test]
    fn disjoint_paths_are_at_most_alpha_and_at_least_one() {
        let mut rng = Rng::seed_from_u64(20);
        let target = rng.key();
        let seeds = peers_around(&mut rng, &target, 6);
        for (asked, alpha, expected) in [(1, 3, 1), (2, 3, 2), (3, 3, 3), (5, 3, 3), (0, 3, 1), (4, 1, 1)] {
            let lookup = Lookup::new(target, seeds.clone(), 20, alpha, asked);
            assert_eq!(lookup.path_count(), expected, "{asked} paths asked with alpha {alpha}");
        }
    }

    #[test]
    fn a_path_keeps_exactly_its_capacity_of_closest_candidates() {
        let mut rng = Rng::seed_from_u64(21);
        let target = rng.key();
        let peers = peers_around(&mut rng, &target, 100);
        let lookup = Lookup::new(target, peers.clone(), 20, 3, 1);
        let capacity = 3 * 20;
        let mut closest = peers;
        closest.sort_by_key(|p| p.key.distance(&target));
        closest.truncate(capacity);
        let kept: Vec<PeerInfo<u32>> = lookup.paths[0].candidates.iter().map(|c| c.peer.clone()).collect();
        assert_eq!(kept, closest);
        // A small k still keeps 16.
        let lookup = Lookup::new(target, closest.clone(), 2, 1, 1);
        assert_eq!(lookup.paths[0].candidates.len(), 16);
    }

    #[test]
    fn after_alpha_answers_without_progress_the_path_asks_its_k_closest_at_once() {
        let mut rng = Rng::seed_from_u64(22);
        let target = rng.key();
        let seeds = peers_around(&mut rng, &target, 10);
        let (k, alpha) = (8, 3);
        let mut lookup = Lookup::new(target, seeds, k, alpha, 1);
        let mut asked = Vec::new();
        while let Some((path, peer)) = lookup.next_query() {
            asked.push((path, peer));
        }
        assert_eq!(asked.len(), alpha, "alpha requests in flight at first");
        // Answers that bring nothing closer, one less than alpha: still alpha.
        for (path, peer) in asked.drain(..alpha - 1) {
            lookup.on_success(path, &peer.key, vec![]);
        }
        let mut more = Vec::new();
        while let Some(next) = lookup.next_query() {
            more.push(next);
        }
        assert_eq!(more.len(), alpha - 1, "refilled to alpha in flight");
        // The alpha-th answer without progress: the final round asks every
        // one of the k closest left (k of them are live, alpha - 1 answered).
        let (path, peer) = asked.pop().unwrap();
        lookup.on_success(path, &peer.key, vec![]);
        let mut last = 0;
        while lookup.next_query().is_some() {
            last += 1;
        }
        assert_eq!(last, k - alpha - (alpha - 1), "the rest of the k closest at once");
    }

    #[test]
    fn progress_resets_the_count_of_answers_without_it() {
        let mut rng = Rng::seed_from_u64(23);
        let target = rng.key();
        let seeds: Vec<PeerInfo<u32>> = (0..10)
            .map(|i| PeerInfo::new(target.random_in_bucket(5 + i, &rng.key()), i as u32))
            .collect();
        let mut lookup = Lookup::new(target, seeds, 8, 2, 1);
        let (p, a) = lookup.next_query().unwrap();
        let (_, b) = lookup.next_query().unwrap();
        lookup.on_success(p, &a.key, vec![]);
        // b brings a closer peer: progress, so the count starts again.
        let nearer = PeerInfo::new(target.random_in_bucket(200, &rng.key()), 99);
        lookup.on_success(p, &b.key, vec![nearer]);
        assert_eq!(lookup.paths[0].without_progress, 0);
        let (_, c) = lookup.next_query().unwrap();
        lookup.on_success(p, &c.key, vec![]);
        assert_eq!(lookup.paths[0].without_progress, 1);
    }

    #[test]
    fn a_failure_after_an_answer_or_after_giving_up_changes_nothing_that_came_before() {
        let mut rng = Rng::seed_from_u64(24);
        let target = rng.key();
        let seeds = peers_around(&mut rng, &target, 2);
        let mut lookup = Lookup::new(target, seeds.clone(), 20, 1, 1);
        // An answer, then a stray failure report for the same request: the
        // answer stands.
        let (p, first) = lookup.next_query().unwrap();
        lookup.on_success(p, &first.key, vec![]);
        lookup.on_failure(p, &first.key, 1);
        // The second peer stalls twice (given up on), then its second attempt
        // fails for good: a late answer no longer counts.
        let (q, second) = lookup.next_query().unwrap();
        assert!(lookup.on_stall(q, &second.key));
        assert!(!lookup.on_stall(q, &second.key));
        lookup.on_failure(q, &second.key, 2);
        lookup.on_success(q, &second.key, vec![]);
        assert!(lookup.is_finished());
        assert_eq!(lookup.result(20).0, vec![first]);
    }

    #[test]
    fn a_peer_another_path_already_asked_leaves_nothing_to_wait_for() {
        let mut rng = Rng::seed_from_u64(25);
        let target = rng.key();
        let seeds = peers_around(&mut rng, &target, 2);
        let mut lookup = Lookup::new(target, seeds, 20, 2, 2);
        let (p0, a) = lookup.next_query().unwrap();
        let (p1, b) = lookup.next_query().unwrap();
        assert_ne!(p0, p1, "one seed per path");
        lookup.on_success(p0, &a.key, vec![]);
        // Path 1 learns of a, which path 0 asked: it will not ask it again,
        // so the lookup is over without another round of next_query.
        lookup.on_success(p1, &b.key, vec![a.clone()]);
        assert!(lookup.is_finished());
        assert!(lookup.next_query().is_none());
    }

    #[test]
    fn attempts_count_the_requests_sent_to_each_peer() {
        let mut rng = Rng::seed_from_u64(26);
        let target = rng.key();
        let seeds = peers_around(&mut rng, &target, 2);
        let mut lookup = Lookup::new(target, seeds.clone(), 20, 1, 1);
        assert_eq!(lookup.attempts(0, &seeds[0].key), 0, "not asked yet");
        let (p, peer) = lookup.next_query().unwrap();
        assert_eq!(lookup.attempts(p, &peer.key), 1);
        assert!(lookup.on_stall(p, &peer.key));
        assert_eq!(lookup.attempts(p, &peer.key), 2, "the retry");
        assert_eq!(lookup.attempts(p, &rng.key()), 0, "a peer the lookup does not know");
        assert_eq!(lookup.attempts(7, &peer.key), 0, "a path that does not exist");
    }

    #[test]
    fn a_request_in_flight_keeps_the_lookup_open_even_when_the_k_closest_answered() {
        let mut rng = Rng::seed_from_u64(27);
        let target = rng.key();
        // k = 2, alpha = 2: both seeds asked; the first answers with two
        // closer peers, which are asked and answer; the second seed is
        // still out.
        let seeds: Vec<PeerInfo<u32>> = (0..2)
            .map(|i| PeerInfo::new(target.random_in_bucket(i, &rng.key()), i as u32))
            .collect();
        let mut near: Vec<PeerInfo<u32>> = (0..2)
            .map(|i| PeerInfo::new(target.random_in_bucket(100 + i, &rng.key()), 10 + i as u32))
            .collect();
        near.sort_by_key(|p| p.key.distance(&target));
        let mut lookup = Lookup::new(target, seeds, 2, 2, 1);
        let asked: Vec<_> = std::iter::from_fn(|| lookup.next_query()).collect();
        assert_eq!(asked.len(), 2);
        lookup.on_success(asked[0].0, &asked[0].1.key, near.clone());
        while let Some((path, peer)) = lookup.next_query() {
            lookup.on_success(path, &peer.key, vec![]);
        }
        assert_eq!(lookup.result(2).0, near, "the k closest answered");
        assert!(!lookup.is_finished(), "a request is still in flight");
        let (path, last) = &asked[1];
        lookup.on_success(*path, &last.key, vec![]);
        assert!(lookup.is_finished());
        assert_eq!(lookup.answered(2), near, "the peers to store at");
    }
}
