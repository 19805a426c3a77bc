//! When a key's member set moves, and where: the duty each member of the
//! set does, the same in the node and in the simulator.
//!
//! At every look a member asks the other members of the set it serves
//! whether they are there, and hands their answers to [`Watch::heard`]:
//! who answered, and the epoch each serves (or knows the key moved to).
//! Only the member with the lowest key among those that answered and
//! still serve the set goes on. It looks the key's home up (the peers
//! nearest the key, as the overlay finds them) when a member is gone or
//! the set stuck, else at most every [`HOME_EVERY`]; asks the peers of
//! that home not in the set whether they are there (the overlay's table
//! may still name a peer that died); and hands both to
//! [`Watch::choose`], which says where to move the set, if anywhere:
//!
//! - when a member has not answered for `gone_after`;
//! - when two or more of the set are no longer among the nearest (a
//!   member silent for less than `gone_after` has the benefit of the
//!   doubt), and the lookup found a whole home (fewer peers than that say
//!   nothing about who is nearest: the overlay may not know them all yet);
//! - when a move sealed the set and did not finish within three whole
//!   periods of the lease (its mover crashed or was cut off).
//!
//! The next set is the nearest peers found, without the gone members and
//! the newcomers that did not answer (a member silent for less than
//! `gone_after` stays), [`MIN_MEMBERS`] at least. The move itself is a [`super::Rehome`];
//! whether two members move at once matters only to liveness (Paxos
//! makes the next set one).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_overlay::{Instant, Key};

use crate::quorum::{Members, Timing};

/// Fewest members a moved set has.
pub const MIN_MEMBERS: usize = 3;
/// How often the home of a set whose members all answer is looked up, to
/// see whether nearer peers joined.
pub const HOME_EVERY: Duration = Duration::from_secs(60);

/// One member's watch over one key's set, between looks.
#[derive(Clone, Debug)]
pub struct Watch {
    gone_after: Duration,
    /// The home's size: how many peers a set has when the overlay knows
    /// enough of them.
    size: usize,
    /// Since when each other member has not answered.
    silent: BTreeMap<Key, Instant>,
    /// Since when the set has been sealed here without moving.
    sealed: Option<Instant>,
    /// When the home was last looked up while the set was whole.
    homed: Option<Instant>,
    /// What the last look found, for [`Watch::choose`].
    found: Option<Found>,
}

#[derive(Clone, Debug)]
struct Found {
    gone: BTreeSet<Key>,
    silent: BTreeSet<Key>,
    stuck: bool,
}

/// What a member does after a look's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the set stays, or another member moves it.
    Wait,
    /// Look the home up: the `count` peers nearest the key (this one
    /// among them if it is that near), nearest first; then ask the ones
    /// not in the set whether they are there, and call
    /// [`Watch::choose`].
    FindHome {
        /// How many peers to find.
        count: usize,
    },
}

/// A member's view of the set it serves, at a look.
#[derive(Clone, Copy, Debug)]
pub struct Serving<'a> {
    /// This member.
    pub me: Key,
    /// The set it serves.
    pub set: &'a Members,
    /// That set's epoch.
    pub epoch: u64,
    /// Whether a move sealed it here.
    pub sealed: bool,
    /// The key's timing.
    pub timing: Timing,
}

impl Watch {
    /// A watch that counts a member gone after `gone_after` of silence,
    /// over a home of `size` peers.
    pub fn new(gone_after: Duration, size: usize) -> Watch {
        Watch {
            gone_after,
            size,
            silent: BTreeMap::new(),
            sealed: None,
            homed: None,
            found: None,
        }
    }

