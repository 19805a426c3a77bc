//! Compute slots between real peers on loopback (mDNS off): a job runs on
//! another peer and its output is fetched by id; a job runs beside its
//! input; many jobs spread; a queued job starts when a slot frees; a job's
//! status is read from its home on a third peer; bad modules, untrusted
//! native commands and lapsed leases end with their clear errors.
//!
//! The modules are written in WAT here (no toolchain needed); the C
//! examples in `examples/jobs/` are run by the CLI tests and the LAN script.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // The files tests use the rest of it.
#[path = "files/common.rs"]
mod common;

use std::time::Duration;

use common::{PATIENCE, swarm_with, until};
use shoal::node::jobs::{ComputeConfig, JobView, Submit, SubmitError};
use shoal::node::{Client, NodeConfig};
use shoal::overlay::Key;
use shoal::resources::compute::{JobKind, JobRecord, JobSpec, JobState};
use shoal::resources::store::Import;

/// A WASI command module whose `_start` is `body`, with one page of
/// memory, `data` at address 1024, and the imports the tests use.
fn module(body: &str, data: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{data}")
  (func (export "_start") {body}))"#
    ))
    .unwrap()
}

/// Writes the `len` bytes at 1024 to `fd` (1: stdout).
fn write(fd: u32, len: u32) -> String {
    format!(
        "(i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const {len}))
         (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))"
    )
}

/// Prints `hi`, writes `result` to /out/r.txt, exits with 0.
fn hello() -> Vec<u8> {
    module(
        &format!(
            "{}
             (drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 1027) (i32.const 5) (i32.const 1)
                (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 16)))
             (i32.store (i32.const 0) (i32.const 1032)) (i32.store (i32.const 4) (i32.const 6))
             (drop (call $fd_write (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8)))",
            write(1, 3)
        ),
        // 1024: "hi\n", 1027: "r.txt", 1032: "result"
        "hi\\0ar.txtresult",
    )
}

