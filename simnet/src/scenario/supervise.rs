//! The `supervise` scenario (issue 19): jobs supervised from their home
//! under partitions, crashes, lost and late messages and clock drift, with
//! an oracle that knows real time.
//!
//! A small swarm: five home members keep each job's tenure
//! ([`Acceptor`]); three of them supervise every job at once
//! ([`Supervision`], the worst case of a home in flux); four executors run
//! jobs while their [`Tenure`] lets them, save a checkpoint every few
//! seconds of work, and commit the result when the work is done. Each peer
//! has its own clock, running at a rate within `1 ± drift` of real time,
//! started afresh at every restart. Messages take 0.2–5 ms, a few take up
//! to 3 s, some are lost. Faults come at random for `fault_s` seconds —
//! a partition into two sides, a peer crashing (a member keeps its state on
//! disk, an executor loses its runs), a supervisor that gives a job away
//! without reading first (as one working from a stale view, or a hostile
//! member, would) — and then the swarm heals for `heal_s` seconds.
//!
//! With `peers` above nine, the same machines run in a swarm that size:
//! each job's home is the five peers nearest its key (the first three
//! supervise it), any other peer may run it, and `churn_per_s` crashes
//! peers at random besides the faults above (each comes back within a
//! minute, its disk kept), so that a job's executor, members and
//! supervisors come and go while it runs.
//!
//! The oracle, in real time: the intervals during which each grantee of a
//! job was allowed to act never overlap for two grantees; no job has two
//! results committed (held by a majority of its members); and every job is
//! committed by the end. A violation names its seed.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_overlay::{Instant, Key, Rng};

use super::drift::{Clock, clock};
use shoal_resources::compute::{SuperviseAction, Supervision};
use shoal_resources::quorum::{Acceptor, Answer, Grantee, Members, Outcome, Request, Saved, Tally, Tenure, Timing};

/// What one run (or sweep) does.
#[derive(Clone, Debug)]
pub struct SuperviseSpec {
    /// Jobs supervised at once.
    pub jobs: usize,
    /// Work each job needs, seconds of acting.
    pub work_s: f64,
    /// Seconds of work between two checkpoints.
    pub checkpoint_s: f64,
    /// Clock rates lie within `1 ± drift` of real time.
    pub drift: f64,
    /// Share of messages lost.
    pub loss: f64,
    /// Seconds during which faults happen.
    pub fault_s: u64,
    /// Seconds of calm after them.
    pub heal_s: u64,
    /// The tenure's term and margin.
    pub timing: Timing,
    /// Peers in the swarm. With the default, 9, five are every job's
    /// home and four its executors; with more, each job's home is the
    /// five peers nearest its key and any other peer may run it.
    pub peers: usize,
    /// Crashes per second of churn besides the faults above (each peer
    /// that crashes comes back after 1 to 60 s, its disk kept), for
    /// `fault_s` seconds.
    pub churn_per_s: f64,
}

impl Default for SuperviseSpec {
    fn default() -> Self {
        SuperviseSpec {
            jobs: 3,
            work_s: 20.0,
            checkpoint_s: 4.0,
            drift: 0.05,
            loss: 0.02,
            fault_s: 120,
            heal_s: 180,
            timing: Timing::DEFAULT,
            peers: MEMBERS + EXECUTORS,
            churn_per_s: 0.0,
        }
    }
}

/// What one seed showed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Pairs of grantees of one job allowed to act at the same real time.
    pub overlaps: usize,
    /// Jobs with two different results held by majorities.
    pub double_commits: usize,
    /// Jobs committed by the end.
    pub committed: usize,
    /// Placements made (grants that got a majority).
    pub placements: usize,
    /// Real seconds from an executor's crash that stopped a job to the job
    /// acting again elsewhere.
    pub recoveries_s: Vec<f64>,
    /// The first violation, in words.
    pub first_violation: Option<String>,
}

