//! Supervising a job from its home: the home member nearest the job's key
//! reads the job's tenure at its members ([`crate::quorum`]), and when no
//! executor holds it — a new job, an executor that crashed, was cut off,
//! or let go — places the job anew and gives it the tenure, from its
//! newest saved checkpoint.
//!
//! Two supervisors at once (a partition, a home in flux) are harmless: a
//! change of grantee needs a majority that no longer counts the current
//! one fresh, so at most one executor acts at a time, and a result, once a
//! majority holds it, is the one every later grantee commits. A
//! supervisor that loses a race abandons the placement it made. It stops
//! once it reads a result that a majority holds.
//!
//! Sans-IO: [`Supervision::poll_action`] says what to send or do,
//! `handle_*` take the answers, [`Supervision::poll_timeout`] says when to
//! call [`Supervision::handle_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

use crate::quorum::{Answer, Grantee, Members, Outcome, Request, Saved, Tally, Timing, View};

/// What the supervision asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuperviseAction {
    /// Send `request` to every member; answer each with
    /// [`Supervision::handle_answer`] naming `ask`.
    Ask {
        /// Names the answers.
        ask: u64,
        /// What to send.
        request: Request,
    },
    /// Place the job as grant `n` on a fitting executor other than
    /// `avoid`, to start from `from` (the newest checkpoint); answer with
    /// [`Supervision::handle_placed`].
    Place {
        /// The grant number the executor will hold.
        n: u64,
        /// The executor that lost it, if one did.
        avoid: Option<Key>,
        /// Where to start from.
        from: Option<Saved>,
        /// Later progress the last grantee named as it let go, which the
        /// members do not keep: where to go on from if the executor can
        /// get it ([`crate::quorum::View::moved_with`]).
        newer: Option<Saved>,
    },
    /// The placement got the tenure: the executor may renew at once.
    Granted(Grantee),
    /// A placement that did not get the tenure: the executor drops the job.
    Abandon(Grantee),
}

/// What happened to the job, as the supervisor saw it (its history).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Happened {
    /// Placed with this grant.
    Placed(Grantee),
    /// Its grantee lost the tenure (crashed, cut off, let go).
    Lost(Grantee),
    /// A placement that lost a race to another supervisor, or found no
    /// majority.
    Abandoned(Grantee),
    /// Its result was committed (a majority holds it), last sent by this
    /// grantee.
    Committed(Grantee),
}

/// Entries of history kept, at most (the oldest go first).
pub const MAX_HISTORY: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    Idle,
    Reading {
        ask: u64,
        deadline: Instant,
        views: BTreeMap<Key, View>,
    },
    Placing,
    Changing {
        ask: u64,
        deadline: Instant,
        to: Grantee,
        tally: Tally,
    },
    Done,
}

/// The supervision of one job by one home member.
#[derive(Clone, Debug)]
pub struct Supervision {
    members: Members,
    timing: Timing,
    /// How often the tenure is read while its grantee is fresh.
    check_every: Duration,
    /// How long an ask waits for answers.
    ask_timeout: Duration,
    stage: Stage,
    next_check: Instant,
    next_ask: u64,
    current: Option<Grantee>,
    result: Option<(Grantee, Vec<u8>)>,
    history: VecDeque<(Instant, Happened)>,
    actions: VecDeque<SuperviseAction>,
}

impl Supervision {
    /// Supervises a job whose tenure the `members` keep, from `now` (the
    /// first read at once); reads every `check_every` while its grantee is
    /// fresh, each ask waiting `ask_timeout`.
    pub fn new(now: Instant, members: Members, timing: Timing, check_every: Duration, ask_timeout: Duration) -> Self {
        Supervision {
            members,
            timing,
            check_every,
            ask_timeout,
            stage: Stage::Idle,
            next_check: now,
            next_ask: 0,
            current: None,
            result: None,
            history: VecDeque::new(),
            actions: VecDeque::new(),
        }
    }

