use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::lease::{Acquire, AcquireAction, Kept, Line, Standing, answer, line_answer};

fn key(i: u8) -> Key {
    Key::from_bytes([i; 32])
}

const T: Timing = Timing::DEFAULT;

/// What one peer keeps as a member.
#[derive(Default)]
struct Member {
    acceptor: Acceptor,
    line: Line,
    home: Home,
}

/// Ten peers that may keep the lease (1–5 its first set), acquirers and
/// movers; every message delivered at once unless its peer is down (or,
/// for a mover, muted), time moving in 10 ms ticks.
struct Net {
    now: Instant,
    members: BTreeMap<Key, Member>,
    down: BTreeSet<Key>,
    clients: Vec<Acquire>,
    /// Clients cut off: nothing they send arrives.
    cut: BTreeSet<usize>,
    /// Members the next `Chosen` sent to each is lost on its way to.
    lose_chosen: BTreeSet<Key>,
    movers: Vec<(Key, Rehome)>,
}

fn first_set() -> Members {
    Members::new((1..=5).map(key))
}

impl Net {
    fn new() -> Self {
        Net {
            now: Instant::from_micros(1_000_000),
            members: (1..=10).map(|i| (key(i), Member::default())).collect(),
            down: BTreeSet::new(),
            clients: Vec::new(),
            cut: BTreeSet::new(),
            lose_chosen: BTreeSet::new(),
            movers: Vec::new(),
        }
    }

    /// An acquirer that starts from the first set.
    fn add(&mut self, c: u8) -> usize {
        self.clients
            .push(Acquire::new(self.now, key(100 + c), 0, first_set(), T));
        self.clients.len() - 1
    }

    /// Member `by` starts to move the set of `epoch` from `from` to `to`.
    fn rehome(&mut self, by: u8, epoch: u64, from: Members, to: &[u8]) -> usize {
        let to = Members::new(to.iter().map(|&i| key(i)));
        let current = self.members[&key(by)].home.installed().cloned();
        assert_eq!(current.as_ref().map_or(0, |c| c.epoch), epoch);
        let round = self.members[&key(by)].home.next_round();
        let ballot = Ballot { round, by: key(by) };
        let r = Rehome::new(self.now, ballot, current, from, to, Vec::new(), T);
        self.movers.push((key(by), r));
        self.movers.len() - 1
    }

    fn deliver(&mut self) {
        let now = self.now;
        for c in 0..self.clients.len() {
            while let Some(action) = self.clients[c].poll_action(now) {
                if self.cut.contains(&c) {
                    continue;
                }
                let from = key(100 + c as u8);
                let to: Vec<Key> = self.clients[c].members().peers().to_vec();
                for k in to {
                    if self.down.contains(&k) {
                        continue;
                    }
                    let m = self.members.get_mut(&k).expect("a peer");
                    let kept = Kept {
                        acceptor: &mut m.acceptor,
                        line: &mut m.line,
                        home: &m.home,
                    };
                    match &action {
                        AcquireAction::Line { ask, epoch, request } => {
                            let a = line_answer(kept, now, T, *epoch, request.clone());
                            self.clients[c].handle_line(now, *ask, k, &a);
                        }
                        AcquireAction::Ask { ask, epoch, request } => {
                            let a = answer(kept, now, T, from, *epoch, request.clone());
                            self.clients[c].handle_answer(now, *ask, k, &a);
                        }
                    }
                }
            }
        }
        for i in 0..self.movers.len() {
            if self.down.contains(&self.movers[i].0) {
                continue;
            }
            while let Some(action) = self.movers[i].1.poll_action() {
                for k in action.to.peers() {
                    if self.down.contains(k) {
                        continue;
                    }
                    if matches!(action.request, RehomeRequest::Chosen(_)) && self.lose_chosen.remove(k) {
                        continue;
                    }
                    let m = self.members.get_mut(k).expect("a peer");
                    let a = m.home.handle(&mut m.acceptor, now, T, action.request.clone());
                    self.movers[i].1.handle_answer(now, action.ask, *k, &a);
                }
            }
        }
    }

