//! Handing a key's member set to its new home: when members are gone for
//! good, or the peers nearest the key are no longer the ones that keep
//! it, the set moves — with the key's state (its grantee and highest
//! grant number), so that a named lease keeps its holder and its token
//! keeps growing across the move, and so that the peers an acquirer finds
//! nearest the name are the ones that keep it.
//!
//! # How
//!
//! The sets are numbered: epoch 0 is the set the key joined with, and
//! each move makes the next. A move from epoch `e` is single-decree Paxos
//! among the members of `e` on one value, the [`Next`] set and the state
//! it starts from, with ballots of its own ([`Ballot`]):
//!
//! 1. *Seal*: the mover asks every member of `e` to promise its ballot. A
//!    member that promises is *sealed* for good: from then on it refuses
//!    every request that could change the key ([`Refusal::Sealed`]), and
//!    it answers with the grantee and highest grant number it holds and
//!    the value it accepted before, if any.
//! 2. *Propose*: once a majority promised, the mover proposes the value
//!    accepted under the highest ballot among those answers if there is
//!    one (Paxos: a value that may have been chosen is kept), else its
//!    own: the set it wants, the grantee with the highest grant number
//!    among the answers, and the highest grant number. Chosen once a
//!    majority of `e` accepted it.
//! 3. *Install*: the members of the next set take the chosen value
//!    ([`Acceptor::installed`]: the grantee fresh, from then, for as long
//!    as the sealed member that counted it fresh longest still did when it
//!    was sealed), and the members of `e` that
//!    accepted it learn it was chosen; from then on they answer every
//!    request of epoch `e` with [`Refusal::Moved`], and an acquirer or
//!    holder that hears the same next set from a majority of `e` goes on
//!    there ([`crate::lease::Acquire`]).
//!
//! Every request an acquirer or holder sends carries its epoch; a member
//! answers only requests of the epoch it serves, so a majority of one set
//! never counts answers given as a member of another.
//!
//! # Why two holders still never overlap
//!
//! The argument of [`crate::quorum`] holds within one set. Across a move:
//!
//! - A change of grantee that a majority of `e` accepted shares a member
//!   with every sealed majority, and that member accepted it before it
//!   was sealed (a sealed member accepts no change). So every sealed
//!   majority's answers hold a grant number at least that change's, and
//!   the chosen value starts from a grant number no lower and names its
//!   grantee (or a later one that got only a minority, which never held
//!   the key): tokens keep growing across sets. Once any majority is
//!   sealed no change can reach a majority of `e` any more, so whichever
//!   sealed majority a mover read, nothing it missed ever held the key.
//! - A renewal that a majority of `e` confirmed shares a member with
//!   every sealed majority, which confirmed it before it was sealed, so
//!   before the mover read that member's promise, so before any member of
//!   the next set installed the value. The grantee acts for at most
//!   `term - margin` of its own time from *sending* that renewal. That member
//!   counted it fresh for `term + margin` of its own time from confirming:
//!   some `x` of it had passed when it was sealed, and it promised the
//!   rest; the chosen value carries at least that rest (the longest any
//!   sealed member promised), and a member of the next set counts it from
//!   installing, later in real time. Each part is measured by a clock
//!   running at most `1 + ρ` times real time, so the grantee stays fresh
//!   at the next set until at least `(term + margin) / (1 + ρ)` of real
//!   time after the renewal was sent — the bound of [`crate::quorum`]; with
//!   clock rates within `margin / term` of real time the old grantee has
//!   stopped first. So no member of the next set gives the key to another
//!   while the old grantee may still act on what `e` confirmed; and what it
//!   then confirms itself, in the next set, is the argument of
//!   [`crate::quorum`] again. (A grantee nobody counts fresh any more
//!   starts lapsed there: a move does not hold the key up.)
//! - Paxos makes the next set one: two movers with different sets cannot
//!   both have them chosen, so epoch `e + 1` has one set and one state.
//!
//! What this does not cover: a majority of `e` gone for good (nothing can
//! be sealed: the key stays unavailable, though never doubly held); and
//! a mover that lies about what the sealed majority said (members take a
//! move only from a member of their set, and install what they are given).
//! A key whose set moves carries no saves and no result: named leases use
//! it, jobs (whose members keep those) keep their set.
//!
//! Sans-IO: [`Home::handle`] is a member's answer, [`Rehome`] the mover,
//! [`watch::Watch`] the members' duty that decides when a set moves and
//! where; the driver carries their messages and persists a member's
//! [`Home`] (with its acceptor) before it answers.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