    /// Supervises a job that was just created (nobody can hold it yet):
    /// places it at once as grant 1, without a first read. If another
    /// supervisor placed it meanwhile, the members refuse the number and
    /// this one abandons its placement and reads.
    pub fn first(now: Instant, members: Members, timing: Timing, check_every: Duration, ask_timeout: Duration) -> Self {
        let mut supervision = Supervision::new(now, members, timing, check_every, ask_timeout);
        supervision.stage = Stage::Placing;
        supervision.actions.push_back(SuperviseAction::Place {
            n: 1,
            avoid: None,
            from: None,
            newer: None,
        });
        supervision
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<SuperviseAction> {
        self.actions.pop_front()
    }

    /// Whether an action waits to be polled.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Idle => Some(self.next_check),
            Stage::Reading { deadline, .. } | Stage::Changing { deadline, .. } => Some(*deadline),
            Stage::Placing | Stage::Done => None,
        }
    }

    /// Reads at once if idle: something suggests the grantee is gone (a
    /// member's own record of the tenure says it lapsed), so a supervisor
    /// on a slow standby pace need not wait for its next read.
    pub fn check_now(&mut self, now: Instant) {
        if self.stage == Stage::Idle && self.next_check > now {
            self.next_check = now;
        }
    }

    /// The committed result, once there is one: supervision is over.
    pub fn result(&self) -> Option<&(Grantee, Vec<u8>)> {
        self.result.as_ref()
    }

    /// The grantee as last read or given.
    pub fn current(&self) -> Option<Grantee> {
        self.current
    }

    /// What happened so far, oldest first, with the supervisor's times.
    pub fn history(&self) -> impl Iterator<Item = &(Instant, Happened)> {
        self.history.iter()
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Idle if now >= self.next_check => self.read(now),
            Stage::Reading { deadline, views, .. } if now >= deadline => {
                if views.len() >= self.members.majority() {
                    self.decide(now, views);
                } else {
                    // No majority answered: ask again a little later.
                    self.next_check = now + self.ask_timeout;
                }
            }
            Stage::Changing { deadline, to, .. } if now >= deadline => self.abandon(now, to),
            other => self.stage = other,
        }
    }

    /// A member's answer to ask `ask`.
    pub fn handle_answer(&mut self, now: Instant, ask: u64, member: Key, answer: Answer) {
        if !self.members.contains(&member) {
            return;
        }
        match &mut self.stage {
            Stage::Reading { ask: a, views, .. } if *a == ask => {
                if let Answer::View(view) = answer {
                    views.insert(member, view);
                }
                if views.len() >= self.members.majority() && !unsure(&self.members, views) {
                    let Stage::Reading { views, .. } = std::mem::replace(&mut self.stage, Stage::Idle) else {
                        return;
                    };
                    self.decide(now, views);
                }
            }
            Stage::Changing { ask: a, to, tally, .. } if *a == ask => {
                let to = *to;
                match count(tally, member, &answer) {
                    Outcome::Open => {}
                    Outcome::Agreed => {
                        self.current = Some(to);
                        self.note(now, Happened::Placed(to));
                        self.actions.push_back(SuperviseAction::Granted(to));
                        self.stage = Stage::Idle;
                        self.next_check = now + self.check_every;
                    }
                    Outcome::Refused => {
                        self.stage = Stage::Idle;
                        self.abandon(now, to);
                    }
                }
            }
            _ => {}
        }
    }

    /// The answer to [`SuperviseAction::Place`]: the executor that took
    /// the job as grant `n`, or `None` if none did.
    pub fn handle_placed(&mut self, now: Instant, n: u64, executor: Option<Key>) {
        if self.stage != Stage::Placing {
            return;
        }
        match executor {
            Some(peer) => {
                let to = Grantee { peer, n };
                let ask = self.ask(Request::Change(to));
                self.stage = Stage::Changing {
                    ask,
                    deadline: now + self.ask_timeout,
                    to,
                    tally: Tally::new(self.members.clone()),
                };
            }
            None => {
                self.stage = Stage::Idle;
                self.next_check = now + self.check_every;
            }
        }
    }

    fn read(&mut self, now: Instant) {
        let ask = self.ask(Request::Read);
        self.stage = Stage::Reading {
            ask,
            deadline: now + self.ask_timeout,
            views: BTreeMap::new(),
        };
    }

    /// A majority's views: done, healthy, or to be placed anew.
    fn decide(&mut self, now: Instant, views: BTreeMap<Key, View>) {
        // Committed: a majority holds the same result.
        let mut held: BTreeMap<&[u8], (usize, Grantee)> = BTreeMap::new();
        for (by, result) in views.values().filter_map(|v| v.result.as_ref()) {
            let entry = held.entry(result.as_slice()).or_insert((0, *by));
            entry.0 += 1;
        }
        if let Some((result, (_, by))) = held
            .into_iter()
            .find(|(_, (count, _))| *count >= self.members.majority())
        {
            self.result = Some((by, result.to_vec()));
            self.stage = Stage::Done;
            self.note(now, Happened::Committed(by));
            return;
        }
        // A result only a minority holds is not committed: the next
        // grantee adopts it (see `quorum::Tenure::adopted`).
        let newest = views.values().filter_map(|v| v.grantee).max_by_key(|g| g.n);
        if let (Some(newest), Some(known)) = (newest, self.current)
            && newest != known
            && newest.n > known.n
        {
            self.current = Some(newest);
        } else if self.current.is_none() {
            self.current = newest;
        }
        let max_n = views.values().map(|v| v.max_n).max().unwrap_or(0);
        // A member takes a change once its grantee is not fresh; how long
        // until a majority would, by their own clocks.
        let mut waits: Vec<Duration> = views.values().map(|v| v.fresh_for).collect();
        waits.sort_unstable();
        let majority = self.members.majority();
        let until_free = waits.get(majority - 1).copied();
        match until_free {
            Some(wait) if wait.is_zero() => {
                let avoid = newest.map(|g| g.peer);
                if let Some(lost) = newest {
                    self.note(now, Happened::Lost(lost));
                }
                let from = Saved::newest(views.values().filter_map(|v| v.saved.as_ref())).cloned();
                let newer = Saved::newest(views.values().filter_map(|v| v.moved_with.as_deref()))
                    .filter(|newer| from.as_ref().is_none_or(|from| from.order() < newer.order()))
                    .cloned();
                self.stage = Stage::Placing;
                self.actions.push_back(SuperviseAction::Place {
                    n: max_n.saturating_add(1),
                    avoid,
                    from,
                    newer,
                });
            }
            Some(wait) => {
                // Read again when a majority would take a change, or
                // sooner: a grantee that renews stays fresh. A standby
                // supervisor (reading less often than a term) keeps its
                // own pace.
                let next = if self.check_every > self.timing.term {
                    self.check_every
                } else {
                    wait.min(self.check_every)
                };
                self.next_check = now + next + Duration::from_millis(1);
            }
            None => self.next_check = now + self.check_every,
        }
    }

    fn abandon(&mut self, now: Instant, to: Grantee) {
        self.note(now, Happened::Abandoned(to));
        self.actions.push_back(SuperviseAction::Abandon(to));
        self.next_check = now + self.check_every.min(self.timing.term / 4);
    }

    fn ask(&mut self, request: Request) -> u64 {
        let ask = self.next_ask;
        self.next_ask += 1;
        self.actions.push_back(SuperviseAction::Ask { ask, request });
        ask
    }

    fn note(&mut self, now: Instant, happened: Happened) {
        if self.history.back().is_some_and(|(_, last)| *last == happened) {
            return;
        }
        if self.history.len() == MAX_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((now, happened));
    }
}

