//! The `partition` scenario: the swarm splits into two halves, heals, and
//! is timed until lookups succeed again.

use std::time::{Duration, Instant as WallClock};

use shoal_overlay::Rng;

use super::{Joined, MINUTE, SECOND, Swarm, micros};
use crate::net::Partition;
use crate::report::{PhaseSuccess, Report, success};
use crate::sim::Violation;

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
