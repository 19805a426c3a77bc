//! Handing queued work to idle peers, with no negotiator: an executor whose
//! queue has held a job for a while probes a few other peers that offer
//! slots and hands the jobs that would wait longest here (the back of its
//! queue) to those that have slots free, one job per free slot.
//!
//! Placement ([`super::place`]) already queues a job where the queue is
//! shortest among `d` probes, but a queue's length says little about how
//! long it lasts: one long job ahead, or peers that free up later, leave a
//! job waiting here while another peer sits idle. This is the other half
//! of the balance, the executor's: a round every [`Steal::every`] while
//! jobs wait, at most [`Steal::d`] probes, and only to peers that answer
//! with a free slot, so a job is never handed to a queue (it would wait
//! there too) and a swarm where every slot is busy moves nothing.
//!
//! Only queued jobs move: a running job holds a slot here and would hold
//! one there, so moving it frees nothing (a running job moves on request,
//! `shoal job move`, or when its peer drains).
//!
//! Sans-IO: [`Steal::due`] says whether to start a round and which jobs it
//! may hand, [`Steal::pick`] whom to probe, [`Steal::assign`] where each
//! job goes once the probes answered. The driver hands each job with the
//! job's release to its home, naming the peer (the home places it there
//! under a new grant).

use std::time::Duration;

use shoal_overlay::{Instant, Key, Rng};

use super::place::Load;

/// The policy.
#[derive(Clone, Debug)]
pub struct Steal {
    /// How long a job waits in the queue before it may be handed on.
    pub patience: Duration,
    /// How often a round runs while jobs wait.
    pub every: Duration,
    /// Peers probed per round.
    pub d: usize,
    /// Jobs handed per round, at most.
    pub max_per_round: usize,
    rng: Rng,
    next_round: Instant,
}

impl Steal {
    /// Defaults: a job that waited 2 s may go; a round a second, probing
    /// 4 peers, handing at most 32 jobs.
    pub fn new(seed: u64) -> Self {
        Steal {
            patience: Duration::from_secs(2),
            every: Duration::from_secs(1),
            d: 4,
            max_per_round: 32,
            rng: Rng::derive(seed, 0x57ea1),
            next_round: Instant::ZERO,
        }
    }

    /// At `now`, with `queue` the jobs waiting here in the order they
    /// would start (each with when it joined the queue): the jobs a round
    /// may hand on, the one that would start last first — those that
    /// waited at least `patience`, at most `max_per_round`. Empty when no
    /// round is due (one ran less than `every` ago); a non-empty answer
    /// starts a round.
    pub fn due(&mut self, now: Instant, queue: &[(Key, Instant)]) -> Vec<Key> {
        if now < self.next_round {
            return Vec::new();
        }
        let waited = |since: Instant| now.saturating_since(since) >= self.patience;
        if !queue.iter().any(|(_, since)| waited(*since)) {
            return Vec::new();
        }
        self.next_round = now + self.every;
        // Every job behind one that waited long enough waits as long
        // again at least: the back of the queue goes first.
        queue
            .iter()
            .rev()
            .map(|(job, _)| *job)
            .take(self.max_per_round)
            .collect()
    }

    /// Whom to probe: `d` of `candidates` (other peers whose offers fit),
    /// chosen at random.
    pub fn pick(&mut self, candidates: &[Key], local: &Key) -> Vec<Key> {
        let mut pool: Vec<Key> = candidates.iter().filter(|k| *k != local).copied().collect();
        let mut picked = Vec::new();
        while picked.len() < self.d && !pool.is_empty() {
            let i = self.rng.index(pool.len());
            picked.push(pool.swap_remove(i));
        }
        picked
    }

    /// Where each of `jobs` (from [`due`](Self::due)) goes, given the
    /// loads the probed peers answered: one job per free slot, the peers
    /// with the most free slots first; jobs left over stay here.
    pub fn assign(&self, jobs: &[Key], loads: &[(Key, Load)]) -> Vec<(Key, Key)> {
        let mut free: Vec<(Key, u32)> = loads
            .iter()
            .filter(|(_, l)| l.free > 0 && l.queued == 0)
            .map(|(peer, l)| (*peer, l.free))
            .collect();
        free.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let slots = free
            .iter()
            .flat_map(|(peer, n)| std::iter::repeat_n(*peer, *n as usize));
        jobs.iter().copied().zip(slots).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key::from_bytes([n; 32])
    }

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn a_round_starts_once_a_job_waited_and_hands_the_back_of_the_queue_first() {
        let mut steal = Steal::new(1);
        let queue = [(key(1), at(0)), (key(2), at(1500)), (key(3), at(1900))];
        assert!(steal.due(at(1999), &queue).is_empty(), "none waited 2 s yet");
        assert_eq!(steal.due(at(2000), &queue), [key(3), key(2), key(1)]);
        assert!(steal.due(at(2500), &queue).is_empty(), "one round a second");
        assert_eq!(steal.due(at(3000), &queue).len(), 3);
        assert!(steal.due(at(9000), &[]).is_empty(), "nothing waits");
        steal.max_per_round = 2;
        assert_eq!(steal.due(at(10_000), &queue), [key(3), key(2)]);
    }

    #[test]
    fn jobs_go_only_to_free_slots_most_free_first_and_the_rest_stay() {
        let steal = Steal::new(1);
        let load = |free, queued| Load { free, queued };
        let jobs = [key(10), key(11), key(12), key(13)];
        let loads = [
            (key(1), load(1, 0)),
            (key(2), load(0, 3)),
            (key(3), load(2, 0)),
            (key(4), load(1, 1)), // a free slot but a queue: racing jobs
        ];
        assert_eq!(
            steal.assign(&jobs, &loads),
            [(key(10), key(3)), (key(11), key(3)), (key(12), key(1))]
        );
        assert!(
            steal.assign(&jobs, &[(key(2), load(0, 0))]).is_empty(),
            "every slot busy: nothing moves"
        );
    }

    #[test]
    fn probes_go_to_d_other_peers_at_random_and_the_same_seed_picks_the_same() {
        let candidates: Vec<Key> = (0..20).map(key).collect();
        let mut a = Steal::new(7);
        let picked = a.pick(&candidates, &key(5));
        assert_eq!(picked.len(), 4);
        assert!(!picked.contains(&key(5)), "never itself");
        let mut unique = picked.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        assert_eq!(Steal::new(7).pick(&candidates, &key(5)), picked);
        assert_eq!(a.pick(&[key(5), key(6)], &key(5)), [key(6)]);
    }
}
