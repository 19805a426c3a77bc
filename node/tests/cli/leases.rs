//! `shoal lease` through the binary, between three daemons on loopback:
//! one holder at a time, `--wait 0` naming the holder, waiters served in
//! line order with growing tokens, and `lease run` letting go when its
//! command ends, when the command is killed, and (after its keepalive)
//! when the CLI itself is killed; and between six, a lease outliving the
//! members that first kept it (its set moves to the name's home).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, dir, json, shoal, stderr, up_with};

/// Three daemons that know each other; the first's data directory first.
fn three(name: &str) -> (Vec<super::TestDir>, Vec<Daemon>) {
    swarm(name, 3, &[])
}

/// `n` daemons that know each other, each started with `extra` too.
fn swarm(name: &str, n: usize, extra: &[&str]) -> (Vec<super::TestDir>, Vec<Daemon>) {
    let dirs: Vec<super::TestDir> = (0..n).map(|i| dir(&format!("lease-{name}-{i}"))).collect();
    let extra: Vec<&str> = ["--slots", "0"].iter().chain(extra).copied().collect();
    let first = up_with(&dirs[0], None, &extra);
    let addr = json(&shoal(&dirs[0], &["status", "--json"]))["listening"][0]
        .as_str()
        .unwrap()
        .to_string();
    let mut daemons = vec![first];
    for d in &dirs[1..] {
        daemons.push(up_with(d, Some(&addr), &extra));
    }
    for d in &dirs {
        let deadline = Instant::now() + Duration::from_secs(30);
        while json(&shoal(d, &["peers", "--json"])).as_array().unwrap().len() < n - 1 {
            assert!(Instant::now() < deadline, "the daemons never met");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (dirs, daemons)
}

fn peer_id(data_dir: &Path) -> String {
    json(&shoal(data_dir, &["status", "--json"]))["peer_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `shoal lease run --data-dir DIR NAME -- sh -c SCRIPT`, started.
fn lease_run(data_dir: &Path, name: &str, script: &str) -> Child {
    Command::new(super::SHOAL)
        .args(["lease", "run", "--data-dir"])
        .arg(data_dir)
        .args([name, "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (a minute at most) until `done`.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exit_of(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    until("the command exits", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

/// Whether `lease ls` on `data_dir` shows this peer waiting for `name`.
fn waiting(data_dir: &Path, name: &str) -> bool {
    let list = json(&shoal(data_dir, &["lease", "ls", "--json"]));
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == name && s["state"] == "waiting")
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

#[test]
fn a_lease_has_one_holder_and_its_waiters_take_it_in_line_order() {
    let (dirs, _daemons) = three("order");
    let (a, b, c) = (&dirs[0], &dirs[1], &dirs[2]);
    let name = "deploy/prod";
    let taken = shoal(a, &["lease", "acquire", name]);
    assert!(taken.status.success(), "{}", stderr(&taken));
    let first: u64 = String::from_utf8_lossy(&taken.stdout).trim().parse().unwrap();
    // Taken: `--wait 0` fails at once and names the holder.
    let busy = shoal(b, &["lease", "acquire", name, "--wait", "0"]);
    assert_eq!(busy.status.code(), Some(75), "{}", stderr(&busy));
    assert!(stderr(&busy).contains(&peer_id(a)), "{}", stderr(&busy));
    // b, then c, wait in line; each command records its token and when
    // it ran.
    let out = a.join("..").join(format!("lease-order-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let script = |who: &str| {
        format!(
            "echo $SHOAL_LEASE_TOKEN > {o}/{who}.token; date +%s%N > {o}/{who}.start; sleep 1; date +%s%N > {o}/{who}.end",
            o = out.display()
        )
    };
    let mut by_b = lease_run(b, name, &script("b"));
    until("b waits in line", || waiting(b, name));
    let mut by_c = lease_run(c, name, &script("c"));
    until("c waits in line", || waiting(c, name));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!out.join("b.token").exists(), "b ran while a held the lease");
    let released = shoal(a, &["lease", "release", name]);
    assert!(released.status.success(), "{}", stderr(&released));
    assert!(exit_of(&mut by_b).success());
    assert!(exit_of(&mut by_c).success());
    let (tb, tc): (u64, u64) = (
        read(&out.join("b.token")).parse().unwrap(),
        read(&out.join("c.token")).parse().unwrap(),
    );
    assert!(first < tb && tb < tc, "tokens {first} {tb} {tc}");
    let (b_end, c_start): (u128, u128) = (
        read(&out.join("b.end")).parse().unwrap(),
        read(&out.join("c.start")).parse().unwrap(),
    );
    assert!(b_end <= c_start, "c ran before b let go");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn lease_run_lets_go_when_its_command_is_killed_and_when_it_is_killed_itself() {
    let (dirs, _daemons) = three("killed");
    let (a, b) = (&dirs[0], &dirs[1]);
    let name = "build-cache";
    let pid_file = a.join("..").join(format!("lease-killed-{}.pid", std::process::id()));
    let mut run = lease_run(a, name, &format!("echo $$ > {}; exec sleep 600", pid_file.display()));
    until("the command runs", || !read(&pid_file).is_empty());
    // The command is killed: `lease run` ends with its signal and lets go.
    let sent = Command::new("kill").args(["-9", &read(&pid_file)]).status().unwrap();
    assert!(sent.success());
    assert_eq!(exit_of(&mut run).code(), Some(128 + 9));
    let taken = shoal(b, &["lease", "acquire", name, "--wait", "5s"]);
    assert!(taken.status.success(), "b did not get the lease: {}", stderr(&taken));
    let released = shoal(b, &["lease", "release", name]);
    assert!(released.status.success(), "{}", stderr(&released));
    // `lease run` itself is killed: its daemon lets go once the CLI stops
    // asking (a few seconds), and the lease is free again.
    let _ = std::fs::remove_file(&pid_file);
    let mut run = lease_run(a, name, &format!("echo $$ > {}; exec sleep 600", pid_file.display()));
    until("the command runs again", || !read(&pid_file).is_empty());
    run.kill().unwrap();
    let _ = run.wait();
    let taken = shoal(b, &["lease", "acquire", name, "--wait", "30s"]);
    assert!(taken.status.success(), "the lease was never let go: {}", stderr(&taken));
    let _ = Command::new("kill").args(["-9", &read(&pid_file)]).status();
    let _ = std::fs::remove_file(&pid_file);
}

/// Whether `data_dir`'s daemon keeps lease `name` as a member.
fn keeps(data_dir: &Path, name: &str) -> bool {
    let list = json(&shoal(data_dir, &["lease", "ls", "--json"]));
    list["kept"].as_array().unwrap().iter().any(|k| k["name"] == name)
}

/// Takes lease `name` at `data_dir` (waiting up to `wait`) and lets it
/// go; its token.
fn take_and_release(data_dir: &Path, name: &str, wait: &str) -> u64 {
    let taken = shoal(data_dir, &["lease", "acquire", name, "--wait", wait]);
    assert!(taken.status.success(), "{}", stderr(&taken));
    let released = shoal(data_dir, &["lease", "release", name]);
    assert!(released.status.success(), "{}", stderr(&released));
    String::from_utf8_lossy(&taken.stdout).trim().parse().unwrap()
}

#[test]
fn a_lease_outlives_the_members_that_first_kept_it() {
    // Six daemons: the lease's five members and one more.
    let (dirs, mut daemons) = swarm("outlives", 6, &["--member-gone-after", "2s"]);
    let name = "shared-dir";
    let first = take_and_release(&dirs[0], name, "10s");
    let members: Vec<usize> = (0..6).filter(|&i| keeps(&dirs[i], name)).collect();
    assert_eq!(members.len(), 5, "the lease is kept by its home's five peers");
    let spare = (0..6).find(|i| !members.contains(i)).unwrap();
    // Three members go, one after the other; the first daemon (the one
    // asked) stays.
    let gone: Vec<usize> = members.iter().copied().filter(|&i| i != 0).take(3).collect();
    daemons[gone[0]].kill().unwrap();
    // The set moves to the name's home without it: the spare keeps it.
    until("the lease's set moves to the spare", || keeps(&dirs[spare], name));
    daemons[gone[1]].kill().unwrap();
    daemons[gone[2]].kill().unwrap();
    // A majority of the first set is gone; the lease is still taken, its
    // token above every earlier one.
    let after = take_and_release(&dirs[0], name, "60s");
    assert!(after > first, "tokens {first} then {after}");
}
