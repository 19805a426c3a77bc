use std::collections::BTreeSet;

use super::*;

fn key(i: u8) -> Key {
    Key::from_bytes([i; 32])
}

const T: Timing = Timing::DEFAULT;

/// A member's state that never moved, borrowed.
fn kept<'a>(acceptor: &'a mut Acceptor, line: &'a mut Line) -> Kept<'a> {
    static HOME: std::sync::LazyLock<Home> = std::sync::LazyLock::new(Home::default);
    Kept {
        acceptor,
        line,
        home: &HOME,
    }
}

/// Five members and some acquirers, every message delivered at once
/// (or dropped, for a member that is down), time moving in 10 ms ticks.
struct Net {
    now: Instant,
    members: Vec<(Key, Acceptor, Line, Home)>,
    down: BTreeSet<Key>,
    clients: Vec<Acquire>,
}

impl Net {
    fn new(clients: usize) -> Self {
        let members: Vec<(Key, Acceptor, Line, Home)> = (1..=5)
            .map(|i| (key(i), Acceptor::new(), Line::default(), Home::default()))
            .collect();
        let set = Members::new(members.iter().map(|m| m.0));
        let now = Instant::from_micros(1_000_000);
        Net {
            now,
            clients: (0..clients)
                .map(|c| Acquire::new(now, key(100 + c as u8), 0, set.clone(), T))
                .collect(),
            members,
            down: BTreeSet::new(),
        }
    }

    /// One client joins later (so that its ticket comes after the others').
    fn add(&mut self, c: u8) -> usize {
        let set = Members::new(self.members.iter().map(|m| m.0));
        self.clients.push(Acquire::new(self.now, key(100 + c), 0, set, T));
        self.clients.len() - 1
    }

    fn deliver(&mut self) {
        for c in 0..self.clients.len() {
            while let Some(action) = self.clients[c].poll_action(self.now) {
                let from = key(100 + c as u8);
                let from = if self.clients[c].me == from {
                    from
                } else {
                    self.clients[c].me
                };
                for (k, acceptor, line, home) in &mut self.members {
                    if self.down.contains(k) {
                        continue;
                    }
                    let kept = Kept { acceptor, line, home };
                    match &action {
                        AcquireAction::Line { ask, epoch, request } => {
                            let a = line_answer(kept, self.now, T, *epoch, request.clone());
                            self.clients[c].handle_line(self.now, *ask, *k, &a);
                        }
                        AcquireAction::Ask { ask, epoch, request } => {
                            let a = answer(kept, self.now, T, from, *epoch, request.clone());
                            self.clients[c].handle_answer(self.now, *ask, *k, &a);
                        }
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        self.deliver();
        self.now = self.now + Duration::from_millis(10);
        for c in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= self.now) {
                c.handle_timeout(self.now);
            }
        }
        self.deliver();
    }

    /// Steps until `done` or `limit` of virtual time; checks at every step
    /// that no two clients hold the lease at once.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            let now = self.now;
            let mut holding = 0;
            for c in &mut self.clients {
                if matches!(c.standing(now), Standing::Held(_)) {
                    holding += 1;
                }
            }
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
}

#[test]
fn waiters_get_the_lease_in_line_order_each_with_a_larger_token() {
    let mut net = Net::new(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(0).is_some()));
    let first = net.held(0).unwrap();
    let b = net.add(1);
    net.run_until(Duration::from_millis(200), |_| false);
    let c = net.add(2);
    net.run_until(Duration::from_millis(500), |_| false);
    assert!(matches!(
        net.clients[b].standing(net.now),
        Standing::Waiting { ahead: 0, .. }
    ));
    assert!(matches!(
        net.clients[c].standing(net.now),
        Standing::Waiting { ahead: 1, .. }
    ));
    // The holder lets go: the first in line takes it at once (well
    // within a term), then the next.
    net.clients[0].release(net.now);
    assert!(net.run_until(Duration::from_secs(3), |n| n.held(b).is_some()));
    let second = net.held(b).unwrap();
    assert!(net.held(c).is_none());
    net.clients[b].release(net.now);
    assert!(net.run_until(Duration::from_secs(3), |n| n.held(c).is_some()));
    let third = net.held(c).unwrap();
    assert!(first < second && second < third, "{first} {second} {third}");
    assert_eq!(net.clients[0].standing(net.now), Standing::Released);
}

#[test]
fn a_holder_that_vanishes_loses_the_lease_after_its_term_and_the_next_takes_it() {
    let mut net = Net::new(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(0).is_some()));
    let b = net.add(1);
    // The holder's peer is gone: it sends nothing more (its machine is
    // left alone), so its tenure runs out by its own clock ...
    let gone = net.clients.remove(0);
    let b = b - 1;
    let start = net.now;
    assert!(net.run_until(Duration::from_secs(30), |n| n.held(b).is_some()));
    let waited = net.now.saturating_since(start);
    // ... and the members give it on only once it is not fresh there: a
    // term and a margin after its last confirmed renewal (at most a third
    // of a term before it went), when it had stopped acting already.
    assert!(waited >= T.fresh_for() - T.term / 3, "after {waited:?}");
    assert!(gone.holds_until().unwrap() <= net.now);
}

