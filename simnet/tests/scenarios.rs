//! Scenario runs small enough for CI: determinism, churn, partition, faults.

// Harness code outside #[test] functions unwraps too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shoal_simnet::scenario::{self, ChurnSpec, PartitionSpec, Swarm};
use shoal_simnet::{Preset, SessionDist};

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_does_not() {
    let swarm = Swarm::new(300, 42);
    let a = scenario::lookups(&swarm, 300, 200.0).unwrap();
    let b = scenario::lookups(&swarm, 300, 200.0).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    assert_eq!(a.messages, b.messages);
    assert_eq!(a.latency_ms.p99, b.latency_ms.p99);
    let c = scenario::lookups(&Swarm::new(300, 43), 300, 200.0).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn lookups_on_a_wan_with_loss_and_duplication_find_the_closest_peer() {
    let mut swarm = Swarm::new(400, 5);
    swarm.net = Preset::Wan;
    swarm.loss = 0.01;
    swarm.duplication = 0.01;
    swarm.join_rate = 50.0;
    let report = scenario::lookups(&swarm, 400, 50.0).unwrap();
    assert_eq!(report.lookups, 400);
    assert!(report.success_rate >= 0.98, "success {}", report.success_rate);
    assert!(report.hops.p50 <= 3, "hops {:?}", report.hops);
}

#[test]
fn disjoint_paths_still_find_the_closest_peer() {
    let one = scenario::lookups(&Swarm::new(300, 9), 200, 100.0).unwrap();
    let mut swarm = Swarm::new(300, 9);
    swarm.disjoint_paths = 3;
    let report = scenario::lookups(&swarm, 200, 100.0).unwrap();
    assert!(report.success_rate >= 0.99, "success {}", report.success_rate);
    // Disjoint paths each converge on their own, asking peers no other
    // path asked (the lookup's unit tests check that no peer is asked
    // twice): the same lookups cost well over one path's messages. With the
    // paths ignored they would cost the same.
    assert!(
        report.messages_per_lookup >= 1.5 * one.messages_per_lookup,
        "3 paths: {} messages per lookup, 1 path: {}",
        report.messages_per_lookup,
        one.messages_per_lookup
    );
}

#[test]
fn records_survive_an_hour_of_churn_with_crashes() {
    let swarm = Swarm::new(300, 11);
    let spec = ChurnSpec {
        hours: 1.0,
        session_median: Duration::from_secs(30 * 60),
        downtime_median: Duration::from_secs(10 * 60),
        dist: SessionDist::Exponential,
        crash_fraction: 0.5,
        records: 50,
        lookup_rate: 0.5,
        get_rate: 0.2,
    };
    let report = scenario::churn(&swarm, &spec).unwrap();
    let churn = report.churn_events.unwrap();
    assert!(churn.crashes > 20 && churn.leaves > 20, "churn happened: {churn:?}");
    assert!(report.success_rate >= 0.95, "lookup success {}", report.success_rate);
    assert!(
        report.record_success_rate.unwrap() >= 0.98,
        "records {:?}",
        report.record_success_rate
    );
}

#[test]
fn a_healed_partition_reconverges() {
    let swarm = Swarm::new(300, 13);
    let spec = PartitionSpec {
        split: Duration::from_secs(5 * 60),
        before: Duration::from_secs(60),
        after: Duration::from_secs(10 * 60),
        lookup_rate: 20.0,
        window: Duration::from_secs(30),
        one_way: false,
    };
    let report = scenario::partition(&swarm, &spec).unwrap();
    let phases = report.partition_success.unwrap();
    assert!(phases.before >= 0.99, "{phases:?}");
    assert!(
        phases.during < 0.9,
        "a split swarm cannot find peers across the cut: {phases:?}"
    );
    assert!(report.reconverge_s.is_some(), "never reconverged: {phases:?}");
}

#[test]
fn a_one_way_cut_heals_too_and_plots_are_written() {
    let swarm = Swarm::new(200, 17);
    let spec = PartitionSpec {
        split: Duration::from_secs(3 * 60),
        before: Duration::from_secs(30),
        after: Duration::from_secs(8 * 60),
        lookup_rate: 20.0,
        window: Duration::from_secs(30),
        one_way: true,
    };
    let report = scenario::partition(&swarm, &spec).unwrap();
    let phases = report.partition_success.unwrap();
    assert!(phases.during < 0.95, "a one-way cut still breaks lookups: {phases:?}");
    assert!(report.reconverge_s.is_some(), "never reconverged: {phases:?}");
    let dir = std::env::temp_dir().join(format!("shoal-simnet-plots-{}", std::process::id()));
    shoal_simnet::svg::write_plots(&report, &dir).unwrap();
    for name in ["hops.svg", "latency_cdf.svg", "success.svg"] {
        let svg = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}");
    }
    let success = std::fs::read_to_string(dir.join("success.svg")).unwrap();
    assert!(success.contains("<polyline"), "the success plot has a line");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn durability_spec(permanent_fraction: f64, handoff: bool) -> scenario::DurabilitySpec {
    scenario::DurabilitySpec {
        days: 0.1,
        files: 100,
        file_bytes: 64 << 20,
        replicas: 3,
        session_median: Duration::from_secs(120 * 60),
        downtime_median: Duration::from_secs(30 * 60),
        dist: SessionDist::Exponential,
        crash_fraction: 0.5,
        permanent_fraction,
        files_config: shoal_simnet::FilesConfig {
            link_bytes_per_s: 125_000_000,
            pin_check: Duration::from_secs(30),
            max_lookups: 32,
            handoff,
            decline: true,
            quota_bytes: None,
        },
    }
}

#[test]
fn pinned_files_survive_churn_where_every_departure_is_for_good() {
    // Within 2.4 simulated hours about two thirds of the first peers leave
    // and never come back: without repair, about one file in eight would
    // lose all three copies.
    let swarm = Swarm::new(200, 21);
    let report = scenario::durability(&swarm, &durability_spec(1.0, true)).unwrap();
    let d = report.durability.unwrap();
    assert_eq!(d.placed, 100, "every pin reached its three home members");
    assert!(d.permanent_departures > 100, "{d:?}");
    assert_eq!(d.lost, 0, "{d:?}");
    assert!(
        d.counters.fetched > 300 && d.counters.handoffs > 0,
        "repair copied files: {d:?}"
    );
    assert!(d.repair_bytes_per_peer_day > 0.0 && d.spread_mean > 0.0);
    // The same seed gives the same run.
    let again = scenario::durability(&swarm, &durability_spec(1.0, true)).unwrap();
    assert_eq!(report.trace_hash, again.trace_hash);
}

#[test]
fn a_run_saved_half_way_and_resumed_ends_exactly_as_the_uninterrupted_run() {
    let swarm = Swarm::new(200, 23);
    let spec = durability_spec(0.3, true);
    let whole = scenario::durability(&swarm, &spec).unwrap();

    let dir = std::env::temp_dir().join(format!("shoal-simnet-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.ckpt");
    let mut run = scenario::DurabilityRun::start(&swarm, &spec).unwrap();
    run.run_until_day(0.05).unwrap();
    assert!((0.04..=0.05).contains(&run.day()), "stopped at day {}", run.day());
    run.save(&path).unwrap();
    drop(run);
    let resumed = scenario::DurabilityRun::load(&path).unwrap();
    assert!((0.04..=0.05).contains(&resumed.day()));
    let resumed = resumed.run().unwrap();
    let d = whole.durability.as_ref().unwrap();
    assert!(
        d.counters.fetched > 0 && d.permanent_departures > 0,
        "the run churned: {d:?}"
    );
    // The whole report but what belongs to the process (wall and memory).
    let same = |report: &shoal_simnet::Report| {
        let mut json = serde_json::to_value(report).unwrap();
        for per_process in [
            "wall_s",
            "events_per_s",
            "join_wall_s",
            "peak_rss_mb",
            "memory_bytes_per_peer",
            "core_bytes_per_peer",
        ] {
            json.as_object_mut().unwrap().remove(per_process).unwrap();
        }
        json
    };
    assert_eq!(same(&resumed), same(&whole));
    assert_eq!(resumed.trace_hash, whole.trace_hash);

    // Saving at every sample does not change the run, and the last save
    // (at the last sample, as a stopped process leaves it) resumes to the
    // same end.
    let every_sample = scenario::Checkpointing {
        path: path.clone(),
        every: Duration::ZERO,
    };
    let saving = scenario::DurabilityRun::start(&swarm, &spec)
        .unwrap()
        .run_saving(&every_sample)
        .unwrap();
    assert_eq!(same(&saving), same(&whole));
    let last = scenario::DurabilityRun::load(&path).unwrap();
    assert!(last.day() > 0.09, "the last save is near the end: day {}", last.day());
    assert_eq!(same(&last.run().unwrap()), same(&whole));

    // A file with one byte changed, cut short, or not a checkpoint at all
    // is refused with the reason.
    let bytes = std::fs::read(&path).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() * 2 / 3] ^= 0x10; // breaks the encoding here
    std::fs::write(&path, &flipped).unwrap();
    let changed = scenario::DurabilityRun::load(&path).unwrap_err().to_string();
    assert!(changed.contains("damaged checkpoint"), "{changed}");
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1; // the last number: still decodes
    std::fs::write(&path, &flipped).unwrap();
    let changed = scenario::DurabilityRun::load(&path).unwrap_err().to_string();
    assert!(changed.contains("its hash differs"), "{changed}");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let cut = scenario::DurabilityRun::load(&path).unwrap_err().to_string();
    assert!(cut.contains("damaged checkpoint"), "{cut}");
    std::fs::write(&path, b"{\"scenario\":\"durability\"}").unwrap();
    let other = scenario::DurabilityRun::load(&path).unwrap_err().to_string();
    assert!(other.contains("not a shoal-simnet checkpoint"), "{other}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn released_copies_stay_until_the_quota_needs_the_room() {
    // Departures that come back: the peers that stood in for an absent home
    // member release their copies when it returns. Without a quota those
    // copies stay on the disks; with room for three files a peer drops
    // released copies for pinned ones and refuses pins beyond that (one
    // peer's key makes it the home of nine), unless it declines them.
    let swarm = Swarm::new(200, 22);
    let roomy = scenario::durability(&swarm, &durability_spec(0.0, true)).unwrap();
    let roomy = roomy.durability.unwrap();
    assert_eq!(roomy.lost, 0, "{roomy:?}");
    assert!(roomy.counters.released > 0, "{roomy:?}");
    assert_eq!((roomy.counters.evicted, roomy.counters.refused), (0, 0), "{roomy:?}");
    assert!(
        roomy.stored_mean > roomy.spread_mean && roomy.stored_max > roomy.spread_max,
        "released copies stay on the disks: {roomy:?}"
    );
    let mut tight = durability_spec(0.0, true);
    tight.files_config.quota_bytes = Some(3 * tight.file_bytes);
    tight.files_config.decline = false;
    let refusing = scenario::durability(&swarm, &tight).unwrap().durability.unwrap();
    assert!(refusing.stored_max <= 3, "the quota holds: {refusing:?}");
    assert!(
        refusing.counters.evicted > 0 && refusing.counters.refused > 0,
        "released copies made room, and pins beyond the quota were refused: {refusing:?}"
    );
    assert_eq!(refusing.counters.declined, 0);
    // A full peer that steps aside (declines) lets the next one out keep
    // the copy: fewer refusals, fewer files short of copies.
    tight.files_config.decline = true;
    let declining = scenario::durability(&swarm, &tight).unwrap().durability.unwrap();
    assert!(declining.stored_max <= 3, "the quota holds: {declining:?}");
    assert!(declining.counters.declined > 0, "{declining:?}");
    assert!(
        declining.counters.refused < refusing.counters.refused
            && declining.under_replicated_mean < refusing.under_replicated_mean,
        "declining {declining:?}\nrefusing {refusing:?}"
    );
}