use crate::quorum::{Acceptor, Answer, Grantee, Members, Outcome, Refusal, Request, Tally, Timing};

/// A mover's ballot: the higher wins; ties cannot happen between two
/// movers (the peer breaks them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Its round.
    pub round: u64,
    /// The mover.
    pub by: Key,
}

/// A key's next member set and the state it starts from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Next {
    /// Its number: one above the set it follows.
    pub epoch: u64,
    /// Its members.
    pub members: Members,
    /// How the driver reaches them (for the node: their peer ids), opaque
    /// here.
    #[serde(with = "serde_bytes")]
    pub addrs: Vec<u8>,
    /// The grantee it starts with.
    pub grantee: Option<Grantee>,
    /// How long each new member counts that grantee fresh from when it
    /// installs the set: the longest any sealed member still counted it
    /// fresh when it was sealed.
    #[serde(default)]
    pub fresh_for: Duration,
    /// The highest grant number it starts from.
    pub max_n: u64,
}

/// A request about a move, to a member of the set being moved (or, to
/// install, of the next).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RehomeRequest {
    /// Promise `ballot` for the move from `epoch` (and be sealed).
    Seal {
        /// The set being moved.
        epoch: u64,
        /// The mover's ballot.
        ballot: Ballot,
    },
    /// Accept `next` as the set after `epoch`.
    Propose {
        /// The set being moved.
        epoch: u64,
        /// The mover's ballot.
        ballot: Ballot,
        /// The value.
        next: Next,
    },
    /// `next` was chosen: answer requests of the old epoch with it.
    Chosen(Next),
    /// Become a member of `next` with its state.
    Install(Next),
}

/// A member's answer about a move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RehomeAnswer {
    /// Sealed, with what it holds.
    Promise {
        /// Its grantee.
        grantee: Option<Grantee>,
        /// How much longer it counts that grantee fresh.
        fresh_for: Duration,
        /// The highest grant number it saw.
        max_n: u64,
        /// The value it accepted, and under which ballot.
        accepted: Option<(Ballot, Next)>,
    },
    /// Accepted, installed, or noted.
    Done,
    /// A higher ballot was promised here.
    Refused {
        /// That ballot.
        promised: Option<Ballot>,
    },
    /// The set moved on already: this is the one after it.
    Moved(Next),
    /// This member does not serve that epoch (not yet, or not at all).
    Behind {
        /// The epoch it serves.
        epoch: u64,
    },
}

/// What one member keeps about its key's member sets, beside its
/// acceptor; durable with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Home {
    /// The epoch this member serves.
    epoch: u64,
    /// The set it serves, as it was installed (none for epoch 0).
    installed: Option<Next>,
    /// The highest ballot it promised for moving its set: it is sealed.
    promised: Option<Ballot>,
    /// The value it accepted, and under which ballot.
    accepted: Option<(Ballot, Next)>,
    /// The set chosen after its own.
    moved: Option<Next>,
}

impl Home {
    /// The epoch this member serves.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether it is sealed: it answers no change of the key any more.
    pub fn sealed(&self) -> bool {
        self.promised.is_some() || self.moved.is_some()
    }

    /// The set chosen after its own, if one was.
    pub fn moved(&self) -> Option<&Next> {
        self.moved.as_ref()
    }

    /// The set it serves, if it was installed (epoch above 0).
    pub fn installed(&self) -> Option<&Next> {
        self.installed.as_ref()
    }

    /// The lowest round a mover on this peer may use next: above every
    /// ballot it promised (see [`Rehome::new`]).
    pub fn next_round(&self) -> u64 {
        self.promised.map_or(1, |b| b.round.saturating_add(1))
    }

    /// The value it accepted, if any: a mover that finds a member sealed
    /// and never told what was chosen goes on with it.
    pub fn accepted(&self) -> Option<&Next> {
        self.accepted.as_ref().map(|(_, next)| next)
    }

