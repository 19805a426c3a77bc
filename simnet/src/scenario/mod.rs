//! The scenarios the `shoal-simnet` binary runs, also usable from Rust.
//!
//! # Layout
//!
//! In reading order:
//!
//! - this file: [`Swarm`], the settings every scenario shares, and how it
//!   joins; the timed plan of turns and the departures and returns that
//!   `churn` and `durability` share.
//! - `lookups`: [`lookups`](fn@lookups), lookups for random keys in a
//!   settled swarm.
//! - `churn`: [`churn`](fn@churn), peers come and go while lookups and
//!   record reads run.
//! - `partition`: [`partition`](fn@partition), the swarm splits in two and
//!   heals.
//! - `durability`: [`durability`](fn@durability), pinned files through days
//!   of churn, and [`DurabilityRun`], the run's state that a checkpoint
//!   holds.
//! - `jobs`: [`jobs`](fn@jobs), jobs placed by power-of-d choices against
//!   random placement (a first model, without the overlay).
//! - `supervise`: [`supervise_sweep`], jobs supervised from their home
//!   through partitions, crashes and clock drift, checked by an oracle
//!   that knows real time.
//! - `devices`: [`devices_sweep`], a device's provider granting its leases
//!   to clients that are cut off and come back, the provider restarting.
//! - `leases`: [`leases_sweep`], a named lease taken, held and let go by
//!   clients through the same faults, checked by the same kind of oracle;
//!   with members down, its acquire latency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant as WallClock};

use shoal_overlay::{Config, Rng};

use crate::churn::SessionDist;
use crate::net::{NetConfig, Preset};
use crate::sim::{PeerIndex, PeerState, Sim, SimConfig, Violation};

mod churn;
mod devices;
mod drift;
mod durability;
mod jobs;
mod leases;
mod lookups;
mod partition;
mod supervise;

pub use churn::{ChurnSpec, churn};
pub use devices::{DeviceSpec, DeviceSweep, devices_sweep};
pub use durability::{Checkpointing, DurabilityError, DurabilityRun, DurabilitySpec, durability};
pub use jobs::{JobsReport, JobsSpec, PolicyReport, jobs};
pub use leases::{LeaseRun, LeaseSpec, LeaseSweep, leases, leases_sweep};
pub use lookups::lookups;
pub use partition::{PartitionSpec, partition};
pub use supervise::{RunReport, SuperviseSpec, SweepReport, supervise, supervise_sweep};

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
