//! Placing one job, with no negotiator: from the candidates a slot class
//! lists, probe `d` of them (power-of-d choices; the providers of the
//! job's inputs first, so that work runs where its data is), then claim
//! the best that answered. A job never fails for lack of a free slot: when
//! every probed slot is busy it queues where the queue is shortest.
//!
//! Sans-IO: [`Placement::handle_candidates`], [`Placement::handle_probe`],
//! [`Placement::handle_claim`] and [`Placement::handle_timeout`] take the
//! driver's answers; [`Placement::poll_action`] says whom to probe or
//! claim, [`Placement::poll_outcome`] how it ended, and
//! [`Placement::poll_timeout`] when an unanswered probe gives up.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use shoal_overlay::{Instant, Key, Rng};

use super::offer::{Needs, SlotOffer};

/// A peer that offers slots, as the slot class lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The peer.
    pub peer: Key,
    /// Its offer.
    pub offer: SlotOffer,
    /// Whether it provides the job's inputs.
    pub holds_inputs: bool,
}

/// A candidate's answer to a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Slots free now.
    pub free: u32,
    /// Jobs waiting in its queue.
    pub queued: u32,
}

/// What the placement asks the driver to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaceAction {
    /// Ask the peer for its load; answer with [`Placement::handle_probe`].
    Probe(Key),
    /// Ask the peer to run (or queue) the job; answer with
    /// [`Placement::handle_claim`].
    Claim(Key),
}

/// Why a job could not be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// No candidate offers what the job needs.
    #[error("no peer offers a slot that fits this job (kind, memory, labels)")]
    NoMatch,
    /// No probed candidate answered, or every one refused the claim.
    #[error("no peer that offers a fitting slot answered or took the job")]
    NoAnswer,
}

/// Holders of a job's inputs probed, at most (a blob's home keeps 3
/// copies, plus its sharer's): all of them, whatever `d`, since running
/// beside the data is worth a few more probes.
pub const HOLDER_PROBES: usize = 4;

/// How much a peer that holds the job's inputs is preferred, in queue
/// places: it wins over a peer whose queue is at most this much shorter.
pub const INPUT_BONUS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    WaitingForCandidates,
    Probing,
    Claiming,
    Done,
}

/// The placement of one job.
#[derive(Clone, Debug)]
pub struct Placement {
    needs: Needs,
    d: usize,
    holder_probes: usize,
    input_bonus: u32,
    probe_timeout: Duration,
    rng: Rng,
    stage: Stage,
    /// Probes sent: deadline, and whether the peer holds the inputs.
    probes: BTreeMap<Key, (Instant, bool)>,
    /// Answers: the load, and whether the peer holds the inputs.
    answers: BTreeMap<Key, (Load, bool)>,
    /// Peers to claim, best first.
    ranked: VecDeque<Key>,
    actions: VecDeque<PlaceAction>,
    outcome: Option<Result<Key, PlaceError>>,
}

impl Placement {
    /// Places a job that needs `needs`, probing `d` candidates (at least
    /// 1), each given `probe_timeout` to answer; `seed` draws which.
    pub fn new(needs: Needs, d: usize, probe_timeout: Duration, seed: u64) -> Self {
        Placement {
            needs,
            d: d.max(1),
            holder_probes: HOLDER_PROBES,
            input_bonus: INPUT_BONUS,
            probe_timeout,
            rng: Rng::seed_from_u64(seed),
            stage: Stage::WaitingForCandidates,
            probes: BTreeMap::new(),
            answers: BTreeMap::new(),
            ranked: VecDeque::new(),
            actions: VecDeque::new(),
            outcome: None,
        }
    }

    /// How many queue places a holder of the inputs may be behind and still
    /// win ([`INPUT_BONUS`] unless set).
    pub fn with_input_bonus(mut self, places: u32) -> Self {
        self.input_bonus = places;
        self
    }

    /// How many holders of the inputs are probed at most ([`HOLDER_PROBES`]
    /// unless set; `d` if that is more).
    pub fn with_holder_probes(mut self, holders: usize) -> Self {
        self.holder_probes = holders;
        self
    }