    /// A look's answers at `at` (a clock that only moves forward):
    /// `answered` maps each other member that
    /// answered to the epoch of the set it serves or knows the key moved
    /// to.
    pub fn heard(&mut self, at: Instant, serving: Serving<'_>, answered: &BTreeMap<Key, u64>) -> Step {
        let Serving {
            me,
            set,
            epoch,
            sealed,
            timing,
        } = serving;
        self.found = None;
        let others: Vec<Key> = set.peers().iter().copied().filter(|k| *k != me).collect();
        self.silent.retain(|k, _| others.contains(k));
        for k in &others {
            if answered.contains_key(k) {
                self.silent.remove(k);
            } else {
                self.silent.entry(*k).or_insert(at);
            }
        }
        let sealed_since = if sealed {
            Some(*self.sealed.get_or_insert(at))
        } else {
            self.sealed = None;
            None
        };
        let silent_for = |since: &Instant| at.saturating_since(*since);
        let gone: BTreeSet<Key> = self
            .silent
            .iter()
            .filter(|(_, since)| silent_for(since) >= self.gone_after)
            .map(|(k, _)| *k)
            .collect();
        let silent: BTreeSet<Key> = self.silent.keys().copied().collect();
        let stuck = sealed_since.is_some_and(|since| silent_for(&since) >= timing.fresh_for() * 3);
        // The lowest key among those that answered and still serve this
        // set moves it (one that moved on already does not look at it any
        // more).
        if answered.iter().any(|(k, e)| *e <= epoch && *k < me) {
            return Step::Wait;
        }
        // With every member there, only new peers nearer the key could
        // move the set: worth a lookup now and then, not at every look.
        if gone.is_empty() && !stuck {
            if self.homed.is_some_and(|last| at.saturating_since(last) < HOME_EVERY) {
                return Step::Wait;
            }
            self.homed = Some(at);
        }
        let count = self.size + gone.len();
        self.found = Some(Found { gone, silent, stuck });
        Step::FindHome { count }
    }

    /// The peers of `home` (nearest first, as [`Step::FindHome`] asked)
    /// to ask whether they are there before [`Watch::choose`]: the ones
    /// not in the set.
    pub fn newcomers(&self, serving: Serving<'_>, home: &[Key]) -> Vec<Key> {
        home.iter()
            .copied()
            .filter(|k| !serving.set.contains(k) && *k != serving.me)
            .collect()
    }

