//! The scenarios the `shoal-simnet` binary runs, also usable from Rust.

use std::collections::BTreeMap;
use std::time::{Duration, Instant as WallClock};

use shoal_overlay::{Config, Key, Rng};

use crate::checkpoint::CheckpointError;
use crate::churn::SessionDist;
use crate::net::{NetConfig, Partition, Preset};
use crate::report::{ChurnCounts, PhaseSuccess, Report, success};
use crate::sim::{PeerIndex, PeerState, Sim, SimConfig, Violation};

const SECOND: u64 = 1_000_000;
const MINUTE: u64 = 60 * SECOND;

/// Settings every scenario shares.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Swarm {
    /// Number of peers.
    pub peers: usize,
    /// Seed of the whole run.
    pub seed: u64,
    /// Network preset.
    pub net: Preset,
    /// Peers that start joining per virtual second.
    pub join_rate: f64,
    /// Disjoint lookup paths.
    pub disjoint_paths: usize,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message arrives twice.
    pub duplication: f64,
    /// Stop adding peers once resident memory passes this many MiB, and run
    /// the scenario with the peers joined so far (`None`: no limit).
    pub max_rss_mb: Option<u64>,
    /// Print join progress to standard error.
    pub progress: bool,
    /// How long a bucket may go without a lookup before it is refreshed
    /// (`None`: the overlay's default).
    pub refresh_interval: Option<Duration>,
    /// How often each core runs its maintenance round: neighbour probes,
    /// stale-entry probes, idle-bucket checks (`None`: the overlay's
    /// default).
    pub maintenance_interval: Option<Duration>,
    /// How often a home member re-sends its records to the rest of the
    /// home (`None`: the overlay's default).
    pub replicate_interval: Option<Duration>,
}

/// A joined swarm, ready for a scenario.
#[derive(Debug)]
pub struct Joined {
    /// The simulation.
    pub sim: Sim,
    /// Wall time the join phase took.
    pub wall_s: f64,
    /// Why fewer peers joined than asked for, if they did.
    pub note: Option<String>,
}

impl Swarm {
    /// A swarm of `peers` with the defaults.
    pub fn new(peers: usize, seed: u64) -> Self {
        Swarm {
            peers,
            seed,
            net: Preset::Lan,
            join_rate: 200.0,
            disjoint_paths: 1,
            loss: 0.0,
            duplication: 0.0,
            max_rss_mb: None,
            progress: false,
            refresh_interval: None,
            maintenance_interval: None,
            replicate_interval: None,
        }
    }

    /// The overlay settings every core of this swarm runs with.
    fn overlay_config(&self) -> Config {
        let mut overlay = Config::new(crate::sim::sim_verifier());
        overlay.disjoint_paths = self.disjoint_paths;
        if let Some(refresh) = self.refresh_interval {
            overlay.refresh_interval = refresh;
        }
        if let Some(maintenance) = self.maintenance_interval {
            overlay.maintenance_interval = maintenance;
        }
        if let Some(replicate) = self.replicate_interval {
            overlay.replicate_interval = replicate;
        }
        overlay.request_timeout = match self.net {
            Preset::Lan => Duration::from_millis(500),
            Preset::Wan => Duration::from_secs(2),
        };
        overlay
    }

    fn sim(&self) -> Sim {
        let mut net = NetConfig::preset(self.net);
        net.loss = self.loss;
        net.duplication = self.duplication;
        let overlay = self.overlay_config();
        Sim::new(SimConfig {
            seed: self.seed,
            net,
            overlay,
            check_interval: Duration::from_secs(30),
            check_sample: 64,
        })
    }

