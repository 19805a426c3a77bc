//! Tenure at a quorum: the right to act on a key (run a job, hold a named
//! lease), granted and kept by a majority of a fixed set of peers — the
//! key's home when the key was created — so that two holders never both
//! believe they hold it, under partitions, crashes, lost and late messages
//! and clocks that run at slightly different rates.
//!
//! # The parts
//!
//! - [`Acceptor`]: what one member of the set keeps for one key — the
//!   current [`Grantee`], the highest grant number it has seen, how long
//!   the grantee stays *fresh* by its own clock, and the result once one is
//!   committed — and its answer to each [`Request`].
//! - [`Tenure`]: the grantee's side. It renews by asking every member and
//!   may act only until `sent + term - margin` by its own clock, where
//!   `sent` is when it sent the newest renewal a majority confirmed.
//! - [`Tally`]: counts the members' answers to one request to all of them:
//!   done once a majority agreed, failed once a majority refused.
//!
//! # The argument
//!
//! Every request that changes who holds the key ([`Request::Change`]) needs
//! a majority of the members, and a member accepts it only while the
//! current grantee is *not* fresh by its clock: `term + margin` after it
//! last confirmed that grantee's renewal (or accepted its grant). A grantee
//! acts only `term - margin` after *sending* a renewal that a majority
//! confirmed. Any two majorities of one set share a member. Take the one
//! that confirmed the renewal and later accepted the change: it confirmed
//! at or after the grantee sent, and it accepted the change at least
//! `term + margin` of its own time after confirming; the grantee stopped
//! `term - margin` of its own time after sending. With clock rates within
//! `1 ± ρ` of real time, the grantee stopped first whenever `ρ ≤ margin /
//! term` (10% with the defaults, 10 s and 1 s): `(term - margin) / (1 - ρ)
//! ≤ (term + margin) / (1 + ρ)`. Only rates count, never offsets: every
//! time here is a duration one peer measured on its own clock, so no
//! message carries a time and a late message cannot extend anything (a
//! confirmation counts from when its request was *sent*).
//!
//! A result ([`Request::Commit`]) is decided the way Paxos decides a
//! value, the grant number as the ballot: a member takes a result only
//! from its current grantee (and may replace one an earlier grantee left);
//! a result is *committed* once a majority holds it. A grantee's first
//! confirmed renewal is its promise round: the members that confirm it
//! hold it as their grantee (so no earlier grantee can commit there any
//! more) and tell it the result they hold, if any. If any did, the grantee
//! commits the one from the highest grant instead of its own work
//! ([`Tenure::adopted`]). Any majority that committed a result shares a
//! member with that first confirming majority, so every later grantee
//! commits the same result: once committed, a result never changes,
//! though results that reached only a minority can be replaced, so a key
//! never gets stuck between them. The grant number grows with every
//! change (a member refuses a number not above every one it saw), so it
//! is also the fencing token that whatever the grantee writes elsewhere
//! can carry.
//!
//! A grantee that lets go may name progress that no member keeps
//! ([`Request::Release`]'s `newer`: a job's snapshot as it paused for a
//! move, held by the grantee); members pass it on as a hint
//! ([`View::moved_with`]), and the next grantee goes on from it only if it
//! can fetch it, else from what a majority keeps. It decides nothing here:
//! neither who holds the key nor which result is committed.
//!
//! A member that restarts keeps its state on disk but not its clock: it
//! counts its grantee fresh for a whole `term + margin` from the restart
//! ([`Acceptor::restarted`]). What this does not cover: a member that
//! loses its disk and comes back empty (it would count as a member that
//! never saw the key), and a change of the member set (a majority of the
//! set gone for good leaves the key unavailable, though never doubly
//! held): named leases move their set with [`crate::rehome`], jobs keep
//! theirs.
//!
//! Sans-IO: inputs carry the caller's `now`; the driver carries requests
//! and answers, and persists an acceptor's state before it sends the
//! answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

/// Who holds the key: a peer and the grant number it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grantee {
    /// The peer that may act (for a job: its executor).
    pub peer: Key,
    /// The grant number: above every earlier grant on this key.
    pub n: u64,
}

/// The fixed set of peers whose majority decides, sorted, without
/// duplicates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Members(Vec<Key>);

impl Members {
    /// The set of `peers` (order and duplicates do not matter).
    pub fn new(peers: impl IntoIterator<Item = Key>) -> Self {
        let mut peers: Vec<Key> = peers.into_iter().collect();
        peers.sort_unstable();
        peers.dedup();
        Members(peers)
    }

    /// How many make a majority.
    pub fn majority(&self) -> usize {
        self.0.len() / 2 + 1
    }

    /// Whether `peer` is one of them.
    pub fn contains(&self, peer: &Key) -> bool {
        self.0.binary_search(peer).is_ok()
    }

