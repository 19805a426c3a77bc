//! The `shoal` binary end to end: `up` on loopback (mDNS off), then the
//! subcommands through the control API, then `down`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn shoal(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(SHOAL)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

fn up(data_dir: &Path, bootstrap: Option<&str>) -> Child {
    let mut command = Command::new(SHOAL);
    command
        .args(["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(data_dir);
    if let Some(addr) = bootstrap {
        command.args(["--bootstrap", addr]);
    }
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data_dir.join("control.json").exists() {
        assert!(Instant::now() < deadline, "shoal up never wrote control.json");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn subcommands_talk_to_the_daemon_and_down_stops_it() {
    let a = dir("a");
    let b = dir("b");
    let mut first = up(&a, None);
    let status = json(&shoal(&a, &["status", "--json"]));
    let addr = status["listening"][0].as_str().unwrap().to_string();
    assert!(addr.contains("/p2p/"), "{addr}");
    let mut second = up(&b, Some(&addr));
    // The two find each other.
    let deadline = Instant::now() + Duration::from_secs(20);
    while json(&shoal(&b, &["peers", "--json"])).as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the peers never met");
        std::thread::sleep(Duration::from_millis(50));
    }
    let key = "ab".repeat(32);
    let put = json(&shoal(&a, &["record", "put", &key, "hello", "--json"]));
    assert_eq!(put["stored"], 2, "both peers form the home");
    let got = shoal(&b, &["record", "get", &key]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello");
    let lookup = json(&shoal(&b, &["lookup", &key, "--json"]));
    assert_eq!(lookup["peers"].as_array().unwrap().len(), 1);

    // Clear errors.
    let bad = shoal(&a, &["lookup", "not-a-key"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let none = shoal(&dir("nobody"), &["status"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no shoal daemon is running"));
    let twice = Command::new(SHOAL)
        .args(["up", "--no-mdns", "--data-dir"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already running"));

    for (child, data_dir) in [(&mut second, &b), (&mut first, &a)] {
        assert!(shoal(data_dir, &["down"]).status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success());
                break;
            }
            assert!(Instant::now() < deadline, "shoal down did not stop the daemon");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !data_dir.join("control.json").exists(),
            "control.json is removed on exit"
        );
    }
    let after = shoal(&a, &["status"]);
    assert!(String::from_utf8_lossy(&after.stderr).contains("no shoal daemon is running"));
}