/// Reads /in/data and exits with the number of bytes read (at most 255).
fn read_input() -> Vec<u8> {
    module(
        "(drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 0)
            (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
         (i32.store (i32.const 0) (i32.const 2048)) (i32.store (i32.const 4) (i32.const 255))
         (drop (call $fd_read (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8)))
         (call $proc_exit (i32.load (i32.const 8)))",
        "data",
    )
}

/// Counts down from `rounds` and exits with 0 (a few ms per million).
fn spin(rounds: u64) -> Vec<u8> {
    module(
        &format!(
            "(local $n i64) (local.set $n (i64.const {rounds}))
             (loop $more (local.set $n (i64.sub (local.get $n) (i64.const 1)))
               (br_if $more (i64.ne (local.get $n) (i64.const 0))))"
        ),
        "",
    )
}

fn slots(n: u32) -> ComputeConfig {
    ComputeConfig {
        slots: n,
        ..ComputeConfig::default()
    }
}

/// Shares `bytes` on `client` as a file and returns its id.
async fn share(client: &Client, test: &str, name: &str, bytes: &[u8]) -> Key {
    let path = common::data_dir(test, 100).join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    client.files().share(path, Import::Copy).await.unwrap().0.id
}

fn wasm_spec(module: Key, args: &[&str]) -> JobSpec {
    JobSpec {
        kind: Some(JobKind::Wasm),
        module: Some(module),
        args: args.iter().map(ToString::to_string).collect(),
        ..JobSpec::default()
    }
}

/// Waits until `client` sees `n` peers offering slots (an offer is
/// published once the peer has joined).
async fn offers(client: &Client, n: usize) {
    until(&format!("{n} peers offer slots"), || async {
        client.jobs().slots().await.unwrap().len() == n
    })
    .await;
}

async fn submit(client: &Client, spec: JobSpec) -> Key {
    client.jobs().submit(Submit { spec, detach: false }).await.unwrap()
}

/// Waits until `job` has ended as `client` sees it, and returns its view.
async fn ended(client: &Client, job: Key) -> JobView {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let view = client.jobs().status(job).await.unwrap();
        if let Some(view) = view.filter(|v| v.state == "ended" || v.state == "cancelled") {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for job {job} to end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_another_peer_and_its_output_is_fetched_by_id() {
    let test = "elsewhere";
    // Peer 0 offers no slot: the job must run on 1 or 2.
    let peers = swarm_with(test, 3, |i, config: &mut NodeConfig, _| {
        config.compute = slots(if i == 0 { 0 } else { 1 });
    })
    .await;
    offers(&peers[0], 2).await;
    let module = share(&peers[0], test, "hello.wasm", &hello()).await;
    let job = submit(&peers[0], wasm_spec(module, &[])).await;
    let view = ended(&peers[0], job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    assert!(view.error.is_none(), "{view:?}");
    let executor = view.peer.clone().unwrap();
    assert_ne!(executor, peers[0].peer_id().to_string(), "peer 0 offers no slot");
    assert!(view.queued <= view.placed.unwrap() && view.placed <= view.started && view.started <= view.ended);
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let events = peers[0]
            .jobs()
            .output(job, from, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        if events.chunks.is_empty() {
            break;
        }
        for c in events.chunks {
            out.extend(c.bytes);
        }
        from = events.next;
    }
    assert_eq!(out, b"hi\n");

    // The output directory, fetched by id on the submitter.
    let output: Key = view.output.unwrap().parse().unwrap();
    let dir = common::data_dir(test, 101);
    peers[0]
        .files()
        .download(output, None, Default::default(), Some(dir.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.join("r.txt")).unwrap(), b"result");

    // The home keeps the record as it ended: the submitter itself cannot
    // take it back to an earlier state.
    let home_record = || async {
        let held = peers[0].get_value(job).await.unwrap()?;
        JobRecord::decode(&held.value)
    };
    until("the home holds the ended record", || async {
        home_record()
            .await
            .is_some_and(|r| matches!(r.state, JobState::Ended { exit_code: 0, .. }))
    })
    .await;
    let ended_record = home_record().await.unwrap();
    let mut rewound = ended_record.clone();
    rewound.state = JobState::Queued;
    let stored = peers[0].put_value(job, rewound.encode()).await.unwrap_or(0);
    assert_eq!(stored, 0, "no home member takes the rewound record");
    assert_eq!(home_record().await.unwrap(), ended_record);

    // The third peer (neither submitter nor executor) reads the record at
    // the job's home.
    let third = peers[1..].iter().find(|p| p.peer_id().to_string() != executor).unwrap();
    let remote = ended(third, job).await;
    assert!(!remote.submitted_here);
    assert_eq!(
        (remote.exit_code, remote.peer.as_deref(), remote.output.is_some()),
        (Some(0), Some(executor.as_str()), true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_output_pinned_with_replicas_outlives_its_executor() {
    let test = "replicas";
    // Peer 0 submits; 1 and 2 run jobs.
    let peers = swarm_with(test, 5, |i, config: &mut NodeConfig, _| {
        config.compute = slots(u32::from(i == 1 || i == 2));
    })
    .await;
    offers(&peers[0], 2).await;
    let module = share(&peers[0], test, "hello.wasm", &hello()).await;
    let mut spec = wasm_spec(module, &[]);
    spec.replicas = 2;
    let job = submit(&peers[0], spec).await;
    let view = ended(&peers[0], job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    let output: Key = view.output.clone().unwrap().parse().unwrap();
    let executor = peers
        .iter()
        .find(|p| Some(p.peer_id().to_string()) == view.peer)
        .unwrap();
    // The output's home fetches its copies from the executor.
    until("a second peer holds the output", || async {
        peers[0].get_providers(output).await.is_ok_and(|p| p.len() >= 2)
    })
    .await;
    executor.leave().await.unwrap();
    let dir = common::data_dir(test, 101);
    peers[0]
        .files()
        .download(output, None, Default::default(), Some(dir.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.join("r.txt")).unwrap(), b"result");
    // More copies than a home has is refused before the job runs.
    let mut spec = wasm_spec(module, &[]);
    spec.replicas = 200;
    let refused = peers[0].jobs().submit(Submit { spec, detach: false }).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("--replicas")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_behind_a_long_one_is_handed_to_a_peer_that_frees_up() {
    let test = "steal";
    // Peer 0 submits; 1 and 2 have a slot each.
    let peers = swarm_with(test, 3, |i, config: &mut NodeConfig, _| {
        config.compute = slots(u32::from(i > 0));
    })
    .await;
    offers(&peers[0], 2).await;
    let long = share(&peers[0], test, "long.wasm", &spin(200_000_000_000)).await;
    let short = share(&peers[0], test, "short.wasm", &hello()).await;
    let submitter = peers[0].clone();
    let running = |job| {
        let submitter = submitter.clone();
        async move {
            submitter
                .jobs()
                .status(job)
                .await
                .unwrap()
                .filter(|v| v.state == "running")
        }
    };
    let a = submit(&peers[0], wasm_spec(long, &[])).await;
    until("a runs", || async { running(a).await.is_some() }).await;
    let b = submit(&peers[0], wasm_spec(long, &[])).await;
    until("b runs", || async { running(b).await.is_some() }).await;
    let a_on = running(a).await.unwrap().peer.unwrap();
    // C waits behind A (moved there if it queued behind B).
    let c = submit(&peers[0], wasm_spec(short, &[])).await;
    let c_view = peers[0].jobs().status(c).await.unwrap().unwrap();
    if c_view.peer.as_deref() != Some(a_on.as_str()) {
        let to = peers
            .iter()
            .find(|p| p.peer_id().to_string() == a_on)
            .unwrap()
            .peer_id();
        peers[0].jobs().move_job(c, Some(to)).await.unwrap();
    }
    // B's peer frees up: C goes there rather than wait for A.
    peers[0].jobs().cancel(b).unwrap();
    let view = ended(&peers[0], c).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    assert_ne!(view.peer.as_deref(), Some(a_on.as_str()), "{view:?}");
    assert!(running(a).await.is_some(), "C ended while A still ran");
    let history = peers[0].jobs().history(c).await.unwrap();
    assert!(
        history.iter().any(|p| p.why.as_deref() == Some("rebalanced")),
        "{history:?}"
    );
    // A stops (or its spinning thread would hold the test's end).
    peers[0].jobs().cancel(a).unwrap();
    assert_eq!(ended(&peers[0], a).await.exit_code, Some(130));
}

/// A stepping module (`shoal_step`, run in steps and saved whole between
/// them): `_initialize` prints "init"; each of 400 steps spins a while and
/// adds to one of 64 words; the last writes their fold to /out/r.txt.
fn stepper() -> Vec<u8> {
    wat::parse_str(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 2048) "r.txtinit\0a")
  (global $steps (export "steps") (mut i64) (i64.const 0))
  (func $write (param $fd i32) (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_initialize") (call $write (i32.const 1) (i32.const 2053) (i32.const 5)))
  (func (export "shoal_step") (result i32)
    (local $slot i32) (local $n i64) (local $sum i64)
    (global.set $steps (i64.add (global.get $steps) (i64.const 1)))
    (local.set $n (i64.const 20000000))
    (loop $spin (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br_if $spin (i64.ne (local.get $n) (i64.const 0))))
    (local.set $slot (i32.add (i32.const 65536)
      (i32.shl (i32.wrap_i64 (i64.rem_u (global.get $steps) (i64.const 64))) (i32.const 3))))
    (i64.store (local.get $slot)
      (i64.add (i64.load (local.get $slot)) (i64.mul (global.get $steps) (i64.const 2654435761))))
    (if (i64.lt_u (global.get $steps) (i64.const 400)) (then (return (i32.const -1))))
    (local.set $slot (i32.const 65536))
    (loop $fold
      (local.set $sum (i64.xor (i64.rotl (local.get $sum) (i64.const 7)) (i64.load (local.get $slot))))
      (local.set $slot (i32.add (local.get $slot) (i32.const 8)))
      (br_if $fold (i32.lt_u (local.get $slot) (i32.const 66048))))
    (i64.store (i32.const 1024) (local.get $sum))
    (drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 2048) (i32.const 5) (i32.const 1)
        (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 16)))
    (call $write (i32.load (i32.const 16)) (i32.const 1024) (i32.const 8))
    (i32.const 0)))"#,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stepping_module_drained_mid_run_goes_on_elsewhere_from_where_it_was() {
    let test = "transparent";
    let peers = swarm_with(test, 3, |i, config: &mut NodeConfig, _| {
        config.compute = slots(u32::from(i > 0));
    })
    .await;
    offers(&peers[0], 2).await;
    let module = share(&peers[0], test, "stepper.wasm", &stepper()).await;
    // Uninterrupted, for the output to compare with.
    let whole = ended(&peers[0], submit(&peers[0], wasm_spec(module, &[])).await).await;
    assert_eq!(whole.exit_code, Some(0), "{whole:?}");
    let job = submit(&peers[0], wasm_spec(module, &[])).await;
    let first = loop {
        let view = peers[0].jobs().status(job).await.unwrap().unwrap();
        if view.state == "running" {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let index = peers
        .iter()
        .position(|p| Some(p.peer_id().to_string()) == first.peer)
        .unwrap();
    let drained = peers[index].jobs().drain().await.unwrap();
    assert_eq!(drained.len(), 1, "{drained:?}");
    let view = ended(&peers[0], job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    assert_eq!(view.output, whole.output, "the same /out as the uninterrupted run");
    let last = peers
        .iter()
        .find(|p| Some(p.peer_id().to_string()) == view.peer)
        .unwrap();
    assert_ne!(last.peer_id(), peers[index].peer_id());
    // The drained run was saved whole, and the next went on from there:
    // it never ran `_initialize`.
    let history = peers[0].jobs().history(job).await.unwrap();
    let ran: Vec<_> = history.iter().filter(|p| p.ran).collect();
    assert_eq!(ran[0].why.as_deref(), Some("drained"), "{history:?}");
    assert!(ran[0].checkpoints >= 1, "{history:?}");
    // The snapshot it paused with went along with the next grant, which
    // went on from it and had the home keep it (the home held only the
    // pre-copy when the job moved).
    assert!(ran.len() >= 2 && ran[ran.len() - 1].checkpoints >= 1, "{history:?}");
    let log = last.jobs().output(job, 0, Duration::ZERO).await.unwrap().unwrap();
    let printed: Vec<u8> = log.chunks.into_iter().flat_map(|c| c.bytes).collect();
    assert!(!printed.starts_with(b"init"), "{:?}", String::from_utf8_lossy(&printed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stepping_module_whose_executor_goes_goes_on_from_its_last_snapshot() {
    let test = "snapshots";
    // Peer 0 submits; 1 and 2 run jobs and save stepping modules every
    // 300 ms while they run.
    let peers = swarm_with(test, 5, |i, config: &mut NodeConfig, _| {
        config.compute = ComputeConfig {
            slots: u32::from(i == 1 || i == 2),
            lease_term: Duration::from_secs(2),
            snapshot_every: Duration::from_millis(300),
            ..ComputeConfig::default()
        };
    })
    .await;
    offers(&peers[0], 2).await;
    let module = share(&peers[0], test, "stepper.wasm", &stepper()).await;
    let whole = ended(&peers[0], submit(&peers[0], wasm_spec(module, &[])).await).await;
    assert_eq!(whole.exit_code, Some(0), "{whole:?}");
    let job = submit(&peers[0], wasm_spec(module, &[])).await;
    // Once its home keeps a snapshot, its executor goes.
    let saved = || async {
        peers[0]
            .jobs()
            .history(job)
            .await
            .unwrap()
            .iter()
            .any(|p| p.checkpoints >= 2 && p.ended.is_none())
    };
    // The history counts a save one member took; a second is asked for
    // only once a majority answered the first, which is what a new
    // placement reads.
    until("a snapshot is kept by a majority", saved).await;
    let first = peers[0].jobs().status(job).await.unwrap().unwrap();
    let executor = peers
        .iter()
        .find(|p| Some(p.peer_id().to_string()) == first.peer)
        .unwrap();
    executor.leave().await.unwrap();
    let view = ended(&peers[3], job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    assert_eq!(view.output, whole.output, "the same /out as the uninterrupted run");
    let last = peers
        .iter()
        .find(|p| Some(p.peer_id().to_string()) == view.peer)
        .unwrap();
    assert_ne!(last.peer_id(), executor.peer_id());
    let log = last.jobs().output(job, 0, Duration::ZERO).await.unwrap().unwrap();
    let printed: Vec<u8> = log.chunks.into_iter().flat_map(|c| c.bytes).collect();
    assert!(
        !printed.starts_with(b"init"),
        "resumed, not started again: {:?}",
        String::from_utf8_lossy(&printed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_an_input_runs_on_the_inputs_provider() {
    let test = "beside-input";
    let peers = swarm_with(test, 4, |_, config: &mut NodeConfig, _| config.compute = slots(1)).await;
    offers(&peers[0], 4).await;
    let input = share(&peers[3], test, "data", &[7u8; 42]).await;
    let module = share(&peers[0], test, "read.wasm", &read_input()).await;
    for _ in 0..4 {
        let mut spec = wasm_spec(module, &[]);
        spec.inputs = vec![(input, "data".into())];
        let job = submit(&peers[0], spec).await;
        let view = ended(&peers[0], job).await;
        assert_eq!(view.exit_code, Some(42), "the job read its 42-byte input: {view:?}");
        assert_eq!(
            view.peer,
            Some(peers[3].peer_id().to_string()),
            "it ran beside its input"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_over_three_peers_all_finish_and_spread() {
    let test = "fifty";
    let peers = swarm_with(test, 3, |_, config: &mut NodeConfig, _| config.compute = slots(2)).await;
    offers(&peers[0], 3).await;
    let module = share(&peers[0], test, "spin.wasm", &spin(20_000_000)).await;
    // All at once, as a batch is submitted: every submission asks the
    // job's home and probes executors, so streams reach each peer in
    // bursts, and none of a burst may be lost.
    let jobs = futures::future::join_all((0..50).map(|_| submit(&peers[0], wasm_spec(module, &[])))).await;
    let mut per_peer = std::collections::BTreeMap::<String, usize>::new();
    for job in jobs {
        let view = ended(&peers[0], job).await;
        assert_eq!(view.exit_code, Some(0), "{view:?}");
        *per_peer.entry(view.peer.unwrap()).or_default() += 1;
    }
    assert_eq!(per_peer.len(), 3, "every peer ran some: {per_peer:?}");
    assert!(per_peer.values().all(|n| *n >= 5), "spread: {per_peer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_behind_a_busy_slot_starts_when_it_frees() {
    let test = "queued";
    let peers = swarm_with(test, 2, |i, config: &mut NodeConfig, _| {
        config.compute = slots(if i == 1 { 1 } else { 0 });
    })
    .await;
    offers(&peers[0], 1).await;
    let long = share(&peers[0], test, "long.wasm", &spin(1_500_000_000)).await;
    let short = share(&peers[0], test, "short.wasm", &spin(1_000)).await;
    let first = submit(&peers[0], wasm_spec(long, &[])).await;
    let second = submit(&peers[0], wasm_spec(short, &[])).await;
    let waiting = peers[0].jobs().status(second).await.unwrap().unwrap();
    let first_now = peers[0].jobs().status(first).await.unwrap().unwrap();
    assert!(
        first_now.ended.is_none(),
        "the long job is still running: {first_now:?}"
    );
    assert_eq!(
        (waiting.state.as_str(), waiting.position),
        ("placed", Some(1)),
        "{waiting:?}"
    );
    let first = ended(&peers[0], first).await;
    let second = ended(&peers[0], second).await;
    assert_eq!((first.exit_code, second.exit_code), (Some(0), Some(0)));
    assert!(second.started.unwrap() >= first.ended.unwrap(), "{first:?} {second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_and_jobs_that_fit_nowhere_get_clear_errors() {
    let test = "bad";
    let peers = swarm_with(test, 2, |i, config: &mut NodeConfig, _| {
        config.compute = slots(i as u32)
    })
    .await;
    let jobs = peers[0].jobs();
    assert!(
        jobs.check_module(b"#!/bin/sh")
            .unwrap_err()
            .contains("not a WebAssembly module")
    );
    let imports = wat::parse_str(r#"(module (import "env" "socket" (func)) (func (export "_start")))"#).unwrap();
    assert!(jobs.check_module(&imports).unwrap_err().contains("env::socket"));

    // The executor says the same when a module reaches it unchecked.
    let module = share(&peers[0], test, "imports.wasm", &imports).await;
    let view = ended(&peers[0], submit(&peers[0], wasm_spec(module, &[])).await).await;
    assert_eq!(view.exit_code, Some(125));
    assert!(view.error.as_deref().unwrap().contains("env::socket"), "{view:?}");

    let trap = wat::parse_str(r#"(module (func $deep unreachable) (func (export "_start") call $deep))"#).unwrap();
    let module = share(&peers[0], test, "trap.wasm", &trap).await;
    let view = ended(&peers[0], submit(&peers[0], wasm_spec(module, &[])).await).await;
    assert_eq!(view.exit_code, Some(134));
    let error = view.error.unwrap();
    assert!(error.contains("unreachable") && error.contains("deep"), "{error}");

    let mut too_big = wasm_spec(module, &[]);
    too_big.memory = 64 << 30;
    let refused = peers[0]
        .jobs()
        .submit(Submit {
            spec: too_big,
            detach: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, SubmitError::Place { .. }), "{refused}");
    let mut nowhere = wasm_spec(module, &[]);
    nowhere.labels = [("gpu".to_string(), "a100".to_string())].into();
    let refused = peers[0]
        .jobs()
        .submit(Submit {
            spec: nowhere,
            detach: false,
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("gpu=a100"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_commands_run_only_for_trusted_submitters() {
    let test = "native";
    // Peer 1 runs native commands for peer 0 only.
    let peers = swarm_with(test, 3, |i, config: &mut NodeConfig, started: &[Client]| {
        if i == 1 {
            config.compute = ComputeConfig {
                slots: 1,
                allow_native: true,
                trust: vec![started[0].peer_id()],
                ..ComputeConfig::default()
            };
        }
    })
    .await;
    offers(&peers[0], 1).await;
    offers(&peers[2], 1).await;
    let spec = JobSpec {
        kind: Some(JobKind::Native),
        args: vec!["sh".into(), "-c".into(), "echo native; exit 3".into()],
        ..JobSpec::default()
    };
    let job = submit(&peers[0], spec.clone()).await;
    let view = ended(&peers[0], job).await;
    assert_eq!(view.exit_code, Some(3), "{view:?}");
    assert_eq!(view.peer, Some(peers[1].peer_id().to_string()));

    let refused = peers[2]
        .jobs()
        .submit(Submit { spec, detach: false })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&peers[1].peer_id().to_string()) && refused.contains(&peers[2].peer_id().to_string()),
        "says who refused whom: {refused}"
    );
    assert!(refused.contains("trust"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_outlives_its_submitter_and_its_executor() {
    let test = "outlives";
    // Peer 0 submits and leaves; peers 1 and 2 run jobs; the job's home
    // (5 of the 7) keeps its tenure and places it again when its
    // executor goes.
    let peers = swarm_with(test, 7, |i, config: &mut NodeConfig, _| {
        config.compute = ComputeConfig {
            slots: u32::from(i == 1 || i == 2),
            lease_term: Duration::from_secs(2),
            ..ComputeConfig::default()
        };
    })
    .await;
    offers(&peers[0], 2).await;
    // Seconds of work (about ten here), then "hi" on stdout.
    let body = "(local $n i64) (local.set $n (i64.const 30000000000))
         (loop $more (local.set $n (i64.sub (local.get $n) (i64.const 1)))
           (br_if $more (i64.ne (local.get $n) (i64.const 0))))"
        .to_string()
        + &write(1, 3);
    let long = share(&peers[0], test, "long.wasm", &module(&body, "hi\\0a")).await;
    let job = submit(&peers[0], wasm_spec(long, &[])).await;
    let watcher = &peers[3];
    until("the job runs", || async {
        watcher
            .jobs()
            .status(job)
            .await
            .unwrap()
            .is_some_and(|v| v.state == "running")
    })
    .await;
    let first = watcher.jobs().status(job).await.unwrap().unwrap();
    let first_executor = first.peer.clone().unwrap();
    // The submitter goes; then the executor, mid-run.
    peers[0].leave().await.unwrap();
    let executor = peers
        .iter()
        .find(|p| p.peer_id().to_string() == first_executor)
        .unwrap();
    executor.leave().await.unwrap();
    let view = ended(watcher, job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    assert_ne!(
        view.peer.as_deref(),
        Some(first_executor.as_str()),
        "it ended elsewhere: {view:?}"
    );
    assert!(
        view.token.unwrap() > first.token.unwrap(),
        "a later grant: {first:?} then {view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_checkpoints_goes_on_from_its_checkpoint_on_another_peer() {
    let test = "checkpoint";
    let peers = swarm_with(test, 7, |i, config: &mut NodeConfig, started: &[Client]| {
        config.compute = ComputeConfig {
            slots: u32::from(i == 1 || i == 2),
            allow_native: true,
            trust: started.first().map(Client::peer_id).into_iter().collect(),
            lease_term: Duration::from_secs(2),
            ..ComputeConfig::default()
        };
    })
    .await;
    offers(&peers[0], 2).await;
    // Six steps of a second each; after each, the count goes to /ckpt and
    // the job exits 85 ("checkpointed: run me again"). /out is not kept
    // across peers: its log shows where the last run began.
    let script = r#"n=$(cat "$SHOAL_CKPT/n" 2>/dev/null || echo 0); n=$((n+1)); echo "step $n" >> "$SHOAL_OUT/log"
        sleep 1; echo $n > "$SHOAL_CKPT/n"; [ $n -lt 6 ] && exit 85; exit 0"#;
    let spec = JobSpec {
        kind: Some(JobKind::Native),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..JobSpec::default()
    };
    let job = submit(&peers[0], spec).await;
    let watcher = &peers[3];
    let running = watcher.jobs().status(job).await.unwrap().unwrap();
    let first = running.peer.clone().unwrap();
    let index = peers.iter().position(|p| p.peer_id().to_string() == first).unwrap();
    let token = running.token.unwrap();
    let count = common::data_dir_existing(test, index).join(format!("jobs/{job}-{token}/ckpt/n"));
    until("the job has checkpointed three steps", || async {
        std::fs::read_to_string(&count)
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .is_some_and(|n| n >= 3)
    })
    .await;
    peers[index].leave().await.unwrap();
    let view = ended(watcher, job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    assert_ne!(view.peer.as_deref(), Some(first.as_str()), "{view:?}");
    let output: Key = view.output.unwrap().parse().unwrap();
    let dir = common::data_dir(test, 102);
    watcher
        .files()
        .download(output, None, Default::default(), Some(dir.clone()))
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let steps: Vec<u32> = log
        .lines()
        .filter_map(|l| l.strip_prefix("step ")?.parse().ok())
        .collect();
    assert_eq!(steps.last(), Some(&6), "{log}");
    assert!(
        steps[0] >= 3,
        "the second peer went on from the checkpoint, not from the start: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_asked_for_by_the_submitter_is_where_the_job_goes_on() {
    let test = "checkpoint-asked";
    let peers = swarm_with(test, 7, |i, config: &mut NodeConfig, started: &[Client]| {
        config.compute = ComputeConfig {
            slots: u32::from(i == 1 || i == 2),
            allow_native: true,
            trust: started.first().map(Client::peer_id).into_iter().collect(),
            lease_term: Duration::from_secs(2),
            ..ComputeConfig::default()
        };
    })
    .await;
    offers(&peers[0], 2).await;
    // Counts to 100, keeping the count in /ckpt, without ever exiting 85:
    // only the checkpoint its submitter asks for is saved.
    let script = r#"n=$(cat "$SHOAL_CKPT/n" 2>/dev/null || echo 0); echo "start $n" >> "$SHOAL_OUT/log"
        while [ $n -lt 100 ]; do n=$((n+1)); echo $n > "$SHOAL_CKPT/t"; mv "$SHOAL_CKPT/t" "$SHOAL_CKPT/n"; sleep 0.05; done"#;
    let spec = JobSpec {
        kind: Some(JobKind::Native),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..JobSpec::default()
    };
    let job = submit(&peers[0], spec).await;
    let running = peers[0].jobs().status(job).await.unwrap().unwrap();
    let first = running.peer.clone().unwrap();
    let index = peers.iter().position(|p| p.peer_id().to_string() == first).unwrap();
    let count = common::data_dir_existing(test, index).join(format!("jobs/{job}-{}/ckpt/n", running.token.unwrap()));
    until("the job has counted to 20", || async {
        std::fs::read_to_string(&count)
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .is_some_and(|n| n >= 20)
    })
    .await;
    peers[0].jobs().checkpoint(job).await.unwrap();
    peers[index].leave().await.unwrap();
    let view = ended(&peers[3], job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    let output: Key = view.output.unwrap().parse().unwrap();
    let dir = common::data_dir(test, 103);
    peers[3]
        .files()
        .download(output, None, Default::default(), Some(dir.clone()))
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let start: u32 = log.trim().strip_prefix("start ").unwrap().parse().unwrap();
    assert!(start >= 20, "it went on from the checkpoint asked for: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_jobs_end_reaches_the_peer_that_submitted_it() {
    let test = "detached";
    // Peer 0 offers no slots: the job runs on peer 1, and nothing on peer
    // 0 follows it.
    let peers = swarm_with(test, 2, |i, config: &mut NodeConfig, _| {
        config.compute = slots(u32::from(i == 1));
    })
    .await;
    offers(&peers[0], 1).await;
    let module = share(&peers[0], test, "hello.wasm", &hello()).await;
    let job = peers[0]
        .jobs()
        .submit(Submit {
            spec: wasm_spec(module, &[]),
            detach: true,
        })
        .await
        .unwrap();
    // `shoal jobs` on the submitter lists it as ended, with its exit code,
    // without asking anyone.
    until("the submitter lists the job as ended", || async {
        peers[0]
            .jobs()
            .list(10)
            .iter()
            .any(|v| v.job_id == job.to_string() && v.state == "ended" && v.exit_code == Some(0))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_job_and_a_drained_one_go_on_from_their_checkpoint_elsewhere() {
    let test = "move";
    // Peer 0 submits; peers 1 to 3 run native commands for it.
    let peers = swarm_with(test, 5, |i, config: &mut NodeConfig, started: &[Client]| {
        config.compute = ComputeConfig {
            slots: u32::from((1..=3).contains(&i)),
            allow_native: true,
            trust: started.first().map(Client::peer_id).into_iter().collect(),
            lease_term: Duration::from_secs(2),
            ..ComputeConfig::default()
        };
    })
    .await;
    offers(&peers[0], 3).await;
    // Twelve steps of half a second, checkpointing after each (exit 85);
    // the third takes 12 s, longer than an executor waits for a job it
    // lets go to stop by itself: a move must stop it.
    let script = r#"n=$(cat "$SHOAL_CKPT/n" 2>/dev/null || echo 0); n=$((n+1)); echo "step $n" >> "$SHOAL_OUT/log"
        if [ $n -eq 3 ]; then sleep 12; else sleep 0.5; fi
        echo $n > "$SHOAL_CKPT/n"; [ $n -lt 12 ] && exit 85; exit 0"#;
    let spec = JobSpec {
        kind: Some(JobKind::Native),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..JobSpec::default()
    };
    let job = submit(&peers[0], spec).await;
    let index_of = |peer: &str| peers.iter().position(|p| p.peer_id().to_string() == peer).unwrap();
    let steps_on = |index: usize, token: u64| {
        let count = common::data_dir_existing(test, index).join(format!("jobs/{job}-{token}/ckpt/n"));
        move || {
            let count = count.clone();
            async move {
                std::fs::read_to_string(&count)
                    .ok()
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .is_some_and(|n| n >= 2)
            }
        }
    };
    let first = peers[0].jobs().status(job).await.unwrap().unwrap();
    let first_index = index_of(first.peer.as_deref().unwrap());
    until(
        "two steps on the first peer",
        steps_on(first_index, first.token.unwrap()),
    )
    .await;
    // Moved by its submitter to a peer of its choice.
    let target = (1..=3).find(|i| *i != first_index).unwrap();
    let (moved_to, token) = peers[0]
        .jobs()
        .move_job(job, Some(peers[target].peer_id()))
        .await
        .unwrap();
    assert_eq!(moved_to, peers[target].peer_id());
    assert!(token > first.token.unwrap());
    // Its run there is over (its directory goes when it ends) before the
    // move returns: it never runs in two places.
    let first_dir = common::data_dir_existing(test, first_index).join(format!("jobs/{job}-{}", first.token.unwrap()));
    assert!(!first_dir.exists(), "the first run has stopped");
    let left = peers[first_index].jobs().list(10);
    assert!(
        left.iter().any(|v| v.job_id == job.to_string() && v.state == "lost"),
        "the first peer stopped it: {left:?}"
    );
    until("a step on the peer moved to", steps_on(target, token)).await;
    // That peer drains: the job goes to the third.
    let drained = peers[target].jobs().drain().await.unwrap();
    assert_eq!(drained.len(), 1, "{drained:?}");
    let (third, _) = drained[0].1.clone().unwrap();
    // Anywhere but the drained peer: back on the first is as good as the
    // third (both are free; which one the two probes pick varies).
    assert_ne!(third, peers[target].peer_id(), "{drained:?}");
    let view = ended(&peers[0], job).await;
    assert_eq!(view.exit_code, Some(0), "{view:?}");
    assert_eq!(view.peer, Some(third.to_string()), "{view:?}");
    let output: Key = view.output.unwrap().parse().unwrap();
    let dir = common::data_dir(test, 104);
    peers[0]
        .files()
        .download(output, None, Default::default(), Some(dir.clone()))
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let steps: Vec<u32> = log
        .lines()
        .filter_map(|l| l.strip_prefix("step ")?.parse().ok())
        .collect();
    assert_eq!(steps.last(), Some(&12), "{log}");
    assert!(steps[0] > 2, "the third peer went on from the checkpoint: {log}");
    // Its history, read from its home by a peer that had no part in it:
    // moved, drained, done, each on its executor, with the checkpoints
    // each placement sent.
    let history = peers[4].jobs().history(job).await.unwrap();
    let ran: Vec<_> = history.iter().filter(|p| p.ran).collect();
    let whys: Vec<_> = ran.iter().map(|p| p.why.as_deref()).collect();
    assert_eq!(whys, [Some("moved"), Some("drained"), Some("done")], "{history:?}");
    assert_eq!(ran[0].token, first.token.unwrap(), "{history:?}");
    assert_eq!(ran[0].peer, first.peer, "{history:?}");
    assert_eq!(ran[1].token, token, "{history:?}");
    assert_eq!(ran[2].peer, Some(third.to_string()), "{history:?}");
    assert!(ran[0].checkpoints >= 2, "{history:?}");
    assert!(ran.windows(2).all(|w| w[0].token < w[1].token), "{history:?}");
}