    fn net_name(&self) -> &'static str {
        match self.net {
            Preset::Lan => "lan",
            Preset::Wan => "wan",
        }
    }

    /// Creates the sim and joins every peer through the protocol, one after
    /// another at `join_rate`, each through a random peer already joined.
    pub fn join(&self) -> Result<Joined, Violation> {
        self.join_with(|_| {})
    }

    /// As [`join`](Self::join), with `setup` applied to the simulation
    /// before the first peer starts.
    pub fn join_with(&self, setup: impl FnOnce(&mut Sim)) -> Result<Joined, Violation> {
        let wall = WallClock::now();
        let mut sim = self.sim();
        setup(&mut sim);
        let gap = (SECOND as f64 / self.join_rate.max(1e-3)) as u64;
        let mut note = None;
        for i in 0..self.peers {
            if i % 4096 == 0 && i > 0 {
                let rss_mb = crate::report::rss_bytes() / (1024 * 1024);
                if self.progress {
                    eprintln!(
                        "joining: {i} of {} peers started, {:.0} s wall, {rss_mb} MiB resident",
                        self.peers,
                        wall.elapsed().as_secs_f64()
                    );
                }
                if let Some(limit) = self.max_rss_mb.filter(|limit| rss_mb > *limit) {
                    note = Some(format!(
                        "stopped adding peers at {i} of {}: resident memory reached {rss_mb} MiB (limit {limit} MiB)",
                        self.peers
                    ));
                    break;
                }
            }
            let peer = sim.add_slot();
            sim.run_until(i as u64 * gap)?;
            sim.start(peer);
        }
        // Let the last joins finish and the swarm settle.
        let settle = sim.now_us() + MINUTE;
        sim.run_until(settle)?;
        if sim.live() < sim.slots() {
            return Err(Violation {
                seed: self.seed,
                time_s: sim.now_s(),
                peer: None,
                message: format!("only {} of {} peers finished joining", sim.live(), sim.slots()),
            });
        }
        Ok(Joined {
            sim,
            wall_s: wall.elapsed().as_secs_f64(),
            note,
        })
    }
}

/// `lookups`: join, then `lookups` lookups for random keys from random peers.
pub fn lookups(swarm: &Swarm, lookups: usize, rate_per_s: f64) -> Result<Report, Violation> {
    let wall = WallClock::now();
    let Joined {
        mut sim,
        wall_s: join_wall,
        note,
    } = swarm.join()?;
    let start = sim.now_us();
    let gap = (SECOND as f64 / rate_per_s.max(1e-3)) as u64;
    let mut rng = Rng::derive(swarm.seed, 1);
    for i in 0..lookups {
        sim.run_until(start + i as u64 * gap)?;
        let from = sim.random_live().unwrap_or(0);
        sim.lookup(from, rng.key());
    }
    sim.run_until_idle(sim.now_us() + 10 * MINUTE)?;
    sim.check_all()?;
    let all = sim.lookups.clone();
    let measured: Vec<_> = all.iter().collect();
    let mut report = Report::build(
        "lookups",
        &mut sim,
        swarm.net_name(),
        &measured,
        wall.elapsed().as_secs_f64(),
        join_wall,
    );
    report.note = note;
    Ok(report)
}

/// Settings of the churn scenario.
#[derive(Clone, Debug)]
pub struct ChurnSpec {
    /// Simulated hours of churn.
    pub hours: f64,
    /// Median session length.
    pub session_median: Duration,
    /// Median time a departed peer stays away before it restarts.
    pub downtime_median: Duration,
    /// Session length distribution.
    pub dist: SessionDist,
    /// Fraction of departures that are crashes (the rest leave gracefully).
    pub crash_fraction: f64,
    /// Value records stored before churn starts.
    pub records: usize,
    /// Lookups per virtual second during churn.
    pub lookup_rate: f64,
    /// Record reads per virtual second during churn.
    pub get_rate: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Depart(PeerIndex),
    Return(PeerIndex),
    ForceOff(PeerIndex),
    Lookup,
    Get,
}