/// What a sweep over seeds showed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepReport {
    /// Seeds run: `first..first + seeds`.
    pub first_seed: u64,
    /// How many.
    pub seeds: u64,
    /// Clock rates within `1 ± drift`.
    pub drift: f64,
    /// Sum over seeds.
    pub overlaps: usize,
    /// Sum over seeds.
    pub double_commits: usize,
    /// Jobs not committed by the end, over all seeds.
    pub uncommitted: usize,
    /// Jobs run in all.
    pub jobs: usize,
    /// Seeds with any violation (overlap, double commit, job not
    /// committed), at most 20.
    pub violating_seeds: Vec<u64>,
    /// The first violation, in words, with its seed.
    pub first_violation: Option<String>,
    /// Recovery after an executor crash, real seconds: p50, p99, max, and
    /// how many.
    pub recovery_s_p50: f64,
    /// The same, 99th percentile.
    pub recovery_s_p99: f64,
    /// The same, the longest.
    pub recovery_s_max: f64,
    /// Crashes that stopped a running job.
    pub recoveries: usize,
}

/// Runs `seeds` seeds from `first`.
pub fn supervise_sweep(spec: &SuperviseSpec, first: u64, seeds: u64) -> SweepReport {
    let mut report = SweepReport {
        first_seed: first,
        seeds,
        drift: spec.drift,
        overlaps: 0,
        double_commits: 0,
        uncommitted: 0,
        jobs: 0,
        violating_seeds: Vec::new(),
        first_violation: None,
        recovery_s_p50: 0.0,
        recovery_s_p99: 0.0,
        recovery_s_max: 0.0,
        recoveries: 0,
    };
    let mut recoveries = Vec::new();
    for seed in first..first + seeds {
        let run = supervise(spec, seed);
        report.overlaps += run.overlaps;
        report.double_commits += run.double_commits;
        report.uncommitted += spec.jobs - run.committed;
        report.jobs += spec.jobs;
        if let Some(v) = &run.first_violation {
            if report.violating_seeds.len() < 20 {
                report.violating_seeds.push(seed);
            }
            if report.first_violation.is_none() {
                report.first_violation = Some(format!("seed {seed}: {v}"));
            }
        }
        recoveries.extend(run.recoveries_s);
    }
    recoveries.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if recoveries.is_empty() {
            0.0
        } else {
            recoveries[((recoveries.len() - 1) as f64 * p).round() as usize]
        }
    };
    report.recovery_s_p50 = at(0.5);
    report.recovery_s_p99 = at(0.99);
    report.recovery_s_max = at(1.0);
    report.recoveries = recoveries.len();
    report
}

const MEMBERS: usize = 5;
const SUPERVISORS: usize = 3;
const EXECUTORS: usize = 4;
const SECOND: u64 = 1_000_000;
/// How long a supervisor waits for an executor to take a claim.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// Who an answer from a member is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum For {
    Supervisor { ask: u64 },
    Renewal { grantee: Grantee, round: u64 },
    Commit { grantee: Grantee },
    Save,
}

#[derive(Clone, Debug)]
enum Msg {
    Ask { job: usize, to: For, request: Request },
    Answer { job: usize, to: For, answer: Answer },
    Claim { job: usize, n: u64, from: Option<Saved> },
    Took { job: usize, n: u64 },
    Drop { job: usize, grantee: Grantee },
    Go { job: usize, grantee: Grantee },
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
    Churn,
    Heal,
    Restart {
        peer: usize,
    },
}

/// A job as one executor runs it.
struct Run {
    tenure: Tenure,
    /// Work done, local µs.
    progress: u64,
    /// Since when (local) it was acting, if it is.
    acting_since: Option<Instant>,
    /// Real time it started acting (for the oracle), if it is.
    real_since: Option<u64>,
    next_save: u64,
    seq: u64,
    /// What it commits (its own result, or the one it adopted) and the
    /// tally of the latest attempt.
    commit: Option<(Vec<u8>, Tally)>,
}

struct Peer {
    up: bool,
    life: u32,
    clock: Clock,
    /// Per job whose home it is in: what it keeps as a member.
    acceptors: BTreeMap<usize, Acceptor>,
    /// Per job it supervises.
    supervisions: BTreeMap<usize, Supervision>,
    /// Claims in flight: job → (grant number, local deadline).
    claims: BTreeMap<usize, (u64, Instant)>,
    runs: BTreeMap<usize, Run>,
    wake: Option<u64>,
}

