//! `shoal device` through the binary, between daemons on loopback: each
//! adapter kind (a TCP service, a command, a FIFO) carries bytes to the
//! device and back; a busy device with `--wait 0` names its holder; a
//! holder cut off (its daemon stopped) loses the device after the term,
//! the next in line gets it, and the provider refuses the cut-off holder's
//! traffic when it comes back.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, dir, json, shoal, stderr, up_with};

/// Two daemons that know each other: the provider first.
fn two(name: &str) -> (Vec<super::TestDir>, Vec<Daemon>) {
    let dirs: Vec<super::TestDir> = (0..2).map(|i| dir(&format!("device-{name}-{i}"))).collect();
    let first = up_with(&dirs[0], None, &["--slots", "0"]);
    let addr = json(&shoal(&dirs[0], &["status", "--json"]))["listening"][0]
        .as_str()
        .unwrap()
        .to_string();
    let second = up_with(&dirs[1], Some(&addr), &["--slots", "0"]);
    for d in &dirs {
        until("the daemons meet", || {
            !json(&shoal(d, &["peers", "--json"])).as_array().unwrap().is_empty()
        });
    }
    (dirs, vec![first, second])
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP echo service on loopback; its port.
fn echo_service() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// `shoal device use NAME` on `data_dir` with `args`, running a client
/// that sends `hello` to SHOAL_DEVICE_ADDR and prints what comes back.
fn use_and_say_hello(data_dir: &Path, name: &str) -> std::process::Output {
    Command::new(super::SHOAL)
        .args(["device", "use", "--data-dir"])
        .arg(data_dir)
        .args([name, "--", "python3", "-c"])
        .arg(
            "import os, socket\n\
             h, p = os.environ['SHOAL_DEVICE_ADDR'].rsplit(':', 1)\n\
             c = socket.create_connection((h, int(p)))\n\
             c.sendall(b'hello')\n\
             got = b''\n\
             while len(got) < 5:\n\
             \x20   d = c.recv(100)\n\
             \x20   if not d: break\n\
             \x20   got += d\n\
             print(got.decode(), os.environ['SHOAL_DEVICE_TOKEN'])",
        )
        .output()
        .unwrap()
}

/// `shoal device use --data-dir DIR ARGS... -- COMMAND...`.
fn use_then(data_dir: &Path, args: &[&str], command: &[&str]) -> std::process::Output {
    Command::new(super::SHOAL)
        .args(["device", "use", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .arg("--")
        .args(command)
        .output()
        .unwrap()
}

#[test]
fn each_adapter_kind_carries_bytes_to_the_device_and_back() {
    let (dirs, _daemons) = two("adapters");
    let (provider, user) = (&dirs[0], &dirs[1]);
    let port = echo_service();
    let fifo = provider.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let shares: [(&str, &str, String); 3] = [
        ("echo-tcp", "--tcp", format!("127.0.0.1:{port}")),
        ("echo-cmd", "--cmd", "cat".to_string()),
        ("echo-fifo", "--path", fifo.display().to_string()),
    ];
    for (name, flag, target) in &shares {
        let shared = shoal(provider, &["device", "share", name, "--class", "echo", flag, target]);
        assert!(shared.status.success(), "{}", stderr(&shared));
    }
    until("the user sees the three devices", || {
        json(&shoal(user, &["device", "ls", "--json"]))
            .as_array()
            .unwrap()
            .len()
            == 3
    });
    let listed = json(&shoal(user, &["device", "ls", "--class", "echo", "--json"]));
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["adapter"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cmd", "path", "tcp"], "{listed}");
    for (name, _, _) in &shares {
        let out = use_and_say_hello(user, name);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "hello 1",
            "{name}: {}",
            stderr(&out)
        );
    }
    // An adapter whose target is gone: the connection closes, the provider
    // says why in its log, and `use` tells its user.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = shoal(
        provider,
        &[
            "device",
            "share",
            "dead",
            "--class",
            "gone",
            "--tcp",
            &format!("127.0.0.1:{closed}"),
        ],
    );
    assert!(dead.status.success(), "{}", stderr(&dead));
    let tried = use_then(
        user,
        &["dead"],
        &[
            "python3",
            "-c",
            "import os, socket, time\n\
             h, p = os.environ['SHOAL_DEVICE_ADDR'].rsplit(':', 1)\n\
             c = socket.create_connection((h, int(p)))\n\
             assert c.recv(10) == b''\n\
             time.sleep(3)",
        ],
    );
    assert!(tried.status.success(), "{}", stderr(&tried));
    assert!(stderr(&tried).contains("cannot be reached"), "{}", stderr(&tried));
    assert!(
        super::log_of(provider).contains("cannot be reached"),
        "{}",
        super::log_of(provider)
    );
    // An unknown device, and a clear error.
    let unknown = use_then(user, &["nope", "--wait", "0"], &["true"]);
    assert_eq!(unknown.status.code(), Some(75));
    assert!(stderr(&unknown).contains("unknown device"), "{}", stderr(&unknown));
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn a_holder_cut_off_loses_the_device_and_its_traffic_is_refused() {
    let (dirs, mut daemons) = two("cutoff");
    let (provider, user) = (&dirs[0], &dirs[1]);
    let port = echo_service();
    let shared = shoal(
        provider,
        &[
            "device",
            "share",
            "echo",
            "--class",
            "echo",
            "--tcp",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert!(shared.status.success(), "{}", stderr(&shared));
    // The user's daemon holds it and forwards a port; a client talks
    // through it.
    let forwarded = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut holder: Child = Command::new(super::SHOAL)
        .args([
            "device",
            "use",
            "echo",
            "--listen",
            &format!("127.0.0.1:{forwarded}"),
            "--data-dir",
        ])
        .arg(user.as_os_str())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = None;
    until("the holder forwards its port", || {
        match std::net::TcpStream::connect(("127.0.0.1", forwarded)) {
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut got = [0u8; 3];
                if c.write_all(b"one").is_ok() && c.read_exact(&mut got).is_ok() && &got == b"one" {
                    conn = Some(c);
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        }
    });
    let mut conn = conn.unwrap();
    // Busy: `--wait 0` on the provider itself names the holder.
    let busy = use_then(provider, &["echo", "--wait", "0"], &["true"]);
    assert_eq!(busy.status.code(), Some(75), "{}", stderr(&busy));
    assert!(stderr(&busy).contains("busy"), "{}", stderr(&busy));
    // The next waits in line on the provider's own daemon.
    let token_file = provider.join("next.token");
    let mut next = Command::new(super::SHOAL)
        .args(["device", "use", "echo", "--data-dir"])
        .arg(provider.as_os_str())
        .args([
            "--",
            "sh",
            "-c",
            &format!("echo $SHOAL_DEVICE_TOKEN > {}", token_file.display()),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The holder's daemon is cut off (stopped): it cannot renew. After its
    // term the provider gives the device to the next in line.
    let user_daemon = daemons[1].id();
    signal(user_daemon, "-STOP");
    until("the next in line gets the device", || {
        std::fs::read_to_string(&token_file).is_ok_and(|t| t.trim() == "2")
    });
    assert!(next.wait().unwrap().success());
    signal(user_daemon, "-CONT");
    // What the cut-off holder sends now never reaches the device: the
    // provider refuses its token and closes the stream, and the local end
    // closes.
    let _ = conn.write_all(b"two");
    let mut got = Vec::new();
    let read = conn.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("two"),
        "the device answered a stale holder"
    );
    assert!(read.is_ok(), "the local end closes: {read:?}");
    let provider_log = super::log_of(provider);
    assert!(
        provider_log.contains("token is refused") || provider_log.contains("does not hold device"),
        "{provider_log}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    drop(daemons.pop());
}

#[test]
fn a_class_moves_to_another_device_when_its_provider_is_killed() {
    let dirs: Vec<super::TestDir> = (0..3).map(|i| dir(&format!("device-failover-{i}"))).collect();
    let first = up_with(&dirs[0], None, &["--slots", "0"]);
    let addr = json(&shoal(&dirs[0], &["status", "--json"]))["listening"][0]
        .as_str()
        .unwrap()
        .to_string();
    let mut providers = [
        up_with(&dirs[1], Some(&addr), &["--slots", "0"]),
        up_with(&dirs[2], Some(&addr), &["--slots", "0"]),
    ];
    for (i, d) in dirs[1..].iter().enumerate() {
        let port = echo_service();
        let shared = shoal(
            d,
            &[
                "device",
                "share",
                &format!("echo-{i}"),
                "--class",
                "echo",
                "--tcp",
                &format!("127.0.0.1:{port}"),
            ],
        );
        assert!(shared.status.success(), "{}", stderr(&shared));
    }
    let user = &dirs[0];
    until("the user sees both devices", || {
        json(&shoal(user, &["device", "ls", "--class", "echo", "--json"]))
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut using = Command::new(super::SHOAL)
        .args([
            "device",
            "use",
            "--class",
            "echo",
            "--listen",
            &format!("127.0.0.1:{local}"),
            "--data-dir",
        ])
        .arg(user.as_os_str())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let works = || {
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", local)) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = [0u8; 4];
        c.write_all(b"ping").is_ok() && c.read_exact(&mut got).is_ok() && &got == b"ping"
    };
    until("the class's device answers", works);
    // Which provider holds it: kill that one.
    let held = json(&shoal(user, &["device", "ls", "--class", "echo", "--json"]));
    let in_use = held
        .as_array()
        .unwrap()
        .iter()
        .position(|d| !d["holders"].as_array().unwrap().is_empty())
        .expect("one device is held");
    let name = held[in_use]["name"].as_str().unwrap().to_string();
    let gone = if name == "echo-0" { 0 } else { 1 };
    providers[gone].kill().unwrap();
    let _ = providers[gone].wait();
    // The local end works again, through the other device.
    until("the local port works through the other device", works);
    let now = json(&shoal(user, &["device", "ls", "--class", "echo", "--json"]));
    let other = if gone == 0 { "echo-1" } else { "echo-0" };
    let device = now
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == other)
        .expect("the other device is listed");
    assert_eq!(device["holders"].as_array().unwrap().len(), 1, "{now}");
    let _ = using.kill();
    let _ = using.wait();
    drop(first);
}

#[test]
fn a_device_in_shoal_toml_is_shared_at_start() {
    let (provider, user) = (dir("device-toml-0"), dir("device-toml-1"));
    let port = echo_service();
    std::fs::create_dir_all(&*provider).unwrap();
    std::fs::write(
        provider.join("shoal.toml"),
        format!("[[device]]\nname = \"echo-toml\"\nclass = \"echo\"\ntcp = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let _first = up_with(&provider, None, &["--slots", "0"]);
    let addr = json(&shoal(&provider, &["status", "--json"]))["listening"][0]
        .as_str()
        .unwrap()
        .to_string();
    let _second = up_with(&user, Some(&addr), &["--slots", "0"]);
    until("the device from shoal.toml is listed", || {
        let listed = json(&shoal(&user, &["device", "ls", "--json"]));
        listed.as_array().unwrap().iter().any(|d| d["name"] == "echo-toml")
    });
    let out = use_and_say_hello(&user, "echo-toml");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello 1",
        "{}",
        stderr(&out)
    );
}

#[test]
fn shared_holders_share_a_device_and_an_exclusive_one_waits_for_them() {
    let (dirs, _daemons) = two("shared");
    let (provider, user) = (&dirs[0], &dirs[1]);
    let port = echo_service();
    let shared = shoal(
        provider,
        &[
            "device",
            "share",
            "scope",
            "--class",
            "echo",
            "--tcp",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert!(shared.status.success(), "{}", stderr(&shared));
    until("the user sees the device", || {
        !json(&shoal(user, &["device", "ls", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    });
    // The user holds it shared while its command runs.
    let marker = user.join("holding");
    let mut first = Command::new(super::SHOAL)
        .args(["device", "use", "--data-dir"])
        .arg(user.as_os_str())
        .args([
            "scope",
            "--shared",
            "--",
            "sh",
            "-c",
            &format!("touch {}; sleep 4", marker.display()),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until("the first shared holder runs", || marker.exists());
    // A second shared holder gets it at once; an exclusive one does not.
    let second = use_then(provider, &["scope", "--shared", "--wait", "0"], &["true"]);
    assert!(
        second.status.success(),
        "a shared holder was refused: {}",
        stderr(&second)
    );
    let exclusive = use_then(provider, &["scope", "--wait", "0"], &["true"]);
    assert_eq!(exclusive.status.code(), Some(75), "{}", stderr(&exclusive));
    assert!(stderr(&exclusive).contains("busy"), "{}", stderr(&exclusive));
    // Once the shared holder is done, the exclusive one takes it.
    assert!(first.wait().unwrap().success());
    let after = use_then(provider, &["scope", "--wait", "10s"], &["true"]);
    assert!(after.status.success(), "{}", stderr(&after));
}

#[test]
fn a_device_used_by_name_is_found_again_when_another_peer_shares_it() {
    let (dirs, _daemons) = two("found");
    let (a, b) = (&dirs[0], &dirs[1]);
    let port = echo_service().to_string();
    let target = format!("127.0.0.1:{port}");
    let shared = shoal(a, &["device", "share", "mover", "--class", "echo", "--tcp", &target]);
    assert!(shared.status.success(), "{}", stderr(&shared));
    // b uses it once (and remembers where it was found) ...
    let used = use_and_say_hello(b, "mover");
    assert!(used.status.success(), "{}", stderr(&used));
    // ... then it moves: a stops sharing it, b shares it itself.
    let unshared = shoal(a, &["device", "unshare", "mover"]);
    assert!(unshared.status.success(), "{}", stderr(&unshared));
    let shared = shoal(b, &["device", "share", "mover", "--class", "echo", "--tcp", &target]);
    assert!(shared.status.success(), "{}", stderr(&shared));
    // The next use does not keep asking the old provider.
    let used = use_then(b, &["mover", "--wait", "10s"], &["true"]);
    assert!(used.status.success(), "{}", stderr(&used));
}
