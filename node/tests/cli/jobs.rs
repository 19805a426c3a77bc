//! `shoal run`, `slots`, `jobs` and `job` through the binary: output
//! streamed, the job's exit code passed on, `--json`'s fields, `--detach`
//! and `job wait`, and the errors a user meets.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{dir, json, shoal, stderr, up_with};

/// `shoal run --data-dir DIR ARGS...` (the data directory first, so that
/// the job's own arguments can follow `--`).
fn run(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(super::SHOAL)
        .arg("run")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

/// Writes "hello\n" to stdout and exits with 3.
const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "hello\0a")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 6))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 3))))"#;

#[test]
fn run_streams_the_output_and_exits_with_the_jobs_code() {
    let a = dir("jobs-a");
    let b = dir("jobs-b");
    // a offers no slot; b offers one: every job runs on b.
    let _first = up_with(&a, None, &["--slots", "0"]);
    let addr = json(&shoal(&a, &["status", "--json"]))["listening"][0]
        .as_str()
        .unwrap()
        .to_string();
    let _second = up_with(&b, Some(&addr), &["--slots", "1"]);
    let b_id = json(&shoal(&b, &["status", "--json"]))["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while json(&shoal(&a, &["slots", "--json"])).as_array().unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "b's offer never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let slots = json(&shoal(&a, &["slots", "--json"]));
    assert_eq!(
        (slots[0]["peer"].as_str(), slots[0]["total"].as_u64()),
        (Some(b_id.as_str()), Some(1))
    );

    let module = a.with_extension("hello.wasm");
    std::fs::write(&module, wat::parse_str(HELLO).unwrap()).unwrap();
    let module = module.to_str().unwrap();
    let plain = run(&a, &[module]);
    assert_eq!(plain.status.code(), Some(3), "{}", stderr(&plain));
    assert_eq!(plain.stdout, b"hello\n");

    let with_json = run(&a, &["--json", module]);
    assert_eq!(with_json.status.code(), Some(3));
    let view: serde_json::Value = serde_json::from_slice(&with_json.stdout).unwrap();
    assert_eq!(view["peer"].as_str(), Some(b_id.as_str()));
    assert_eq!(view["exit_code"].as_i64(), Some(3));
    assert!(view["job_id"].as_str().unwrap().len() == 64 && view["output"].is_null());
    for time in ["queued", "placed", "started", "ended"] {
        assert!(view[time].as_u64().is_some(), "{time}: {view}");
    }
    assert_eq!(
        stderr(&with_json),
        "hello\n",
        "with --json the job's output goes to stderr"
    );

    let detached = run(&a, &["--detach", module]);
    let id = String::from_utf8(detached.stdout).unwrap().trim().to_string();
    let waited = shoal(&b, &["job", "wait", &id, "--json"]);
    assert_eq!(
        waited.status.code(),
        Some(3),
        "wait exits with the job's code: {}",
        stderr(&waited)
    );
    let logs = shoal(&a, &["job", "logs", &id]);
    assert_eq!(logs.stdout, b"hello\n");
    let listed = json(&shoal(&a, &["jobs", "--json"]));
    assert!(listed.as_array().unwrap().iter().any(|j| j["job_id"] == id.as_str()));

    let garbage = a.with_extension("garbage.wasm");
    std::fs::write(&garbage, b"#!/bin/sh\n").unwrap();
    let refused = run(&a, &[garbage.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("not a WebAssembly module"),
        "{}",
        stderr(&refused)
    );
    let nowhere = run(&a, &["--where", "gpu=a100", module]);
    assert!(stderr(&nowhere).contains("gpu=a100"), "{}", stderr(&nowhere));
    let native = run(&a, &["--native", "--", "/bin/true"]);
    assert!(stderr(&native).contains("--allow-native"), "{}", stderr(&native));
    let no_input = run(&a, &["--input", &"ab".repeat(32), module]);
    assert!(
        stderr(&no_input).contains("no peer provides it"),
        "{}",
        stderr(&no_input)
    );
}
