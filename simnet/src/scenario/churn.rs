//! The `churn` scenario: peers come and go while lookups and record reads
//! run.

use std::time::{Duration, Instant as WallClock};

use shoal_overlay::{Key, Rng};

use super::{Joined, MINUTE, Plan, SECOND, Swarm, come_back, depart, force_off, micros};
use crate::churn::SessionDist;
use crate::report::{ChurnCounts, Report};
use crate::sim::{PeerIndex, Violation};

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
