//! The `durability` scenario: pinned files through days of churn, and
//! [`DurabilityRun`], its state between two turns, which a checkpoint
//! holds.

use std::time::{Duration, Instant as WallClock};

use shoal_overlay::{Key, Rng};

use super::{Joined, MINUTE, Plan, SECOND, Swarm, come_back, depart, force_off, micros};
use crate::checkpoint::CheckpointError;
use crate::churn::SessionDist;
use crate::report::{ChurnCounts, Report};
use crate::sim::{PeerIndex, PeerState, Sim, Violation};

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
enum Scheduled {
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
    plan: Plan<Scheduled>,
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
        plan.first_sessions(
            &sim,
            start_us,
            (spec.dist, spec.session_median),
            &mut rng,
            Scheduled::Depart,
        );
        plan.schedule(start_us, Scheduled::Sample);
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
    fn turn(&mut self, at: u64, turn: Scheduled) -> bool {
        let wall_s = self.wall_s();
        let (sim, rng, plan, spec) = (&mut self.sim, &mut self.rng, &mut self.plan, &self.spec);
        match turn {
            Scheduled::Depart(peer) => {
                if depart(sim, rng, peer, spec.crash_fraction) {
                    // Long enough for its hand-off pushes.
                    plan.schedule(at + 5 * MINUTE, Scheduled::ForceOff(peer));
                }
                let downtime = SessionDist::Exponential.sample(spec.downtime_median, rng);
                let back = at + micros(downtime).max(31 * SECOND);
                if rng.chance(spec.permanent_fraction) {
                    self.permanent += 1;
                    plan.schedule(back, Scheduled::Replace(peer));
                } else {
                    plan.schedule(back, Scheduled::Return(peer));
                }
            }
            Scheduled::ForceOff(peer) => force_off(sim, peer),
            Scheduled::Return(peer) => {
                let session = come_back(sim, rng, peer, spec.dist, spec.session_median);
                plan.schedule(at + session, Scheduled::Depart(peer));
            }
            Scheduled::Replace(peer) => {
                if sim.state(peer) == PeerState::Leaving {
                    // Still handing its copies on.
                    plan.schedule(at + MINUTE, Scheduled::Replace(peer));
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
                plan.schedule(at + micros(session), Scheduled::Depart(fresh));
            }
            Scheduled::Sample => {
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
                plan.schedule(at + 10 * MINUTE, Scheduled::Sample);
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
