//! The `leases` scenario (issue 20): one named lease, five members keeping
//! it ([`Acceptor`] and [`Line`], answering through
//! [`shoal_resources::lease::answer`], as the node does), and clients that
//! take it ([`Acquire`]), hold it for a while and let it go, again and
//! again — under partitions, crashes of members (their disk kept, their
//! line lost) and of clients (their session lost), lost and late messages
//! and clock drift.
//!
//! With `home_churn` (the default) the lease's home changes too: a
//! member leaves for good now and then, and now and then a spare peer
//! comes nearer the name than a member. Every member does the node's
//! duty ([`Watch`], the node's own rule): every quarter of `gone_after`
//! it asks the other members of the set it serves whether they are
//! there, looks the home up when the watch says so (the world's order of
//! nearness: peers that left for good are out of it, peers down for a
//! while are not), asks the newcomers whether they are there, and moves
//! the set where the watch says ([`Rehome`], the node's own code), with
//! the clients following it there ([`Acquire`]). Five spare peers can
//! join the home; a client starts from the newest set any move finished
//! (as the node's lookup of the home would give).
//!
//! Each peer has its own clock, running at a rate within `1 ± drift` of
//! real time, started afresh at every restart. Messages take 0.2–5 ms, a
//! few take up to 3 s, some are lost. Faults come at random for `fault_s`
//! seconds, then the swarm heals for `heal_s` seconds.
//!
//! The oracle, in real time: the intervals during which two clients were
//! each allowed to act as the holder never overlap. With `down` members
//! down from the start and no other fault, the run measures the latency
//! of an acquire (from its start to holding, real time) and how many
//! acquires succeed.

use std::collections::BTreeMap;

use shoal_overlay::{Instant, Key, Rng};

use super::drift::{Clock, clock};
use shoal_resources::lease::{Acquire, AcquireAction, Kept, Line, LineAnswer, LineRequest, Standing, answer};
use shoal_resources::quorum::{Acceptor, Answer, Members, Request, Timing};
use shoal_resources::rehome::watch::{Serving, Step, Watch};
use shoal_resources::rehome::{Ballot, Home, Rehome, RehomeAnswer, RehomeRequest};

/// What one run (or sweep) does.
#[derive(Clone, Debug)]
pub struct LeaseSpec {
    /// Clients that want the lease.
    pub clients: usize,
    /// Clock rates lie within `1 ± drift` of real time.
    pub drift: f64,
    /// Share of messages lost.
    pub loss: f64,
    /// Seconds during which faults happen (0: none).
    pub fault_s: u64,
    /// Seconds of calm after them.
    pub heal_s: u64,
    /// Members down for the whole run (no other fault then).
    pub down: usize,
    /// The lease's term and margin.
    pub timing: Timing,
    /// Members leave for good and the home moves (see the module docs).
    pub home_churn: bool,
    /// How long a member may be silent before its set moves without it
    /// (the node's `--member-gone-after`, shorter here: a run lasts
    /// minutes).
    pub gone_after: std::time::Duration,
}

impl Default for LeaseSpec {
    fn default() -> Self {
        LeaseSpec {
            clients: 4,
            drift: 0.05,
            loss: 0.02,
            fault_s: 120,
            heal_s: 60,
            down: 0,
            timing: Timing::DEFAULT,
            home_churn: true,
            gone_after: std::time::Duration::from_secs(8),
        }
    }
}

/// What one seed showed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LeaseRun {
    /// The seed.
    pub seed: u64,
    /// Pairs of holders allowed to act at the same real time.
    pub overlaps: usize,
    /// Grants held (a client reached `Held`).
    pub grants: usize,
    /// Acquires started.
    pub acquires: usize,
    /// Real ms from an acquire's start to holding, for those in a run
    /// without faults that found the lease free.
    pub latencies_ms: Vec<f64>,
    /// The first violation, in words.
    pub first_violation: Option<String>,
    /// Members that left for good.
    pub left: usize,
    /// Moves of the member set that finished.
    pub moves: usize,
    /// Grants after the first move.
    pub grants_after_a_move: usize,
}

