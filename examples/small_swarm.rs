//! Builds a 500-peer simulated swarm from Rust code, runs 1,000 lookups in
//! it and prints the simulator's report.
//!
//! Run it with: `cargo run --release --example small_swarm`

use shoal::simnet::scenario::{self, Swarm};

fn main() -> anyhow::Result<()> {
    let mut swarm = Swarm::new(500, 7);
    swarm.net = shoal::simnet::Preset::Wan;
    let report = scenario::lookups(&swarm, 1_000, 200.0)?;
    print!("{}", report.summary());
    anyhow::ensure!(report.success_rate > 0.99, "lookups failed more than expected");
    Ok(())
}