    /// The members.
    pub fn peers(&self) -> &[Key] {
        &self.0
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (such a set never decides anything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How long a tenure lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// How long a confirmed renewal lets the grantee act, less the margin.
    pub term: Duration,
    /// Subtracted from the grantee's time and added to the members': it
    /// covers clock rates that differ from real time by up to `margin /
    /// term`.
    pub margin: Duration,
}

impl Timing {
    /// The defaults: a 10 s term, a 1 s margin (clock rates within 10%).
    pub const DEFAULT: Timing = Timing {
        term: Duration::from_secs(10),
        margin: Duration::from_secs(1),
    };

    /// How long the grantee acts after sending a renewal a majority
    /// confirmed.
    pub fn acts_for(&self) -> Duration {
        self.term.saturating_sub(self.margin)
    }

    /// How long a member counts the grantee fresh after confirming it.
    pub fn fresh_for(&self) -> Duration {
        self.term + self.margin
    }
}

/// What a peer asks a member about a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// What the member holds.
    Read,
    /// The grantee asks to go on acting.
    Renew(Grantee),
    /// Give the key to this grantee. Accepted only once the current one
    /// is no longer fresh, and with a grant number above every one seen
    /// (so of two changes that race, a member takes one).
    Change(Grantee),
    /// The grantee lets go: the key may be given to another at once.
    Release {
        /// The grantee.
        by: Grantee,
        /// Why, for the key's history.
        why: LetGo,
        /// Progress it saved as it let go that the members do not keep
        /// (a job's snapshot as it paused for a move, held by the grantee
        /// and fetched by the next one): a hint for the next grant, which
        /// goes on from it if it can get it, else from what a majority
        /// keeps ([`View::moved_with`]).
        #[serde(default)]
        newer: Option<Saved>,
    },
    /// The grantee saves its progress (a job's checkpoint), numbered: a
    /// member keeps the save with the highest grant number and, within it,
    /// the highest `seq`. A later grantee starts from what a majority
    /// read gives.
    Save(Saved),
    /// The grantee commits the key's result (a job's end): its own, or the
    /// one it adopted ([`Tenure::adopted`]).
    Commit {
        /// The grantee.
        by: Grantee,
        /// The result, opaque here.
        result: Vec<u8>,
    },
}

/// Progress a grantee saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Who saved it.
    pub by: Grantee,
    /// Its number among that grantee's saves.
    pub seq: u64,
    /// What was saved, opaque here (a job's checkpoint id).
    pub state: Vec<u8>,
}

impl Saved {
    /// Its place among saves: by grant number, then by `seq`.
    pub fn order(&self) -> (u64, u64) {
        (self.by.n, self.seq)
    }

    /// The newest of `saves` (what a majority read gives).
    pub fn newest<'a>(saves: impl IntoIterator<Item = &'a Saved>) -> Option<&'a Saved> {
        saves.into_iter().max_by_key(|s| s.order())
    }
}

/// What a member holds, as it answers a read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The current grantee.
    pub grantee: Option<Grantee>,
    /// Whether that grantee is past fresh by this member's clock (or
    /// released).
    pub lapsed: bool,
    /// How much longer it stays fresh here (zero once lapsed): a duration,
    /// so that no clock is compared with another's.
    pub fresh_for: Duration,
    /// The highest grant number this member has seen.
    pub max_n: u64,
    /// The newest progress saved.
    pub saved: Option<Saved>,
    /// The result this member holds and who sent it (committed once a
    /// majority holds the same bytes).
    pub result: Option<(Grantee, Vec<u8>)>,
    /// Progress the last grantee named as it let go, which members do
    /// not keep: a hint for the next grant (boxed: a view is mostly
    /// without one).
    pub moved_with: Option<Box<Saved>>,
}

/// Why a member refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The asker is not (or no longer) the grantee here.
    #[error("not the current grantee here (it is {current:?})")]
    Stale {
        /// Who is.
        current: Option<Grantee>,
    },
    /// The current grantee is still fresh here: it may be acting.
    #[error("the current grantee {current:?} may still be acting")]
    Fresh {
        /// Who.
        current: Grantee,
    },
    /// The grant number is not above every one seen here.
    #[error("grant number {given} is not above {seen}")]
    Number {
        /// The number asked for.
        given: u64,
        /// The highest seen.
        seen: u64,
    },
    /// Another waits before the asker (a named lease's line,
    /// [`crate::lease::Line`]).
    #[error("{first} is first in line")]
    NotFirst {
        /// Who is first.
        first: Key,
    },
    /// The member set is being handed to the next ([`crate::rehome`]):
    /// this member answers nothing that changes the key any more.
    #[error("the key's member set is being handed on")]
    Sealed,
    /// The asker's member set is not the current one: the key's members
    /// are these ([`crate::rehome`]).
    #[error("the key's member set is now epoch {}", .0.epoch)]
    Moved(Box<crate::rehome::Next>),
}

/// A member's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// To a read.
    View(View),
    /// A renewal confirmed, with the result this member holds (the
    /// grantee's own, or one an earlier grantee left).
    Confirmed(Option<(Grantee, Vec<u8>)>),
    /// Done.
    Ok,
    /// Refused, and why.
    Refused(Refusal),
}

/// What one member keeps for one key. Persist it (after every request
/// that changed it, before answering) and give it back after a restart
/// through [`Acceptor::restarted`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptor {
    grantee: Option<Grantee>,
    max_n: u64,
    /// Until when, by this member's clock, the grantee may be acting.
    fresh_until: Instant,
    saved: Option<Saved>,
    result: Option<(Grantee, Vec<u8>)>,
    /// The grants made here, for the key's history (not for safety, and
    /// not worth a write of its own: it reaches the disk with the next
    /// change that must, so a crash may lose its latest marks).
    #[serde(default)]
    history: std::collections::VecDeque<Tenancy>,
    /// What the last grantee to let go named as its progress then, not
    /// kept here ([`Request::Release`]).
    #[serde(default)]
    moved_with: Option<Saved>,
}