struct World<'a> {
    spec: &'a SuperviseSpec,
    rng: Rng,
    now: u64,
    peers: Vec<Peer>,
    /// Per job: its home (peer indices, nearest first; the first
    /// `SUPERVISORS` supervise it) and the same as a member set.
    homes: Vec<Vec<usize>>,
    members: Vec<Members>,
    keys: Vec<Key>,
    /// Peer by key.
    index: BTreeMap<Key, usize>,
    /// Jobs each peer supervises.
    supervises: Vec<Vec<usize>>,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    /// The side of each peer in the current partition (all `false`: none).
    side: Vec<bool>,
    /// Per job: the real intervals each grantee acted in.
    acted: Vec<BTreeMap<Grantee, Vec<(u64, u64)>>>,
    /// Per job: when an executor crash stopped it, waiting to act again.
    stopped_at: Vec<Option<u64>>,
    /// Per job: the result first held by a majority.
    committed: Vec<Option<Vec<u8>>>,
    /// Per job: whether a second result was seen committed.
    double: Vec<bool>,
    report: RunReport,
}

/// Runs one seed.
pub fn supervise(spec: &SuperviseSpec, seed: u64) -> RunReport {
    let mut rng = Rng::derive(seed, 19);
    let n = spec.peers.max(MEMBERS + 1);
    let keys: Vec<Key> = (0..n).map(|_| rng.key()).collect();
    let homes: Vec<Vec<usize>> = (0..spec.jobs)
        .map(|_| {
            if n == MEMBERS + EXECUTORS {
                return (0..MEMBERS).collect();
            }
            let job = rng.key();
            let mut near: Vec<usize> = (0..n).collect();
            near.select_nth_unstable_by_key(MEMBERS, |p| keys[*p].distance(&job));
            near.truncate(MEMBERS);
            near.sort_by_key(|p| keys[*p].distance(&job));
            near
        })
        .collect();
    let members: Vec<Members> = homes.iter().map(|h| Members::new(h.iter().map(|p| keys[*p]))).collect();
    let mut supervises = vec![Vec::new(); n];
    let mut peers: Vec<Peer> = (0..n)
        .map(|_| Peer {
            up: true,
            life: 0,
            clock: clock(&mut rng, spec.drift),
            acceptors: BTreeMap::new(),
            supervisions: BTreeMap::new(),
            claims: BTreeMap::new(),
            runs: BTreeMap::new(),
            wake: None,
        })
        .collect();
    for (job, home) in homes.iter().enumerate() {
        for (rank, p) in home.iter().enumerate() {
            peers[*p].acceptors.insert(job, Acceptor::new());
            if rank < SUPERVISORS {
                supervises[*p].push(job);
            }
        }
    }
    let index = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut world = World {
        spec,
        rng,
        now: 0,
        peers,
        homes,
        members,
        keys,
        index,
        supervises,
        queue: BTreeMap::new(),
        seq: 0,
        side: vec![false; n],
        acted: vec![BTreeMap::new(); spec.jobs],
        stopped_at: vec![None; spec.jobs],
        committed: vec![None; spec.jobs],
        double: vec![false; spec.jobs],
        report: RunReport {
            seed,
            ..RunReport::default()
        },
    };
    for p in 0..n {
        if !world.supervises[p].is_empty() {
            world.start_supervisions(p, true);
            world.reschedule(p);
        }
    }
    let first_fault = world.rng.below(5 * SECOND);
    world.push(first_fault, Ev::Fault);
    if spec.churn_per_s > 0.0 {
        world.push(first_fault, Ev::Churn);
    }
    let end = (spec.fault_s + spec.heal_s) * SECOND;
    while let Some(((at, _), ev)) = world.queue.pop_first() {
        if at > end {
            break;
        }
        world.now = at;
        world.handle(ev);
    }
    world.finish(end);
    world.report
}

