//! The `lookups` scenario: lookups for random keys in a settled swarm.

use std::time::Instant as WallClock;

use shoal_overlay::Rng;

use super::{Joined, MINUTE, SECOND, Swarm};
use crate::report::Report;
use crate::sim::Violation;

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