#[test]
fn a_minority_of_members_down_does_not_stop_a_lease_and_a_majority_does() {
    let mut net = Net::new(1);
    net.down.insert(key(1));
    net.down.insert(key(2));
    assert!(net.run_until(Duration::from_secs(2), |n| n.held(0).is_some()));
    // Renewals go on through three members.
    assert!(!net.run_until(Duration::from_secs(30), |n| n.held(0).is_none()));
    // A third member down: no renewal is confirmed, the holder stops.
    net.down.insert(key(3));
    assert!(net.run_until(Duration::from_secs(15), |n| n.held(0).is_none()));
    assert!(matches!(net.clients[0].standing(net.now), Standing::Lost(_)));
}

#[test]
fn a_member_refuses_a_change_for_another_peer_or_out_of_turn() {
    let (mut acceptor, mut line) = (Acceptor::new(), Line::default());
    let now = Instant::from_micros(1);
    let a = line.handle(
        now,
        T,
        true,
        LineRequest::Wait {
            peer: key(7),
            ticket: 1,
        },
    );
    assert_eq!(
        a,
        LineAnswer::Place {
            ahead: 0,
            first: Some(key(7)),
            floor: 0
        }
    );
    let b = line.handle(
        now,
        T,
        true,
        LineRequest::Wait {
            peer: key(8),
            ticket: 2,
        },
    );
    assert_eq!(
        b,
        LineAnswer::Place {
            ahead: 1,
            first: Some(key(7)),
            floor: 0
        }
    );
    let for_other = Request::Change(Grantee { peer: key(7), n: 1 });
    assert!(matches!(
        answer(kept(&mut acceptor, &mut line), now, T, key(8), 0, for_other.clone()),
        Answer::Refused(Refusal::Stale { .. })
    ));
    let out_of_turn = Request::Change(Grantee { peer: key(8), n: 1 });
    assert_eq!(
        answer(kept(&mut acceptor, &mut line), now, T, key(8), 0, out_of_turn),
        Answer::Refused(Refusal::NotFirst { first: key(7) })
    );
    assert_eq!(
        answer(kept(&mut acceptor, &mut line), now, T, key(7), 0, for_other),
        Answer::Ok
    );
    assert_eq!(line.waiters(now), vec![key(8)], "the holder left the line");
    // A waiter not heard from for a term and a margin leaves the line.
    assert!(line.waiters(now + T.fresh_for()).is_empty());
}

#[test]
fn names_are_checked() {
    assert!(check_name("deploy/prod").is_ok());
    assert!(check_name("").is_err());
    assert!(check_name("a\nb").is_err());
    assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
    assert_ne!(lease_key("a"), lease_key("b"));
}