/// Grants one member keeps in a key's history, at most.
pub const MAX_TENANCIES: usize = 16;

/// Why a grantee let go of a key ([`Request::Release`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LetGo {
    /// It is done with it (a named lease given back).
    Released,
    /// Moved on request (a job moved by its submitter).
    Moved,
    /// Its peer drains: it moves everything off.
    Drained,
    /// Its peer was busy while another sat idle.
    Rebalanced,
}

/// How a grant ended, as one member saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// The grantee committed a result.
    Committed,
    /// The grantee let go.
    LetGo(LetGo),
    /// It went stale (its peer crashed or was cut off) and the key was
    /// given to another.
    Lapsed,
    /// Given to another before it ever renewed here (a placement that
    /// lost a race, or never started).
    Superseded,
}

/// One grant in a key's history, as one member saw it (times by that
/// member's clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenancy {
    /// The grantee.
    pub by: Grantee,
    /// When this member accepted the grant.
    pub granted_at: Instant,
    /// Whether a renewal of it was confirmed here.
    pub acted: bool,
    /// Saves (a job's checkpoints) this member took from it.
    pub saves: u64,
    /// When the last of them came.
    pub saved_at: Option<Instant>,
    /// When and how it ended here.
    pub ended: Option<(Instant, Ending)>,
}

impl Acceptor {
    /// A member that has seen nothing of the key.
    pub fn new() -> Self {
        Acceptor::default()
    }

    /// Answers `request` at `now`.
    pub fn handle(&mut self, now: Instant, timing: Timing, request: Request) -> Answer {
        match request {
            Request::Read => Answer::View(self.view(now)),
            Request::Renew(by) => {
                if self.grantee != Some(by) {
                    return self.stale();
                }
                self.fresh_until = self.fresh_until.max(now + timing.fresh_for());
                self.mark(by, |t| t.acted = true);
                Answer::Confirmed(self.result.clone())
            }
            Request::Change(to) => {
                if to.n <= self.max_n {
                    return Answer::Refused(Refusal::Number {
                        given: to.n,
                        seen: self.max_n,
                    });
                }
                if let Some(current) = self.grantee
                    && now < self.fresh_until
                {
                    return Answer::Refused(Refusal::Fresh { current });
                }
                if let Some(before) = self.grantee {
                    self.mark(before, |t| {
                        let why = if t.acted { Ending::Lapsed } else { Ending::Superseded };
                        t.ended.get_or_insert((now, why));
                    });
                }
                self.grantee = Some(to);
                self.max_n = to.n;
                if self.history.len() == MAX_TENANCIES {
                    self.history.pop_front();
                }
                self.history.push_back(Tenancy {
                    by: to,
                    granted_at: now,
                    acted: false,
                    saves: 0,
                    saved_at: None,
                    ended: None,
                });
                // The new grantee has not acted yet, but it may as soon as
                // a majority confirms its first renewal.
                self.fresh_until = now + timing.fresh_for();
                Answer::Ok
            }
            Request::Release { by, why, newer } => {
                if self.grantee != Some(by) {
                    return self.stale();
                }
                self.fresh_until = now;
                // Only its own progress, and later than what is kept.
                if let Some(newer) = newer.filter(|n| n.by == by)
                    && self.saved.as_ref().is_none_or(|held| held.order() < newer.order())
                {
                    self.moved_with = Some(newer);
                }
                self.mark(by, |t| {
                    t.ended.get_or_insert((now, Ending::LetGo(why)));
                });
                Answer::Ok
            }
            Request::Save(save) => {
                if self.grantee != Some(save.by) {
                    return self.stale();
                }
                if self.saved.as_ref().is_none_or(|held| held.order() < save.order()) {
                    let by = save.by;
                    self.saved = Some(save);
                    self.mark(by, |t| {
                        t.saves += 1;
                        t.saved_at = Some(now);
                    });
                }
                Answer::Ok
            }
            Request::Commit { by, result } => {
                if self.grantee != Some(by) {
                    return self.stale();
                }
                self.result = Some((by, result));
                self.mark(by, |t| {
                    t.ended.get_or_insert((now, Ending::Committed));
                });
                Answer::Ok
            }
        }
    }

    /// A member of a key's next member set, given the grantee and the
    /// highest grant number the old set's sealed majority held, the
    /// grantee fresh until `fresh_until` by this member's clock
    /// ([`crate::rehome`]). What else the old set kept (saves, a result,
    /// the history) is not carried: a named lease has none of it.
    pub fn installed(grantee: Option<Grantee>, max_n: u64, fresh_until: Instant) -> Self {
        Acceptor {
            grantee,
            max_n: max_n.max(grantee.map_or(0, |g| g.n)),
            fresh_until,
            ..Acceptor::default()
        }
    }

    /// After a restart at `now` (state read back from disk, clock not):
    /// the grantee counts as fresh for a whole period.
    pub fn restarted(&mut self, now: Instant, timing: Timing) {
        self.fresh_until = if self.grantee.is_some() {
            now + timing.fresh_for()
        } else {
            now
        };
    }