/// `churn`: join, store records, then churn for `hours` with lookups and
/// record reads throughout, then read every record once more.
pub fn churn(swarm: &Swarm, spec: &ChurnSpec) -> Result<Report, Violation> {
    let wall = WallClock::now();
    let Joined {
        mut sim,
        wall_s: join_wall,
        note,
    } = swarm.join()?;
    let mut rng = Rng::derive(swarm.seed, 2);

    // Store the records from random peers.
    let mut records: Vec<(Key, [u8; 32])> = Vec::with_capacity(spec.records);
    for i in 0..spec.records {
        let key = rng.key();
        let value = format!("record {i} of seed {}", swarm.seed).into_bytes();
        let from = sim.random_live().unwrap_or(0);
        if sim.put(from, key, value.clone()) {
            records.push((key, *blake3::hash(&value).as_bytes()));
        }
    }
    sim.run_until_idle(sim.now_us() + 10 * MINUTE)?;

    let start = sim.now_us();
    let end = start + (spec.hours * 3600.0 * SECOND as f64) as u64;
    let mut plan = Plan::new();
    plan.first_sessions(&sim, start, (spec.dist, spec.session_median), &mut rng, Action::Depart);
    plan.schedule(start, Action::Lookup);
    if !records.is_empty() {
        plan.schedule(start, Action::Get);
    }
    let lookup_gap = (SECOND as f64 / spec.lookup_rate.max(1e-6)) as u64;
    let get_gap = (SECOND as f64 / spec.get_rate.max(1e-6)) as u64;
    let first_lookup = sim.lookups.len();
    let mut live_samples = (0.0, 0u64);
    let mut next_sample = start;

    while let Some((at, action)) = plan.next(end) {
        while next_sample <= at {
            sim.run_until(next_sample)?;
            live_samples.0 += sim.live() as f64;
            live_samples.1 += 1;
            next_sample += MINUTE;
            if swarm.progress && (next_sample - start) % (30 * MINUTE) == 0 {
                eprintln!(
                    "churn: {:.1} of {} simulated hours, {} peers up, {:.0} s wall",
                    (next_sample - start) as f64 / 3.6e9,
                    spec.hours,
                    sim.live(),
                    wall.elapsed().as_secs_f64()
                );
            }
        }
        sim.run_until(at)?;
        match action {
            Action::Depart(peer) => {
                if depart(&mut sim, &mut rng, peer, spec.crash_fraction) {
                    plan.schedule(at + 30 * SECOND, Action::ForceOff(peer));
                }
                let downtime = SessionDist::Exponential.sample(spec.downtime_median, &mut rng);
                plan.schedule(at + micros(downtime).max(31 * SECOND), Action::Return(peer));
            }
            Action::ForceOff(peer) => force_off(&mut sim, peer),
            Action::Return(peer) => {
                let session = come_back(&mut sim, &mut rng, peer, spec.dist, spec.session_median);
                plan.schedule(at + session, Action::Depart(peer));
            }
            Action::Lookup => {
                if let Some(from) = sim.random_live() {
                    sim.lookup(from, rng.key());
                }
                plan.schedule(at + lookup_gap, Action::Lookup);
            }
            Action::Get => {
                let (key, hash) = records[rng.index(records.len())];
                if let Some(from) = sim.random_live() {
                    sim.get(from, key, hash);
                }
                plan.schedule(at + get_gap, Action::Get);
            }
        }
    }
    sim.run_until(end)?;
    sim.run_until_idle(end + 5 * MINUTE)?;
    let during: Vec<bool> = sim.gets.iter().map(|g| g.found).collect();
    let first_final = sim.gets.len();
    for (key, hash) in &records {
        if let Some(from) = sim.random_live() {
            sim.get(from, *key, *hash);
        }
    }
    sim.run_until_idle(sim.now_us() + 10 * MINUTE)?;
    sim.check_all()?;
    let finals = &sim.gets[first_final..];
    let final_rate = if records.is_empty() {
        1.0
    } else {
        finals.iter().filter(|g| g.found).count() as f64 / records.len() as f64
    };
    let during_rate = if during.is_empty() {
        1.0
    } else {
        during.iter().filter(|f| **f).count() as f64 / during.len() as f64
    };
    let lookups: Vec<_> = sim.lookups[first_lookup..].to_vec();
    let measured: Vec<_> = lookups.iter().collect();
    let counts = ChurnCounts {
        crashes: sim.counters.crashes,
        leaves: sim.counters.leaves,
        joins: sim.counters.joins,
    };
    let mut report = Report::build(
        "churn",
        &mut sim,
        swarm.net_name(),
        &measured,
        wall.elapsed().as_secs_f64(),
        join_wall,
    );
    report.record_success_rate = Some(final_rate);
    report.record_success_rate_during = Some(during_rate);
    report.mean_live_peers = Some(live_samples.0 / live_samples.1.max(1) as f64);
    report.churn_events = Some(counts);
    report.note = note;
    Ok(report)
}