    /// Whether a request of `epoch` is this member's to answer: `None` if
    /// so, else the refusal to send. Reads are answered while sealed (a
    /// read changes nothing).
    pub fn admit(&self, epoch: u64, request: &Request) -> Option<Answer> {
        self.refusal(epoch, matches!(request, Request::Read))
            .map(Answer::Refused)
    }

    /// The refusal for a request of `epoch` (a read if `read`), if any.
    /// An asker of an older set is told the set after its own as far as
    /// this member knows it (its own set, or the one chosen after it), so
    /// that the members of one set name the same next one.
    pub fn refusal(&self, epoch: u64, read: bool) -> Option<Refusal> {
        if epoch < self.epoch {
            return self.installed.clone().map(|n| Refusal::Moved(Box::new(n)));
        }
        if let Some(next) = &self.moved
            && epoch < next.epoch
        {
            return Some(Refusal::Moved(Box::new(next.clone())));
        }
        if epoch > self.epoch || self.moved.is_some() || (self.promised.is_some() && !read) {
            return Some(Refusal::Sealed);
        }
        None
    }

    /// Answers `request` at `now`, changing `acceptor` when it installs.
    pub fn handle(
        &mut self,
        acceptor: &mut Acceptor,
        now: Instant,
        timing: Timing,
        request: RehomeRequest,
    ) -> RehomeAnswer {
        match request {
            RehomeRequest::Seal { epoch, ballot } => {
                if let Some(answer) = self.other_epoch(epoch) {
                    return answer;
                }
                if self.promised.is_some_and(|p| p > ballot) {
                    return RehomeAnswer::Refused {
                        promised: self.promised,
                    };
                }
                self.promised = Some(ballot);
                let view = acceptor.view(now);
                RehomeAnswer::Promise {
                    grantee: view.grantee,
                    fresh_for: view.fresh_for,
                    max_n: view.max_n,
                    accepted: self.accepted.clone(),
                }
            }
            RehomeRequest::Propose { epoch, ballot, next } => {
                if let Some(answer) = self.other_epoch(epoch) {
                    return answer;
                }
                if next.epoch != epoch + 1 || self.promised.is_some_and(|p| p > ballot) {
                    return RehomeAnswer::Refused {
                        promised: self.promised,
                    };
                }
                // Accepting seals too: no change is answered after it.
                self.promised = Some(ballot);
                self.accepted = Some((ballot, next));
                RehomeAnswer::Done
            }
            RehomeRequest::Chosen(next) => {
                // Only what it accepted itself (a majority accepted the
                // chosen value; one that was outvoted stays sealed).
                if next.epoch == self.epoch + 1
                    && self.moved.is_none()
                    && self.accepted.as_ref().is_some_and(|(_, a)| *a == next)
                {
                    self.moved = Some(next.clone());
                }
                // Where it knows the set went, if it does.
                match (&self.moved, &self.installed) {
                    (Some(moved), _) => RehomeAnswer::Moved(moved.clone()),
                    (None, Some(installed)) if installed.epoch >= next.epoch => RehomeAnswer::Moved(installed.clone()),
                    _ => RehomeAnswer::Done,
                }
            }
            RehomeRequest::Install(next) => {
                if next.epoch > self.epoch {
                    // Tokens never go back here, whatever the set says.
                    let max_n = next.max_n.max(acceptor.view(now).max_n);
                    // No member ever counts a grantee fresh for longer than
                    // a whole period: a set that says more (a hostile
                    // mover's) cannot hold the key up for longer.
                    let fresh_for = next.fresh_for.min(timing.fresh_for());
                    *acceptor = Acceptor::installed(next.grantee, max_n, now + fresh_for);
                    *self = Home {
                        epoch: next.epoch,
                        installed: Some(next),
                        ..Home::default()
                    };
                }
                RehomeAnswer::Done
            }
        }
    }

    /// The answer to a move from `epoch` when this member does not serve
    /// that epoch as a member that may still move it.
    fn other_epoch(&self, epoch: u64) -> Option<RehomeAnswer> {
        if epoch < self.epoch {
            return self.installed.clone().map(RehomeAnswer::Moved);
        }
        if let Some(next) = &self.moved {
            return Some(RehomeAnswer::Moved(next.clone()));
        }
        (epoch > self.epoch).then_some(RehomeAnswer::Behind { epoch: self.epoch })
    }
}

