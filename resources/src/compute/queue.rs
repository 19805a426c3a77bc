//! An executor's queue of jobs waiting for a slot, fair across submitters:
//! the next job to start is taken from the submitters in turn, so that one
//! submitter's 10,000 jobs do not starve another's one. Bounded: past
//! `capacity` a job is refused with a typed error (the submitter places it
//! elsewhere); a job never fails for lack of a free slot while there is
//! room to wait.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

/// Why a job was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue holds `capacity` jobs already.
    #[error("the queue is full ({capacity} jobs wait)")]
    Full {
        /// Jobs the queue holds at most.
        capacity: usize,
    },
    /// The job waits here already.
    #[error("job {0} is queued already")]
    Duplicate(Key),
}

/// The jobs waiting on one executor, fair across submitters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FairQueue {
    capacity: usize,
    /// Each submitter's jobs, oldest first.
    by_submitter: BTreeMap<Key, VecDeque<Key>>,
    /// Submitters with jobs waiting, in the order they are served next.
    turns: VecDeque<Key>,
    /// Every job waiting, and its submitter.
    submitter_of: BTreeMap<Key, Key>,
}

impl FairQueue {
    /// A queue of at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        FairQueue {
            capacity,
            ..FairQueue::default()
        }
    }

    /// Queues `job` of `submitter`.
    pub fn push(&mut self, submitter: Key, job: Key) -> Result<(), QueueError> {
        if self.submitter_of.contains_key(&job) {
            return Err(QueueError::Duplicate(job));
        }
        if self.submitter_of.len() >= self.capacity {
            return Err(QueueError::Full {
                capacity: self.capacity,
            });
        }
        let jobs = self.by_submitter.entry(submitter).or_default();
        if jobs.is_empty() {
            self.turns.push_back(submitter);
        }
        jobs.push_back(job);
        self.submitter_of.insert(job, submitter);
        Ok(())
    }

    /// The next job to start and its submitter: the oldest job of the
    /// submitter whose turn it is.
    pub fn pop(&mut self) -> Option<(Key, Key)> {
        let submitter = self.turns.pop_front()?;
        let jobs = self.by_submitter.get_mut(&submitter)?;
        let job = jobs.pop_front()?;
        if jobs.is_empty() {
            self.by_submitter.remove(&submitter);
        } else {
            self.turns.push_back(submitter);
        }
        self.submitter_of.remove(&job);
        Some((submitter, job))
    }

    /// Takes `job` out of the queue (cancelled, or moved elsewhere).
    pub fn remove(&mut self, job: &Key) -> bool {
        let Some(submitter) = self.submitter_of.remove(job) else {
            return false;
        };
        if let Some(jobs) = self.by_submitter.get_mut(&submitter) {
            jobs.retain(|j| j != job);
            if jobs.is_empty() {
                self.by_submitter.remove(&submitter);
                self.turns.retain(|s| *s != submitter);
            }
        }
        true
    }

    /// How many jobs start before `job` if nothing else arrives (0: it is
    /// next), or `None` if it does not wait here.
    pub fn position(&self, job: &Key) -> Option<usize> {
        let submitter = self.submitter_of.get(job)?;
        let place = self.by_submitter.get(submitter)?.iter().position(|j| j == job)?;
        let turn = self.turns.iter().position(|s| s == submitter)?;
        // Before it: `place` full rounds of every submitter that still has
        // a job in that round, and the submitters before its own in the
        // round it starts in.
        let ahead: usize = self
            .turns
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let waiting = self.by_submitter.get(s).map_or(0, VecDeque::len);
                let rounds = if i < turn { place + 1 } else { place };
                waiting.min(rounds)
            })
            .sum();
        Some(ahead)
    }

    /// Every job waiting, in the order they would start if nothing else
    /// arrives.
    pub fn in_order(&self) -> Vec<Key> {
        let mut order = Vec::with_capacity(self.len());
        let mut round = 0;
        while order.len() < self.len() {
            for s in &self.turns {
                if let Some(job) = self.by_submitter.get(s).and_then(|jobs| jobs.get(round)) {
                    order.push(*job);
                }
            }
            round += 1;
        }
        order
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.submitter_of.len()
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.submitter_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u32) -> Key {
        Key::of_content(&n.to_be_bytes())
    }

    #[test]
    fn one_submitters_many_jobs_do_not_starve_anothers_one() {
        let mut queue = FairQueue::new(100);
        let (busy, other) = (key(1), key(2));
        for n in 0..50 {
            queue.push(busy, key(100 + n)).unwrap();
        }
        queue.push(other, key(999)).unwrap();
        assert_eq!(queue.position(&key(999)), Some(1));
        assert_eq!(queue.pop(), Some((busy, key(100))));
        assert_eq!(queue.pop(), Some((other, key(999))), "its turn comes second");
        assert_eq!(queue.pop(), Some((busy, key(101))));
        assert_eq!(queue.len(), 48);
    }

    #[test]
    fn a_full_queue_refuses_and_a_job_is_queued_once() {
        let mut queue = FairQueue::new(2);
        queue.push(key(1), key(10)).unwrap();
        assert_eq!(queue.push(key(2), key(10)), Err(QueueError::Duplicate(key(10))));
        queue.push(key(1), key(11)).unwrap();
        assert_eq!(queue.push(key(2), key(12)), Err(QueueError::Full { capacity: 2 }));
        assert!(queue.remove(&key(10)));
        assert!(!queue.remove(&key(10)));
        queue.push(key(2), key(12)).unwrap();
        assert_eq!(queue.pop(), Some((key(1), key(11))));
        assert_eq!(queue.pop(), Some((key(2), key(12))));
        assert_eq!(queue.pop(), None);
        assert!(queue.is_empty());
    }

    proptest! {
        /// `position` says how many jobs start before a job, against the
        /// order they actually start in; and between two jobs of one
        /// submitter no other submitter starts two.
        #[test]
        fn positions_match_the_order_jobs_start_in(
            pushes in proptest::collection::vec((0u32..4, any::<bool>()), 1..60),
        ) {
            let mut queue = FairQueue::new(1000);
            let mut n = 0;
            for (submitter, pop) in &pushes {
                queue.push(key(*submitter), key(1000 + n)).unwrap();
                n += 1;
                if *pop {
                    queue.pop();
                }
            }
            let waiting: Vec<Key> = (0..n).map(|i| key(1000 + i)).filter(|j| queue.position(j).is_some()).collect();
            let predicted: BTreeMap<Key, usize> =
                waiting.iter().map(|j| (*j, queue.position(j).unwrap())).collect();
            let listed = queue.in_order();
            let mut order = Vec::new();
            while let Some((submitter, job)) = queue.pop() {
                order.push((submitter, job));
            }
            for (i, (_, job)) in order.iter().enumerate() {
                prop_assert_eq!(predicted.get(job).copied(), Some(i));
            }
            prop_assert_eq!(listed, order.iter().map(|(_, j)| *j).collect::<Vec<_>>());
            // Fair: between two consecutive jobs of one submitter, no other
            // submitter starts two.
            for (i, (submitter, _)) in order.iter().enumerate() {
                let Some(next) = order[i + 1..].iter().position(|(s, _)| s == submitter) else {
                    continue;
                };
                let between = &order[i + 1..i + 1 + next];
                for (other, _) in between {
                    prop_assert_eq!(between.iter().filter(|(s, _)| s == other).count(), 1);
                }
            }
        }
    }
}