/// Settings of the partition scenario.
#[derive(Clone, Debug)]
pub struct PartitionSpec {
    /// How long the halves stay apart.
    pub split: Duration,
    /// How long lookups run before the split.
    pub before: Duration,
    /// How long lookups run after the heal.
    pub after: Duration,
    /// Lookups per virtual second.
    pub lookup_rate: f64,
    /// Width of the windows in which success is measured after the heal.
    pub window: Duration,
    /// Cut one direction only (group 0 cannot reach group 1).
    pub one_way: bool,
}

/// `partition`: join, split the swarm into two random halves, heal, and
/// measure how long until lookups succeed at 99.9% again.
pub fn partition(swarm: &Swarm, spec: &PartitionSpec) -> Result<Report, Violation> {
    let wall = WallClock::now();
    let Joined {
        mut sim,
        wall_s: join_wall,
        note,
    } = swarm.join()?;
    let mut rng = Rng::derive(swarm.seed, 3);
    let start = sim.now_us();
    let split_at = start + micros(spec.before);
    let heal_at = split_at + micros(spec.split);
    let end = heal_at + micros(spec.after);
    let gap = (SECOND as f64 / spec.lookup_rate.max(1e-6)) as u64;
    let first_lookup = sim.lookups.len();
    let mut t = start;
    let mut split = false;
    let mut healed = false;
    let halves: Vec<u8> = (0..sim.slots()).map(|_| rng.below(2) as u8).collect();
    while t < end {
        sim.run_until(t)?;
        if !split && t >= split_at {
            let kind = if spec.one_way {
                Partition::OneWay
            } else {
                Partition::Symmetric
            };
            sim.partition(kind, |p| halves[p as usize]);
            split = true;
        }
        if !healed && t >= heal_at {
            sim.partition(Partition::None, |_| 0);
            healed = true;
        }
        if let Some(from) = sim.random_live() {
            sim.lookup(from, rng.key());
        }
        t += gap;
    }
    sim.run_until_idle(end + 5 * MINUTE)?;
    sim.check_all()?;
    let all: Vec<_> = sim.lookups[first_lookup..].to_vec();
    let (split_s, heal_s) = (split_at as f64 / 1e6, heal_at as f64 / 1e6);
    let before: Vec<_> = all.iter().filter(|l| l.start_s < split_s).collect();
    let during: Vec<_> = all
        .iter()
        .filter(|l| l.start_s >= split_s && l.start_s < heal_s)
        .collect();
    let after: Vec<_> = all.iter().filter(|l| l.start_s >= heal_s).collect();
    let reconverge = reconverge_s(&after, heal_s, spec.window.as_secs_f64());
    let measured: Vec<_> = all.iter().collect();
    let mut report = Report::build(
        "partition",
        &mut sim,
        swarm.net_name(),
        &measured,
        wall.elapsed().as_secs_f64(),
        join_wall,
    );
    report.partition_success = Some(PhaseSuccess {
        before: success(&before),
        during: success(&during),
        after: success(&after),
    });
    report.reconverge_s = reconverge;
    report.note = note;
    Ok(report)
}

/// Seconds from `heal_s` to the start of the first window from which every
/// window to the end has success of at least 99.9%.
fn reconverge_s(after: &[&crate::sim::LookupOutcome], heal_s: f64, window_s: f64) -> Option<f64> {
    let last = after.iter().map(|l| l.start_s).fold(heal_s, f64::max);
    let count = ((last - heal_s) / window_s) as usize + 1;
    let mut windows = vec![(0usize, 0usize); count];
    for l in after {
        let w = (((l.start_s - heal_s) / window_s) as usize).min(count - 1);
        windows[w].0 += usize::from(l.success);
        windows[w].1 += 1;
    }
    let good = |(ok, n): (usize, usize)| n == 0 || ok as f64 >= 0.999 * n as f64;
    let mut first_good = None;
    for (i, w) in windows.iter().enumerate().rev() {
        if good(*w) {
            first_good = Some(i);
        } else {
            break;
        }
    }
    first_good.map(|i| i as f64 * window_s)
}

/// Timed turns of a scenario, taken in time order (ties in the order they
/// were scheduled, so that a seed fixes the run).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Plan<T> {
    turns: BTreeMap<(u64, u64), T>,
    seq: u64,
}

impl<T: Copy> Plan<T> {
    fn new() -> Self {
        Plan {
            turns: BTreeMap::new(),
            seq: 0,
        }
    }