#[test]
fn a_first_waiter_that_leaves_a_free_lease_untaken_goes_to_the_back_and_stays_there() {
    let mut line = Line::default();
    let wait = |peer, ticket| LineRequest::Wait {
        peer: key(peer),
        ticket,
    };
    let mut now = Instant::from_micros(1);
    // A squatter takes ticket 0; an honest waiter comes after it.
    line.handle(now, T, true, wait(9, 0));
    line.handle(now, T, true, wait(7, 1));
    assert_eq!(line.waiters(now), [key(9), key(7)]);
    // Both keep registering; while the lease is held, nobody is pushed.
    let step = T.fresh_for() / 3;
    for _ in 0..(3 * SQUAT_TERMS + 3) {
        now = now + step;
        line.handle(now, T, false, wait(9, 0));
        line.handle(now, T, false, wait(7, 1));
    }
    assert_eq!(line.waiters(now), [key(9), key(7)]);
    // The lease is free: first in line, the squatter never asks for it.
    // After SQUAT_TERMS terms it is at the back ...
    for _ in 0..(3 * SQUAT_TERMS + 2) {
        now = now + step;
        line.handle(now, T, true, wait(9, 0));
        line.handle(now, T, true, wait(7, 1));
    }
    assert_eq!(line.waiters(now), [key(7), key(9)]);
    // ... and stays there whatever ticket it names: the honest waiter's
    // turn.
    line.handle(now, T, true, wait(9, 0));
    assert_eq!(line.turn(now, &key(7)), Ok(()));
    assert_eq!(line.turn(now, &key(9)), Err(key(7)));
}

#[test]
fn a_squatter_first_in_line_holds_a_free_lease_up_for_a_while_not_forever() {
    let mut net = Net::new(1);
    // A hostile peer stands first at every member with ticket 0, again
    // and again, and never asks for the lease.
    let squat = |net: &mut Net| {
        let now = net.now;
        for (_, acceptor, line, home) in &mut net.members {
            let request = LineRequest::Wait {
                peer: key(1),
                ticket: 0,
            };
            line_answer(Kept { acceptor, line, home }, now, T, 0, request);
        }
    };
    squat(&mut net);
    // The honest client waits behind it for a while ...
    assert!(!net.run_until(T.fresh_for(), |n| {
        squat(n);
        n.held(0).is_some()
    }));
    // ... and then every member has sent the squatter to the back, and
    // the client takes the lease.
    assert!(net.run_until(T.fresh_for() * (SQUAT_TERMS + 1), |n| {
        squat(n);
        n.held(0).is_some()
    }));
}

#[test]
fn a_waiter_sent_back_where_it_could_not_take_the_lease_takes_its_new_place_at_every_member() {
    let mut net = Net::new(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.held(0).is_some()));
    // A and then B wait behind the holder.
    let a = net.add(1);
    let b = net.add(2);
    assert!(!net.run_until(Duration::from_millis(200), |_| false));
    // The holder goes, and members 3, 4 and 5 with it: A, first in line,
    // reaches only members 1 and 2, where the lease is free once the
    // holder's term is over, and stands first there without a majority
    // to take it: they send it back.
    net.clients.remove(0);
    let (a, b) = (a - 1, b - 1);
    for m in 3..=5 {
        net.down.insert(key(m));
    }
    let sent_back = |n: &mut Net| {
        n.members[..2]
            .iter()
            .all(|(_, _, line, _)| line.sent_back.contains_key(&key(101)))
    };
    assert!(net.run_until(T.fresh_for() * (SQUAT_TERMS + 2), sent_back));
    // Members 3 and 4 come back (5 stays down: a grant needs three of the
    // four). A learned its floor and registers it everywhere, so every
    // member has the same first: the lease is taken at once, not after
    // the members hold A back no more.
    net.down.remove(&key(3));
    net.down.remove(&key(4));
    assert!(net.run_until(T.fresh_for(), |n| n.held(a).is_some() || n.held(b).is_some()));
}