    /// Whether `other` holds the same durable state (grantee, highest
    /// number, save, result) — all that must be on disk before an answer
    /// goes out. How long the grantee stays fresh is not: after a restart
    /// it counts from the restart ([`restarted`](Self::restarted)).
    pub fn same_durable(&self, other: &Acceptor) -> bool {
        self.grantee == other.grantee
            && self.max_n == other.max_n
            && self.saved == other.saved
            && self.result == other.result
    }

    /// The grants this member made, oldest first (at most
    /// [`MAX_TENANCIES`], the newest kept).
    pub fn history(&self) -> impl Iterator<Item = &Tenancy> {
        self.history.iter()
    }

    fn mark(&mut self, by: Grantee, change: impl FnOnce(&mut Tenancy)) {
        if let Some(t) = self.history.iter_mut().rev().find(|t| t.by == by) {
            change(t);
        }
    }

    /// What this member holds, at `now`.
    pub fn view(&self, now: Instant) -> View {
        View {
            grantee: self.grantee,
            lapsed: now >= self.fresh_until,
            fresh_for: self.fresh_until.saturating_since(now),
            max_n: self.max_n,
            saved: self.saved.clone(),
            result: self.result.clone(),
            moved_with: self.moved_with.clone().map(Box::new),
        }
    }

    fn stale(&self) -> Answer {
        Answer::Refused(Refusal::Stale { current: self.grantee })
    }
}

/// How a request to every member came out, so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet.
    Open,
    /// A majority agreed.
    Agreed,
    /// A majority refused or cannot answer any more: it cannot succeed.
    Refused,
}

/// Counts the members' answers to one request sent to all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    members: Members,
    agreed: BTreeSet<Key>,
    refused: BTreeSet<Key>,
}

impl Tally {
    /// A tally over `members`.
    pub fn new(members: Members) -> Self {
        Tally {
            members,
            agreed: BTreeSet::new(),
            refused: BTreeSet::new(),
        }
    }

    /// The members it counts.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Whether `member` agreed.
    pub fn agreed(&self, member: &Key) -> bool {
        self.agreed.contains(member)
    }

    /// `member` agreed (answers from non-members, and second answers, do
    /// not count).
    pub fn agree(&mut self, member: Key) -> Outcome {
        if self.members.contains(&member) && !self.refused.contains(&member) {
            self.agreed.insert(member);
        }
        self.outcome()
    }

    /// `member` refused, or will not answer.
    pub fn refuse(&mut self, member: Key) -> Outcome {
        if self.members.contains(&member) && !self.agreed.contains(&member) {
            self.refused.insert(member);
        }
        self.outcome()
    }

    /// The outcome so far.
    pub fn outcome(&self) -> Outcome {
        let majority = self.members.majority();
        if self.members.is_empty() {
            Outcome::Refused
        } else if self.agreed.len() >= majority {
            Outcome::Agreed
        } else if self.members.len() - self.refused.len() < majority {
            Outcome::Refused
        } else {
            Outcome::Open
        }
    }
}

/// Why a tenure ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    /// No majority confirmed a renewal in time.
    Lapsed,
    /// A majority said a later grantee holds the key, or the grantee
    /// stopped on its own.
    Replaced,
}

/// The grantee's side: when to renew, and whether it may act.
///
/// It may act only until `sent + term - margin` by its own clock, `sent`
/// being when it sent the newest renewal that a majority confirmed; it
/// renews every third of the term. A new grantee may not act before its
/// first renewal is confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenure {
    grantee: Grantee,
    members: Members,
    timing: Timing,
    /// Renewals in flight: their number, when sent, the tally, the
    /// members that hold a later grantee, and the result from the highest
    /// grant that a confirming member holds.
    rounds: BTreeMap<u64, Round>,
    next_round: u64,
    next_renew: Instant,
    /// When it began: a grant that no majority confirmed within a term
    /// did not land.
    began: Instant,
    acts_until: Option<Instant>,
    /// Set by the first confirmed round: the result to commit instead of
    /// the grantee's own, if a confirming member held one.
    adopted: Option<Option<(Grantee, Vec<u8>)>>,
    ended: Option<Ended>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Round {
    sent: Instant,
    tally: Tally,
    later: BTreeSet<Key>,
    held: Option<(Grantee, Vec<u8>)>,
}

impl Tenure {
    /// The tenure of `grantee` over `members`, starting at `now` (it asks
    /// for its first renewal at once).
    pub fn new(now: Instant, grantee: Grantee, members: Members, timing: Timing) -> Self {
        Tenure {
            grantee,
            members,
            timing,
            rounds: BTreeMap::new(),
            next_round: 0,
            next_renew: now,
            began: now,
            acts_until: None,
            adopted: None,
            ended: None,
        }
    }

    /// The grantee.
    pub fn grantee(&self) -> Grantee {
        self.grantee
    }

    /// The members it asks.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// A renewal to send to every member now, if one is due: its round,
    /// which the answers name.
    pub fn poll_renew(&mut self, now: Instant) -> Option<u64> {
        if self.ended.is_some() || now < self.next_renew {
            return None;
        }
        let round = self.next_round;
        self.next_round += 1;
        self.next_renew = now + self.timing.term / 3;
        self.rounds.insert(
            round,
            Round {
                sent: now,
                tally: Tally::new(self.members.clone()),
                later: BTreeSet::new(),
                held: None,
            },
        );
        // Rounds that can no longer extend anything are dropped.
        let acts_until = self.acts_until;
        let acts_for = self.timing.acts_for();
        self.rounds
            .retain(|_, r| acts_until.is_none_or(|until| r.sent + acts_for > until) && r.sent + acts_for > now);
        Some(round)
    }