    fn step(&mut self) {
        self.deliver();
        self.now = self.now + Duration::from_millis(10);
        let now = self.now;
        for c in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        for (_, r) in &mut self.movers {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
        self.deliver();
    }

    /// Steps until `done` or `limit`; no two clients ever hold at once.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            let now = self.now;
            let holding = self
                .clients
                .iter_mut()
                .map(|c| c.standing(now))
                .filter(|s| matches!(s, Standing::Held(_)))
                .count();
            assert!(holding <= 1, "two holders at once");
            if done(self) {
                return true;
            }
        }
        false
    }

    fn held(&mut self, c: usize) -> Option<u64> {
        match self.clients[c].standing(self.now) {
            Standing::Held(g) => Some(g.n),
            _ => None,
        }
    }

    fn moved(&self, r: usize) -> Option<&Result<Next, String>> {
        self.movers[r].1.outcome()
    }
}

#[test]
fn a_move_carries_the_holder_and_its_token_to_the_new_set() {
    let mut net = Net::new();
    let a = net.add(0);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(a).is_some()));
    let token = net.held(a).unwrap();
    // Member 1 is gone; member 2 moves the set to 4–8 (2 and 3 leave it).
    net.down.insert(key(1));
    let r = net.rehome(2, 0, first_set(), &[4, 5, 6, 7, 8]);
    assert!(net.run_until(Duration::from_secs(2), |n| n.moved(r).is_some()));
    let next = net.moved(r).unwrap().clone().expect("moved");
    assert_eq!(next.epoch, 1);
    assert_eq!(
        next.grantee.map(|g| g.n),
        Some(token),
        "the new set starts with the holder"
    );
    // The holder hears of it from a majority of the old set at its next
    // renewal, and goes on renewing at the new one ...
    assert!(net.run_until(T.term, |n| n.clients[a].epoch().0 == 1));
    // ... so that it keeps the lease when the leavers go too (a majority
    // of the first set gone: it alone could not keep the lease any more).
    for i in 2..=3 {
        net.down.insert(key(i));
    }
    assert!(!net.run_until(T.term * 3, |n| n.held(a) != Some(token)));
    // It lets go; a newcomer, who knows only the first set, is sent to
    // the new one by a majority of the old (2, back for a while, 4 and 5).
    net.down.remove(&key(2));
    net.clients[a].release(net.now);
    let b = net.add(1);
    assert!(net.run_until(T.term, |n| n.held(b).is_some()));
    assert!(net.held(b).unwrap() > token, "the token keeps growing across the move");
    assert_eq!(net.clients[b].epoch().0, 1);
}

#[test]
fn a_sealed_member_refuses_every_change_and_renewal_but_answers_reads() {
    let mut m = Member::default();
    let now = Instant::from_micros(1);
    let ballot = Ballot { round: 1, by: key(1) };
    assert!(matches!(
        m.home
            .handle(&mut m.acceptor, now, T, RehomeRequest::Seal { epoch: 0, ballot }),
        RehomeAnswer::Promise { .. }
    ));
    let me = key(9);
    for request in [
        Request::Change(Grantee { peer: me, n: 1 }),
        Request::Renew(Grantee { peer: me, n: 1 }),
    ] {
        let kept = Kept {
            acceptor: &mut m.acceptor,
            line: &mut m.line,
            home: &m.home,
        };
        assert_eq!(answer(kept, now, T, me, 0, request), Answer::Refused(Refusal::Sealed));
    }
    let kept = Kept {
        acceptor: &mut m.acceptor,
        line: &mut m.line,
        home: &m.home,
    };
    assert!(matches!(answer(kept, now, T, me, 0, Request::Read), Answer::View(_)));
    assert_eq!(m.home.next_round(), 2, "a mover here goes above what it promised");
    // A lower ballot is refused, naming the one promised.
    let lower = Ballot { round: 0, by: key(2) };
    assert_eq!(
        m.home.handle(
            &mut m.acceptor,
            now,
            T,
            RehomeRequest::Seal {
                epoch: 0,
                ballot: lower
            }
        ),
        RehomeAnswer::Refused { promised: Some(ballot) }
    );
}

