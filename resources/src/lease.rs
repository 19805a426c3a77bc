//! Named leases: a lock on any name (a deploy, a shared directory, a build
//! cache), with no provider and no coordinator. The name's key is
//! `Key::of_name("lease", name)`; the right to hold it is a tenure at a
//! quorum ([`crate::quorum`]) over the name's home: a majority of its
//! members grants it, each recording the grant and its term, and the grant
//! number is the lease's token (it grows with every grant and survives a
//! member's restart, being on its disk).
//!
//! # Why two holders never overlap
//!
//! A holder is a [`Tenure`]: it may act only until `sent + term - margin`
//! by its own clock after a renewal that a majority confirmed, and a
//! member gives the key to another ([`Request::Change`]) only once the
//! current holder is not fresh by *its* clock (`term + margin` after it
//! last confirmed it). Any two majorities of the member set share a
//! member, so with clock rates within `margin / term` of real time (10%
//! with the defaults) the old holder has stopped before any member lets a
//! new one start — the argument in full is in [`crate::quorum`]. What
//! this module adds cannot break it: the waiting line only decides *who
//! asks next*, never whether a member accepts a change, so a lost, stale
//! or reordered line costs order, not safety.
//!
//! What it assumes, as jobs do: a member keeps its state on disk across a
//! restart. The member set is the name's home when the name is first used;
//! it moves to the name's home as that changes ([`crate::rehome`]: the
//! old set agrees on the next and seals itself, the next starts from the
//! holder and its token), every request naming the set it is for, and an
//! acquirer or holder follows a move once a majority of its set says so.
//! Two peers that first use a name at the same time
//! with member sets that share no peer (their views of the home disjoint:
//! a partition that splits the home, at the name's very first use) would
//! each get a majority of their own; a node therefore joins a name's
//! members only after asking the home it finds whether a set exists
//! already, and the set of a name that exists is never chosen again.
//!
//! # The waiting line
//!
//! A member keeps a [`Line`] per name: waiters with a ticket, first in
//! line the lowest `(ticket, peer)`. An acquirer first reads the highest
//! ticket from a majority, takes the next one (Lamport's bakery: two that
//! read at once may draw the same number, and then the lower peer key goes
//! first, the same at every member), and registers it at every member,
//! again every third of a term; a waiter not heard from for `term +
//! margin` leaves the line. A member refuses a change to a peer that is
//! not first in its line ([`Line::turn`]); a waiter asks for the lease
//! once a majority has it first and a majority reads the lease as free.
//! A waiter that stands first while the lease is free and never asks for
//! it (a hostile peer with ticket 0) is sent to the back after
//! [`SQUAT_TERMS`] terms: it can hold the line up that long, not forever.
//!
//! Sans-IO: [`Acquire::poll_action`] says what to send to every member,
//! the `handle_*` methods take the answers, [`Acquire::poll_timeout`]
//! says when to call [`Acquire::handle_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

use crate::quorum::{
    Acceptor, Answer, Grantee, LetGo, Members, Outcome, Refusal, Request, Tally, Tenure, Timing, View,
};
use crate::rehome::{Home, Next};

/// The longest lease name, bytes.
pub const MAX_NAME: usize = 200;
/// Waiters a member keeps in one name's line, at most.
pub const MAX_WAITERS: usize = 1024;

/// The key of the lease called `name`.
pub fn lease_key(name: &str) -> Key {
    Key::of_name("lease", name.as_bytes())
}

/// Checks a lease name: 1 to [`MAX_NAME`] bytes, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a lease name may not be empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "a lease name is at most {MAX_NAME} bytes, this one {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a lease name may not hold control characters".into());
    }
    Ok(())
}

/// What a peer asks a member about a name's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineRequest {
    /// The highest ticket the member has seen.
    Ticket,
    /// `peer` waits with `ticket` (again: it keeps its place).
    Wait {
        /// The waiter.
        peer: Key,
        /// Its ticket.
        ticket: u64,
    },
    /// `peer` stops waiting.
    Leave {
        /// The waiter.
        peer: Key,
    },
}