    /// A member's answer to renewal `round`.
    pub fn handle_answer(&mut self, now: Instant, round: u64, member: Key, answer: &Answer) {
        if self.ended.is_some() {
            return;
        }
        let Some(r) = self.rounds.get_mut(&round) else {
            return;
        };
        let sent = r.sent;
        let mine = self.grantee.n;
        let outcome = match answer {
            Answer::Confirmed(held) => {
                if let Some((by, result)) = held
                    && self.members.contains(&member)
                    && r.held.as_ref().is_none_or(|(best, _)| best.n < by.n)
                {
                    r.held = Some((*by, result.clone()));
                }
                r.tally.agree(member)
            }
            Answer::Refused(refusal) => {
                // A member that holds a later grantee will never confirm
                // this one again; one that holds an earlier grantee has not
                // seen this grant yet.
                let superseded = match refusal {
                    Refusal::Stale { current } => current.is_some_and(|c| c.n > mine),
                    Refusal::Fresh { .. }
                    | Refusal::Number { .. }
                    | Refusal::NotFirst { .. }
                    | Refusal::Sealed
                    | Refusal::Moved(_) => false,
                };
                if superseded && self.members.contains(&member) {
                    r.later.insert(member);
                }
                if r.later.len() >= self.members.majority() {
                    self.end(Ended::Replaced);
                    return;
                }
                r.tally.refuse(member)
            }
            Answer::Ok | Answer::View(_) => r.tally.refuse(member),
        };
        if outcome == Outcome::Agreed {
            let until = sent + self.timing.acts_for();
            self.acts_until = Some(self.acts_until.map_or(until, |u| u.max(until)));
            if let Some(r) = self.rounds.remove(&round)
                && self.adopted.is_none()
            {
                // The promise round: a result held by a confirming member
                // binds this grantee — one an earlier grantee left, or one
                // this very grant committed before (a second run of the
                // same grant, after a restart or a repeated claim).
                self.adopted = Some(r.held);
            }
        }
        self.check(now);
    }

    /// Once the first renewal is confirmed: the result this grantee must
    /// commit instead of its own work (`Some`), because an earlier grantee
    /// (or an earlier run of this grant) may have committed it; `None` if
    /// it is free to commit its own.
    /// Before that, `None` too: it may not act yet anyway.
    pub fn adopted(&self) -> Option<&[u8]> {
        self.adopted.as_ref()?.as_ref().map(|(_, result)| result.as_slice())
    }

    /// The key's members are now `members` (its member set was handed
    /// on, carrying this grantee: [`crate::rehome`]): renewals go there
    /// from now on, the first at once. What the old set confirmed still
    /// counts: the new members count the grantee fresh, from when they
    /// took the set, for as long as the old set's sealed members still
    /// did ([`crate::rehome`]).
    pub fn moved(&mut self, now: Instant, members: Members) {
        self.members = members;
        self.rounds.clear();
        self.renew_now(now);
    }

    /// Renews at once (the grant just landed: no need to wait for the
    /// next round).
    pub fn renew_now(&mut self, now: Instant) {
        self.next_renew = self.next_renew.min(now);
    }

    /// Whether the grantee may act at `now`.
    pub fn may_act(&mut self, now: Instant) -> bool {
        self.check(now);
        self.ended.is_none() && self.acts_until.is_some_and(|until| now < until)
    }

    /// Until when it may act, as confirmed so far.
    pub fn acts_until(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        self.acts_until
    }

    /// Why it ended, once it has: the grantee must have stopped acting.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// The grantee stops on its own (it finished, or let go).
    pub fn stop(&mut self) {
        self.end(Ended::Replaced);
    }