#[test]
fn a_second_mover_finishes_the_set_a_majority_accepted_not_its_own() {
    let mut net = Net::new();
    let a = net.add(0);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(a).is_some()));
    let first = net.rehome(1, 0, first_set(), &[1, 2, 3, 4, 6]);
    // It gets its proposal accepted by a majority, then stops before any
    // member of the new set installed it.
    loop {
        let now = net.now;
        let (_, r) = &mut net.movers[first];
        let Some(action) = r.poll_action() else { break };
        if matches!(action.request, RehomeRequest::Install(_) | RehomeRequest::Chosen(_)) {
            break;
        }
        for k in action.to.peers() {
            let m = net.members.get_mut(k).unwrap();
            let answer = m.home.handle(&mut m.acceptor, now, T, action.request.clone());
            r.handle_answer(now, action.ask, *k, &answer);
        }
    }
    assert_eq!(net.members.values().filter(|m| m.home.accepted().is_some()).count(), 5);
    net.down.insert(key(1));
    // Another member wants another set: it finishes the first one's.
    let second = net.rehome(2, 0, first_set(), &[2, 7, 8, 9, 10]);
    assert!(net.run_until(Duration::from_secs(2), |n| n.moved(second).is_some()));
    let next = net.moved(second).unwrap().clone().expect("moved");
    assert_eq!(next.members, Members::new([1, 2, 3, 4, 6].map(key)));
    // The holder follows and keeps holding.
    assert!(!net.run_until(T.term * 2, |n| n.held(a).is_none()));
    assert_eq!(net.clients[a].epoch().0, 1);
}

#[test]
fn the_new_set_starts_from_every_grant_a_majority_accepted_and_moves_again() {
    let mut net = Net::new();
    let a = net.add(0);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(a).is_some()));
    net.clients[a].release(net.now);
    // Members 1 and 2 are down while b takes the lease (3, 4 and 5 grant
    // it); then they are back and 3 and 4 are down: the mover's sealed
    // majority is 1, 2 and 5, and only 5 knows of the grant.
    net.down.extend([key(1), key(2)]);
    let b = net.add(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(b).is_some()));
    let token = net.held(b).unwrap();
    assert!(token > 1);
    net.down = [key(3), key(4)].into();
    let r = net.rehome(5, 0, first_set(), &[3, 4, 5, 6, 7]);
    assert!(net.run_until(Duration::from_secs(2), |n| n.moved(r).is_some()));
    let next = net.moved(r).unwrap().clone().unwrap();
    assert_eq!((next.max_n, next.grantee.map(|g| g.n)), (token, Some(token)));
    // And again, from epoch 1 to 2; the holder follows both moves.
    let r2 = net.rehome(6, 1, next.members.clone(), &[6, 7, 8, 9, 10]);
    assert!(net.run_until(Duration::from_secs(2), |n| n.moved(r2).is_some()));
    assert_eq!(net.moved(r2).unwrap().as_ref().unwrap().epoch, 2);
    assert!(net.run_until(T.term, |n| n.clients[b].epoch().0 == 2));
    for i in 1..=5 {
        net.down.insert(key(i));
    }
    assert!(!net.run_until(T.term * 3, |n| n.held(b) != Some(token)));
    assert_eq!(net.clients[b].epoch().0, 2);
}