/// A member's answer about a line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineAnswer {
    /// The highest ticket seen.
    Ticket(u64),
    /// The waiter's place: how many are ahead of it here, and who is first.
    Place {
        /// Waiters ahead.
        ahead: u64,
        /// The first in line, if any.
        first: Option<Key>,
        /// The lowest ticket this member takes from the waiter: above 0
        /// once it sent the waiter to the back ([`Line`]). An honest waiter
        /// takes it as its ticket and registers it at every member, so
        /// that their lines agree again.
        #[serde(default)]
        floor: u64,
    },
    /// The line is full here.
    Full,
    /// The asker's member set is not the current one: these are the
    /// lease's members now ([`crate::rehome`]).
    Moved(Box<Next>),
}

/// One name's waiting line at one member. Not durable: after a restart
/// the waiters register again within a third of a term.
///
/// A waiter chooses its own ticket, so a hostile one could take ticket 0
/// and stand first forever without ever taking the lease. A member
/// therefore sends a first waiter that leaves a *free* lease untaken for
/// [`SQUAT_TERMS`] times `term + margin` to the back of its line, and
/// keeps it there (any ticket it names again counts as at least the next
/// one, its *floor*) for [`BACK_TERMS`] times that. An honest waiter asks
/// within moments of being first at a majority with the lease free; one
/// sent back all the same (it could reach only a minority of the members
/// meanwhile) learns its floor from the member's answer, takes it as its
/// ticket and registers it at every member, so that the lines agree again
/// rather than each member putting another waiter first. A waiter takes a
/// floor only when no majority has it first, and at most [`MAX_WAITERS`]
/// above its ticket: one hostile member can cost it places while it waits
/// behind others, not stop it once a majority has it first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Each waiter's ticket and until when (this member's clock) it waits.
    waiting: BTreeMap<Key, (u64, Instant)>,
    max_ticket: u64,
    /// The first waiter while the lease is free here, and since when.
    #[serde(default)]
    first_since: Option<(Key, Instant)>,
    /// Waiters sent to the back: the lowest ticket each may have, and
    /// until when.
    #[serde(default)]
    sent_back: BTreeMap<Key, (u64, Instant)>,
}

/// Terms (`term + margin`) a first waiter may leave a free lease untaken
/// at a member before that member sends it to the back of its line.
pub const SQUAT_TERMS: u32 = 2;
/// Terms a waiter sent to the back stays there.
pub const BACK_TERMS: u32 = 16;

impl Line {
    /// Answers `request` at `now`; `free`: whether the lease is free at
    /// this member (no grantee fresh here).
    pub fn handle(&mut self, now: Instant, timing: Timing, free: bool, request: LineRequest) -> LineAnswer {
        self.watch(now, timing, free);
        match request {
            LineRequest::Ticket => LineAnswer::Ticket(self.max_ticket),
            LineRequest::Wait { peer, ticket } => {
                if !self.waiting.contains_key(&peer) && self.waiting.len() >= MAX_WAITERS {
                    return LineAnswer::Full;
                }
                // One sent to the back names no lower ticket than it got.
                let ticket = self
                    .sent_back
                    .get(&peer)
                    .map_or(ticket, |(floor, _)| ticket.max(*floor));
                let until = now + timing.fresh_for();
                let held = self.waiting.entry(peer).or_insert((ticket, until));
                // The ticket it names now (an honest waiter changes it only
                // to go back, when a member sent it there).
                held.0 = ticket;
                held.1 = until;
                self.max_ticket = self.max_ticket.max(ticket);
                self.place(peer)
            }
            LineRequest::Leave { peer } => {
                self.waiting.remove(&peer);
                self.place(peer)
            }
        }
    }

    fn place(&self, peer: Key) -> LineAnswer {
        let first = self.first();
        let ahead = match self.waiting.get(&peer) {
            Some(&(ticket, _)) => self
                .waiting
                .iter()
                .filter(|(p, (t, _))| (*t, **p) < (ticket, peer))
                .count() as u64,
            None => self.waiting.len() as u64,
        };
        let floor = self.sent_back.get(&peer).map_or(0, |(floor, _)| *floor);
        LineAnswer::Place { ahead, first, floor }
    }

    /// The first waiter: the lowest `(ticket, peer)`.
    fn first(&self) -> Option<Key> {
        self.waiting.iter().min_by_key(|(p, (t, _))| (*t, **p)).map(|(p, _)| *p)
    }