/// What a sweep over seeds showed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeaseSweep {
    /// Seeds `first_seed..first_seed + seeds`.
    pub first_seed: u64,
    /// How many.
    pub seeds: u64,
    /// Clock rates within `1 ± drift`.
    pub drift: f64,
    /// Members down throughout.
    pub down: usize,
    /// Overlapping holders, over all seeds.
    pub overlaps: usize,
    /// Grants, over all seeds.
    pub grants: usize,
    /// Acquires started, over all seeds.
    pub acquires: usize,
    /// Members that left for good, over all seeds.
    pub left: usize,
    /// Moves of the member set, over all seeds.
    pub moves: usize,
    /// Grants after a seed's first move, over all seeds.
    pub grants_after_a_move: usize,
    /// Seeds with a violation (at most 20).
    pub violating_seeds: Vec<u64>,
    /// The first violation, with its seed.
    pub first_violation: Option<String>,
    /// Acquire latency of a free lease, real ms: p50.
    pub acquire_ms_p50: f64,
    /// The same, p99.
    pub acquire_ms_p99: f64,
}

/// Runs `seeds` seeds from `first`.
pub fn leases_sweep(spec: &LeaseSpec, first: u64, seeds: u64) -> LeaseSweep {
    let mut sweep = LeaseSweep {
        first_seed: first,
        seeds,
        drift: spec.drift,
        down: spec.down,
        overlaps: 0,
        grants: 0,
        acquires: 0,
        left: 0,
        moves: 0,
        grants_after_a_move: 0,
        violating_seeds: Vec::new(),
        first_violation: None,
        acquire_ms_p50: 0.0,
        acquire_ms_p99: 0.0,
    };
    let mut latencies = Vec::new();
    for seed in first..first + seeds {
        let run = leases(spec, seed);
        sweep.overlaps += run.overlaps;
        sweep.grants += run.grants;
        sweep.acquires += run.acquires;
        sweep.left += run.left;
        sweep.moves += run.moves;
        sweep.grants_after_a_move += run.grants_after_a_move;
        if let Some(v) = &run.first_violation {
            if sweep.violating_seeds.len() < 20 {
                sweep.violating_seeds.push(seed);
            }
            sweep.first_violation.get_or_insert(format!("seed {seed}: {v}"));
        }
        latencies.extend(run.latencies_ms);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() - 1) as f64 * p).round() as usize]
        }
    };
    sweep.acquire_ms_p50 = at(0.5);
    sweep.acquire_ms_p99 = at(0.99);
    sweep
}

const MEMBERS: usize = 5;
/// Peers that may join the home: the first set, then the spares.
const POOL: usize = MEMBERS + 5;
/// Members that leave for good in one run, at most.
const MAX_LEFT: usize = 4;
const SECOND: u64 = 1_000_000;
/// How long a look waits for answers (the node's ask timeout).
const ASK_TIMEOUT: u64 = 2 * SECOND;

#[derive(Clone, Debug)]
enum Msg {
    Line {
        ask: u64,
        epoch: u64,
        request: LineRequest,
    },
    Ask {
        ask: u64,
        epoch: u64,
        request: Request,
    },
    LineAnswer {
        ask: u64,
        answer: LineAnswer,
    },
    Answer {
        ask: u64,
        answer: Answer,
    },
    Rehome {
        ask: u64,
        request: RehomeRequest,
    },
    RehomeAnswer {
        ask: u64,
        answer: RehomeAnswer,
    },
    /// A member's duty asks whether a peer is there (the node's
    /// `Describe`).
    Describe {
        look: u64,
    },
    /// Here: the epoch of the newest set it knows, if it keeps the key.
    Described {
        look: u64,
        epoch: Option<u64>,
    },
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        life: u32,
        msg: Box<Msg>,
    },
    Wake {
        peer: usize,
    },
    Fault,
    Heal,
    Restart {
        peer: usize,
    },
    /// Every member's duty looks at its set; during the faults, a spare
    /// may come nearer the name than a member.
    Look,
    /// A member's look stops waiting for answers.
    LookDue {
        peer: usize,
        look: u64,
    },
}