#[test]
fn a_member_takes_a_chosen_set_only_if_it_accepted_it() {
    let mut m = Member::default();
    let now = Instant::from_micros(1);
    let next = Next {
        epoch: 1,
        members: Members::new([key(6)]),
        addrs: Vec::new(),
        grantee: None,
        fresh_for: Duration::ZERO,
        max_n: 0,
    };
    m.home
        .handle(&mut m.acceptor, now, T, RehomeRequest::Chosen(next.clone()));
    assert!(m.home.moved().is_none(), "a set it never accepted");
    let ballot = Ballot { round: 1, by: key(1) };
    let propose = RehomeRequest::Propose {
        epoch: 0,
        ballot,
        next: next.clone(),
    };
    assert_eq!(m.home.handle(&mut m.acceptor, now, T, propose), RehomeAnswer::Done);
    m.home
        .handle(&mut m.acceptor, now, T, RehomeRequest::Chosen(next.clone()));
    assert_eq!(m.home.moved(), Some(&next));
    assert_eq!(
        m.home.refusal(0, true),
        Some(Refusal::Moved(Box::new(next))),
        "an asker of the old set is told where it went"
    );
}

#[test]
fn a_holder_cut_off_just_before_a_move_is_counted_fresh_at_the_new_set_until_it_stopped() {
    let mut net = Net::new();
    let a = net.add(0);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(a).is_some()));
    // The holder renews once more, then is cut off (it stops renewing,
    // and stops acting when its last renewal runs out).
    assert!(net.run_until(T.term, |n| {
        n.clients[a]
            .holds_until()
            .is_some_and(|u| u > n.now + T.acts_for() - Duration::from_millis(50))
    }));
    let acts_until = net.clients[a].holds_until().unwrap();
    net.cut.insert(a);
    let b = net.add(1);
    // The set moves at once; the newcomer waits at the new set.
    let r = net.rehome(1, 0, first_set(), &[4, 5, 6, 7, 8]);
    assert!(net.run_until(Duration::from_secs(2), |n| n.moved(r).is_some()));
    assert!(net.run_until(T.term * 2, |n| n.held(b).is_some()));
    assert!(
        net.now >= acts_until,
        "the next holder began at {:?}, before the cut-off one stopped at {acts_until:?}",
        net.now
    );
    assert_eq!(net.clients[b].epoch().0, 1);
}

#[test]
fn old_members_that_missed_the_news_of_a_move_are_told_again() {
    let mut net = Net::new();
    let a = net.add(0);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(a).is_some()));
    // Members 1-3 never hear that the move was chosen, the first time.
    net.lose_chosen = [key(1), key(2), key(3)].into();
    let r = net.rehome(4, 0, first_set(), &[4, 5, 6, 7, 8]);
    assert!(net.run_until(Duration::from_secs(2), |n| n.moved(r).is_some()));
    // They are told again: a majority of the old set can send askers on.
    assert!(net.run_until(T.term, |n| (1..=3).all(|i| n.members[&key(i)].home.moved().is_some())));
    assert!(net.run_until(T.term, |n| n.movers[r].1.is_done()));
    // And the holder follows.
    assert!(net.run_until(T.term, |n| n.clients[a].epoch().0 == 1));
    assert!(net.held(a).is_some());
}

#[test]
fn an_installed_set_counts_its_grantee_fresh_for_at_most_a_whole_period() {
    let mut m = Member::default();
    let now = Instant::from_micros(1);
    let grantee = Grantee { peer: key(9), n: 3 };
    let next = Next {
        epoch: 1,
        members: Members::new([key(1)]),
        addrs: Vec::new(),
        grantee: Some(grantee),
        fresh_for: Duration::from_secs(100 * 365 * 24 * 3600),
        max_n: 3,
    };
    assert_eq!(
        m.home.handle(&mut m.acceptor, now, T, RehomeRequest::Install(next)),
        RehomeAnswer::Done
    );
    assert_eq!(m.acceptor.view(now).fresh_for, T.fresh_for());
}