    fn expire(&mut self, now: Instant) {
        self.waiting.retain(|_, (_, until)| now < *until);
        self.sent_back.retain(|_, (_, until)| now < *until);
    }

    /// Expires waiters, and sends to the back a first waiter that has
    /// left the lease free here for [`SQUAT_TERMS`] terms.
    fn watch(&mut self, now: Instant, timing: Timing, free: bool) {
        self.expire(now);
        let first = self.first().filter(|_| free);
        let Some(first) = first else {
            self.first_since = None;
            return;
        };
        let since = match self.first_since {
            Some((peer, since)) if peer == first => since,
            _ => {
                self.first_since = Some((first, now));
                return;
            }
        };
        if now.saturating_since(since) < timing.fresh_for() * SQUAT_TERMS {
            return;
        }
        let back = self.max_ticket.saturating_add(1);
        self.max_ticket = back;
        if let Some(held) = self.waiting.get_mut(&first) {
            held.0 = back;
        }
        if self.sent_back.len() >= MAX_WAITERS
            && let Some(oldest) = self
                .sent_back
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| *k)
        {
            self.sent_back.remove(&oldest);
        }
        self.sent_back
            .insert(first, (back, now + timing.fresh_for() * BACK_TERMS));
        self.first_since = None;
    }

    /// Whether `peer` may be given the lease at `now`: it is first in line,
    /// or nobody waits. `Err` names who is first.
    pub fn turn(&mut self, now: Instant, peer: &Key) -> Result<(), Key> {
        self.expire(now);
        match self.first() {
            Some(first) if first != *peer => Err(first),
            _ => Ok(()),
        }
    }

    /// `peer` got the lease: it waits no more.
    pub fn granted(&mut self, peer: &Key) {
        self.waiting.remove(peer);
    }

    /// Waiters in line at `now`, first first.
    pub fn waiters(&self, now: Instant) -> Vec<Key> {
        let mut w: Vec<(u64, Key)> = self
            .waiting
            .iter()
            .filter(|(_, (_, until))| now < *until)
            .map(|(p, (t, _))| (*t, *p))
            .collect();
        w.sort_unstable();
        w.into_iter().map(|(_, p)| p).collect()
    }
}

/// What one member keeps for one lease, borrowed from wherever its
/// driver keeps it: the tenure's state and the member set's ([`Home`]),
/// both durable, and the waiting line, not.
#[derive(Debug)]
pub struct Kept<'a> {
    /// The tenure at the quorum.
    pub acceptor: &'a mut Acceptor,
    /// Which member set it serves, and its moves.
    pub home: &'a Home,
    /// The waiting line.
    pub line: &'a mut Line,
}

/// A member's answer to a quorum request of member set `epoch` about a
/// lease from `from`: as [`Acceptor::handle`], except that only a peer
/// itself may ask for the lease, and only when it is first in `line` (or
/// nobody waits); a request of another epoch than the one this member
/// serves, or one that would change the lease while its set is being
/// handed on, is refused ([`Home::admit`]).
pub fn answer(kept: Kept<'_>, now: Instant, timing: Timing, from: Key, epoch: u64, request: Request) -> Answer {
    if let Some(refused) = kept.home.admit(epoch, &request) {
        return refused;
    }
    let Kept { acceptor, line, .. } = kept;
    if let Request::Change(to) = &request {
        if to.peer != from {
            return Answer::Refused(Refusal::Stale {
                current: acceptor.view(now).grantee,
            });
        }
        line.watch(now, timing, acceptor.view(now).lapsed);
        if let Err(first) = line.turn(now, &to.peer) {
            return Answer::Refused(Refusal::NotFirst { first });
        }
        let to = *to;
        let answer = acceptor.handle(now, timing, request);
        if answer == Answer::Ok {
            line.granted(&to.peer);
        }
        return answer;
    }
    acceptor.handle(now, timing, request)
}

/// A member's answer to a line request of member set `epoch` about a
/// lease: [`Line::handle`], the lease free when no grantee is fresh at
/// this member; [`LineAnswer::Moved`] to an asker of an older set.
pub fn line_answer(kept: Kept<'_>, now: Instant, timing: Timing, epoch: u64, request: LineRequest) -> LineAnswer {
    if let Some(Refusal::Moved(next)) = kept.home.refusal(epoch, true) {
        return LineAnswer::Moved(next);
    }
    kept.line.handle(now, timing, kept.acceptor.view(now).lapsed, request)
}