/// What a mover asks its driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RehomeAction {
    /// Names the answers.
    pub ask: u64,
    /// To whom: each of these.
    pub to: Members,
    /// What.
    pub request: RehomeRequest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Seal,
    Propose(Next),
    Install(Next),
    Done,
}

#[derive(Clone, Debug)]
struct Round {
    ask: u64,
    sent: Instant,
    tally: Tally,
}

/// What one member promised: its grantee, how long it still counted it
/// fresh, its highest grant number, and what it accepted.
type Promised = (Option<Grantee>, Duration, u64, Option<(Ballot, Next)>);

/// Rounds a mover tries (each with a higher ballot) before it gives up.
pub const MAX_ATTEMPTS: u32 = 6;

/// A mover: moves a key's member set `from` (epoch `epoch`) to `to`, or
/// finishes a move another began.
#[derive(Debug)]
pub struct Rehome {
    me: Key,
    epoch: u64,
    from: Members,
    to: Members,
    addrs: Vec<u8>,
    timing: Timing,
    ballot: Ballot,
    phase: Phase,
    round: Option<Round>,
    next_ask: u64,
    /// Promises so far in this round.
    promises: Vec<Promised>,
    /// The highest ballot a member said it promised.
    outbid: Option<Ballot>,
    attempts: u32,
    out: VecDeque<RehomeAction>,
    outcome: Option<Result<Next, String>>,
    /// The set being moved as it was installed (none for epoch 0): sent
    /// to a member of it that never took it.
    current: Option<Next>,
    /// After the move: who has not confirmed it yet, when to send it to
    /// them again, and how often it was.
    stragglers: Option<Stragglers>,
    /// The asks that carried an install, and those that said it was
    /// chosen: an answer counts only for its own kind.
    installs: BTreeSet<u64>,
    chosen: BTreeSet<u64>,
    /// Old members that said they know where the set went.
    informed: BTreeSet<Key>,
}

/// After a move: members of the next set that have not said they installed
/// it, and members of the old set that have not said they know it was
/// chosen (an acquirer follows a move once a majority of its set says so).
#[derive(Debug)]
struct Stragglers {
    next: Next,
    uninstalled: BTreeSet<Key>,
    uninformed: BTreeSet<Key>,
    at: Instant,
    tries: u32,
}

impl Rehome {
    /// Peer `ballot.by` starts to move its set (`current`, as it was
    /// installed; `None`: the set the key joined with, `from`) to `to`
    /// (`addrs`: how its driver reaches them), first under `ballot`: its
    /// round must be above every round this peer used before for the key
    /// (a ballot names one value only; the driver keeps a counter, or
    /// takes a clock's microseconds, and at least [`Home::next_round`]).
    pub fn new(
        now: Instant,
        ballot: Ballot,
        current: Option<Next>,
        from: Members,
        to: Members,
        addrs: Vec<u8>,
        timing: Timing,
    ) -> Self {
        let epoch = current.as_ref().map_or(0, |c| c.epoch);
        let mut r = Rehome {
            current,
            stragglers: None,
            installs: BTreeSet::new(),
            chosen: BTreeSet::new(),
            informed: BTreeSet::new(),
            me: ballot.by,
            epoch,
            from,
            to,
            addrs,
            timing,
            ballot,
            phase: Phase::Seal,
            round: None,
            next_ask: 0,
            promises: Vec::new(),
            outbid: None,
            attempts: 0,
            out: VecDeque::new(),
            outcome: None,
        };
        r.seal(now);
        r
    }

    /// How it ended, once it has: the set now serving, or why not.
    pub fn outcome(&self) -> Option<&Result<Next, String>> {
        self.outcome.as_ref()
    }

    /// Whether it has nothing more to do: its outcome is known and every
    /// member of the next set installed it (or was asked
    /// [`MAX_ATTEMPTS`] times).
    pub fn is_done(&self) -> bool {
        self.outcome.is_some() && self.stragglers.is_none() && self.out.is_empty()
    }

    /// The next message to send.
    pub fn poll_action(&mut self) -> Option<RehomeAction> {
        self.out.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let round = self.round.as_ref().map(|r| r.sent + wait(self.timing));
        let again = self.stragglers.as_ref().map(|s| s.at);
        round.into_iter().chain(again).min()
    }