    fn schedule(&mut self, at: u64, turn: T) {
        self.seq += 1;
        self.turns.insert((at, self.seq), turn);
    }

    /// Schedules every slot's first departure, a session after `start`.
    fn first_sessions(
        &mut self,
        sim: &Sim,
        start: u64,
        (dist, median): (SessionDist, Duration),
        rng: &mut Rng,
        depart: impl Fn(PeerIndex) -> T,
    ) {
        for peer in 0..sim.slots() as PeerIndex {
            let session = dist.sample(median, rng);
            self.schedule(start + micros(session), depart(peer));
        }
    }

    /// The next turn due at or before `end`, taken off the plan.
    fn next(&mut self, end: u64) -> Option<(u64, T)> {
        let (&(at, seq), &turn) = self.turns.iter().next()?;
        if at > end {
            return None;
        }
        self.turns.remove(&(at, seq));
        Some((at, turn))
    }
}

/// A running peer's session ends: it crashes (with `crash_fraction`) or
/// starts to leave gracefully. Returns whether it is leaving (and so needs
/// forcing off later if it hangs).
fn depart(sim: &mut Sim, rng: &mut Rng, peer: PeerIndex, crash_fraction: f64) -> bool {
    if !matches!(sim.state(peer), PeerState::Joined | PeerState::Joining) {
        return false;
    }
    if rng.chance(crash_fraction) {
        sim.crash(peer);
        false
    } else {
        sim.leave(peer);
        true
    }
}

/// A leave that did not finish in time becomes a crash.
fn force_off(sim: &mut Sim, peer: PeerIndex) {
    if sim.state(peer) == PeerState::Leaving {
        sim.crash(peer);
    }
}