/// A member's look under way (lost when it crashes).
struct Looking {
    id: u64,
    /// What the member served when the look began (the node's duty works
    /// from the entry it read then): the set, its epoch, whether sealed,
    /// the installed value a move starts from.
    set: Members,
    epoch: u64,
    sealed: bool,
    installed: Option<shoal_resources::rehome::Next>,
    /// Asked, and not answered yet.
    waiting: Vec<usize>,
    /// The other members that answered, and the epoch each knows.
    answered: BTreeMap<Key, u64>,
    /// Once the home was looked up: it, and the newcomers that answered.
    home: Option<(Vec<Key>, std::collections::BTreeSet<Key>)>,
}

/// A client's current acquisition.
struct Session {
    acquire: Acquire,
    /// Real time it started.
    started: u64,
    /// Whether the lease looked free when it started (for the latency).
    free_at_start: bool,
    /// Real time it began to hold, until when (real) it may act, and its
    /// token.
    holding: Option<(u64, u64, u64)>,
    /// Real time at which it lets go once holding.
    hold_for: u64,
}

struct Peer {
    up: bool,
    life: u32,
    clock: Clock,
    /// Members: what they keep.
    acceptor: Acceptor,
    line: Line,
    home: Home,
    /// A move of the set it runs (lost when it crashes), and the epoch of
    /// the set it moves (the one it served when its look began).
    mover: Option<Rehome>,
    moving_from: u64,
    /// Its duty: what it remembers between looks, and the look under way
    /// (both lost when it crashes), and whether its set moved on without
    /// it (as the node's duty notes it).
    watch: Option<Watch>,
    looking: Option<Looking>,
    /// Set to the epoch of the set it served then (a later set that names
    /// it again is watched).
    left: Option<u64>,
    /// It left for good.
    gone: bool,
    /// The next round its moves may use.
    rounds: u64,
    /// Clients: the acquisition under way, and when to start the next.
    session: Option<Session>,
    next_start: Option<u64>,
    wake: Option<u64>,
}

struct World<'a> {
    spec: &'a LeaseSpec,
    rng: Rng,
    now: u64,
    peers: Vec<Peer>,
    keys: Vec<Key>,
    index: BTreeMap<Key, usize>,
    /// The newest set a move finished, and its epoch: where a newcomer
    /// starts.
    latest: (u64, Members),
    /// The first set (epoch 0).
    first: Members,
    /// The pool's peers, nearest the name first: the home a lookup finds.
    rank: Vec<usize>,
    looks: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    side: Vec<bool>,
    /// Every holding interval, real time: (start, end, client, token).
    held: Vec<(u64, u64, usize, u64)>,
    report: LeaseRun,
}

/// Runs one seed.
pub fn leases(spec: &LeaseSpec, seed: u64) -> LeaseRun {
    let mut rng = Rng::derive(seed, 20);
    let n = POOL + spec.clients.max(1);
    let keys: Vec<Key> = (0..n).map(|_| rng.key()).collect();
    let members = Members::new(keys[..MEMBERS].iter().copied());
    let index = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let peers = (0..n)
        .map(|_| Peer {
            up: true,
            life: 0,
            clock: clock(&mut rng, spec.drift),
            acceptor: Acceptor::new(),
            line: Line::default(),
            home: Home::default(),
            mover: None,
            moving_from: 0,
            watch: None,
            looking: None,
            left: None,
            gone: false,
            rounds: 1,
            session: None,
            next_start: None,
            wake: None,
        })
        .collect();
    let mut world = World {
        spec,
        rng,
        now: 0,
        peers,
        keys,
        index,
        latest: (0, members.clone()),
        first: members,
        rank: (0..POOL).collect(),
        looks: 0,
        queue: BTreeMap::new(),
        seq: 0,
        side: vec![false; n],
        held: Vec::new(),
        report: LeaseRun {
            seed,
            ..LeaseRun::default()
        },
    };
    for m in 0..spec.down.min(MEMBERS) {
        world.peers[m].up = false;
    }
    for c in POOL..n {
        let at = world.rng.below(2 * SECOND);
        world.peers[c].next_start = Some(at);
        world.schedule(c, at);
    }
    if spec.fault_s > 0 && spec.down == 0 {
        let first = world.rng.below(5 * SECOND);
        world.push(first, Ev::Fault);
    }
    if spec.home_churn && spec.down == 0 {
        world.push(2 * SECOND, Ev::Look);
    }
    let end = (spec.fault_s + spec.heal_s) * SECOND;
    while let Some(((at, _), ev)) = world.queue.pop_first() {
        if at > end {
            break;
        }
        world.now = at;
        world.handle(ev);
    }
    for c in POOL..n {
        world.stop_holding(c, end);
    }
    world.check();
    world.report
}