/// What an acquirer asks its driver to send to every member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireAction {
    /// A line request; answer with [`Acquire::handle_line`].
    Line {
        /// Names the answers.
        ask: u64,
        /// The member set it is for.
        epoch: u64,
        /// What to send.
        request: LineRequest,
    },
    /// A quorum request; answer with [`Acquire::handle_answer`].
    Ask {
        /// Names the answers.
        ask: u64,
        /// The member set it is for.
        epoch: u64,
        /// What to send.
        request: Request,
    },
}

/// Where an acquirer stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// In line: `ahead` waiters before it (as a majority has it), and
    /// the holder, if one was read.
    Waiting {
        /// Waiters ahead of it.
        ahead: u64,
        /// Who holds the lease, as last read.
        holder: Option<Grantee>,
    },
    /// It holds the lease: its token is `grantee.n`; it may act until
    /// [`Acquire::holds_until`].
    Held(Grantee),
    /// It held the lease and lost it (no majority confirmed a renewal in
    /// time): it must have stopped acting.
    Lost(Grantee),
    /// It let go or stopped waiting.
    Released,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the highest ticket.
    Ticket,
    /// Registered with `ticket`, waiting for its turn.
    Waiting,
    /// Reading whether the lease is free.
    Reading,
    /// Asking for it as grant `n`.
    Changing(Grantee),
    /// Holding (the tenure renews it).
    Holding,
    /// Done: released, left the line, or lost it.
    Done,
}

/// One round of a request to every member.
#[derive(Clone, Debug)]
struct Round {
    ask: u64,
    sent: Instant,
    tally: Tally,
    /// Highest ticket, or places, or views, by member.
    tickets: Vec<u64>,
    places: Vec<(u64, Option<Key>)>,
    views: Vec<View>,
    /// The highest floor a member named for this waiter (see
    /// [`Line`]), at most [`MAX_WAITERS`] above its ticket.
    floor: u64,
}

/// An acquirer: waits in line for the name's lease, takes it when its turn
/// comes and the lease is free, holds it by renewing, and lets it go.
#[derive(Debug)]
pub struct Acquire {
    me: Key,
    members: Members,
    timing: Timing,
    phase: Phase,
    ticket: u64,
    next_ask: u64,
    round: Option<Round>,
    /// When to register in line again, or to try again.
    next_try: Instant,
    out: VecDeque<AcquireAction>,
    tenure: Option<Tenure>,
    /// Renewal rounds of the tenure, by the ask that carried them.
    renewals: BTreeMap<u64, u64>,
    ahead: u64,
    holder: Option<Grantee>,
    released: bool,
    /// The member set it asks ([`crate::rehome`]).
    epoch: u64,
    /// The set it moved to last, if it moved.
    moved: Option<Next>,
    /// Next sets members named, and which members named each.
    heard_moved: Vec<(Next, std::collections::BTreeSet<Key>)>,
}

/// A request to every member, before it is numbered.
enum Send {
    Line(LineRequest),
    Ask(Request),
}

/// How long a round waits for answers before it counts the silent
/// members as refusing.
fn round_wait(timing: Timing) -> Duration {
    (timing.term / 4).max(Duration::from_millis(100))
}

/// Bounds the wait before the first in line reads again whether the
/// holder let go (a release is not announced to the waiters).
const MAX_RETRY: Duration = Duration::from_millis(250);

impl Acquire {
    /// Peer `me` starts to acquire the lease whose members are `members`,
    /// the set numbered `epoch` ([`crate::rehome`]; 0: the set the name
    /// was created with).
    pub fn new(now: Instant, me: Key, epoch: u64, members: Members, timing: Timing) -> Self {
        let mut a = Acquire {
            epoch,
            moved: None,
            heard_moved: Vec::new(),
            me,
            members,
            timing,
            phase: Phase::Ticket,
            ticket: 0,
            next_ask: 0,
            round: None,
            next_try: now,
            out: VecDeque::new(),
            tenure: None,
            renewals: BTreeMap::new(),
            ahead: 0,
            holder: None,
            released: false,
        };
        a.start_round(now, Send::Line(LineRequest::Ticket));
        a
    }