/// A departed peer restarts (if it is down); returns its next session
/// length, in µs.
fn come_back(sim: &mut Sim, rng: &mut Rng, peer: PeerIndex, dist: SessionDist, median: Duration) -> u64 {
    if sim.state(peer) == PeerState::Offline {
        sim.start(peer);
    }
    micros(dist.sample(median, rng))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Settings of the durability scenario.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DurabilitySpec {
    /// Simulated days of churn.
    pub days: f64,
    /// Files pinned before churn begins.
    pub files: usize,
    /// Bytes of each file.
    pub file_bytes: u64,
    /// Copies each pin asks its home to keep.
    pub replicas: u8,
    /// Median session length.
    pub session_median: Duration,
    /// Median time a departed peer stays away before it comes back.
    pub downtime_median: Duration,
    /// Session length distribution.
    pub dist: SessionDist,
    /// Fraction of departures that are crashes (the rest leave gracefully).
    pub crash_fraction: f64,
    /// Fraction of departures that are for good: the disk is gone and a
    /// fresh peer with an empty disk joins in its place.
    pub permanent_fraction: f64,
    /// The files layer: link speed, duty period, hand-off.
    pub files_config: crate::sim::FilesConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Turn {
    Depart(PeerIndex),
    Return(PeerIndex),
    Replace(PeerIndex),
    ForceOff(PeerIndex),
    Sample,
}

/// `durability`: join, share and pin files with `replicas` copies, drop the
/// pinners' own copies, then churn for `days` and count what survived.
pub fn durability(swarm: &Swarm, spec: &DurabilitySpec) -> Result<Report, Violation> {
    DurabilityRun::start(swarm, spec)?.run()
}

/// Where and how often a long run saves itself.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    /// The checkpoint file, replaced whole at each save.
    pub path: std::path::PathBuf,
    /// Wall time between two saves.
    pub every: Duration,
}

/// Why a durability run stopped without a report.
#[derive(Debug, thiserror::Error)]
pub enum DurabilityError {
    /// An invariant broke.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// A checkpoint could not be written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The durability scenario between two of its turns: everything a
/// checkpoint holds. [`start`](Self::start) joins and pins,
/// [`run`](Self::run) churns to the end; [`load`](Self::load) reads a
/// checkpoint back, and its `run` ends exactly as the uninterrupted one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DurabilityRun {
    swarm: Swarm,
    spec: DurabilitySpec,
    sim: Sim,
    /// Draws departures, downtimes and sessions.
    rng: Rng,
    plan: Plan<Turn>,
    /// Slots whose peer left for good (and whose disk went with it).
    gone: Vec<bool>,
    /// Departures that were for good.
    permanent: u64,
    /// Sums over the 10-minute samples: live peers, files without a live
    /// copy (and the most at once), files under-replicated.
    live_sum: f64,
    samples: u64,
    unavailable_sum: u64,
    unavailable_max: usize,
    under_sum: u64,
    /// Files whose whole home held a copy before churn began.
    placed: usize,
    /// Bytes each slot had received before churn began.
    received_before: Vec<u64>,
    /// Virtual time churn began and ends.
    start_us: u64,
    end_us: u64,
    join_wall_s: f64,
    note: Option<String>,
    /// Wall seconds the run took before this process took it up.
    wall_before_s: f64,
    #[serde(skip, default = "WallClock::now")]
    wall: WallClock,
}

impl DurabilityRun {
    /// Joins the swarm, shares and pins the files, lets the homes fetch them
    /// and drops the pinners' own copies: ready for churn.
    pub fn start(swarm: &Swarm, spec: &DurabilitySpec) -> Result<Self, Violation> {
        let wall = WallClock::now();
        let files_config = spec.files_config.clone();
        let Joined {
            mut sim,
            wall_s: join_wall_s,
            note,
        } = swarm.join_with(|sim| sim.enable_files(files_config))?;
        let mut rng = Rng::derive(swarm.seed, 4);

        // Share and pin every file from a random peer; let the homes fetch.
        for i in 0..spec.files {
            let blob = Key::of_content(format!("file {i} of seed {}", swarm.seed).as_bytes());
            let Some(from) = sim.random_live() else { break };
            sim.share(from, blob, spec.file_bytes);
            sim.pin(from, blob, spec.replicas);
        }
        let settle = micros(spec.files_config.pin_check) * 4 + 5 * MINUTE;
        sim.run_until(sim.now_us() + settle)?;
        let replicas = u32::from(spec.replicas);
        let placed = sim.copies(|_| false).values().filter(|c| c.0 >= replicas).count();
        // Only the homes' copies count from here on.
        for peer in 0..sim.slots() as PeerIndex {
            sim.drop_unpinned(peer);
        }
        let received_before: Vec<u64> = sim.transfer_bytes().iter().map(|b| b.1).collect();

        let start_us = sim.now_us();
        let end_us = start_us + (spec.days * 86_400.0 * SECOND as f64) as u64;
        let mut plan = Plan::new();
        plan.first_sessions(&sim, start_us, (spec.dist, spec.session_median), &mut rng, Turn::Depart);
        plan.schedule(start_us, Turn::Sample);
        Ok(DurabilityRun {
            swarm: swarm.clone(),
            spec: spec.clone(),
            gone: vec![false; sim.slots()],
            sim,
            rng,
            plan,
            permanent: 0,
            live_sum: 0.0,
            samples: 0,
            unavailable_sum: 0,
            unavailable_max: 0,
            under_sum: 0,
            placed,
            received_before,
            start_us,
            end_us,
            join_wall_s,
            note,
            wall_before_s: 0.0,
            wall,
        })
    }

    /// Reads a run [`save`](Self::save)d by this same executable.
    pub fn load(path: &std::path::Path) -> Result<Self, CheckpointError> {
        let mut run: DurabilityRun = crate::checkpoint::load(path)?;
        let damaged = |reason: String| CheckpointError::Damaged {
            path: path.to_owned(),
            reason,
        };
        if run.gone.len() != run.sim.slots() || run.received_before.len() > run.sim.slots() {
            return Err(damaged("its peer lists do not match its slots".into()));
        }
        run.sim.check_loaded().map_err(damaged)?;
        let overlay = run.swarm.overlay_config();
        run.sim.resume(overlay).map_err(|e| damaged(e.to_string()))?;
        run.wall = WallClock::now();
        Ok(run)
    }

    /// Writes the run to `path` (whole or not at all); returns the bytes.
    pub fn save(&mut self, path: &std::path::Path) -> Result<u64, CheckpointError> {
        // The wall time so far goes with it; this process counts on from here.
        self.wall_before_s = self.wall_s();
        self.wall = WallClock::now();
        crate::checkpoint::save(path, self)
    }

    /// Simulated days of churn done so far.
    pub fn day(&self) -> f64 {
        self.sim.now_us().saturating_sub(self.start_us) as f64 / 86_400e6
    }

    /// Whether to print progress.
    pub fn set_progress(&mut self, progress: bool) {
        self.swarm.progress = progress;
    }

    /// Wall seconds since the run began, over every process that ran it.
    fn wall_s(&self) -> f64 {
        self.wall_before_s + self.wall.elapsed().as_secs_f64()
    }

    /// Churns to the end and reports.
    pub fn run(mut self) -> Result<Report, Violation> {
        self.turns(self.end_us, |_| Ok::<(), Violation>(()))?;
        self.finish()
    }

    /// Churns to the end and reports, saving to `checkpoint` first (so that
    /// a path that cannot be written is known at once) and then whenever
    /// its interval has passed at a sample. A later save that fails is
    /// reported on standard error and tried again an interval later: the
    /// run goes on, and the last good checkpoint stays where it was.
    pub fn run_saving(mut self, checkpoint: &Checkpointing) -> Result<Report, DurabilityError> {
        self.save_to(checkpoint)?;
        let mut saved_at = WallClock::now();
        self.turns(self.end_us, |run| {
            if saved_at.elapsed() >= checkpoint.every {
                if let Err(e) = run.save_to(checkpoint) {
                    eprintln!("durability: cannot save the run, going on without this checkpoint: {e}");
                }
                saved_at = WallClock::now();
            }
            Ok::<(), Violation>(())
        })?;
        Ok(self.finish()?)
    }

    /// Churns up to simulated day `day` of the run (not past its end).
    pub fn run_until_day(&mut self, day: f64) -> Result<(), Violation> {
        let until = self.start_us + (day.max(0.0) * 86_400.0 * SECOND as f64) as u64;
        self.turns(until.min(self.end_us), |_| Ok(()))
    }

    fn save_to(&mut self, checkpoint: &Checkpointing) -> Result<(), CheckpointError> {
        let began = WallClock::now();
        let bytes = self.save(&checkpoint.path)?;
        if self.swarm.progress {
            eprintln!(
                "durability: saved day {:.3} to {} ({:.0} MiB in {:.1} s)",
                self.day(),
                checkpoint.path.display(),
                bytes as f64 / f64::from(1 << 20),
                began.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Takes the turns due up to `until_us`, calling `at_sample` after each
    /// sample (the points at which a checkpoint may be taken).
    fn turns<E: From<Violation>>(
        &mut self,
        until_us: u64,
        mut at_sample: impl FnMut(&mut Self) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some((at, turn)) = self.plan.next(until_us) {
            self.sim.run_until(at)?;
            if self.turn(at, turn) {
                at_sample(self)?;
            }
        }
        Ok(())
    }

    /// Runs the last events and checks every core.
    fn finish(mut self) -> Result<Report, Violation> {
        self.sim.run_until(self.end_us)?;
        self.sim.check_all()?;
        Ok(self.report())
    }

    /// Takes one turn of the plan, due at `at`. Returns whether it was a
    /// sample (the point at which a checkpoint is taken).
    fn turn(&mut self, at: u64, turn: Turn) -> bool {
        let wall_s = self.wall_s();
        let (sim, rng, plan, spec) = (&mut self.sim, &mut self.rng, &mut self.plan, &self.spec);
        match turn {
            Turn::Depart(peer) => {
                if depart(sim, rng, peer, spec.crash_fraction) {
                    // Long enough for its hand-off pushes.
                    plan.schedule(at + 5 * MINUTE, Turn::ForceOff(peer));
                }
                let downtime = SessionDist::Exponential.sample(spec.downtime_median, rng);
                let back = at + micros(downtime).max(31 * SECOND);
                if rng.chance(spec.permanent_fraction) {
                    self.permanent += 1;
                    plan.schedule(back, Turn::Replace(peer));
                } else {
                    plan.schedule(back, Turn::Return(peer));
                }
            }
            Turn::ForceOff(peer) => force_off(sim, peer),
            Turn::Return(peer) => {
                let session = come_back(sim, rng, peer, spec.dist, spec.session_median);
                plan.schedule(at + session, Turn::Depart(peer));
            }
            Turn::Replace(peer) => {
                if sim.state(peer) == PeerState::Leaving {
                    // Still handing its copies on.
                    plan.schedule(at + MINUTE, Turn::Replace(peer));
                    return false;
                }
                // Gone for good; a new machine with an empty disk joins.
                if sim.state(peer) != PeerState::Offline {
                    sim.crash(peer);
                }
                sim.wipe_disk(peer);
                self.gone[peer as usize] = true;
                let fresh = sim.add_slot();
                self.gone.push(false);
                sim.start(fresh);
                let session = spec.dist.sample(spec.session_median, rng);
                plan.schedule(at + micros(session), Turn::Depart(fresh));
            }
            Turn::Sample => {
                let gone = &self.gone;
                let copies = sim.copies(|p| gone[p as usize]);
                let unavailable = copies.values().filter(|c| c.0 == 0).count();
                self.unavailable_sum += unavailable as u64;
                self.unavailable_max = self.unavailable_max.max(unavailable);
                let replicas = u32::from(spec.replicas);
                self.under_sum += copies.values().filter(|c| c.0 < replicas).count() as u64;
                self.live_sum += sim.live() as f64;
                self.samples += 1;
                if self.swarm.progress && self.samples % 6 == 1 {
                    let lost = copies.values().filter(|c| c.1 == 0).count();
                    eprintln!(
                        "durability: day {:.3} of {}, {} peers up, {unavailable} files without a live copy, {lost} lost, {:.1} M events, {:.0} s wall",
                        (at - self.start_us) as f64 / 86_400e6,
                        spec.days,
                        sim.live(),
                        sim.counters.events as f64 / 1e6,
                        wall_s
                    );
                }
                plan.schedule(at + 10 * MINUTE, Turn::Sample);
                return true;
            }
        }
        false
    }

    fn report(mut self) -> Report {
        let wall_s = self.wall_s();
        let (sim, spec) = (&mut self.sim, &self.spec);
        let gone = &self.gone;
        let copies = sim.copies(|p| gone[p as usize]);
        let lost = copies.values().filter(|c| c.1 == 0).count();
        let unavailable_at_end = copies.values().filter(|c| c.0 == 0).count();
        let per_peer = sim.pinned_per_live_peer();
        let spread_max = per_peer.iter().copied().max().unwrap_or(0);
        let spread_mean = per_peer.iter().map(|c| f64::from(*c)).sum::<f64>() / per_peer.len().max(1) as f64;
        let stored = sim.stored_per_live_peer();
        let stored_mean = stored.iter().map(|c| f64::from(*c)).sum::<f64>() / stored.len().max(1) as f64;
        let received: Vec<u64> = sim
            .transfer_bytes()
            .iter()
            .enumerate()
            .map(|(i, b)| b.1.saturating_sub(self.received_before.get(i).copied().unwrap_or(0)))
            .collect();
        let samples = self.samples.max(1) as f64;
        let mean_live = self.live_sum / samples;
        let days = spec.days.max(1e-9);
        let durability = crate::report::Durability {
            files: spec.files,
            file_bytes: spec.file_bytes,
            replicas: spec.replicas,
            days: spec.days,
            placed: self.placed,
            lost,
            unavailable_at_end,
            unavailable_mean: self.unavailable_sum as f64 / samples,
            unavailable_max: self.unavailable_max,
            under_replicated_mean: self.under_sum as f64 / samples,
            repair_bytes_per_peer_day: received.iter().sum::<u64>() as f64 / mean_live.max(1.0) / days,
            repair_bytes_max_peer_day: received.iter().copied().max().unwrap_or(0) as f64 / days,
            spread_max,
            spread_mean,
            spread_ratio: if spread_mean > 0.0 {
                f64::from(spread_max) / spread_mean
            } else {
                0.0
            },
            stored_max: stored.iter().copied().max().unwrap_or(0),
            stored_mean,
            quota_bytes: spec.files_config.quota_bytes,
            permanent_departures: self.permanent,
            counters: sim.file_counters(),
        };
        let counts = ChurnCounts {
            crashes: sim.counters.crashes,
            leaves: sim.counters.leaves,
            joins: sim.counters.joins,
        };
        let mut report = Report::build("durability", sim, self.swarm.net_name(), &[], wall_s, self.join_wall_s);
        report.mean_live_peers = Some(mean_live);
        report.churn_events = Some(counts);
        report.durability = Some(durability);
        report.note = self.note.take();
        report
    }
}