#[test]
fn one_member_naming_a_floor_does_not_send_back_a_waiter_a_majority_has_first_nor_far() {
    let first = LineAnswer::Place {
        ahead: 0,
        first: Some(key(100)),
        floor: 0,
    };
    // A hostile member answers first, naming the largest floor, and says
    // the waiter is first there (so a majority has it first) or not.
    for says_first in [true, false] {
        let hostile = LineAnswer::Place {
            ahead: 9,
            first: Some(if says_first { key(100) } else { key(9) }),
            floor: u64::MAX,
        };
        let now = Instant::from_micros(1);
        let members: Vec<Key> = (1..=5).map(key).collect();
        let mut a = Acquire::new(now, key(100), 0, Members::new(members.clone()), T);
        let Some(AcquireAction::Line { ask, .. }) = a.poll_action(now) else {
            panic!("a ticket is asked first")
        };
        for m in &members {
            a.handle_line(now, ask, *m, &LineAnswer::Ticket(0));
        }
        let Some(AcquireAction::Line { ask, .. }) = a.poll_action(now) else {
            panic!("then it registers")
        };
        a.handle_line(now, ask, members[4], &hostile);
        for m in &members[..4] {
            a.handle_line(now, ask, *m, &first);
        }
        if says_first {
            assert_eq!(a.ticket, 1, "a majority has it first: its ticket is its own");
            assert!(
                matches!(
                    a.poll_action(now),
                    Some(AcquireAction::Ask {
                        request: Request::Read,
                        ..
                    })
                ),
                "it goes on to read the lease"
            );
        } else {
            // Not first at a majority of those that answered: back, but
            // no further than a full line.
            assert_eq!(a.ticket, 1 + MAX_WAITERS as u64);
        }
    }
}

#[test]
fn a_change_in_flight_when_the_set_moves_is_asked_again_at_the_new_set_never_taken_by_the_move() {
    // An acquirer reads the lease free and asks for it as grant 4; before
    // a majority answers, the set moves, and the new set starts with grant
    // 4 as its grantee (a member that took the change was sealed with it)
    // — though the change may have reached only a minority while another
    // holds the lease. The acquirer must not hold the lease by the move.
    let now = Instant::from_micros(1);
    let old: Vec<Key> = (1..=5).map(key).collect();
    let mut a = Acquire::new(now, key(100), 0, Members::new(old.clone()), T);
    let ask = |a: &mut Acquire| match a.poll_action(now) {
        Some(AcquireAction::Line { ask, .. } | AcquireAction::Ask { ask, .. }) => ask,
        None => panic!("it asks"),
    };
    let n = ask(&mut a);
    for m in &old {
        a.handle_line(now, n, *m, &LineAnswer::Ticket(0));
    }
    let n = ask(&mut a);
    let first = LineAnswer::Place {
        ahead: 0,
        first: Some(key(100)),
        floor: 0,
    };
    for m in &old {
        a.handle_line(now, n, *m, &first);
    }
    let n = ask(&mut a);
    let free = View {
        grantee: Some(Grantee { peer: key(50), n: 3 }),
        lapsed: true,
        fresh_for: Duration::ZERO,
        max_n: 3,
        saved: None,
        result: None,
        moved_with: None,
    };
    for m in &old {
        a.handle_answer(now, n, *m, &Answer::View(free.clone()));
    }
    let change = match a.poll_action(now) {
        Some(AcquireAction::Ask {
            ask,
            request: Request::Change(to),
            ..
        }) => (ask, to),
        other => panic!("it asks for the lease, not {other:?}"),
    };
    assert_eq!(change.1.n, 4);
    let next = crate::rehome::Next {
        epoch: 1,
        members: Members::new((6..=10).map(key)),
        addrs: Vec::new(),
        grantee: Some(change.1),
        fresh_for: T.fresh_for(),
        max_n: 4,
    };
    for m in &old[..3] {
        a.handle_answer(
            now,
            change.0,
            *m,
            &Answer::Refused(Refusal::Moved(Box::new(next.clone()))),
        );
    }
    assert_eq!(a.epoch().0, 1, "it follows the move");
    // Whatever the new set would confirm, it is not renewing a grant.
    for _ in 0..10 {
        if let Some(AcquireAction::Ask {
            request: Request::Renew(_),
            ..
        }) = a.poll_action(now)
        {
            panic!("it renews a grant it never got");
        }
    }
    assert!(matches!(a.standing(now), Standing::Waiting { .. }));
}