impl World<'_> {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
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

    /// Starts `p`'s supervisions. At the start (`new`) each job's nearest
    /// member places it as its submitter does, as grant 1 without a first
    /// read ([`Supervision::first`]), racing the others; after a restart
    /// every supervisor reads first.
    fn start_supervisions(&mut self, p: usize, new: bool) {
        let local = self.local(p);
        let timing = self.spec.timing;
        self.peers[p].supervisions = self.supervises[p]
            .iter()
            .map(|job| {
                let start = if new && self.homes[*job].first() == Some(&p) {
                    Supervision::first
                } else {
                    Supervision::new
                };
                let s = start(
                    local,
                    self.members[*job].clone(),
                    timing,
                    timing.term / 2,
                    Duration::from_secs(1),
                );
                (*job, s)
            })
            .collect();
    }

    fn peers(&self) -> usize {
        self.peers.len()
    }

    /// A peer outside `job`'s home, other than `avoid`, at random.
    fn executor_for(&mut self, job: usize, avoid: Option<Key>) -> usize {
        if self.peers() == MEMBERS + EXECUTORS {
            let choices: Vec<usize> = (MEMBERS..self.peers())
                .filter(|e| Some(self.keys[*e]) != avoid)
                .collect();
            return choices[self.rng.index(choices.len())];
        }
        loop {
            let e = self.rng.index(self.peers());
            if !self.homes[job].contains(&e) && Some(self.keys[e]) != avoid {
                return e;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, life, msg } => {
                // Lost if the receiver is down or restarted since, or if a
                // partition now lies between.
                if !self.peers[to].up || self.peers[to].life != life || self.side[from] != self.side[to] {
                    return;
                }
                self.deliver(from, to, *msg);
                self.reschedule(to);
            }
            Ev::Wake { peer } => {
                if self.peers[peer].wake != Some(self.now) || !self.peers[peer].up {
                    return;
                }
                self.peers[peer].wake = None;
                self.tick(peer);
                self.reschedule(peer);
            }
            Ev::Fault => self.fault(),
            Ev::Churn => {
                if self.now < self.spec.fault_s * SECOND {
                    let peer = self.rng.index(self.peers());
                    if self.peers[peer].up {
                        self.crash(peer);
                        let down = SECOND + self.rng.below(59 * SECOND);
                        self.push(self.now + down, Ev::Restart { peer });
                    }
                    let gap = -(1.0 - self.rng.unit_f64()).ln() / self.spec.churn_per_s;
                    self.push(self.now + (gap * SECOND as f64) as u64 + 1, Ev::Churn);
                }
            }
            Ev::Heal => self.side = vec![false; self.peers()],
            Ev::Restart { peer } => self.restart(peer),
        }
    }

    fn fault(&mut self) {
        if self.now >= self.spec.fault_s * SECOND {
            return;
        }
        let roll = self.rng.unit_f64();
        if roll < 0.2 {
            self.rogue_change();
        } else if roll < 0.6 {
            // A partition: each peer on one side or the other.
            self.side = (0..self.peers()).map(|_| self.rng.chance(0.5)).collect();
            let lasts = SECOND + self.rng.below(40 * SECOND);
            self.push(self.now + lasts, Ev::Heal);
        } else {
            let peer = self.rng.index(self.peers());
            if self.peers[peer].up {
                self.crash(peer);
                let down = SECOND + self.rng.below(30 * SECOND);
                self.push(self.now + down, Ev::Restart { peer });
            }
        }
        let next = self.now + SECOND + self.rng.below(8 * SECOND);
        self.push(next, Ev::Fault);
    }

    /// A supervisor that works from a stale view (or a hostile member)
    /// gives a job to an executor without reading first, with a grant
    /// number above every one used: only the members' rule stands between
    /// it and a second executor acting.
    fn rogue_change(&mut self) {
        let job = self.rng.index(self.spec.jobs);
        let from = self.homes[job][self.rng.index(SUPERVISORS)];
        let executor = self.executor_for(job, None);
        if !self.peers[from].up {
            return;
        }
        let home = self.homes[job].clone();
        let n = 1 + home
            .iter()
            .map(|m| self.peers[*m].acceptors[&job].view(Instant::ZERO).max_n)
            .max()
            .unwrap_or(0);
        let grantee = Grantee {
            peer: self.keys[executor],
            n,
        };
        self.send(from, executor, Msg::Claim { job, n, from: None });
        for m in home {
            self.send(
                from,
                m,
                Msg::Ask {
                    job,
                    to: For::Supervisor { ask: u64::MAX },
                    request: Request::Change(grantee),
                },
            );
        }
        self.send(from, executor, Msg::Go { job, grantee });
    }

    fn crash(&mut self, peer: usize) {
        let runs = std::mem::take(&mut self.peers[peer].runs);
        for (job, mut run) in runs {
            if run.real_since.is_some() {
                self.stopped_at[job].get_or_insert(self.now);
            }
            self.close(job, &mut run, self.now);
        }
        let p = &mut self.peers[peer];
        p.up = false;
        p.life += 1;
        p.supervisions.clear();
        p.claims.clear();
        p.wake = None;
    }

    fn restart(&mut self, peer: usize) {
        let fresh = clock(&mut self.rng, self.spec.drift);
        let timing = self.spec.timing;
        let p = &mut self.peers[peer];
        p.up = true;
        p.clock = fresh;
        let local = p.clock.local(self.now);
        for a in p.acceptors.values_mut() {
            a.restarted(local, timing);
        }
        if !self.supervises[peer].is_empty() {
            self.start_supervisions(peer, false);
        }
        self.reschedule(peer);
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let local = self.local(to);
        match msg {
            Msg::Ask { job, to: whom, request } => {
                let Some(acceptor) = self.peers[to].acceptors.get_mut(&job) else {
                    return;
                };
                let answer = acceptor.handle(local, self.spec.timing, request);
                self.check_commits(job);
                self.send(to, from, Msg::Answer { job, to: whom, answer });
            }
            Msg::Answer { job, to: whom, answer } => {
                let member = self.keys[from];
                match whom {
                    For::Supervisor { ask } => {
                        if let Some(s) = self.peers[to].supervisions.get_mut(&job) {
                            s.handle_answer(local, ask, member, answer);
                        }
                    }
                    For::Renewal { grantee, round } => {
                        self.progress(to, job);
                        if let Some(run) = self.peers[to].runs.get_mut(&job)
                            && run.tenure.grantee() == grantee
                        {
                            run.tenure.handle_answer(local, round, member, &answer);
                        }
                        self.progress(to, job);
                    }
                    For::Commit { grantee } => {
                        let done = match self.peers[to].runs.get_mut(&job) {
                            Some(run) if run.tenure.grantee() == grantee => match run.commit.as_mut() {
                                Some((_, tally)) => match answer {
                                    Answer::Ok => tally.agree(member) == Outcome::Agreed,
                                    _ => {
                                        let _ = tally.refuse(member);
                                        false
                                    }
                                },
                                None => false,
                            },
                            _ => false,
                        };
                        if done && let Some(mut run) = self.peers[to].runs.remove(&job) {
                            run.tenure.stop();
                            self.close(job, &mut run, self.now);
                        }
                    }
                    For::Save => {}
                }
            }
            Msg::Claim { job, n, from: saved } => {
                let grantee = Grantee { peer: self.keys[to], n };
                if let Some(old) = self.peers[to].runs.get(&job)
                    && old.tenure.grantee().n >= n
                {
                    return;
                }
                if let Some(mut old) = self.peers[to].runs.remove(&job) {
                    self.close(job, &mut old, self.now);
                }
                let progress = saved
                    .and_then(|s| <[u8; 8]>::try_from(s.state.as_slice()).ok())
                    .map_or(0, u64::from_be_bytes);
                let checkpoint = (self.spec.checkpoint_s * SECOND as f64) as u64;
                self.peers[to].runs.insert(
                    job,
                    Run {
                        tenure: Tenure::new(local, grantee, self.members[job].clone(), self.spec.timing),
                        progress,
                        acting_since: None,
                        real_since: None,
                        next_save: progress + checkpoint,
                        seq: 0,
                        commit: None,
                    },
                );
                self.send(to, from, Msg::Took { job, n });
            }
            Msg::Took { job, n } => {
                if self.peers[to].claims.get(&job).is_some_and(|(want, _)| *want == n) {
                    self.peers[to].claims.remove(&job);
                    if let Some(s) = self.peers[to].supervisions.get_mut(&job) {
                        s.handle_placed(local, n, Some(self.keys[from]));
                    }
                }
            }
            Msg::Go { job, grantee } => {
                if let Some(run) = self.peers[to].runs.get_mut(&job)
                    && run.tenure.grantee() == grantee
                {
                    run.tenure.renew_now(local);
                }
            }
            Msg::Drop { job, grantee } => {
                if self.peers[to]
                    .runs
                    .get(&job)
                    .is_some_and(|r| r.tenure.grantee() == grantee)
                    && let Some(mut run) = self.peers[to].runs.remove(&job)
                {
                    run.tenure.stop();
                    self.close(job, &mut run, self.now);
                }
            }
        }
        self.tick(to);
    }

    /// Runs every machine of `peer` that is due.
    fn tick(&mut self, peer: usize) {
        let local = self.local(peer);
        // Supervisions.
        let supervised: Vec<usize> = self.peers[peer].supervisions.keys().copied().collect();
        for job in supervised {
            if self.peers[peer].claims.get(&job).is_some_and(|(_, at)| *at <= local) {
                let (n, _) = self.peers[peer].claims.remove(&job).unwrap_or_default();
                if let Some(s) = self.peers[peer].supervisions.get_mut(&job) {
                    s.handle_placed(local, n, None);
                }
            }
            let Some(s) = self.peers[peer].supervisions.get_mut(&job) else {
                continue;
            };
            if s.poll_timeout().is_some_and(|at| at <= local) {
                s.handle_timeout(local);
            }
            while let Some(action) = self.peers[peer]
                .supervisions
                .get_mut(&job)
                .and_then(Supervision::poll_action)
            {
                match action {
                    SuperviseAction::Ask { ask, request } => {
                        for m in self.homes[job].clone() {
                            let msg = Msg::Ask {
                                job,
                                to: For::Supervisor { ask },
                                request: request.clone(),
                            };
                            if m == peer {
                                self.deliver_local(peer, m, msg);
                            } else {
                                self.send(peer, m, msg);
                            }
                        }
                    }
                    SuperviseAction::Place { n, avoid, from, .. } => {
                        let executor = self.executor_for(job, avoid);
                        self.peers[peer].claims.insert(job, (n, local + CLAIM_WAIT));
                        self.send(peer, executor, Msg::Claim { job, n, from });
                    }
                    SuperviseAction::Abandon(grantee) => {
                        if let Some(e) = self.index.get(&grantee.peer).copied() {
                            self.send(peer, e, Msg::Drop { job, grantee });
                        }
                    }
                    SuperviseAction::Granted(grantee) => {
                        if let Some(e) = self.index.get(&grantee.peer).copied() {
                            self.send(peer, e, Msg::Go { job, grantee });
                        }
                    }
                }
            }
        }
        // Runs.
        let jobs: Vec<usize> = self.peers[peer].runs.keys().copied().collect();
        for job in jobs {
            self.progress(peer, job);
            let Some(run) = self.peers[peer].runs.get_mut(&job) else {
                continue;
            };
            let grantee = run.tenure.grantee();
            let mut out = Vec::new();
            if let Some(round) = run.tenure.poll_renew(local) {
                out.push((For::Renewal { grantee, round }, Request::Renew(grantee)));
                if let Some((result, tally)) = &mut run.commit {
                    // Not committed yet: again, counted afresh.
                    *tally = Tally::new(self.members[job].clone());
                    out.push((
                        For::Commit { grantee },
                        Request::Commit {
                            by: grantee,
                            result: result.clone(),
                        },
                    ));
                }
            }
            let work = (self.spec.work_s * SECOND as f64) as u64;
            if run.acting_since.is_some() && run.progress >= run.next_save && run.progress < work {
                run.seq += 1;
                run.next_save = run.progress + (self.spec.checkpoint_s * SECOND as f64) as u64;
                out.push((
                    For::Save,
                    Request::Save(Saved {
                        by: grantee,
                        seq: run.seq,
                        state: run.progress.to_be_bytes().to_vec(),
                    }),
                ));
            }
            // A result an earlier grantee may have committed binds this
            // one: it commits that at once. Otherwise its own, once the
            // work is done.
            let due = match run.tenure.adopted() {
                Some(adopted) => Some(adopted.to_vec()),
                None => (run.progress >= work).then(|| result_of(job, grantee)),
            };
            if let Some(result) = due.filter(|_| run.acting_since.is_some() && run.commit.is_none()) {
                run.commit = Some((result.clone(), Tally::new(self.members[job].clone())));
                out.push((For::Commit { grantee }, Request::Commit { by: grantee, result }));
            }
            let ended = run.tenure.ended().is_some();
            for (to, request) in out {
                for m in self.homes[job].clone() {
                    self.send(
                        peer,
                        m,
                        Msg::Ask {
                            job,
                            to,
                            request: request.clone(),
                        },
                    );
                }
            }
            if ended && let Some(mut run) = self.peers[peer].runs.remove(&job) {
                self.close(job, &mut run, self.now);
            }
        }
    }

    /// A supervisor asking the member on its own peer: no network.
    fn deliver_local(&mut self, peer: usize, member: usize, msg: Msg) {
        let local = self.local(peer);
        if let Msg::Ask { job, to, request } = msg {
            let Some(acceptor) = self.peers[member].acceptors.get_mut(&job) else {
                return;
            };
            let answer = acceptor.handle(local, self.spec.timing, request);
            self.check_commits(job);
            if let (For::Supervisor { ask }, Some(s)) = (to, self.peers[peer].supervisions.get_mut(&job)) {
                s.handle_answer(local, ask, self.keys[member], answer);
            }
        }
    }

    /// Counts the work of a run up to now, and notes when it starts or
    /// stops acting (the oracle's intervals).
    fn progress(&mut self, peer: usize, job: usize) {
        let local = self.local(peer);
        let clock_real = |c: &Clock, l: Instant| c.real(l);
        let p = &mut self.peers[peer];
        let Some(run) = p.runs.get_mut(&job) else {
            return;
        };
        let until = run.tenure.acts_until();
        if let Some(since) = run.acting_since {
            let stop = until.map_or(since, |u| u.min(local));
            run.progress += stop.saturating_since(since).as_micros() as u64;
            run.acting_since = Some(stop.max(since));
        }
        let acting = run.tenure.may_act(local);
        match (acting, run.real_since) {
            (true, None) => {
                run.acting_since = Some(local);
                run.real_since = Some(self.now);
                if let Some(at) = self.stopped_at[job].take() {
                    self.report.recoveries_s.push((self.now - at) as f64 / SECOND as f64);
                }
            }
            (false, Some(since)) => {
                // It stopped when its tenure ran out (by its clock), or now.
                let end = until.map_or(self.now, |u| clock_real(&p.clock, u).min(self.now));
                let grantee = run.tenure.grantee();
                run.real_since = None;
                run.acting_since = None;
                self.acted[job]
                    .entry(grantee)
                    .or_default()
                    .push((since, end.max(since)));
            }
            (true, Some(_)) | (false, None) => {}
        }
    }

    /// A run ends (stopped, dropped, crashed, done): its interval closes.
    fn close(&mut self, job: usize, run: &mut Run, now: u64) {
        if let Some(since) = run.real_since.take() {
            self.acted[job]
                .entry(run.tenure.grantee())
                .or_default()
                .push((since, now.max(since)));
        }
    }

    /// The oracle's commit check, after every change at a member: a result
    /// a majority holds is committed, and it must never change.
    fn check_commits(&mut self, job: usize) {
        let mut held: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for m in &self.homes[job] {
            if let Some((_, r)) = self.peers[*m].acceptors[&job].view(Instant::ZERO).result {
                *held.entry(r).or_default() += 1;
            }
        }
        let Some((value, _)) = held.into_iter().find(|(_, n)| *n >= self.members[job].majority()) else {
            return;
        };
        match &self.committed[job] {
            None => self.committed[job] = Some(value),
            Some(first) if *first == value => {}
            Some(first) => {
                if !self.double[job] {
                    self.double[job] = true;
                    self.report.double_commits += 1;
                }
                let what = format!(
                    "job {job}: committed {:?}, then {:?}",
                    String::from_utf8_lossy(first),
                    String::from_utf8_lossy(&value)
                );
                self.violation(what);
            }
        }
    }

    fn reschedule(&mut self, peer: usize) {
        if !self.peers[peer].up {
            return;
        }
        let p = &self.peers[peer];
        let mut next: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for s in p.supervisions.values() {
            consider(s.poll_timeout());
        }
        for (_, at) in p.claims.values() {
            consider(Some(*at));
        }
        for run in p.runs.values() {
            consider(run.tenure.poll_timeout());
        }
        let Some(next) = next else { return };
        let real = p.clock.real(next).max(self.now + 1);
        if p.wake.is_none_or(|w| real < w || w <= self.now) {
            self.peers[peer].wake = Some(real);
            self.push(real, Ev::Wake { peer });
        }
    }

    fn finish(&mut self, end: u64) {
        for peer in 0..self.peers() {
            let jobs: Vec<usize> = self.peers[peer].runs.keys().copied().collect();
            for job in jobs {
                self.progress(peer, job);
                if let Some(mut run) = self.peers[peer].runs.remove(&job) {
                    self.close(job, &mut run, end);
                }
            }
        }
        for job in 0..self.spec.jobs {
            // Overlaps between grantees.
            let intervals: Vec<(Grantee, u64, u64)> = self.acted[job]
                .iter()
                .flat_map(|(g, v)| v.iter().map(move |(s, e)| (*g, *s, *e)))
                .filter(|(_, s, e)| e > s)
                .collect();
            for (i, a) in intervals.iter().enumerate() {
                for b in &intervals[i + 1..] {
                    if a.0 != b.0 && a.1 < b.2 && b.1 < a.2 {
                        self.report.overlaps += 1;
                        self.violation(format!(
                            "job {job}: grantees n={} and n={} both acted from {:.3} s to {:.3} s",
                            a.0.n,
                            b.0.n,
                            a.1.max(b.1) as f64 / 1e6,
                            a.2.min(b.2) as f64 / 1e6
                        ));
                    }
                }
            }
            if self.committed[job].is_none() {
                self.violation(format!("job {job} was not committed by the end"));
            } else {
                self.report.committed += 1;
            }
            self.report.placements += self.acted[job].len();
        }
    }

    fn violation(&mut self, what: String) {
        if self.report.first_violation.is_none() {
            self.report.first_violation = Some(what);
        }
    }
}

