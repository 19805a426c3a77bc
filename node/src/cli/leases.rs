//! The `shoal lease` subcommands: `acquire`, `release`, `run`, `ls`. They
//! call the daemon's `/v1/leases` routes; the daemon waits in line, holds
//! and renews the lease (see `shoal_node::leases`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shoal_node::cli_client::ask;
use shoal_node::control::{AcquireRequest, LeaseList, ReleaseRequest, ReleasedView, SessionState, SessionView};
use shoal_node::settings;

use super::Talk;

/// `shoal lease ...`
#[derive(clap::Subcommand, Debug)]
pub(crate) enum LeaseCommand {
    /// Take the lease NAME and keep it (the daemon renews it) until `shoal
    /// lease release NAME`, the --ttl, or the daemon stops. Waits in line
    /// while another holds it. Prints the lease's token: it grows with
    /// every grant, so whatever the holder writes can carry it and a
    /// stale holder's writes can be refused.
    Acquire {
        /// The lease's name: any text of 1 to 200 bytes (a deploy, a
        /// directory, a build cache).
        name: String,
        /// Let go of it this long after taking it (e.g. 30s, 10m).
        /// Default: keep it until released.
        #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
        ttl: Option<Duration>,
        /// Wait at most this long for it (0: fail at once, naming the
        /// holder). Default: as long as it takes.
        #[arg(long, value_name = "DURATION", value_parser = settings::parse_wait)]
        wait: Option<Duration>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Let go of the lease NAME (held or waited for by this peer's
    /// daemon): the next in line takes it at once.
    Release {
        /// The lease's name.
        name: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Hold the lease NAME while COMMAND runs, then let it go. COMMAND gets
    /// SHOAL_LEASE_NAME and SHOAL_LEASE_TOKEN in its environment. If the
    /// lease is lost (a majority of its members out of reach for a term)
    /// COMMAND is stopped (SIGTERM) and this exits with 75. If this
    /// command itself is killed, the daemon lets the lease go within 5 s.
    Run {
        /// The lease's name.
        name: String,
        /// Wait at most this long for it (0: fail at once, naming the
        /// holder). Default: as long as it takes.
        #[arg(long, value_name = "DURATION", value_parser = settings::parse_wait)]
        wait: Option<Duration>,
        #[command(flatten)]
        talk: Talk,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Leases this peer holds or waits for, and the leases it keeps as a
    /// member of their home (holder, token, waiters).
    Ls {
        #[command(flatten)]
        talk: Talk,
    },
}

/// The exit code of `lease run` when the lease was lost, and of `acquire`
/// and `run` when `--wait` ran out (EX_TEMPFAIL).
const LOST: i32 = 75;

/// Runs a `shoal lease` subcommand; its exit code.
pub(crate) fn lease(command: LeaseCommand) -> anyhow::Result<i32> {
    match command {
        LeaseCommand::Acquire { name, ttl, wait, talk } => {
            let request = AcquireRequest {
                name: name.clone(),
                ttl_ms: ttl.map(|t| t.as_millis() as u64),
                keepalive: false,
            };
            match take(&talk, &request, wait)? {
                Taken::Held(view) => {
                    if talk.json {
                        println!("{}", serde_json::to_string(&view)?);
                    } else if let SessionState::Held { token, .. } = view.state {
                        println!("{token}");
                        eprintln!("holding lease {name:?} (token {token}); `shoal lease release {name}` lets it go");
                    }
                    Ok(0)
                }
                Taken::NotNow(why) => {
                    eprintln!("{why}");
                    Ok(LOST)
                }
            }
        }
        LeaseCommand::Release { name, talk } => {
            let view: ReleasedView = ask(
                &talk.data_dir,
                "POST",
                "/v1/leases/release",
                Some(&ReleaseRequest { name: name.clone() }),
            )?;
            if talk.json {
                println!("{}", serde_json::to_string(&view)?);
            } else {
                eprintln!("released lease {name:?}");
            }
            Ok(0)
        }
        LeaseCommand::Run {
            name,
            wait,
            talk,
            command,
        } => run(&talk, &name, wait, &command),
        LeaseCommand::Ls { talk } => {
            let list: LeaseList = ask(&talk.data_dir, "GET", "/v1/leases", None::<&()>)?;
            if talk.json {
                println!("{}", serde_json::to_string(&list)?);
                return Ok(0);
            }
            if list.sessions.is_empty() && list.kept.is_empty() {
                println!("no leases held, waited for or kept here");
            }
            for s in &list.sessions {
                println!("{:<32} {}", s.name, describe(&s.state));
            }
            for k in &list.kept {
                let holder = match (&k.holder, k.token) {
                    (Some(peer), Some(token)) => format!("held by {peer} (token {token})"),
                    _ => "free".to_string(),
                };
                if k.moved_on {
                    println!(
                        "{:<32} kept here once: its set moved on (epoch {})",
                        k.name,
                        k.epoch + 1
                    );
                    continue;
                }
                println!(
                    "{:<32} kept here: {holder}, {} waiting; a set of {} (epoch {})",
                    k.name, k.waiting, k.members, k.epoch
                );
            }
            Ok(0)
        }
    }
}

fn describe(state: &SessionState) -> String {
    match state {
        SessionState::Joining => "finding its home".into(),
        SessionState::Waiting {
            ahead,
            holder,
            holder_token,
        } => match (holder, holder_token) {
            (Some(peer), Some(token)) => format!("waiting, {ahead} ahead; held by {peer} (token {token})"),
            (None, Some(token)) => format!("waiting, {ahead} ahead; held (token {token})"),
            _ => format!("waiting, {ahead} ahead"),
        },
        SessionState::Held { token, .. } => format!("held (token {token})"),
        SessionState::Lost { token } => format!("lost (token {token})"),
        SessionState::Released => "released".into(),
        SessionState::Failed { error } => format!("failed: {error}"),
    }
}

enum Taken {
    Held(SessionView),
    NotNow(String),
}

/// Starts a session and follows it until the lease is held, or `wait`
/// runs out (the session is released then).
fn take(talk: &Talk, request: &AcquireRequest, wait: Option<Duration>) -> anyhow::Result<Taken> {
    let mut view: SessionView = ask(&talk.data_dir, "POST", "/v1/leases", Some(request))?;
    let n = view.session;
    let started = Instant::now();
    let mut shown = String::new();
    loop {
        match &view.state {
            SessionState::Held { .. } => return Ok(Taken::Held(view)),
            SessionState::Failed { error } => bail!("lease {:?}: {error}", request.name),
            SessionState::Lost { .. } | SessionState::Released => {
                bail!("lease {:?}: {}", request.name, describe(&view.state))
            }
            SessionState::Waiting {
                holder_token, ahead, ..
            } => {
                let line = describe(&view.state);
                if !talk.json && line != shown {
                    eprintln!("lease {:?}: {line}", request.name);
                    shown = line;
                }
                // `--wait 0`: fails as soon as it is known to be taken.
                if wait == Some(Duration::ZERO) && (holder_token.is_some() || *ahead > 0) {
                    release(talk, n);
                    return Ok(Taken::NotNow(format!(
                        "lease {:?} is not free: {}",
                        request.name,
                        describe(&view.state)
                    )));
                }
            }
            SessionState::Joining => {}
        }
        // Even `--wait 0` takes the few round trips that say whether the
        // lease is free: at most 10 s.
        let deadline = wait.map(|w| started + if w.is_zero() { Duration::from_secs(10) } else { w });
        let left = deadline.map_or(Duration::from_secs(2), |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            release(talk, n);
            return Ok(Taken::NotNow(format!(
                "lease {:?}: not taken within {:?}: {}",
                request.name,
                wait.unwrap_or_default(),
                describe(&view.state)
            )));
        }
        let poll = left.min(Duration::from_secs(2)).max(Duration::from_millis(1));
        view = ask(
            &talk.data_dir,
            "GET",
            &format!(
                "/v1/leases/session/{n}?after={}&wait_ms={}",
                view.version,
                poll.as_millis()
            ),
            None::<&()>,
        )?;
    }
}

fn release(talk: &Talk, n: u64) {
    let _: Result<serde_json::Value, _> = ask(
        &talk.data_dir,
        "DELETE",
        &format!("/v1/leases/session/{n}"),
        None::<&()>,
    );
}

/// `shoal lease run`: takes the lease, runs the command while it holds
/// it, lets it go when the command ends (or the lease is lost).
fn run(talk: &Talk, name: &str, wait: Option<Duration>, command: &[String]) -> anyhow::Result<i32> {
    let request = AcquireRequest {
        name: name.to_string(),
        ttl_ms: None,
        keepalive: true,
    };
    let view = match take(talk, &request, wait)? {
        Taken::Held(view) => view,
        Taken::NotNow(why) => {
            eprintln!("{why}");
            return Ok(LOST);
        }
    };
    let n = view.session;
    let SessionState::Held { token, .. } = view.state else {
        bail!("lease {name:?} is not held");
    };
    // Ctrl-C reaches the command too; this process lets go once it ended.
    let _interrupted = super::on_ctrl_c();
    let (program, args) = command.split_first().context("no command given")?;
    let spawned = std::process::Command::new(program)
        .args(args)
        .env("SHOAL_LEASE_NAME", name)
        .env("SHOAL_LEASE_TOKEN", token.to_string())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            release(talk, n);
            bail!("cannot start {program}: {e}");
        }
    };
    // A watcher keeps the session alive (see `KEEPALIVE`) and stops the
    // command if the lease is lost; this thread waits for the command.
    let pid = rustix::process::Pid::from_child(&child);
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    {
        let (data_dir, ended, lost) = (talk.data_dir.clone(), ended.clone(), lost.clone());
        let mut version = view.version;
        std::thread::spawn(move || {
            while !ended.load(std::sync::atomic::Ordering::Relaxed) {
                let why = match ask::<SessionView>(
                    &data_dir,
                    "GET",
                    &format!("/v1/leases/session/{n}?after={version}&wait_ms=1000"),
                    None::<&()>,
                ) {
                    Ok(now) if matches!(now.state, SessionState::Held { .. }) => {
                        version = now.version;
                        continue;
                    }
                    Ok(now) => describe(&now.state),
                    Err(e) => format!("out of reach: the daemon does not answer ({e})"),
                };
                *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                stop(pid, &ended);
                return;
            }
        });
    }
    let status = child.wait()?;
    ended.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(why) = lost.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!("lease {name:?} {why}: the command was stopped");
        return Ok(LOST);
    }
    release(talk, n);
    Ok(status.code().unwrap_or(128 + signal_of(&status)))
}

/// Stops the command `pid` until `ended` says it did: SIGTERM, then
/// SIGKILL after 5 s.
fn stop(pid: rustix::process::Pid, ended: &std::sync::atomic::AtomicBool) {
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ended.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !ended.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn signal_of(status: &std::process::ExitStatus) -> i32 {
    std::os::unix::process::ExitStatusExt::signal(status).unwrap_or(0)
}