    /// When to call again: the next renewal, or the end of acting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        Some(match self.acts_until {
            Some(until) => until.min(self.next_renew),
            None => (self.began + self.timing.term).min(self.next_renew),
        })
    }

    fn check(&mut self, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        match self.acts_until {
            // Confirmed once, and that has run out.
            Some(until) if now >= until => self.end(Ended::Lapsed),
            // Never confirmed within a term: the grant did not land.
            None if now >= self.began + self.timing.term => self.end(Ended::Lapsed),
            _ => {}
        }
    }

    fn end(&mut self, why: Ended) {
        self.ended = Some(why);
        self.rounds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1_000)
    }

    fn key(n: u8) -> Key {
        Key::of_content(&[n])
    }

    const T: Timing = Timing::DEFAULT;

    fn g(peer: u8, n: u64) -> Grantee {
        Grantee { peer: key(peer), n }
    }

    fn members() -> Members {
        Members::new((1..=5).map(key))
    }

    #[test]
    fn a_change_waits_until_the_grantee_is_no_longer_fresh() {
        let mut a = Acceptor::new();
        assert_eq!(a.handle(t(0), T, Request::Change(g(10, 1))), Answer::Ok);
        // Renewed at 5 s: fresh until 5 + 10 + 1 s.
        assert_eq!(a.handle(t(5_000), T, Request::Renew(g(10, 1))), Answer::Confirmed(None));
        assert_eq!(
            a.handle(t(15_999), T, Request::Change(g(11, 2))),
            Answer::Refused(Refusal::Fresh { current: g(10, 1) })
        );
        assert_eq!(a.handle(t(16_000), T, Request::Change(g(11, 2))), Answer::Ok);
        // A change right after a change waits too: the new grantee may act
        // as soon as its first renewal is confirmed.
        assert_eq!(
            a.handle(t(16_001), T, Request::Change(g(12, 3))),
            Answer::Refused(Refusal::Fresh { current: g(11, 2) })
        );
        // The old grantee can neither renew nor commit.
        assert!(matches!(
            a.handle(t(16_001), T, Request::Renew(g(10, 1))),
            Answer::Refused(Refusal::Stale { .. })
        ));
        assert!(matches!(
            a.handle(
                t(16_001),
                T,
                Request::Commit {
                    by: g(10, 1),
                    result: vec![1]
                }
            ),
            Answer::Refused(Refusal::Stale { .. })
        ));
        // A grant number must grow.
        assert_eq!(
            a.handle(t(40_000), T, Request::Change(g(12, 2))),
            Answer::Refused(Refusal::Number { given: 2, seen: 2 })
        );
    }

    #[test]
    fn the_history_says_each_grant_its_saves_and_why_it_ended() {
        let mut a = Acceptor::new();
        let save = |by, seq| {
            Request::Save(Saved {
                by,
                seq,
                state: vec![seq as u8],
            })
        };
        // Grant 1 acts, saves twice and is lost (it stops renewing).
        a.handle(t(0), T, Request::Change(g(10, 1)));
        a.handle(t(1), T, Request::Renew(g(10, 1)));
        a.handle(t(2), T, save(g(10, 1), 1));
        a.handle(t(3), T, save(g(10, 1), 2));
        a.handle(t(3), T, save(g(10, 1), 2)); // said again: one save
        // Grant 2 never renews before grant 3 replaces it.
        a.handle(t(60_000), T, Request::Change(g(11, 2)));
        a.handle(t(120_000), T, Request::Change(g(12, 3)));
        // Grant 3 is moved; a stale release from grant 1 changes nothing.
        a.handle(t(120_001), T, Request::Renew(g(12, 3)));
        a.handle(
            t(120_002),
            T,
            Request::Release {
                by: g(10, 1),
                why: LetGo::Drained,
                newer: None,
            },
        );
        a.handle(
            t(120_003),
            T,
            Request::Release {
                by: g(12, 3),
                why: LetGo::Moved,
                newer: None,
            },
        );
        // Grant 4 commits.
        a.handle(t(120_004), T, Request::Change(g(13, 4)));
        a.handle(t(120_005), T, Request::Renew(g(13, 4)));
        let commit = Request::Commit {
            by: g(13, 4),
            result: vec![1],
        };
        a.handle(t(120_006), T, commit);
        let h: Vec<_> = a
            .history()
            .map(|x| (x.by.n, x.acted, x.saves, x.ended.map(|e| e.1)))
            .collect();
        assert_eq!(
            h,
            [
                (1, true, 2, Some(Ending::Lapsed)),
                (2, false, 0, Some(Ending::Superseded)),
                (3, true, 0, Some(Ending::LetGo(LetGo::Moved))),
                (4, true, 0, Some(Ending::Committed)),
            ]
        );
        assert_eq!(a.history().next().unwrap().saved_at, Some(t(3)));
        // Bounded: the newest grants are kept.
        for n in 5..40 {
            a.handle(t(200_000 + n * 60_000), T, Request::Change(g(14, n)));
        }
        assert_eq!(a.history().count(), MAX_TENANCIES);
        assert_eq!(a.history().last().unwrap().by.n, 39);
    }

    #[test]
    fn a_release_names_the_progress_it_let_go_with_for_the_next_grant_only_its_own_and_newer() {
        let saved = |by, seq| Saved {
            by,
            seq,
            state: vec![seq as u8],
        };
        let release = |by, newer| Request::Release {
            by,
            why: LetGo::Drained,
            newer,
        };
        let mut a = Acceptor::new();
        a.handle(t(0), T, Request::Change(g(10, 1)));
        a.handle(t(1), T, Request::Save(saved(g(10, 1), 1)));
        // Another grantee's progress, or one older than what is kept, is
        // no hint; the grantee's own later one is, beside what is kept.
        a.handle(t(2), T, release(g(10, 1), Some(saved(g(11, 2), 5))));
        assert_eq!(a.view(t(2)).moved_with, None);
        a.handle(t(3), T, Request::Change(g(10, 2)));
        a.handle(t(4), T, Request::Save(saved(g(10, 2), 3)));
        a.handle(t(5), T, release(g(10, 2), Some(saved(g(10, 2), 2))));
        assert_eq!(a.view(t(5)).moved_with, None);
        a.handle(t(6), T, Request::Change(g(10, 3)));
        a.handle(t(7), T, release(g(10, 3), Some(saved(g(10, 3), 1))));
        let view = a.view(t(7));
        assert_eq!(view.moved_with, Some(Box::new(saved(g(10, 3), 1))));
        assert_eq!(view.saved, Some(saved(g(10, 2), 3)), "kept as it was");
    }

    #[test]
    fn a_release_frees_the_key_at_once_and_a_later_grantee_learns_the_result_held() {
        let mut a = Acceptor::new();
        a.handle(t(0), T, Request::Change(g(10, 1)));
        assert_eq!(
            a.handle(
                t(1),
                T,
                Request::Release {
                    by: g(10, 1),
                    why: LetGo::Moved,
                    newer: None,
                }
            ),
            Answer::Ok
        );
        assert_eq!(a.handle(t(2), T, Request::Change(g(11, 2))), Answer::Ok);
        let commit = |by, result| Request::Commit { by, result };
        assert_eq!(a.handle(t(3), T, commit(g(11, 2), vec![7])), Answer::Ok);
        assert_eq!(a.handle(t(4), T, commit(g(11, 2), vec![7])), Answer::Ok, "said again");
        assert!(matches!(
            a.handle(t(4), T, commit(g(10, 1), vec![8])),
            Answer::Refused(Refusal::Stale { .. })
        ));
        // The grantee that committed goes away; a later one is told what
        // this member holds when its first renewal is confirmed.
        assert_eq!(a.handle(t(60_000), T, Request::Change(g(12, 3))), Answer::Ok);
        assert_eq!(
            a.handle(t(60_001), T, Request::Renew(g(12, 3))),
            Answer::Confirmed(Some((g(11, 2), vec![7])))
        );
        assert_eq!(a.handle(t(60_002), T, commit(g(12, 3), vec![7])), Answer::Ok);
        assert_eq!(a.view(t(60_002)).result, Some((g(12, 3), vec![7])));
    }

    #[test]
    fn a_member_keeps_the_newest_save_of_the_current_grantee() {
        let mut a = Acceptor::new();
        a.handle(t(0), T, Request::Change(g(10, 1)));
        let save = |by, seq: u64| {
            Request::Save(Saved {
                by,
                seq,
                state: seq.to_be_bytes().to_vec(),
            })
        };
        assert_eq!(a.handle(t(1), T, save(g(10, 1), 2)), Answer::Ok);
        assert_eq!(a.handle(t(2), T, save(g(10, 1), 1)), Answer::Ok, "late, kept out");
        assert_eq!(a.view(t(2)).saved.map(|s| s.seq), Some(2));
        assert!(matches!(
            a.handle(t(3), T, save(g(11, 2), 9)),
            Answer::Refused(Refusal::Stale { .. })
        ));
        a.handle(t(20_000), T, Request::Change(g(11, 2)));
        assert_eq!(a.handle(t(20_001), T, save(g(11, 2), 0)), Answer::Ok);
        let saved = a.view(t(20_001)).saved.unwrap();
        assert_eq!(
            (saved.by, saved.seq),
            (g(11, 2), 0),
            "a later grantee's first save is newer"
        );
        let older = Saved {
            by: g(10, 1),
            seq: 7,
            state: vec![],
        };
        assert_eq!(Saved::newest([&older, &saved]), Some(&saved));
    }

    #[test]
    fn a_restarted_member_counts_its_grantee_fresh_for_a_whole_period() {
        let mut a = Acceptor::new();
        a.handle(t(0), T, Request::Change(g(10, 1)));
        assert!(a.view(t(11_000)).lapsed);
        // Its clock starts again near zero after the restart.
        a.restarted(t(500), T);
        assert!(!a.view(t(11_499)).lapsed);
        assert!(a.view(t(11_500)).lapsed);
    }

    #[test]
    fn a_tally_needs_a_majority_of_members() {
        let mut tally = Tally::new(members());
        assert_eq!(tally.agree(key(1)), Outcome::Open);
        assert_eq!(tally.agree(key(1)), Outcome::Open, "one member counts once");
        assert_eq!(tally.agree(key(99)), Outcome::Open, "not a member");
        assert_eq!(tally.refuse(key(2)), Outcome::Open);
        assert_eq!(tally.refuse(key(3)), Outcome::Open);
        assert_eq!(tally.refuse(key(4)), Outcome::Refused, "3 of 5 refused");
        let mut tally = Tally::new(members());
        for n in 1..=2 {
            assert_eq!(tally.agree(key(n)), Outcome::Open);
        }
        assert_eq!(tally.agree(key(5)), Outcome::Agreed);
        assert_eq!(Tally::new(Members::new([])).outcome(), Outcome::Refused);
    }

    #[test]
    fn a_tenure_acts_from_its_first_confirmed_renewal_until_term_less_margin_after_sending_it() {
        let mut tenure = Tenure::new(t(0), g(10, 1), members(), T);
        assert!(!tenure.may_act(t(0)), "not before a majority confirms");
        let round = tenure.poll_renew(t(0)).unwrap();
        assert_eq!(tenure.poll_renew(t(1)), None);
        for m in 1..=2 {
            tenure.handle_answer(t(50), round, key(m), &Answer::Confirmed(None));
        }
        assert!(!tenure.may_act(t(50)));
        // The third confirmation arrives late: the time counts from the
        // sending, not from the answer.
        tenure.handle_answer(t(4_000), round, key(3), &Answer::Confirmed(None));
        assert!(tenure.may_act(t(4_000)));
        assert_eq!(tenure.acts_until(), Some(t(9_000)));
        // Next renewal a third of the term after the first.
        assert_eq!(tenure.poll_timeout(), Some(Instant::from_micros(3_333_333)));
        let next = tenure.poll_renew(t(3_334)).unwrap();
        // Nobody answers it: the tenure lapses when the first runs out.
        assert!(tenure.may_act(t(8_999)));
        assert!(!tenure.may_act(t(9_000)));
        assert_eq!(tenure.ended(), Some(&Ended::Lapsed));
        // An answer after the end changes nothing.
        for m in 1..=3 {
            tenure.handle_answer(t(9_001), next, key(m), &Answer::Confirmed(None));
        }
        assert!(!tenure.may_act(t(9_001)));
    }

    #[test]
    fn a_tenure_ends_when_a_majority_holds_another_grantee() {
        let mut tenure = Tenure::new(t(0), g(10, 1), members(), T);
        let round = tenure.poll_renew(t(0)).unwrap();
        for m in 1..=3 {
            tenure.handle_answer(t(1), round, key(m), &Answer::Confirmed(None));
        }
        let round = tenure.poll_renew(t(3_400)).unwrap();
        let stale = Answer::Refused(Refusal::Stale {
            current: Some(g(11, 2)),
        });
        for m in 1..=2 {
            tenure.handle_answer(t(3_401), round, key(m), &stale);
        }
        assert!(tenure.may_act(t(3_401)), "two of five are not a majority");
        tenure.handle_answer(t(3_402), round, key(3), &stale);
        assert!(!tenure.may_act(t(3_402)));
        assert_eq!(tenure.ended(), Some(&Ended::Replaced));
        assert_eq!(tenure.poll_renew(t(10_000)), None);
    }

    #[test]
    fn refusals_from_members_that_have_not_seen_the_grant_yet_do_not_end_it() {
        let mut tenure = Tenure::new(t(0), g(10, 2), members(), T);
        let round = tenure.poll_renew(t(0)).unwrap();
        let behind = Answer::Refused(Refusal::Stale { current: Some(g(9, 1)) });
        for m in 1..=5 {
            tenure.handle_answer(t(1), round, key(m), &behind);
        }
        assert_eq!(tenure.ended(), None);
        // The grant lands; renewing at once.
        tenure.renew_now(t(50));
        let round = tenure.poll_renew(t(50)).unwrap();
        for m in 1..=3 {
            tenure.handle_answer(t(51), round, key(m), &Answer::Confirmed(None));
        }
        assert!(tenure.may_act(t(51)));
        assert_eq!(tenure.acts_until(), Some(t(9_050)));
    }

    #[test]
    fn a_grantee_adopts_the_result_of_the_highest_earlier_grant_its_first_majority_holds() {
        let mut tenure = Tenure::new(t(0), g(10, 5), members(), T);
        let round = tenure.poll_renew(t(0)).unwrap();
        tenure.handle_answer(
            t(1),
            round,
            key(1),
            &Answer::Confirmed(Some((g(7, 2), b"old".to_vec()))),
        );
        tenure.handle_answer(t(1), round, key(2), &Answer::Confirmed(None));
        assert_eq!(tenure.adopted(), None, "not decided before a majority");
        tenure.handle_answer(
            t(1),
            round,
            key(3),
            &Answer::Confirmed(Some((g(8, 4), b"new".to_vec()))),
        );
        assert!(tenure.may_act(t(2)));
        assert_eq!(tenure.adopted(), Some(&b"new"[..]));
        // Later rounds do not change what the first one bound it to.
        let round = tenure.poll_renew(t(3_400)).unwrap();
        for m in 1..=3 {
            tenure.handle_answer(t(3_401), round, key(m), &Answer::Confirmed(None));
        }
        assert_eq!(tenure.adopted(), Some(&b"new"[..]));
        // With no result held by the first majority, it commits its own.
        let mut free = Tenure::new(t(0), g(11, 6), members(), T);
        let round = free.poll_renew(t(0)).unwrap();
        for m in 1..=3 {
            free.handle_answer(t(1), round, key(m), &Answer::Confirmed(None));
        }
        assert!(free.may_act(t(1)));
        assert_eq!(free.adopted(), None);
        // A second run of one grant (a repeated claim) keeps what the
        // first run committed.
        let mut again = Tenure::new(t(0), g(11, 6), members(), T);
        let round = again.poll_renew(t(0)).unwrap();
        for m in 1..=3 {
            again.handle_answer(
                t(1),
                round,
                key(m),
                &Answer::Confirmed(Some((g(11, 6), b"mine".to_vec()))),
            );
        }
        assert_eq!(again.adopted(), Some(&b"mine"[..]));
    }

    #[test]
    fn a_grant_that_never_lands_ends_the_tenure_without_acting() {
        let mut tenure = Tenure::new(t(0), g(10, 1), members(), T);
        let mut asked = 0;
        let mut now = t(0);
        while tenure.ended().is_none() {
            if tenure.poll_renew(now).is_some() {
                asked += 1;
            }
            assert!(!tenure.may_act(now));
            now = tenure.poll_timeout().unwrap_or(now).max(now + Duration::from_millis(1));
        }
        assert_eq!(tenure.ended(), Some(&Ended::Lapsed));
        assert!(
            asked >= 3,
            "it kept asking while a confirmation could still count: {asked}"
        );
        assert!(
            t(10_000) <= now && now <= t(10_002),
            "it gives up a term after it began: {now:?}"
        );
    }
}