/// What a grantee's run of a job produces: different for each grantee,
/// so that the oracle sees two results if two were ever committed.
fn result_of(job: usize, by: Grantee) -> Vec<u8> {
    format!("job {job} done by grant {}", by.n).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_overlap_no_double_commit_and_every_job_done_over_many_seeds() {
        let report = supervise_sweep(&SuperviseSpec::default(), 0, 40);
        assert_eq!(report.overlaps, 0, "{report:?}");
        assert_eq!(report.double_commits, 0, "{report:?}");
        assert_eq!(report.uncommitted, 0, "{report:?}");
        assert!(
            report.recoveries > 0,
            "executor crashes stopped running jobs: {report:?}"
        );
    }

    #[test]
    fn clocks_that_drift_past_the_margin_break_it_and_the_oracle_says_so() {
        // The margin covers rates within 10% (1 s of 10 s); at 40% the
        // executor runs on after the members let another go.
        let spec = SuperviseSpec {
            drift: 0.4,
            ..SuperviseSpec::default()
        };
        let report = supervise_sweep(&spec, 0, 40);
        assert!(report.overlaps > 0, "{report:?}");
        assert!(!report.violating_seeds.is_empty());
    }

    #[test]
    fn in_a_larger_swarm_with_churn_every_job_is_done_once() {
        // Each job's home is the five peers nearest its key; peers crash
        // besides the faults, about one in three of them over the run.
        let spec = SuperviseSpec {
            peers: 300,
            jobs: 60,
            churn_per_s: 1.0,
            ..SuperviseSpec::default()
        };
        let report = supervise_sweep(&spec, 0, 2);
        assert_eq!(report.overlaps, 0, "{report:?}");
        assert_eq!(report.double_commits, 0, "{report:?}");
        assert_eq!(report.uncommitted, 0, "{report:?}");
        assert!(report.recoveries > 0, "{report:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let spec = SuperviseSpec::default();
        assert_eq!(
            format!("{:?}", supervise(&spec, 7)),
            format!("{:?}", supervise(&spec, 7))
        );
    }
}