    /// The members it asks.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The member set it asks: its number and, once it moved, the set
    /// as the move named it (with the driver's addresses of its members).
    pub fn epoch(&self) -> (u64, Option<&Next>) {
        (self.epoch, self.moved.as_ref())
    }

    fn start_round(&mut self, now: Instant, what: Send) {
        let ask = self.send(what);
        self.round = Some(Round {
            ask,
            sent: now,
            tally: Tally::new(self.members.clone()),
            tickets: Vec::new(),
            places: Vec::new(),
            views: Vec::new(),
            floor: 0,
        });
    }

    /// Numbers `what` and queues it; its number.
    fn send(&mut self, what: Send) -> u64 {
        let (ask, epoch) = (self.next_ask, self.epoch);
        self.next_ask += 1;
        self.out.push_back(match what {
            Send::Line(request) => AcquireAction::Line { ask, epoch, request },
            Send::Ask(request) => AcquireAction::Ask { ask, epoch, request },
        });
        ask
    }

    /// Member `member` of the current set says the set moved to `next`.
    /// Once a majority of the set said it moved, it goes on to the set
    /// most of them named (members name the set chosen after theirs, or a
    /// later one they were installed in) — as the holder if it holds the
    /// lease (the new set starts with it as grantee), else back in line
    /// with its ticket. One member alone cannot send it anywhere.
    fn heard_moved(&mut self, now: Instant, member: Key, next: &Next) {
        if next.epoch <= self.epoch || !self.members.contains(&member) {
            return;
        }
        // A member's latest word counts.
        for (_, named) in &mut self.heard_moved {
            named.remove(&member);
        }
        self.heard_moved.retain(|(_, named)| !named.is_empty());
        match self.heard_moved.iter_mut().find(|(n, _)| n == next) {
            Some((_, named)) => {
                named.insert(member);
            }
            None => self.heard_moved.push((next.clone(), [member].into())),
        }
        let said: usize = self.heard_moved.iter().map(|(_, named)| named.len()).sum();
        if said < self.members.majority() {
            return;
        }
        // Most named; of those, the lowest epoch (the next step).
        let Some(next) = self
            .heard_moved
            .iter()
            .max_by_key(|(n, named)| (named.len(), std::cmp::Reverse(n.epoch)))
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        self.heard_moved.clear();
        self.epoch = next.epoch;
        self.members = next.members.clone();
        self.round = None;
        self.renewals.clear();
        match self.phase.clone() {
            Phase::Holding => {
                if let Some(tenure) = &mut self.tenure {
                    tenure.moved(now, next.members.clone());
                }
            }
            // A change still in flight failed: the new set may start with
            // it as grantee (the highest grant number a sealed member
            // held), but it may have reached only a minority while another
            // holds the lease, so it is asked for again at the new set,
            // never taken by the move (the grant lapses there unrenewed).
            Phase::Done => {}
            _ if self.ticket == 0 => {
                self.phase = Phase::Ticket;
                self.start_round(now, Send::Line(LineRequest::Ticket));
            }
            _ => {
                self.phase = Phase::Waiting;
                self.register(now);
            }
        }
        self.moved = Some(next);
    }

    /// Where it stands at `now`.
    pub fn standing(&mut self, now: Instant) -> Standing {
        if let Some(tenure) = &mut self.tenure {
            let grantee = tenure.grantee();
            if tenure.may_act(now) {
                return Standing::Held(grantee);
            }
            if tenure.ended().is_some() {
                return if self.released {
                    Standing::Released
                } else {
                    Standing::Lost(grantee)
                };
            }
        }
        if self.phase == Phase::Done {
            return Standing::Released;
        }
        Standing::Waiting {
            ahead: self.ahead,
            holder: self.holder,
        }
    }

    /// Until when (its own clock) it may act as the holder, if it holds it.
    pub fn holds_until(&self) -> Option<Instant> {
        self.tenure.as_ref().and_then(Tenure::acts_until)
    }