impl World<'_> {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn schedule(&mut self, peer: usize, at: u64) {
        let at = at.max(self.now);
        if self.peers[peer].wake.is_some_and(|w| w <= at && w >= self.now) {
            return;
        }
        self.peers[peer].wake = Some(at);
        self.push(at, Ev::Wake { peer });
    }

    fn local(&self, peer: usize) -> Instant {
        self.peers[peer].clock.local(self.now)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.side[from] != self.side[to] || self.rng.chance(self.spec.loss) {
            return;
        }
        let delay = if self.rng.chance(0.02) {
            self.rng.below(3 * SECOND)
        } else {
            200 + self.rng.below(4_800)
        };
        let life = self.peers[to].life;
        self.push(
            self.now + delay,
            Ev::Deliver {
                from,
                to,
                life,
                msg: Box::new(msg),
            },
        );
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, life, msg } => {
                if !self.peers[to].up || self.peers[to].life != life || self.side[from] != self.side[to] {
                    return;
                }
                self.deliver(from, to, *msg);
            }
            Ev::Wake { peer } => {
                if self.peers[peer].wake != Some(self.now) || !self.peers[peer].up {
                    return;
                }
                self.peers[peer].wake = None;
                self.tick(peer);
            }
            Ev::Fault => self.fault(),
            Ev::Heal => self.side = vec![false; self.peers.len()],
            Ev::Restart { peer } => self.restart(peer),
            Ev::Look => self.look(),
            Ev::LookDue { peer, look } => self.look_due(peer, look),
        }
    }

    /// Every member's duty: each up member that keeps the lease and is not
    /// looking or moving already starts a look; during the faults, a
    /// spare comes nearer the name than a member now and then.
    fn look(&mut self) {
        let every =
            (self.spec.gone_after / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(10));
        self.push(self.now + every.as_micros() as u64, Ev::Look);
        if self.now < self.spec.fault_s * SECOND && self.rng.chance(0.1) {
            let near = self.rng.index(MEMBERS);
            let far = MEMBERS + self.rng.index(POOL - MEMBERS);
            self.rank.swap(near, far);
        }
        for m in 0..POOL {
            let p = &self.peers[m];
            if !p.up || p.gone || p.left == Some(p.home.epoch()) || p.looking.is_some() || p.mover.is_some() {
                continue;
            }
            let Some(set) = self.serving(m) else { continue };
            self.looks += 1;
            let id = self.looks;
            let others: Vec<usize> = set.peers().iter().map(|k| self.index[k]).filter(|&i| i != m).collect();
            for &o in &others {
                self.send(m, o, Msg::Describe { look: id });
            }
            let home = &self.peers[m].home;
            let (epoch, sealed, installed) = (home.epoch(), home.sealed(), home.installed().cloned());
            self.peers[m].looking = Some(Looking {
                id,
                set,
                epoch,
                sealed,
                installed,
                waiting: others,
                answered: BTreeMap::new(),
                home: None,
            });
            self.push(self.now + ASK_TIMEOUT, Ev::LookDue { peer: m, look: id });
        }
    }

    /// The set member `m` serves, if it keeps the lease (a member of its
    /// set that did not move on): its installed set, or the first.
    fn serving(&self, m: usize) -> Option<Members> {
        let home = &self.peers[m].home;
        if home.moved().is_some() {
            return None;
        }
        let set = home
            .installed()
            .map_or_else(|| self.first.clone(), |n| n.members.clone());
        set.contains(&self.keys[m]).then_some(set)
    }

    /// An answer to member `m`'s look `look` from peer `from`.
    fn described(&mut self, m: usize, from: usize, look: u64, epoch: Option<u64>) {
        let key = self.keys[from];
        let own = self.peers[m].home.epoch();
        let Some(l) = self.peers[m].looking.as_mut().filter(|l| l.id == look) else {
            return;
        };
        let Some(at) = l.waiting.iter().position(|&w| w == from) else {
            return;
        };
        l.waiting.swap_remove(at);
        match &mut l.home {
            None => {
                l.answered.insert(key, epoch.unwrap_or(own));
            }
            Some((_, alive)) => {
                alive.insert(key);
            }
        }
        if l.waiting.is_empty() {
            self.look_due(m, look);
        }
    }

    /// Member `m`'s look `look` has its answers (or waited long enough):
    /// the watch says what next.
    fn look_due(&mut self, m: usize, look: u64) {
        if !self.peers[m].up || self.peers[m].looking.as_ref().is_none_or(|l| l.id != look) {
            return;
        }
        let local = self.local(m);
        let (gone_after, timing) = (self.spec.gone_after, self.spec.timing);
        let me = self.keys[m];
        // The overlay's answer to a lookup: the nearest peers still in it
        // (one down for a while is still in its tables).
        let present: Vec<Key> = self
            .rank
            .iter()
            .filter(|&&i| !self.peers[i].gone)
            .map(|&i| self.keys[i])
            .collect();
        let p = &mut self.peers[m];
        let watch = p.watch.get_or_insert_with(|| Watch::new(gone_after, MEMBERS));
        let Some(l) = p.looking.as_mut() else { return };
        let serving = Serving {
            me,
            set: &l.set,
            epoch: l.epoch,
            sealed: l.sealed,
            timing,
        };
        if let Some((home, alive)) = l.home.take() {
            let to = watch.choose(serving, &home, &alive);
            let Some(l) = p.looking.take() else { return };
            if let Some(to) = to {
                self.start_move(m, to, l.set, l.installed);
            }
            return;
        }
        let Step::FindHome { count } = watch.heard(local, serving, &l.answered) else {
            p.looking = None;
            return;
        };
        let home: Vec<Key> = present.into_iter().take(count).collect();
        let newcomers = watch.newcomers(serving, &home);
        l.home = Some((home, std::collections::BTreeSet::new()));
        let newcomers: Vec<usize> = newcomers.iter().map(|k| self.index[k]).collect();
        if newcomers.is_empty() {
            self.look_due(m, look);
            return;
        }
        self.looks += 1;
        let id = self.looks;
        if let Some(l) = self.peers[m].looking.as_mut() {
            l.id = id;
            l.waiting = newcomers.clone();
        }
        for o in newcomers {
            self.send(m, o, Msg::Describe { look: id });
        }
        self.push(self.now + ASK_TIMEOUT, Ev::LookDue { peer: m, look: id });
    }

    /// Member `m` moves the set it served when its look began (`from`,
    /// and the installed value `current`) to `to`.
    fn start_move(&mut self, m: usize, to: Members, from: Members, current: Option<shoal_resources::rehome::Next>) {
        let local = self.local(m);
        let me = self.keys[m];
        // A round above every one this peer used (kept on its disk).
        let p = &mut self.peers[m];
        p.rounds = p.rounds.max(p.home.next_round());
        let ballot = Ballot {
            round: p.rounds,
            by: me,
        };
        p.rounds += 1;
        p.moving_from = current.as_ref().map_or(0, |n| n.epoch);
        p.mover = Some(Rehome::new(
            local,
            ballot,
            current,
            from,
            to,
            Vec::new(),
            self.spec.timing,
        ));
        self.tick_mover(m);
    }

    /// Member `m` looks at the move it runs: sends what it must, and
    /// notes how it ended.
    fn tick_mover(&mut self, m: usize) {
        let local = self.local(m);
        let Some(mover) = self.peers[m].mover.as_mut() else {
            return;
        };
        if mover.poll_timeout().is_some_and(|t| t <= local) {
            mover.handle_timeout(local);
        }
        let mut out = Vec::new();
        while let Some(action) = mover.poll_action() {
            out.push(action);
        }
        let outcome = mover.outcome().cloned();
        let done = mover.is_done();
        let wake = mover.poll_timeout();
        for action in out {
            for k in action.to.peers() {
                let to = self.index[k];
                let msg = Msg::Rehome {
                    ask: action.ask,
                    request: action.request.clone(),
                };
                self.send(m, to, msg);
            }
        }
        if let Some(Ok(next)) = outcome {
            // Moved on without this member, which never learned so itself:
            // the node's duty stops looking at the set.
            let me = self.keys[m];
            if !next.members.contains(&me) && self.peers[m].home.moved().is_none() {
                self.peers[m].left = Some(self.peers[m].moving_from);
            }
            if next.epoch > self.latest.0 {
                self.report.moves += 1;
                self.latest = (next.epoch, next.members);
            }
        }
        if done {
            self.peers[m].mover = None;
        } else if let Some(w) = wake {
            let at = self.peers[m].clock.real(w);
            self.schedule(m, at.max(self.now + 1));
        }
    }

    fn fault(&mut self) {
        if self.now >= self.spec.fault_s * SECOND {
            return;
        }
        let set: Vec<usize> = self.latest.1.peers().iter().map(|k| self.index[k]).collect();
        let left = self.peers.iter().filter(|p| p.gone).count();
        if self.spec.home_churn && left < MAX_LEFT && set.iter().all(|&i| !self.peers[i].gone) && self.rng.chance(0.15)
        {
            // A member of the newest set leaves for good.
            let peer = set[self.rng.index(set.len())];
            if self.peers[peer].up {
                self.crash(peer);
            }
            self.peers[peer].gone = true;
            self.report.left += 1;
        } else if self.rng.chance(0.4) {
            self.side = (0..self.peers.len()).map(|_| self.rng.chance(0.5)).collect();
            let lasts = SECOND + self.rng.below(40 * SECOND);
            self.push(self.now + lasts, Ev::Heal);
        } else {
            let peer = self.rng.index(self.peers.len());
            if self.peers[peer].up && !self.peers[peer].gone {
                self.crash(peer);
                let down = SECOND + self.rng.below(30 * SECOND);
                self.push(self.now + down, Ev::Restart { peer });
            }
        }
        let next = self.now + SECOND + self.rng.below(8 * SECOND);
        self.push(next, Ev::Fault);
    }

    fn crash(&mut self, peer: usize) {
        self.stop_holding(peer, self.now);
        let p = &mut self.peers[peer];
        p.up = false;
        p.life += 1;
        p.session = None;
        p.line = Line::default();
        p.mover = None;
        p.watch = None;
        p.looking = None;
        p.left = None;
        p.wake = None;
    }

    fn restart(&mut self, peer: usize) {
        if self.peers[peer].gone {
            return;
        }
        let fresh = clock(&mut self.rng, self.spec.drift);
        let timing = self.spec.timing;
        let p = &mut self.peers[peer];
        p.up = true;
        p.clock = fresh;
        let local = p.clock.local(self.now);
        p.acceptor.restarted(local, timing);
        if peer >= POOL {
            p.next_start = Some(self.now);
            self.schedule(peer, self.now);
        }
    }

    /// Client `c` stops acting as the holder at real `at` (or earlier, if
    /// its tenure ran out before): its interval goes to the oracle.
    fn stop_holding(&mut self, c: usize, at: u64) {
        if let Some(s) = self.peers[c].session.as_mut()
            && let Some((since, until, token)) = s.holding.take()
        {
            self.held.push((since, at.min(until), c, token));
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let local = self.local(to);
        let timing = self.spec.timing;
        match msg {
            Msg::Line { ask, epoch, request } => {
                let p = &mut self.peers[to];
                let kept = Kept {
                    acceptor: &mut p.acceptor,
                    line: &mut p.line,
                    home: &p.home,
                };
                let answer = shoal_resources::lease::line_answer(kept, local, timing, epoch, request);
                self.send(to, from, Msg::LineAnswer { ask, answer });
            }
            Msg::Ask { ask, epoch, request } => {
                let asker = self.keys[from];
                let p = &mut self.peers[to];
                let kept = Kept {
                    acceptor: &mut p.acceptor,
                    line: &mut p.line,
                    home: &p.home,
                };
                let answer = answer(kept, local, timing, asker, epoch, request);
                self.send(to, from, Msg::Answer { ask, answer });
            }
            Msg::Rehome { ask, request } => {
                let p = &mut self.peers[to];
                let answer = p.home.handle(&mut p.acceptor, local, timing, request);
                self.send(to, from, Msg::RehomeAnswer { ask, answer });
            }
            Msg::Describe { look } => {
                let home = &self.peers[to].home;
                let keeps = home.installed().is_some() || home.moved().is_some() || to < MEMBERS;
                let epoch = keeps.then(|| home.moved().map_or(home.epoch(), |n| n.epoch));
                self.send(to, from, Msg::Described { look, epoch });
            }
            Msg::Described { look, epoch } => self.described(to, from, look, epoch),
            Msg::RehomeAnswer { ask, answer } => {
                let member = self.keys[from];
                if let Some(mover) = self.peers[to].mover.as_mut() {
                    mover.handle_answer(local, ask, member, &answer);
                }
                self.tick_mover(to);
            }
            Msg::LineAnswer { ask, answer } => {
                let member = self.keys[from];
                if let Some(s) = self.peers[to].session.as_mut() {
                    s.acquire.handle_line(local, ask, member, &answer);
                }
                self.tick(to);
            }
            Msg::Answer { ask, answer } => {
                let member = self.keys[from];
                if let Some(s) = self.peers[to].session.as_mut() {
                    s.acquire.handle_answer(local, ask, member, &answer);
                }
                self.tick(to);
            }
        }
    }

    /// A client looks at its session: starts one when due, sends what it
    /// must, notes when it began and stops holding, lets go when done.
    fn tick(&mut self, c: usize) {
        if c < POOL && self.peers[c].up {
            self.tick_mover(c);
        }
        if c < POOL || !self.peers[c].up {
            return;
        }
        let local = self.local(c);
        if self.peers[c].session.is_none() && self.peers[c].next_start.is_some_and(|t| t <= self.now) {
            self.peers[c].next_start = None;
            // Latency counts for a lease nobody else holds or wants.
            let free_at_start = self.spec.fault_s == 0 && !self.others_want(c);
            // Some hold it past a term, so that renewals (and a holder cut
            // off mid-hold) are part of every run.
            let hold_for = SECOND / 2 + self.rng.below(25 * SECOND);
            self.peers[c].session = Some(Session {
                acquire: Acquire::new(
                    local,
                    self.keys[c],
                    self.latest.0,
                    self.latest.1.clone(),
                    self.spec.timing,
                ),
                started: self.now,
                free_at_start,
                holding: None,
                hold_for,
            });
            self.report.acquires += 1;
        }
        let Some(s) = self.peers[c].session.as_mut() else {
            if let Some(t) = self.peers[c].next_start {
                self.schedule(c, t);
            }
            return;
        };
        if s.acquire.poll_timeout().is_some_and(|t| t <= local) {
            s.acquire.handle_timeout(local);
        }
        let mut out = Vec::new();
        while let Some(action) = s.acquire.poll_action(local) {
            out.push(action);
        }
        let standing = s.acquire.standing(local);
        let mut began = None;
        let mut ended = false;
        let p = &mut self.peers[c];
        let (clock, s) = (&p.clock, p.session.as_mut().expect("a session"));
        match standing {
            Standing::Held(g) => {
                let until = s.acquire.holds_until().map_or(self.now, |u| clock.real(u));
                match &mut s.holding {
                    Some((_, u, _)) => *u = (*u).max(until),
                    None => {
                        s.holding = Some((self.now, until, g.n));
                        began = Some(self.now - s.started);
                    }
                }
            }
            Standing::Lost(_) | Standing::Released => ended = true,
            Standing::Waiting { .. } => {}
        }
        if let Some(waited) = began {
            self.report.grants += 1;
            if self.report.moves > 0 {
                self.report.grants_after_a_move += 1;
            }
            if s.free_at_start {
                self.report.latencies_ms.push(waited as f64 / 1e3);
            }
        }
        let let_go = s.holding.is_some_and(|(since, _, _)| self.now >= since + s.hold_for);
        self.send_all(c, out);
        if let_go {
            self.stop_holding(c, self.now);
            if let Some(s) = self.peers[c].session.as_mut() {
                s.acquire.release(local);
            }
            // Its release goes out, then a pause before the next.
            self.tick_out(c);
            ended = true;
        }
        if ended {
            self.stop_holding(c, self.now);
            self.peers[c].session = None;
            let next = self.now + self.rng.below(3 * SECOND);
            self.peers[c].next_start = Some(next);
            self.schedule(c, next);
            return;
        }
        let s = self.peers[c].session.as_ref().expect("a session");
        let mut wake = s.acquire.poll_timeout().map(|t| self.peers[c].clock.real(t));
        if let Some((since, _, _)) = s.holding {
            let release_at = since + s.hold_for;
            wake = Some(wake.map_or(release_at, |w| w.min(release_at)));
        }
        if let Some(w) = wake {
            self.schedule(c, w.max(self.now + 1));
        }
    }

    /// Sends `out` from client `c` to every member of the set it asks.
    fn send_all(&mut self, c: usize, out: Vec<AcquireAction>) {
        let Some(s) = self.peers[c].session.as_ref() else {
            return;
        };
        let to: Vec<usize> = s.acquire.members().peers().iter().map(|k| self.index[k]).collect();
        for action in out {
            let msg = match action {
                AcquireAction::Line { ask, epoch, request } => Msg::Line { ask, epoch, request },
                AcquireAction::Ask { ask, epoch, request } => Msg::Ask { ask, epoch, request },
            };
            for &m in &to {
                self.send(c, m, msg.clone());
            }
        }
    }

    /// Sends what client `c`'s session has to send now.
    fn tick_out(&mut self, c: usize) {
        let local = self.local(c);
        let mut out = Vec::new();
        if let Some(s) = self.peers[c].session.as_mut() {
            while let Some(action) = s.acquire.poll_action(local) {
                out.push(action);
            }
        }
        self.send_all(c, out);
    }

    fn others_want(&self, c: usize) -> bool {
        self.peers
            .iter()
            .enumerate()
            .any(|(i, p)| i != c && p.session.is_some())
    }

    /// The oracle: no two holding intervals of different grants overlap.
    fn check(&mut self) {
        let mut held = self.held.clone();
        held.sort_unstable();
        // The interval that reaches furthest so far, against each next one.
        let mut reach: Option<(u64, u64, usize, u64)> = None;
        for b in held {
            if let Some(a) = reach
                && b.0 < a.1
                && (a.2, a.3) != (b.2, b.3)
            {
                self.report.overlaps += 1;
                self.report.first_violation.get_or_insert(format!(
                    "client {} (token {}) held {:.3}–{:.3} s and client {} (token {}) from {:.3} s",
                    a.2,
                    a.3,
                    a.0 as f64 / 1e6,
                    a.1 as f64 / 1e6,
                    b.2,
                    b.3,
                    b.0 as f64 / 1e6
                ));
            }
            if reach.is_none_or(|a| b.1 > a.1) {
                reach = Some(b);
            }
        }
    }
}
