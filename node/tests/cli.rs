//! The `shoal` binary end to end: `up` on loopback (mDNS off), then the
//! subcommands through the control API, then `down`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

#[path = "cli/devices.rs"]
mod devices;
#[path = "cli/jobs.rs"]
mod jobs;
#[path = "cli/leases.rs"]
mod leases;

/// A test's data directory: empty at first, and removed with everything
/// beside it that shares its name (its log, its files) when the test ends,
/// pass or fail.
struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TestDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let (Some(parent), Some(name)) = (self.0.parent(), self.0.file_name()) else {
            return;
        };
        let prefix = format!("{}.", name.to_string_lossy());
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

fn dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!("shoal-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    TestDir(dir)
}

fn shoal(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(SHOAL)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

/// A daemon started by [`up`]: killed when dropped, so that a failing test
/// leaves no peer running behind it.
struct Daemon(Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn up(data_dir: &Path, bootstrap: Option<&str>) -> Daemon {
    up_with(data_dir, bootstrap, &[])
}

/// The log of a daemon started by [`up_with`].
fn log_of(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
}

fn up_with(data_dir: &Path, bootstrap: Option<&str>, extra: &[&str]) -> Daemon {
    let mut command = Command::new(SHOAL);
    command
        .args(["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(data_dir)
        .args(extra);
    if let Some(addr) = bootstrap {
        command.args(["--bootstrap", addr]);
    }
    let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
    let child = Daemon(command.stdout(Stdio::null()).stderr(log).spawn().unwrap());
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

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stop(mut child: Daemon, data_dir: &Path) {
    let _ = shoal(data_dir, &["down"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_private_daemon_refuses_and_logs_a_peer_without_the_key() {
    let a = dir("private-a");
    let b = dir("private-b");
    std::fs::create_dir_all(&a).unwrap();
    // `key new` writes a key once and never overwrites it.
    let key_path = a.join("swarm.key");
    let made = Command::new(SHOAL)
        .args(["key", "new"])
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(String::from_utf8_lossy(&made.stdout).contains("fingerprint"));
    let again = Command::new(SHOAL)
        .args(["key", "new"])
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    // The key comes from shoal.toml, relative to the data directory.
    std::fs::write(a.join("shoal.toml"), "swarm_key = \"swarm.key\"\n").unwrap();
    let first = up_with(&a, None, &[]);
    let status = json(&shoal(&a, &["status", "--json"]));
    assert!(status["swarm"].is_string(), "{status}");
    let addr = status["listening"][0].as_str().unwrap().to_string();
    let second = up(&b, Some(&addr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_of(&a).contains("refused a connection") {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", log_of(&a));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log_of(&a).contains("did not open the admission handshake"),
        "{}",
        log_of(&a)
    );
    assert_eq!(json(&shoal(&a, &["peers", "--json"])), serde_json::json!([]));
    assert_eq!(json(&shoal(&b, &["peers", "--json"])), serde_json::json!([]));
    stop(second, &b);
    stop(first, &a);
}

#[test]
fn startup_errors_are_clear() {
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let c = dir("busy");
    let busy = Command::new(SHOAL)
        .args([
            "up",
            "--no-mdns",
            "--listen",
            &format!("/ip4/127.0.0.1/tcp/{port}"),
            "--data-dir",
        ])
        .arg(&c)
        .output()
        .unwrap();
    assert!(!busy.status.success());
    assert!(stderr(&busy).contains("already in use"), "{}", stderr(&busy));
    // A malformed settings file, named with its fault.
    std::fs::write(c.join("shoal.toml"), "mdns = \"sometimes\"\n").unwrap();
    let bad = Command::new(SHOAL).args(["up", "--data-dir"]).arg(&c).output().unwrap();
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("shoal.toml") && stderr(&bad).contains("mdns"),
        "{}",
        stderr(&bad)
    );
    // A swarm key file that is not one.
    std::fs::write(c.join("shoal.toml"), "").unwrap();
    std::fs::write(c.join("not.key"), "hello").unwrap();
    let bad = Command::new(SHOAL)
        .args(["up", "--no-mdns", "--swarm-key"])
        .arg(c.join("not.key"))
        .arg("--data-dir")
        .arg(&c)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not a shoal swarm key"), "{}", stderr(&bad));
    // A bad multiaddr, before anything starts.
    let bad = Command::new(SHOAL)
        .args(["up", "--no-mdns", "--listen", "tcp:4001", "--data-dir"])
        .arg(&c)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--listen"), "{}", stderr(&bad));
}

/// Polls a download through the control API until `until` holds.
fn wait_download(data_dir: &Path, n: u64, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = shoal_node::cli_client::call(data_dir, "GET", &format!("/v1/downloads/{n}"), None).unwrap();
        if until(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "download never got there: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes a saved resume bitmap (`ID.have`: little-endian words, one bit
/// per 16 KiB group) says are verified; 0 when there is none.
fn saved_bytes(have: &Path) -> u64 {
    let words = std::fs::read(have).unwrap_or_default();
    let groups: u64 = words
        .chunks_exact(8)
        .map(|w| u64::from(u64::from_le_bytes(w.try_into().unwrap()).count_ones()))
        .sum();
    groups * shoal_resources::blob::GROUP_BYTES
}

#[test]
fn share_get_and_a_download_that_resumes_after_kill_9() {
    let a = dir("share-a");
    let b = dir("share-b");
    std::fs::create_dir_all(&a).unwrap();
    let bytes = noise(96 * 1024 * 1024, 7);
    let source = a.join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    let id = shoal_overlay::Key::of_content(&bytes).to_string();
    let first = up(&a, None);
    let shared = json(&shoal(&a, &["share", source.to_str().unwrap(), "--json"]));
    assert_eq!(shared["id"].as_str().unwrap(), id, "the id is the b3sum of the file");
    let ticket = shared["ticket"].as_str().unwrap().to_string();
    let unreadable = shoal(&a, &["share", "/nonexistent/file"]);
    assert!(stderr(&unreadable).contains("cannot read"), "{}", stderr(&unreadable));
    let bad_ticket = shoal(&a, &["get", "shoal1!!!", "-o", "/tmp/x"]);
    assert!(
        stderr(&bad_ticket).contains("malformed ticket"),
        "{}",
        stderr(&bad_ticket)
    );

    // Start fetching on b, and kill -9 b part of the way through.
    let mut second = up(&b, None);
    let out = b.with_extension("out");
    let _ = std::fs::remove_file(&out);
    let body = serde_json::json!({ "target": ticket, "out": out });
    let started = shoal_node::cli_client::call(&b, "POST", "/v1/get", Some(&body)).unwrap();
    let n = started["download"].as_u64().unwrap();
    // The bitmap a restart resumes from is written as each run ends: wait
    // until it holds something, then kill.
    let have = b.join("blobs").join(format!("{id}.have"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while saved_bytes(&have) == 0 {
        let v = shoal_node::cli_client::call(&b, "GET", &format!("/v1/downloads/{n}"), None).unwrap();
        assert!(
            v["done"] != true,
            "the download finished before any progress was saved: {v}"
        );
        assert!(Instant::now() < deadline, "no progress saved: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let saved = saved_bytes(&have);
    let size = bytes.len() as u64;
    assert!(saved > 0 && saved < size, "saved {saved} of {size} before the kill");
    // Restart b: the same get resumes from the saved bitmap.
    let _ = std::fs::remove_file(b.join("control.json"));
    let mut second = up(&b, None);
    // The interrupted download is listed (it takes room from the quota).
    let listed = json(&shoal(&b, &["blobs", "--json"]));
    assert_eq!(listed[0]["id"].as_str(), Some(id.as_str()), "{listed}");
    assert_eq!(listed[0]["partial"], true, "{listed}");
    // Resumed with at least what was saved, then cancelled (what `get`
    // does on Ctrl-C): it stops, and keeps what arrived.
    let started = shoal_node::cli_client::call(&b, "POST", "/v1/get", Some(&body)).unwrap();
    let n = started["download"].as_u64().unwrap();
    let resumed = wait_download(&b, n, |v| {
        v["verified"].as_u64().unwrap_or(0) > saved || v["done"] == true
    });
    assert!(
        resumed["resumed"].as_u64().unwrap() >= saved,
        "resumed from the {saved} bytes saved: {resumed}"
    );
    shoal_node::cli_client::call(&b, "DELETE", &format!("/v1/downloads/{n}"), None).unwrap();
    let cancelled = wait_download(&b, n, |v| v["done"] == true);
    assert!(
        cancelled["error"].as_str().unwrap_or("").contains("cancelled"),
        "{cancelled}"
    );
    assert!(!out.exists(), "a cancelled download leaves no file at -o");
    let saved = saved_bytes(&have);
    assert!(saved > 0, "a cancelled download keeps its progress");
    let got = shoal(&b, &["get", &ticket, "-o", out.to_str().unwrap(), "--json"]);
    let done = json(&got);
    assert!(done["error"].is_null(), "{done}");
    // The last get started from what the cancelled one kept, and fetched
    // only the rest.
    let (resumed, fetched) = (done["resumed"].as_u64().unwrap(), done["fetched"].as_u64().unwrap());
    assert!(resumed >= saved, "resumed from the {saved} bytes saved: {done}");
    assert!(fetched <= size - resumed, "fetched no more than the rest: {done}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes, "byte-identical after the restart");
    let blobs = json(&shoal(&b, &["blobs", "--json"]));
    assert_eq!(blobs[0]["id"].as_str().unwrap(), id);
    assert_eq!(blobs[0]["partial"], false, "{blobs}");
    // Pinning: both peers form the home; too many replicas is refused.
    let pinned = json(&shoal(&a, &["pin", &id, "--replicas", "2", "--json"]));
    assert!(pinned["stored"].as_u64().unwrap() >= 1, "{pinned}");
    for replicas in ["9", "0"] {
        let refused = shoal(&a, &["pin", &id, "--replicas", replicas]);
        assert!(!refused.status.success());
        assert!(
            stderr(&refused).contains("--replicas must be between 1 and 3"),
            "{}",
            stderr(&refused)
        );
    }
    assert!(shoal(&a, &["unpin", &id]).status.success());
    assert!(log_of(&b).contains(&format!("resuming {id}")), "{}", log_of(&b));
    // b serves the blob from the user's file at -o. Once the user edits
    // it, b says so and no longer counts the blob held: a get fetches it
    // again.
    let blobs = json(&shoal(&b, &["blobs", "--json"]));
    assert!(
        blobs[0]["in_place"].is_string() && blobs[0]["changed"] == false,
        "{blobs}"
    );
    std::fs::write(&out, b"edited").unwrap();
    let blobs = json(&shoal(&b, &["blobs", "--json"]));
    assert_eq!(blobs[0]["changed"], true, "{blobs}");
    let out2 = b.with_extension("out2");
    let _ = std::fs::remove_file(&out2);
    let again = json(&shoal(&b, &["get", &id, "-o", out2.to_str().unwrap(), "--json"]));
    assert!(again["error"].is_null(), "{again}");
    assert_eq!(std::fs::read(&out2).unwrap(), bytes);
    let blobs = json(&shoal(&b, &["blobs", "--json"]));
    assert_eq!(blobs[0]["changed"], false, "{blobs}");
    assert!(
        blobs[0]["in_place"].as_str().is_some_and(|p| p.ends_with(".out2")),
        "served from the new file: {blobs}"
    );
    second.kill().unwrap();
    second.wait().unwrap();
    stop(first, &a);
}

/// Sends `request` (raw HTTP) to the daemon of `data_dir` on a connection
/// of its own and returns the connection, to read the answer from or to
/// keep open.
fn raw(data_dir: &Path, request: &str) -> std::net::TcpStream {
    use std::io::Write;
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir.join("control.json")).unwrap()).unwrap();
    let mut stream = std::net::TcpStream::connect(info["addr"].as_str().unwrap()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// The status line of the answer on `stream` (read within its timeout).
fn status_line(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer: {e}"),
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn token(data_dir: &Path) -> String {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir.join("control.json")).unwrap()).unwrap();
    info["token"].as_str().unwrap().to_string()
}

#[test]
fn the_control_api_checks_the_token_first_and_bounds_bodies_and_requests() {
    let a = dir("api");
    let daemon = up(&a, None);
    let token = token(&a);
    // control.json is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(a.join("control.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // No token, or a wrong one: 401, before a byte of the (huge) body is read.
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let mut stream = raw(
            &a,
            &format!(
                "POST /v1/provide HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
            ),
        );
        assert!(status_line(&mut stream).contains(" 401 "), "{auth:?}");
    }
    // A body over the route's cap: 413.
    let body = format!("{{\"key\": \"{}\"}}", "a".repeat(100_000));
    let mut stream = raw(
        &a,
        &format!(
            "POST /v1/lookup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(status_line(&mut stream).contains(" 413 "));
    // Relative paths mean nothing to the daemon: refused.
    let relative = shoal_node::cli_client::call(
        &a,
        "POST",
        "/v1/share",
        Some(&serde_json::json!({ "path": "some/file" })),
    )
    .unwrap_err()
    .to_string();
    assert!(relative.contains("not an absolute path"), "{relative}");
    // Requests that never send their body hold their places; past the cap
    // the daemon says it is busy instead of taking more. (A poll may take
    // a place while the held requests arrive, and turn one of them away:
    // one more is held after every poll that still got in.)
    let status =
        format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let hold = format!(
        "POST /v1/lookup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n"
    );
    let mut held: Vec<_> = (0..shoal_node::control::MAX_REQUESTS).map(|_| raw(&a, &hold)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = status_line(&mut raw(&a, &status));
        if line.contains(" 503 ") {
            break;
        }
        assert!(Instant::now() < deadline, "never busy: {line}");
        held.push(raw(&a, &hold));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status_line(&mut raw(&a, &status)).contains(" 200 ") {
        assert!(Instant::now() < deadline, "still busy after the held requests went");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every subcommand ends quietly when its output is closed
    // (`shoal blobs | head -1`).
    for args in [&["blobs"][..], &["status"], &["peers"], &["status", "--json"]] {
        let mut child = Command::new(SHOAL)
            .args(args)
            .arg("--data-dir")
            .arg(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).is_empty(), "{args:?}: {}", stderr(&output));
    }
    stop(daemon, &a);
}

#[test]
fn two_daemons_started_at_once_on_one_data_directory_leave_one_running() {
    let d = dir("lock");
    std::fs::create_dir_all(&d).unwrap();
    // A control.json left behind names a port that something else answers
    // on now: that says nothing about this data directory.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        d.join("control.json"),
        serde_json::json!({ "addr": squatter.local_addr().unwrap(), "token": "stale" }).to_string(),
    )
    .unwrap();
    let start = |n: usize| {
        Daemon(
            Command::new(SHOAL)
                .args(["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
                .arg(&d)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.with_extension(format!("log{n}"))).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let mut daemons = [start(0), start(1)];
    let deadline = Instant::now() + Duration::from_secs(30);
    let (loser, winner) = loop {
        if let Some(status) = daemons[0].try_wait().unwrap() {
            break ((0, status), 1);
        }
        if let Some(status) = daemons[1].try_wait().unwrap() {
            break ((1, status), 0);
        }
        assert!(Instant::now() < deadline, "both daemons run on one data directory");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!loser.1.success());
    let log = std::fs::read_to_string(d.with_extension(format!("log{}", loser.0))).unwrap();
    assert!(log.contains("already running"), "{log}");
    // The other serves, with its control API where control.json says, once
    // it wrote its own in place of the stale one (asking earlier would ask
    // the squatter, which never answers).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(d.join("control.json")).is_ok_and(|c| !c.contains("stale")) {
        assert!(
            Instant::now() < deadline,
            "the daemon left running never wrote control.json"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = shoal(&d, &["status"]);
    assert!(
        status.status.success(),
        "the daemon left running does not answer: {status:?}"
    );
    assert!(daemons[winner].try_wait().unwrap().is_none());
    let [a, b] = daemons;
    stop(if winner == 0 { a } else { b }, &d);
}

#[test]
fn a_share_gives_up_with_a_clear_message_on_a_daemon_that_never_answers() {
    let d = dir("silent");
    std::fs::create_dir_all(&d).unwrap();
    // It takes connections and says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        d.join("control.json"),
        serde_json::json!({ "addr": silent.local_addr().unwrap(), "token": "t" }).to_string(),
    )
    .unwrap();
    let file = d.join("file");
    std::fs::write(&file, b"some bytes").unwrap();
    let mut child = Command::new(SHOAL)
        .args(["share", file.to_str().unwrap(), "--data-dir"])
        .arg(&d)
        .env("SHOAL_TIMEOUT", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("share waited on a silent daemon for a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("did not answer within 2 s"),
        "{}",
        stderr(&output)
    );
}

/// Sends `signal` (as `kill` names it: INT, TERM, STOP, CONT) to `pid`.
fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// Waits for `child` to exit (a minute at most).
fn exit_of(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process never exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file of `len` pseudo-random bytes from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

#[test]
fn ctrl_c_on_get_cancels_the_download_in_the_daemon() {
    let a = dir("ctrlc-a");
    let b = dir("ctrlc-b");
    std::fs::create_dir_all(&a).unwrap();
    let bytes = noise(16 * 1024 * 1024, 11);
    let source = a.join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    let provider = up(&a, None);
    let ticket = json(&shoal(&a, &["share", source.to_str().unwrap(), "--json"]))["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let fetcher = up(&b, None);
    let out = b.with_extension("out");
    let _ = std::fs::remove_file(&out);
    let mut get = Command::new(SHOAL)
        .args(["get", &ticket, "-o", out.to_str().unwrap(), "--data-dir"])
        .arg(&b)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The download is under way; the provider is then frozen, so that it
    // cannot finish before the Ctrl-C.
    let mut n = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while n.is_none() {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(20));
        n = (0..4).find(|n| {
            shoal_node::cli_client::call(&b, "GET", &format!("/v1/downloads/{n}"), None)
                .is_ok_and(|v| v["verified"].as_u64().unwrap_or(0) > 0)
        });
    }
    let n = n.unwrap();
    signal(provider.id(), "STOP");
    let status = |n: u64| shoal_node::cli_client::call(&b, "GET", &format!("/v1/downloads/{n}"), None).unwrap();
    assert!(status(n)["done"] != true, "{}", status(n));
    signal(get.id(), "INT");
    let exit = exit_of(&mut get);
    let mut said = String::new();
    std::io::Read::read_to_string(&mut get.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!exit.success(), "a cancelled get fails");
    assert!(said.contains("cancelled after"), "{said}");
    // In the daemon the download ended as cancelled (not merely abandoned
    // by the command), keeping what arrived for a later get.
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(n)["done"] != true {
        assert!(
            Instant::now() < deadline,
            "the daemon's download never stopped: {}",
            status(n)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended = status(n);
    assert!(ended["error"].as_str().unwrap_or("").contains("cancelled"), "{ended}");
    assert!(!out.exists(), "a cancelled get leaves no file at -o");
    let listed = json(&shoal(&b, &["blobs", "--json"]));
    assert_eq!(listed[0]["partial"], true, "{listed}");
    signal(provider.id(), "CONT");
    stop(fetcher, &b);
    stop(provider, &a);
}

#[test]
fn sigterm_stops_a_peer_after_it_handed_its_pinned_copies_on() {
    let [a, b, c] = ["term-a", "term-b", "term-c"].map(dir);
    std::fs::create_dir_all(&a).unwrap();
    let owner = up(&a, None);
    let status = json(&shoal(&a, &["status", "--json"]));
    let addr = status["listening"][0].as_str().unwrap().to_string();
    let others = [up(&b, Some(&addr)), up(&c, Some(&addr))];
    let key_of = |d: &Path| {
        let status = json(&shoal(d, &["status", "--json"]));
        status["key"].as_str().unwrap().parse::<shoal_overlay::Key>().unwrap()
    };
    let keys = [key_of(&a), key_of(&b), key_of(&c)];
    // A file whose home, nearest first, is b and c in some order, then a
    // (XOR distance allows only some orders; a farthest is always one):
    // pinned with one replica, the nearer keeps it; when it leaves, the
    // other is the home.
    let (bytes, id) = (0u64..10_000)
        .map(|seed| {
            let bytes = noise(300_000, seed);
            let id = shoal_overlay::Key::of_content(&bytes);
            (bytes, id)
        })
        .find(|(_, id)| {
            let d = keys.map(|k| k.distance(id));
            d[0] > d[1] && d[0] > d[2]
        })
        .expect("a file whose home leaves out a");
    let keeper = if keys[1].distance(&id) < keys[2].distance(&id) {
        0
    } else {
        1
    };
    let [first, second] = others;
    let (mut leaving, heir, kept_on, heir_on) = if keeper == 0 {
        (first, second, b.to_path_buf(), c.to_path_buf())
    } else {
        (second, first, c.to_path_buf(), b.to_path_buf())
    };
    let source = a.join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    json(&shoal(&a, &["share", source.to_str().unwrap(), "--json"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shoal(&a, &["pin", &id.to_string(), "--replicas", "1"]).status.success() {
        assert!(Instant::now() < deadline, "the pin was never stored");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pinned_on = |d: &Path| {
        let blobs = json(&shoal(d, &["blobs", "--json"]));
        blobs
            .as_array()
            .unwrap()
            .iter()
            .any(|blob| blob["id"].as_str() == Some(&id.to_string()) && blob["pinned"] == true)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pinned_on(&kept_on) {
        assert!(Instant::now() < deadline, "the nearest peer never kept its pinned copy");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pinned_on(&heir_on), "the heir is not in the home yet");
    // SIGTERM: the keeper hands its copy to the heir, then exits cleanly;
    // the heir holds it the moment the keeper is gone.
    signal(leaving.id(), "TERM");
    let exit = exit_of(&mut leaving);
    assert!(exit.success(), "{exit:?}: {}", log_of(&kept_on));
    assert!(
        log_of(&kept_on).contains("handed 1 pinned copies on (0 offers failed)"),
        "{}",
        log_of(&kept_on)
    );
    // The heir took the copy before the keeper exited (the log line above
    // counts its answer); it may then briefly drop its pinned mark while its
    // table still lists the keeper (seen once in ten suite runs, left open
    // in issue 16's note), so the mark is waited for.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pinned_on(&heir_on) {
        assert!(Instant::now() < deadline, "the heir never held the copy handed on");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(heir, &heir_on);
    stop(owner, &a);
}

/// The peak resident memory of process `pid`, in bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn an_import_streams_the_file_and_never_holds_it_whole() {
    const FILE: u64 = 1 << 30;
    const BOUND: u64 = 192 << 20;
    let a = dir("stream-a");
    std::fs::create_dir_all(&a).unwrap();
    // A sparse file: 1 GiB to read, hash and index, no disk to hold it.
    let path = a.join("big.bin");
    std::fs::File::create(&path).unwrap().set_len(FILE).unwrap();
    let daemon = up(&a, None);
    let shared = json(&shoal(&a, &["share", "--in-place", path.to_str().unwrap(), "--json"]));
    assert_eq!(shared["size"].as_u64(), Some(FILE), "{shared}");
    let peak = peak_rss(daemon.id());
    assert!(
        peak < BOUND,
        "the daemon peaked at {} MiB importing a {} MiB file",
        peak >> 20,
        FILE >> 20
    );
    stop(daemon, &a);
}