    /// The next request to send to every member.
    pub fn poll_action(&mut self, now: Instant) -> Option<AcquireAction> {
        if let Some(tenure) = &mut self.tenure
            && !self.released
            && let Some(round) = tenure.poll_renew(now)
        {
            let ask = self.next_ask;
            self.next_ask += 1;
            self.renewals.insert(ask, round);
            // Renewal rounds that can no longer count are forgotten.
            while self.renewals.len() > 8 {
                self.renewals.pop_first();
            }
            self.out.push_back(AcquireAction::Ask {
                ask,
                epoch: self.epoch,
                request: Request::Renew(tenure.grantee()),
            });
        }
        self.out.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let round = self.round.as_ref().map(|r| r.sent + round_wait(self.timing));
        let tenure = self.tenure.as_ref().and_then(Tenure::poll_timeout);
        let retry = match self.phase {
            Phase::Waiting if self.round.is_none() => Some(self.next_try),
            _ => None,
        };
        [round, tenure, retry].into_iter().flatten().min()
    }

    /// Time passes: a round whose members did not all answer counts the
    /// silent ones as refusing; a waiter registers again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = &self.round
            && now >= r.sent + round_wait(self.timing)
        {
            let silent: Vec<Key> = self.members.peers().to_vec();
            for member in silent {
                if let Some(r) = &mut self.round {
                    r.tally.refuse(member);
                }
            }
            self.settle(now);
        }
        if self.phase == Phase::Waiting && self.round.is_none() && now >= self.next_try {
            self.register(now);
        }
        if let Some(tenure) = &mut self.tenure {
            let _ = tenure.may_act(now);
        }
    }

    fn register(&mut self, now: Instant) {
        let (peer, ticket) = (self.me, self.ticket);
        self.start_round(now, Send::Line(LineRequest::Wait { peer, ticket }));
    }

    /// A member's answer to line request `ask`.
    pub fn handle_line(&mut self, now: Instant, ask: u64, member: Key, answer: &LineAnswer) {
        let Some(r) = self.round.as_mut().filter(|r| r.ask == ask) else {
            return;
        };
        if !self.members.contains(&member) {
            return;
        }
        match answer {
            LineAnswer::Moved(next) => {
                let next = next.clone();
                r.tally.refuse(member);
                self.heard_moved(now, member, &next);
                if self.round.as_ref().is_some_and(|r| r.ask == ask) {
                    self.settle(now);
                }
                return;
            }
            LineAnswer::Ticket(t) => {
                r.tickets.push(*t);
                r.tally.agree(member);
            }
            LineAnswer::Place { ahead, first, floor } => {
                r.places.push((*ahead, *first));
                r.tally.agree(member);
                // One member alone cannot send it arbitrarily far back.
                r.floor = r
                    .floor
                    .max((*floor).min(self.ticket.saturating_add(MAX_WAITERS as u64)));
            }
            LineAnswer::Full => {
                r.tally.refuse(member);
            }
        }
        self.settle(now);
    }

    /// A member's answer to quorum request `ask` (a read, a change, a
    /// renewal, a release).
    pub fn handle_answer(&mut self, now: Instant, ask: u64, member: Key, answer: &Answer) {
        if let Answer::Refused(Refusal::Moved(next)) = answer {
            let before = self.epoch;
            self.heard_moved(now, member, next);
            if self.epoch != before {
                return;
            }
        }
        if let Some(&round) = self.renewals.get(&ask) {
            if let Some(tenure) = &mut self.tenure {
                tenure.handle_answer(now, round, member, answer);
            }
            return;
        }
        let Some(r) = self.round.as_mut().filter(|r| r.ask == ask) else {
            return;
        };
        if !self.members.contains(&member) {
            return;
        }
        match (answer, &self.phase) {
            (Answer::View(view), Phase::Reading) => {
                r.views.push(view.clone());
                r.tally.agree(member);
            }
            (Answer::Ok, Phase::Changing(_)) => {
                r.tally.agree(member);
            }
            (Answer::Refused(refusal), _) => {
                if let Refusal::Fresh { current } | Refusal::Stale { current: Some(current) } = refusal {
                    self.holder = Some(*current);
                }
                r.tally.refuse(member);
            }
            _ => {
                r.tally.refuse(member);
            }
        }
        self.settle(now);
    }

    /// Acts on the current round once it is decided.
    fn settle(&mut self, now: Instant) {
        let Some(r) = &self.round else { return };
        let outcome = r.tally.outcome();
        if outcome == Outcome::Open {
            return;
        }
        let r = self.round.take().expect("a round is open");
        let majority = self.members.majority();
        match (self.phase.clone(), outcome) {
            (Phase::Ticket, Outcome::Agreed) => {
                self.ticket = r.tickets.iter().max().copied().unwrap_or(0).saturating_add(1);
                self.phase = Phase::Waiting;
                self.register(now);
            }
            (Phase::Waiting, Outcome::Agreed) => {
                // The place a majority gives: the majority-th smallest.
                let mut ahead: Vec<u64> = r.places.iter().map(|(a, _)| *a).collect();
                ahead.sort_unstable();
                self.ahead = ahead.get(majority - 1).copied().unwrap_or(0);
                let first_here = r.places.iter().filter(|(_, first)| *first == Some(self.me)).count();
                self.next_try = now + self.timing.term / 3;
                if first_here < majority && r.floor > self.ticket {
                    // Sent to the back somewhere, and first nowhere that
                    // counts: the floor as its ticket, at every member at
                    // once, so that their lines agree again. (A majority
                    // that has it first goes on whatever one member says.)
                    self.ticket = r.floor;
                    self.next_try = now;
                } else if first_here >= majority {
                    self.phase = Phase::Reading;
                    self.start_round(now, Send::Ask(Request::Read));
                }
            }
            (Phase::Reading, Outcome::Agreed) => {
                // Held by another while a majority counts it fresh: wait
                // (at most until the freshest lapses there). The read only
                // saves a change that would be refused; what keeps two
                // holders apart is each member's own rule on a change, so
                // a member that missed a release does not hold up the
                // next holder here.
                let fresh: Vec<&View> = r.views.iter().filter(|v| !v.lapsed).collect();
                let lapsed = r.views.len() - fresh.len();
                let fresh = (lapsed < majority)
                    .then(|| fresh.into_iter().max_by_key(|v| v.fresh_for).cloned())
                    .flatten();
                match fresh {
                    Some(view) => {
                        self.holder = view.grantee;
                        self.phase = Phase::Waiting;
                        self.next_try = now + view.fresh_for.min(MAX_RETRY);
                    }
                    None => {
                        self.holder = None;
                        let n = r.views.iter().map(|v| v.max_n).max().unwrap_or(0) + 1;
                        let to = Grantee { peer: self.me, n };
                        self.phase = Phase::Changing(to);
                        self.start_round(now, Send::Ask(Request::Change(to)));
                    }
                }
            }
            (Phase::Changing(to), Outcome::Agreed) => {
                self.phase = Phase::Holding;
                let mut tenure = Tenure::new(now, to, self.members.clone(), self.timing);
                tenure.renew_now(now);
                self.tenure = Some(tenure);
            }
            (Phase::Holding | Phase::Done, _) => {}
            // Refused (or no majority answered): back in line, asking
            // again soon; a change that reached a minority is let go
            // there, so that it does not keep the lease from the next.
            (phase, _) => {
                if let Phase::Changing(by) = phase {
                    self.send(Send::Ask(Request::Release {
                        by,
                        why: LetGo::Released,
                        newer: None,
                    }));
                }
                self.phase = Phase::Waiting;
                self.next_try = now + self.timing.term / 10;
                // No majority answered: a floor a member named is taken
                // (a waiter cut off from the rest, sent back where it was).
                self.ticket = self.ticket.max(r.floor);
                if self.ticket == 0 {
                    self.phase = Phase::Ticket;
                    self.next_try = now + round_wait(self.timing);
                    self.start_round(now, Send::Line(LineRequest::Ticket));
                }
            }
        }
    }

    /// Lets go: a holder releases the lease (the next in line may take it
    /// at once), a waiter leaves the line. It must stop acting now.
    pub fn release(&mut self, now: Instant) {
        if self.released {
            return;
        }
        self.released = true;
        self.round = None;
        if let Some(tenure) = &mut self.tenure {
            let by = tenure.grantee();
            tenure.stop();
            self.send(Send::Ask(Request::Release {
                by,
                why: LetGo::Released,
                newer: None,
            }));
        } else if let Phase::Changing(to) = self.phase {
            // A change may have landed unseen: let it go too.
            self.send(Send::Ask(Request::Release {
                by: to,
                why: LetGo::Released,
                newer: None,
            }));
        }
        let me = self.me;
        self.send(Send::Line(LineRequest::Leave { peer: me }));
        self.phase = Phase::Done;
        let _ = now;
    }
}

#[cfg(test)]
mod tests;