    /// The candidates found: probes the holders of the inputs that fit (up
    /// to [`HOLDER_PROBES`]) plus one other, whom busy holders lose to —
    /// or, without holders, `d` drawn at random.
    pub fn handle_candidates(&mut self, now: Instant, candidates: Vec<Candidate>) {
        if self.stage != Stage::WaitingForCandidates {
            return;
        }
        let mut fitting: Vec<Candidate> = candidates.into_iter().filter(|c| c.offer.fits(&self.needs)).collect();
        fitting.sort_by_key(|c| c.peer);
        fitting.dedup_by_key(|c| c.peer);
        if fitting.is_empty() {
            return self.finish(Err(PlaceError::NoMatch));
        }
        let (mut holders, mut others): (Vec<Candidate>, Vec<Candidate>) =
            fitting.into_iter().partition(|c| c.holds_inputs);
        // The holders of the inputs, then others up to `d` — and at least
        // one other beside holders, so that busy holders can be passed over
        // for a free slot elsewhere.
        let mut chosen = Vec::new();
        while chosen.len() < self.d.max(self.holder_probes) && !holders.is_empty() {
            let i = self.rng.index(holders.len());
            chosen.push(holders.swap_remove(i));
        }
        let others_wanted = self.d.saturating_sub(chosen.len()).max(usize::from(!chosen.is_empty()));
        for _ in 0..others_wanted {
            if others.is_empty() {
                break;
            }
            let i = self.rng.index(others.len());
            chosen.push(others.swap_remove(i));
        }
        self.stage = Stage::Probing;
        for c in chosen {
            self.probes.insert(c.peer, (now + self.probe_timeout, c.holds_inputs));
            self.actions.push_back(PlaceAction::Probe(c.peer));
        }
    }

    /// A probe's answer (`None`: the peer refused or failed to answer).
    pub fn handle_probe(&mut self, now: Instant, peer: Key, load: Option<Load>) {
        if self.stage != Stage::Probing {
            return;
        }
        let Some((_, holds)) = self.probes.remove(&peer) else {
            return;
        };
        if let Some(load) = load {
            self.answers.insert(peer, (load, holds));
        }
        self.maybe_decide(now);
    }