    /// Where to move the set after the look [`Watch::heard`] asked a home
    /// for: `home` as found (nearest first), `alive` the newcomers that
    /// answered. `None`: it stays.
    pub fn choose(&mut self, serving: Serving<'_>, home: &[Key], alive: &BTreeSet<Key>) -> Option<Members> {
        let Found { gone, silent, stuck } = self.found.take()?;
        let set = serving.set;
        let full = home.len() >= self.size + gone.len();
        let mut to: Vec<Key> = Vec::new();
        for k in home {
            if to.len() == self.size {
                break;
            }
            if !gone.contains(k) && (set.contains(k) || *k == serving.me || alive.contains(k)) && !to.contains(k) {
                to.push(*k);
            }
        }
        // Members no longer among the nearest; one silent but not yet
        // gone has the benefit of the doubt.
        let outside = set
            .peers()
            .iter()
            .filter(|k| full && !gone.contains(k) && !silent.contains(k) && !to.contains(k))
            .count();
        if to.len() < MIN_MEMBERS || !(stuck || !gone.is_empty() || outside >= 2) {
            return None;
        }
        Some(Members::new(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key::from_bytes([n; 32])
    }

    fn at(s: u64) -> Instant {
        Instant::from_micros(s * 1_000_000)
    }

    const T: Timing = Timing::DEFAULT;

    fn serving(me: u8, set: &Members, sealed: bool) -> Serving<'_> {
        Serving {
            me: key(me),
            set,
            epoch: 0,
            sealed,
            timing: T,
        }
    }

    fn answers(from: &[u8]) -> BTreeMap<Key, u64> {
        from.iter().map(|n| (key(*n), 0)).collect()
    }

    fn set(of: &[u8]) -> Members {
        Members::new(of.iter().map(|n| key(*n)))
    }

    #[test]
    fn a_member_silent_for_gone_after_is_moved_out_and_a_newcomer_that_answers_moved_in() {
        let members = set(&[1, 2, 3, 4, 5]);
        let mut w = Watch::new(Duration::from_secs(60), 5);
        // Everyone answers: a first lookup, nothing to move.
        assert_eq!(
            w.heard(at(0), serving(1, &members, false), &answers(&[2, 3, 4, 5])),
            Step::FindHome { count: 5 }
        );
        let home = [key(1), key(2), key(3), key(4), key(5)];
        assert_eq!(w.choose(serving(1, &members, false), &home, &BTreeSet::new()), None);
        // Member 5 falls silent: not gone yet, and the home is not looked up
        // again within a minute.
        assert_eq!(
            w.heard(at(10), serving(1, &members, false), &answers(&[2, 3, 4])),
            Step::Wait
        );
        // Gone after 60 s of silence: the home is looked up at once, one
        // more peer than the home's size.
        assert_eq!(
            w.heard(at(70), serving(1, &members, false), &answers(&[2, 3, 4])),
            Step::FindHome { count: 6 }
        );
        let home = [key(1), key(5), key(2), key(6), key(3), key(4)];
        let newcomers = w.newcomers(serving(1, &members, false), &home);
        assert_eq!(newcomers, vec![key(6)]);
        let to = w.choose(serving(1, &members, false), &home, &BTreeSet::from([key(6)]));
        assert_eq!(to, Some(set(&[1, 2, 3, 4, 6])));
    }

    #[test]
    fn a_newcomer_that_does_not_answer_is_left_out() {
        let members = set(&[1, 2, 3, 4, 5]);
        let mut w = Watch::new(Duration::from_secs(1), 5);
        w.heard(at(0), serving(1, &members, false), &answers(&[2, 3, 4]));
        assert_eq!(
            w.heard(at(2), serving(1, &members, false), &answers(&[2, 3, 4])),
            Step::FindHome { count: 6 }
        );
        let home = [key(1), key(2), key(6), key(3), key(4), key(7)];
        let to = w.choose(serving(1, &members, false), &home, &BTreeSet::from([key(7)]));
        assert_eq!(to, Some(set(&[1, 2, 3, 4, 7])));
    }

    #[test]
    fn only_the_lowest_member_that_answered_and_serves_the_set_moves_it() {
        let members = set(&[1, 2, 3, 4, 5]);
        let mut w = Watch::new(Duration::from_secs(1), 5);
        // Member 2 hears member 1, which serves the same set: 1 moves it.
        assert_eq!(
            w.heard(at(0), serving(2, &members, false), &answers(&[1, 3, 4, 5])),
            Step::Wait
        );
        // Member 1 says it moved on (a newer epoch): 2 goes on.
        let mut moved_on = answers(&[3, 4, 5]);
        moved_on.insert(key(1), 1);
        assert_eq!(
            w.heard(at(1), serving(2, &members, false), &moved_on),
            Step::FindHome { count: 5 }
        );
    }

    #[test]
    fn two_members_outside_a_whole_home_move_the_set_one_does_not() {
        let members = set(&[1, 2, 3, 4, 5]);
        let all = answers(&[2, 3, 4, 5]);
        let alive = BTreeSet::from([key(6), key(7)]);
        let mut w = Watch::new(Duration::from_secs(60), 5);
        w.heard(at(0), serving(1, &members, false), &all);
        let one_out = [key(1), key(2), key(3), key(4), key(6)];
        assert_eq!(w.choose(serving(1, &members, false), &one_out, &alive), None);
        w.heard(at(61), serving(1, &members, false), &all);
        let two_out = [key(1), key(2), key(3), key(6), key(7)];
        assert_eq!(
            w.choose(serving(1, &members, false), &two_out, &alive),
            Some(set(&[1, 2, 3, 6, 7]))
        );
        // A lookup that found fewer than a whole home moves nothing.
        w.heard(at(122), serving(1, &members, false), &all);
        assert_eq!(w.choose(serving(1, &members, false), &two_out[..4], &alive), None);
    }

    #[test]
    fn a_set_sealed_for_three_periods_is_moved_on_by_a_member() {
        let members = set(&[1, 2, 3, 4, 5]);
        let all = answers(&[2, 3, 4, 5]);
        let home = [key(1), key(2), key(3), key(4), key(5)];
        let mut w = Watch::new(Duration::from_secs(60), 5);
        w.heard(at(0), serving(1, &members, true), &all);
        assert_eq!(w.heard(at(10), serving(1, &members, true), &all), Step::Wait);
        let stuck_at = at(T.fresh_for().as_secs() * 3);
        assert_eq!(
            w.heard(stuck_at, serving(1, &members, true), &all),
            Step::FindHome { count: 5 }
        );
        assert_eq!(
            w.choose(serving(1, &members, true), &home, &BTreeSet::new()),
            Some(members.clone())
        );
    }

    #[test]
    fn fewer_than_three_members_are_no_set() {
        let members = set(&[1, 2, 3]);
        let mut w = Watch::new(Duration::from_secs(1), 5);
        w.heard(at(0), serving(1, &members, false), &answers(&[2]));
        assert_eq!(
            w.heard(at(2), serving(1, &members, false), &answers(&[2])),
            Step::FindHome { count: 6 }
        );
        let home = [key(1), key(2), key(3)];
        assert_eq!(w.choose(serving(1, &members, false), &home, &BTreeSet::new()), None);
    }
}