/// Whether `views` (a majority's, not every member's) show a result
/// that only some of them hold: it may be committed at the members not
/// heard yet. The read then waits for them (until its deadline) rather
/// than place a finished job again, which would only have its next
/// grantee commit the same result under another grant.
fn unsure(members: &Members, views: &BTreeMap<Key, View>) -> bool {
    let holding = views.values().filter(|v| v.result.is_some()).count();
    holding > 0 && holding < members.majority() && views.len() < members.len()
}

fn count(tally: &mut Tally, member: Key, answer: &Answer) -> Outcome {
    match answer {
        Answer::Ok => tally.agree(member),
        _ => tally.refuse(member),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::Acceptor;

    const T: Timing = Timing::DEFAULT;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1_000)
    }

    fn key(n: u8) -> Key {
        Key::of_content(&[n])
    }

    /// Five members, every ask answered at once by those `up`.
    struct Home {
        members: Vec<(Key, Acceptor)>,
        up: Vec<bool>,
    }

    impl Home {
        fn new() -> Self {
            Home {
                members: (1..=5).map(|n| (key(n), Acceptor::new())).collect(),
                up: vec![true; 5],
            }
        }

        fn set(&self) -> Members {
            Members::new(self.members.iter().map(|(k, _)| *k))
        }

        /// Sends `request` from outside (an executor) to every member up.
        fn tell(&mut self, now: Instant, request: &Request) -> usize {
            let mut ok = 0;
            for (i, (_, a)) in self.members.iter_mut().enumerate() {
                if self.up[i] && matches!(a.handle(now, T, request.clone()), Answer::Ok | Answer::Confirmed(_)) {
                    ok += 1;
                }
            }
            ok
        }

        /// Runs the supervision's actions; `place` answers a placement.
        fn drive(
            &mut self,
            now: Instant,
            s: &mut Supervision,
            place: &mut dyn FnMut(u64, Option<Key>, Option<Saved>) -> Option<Key>,
        ) -> Vec<SuperviseAction> {
            let mut seen = Vec::new();
            while let Some(action) = s.poll_action() {
                seen.push(action.clone());
                match action {
                    SuperviseAction::Ask { ask, request } => {
                        for (i, (k, a)) in self.members.iter_mut().enumerate() {
                            if self.up[i] {
                                let answer = a.handle(now, T, request.clone());
                                s.handle_answer(now, ask, *k, answer);
                            }
                        }
                    }
                    SuperviseAction::Place { n, avoid, from, .. } => {
                        let executor = place(n, avoid, from);
                        s.handle_placed(now, n, executor);
                    }
                    SuperviseAction::Granted(_) | SuperviseAction::Abandon(_) => {}
                }
            }
            seen
        }
    }

    fn supervision(now: Instant, home: &Home) -> Supervision {
        Supervision::new(now, home.set(), T, Duration::from_secs(5), Duration::from_secs(1))
    }

    #[test]
    fn a_job_whose_executor_stops_renewing_is_placed_anew_from_its_newest_save() {
        let mut home = Home::new();
        let mut s = supervision(t(0), &home);
        let mut placed = Vec::new();
        let mut place = |n, avoid, from: Option<Saved>| {
            placed.push((n, avoid, from.map(|f| f.state)));
            Some(key(10 + placed.len() as u8))
        };
        s.handle_timeout(t(0));
        home.drive(t(0), &mut s, &mut place);
        let first = Grantee { peer: key(11), n: 1 };
        assert_eq!(s.current(), Some(first));
        // The executor renews and saves a checkpoint, then dies at 4 s.
        assert_eq!(home.tell(t(100), &Request::Renew(first)), 5);
        let save = Saved {
            by: first,
            seq: 1,
            state: b"ckpt".to_vec(),
        };
        assert_eq!(home.tell(t(3_000), &Request::Save(save)), 5);
        assert_eq!(home.tell(t(4_000), &Request::Renew(first)), 5);
        // Reads while it is fresh change nothing.
        let mut now = t(0);
        while s.current() == Some(first) {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            home.drive(now, &mut s, &mut place);
        }
        // Fresh until 4 + 11 s at the members: placed anew just after.
        assert!(t(15_000) <= now && now <= t(15_100), "{now:?}");
        assert_eq!(placed[1], (2, Some(key(11)), Some(b"ckpt".to_vec())));
        assert_eq!(s.current(), Some(Grantee { peer: key(12), n: 2 }));
        let lost: Vec<_> = s.history().map(|(_, h)| h.clone()).collect();
        assert_eq!(
            lost,
            [
                Happened::Placed(first),
                Happened::Lost(first),
                Happened::Placed(Grantee { peer: key(12), n: 2 })
            ]
        );
    }

    #[test]
    fn of_two_supervisors_racing_one_places_and_the_other_abandons() {
        let mut home = Home::new();
        let (mut a, mut b) = (supervision(t(0), &home), supervision(t(0), &home));
        a.handle_timeout(t(0));
        b.handle_timeout(t(0));
        // Both read "nobody holds it" before either changes anything.
        let (a_read, b_read) = (a.poll_action().unwrap(), b.poll_action().unwrap());
        for (s, read) in [(&mut a, a_read), (&mut b, b_read)] {
            let SuperviseAction::Ask { ask, request } = read else {
                panic!()
            };
            for (k, m) in &mut home.members {
                let answer = m.handle(t(0), T, request.clone());
                s.handle_answer(t(0), ask, *k, answer);
            }
        }
        let seen_a = home.drive(t(1), &mut a, &mut |_, _, _| Some(key(20)));
        let seen_b = home.drive(t(1), &mut b, &mut |_, _, _| Some(key(21)));
        assert!(seen_a.iter().any(|x| matches!(x, SuperviseAction::Place { n: 1, .. })));
        assert_eq!(a.current(), Some(Grantee { peer: key(20), n: 1 }));
        assert!(seen_a.contains(&SuperviseAction::Granted(Grantee { peer: key(20), n: 1 })));
        assert!(
            seen_b.contains(&SuperviseAction::Abandon(Grantee { peer: key(21), n: 1 })),
            "{seen_b:?}"
        );
        assert_ne!(b.current(), Some(Grantee { peer: key(21), n: 1 }));
    }

    #[test]
    fn a_result_a_majority_holds_ends_it_and_one_a_minority_holds_does_not() {
        let mut home = Home::new();
        let mut s = supervision(t(0), &home);
        s.handle_timeout(t(0));
        home.drive(t(0), &mut s, &mut |_, _, _| Some(key(30)));
        let by = Grantee { peer: key(30), n: 1 };
        home.tell(t(5), &Request::Renew(by));
        // The executor's commit reached two members, then it died.
        home.up = vec![true, true, false, false, false];
        assert_eq!(home.tell(t(10), &Request::Commit { by, result: vec![0] }), 2);
        home.up = vec![true; 5];
        let mut placed = None;
        let mut now = t(10);
        while placed.is_none() {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            home.drive(now, &mut s, &mut |n, _, _| {
                placed = Some(n);
                Some(key(31))
            });
            assert_eq!(s.result(), None, "two of five do not commit it");
        }
        // The next grantee learns the result at its first renewal and
        // commits it; then the supervision reads it at a majority.
        let next = Grantee { peer: key(31), n: 2 };
        assert_eq!(home.tell(now, &Request::Renew(next)), 5);
        assert_eq!(
            home.tell(
                now,
                &Request::Commit {
                    by: next,
                    result: vec![0]
                }
            ),
            5
        );
        while s.result().is_none() {
            let at = s.poll_timeout().unwrap();
            s.handle_timeout(at);
            home.drive(at, &mut s, &mut |_, _, _| panic!("a committed job is not placed again"));
        }
        assert_eq!(s.result(), Some(&(next, vec![0])));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_read_that_sees_a_result_at_a_minority_waits_for_the_rest_before_placing_again() {
        let mut home = Home::new();
        let mut s = supervision(t(0), &home);
        s.handle_timeout(t(0));
        home.drive(t(0), &mut s, &mut |_, _, _| Some(key(30)));
        let by = Grantee { peer: key(30), n: 1 };
        home.tell(t(5), &Request::Renew(by));
        // Committed at the last three members; the first two missed it,
        // and the executor, done, renews no more.
        home.up = vec![false, false, true, true, true];
        assert_eq!(home.tell(t(10), &Request::Commit { by, result: vec![0] }), 3);
        home.up = vec![true; 5];
        // Reads answered in member order: the first three answers hold the
        // result once; the two after them make it a majority.
        while s.result().is_none() {
            let at = s.poll_timeout().unwrap();
            s.handle_timeout(at);
            home.drive(at, &mut s, &mut |_, _, _| panic!("a committed job is not placed again"));
        }
        assert_eq!(s.result(), Some(&(by, vec![0])));
    }

    #[test]
    fn a_job_let_go_with_progress_the_home_does_not_keep_is_placed_to_go_on_from_it() {
        use crate::quorum::LetGo;
        let mut home = Home::new();
        let mut s = supervision(t(0), &home);
        s.handle_timeout(t(0));
        home.drive(t(0), &mut s, &mut |_, _, _| Some(key(30)));
        let by = Grantee { peer: key(30), n: 1 };
        home.tell(t(1), &Request::Renew(by));
        let saved = |seq| Saved {
            by,
            seq,
            state: vec![seq as u8],
        };
        // A pre-copy the home keeps, then a release naming the snapshot
        // the executor paused with (held by the executor alone).
        home.tell(t(2), &Request::Save(saved(1)));
        home.tell(
            t(3),
            &Request::Release {
                by,
                why: LetGo::Drained,
                newer: Some(saved(2)),
            },
        );
        let mut placed = Vec::new();
        while placed.is_empty() {
            let at = s.poll_timeout().unwrap();
            s.handle_timeout(at);
            placed.extend(
                home.drive(at, &mut s, &mut |_, _, _| Some(key(31)))
                    .into_iter()
                    .filter_map(|a| match a {
                        SuperviseAction::Place { from, newer, .. } => Some((from, newer)),
                        _ => None,
                    }),
            );
        }
        assert_eq!(placed, [(Some(saved(1)), Some(saved(2)))]);
    }

    #[test]
    fn a_new_job_is_placed_without_a_read_and_a_race_lost_that_way_is_abandoned() {
        let mut home = Home::new();
        let mut s = Supervision::first(t(0), home.set(), T, Duration::from_secs(5), Duration::from_secs(1));
        let seen = home.drive(t(0), &mut s, &mut |_, _, _| Some(key(50)));
        assert!(matches!(seen[0], SuperviseAction::Place { n: 1, .. }), "{seen:?}");
        assert_eq!(s.current(), Some(Grantee { peer: key(50), n: 1 }));
        // A second supervisor that also thinks the job is new loses.
        let mut late = Supervision::first(t(1), home.set(), T, Duration::from_secs(5), Duration::from_secs(1));
        let seen = home.drive(t(1), &mut late, &mut |_, _, _| Some(key(51)));
        assert!(
            seen.contains(&SuperviseAction::Abandon(Grantee { peer: key(51), n: 1 })),
            "{seen:?}"
        );
    }

    #[test]
    fn a_standby_supervisor_told_the_grantee_lapsed_reads_at_once_not_at_its_pace() {
        let mut home = Home::new();
        // Standby: reads every 30 s (three terms).
        let mut s = Supervision::new(t(0), home.set(), T, Duration::from_secs(30), Duration::from_secs(1));
        let mut placed = 0u8;
        let mut place = |_, _, _| {
            placed += 1;
            Some(key(10 + placed))
        };
        s.handle_timeout(t(0));
        home.drive(t(0), &mut s, &mut place);
        let first = Grantee { peer: key(11), n: 1 };
        assert_eq!(s.current(), Some(first));
        home.tell(t(100), &Request::Renew(first));
        // The executor dies; by 12 s every member holds it lapsed. The
        // standby pace would read next at 30 s.
        let lapsed = t(12_000);
        assert!(s.poll_timeout().unwrap() > lapsed);
        s.check_now(lapsed);
        assert_eq!(s.poll_timeout(), Some(lapsed));
        s.handle_timeout(lapsed);
        home.drive(lapsed, &mut s, &mut place);
        assert_eq!(s.current().map(|g| g.n), Some(2), "placed anew at 12 s");
    }

    #[test]
    fn without_a_majority_it_neither_places_nor_gives_up() {
        let mut home = Home::new();
        home.up = vec![true, true, false, false, false];
        let mut s = supervision(t(0), &home);
        let mut now = t(0);
        for _ in 0..5 {
            s.handle_timeout(now);
            home.drive(now, &mut s, &mut |_, _, _| panic!("placed without a majority"));
            now = s.poll_timeout().unwrap();
        }
        assert_eq!(s.current(), None);
        home.up = vec![true; 5];
        s.handle_timeout(now);
        home.drive(now, &mut s, &mut |_, _, _| Some(key(40)));
        let now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
        home.drive(now, &mut s, &mut |_, _, _| Some(key(40)));
        assert_eq!(s.current(), Some(Grantee { peer: key(40), n: 1 }));
    }
}