    /// Time passed: unanswered probes past their deadline count as no
    /// answer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stage != Stage::Probing {
            return;
        }
        self.probes.retain(|_, (deadline, _)| now < *deadline);
        self.maybe_decide(now);
    }

    /// A claim's answer: `true` if the peer took the job (to run or to
    /// queue); otherwise the next best is claimed.
    pub fn handle_claim(&mut self, _now: Instant, peer: Key, taken: bool) {
        if self.stage != Stage::Claiming || self.ranked.front() != Some(&peer) {
            return;
        }
        self.ranked.pop_front();
        if taken {
            return self.finish(Ok(peer));
        }
        self.claim_next();
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<PlaceAction> {
        self.actions.pop_front()
    }

    /// How it ended, once it has: the peer that took the job.
    pub fn poll_outcome(&mut self) -> Option<Result<Key, PlaceError>> {
        self.outcome.take()
    }

    /// When the earliest unanswered probe gives up.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.stage {
            Stage::Probing => self.probes.values().map(|(deadline, _)| *deadline).min(),
            _ => None,
        }
    }

    fn maybe_decide(&mut self, _now: Instant) {
        if !self.probes.is_empty() {
            return;
        }
        // Equal scores are broken at random: by key, the same peers would
        // win every tie.
        let draws: Vec<u64> = (0..self.answers.len()).map(|_| self.rng.next_u64()).collect();
        let mut ranked: Vec<(u32, bool, u64, Key)> = self
            .answers
            .iter()
            .zip(draws)
            .map(|((peer, (load, holds)), draw)| {
                // The queue the job would wait in: none with a free slot.
                let wait = if load.free > 0 {
                    0
                } else {
                    load.queued.saturating_add(1)
                };
                let score = if *holds {
                    wait.saturating_sub(self.input_bonus)
                } else {
                    wait
                };
                (score, !*holds, draw, *peer)
            })
            .collect();
        ranked.sort();
        self.ranked = ranked.into_iter().map(|(_, _, _, peer)| peer).collect();
        self.stage = Stage::Claiming;
        self.claim_next();
    }

    fn claim_next(&mut self) {
        match self.ranked.front() {
            Some(peer) => self.actions.push_back(PlaceAction::Claim(*peer)),
            None => self.finish(Err(PlaceError::NoAnswer)),
        }
    }

    fn finish(&mut self, outcome: Result<Key, PlaceError>) {
        self.stage = Stage::Done;
        self.outcome = Some(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::offer::JobKind;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1_000)
    }

    fn peer(n: u8) -> Key {
        Key::of_content(&[n])
    }

    fn candidate(n: u8, holds_inputs: bool) -> Candidate {
        Candidate {
            peer: peer(n),
            offer: SlotOffer {
                kinds: vec![JobKind::Wasm],
                slots: 2,
                slot_memory: 1 << 30,
                labels: Default::default(),
            },
            holds_inputs,
        }
    }

    fn placement(d: usize) -> Placement {
        Placement::new(Needs::default(), d, Duration::from_millis(500), 7)
    }

    fn actions(p: &mut Placement) -> Vec<PlaceAction> {
        std::iter::from_fn(|| p.poll_action()).collect()
    }

    fn probed(p: &mut Placement) -> Vec<Key> {
        actions(p)
            .into_iter()
            .map(|a| match a {
                PlaceAction::Probe(k) => k,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn it_probes_d_candidates_and_claims_one_with_a_free_slot() {
        let mut p = placement(2);
        p.handle_candidates(t(0), (1..=10).map(|n| candidate(n, false)).collect());
        let asked = probed(&mut p);
        assert_eq!(asked.len(), 2);
        assert_eq!(p.poll_timeout(), Some(t(500)));
        p.handle_probe(t(1), asked[0], Some(Load { free: 0, queued: 3 }));
        assert_eq!(actions(&mut p), [], "waits for every probe");
        p.handle_probe(t(2), asked[1], Some(Load { free: 1, queued: 0 }));
        assert_eq!(actions(&mut p), [PlaceAction::Claim(asked[1])]);
        p.handle_claim(t(3), asked[1], true);
        assert_eq!(p.poll_outcome(), Some(Ok(asked[1])));
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn with_every_slot_busy_it_queues_where_the_queue_is_shortest() {
        let mut p = placement(3);
        p.handle_candidates(t(0), (1..=3).map(|n| candidate(n, false)).collect());
        let asked = probed(&mut p);
        for (i, peer) in asked.iter().enumerate() {
            p.handle_probe(
                t(1),
                *peer,
                Some(Load {
                    free: 0,
                    queued: 5 - i as u32,
                }),
            );
        }
        assert_eq!(actions(&mut p), [PlaceAction::Claim(asked[2])]);
    }

    #[test]
    fn holders_of_the_inputs_are_probed_first_and_preferred_within_the_bonus() {
        let mut p = placement(2);
        let mut all: Vec<Candidate> = (1..=20).map(|n| candidate(n, false)).collect();
        all.push(candidate(50, true));
        p.handle_candidates(t(0), all);
        let asked = probed(&mut p);
        assert!(asked.contains(&peer(50)), "the holder is among the probed");
        assert_eq!(asked.len(), 2);
        let other = asked.iter().copied().find(|k| *k != peer(50)).unwrap();
        // The holder's queue is 2 longer than the other's: still preferred.
        p.handle_probe(t(1), peer(50), Some(Load { free: 0, queued: 2 }));
        p.handle_probe(t(1), other, Some(Load { free: 0, queued: 0 }));
        assert_eq!(actions(&mut p), [PlaceAction::Claim(peer(50))]);
        // Three longer: not.
        let mut p = placement(2);
        p.handle_candidates(t(0), vec![candidate(1, false), candidate(50, true)]);
        let _ = probed(&mut p);
        p.handle_probe(t(1), peer(50), Some(Load { free: 0, queued: 3 }));
        p.handle_probe(t(1), peer(1), Some(Load { free: 0, queued: 0 }));
        assert_eq!(actions(&mut p), [PlaceAction::Claim(peer(1))]);
    }

    #[test]
    fn every_holder_and_one_other_are_probed_and_the_other_wins_when_the_holders_are_busy() {
        let mut p = placement(2);
        let mut all: Vec<Candidate> = (1..=3).map(|n| candidate(n, true)).collect();
        all.extend((10..=20).map(|n| candidate(n, false)));
        p.handle_candidates(t(0), all);
        let asked = probed(&mut p);
        assert_eq!(asked.len(), 4);
        let holders: Vec<Key> = asked
            .iter()
            .copied()
            .filter(|k| [peer(1), peer(2), peer(3)].contains(k))
            .collect();
        assert_eq!(holders.len(), 3, "every holder");
        let other = asked.iter().copied().find(|k| !holders.contains(k)).unwrap();
        // At most HOLDER_PROBES holders.
        let mut many = placement(2);
        many.handle_candidates(t(0), (1..=10).map(|n| candidate(n, true)).collect());
        assert_eq!(probed(&mut many).len(), HOLDER_PROBES);
        for h in &holders {
            p.handle_probe(t(1), *h, Some(Load { free: 0, queued: 4 }));
        }
        p.handle_probe(t(1), other, Some(Load { free: 1, queued: 0 }));
        assert_eq!(actions(&mut p), [PlaceAction::Claim(other)]);
    }

    #[test]
    fn a_silent_probe_gives_up_at_its_deadline_and_a_refused_claim_moves_on() {
        let mut p = placement(2);
        p.handle_candidates(t(0), vec![candidate(1, false), candidate(2, false)]);
        let _ = probed(&mut p);
        p.handle_probe(t(1), peer(1), Some(Load { free: 1, queued: 0 }));
        p.handle_timeout(t(499));
        assert_eq!(actions(&mut p), [], "peer 2 still has time");
        p.handle_timeout(t(500));
        assert_eq!(actions(&mut p), [PlaceAction::Claim(peer(1))]);
        p.handle_claim(t(501), peer(1), false);
        assert_eq!(p.poll_outcome(), Some(Err(PlaceError::NoAnswer)));
        // Two answered: a refusal goes to the second best.
        let mut p = placement(2);
        p.handle_candidates(t(0), vec![candidate(1, false), candidate(2, false)]);
        let _ = probed(&mut p);
        p.handle_probe(t(1), peer(1), Some(Load { free: 1, queued: 0 }));
        p.handle_probe(t(1), peer(2), Some(Load { free: 0, queued: 1 }));
        assert_eq!(actions(&mut p), [PlaceAction::Claim(peer(1))]);
        p.handle_claim(t(2), peer(2), true);
        assert_eq!(p.poll_outcome(), None, "an answer from a peer not asked is ignored");
        p.handle_claim(t(2), peer(1), false);
        assert_eq!(actions(&mut p), [PlaceAction::Claim(peer(2))]);
        p.handle_claim(t(3), peer(2), true);
        assert_eq!(p.poll_outcome(), Some(Ok(peer(2))));
    }

    #[test]
    fn no_fitting_candidate_is_an_error_at_once() {
        let mut p = Placement::new(
            Needs {
                memory: 4 << 30,
                ..Needs::default()
            },
            2,
            Duration::from_millis(500),
            1,
        );
        p.handle_candidates(t(0), vec![candidate(1, false)]);
        assert_eq!(actions(&mut p), []);
        assert_eq!(p.poll_outcome(), Some(Err(PlaceError::NoMatch)));
        let mut p = placement(2);
        p.handle_candidates(t(0), vec![]);
        assert_eq!(p.poll_outcome(), Some(Err(PlaceError::NoMatch)));
    }

    #[test]
    fn the_same_seed_probes_the_same_peers() {
        let run = |seed| {
            let mut p = Placement::new(Needs::default(), 2, Duration::from_millis(500), seed);
            p.handle_candidates(t(0), (1..=50).map(|n| candidate(n, false)).collect());
            probed(&mut p)
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
