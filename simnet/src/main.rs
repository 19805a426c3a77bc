//! `shoal-simnet`: run a simulated shoal swarm and report what it did.
//!
//! ```text
//! cargo run --release -p shoal-simnet -- lookups --peers 10000 --lookups 10000 --seed 1 --json
//! cargo run --release -p shoal-simnet -- churn --peers 10000 --hours 6 --session-median-min 60 --seed 1
//! cargo run --release -p shoal-simnet -- partition --peers 10000 --seed 1 --out sim-out
//! ```

// Millions of small, short-lived allocations (messages, lookups, record
// copies) across 10^4-10^6 cores: mimalloc's per-size free lists serve them
// faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shoal_simnet::scenario::{self, ChurnSpec, PartitionSpec, Swarm};
use shoal_simnet::{Preset, Report, SessionDist};

/// Deterministic simulator of a shoal swarm. The same seed reproduces a run
/// exactly (compare `trace_hash`). Peers join through the real join protocol
/// and run the real overlay core; lookups are judged against the true
/// closest live peer.
#[derive(Parser, Debug)]
#[command(name = "shoal-simnet", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Join N peers, then run M lookups for random keys from random peers.
    Lookups {
        #[command(flatten)]
        common: Common,
        /// Number of lookups.
        #[arg(long, default_value_t = 10_000)]
        lookups: usize,
        /// Lookups started per virtual second.
        #[arg(long, default_value_t = 1000.0)]
        lookup_rate: f64,
    },
    /// Join N peers, store records, then churn for H hours with lookups and
    /// record reads throughout; finally read every record once more.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Simulated hours of churn.
        #[arg(long, default_value_t = 6.0)]
        hours: f64,
        /// Median session length, in minutes.
        #[arg(long, default_value_t = 60.0)]
        session_median_min: f64,
        /// Median time a departed peer stays away, in minutes.
        #[arg(long, default_value_t = 10.0)]
        downtime_median_min: f64,
        /// Session length distribution.
        #[arg(long, value_enum, default_value_t = SessionDist::Exponential)]
        session_dist: SessionDist,
        /// Fraction of departures that are crashes (the rest leave gracefully).
        #[arg(long, default_value_t = 0.5)]
        crash_fraction: f64,
        /// Value records stored before churn starts.
        #[arg(long, default_value_t = 1000)]
        records: usize,
        /// Lookups per virtual second during churn.
        #[arg(long, default_value_t = 1.0)]
        lookup_rate: f64,
        /// Record reads per virtual second during churn.
        #[arg(long, default_value_t = 0.5)]
        get_rate: f64,
    },
    /// Join N peers, share and pin F files with R copies each, then churn for
    /// D days (peers crash, leave, come back; some never do and fresh peers
    /// take their place) and report files lost, repair traffic and spread.
    Durability {
        #[command(flatten)]
        common: Common,
        /// Simulated days of churn.
        #[arg(long, default_value_t = 30.0)]
        days: f64,
        /// Files pinned before churn begins.
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// Size of each file, in MiB.
        #[arg(long, default_value_t = 100)]
        file_mib: u64,
        /// Copies each pin asks for (at most the overlay's replication, 3).
        #[arg(long, default_value_t = 3)]
        replicas: u8,
        /// Median session length, in minutes (half the peers are gone within it).
        #[arg(long, default_value_t = 120.0)]
        session_median_min: f64,
        /// Median time a departed peer stays away, in minutes.
        #[arg(long, default_value_t = 30.0)]
        downtime_median_min: f64,
        /// Session length distribution.
        #[arg(long, value_enum, default_value_t = SessionDist::Exponential)]
        session_dist: SessionDist,
        /// Fraction of departures that are crashes (the rest leave gracefully).
        #[arg(long, default_value_t = 0.5)]
        crash_fraction: f64,
        /// Fraction of departures that are for good: the disk is lost and a
        /// fresh peer with an empty disk joins instead.
        #[arg(long, default_value_t = 0.1)]
        permanent_fraction: f64,
        /// Each peer's link speed each way, in Mbit/s.
        #[arg(long, default_value_t = 1000)]
        link_mbit: u64,
        /// Seconds between two rounds of a peer's pin duties.
        #[arg(long, default_value_t = 30.0)]
        pin_check_s: f64,
        /// Leaving peers do not hand their copies on first.
        #[arg(long)]
        no_handoff: bool,
        /// A peer that cannot fit a copy its home asks for does not step
        /// aside (decline) for the next peer out; it only refuses.
        #[arg(long)]
        no_decline: bool,
        /// Each peer's disk quota in MiB: copies no longer kept for a home
        /// stay until it needs the room (no limit if not given, the node's
        /// default).
        #[arg(long)]
        quota_mib: Option<u64>,
        /// Minutes a routing-table bucket may go without a lookup before it
        /// is refreshed.
        #[arg(long, default_value_t = 10.0)]
        refresh_min: f64,
        /// Seconds between two maintenance rounds of a peer (the overlay's
        /// default is 60): probes of quiet neighbours and stale entries,
        /// idle-bucket checks.
        #[arg(long, default_value_t = 60.0)]
        maintenance_s: f64,
        /// Minutes between two rounds in which a home member re-sends its
        /// records to the rest of the home (the overlay's default is 5).
        #[arg(long, default_value_t = 5.0)]
        replicate_min: f64,
        /// Save the whole run to this file as it goes (replaced at each
        /// save), so that `shoal-simnet resume FILE` can finish it if this
        /// process stops. Only this executable resumes it.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Minutes of wall time between two saves of --checkpoint.
        #[arg(long, default_value_t = 10.0, value_name = "MIN")]
        checkpoint_every_min: f64,
    },
    /// Place jobs on peers' slots with power-of-d choices and, on the same
    /// arrivals, at random (one probe), each with and without executors
    /// handing queued jobs to idle peers; print all four as JSON. A first model:
    /// the slot index is a uniform sample of offers, the overlay is not
    /// simulated (see the scenario's docs).
    Jobs {
        /// Peers offering slots.
        #[arg(long, default_value_t = 10_000)]
        peers: usize,
        /// Slots per peer.
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// Jobs submitted.
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// Arrival rate as a share of the swarm's capacity.
        #[arg(long, default_value_t = 0.8)]
        load: f64,
        /// Mean service time of a job, in seconds.
        #[arg(long, default_value_t = 2.0)]
        service_s: f64,
        /// Candidates probed per job.
        #[arg(long, default_value_t = 2)]
        d: usize,
        /// Offers one slot-class read lists.
        #[arg(long, default_value_t = 20)]
        candidates: usize,
        /// Share of jobs with an input (a blob on three peers).
        #[arg(long, default_value_t = 0.5)]
        with_input: f64,
        /// Queue places a holder of a job's input may be behind another
        /// candidate and still be chosen.
        #[arg(long, default_value_t = 2)]
        input_bonus: u32,
        /// Inputs stay on their three first holders only. By default a
        /// peer that fetched an input to run a job provides it from then on,
        /// as a node does.
        #[arg(long)]
        no_input_cache: bool,
        /// Seed of the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Jobs supervised from their home through partitions, crashes, lost
    /// and late messages and clock drift, over a range of seeds: five
    /// members keep each job's tenure, three supervise it at once, four
    /// executors run it and save checkpoints. With --peers above 9, each
    /// job's home is the five peers nearest its key in a swarm that size,
    /// any other peer runs it, and --churn-per-s crashes peers besides
    /// (the 10,000-peer run: --peers 10000 --jobs 1000 --churn-per-s 10
    /// --seeds 1). An oracle that knows real time counts executors of one
    /// job allowed to act at once, jobs with two committed results, and
    /// jobs not done by the end (lost); a violation prints its seed and
    /// the command exits with 1.
    Supervise {
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// How many seeds, from the first.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Jobs per run.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
        /// Clock rates lie within 1 ± DRIFT of real time (the margin
        /// covers 0.1).
        #[arg(long, default_value_t = 0.05)]
        drift: f64,
        /// Share of messages lost.
        #[arg(long, default_value_t = 0.02)]
        loss: f64,
        /// Seconds of faults (partitions, crashes), then --heal-s of calm.
        #[arg(long, default_value_t = 120)]
        fault_s: u64,
        /// Seconds of calm at the end, in which every job must finish.
        #[arg(long, default_value_t = 180)]
        heal_s: u64,
        /// Peers in the swarm (9: every job's home is the same five).
        #[arg(long, default_value_t = 9)]
        peers: usize,
        /// Crashes per second besides the faults, during --fault-s (each
        /// crashed peer comes back after 1 to 60 s with its disk).
        #[arg(long, default_value_t = 0.0)]
        churn_per_s: f64,
        /// Seconds of work each job needs (it checkpoints every 4 s).
        #[arg(long, default_value_t = 20.0)]
        work_s: f64,
    },
    /// Named leases (one name, five members, clients that take it, hold it
    /// for 0.5–25.5 s and let it go, again and again) through partitions,
    /// crashes of members and clients, lost and late messages and clock
    /// drift, and changes of the name's home (members leave for good, the
    /// set moves to the new home with the lease's state), over a range of
    /// seeds. An oracle that knows real time counts clients allowed to act
    /// as the holder at once; a violation prints its seed and the command
    /// exits with 1. With --down K, K members are
    /// down throughout and nothing else fails: the report's acquire
    /// latency is then that of a lease with a member missing.
    Leases {
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// How many seeds, from the first.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Clients that want the lease.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Clock rates lie within 1 ± DRIFT of real time (the margin
        /// covers 0.1).
        #[arg(long, default_value_t = 0.05)]
        drift: f64,
        /// Share of messages lost.
        #[arg(long, default_value_t = 0.02)]
        loss: f64,
        /// Seconds of faults (0: none), then --heal-s of calm.
        #[arg(long, default_value_t = 120)]
        fault_s: u64,
        /// Seconds of calm at the end.
        #[arg(long, default_value_t = 60)]
        heal_s: u64,
        /// Members down throughout (no other fault then).
        #[arg(long, default_value_t = 0)]
        down: usize,
        /// Keep the member set fixed: no member leaves for good and the
        /// set never moves (by default members leave now and then and
        /// the set moves to its new home, the clients following it).
        #[arg(long)]
        fixed_home: bool,
        /// Seconds a member may be silent before the members' duty moves
        /// the set without it (the node's --member-gone-after; a run
        /// lasts minutes, so shorter than the node's 60 s by default).
        #[arg(long, default_value_t = 8)]
        gone_after_s: u64,
    },
    /// One device's leases at its provider (the machine the node runs):
    /// clients take it (exclusive or shared), hold it 0.5–20.5 s renewing,
    /// and let it go; with --faults, links are cut for up to 30 s, 2% of
    /// messages are lost and the provider restarts. Checks at every step
    /// that one exclusive holder or only shared ones are admitted, that
    /// tokens grow, and (without faults) that the line is served in order;
    /// reports how long takes waited. Exits with 1 on a violation.
    Devices {
        /// How many seeds, from 0.
        #[arg(long, default_value_t = 200)]
        seeds: u64,
        /// Clients that want the device.
        #[arg(long, default_value_t = 6)]
        clients: usize,
        /// Share of takes that ask for a shared lease.
        #[arg(long, default_value_t = 0.3)]
        shared: f64,
        /// Cut links, lose messages, restart the provider.
        #[arg(long)]
        faults: bool,
        /// Seconds simulated per seed.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Go on with a durability run saved with --checkpoint, from where it
    /// was saved: it ends exactly as the run would have ended uninterrupted
    /// (same report, same trace hash). It keeps saving to the same file.
    Resume {
        /// The checkpoint file.
        file: PathBuf,
        /// Minutes of wall time between two saves.
        #[arg(long, default_value_t = 10.0, value_name = "MIN")]
        checkpoint_every_min: f64,
        /// Print progress to standard error (on by default when it is a terminal).
        #[arg(long)]
        progress: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Join N peers, split them into two random halves, heal, and measure
    /// how long until lookups succeed at 99.9% again.
    Partition {
        #[command(flatten)]
        common: Common,
        /// Minutes the halves stay apart.
        #[arg(long, default_value_t = 10.0)]
        split_min: f64,
        /// Minutes of lookups before the split.
        #[arg(long, default_value_t = 2.0)]
        before_min: f64,
        /// Minutes of lookups after the heal.
        #[arg(long, default_value_t = 15.0)]
        after_min: f64,
        /// Lookups per virtual second.
        #[arg(long, default_value_t = 100.0)]
        lookup_rate: f64,
        /// Width in seconds of the windows success is measured in.
        #[arg(long, default_value_t = 10.0)]
        window_s: f64,
        /// Cut one direction only instead of both.
        #[arg(long)]
        one_way: bool,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// Number of peers.
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Seed of the run; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Network model.
    #[arg(long, value_enum, default_value_t = Preset::Lan)]
    net: Preset,
    /// Peers that start joining per virtual second.
    #[arg(long, default_value_t = 200.0)]
    join_rate: f64,
    /// Disjoint lookup paths (S/Kademlia); 1 is plain Kademlia.
    #[arg(long, default_value_t = 1)]
    disjoint_paths: usize,
    /// Probability that the network loses a message.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that the network delivers a message twice.
    #[arg(long, default_value_t = 0.0)]
    duplication: f64,
    /// Stop adding peers once resident memory passes this many MiB, and run
    /// the scenario with the peers joined so far; the report says so.
    #[arg(long)]
    max_rss_mb: Option<u64>,
    /// Print join progress to standard error (on by default when it is a terminal).
    #[arg(long)]
    progress: bool,
    #[command(flatten)]
    output: Output,
}

/// Where the report goes.
#[derive(Args, Debug)]
struct Output {
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also write SVG plots (hop histogram, latency CDF, success over time) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Common {
    fn swarm(&self) -> anyhow::Result<Swarm> {
        anyhow::ensure!(self.peers >= 2, "--peers must be at least 2");
        anyhow::ensure!(self.peers <= u32::MAX as usize, "--peers must fit in 32 bits");
        anyhow::ensure!(self.join_rate > 0.0, "--join-rate must be positive");
        anyhow::ensure!(
            (1..=3).contains(&self.disjoint_paths),
            "--disjoint-paths must be 1, 2 or 3"
        );
        anyhow::ensure!((0.0..1.0).contains(&self.loss), "--loss must be in [0, 1)");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.duplication),
            "--duplication must be in [0, 1)"
        );
        let mut swarm = Swarm::new(self.peers, self.seed);
        swarm.net = self.net;
        swarm.join_rate = self.join_rate;
        swarm.disjoint_paths = self.disjoint_paths;
        swarm.loss = self.loss;
        swarm.duplication = self.duplication;
        swarm.max_rss_mb = self.max_rss_mb;
        swarm.progress = self.progress || std::io::stderr().is_terminal();
        Ok(swarm)
    }
}

fn minutes(m: f64, flag: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        m.is_finite() && m >= 0.0,
        "{flag} must be a non-negative number of minutes"
    );
    Ok(Duration::from_secs_f64(m * 60.0))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (common, result) = match cli.scenario {
        Scenario::Resume {
            file,
            checkpoint_every_min,
            progress,
            output,
        } => return resume(file, checkpoint_every_min, progress, &output),
        Scenario::Supervise {
            first_seed,
            seeds,
            jobs,
            drift,
            loss,
            fault_s,
            heal_s,
            peers,
            churn_per_s,
            work_s,
        } => {
            anyhow::ensure!(work_s > 0.0, "--work-s must be positive");
            anyhow::ensure!(jobs > 0, "--jobs must be positive");
            anyhow::ensure!(
                peers >= 9,
                "--peers must be at least 9 (a home of five and four executors)"
            );
            anyhow::ensure!(churn_per_s >= 0.0, "--churn-per-s must not be negative");
            anyhow::ensure!((0.0..1.0).contains(&drift), "--drift must be between 0 and 1");
            anyhow::ensure!((0.0..1.0).contains(&loss), "--loss must be between 0 and 1");
            let spec = scenario::SuperviseSpec {
                jobs,
                drift,
                loss,
                fault_s,
                heal_s,
                peers,
                churn_per_s,
                work_s,
                ..scenario::SuperviseSpec::default()
            };
            let wall = std::time::Instant::now();
            let report = scenario::supervise_sweep(&spec, first_seed, seeds);
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("supervise: {seeds} seeds in {:.1} s wall", wall.elapsed().as_secs_f64());
            if let Some(violation) = &report.first_violation {
                anyhow::bail!("violation: {violation}");
            }
            return Ok(());
        }
        Scenario::Devices {
            seeds,
            clients,
            shared,
            faults,
            seconds,
        } => {
            anyhow::ensure!(clients > 0, "--clients must be positive");
            anyhow::ensure!((0.0..=1.0).contains(&shared), "--shared must be between 0 and 1");
            let spec = scenario::DeviceSpec {
                clients,
                shared,
                faults,
                seconds,
            };
            let report = scenario::devices_sweep(&spec, seeds);
            println!("{}", serde_json::to_string(&report)?);
            if let Some(violation) = &report.first_violation {
                anyhow::bail!("violation: {violation}");
            }
            return Ok(());
        }
        Scenario::Leases {
            first_seed,
            seeds,
            clients,
            drift,
            loss,
            fault_s,
            heal_s,
            down,
            fixed_home,
            gone_after_s,
        } => {
            anyhow::ensure!(gone_after_s > 0, "--gone-after-s must be at least 1");
            anyhow::ensure!(clients > 0, "--clients must be positive");
            anyhow::ensure!(down <= 5, "--down is at most 5 (the members)");
            anyhow::ensure!((0.0..1.0).contains(&drift), "--drift must be between 0 and 1");
            anyhow::ensure!((0.0..1.0).contains(&loss), "--loss must be between 0 and 1");
            let spec = scenario::LeaseSpec {
                clients,
                drift,
                loss,
                fault_s: if down > 0 { 0 } else { fault_s },
                heal_s,
                down,
                home_churn: !fixed_home,
                gone_after: std::time::Duration::from_secs(gone_after_s),
                ..scenario::LeaseSpec::default()
            };
            let wall = std::time::Instant::now();
            let report = scenario::leases_sweep(&spec, first_seed, seeds);
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("leases: {seeds} seeds in {:.1} s wall", wall.elapsed().as_secs_f64());
            if let Some(violation) = &report.first_violation {
                anyhow::bail!("violation: {violation}");
            }
            return Ok(());
        }
        Scenario::Jobs {
            peers,
            slots,
            jobs,
            load,
            service_s,
            d,
            candidates,
            with_input,
            input_bonus,
            no_input_cache,
            seed,
        } => {
            anyhow::ensure!(peers > 0 && slots > 0, "--peers and --slots must be positive");
            anyhow::ensure!(
                load > 0.0 && load < 1.0,
                "--load must be between 0 and 1 (a share of capacity)"
            );
            anyhow::ensure!(service_s > 0.0, "--service-s must be positive");
            anyhow::ensure!(
                (0.0..=1.0).contains(&with_input),
                "--with-input must be between 0 and 1"
            );
            let spec = scenario::JobsSpec {
                peers,
                slots,
                jobs,
                load,
                mean_service: Duration::from_secs_f64(service_s),
                d,
                candidates,
                with_input,
                inputs: (peers / 10).max(1),
                input_bonus,
                cache_inputs: !no_input_cache,
                seed,
            };
            let wall = std::time::Instant::now();
            let report = scenario::jobs(&spec);
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("jobs: {:.1} s wall", wall.elapsed().as_secs_f64());
            return Ok(());
        }
        Scenario::Lookups {
            common,
            lookups,
            lookup_rate,
        } => {
            anyhow::ensure!(lookup_rate > 0.0, "--lookup-rate must be positive");
            let swarm = common.swarm()?;
            let result = scenario::lookups(&swarm, lookups, lookup_rate);
            (common, result)
        }
        Scenario::Churn {
            common,
            hours,
            session_median_min,
            downtime_median_min,
            session_dist,
            crash_fraction,
            records,
            lookup_rate,
            get_rate,
        } => {
            anyhow::ensure!(hours.is_finite() && hours > 0.0, "--hours must be positive");
            anyhow::ensure!(
                (0.0..=1.0).contains(&crash_fraction),
                "--crash-fraction must be in [0, 1]"
            );
            anyhow::ensure!(
                lookup_rate > 0.0 && get_rate > 0.0,
                "--lookup-rate and --get-rate must be positive"
            );
            let spec = ChurnSpec {
                hours,
                session_median: minutes(session_median_min, "--session-median-min")?,
                downtime_median: minutes(downtime_median_min, "--downtime-median-min")?,
                dist: session_dist,
                crash_fraction,
                records,
                lookup_rate,
                get_rate,
            };
            let swarm = common.swarm()?;
            let result = scenario::churn(&swarm, &spec);
            (common, result)
        }
        Scenario::Durability {
            common,
            days,
            files,
            file_mib,
            replicas,
            session_median_min,
            downtime_median_min,
            session_dist,
            crash_fraction,
            permanent_fraction,
            link_mbit,
            pin_check_s,
            no_handoff,
            no_decline,
            quota_mib,
            refresh_min,
            maintenance_s,
            replicate_min,
            checkpoint,
            checkpoint_every_min,
        } => {
            anyhow::ensure!(days.is_finite() && days > 0.0, "--days must be positive");
            anyhow::ensure!((1..=3).contains(&replicas), "--replicas must be 1, 2 or 3");
            anyhow::ensure!(
                (1..=1 << 20).contains(&file_mib),
                "--file-mib must be between 1 and 1048576"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&crash_fraction) && (0.0..=1.0).contains(&permanent_fraction),
                "--crash-fraction and --permanent-fraction must be in [0, 1]"
            );
            anyhow::ensure!(link_mbit > 0, "--link-mbit must be positive");
            anyhow::ensure!(
                pin_check_s.is_finite() && pin_check_s >= 1.0,
                "--pin-check-s must be at least 1"
            );
            anyhow::ensure!(refresh_min >= 1.0, "--refresh-min must be at least 1");
            anyhow::ensure!(
                maintenance_s.is_finite() && (1.0..=3600.0).contains(&maintenance_s),
                "--maintenance-s must be between 1 and 3600"
            );
            anyhow::ensure!(
                replicate_min.is_finite() && (1.0..=60.0).contains(&replicate_min),
                "--replicate-min must be between 1 and 60 (the republish interval)"
            );
            let spec = scenario::DurabilitySpec {
                days,
                files,
                file_bytes: file_mib << 20,
                replicas,
                session_median: minutes(session_median_min, "--session-median-min")?,
                downtime_median: minutes(downtime_median_min, "--downtime-median-min")?,
                dist: session_dist,
                crash_fraction,
                permanent_fraction,
                files_config: shoal_simnet::FilesConfig {
                    link_bytes_per_s: link_mbit * 1_000_000 / 8,
                    pin_check: Duration::from_secs_f64(pin_check_s),
                    max_lookups: 32,
                    handoff: !no_handoff,
                    decline: !no_decline,
                    quota_bytes: quota_mib.map(|q| q << 20),
                },
            };
            let mut swarm = common.swarm()?;
            swarm.refresh_interval = Some(minutes(refresh_min, "--refresh-min")?);
            swarm.maintenance_interval = Some(Duration::from_secs_f64(maintenance_s));
            swarm.replicate_interval = Some(minutes(replicate_min, "--replicate-min")?);
            let result = match checkpoint {
                None => scenario::durability(&swarm, &spec),
                Some(path) => {
                    let every = checkpointing(path, checkpoint_every_min)?;
                    match scenario::DurabilityRun::start(&swarm, &spec) {
                        Ok(run) => finish(run, &every)?,
                        Err(v) => Err(v),
                    }
                }
            };
            (common, result)
        }
        Scenario::Partition {
            common,
            split_min,
            before_min,
            after_min,
            lookup_rate,
            window_s,
            one_way,
        } => {
            anyhow::ensure!(lookup_rate > 0.0, "--lookup-rate must be positive");
            anyhow::ensure!(window_s > 0.0, "--window-s must be positive");
            let spec = PartitionSpec {
                split: minutes(split_min, "--split-min")?,
                before: minutes(before_min, "--before-min")?,
                after: minutes(after_min, "--after-min")?,
                lookup_rate,
                window: Duration::from_secs_f64(window_s),
                one_way,
            };
            let swarm = common.swarm()?;
            let result = scenario::partition(&swarm, &spec);
            (common, result)
        }
    };
    let report: Report =
        result.map_err(|v| anyhow::anyhow!("{v}\nreproduce with the same arguments and --seed {}", v.seed))?;
    print_report(&report, &common.output)
}