    /// Time passes: a round whose members did not answer in time counts
    /// them as refusing; stragglers are sent the new set again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(st) = &mut self.stragglers
            && now >= st.at
        {
            if (st.uninstalled.is_empty() && st.uninformed.is_empty()) || st.tries >= MAX_ATTEMPTS {
                self.stragglers = None;
            } else {
                st.tries += 1;
                st.at = now + wait(self.timing);
                let sends = [
                    (&st.uninstalled, RehomeRequest::Install(st.next.clone())),
                    (&st.uninformed, RehomeRequest::Chosen(st.next.clone())),
                ];
                for (to, request) in sends {
                    if to.is_empty() {
                        continue;
                    }
                    let ask = self.next_ask;
                    self.next_ask += 1;
                    match request {
                        RehomeRequest::Install(_) => self.installs.insert(ask),
                        _ => self.chosen.insert(ask),
                    };
                    self.out.push_back(RehomeAction {
                        ask,
                        to: Members::new(to.iter().copied()),
                        request,
                    });
                }
            }
        }
        if let Some(r) = &mut self.round
            && now >= r.sent + wait(self.timing)
        {
            for member in r.tally.members().peers().to_vec() {
                r.tally.refuse(member);
            }
            self.settle(now);
        }
    }

    fn start(&mut self, now: Instant, to: Members, request: RehomeRequest) {
        let ask = self.next_ask;
        self.next_ask += 1;
        self.round = Some(Round {
            ask,
            sent: now,
            tally: Tally::new(to.clone()),
        });
        self.out.push_back(RehomeAction { ask, to, request });
    }

    fn seal(&mut self, now: Instant) {
        self.attempts += 1;
        self.promises.clear();
        let (epoch, ballot) = (self.epoch, self.ballot);
        self.phase = Phase::Seal;
        self.start(now, self.from.clone(), RehomeRequest::Seal { epoch, ballot });
    }

    fn install(&mut self, now: Instant, next: Next) {
        self.phase = Phase::Install(next.clone());
        // The old members learn it, the new take it.
        let ask = self.next_ask;
        self.next_ask += 1;
        self.chosen.insert(ask);
        self.out.push_back(RehomeAction {
            ask,
            to: self.from.clone(),
            request: RehomeRequest::Chosen(next.clone()),
        });
        self.installs.insert(self.next_ask);
        self.start(now, next.members.clone(), RehomeRequest::Install(next));
    }

    /// Member `member`'s answer to `ask`.
    pub fn handle_answer(&mut self, now: Instant, ask: u64, member: Key, answer: &RehomeAnswer) {
        if self.chosen.contains(&ask) {
            // An old member says it knows where the set went.
            if matches!(answer, RehomeAnswer::Moved(n) if n.epoch > self.epoch) {
                self.informed.insert(member);
                if let Some(st) = &mut self.stragglers {
                    st.uninformed.remove(&member);
                }
            }
        } else if self.installs.contains(&ask)
            && *answer == RehomeAnswer::Done
            && let Some(st) = &mut self.stragglers
        {
            st.uninstalled.remove(&member);
        }
        if self
            .stragglers
            .as_ref()
            .is_some_and(|st| st.uninstalled.is_empty() && st.uninformed.is_empty())
        {
            self.stragglers = None;
        }
        if self.chosen.contains(&ask) {
            return;
        }
        // A member of the set being moved that never took it: it is sent
        // the set (it answers the next round).
        if let RehomeAnswer::Behind { epoch } = answer
            && *epoch < self.epoch
            && self.from.contains(&member)
            && let Some(current) = &self.current
        {
            let ask = self.next_ask;
            self.next_ask += 1;
            self.out.push_back(RehomeAction {
                ask,
                to: Members::new([member]),
                request: RehomeRequest::Install(current.clone()),
            });
        }
        let Some(r) = self.round.as_mut().filter(|r| r.ask == ask) else {
            return;
        };
        if !r.tally.members().contains(&member) {
            return;
        }
        match (&self.phase, answer) {
            (
                Phase::Seal,
                RehomeAnswer::Promise {
                    grantee,
                    fresh_for,
                    max_n,
                    accepted,
                },
            ) => {
                self.promises.push((*grantee, *fresh_for, *max_n, accepted.clone()));
                r.tally.agree(member);
            }
            (Phase::Seal | Phase::Propose(_), RehomeAnswer::Moved(next)) if next.epoch == self.epoch + 1 => {
                // Chosen already (by another mover): see it installed.
                let next = next.clone();
                self.round = None;
                self.install(now, next);
                return;
            }
            (Phase::Seal | Phase::Propose(_), RehomeAnswer::Moved(next)) if next.epoch > self.epoch + 1 => {
                self.finish(Ok(next.clone()));
                return;
            }
            (Phase::Propose(_) | Phase::Install(_), RehomeAnswer::Done) => {
                r.tally.agree(member);
            }
            (Phase::Install(next), RehomeAnswer::Moved(n)) if n.epoch > next.epoch => {
                self.finish(Ok(n.clone()));
                return;
            }
            (_, RehomeAnswer::Refused { promised }) => {
                self.outbid = self.outbid.max(*promised);
                r.tally.refuse(member);
            }
            _ => {
                r.tally.refuse(member);
            }
        }
        self.settle(now);
    }

    fn settle(&mut self, now: Instant) {
        let Some(r) = &self.round else { return };
        let outcome = r.tally.outcome();
        if outcome == Outcome::Open {
            return;
        }
        let r = self.round.take().expect("a round is open");
        match (self.phase.clone(), outcome) {
            (Phase::Seal, Outcome::Agreed) => {
                let next = match self
                    .promises
                    .iter()
                    .filter_map(|p| p.3.as_ref())
                    .max_by_key(|(b, _)| *b)
                {
                    Some((_, accepted)) => accepted.clone(),
                    None => {
                        let grantee = self.promises.iter().filter_map(|p| p.0).max_by_key(|g| g.n);
                        let fresh_for = self.promises.iter().map(|p| p.1).max().unwrap_or_default();
                        let max_n = self.promises.iter().map(|p| p.2).max().unwrap_or(0);
                        Next {
                            epoch: self.epoch + 1,
                            members: self.to.clone(),
                            addrs: self.addrs.clone(),
                            grantee,
                            fresh_for,
                            max_n,
                        }
                    }
                };
                self.phase = Phase::Propose(next.clone());
                let (epoch, ballot) = (self.epoch, self.ballot);
                self.start(now, self.from.clone(), RehomeRequest::Propose { epoch, ballot, next });
            }
            (Phase::Propose(next), Outcome::Agreed) => self.install(now, next),
            (Phase::Install(next), Outcome::Agreed) => {
                let uninstalled: BTreeSet<Key> = next
                    .members
                    .peers()
                    .iter()
                    .filter(|k| !r.tally.agreed(k))
                    .copied()
                    .collect();
                // Old members that said they know: none counted yet, but
                // their answers to the first `Chosen` may be in already.
                let uninformed: BTreeSet<Key> = self.from.peers().iter().copied().collect();
                self.stragglers = Some(Stragglers {
                    next: next.clone(),
                    uninstalled,
                    uninformed: uninformed.difference(&self.informed).copied().collect(),
                    at: now + wait(self.timing),
                    tries: 0,
                });
                self.finish(Ok(next));
            }
            (Phase::Done, _) => {}
            (phase, _) => {
                if self.attempts >= MAX_ATTEMPTS {
                    let what = match phase {
                        Phase::Install(_) => "no majority of the next set installed it",
                        _ => "no majority of the set answered",
                    };
                    self.finish(Err(format!("{what} after {MAX_ATTEMPTS} attempts")));
                    return;
                }
                match phase {
                    // Again, to the next set.
                    Phase::Install(next) => {
                        self.attempts += 1;
                        self.install(now, next);
                    }
                    _ => {
                        let round = self.ballot.round.max(self.outbid.map_or(0, |b| b.round)) + 1;
                        self.ballot = Ballot { round, by: self.me };
                        self.seal(now);
                    }
                }
            }
        }
    }

    fn finish(&mut self, outcome: Result<Next, String>) {
        self.phase = Phase::Done;
        self.round = None;
        self.outcome = Some(outcome);
    }
}

/// How long a round waits for answers.
fn wait(timing: Timing) -> Duration {
    (timing.term / 4).max(Duration::from_millis(100))
}

pub mod watch;

#[cfg(test)]
mod tests;