/// Checks `--checkpoint` and `--checkpoint-every-min`.
fn checkpointing(path: PathBuf, every_min: f64) -> anyhow::Result<scenario::Checkpointing> {
    anyhow::ensure!(
        every_min.is_finite() && every_min > 0.0,
        "--checkpoint-every-min must be a positive number of minutes"
    );
    anyhow::ensure!(
        !path.is_dir(),
        "--checkpoint: {} is a directory; name a file in it",
        path.display()
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        anyhow::ensure!(dir.is_dir(), "--checkpoint: {} is not a directory", dir.display());
    }
    Ok(scenario::Checkpointing {
        path,
        every: minutes(every_min, "--checkpoint-every-min")?,
    })
}

/// Runs a durability run to its end, saving as it goes. A violation is the
/// run's result; a first checkpoint that cannot be written stops it.
fn finish(
    run: scenario::DurabilityRun,
    every: &scenario::Checkpointing,
) -> anyhow::Result<Result<Report, shoal_simnet::Violation>> {
    match run.run_saving(every) {
        Ok(report) => Ok(Ok(report)),
        Err(scenario::DurabilityError::Violation(v)) => Ok(Err(v)),
        Err(scenario::DurabilityError::Checkpoint(e)) => Err(anyhow::Error::new(e).context("cannot save the run")),
    }
}

fn resume(file: PathBuf, every_min: f64, progress: bool, output: &Output) -> anyhow::Result<()> {
    let every = checkpointing(file.clone(), every_min)?;
    let mut run = scenario::DurabilityRun::load(&file)?;
    let progress = progress || std::io::stderr().is_terminal();
    run.set_progress(progress);
    if progress {
        eprintln!("durability: resumed at day {:.3} from {}", run.day(), file.display());
    }
    let report =
        finish(run, &every)?.map_err(|v| anyhow::anyhow!("{v}\nreproduce by resuming {} again", file.display()))?;
    print_report(&report, output)
}

fn print_report(report: &Report, output: &Output) -> anyhow::Result<()> {
    if output.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("cannot encode the report as JSON")?
        );
    } else {
        print!("{}", report.summary());
    }
    if let Some(dir) = &output.out {
        shoal_simnet::svg::write_plots(report, dir)
            .with_context(|| format!("cannot write plots to {}", dir.display()))?;
        if !output.json {
            println!("  plots         {}", dir.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
