//! Native jobs: a command run in the job's directory under rlimits, for
//! submitters the peer trusts (`--allow-native --trust PEER`).
//!
//! The command starts through `prlimit(1)` (util-linux), which sets the
//! limits on itself and then executes the command, so they hold from its
//! first instruction: address space (the job's memory), CPU seconds (its
//! timeout), the largest file it may write (the `/out` cap) and, for a
//! user other than root, its processes. It runs in a process group of its
//! own, whose every member is killed when the job ends, times out or is
//! cancelled; a process that leaves the group on purpose (`setsid`) is
//! beyond this, as it is for a batch system without cgroups.
//!
//! Its working directory is the job's directory, so its inputs are
//! `in/NAME`, its outputs go under `out/` and its checkpoint under
//! `ckpt/`; `SHOAL_IN`, `SHOAL_OUT` and `SHOAL_CKPT` name them absolutely.
//! Its environment is what it was given, plus `PATH`, `HOME` (the job's
//! directory) and those three.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{LogBudget, Outcome, Run, RunError, Sink, Stream, trees_bytes};

/// How often a running command's limits are checked (deadline, cancel,
/// output; `/out` every tenth time). Its exit is seen at once.
const POLL: Duration = Duration::from_millis(10);

/// Processes a native job may have, when the peer is not run by root.
pub const MAX_PROCESSES: u64 = 256;

/// The `PATH` a native job gets.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs native commands.
#[derive(Clone, Debug, Default)]
pub struct NativeRunner;

impl NativeRunner {
    /// Runs `command` as `run` says (its `args` follow the command) until
    /// it exits, times out or is cancelled. Blocks the calling thread.
    pub fn run(&self, command: &str, run: Run<'_>) -> Outcome {
        let Run {
            args,
            env,
            dir,
            limits,
            sink,
            cancel,
            clock,
            pause: _,
        } = run;
        if !found(command) {
            return Outcome::failed(RunError::Spawn(format!(
                "{command}: command not found on this peer (PATH={PATH})"
            )));
        }
        // By its path: a command looked up in a PATH the child is given
        // makes the standard library fork the whole peer (copying its page
        // tables: most of a tiny job's cost on a busy peer) instead of
        // spawning it the cheap way.
        let Some(prlimit) = locate("prlimit") else {
            return Outcome::failed(RunError::Spawn(format!(
                "prlimit (util-linux) is needed to run native jobs and is not in {PATH}"
            )));
        };
        let cpu_seconds = limits.timeout.as_secs().saturating_add(1);
        let mut cmd = Command::new(prlimit);
        cmd.arg(format!("--as={}", limits.memory))
            .arg(format!("--cpu={cpu_seconds}"))
            .arg(format!("--fsize={}", limits.out_bytes.max(1)))
            .arg(format!("--nproc={MAX_PROCESSES}"))
            .arg("--")
            .arg(command)
            .args(args)
            .current_dir(dir.root())
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", dir.root())
            .env("SHOAL_IN", dir.inputs())
            .env("SHOAL_OUT", dir.outputs())
            .env("SHOAL_CKPT", dir.checkpoints())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => return Outcome::failed(RunError::Spawn(format!("prlimit (util-linux) for {command}: {e}"))),
        };
        let group = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        let Some(group) = group else {
            return Outcome::failed(RunError::Spawn("the command has no process id".into()));
        };
        let budget = LogBudget::new(limits.log_bytes);
        let readers: Vec<_> = [
            (
                child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
                Stream::Stdout,
            ),
            (
                child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
                Stream::Stderr,
            ),
        ]
        .into_iter()
        .filter_map(|(reader, stream)| {
            let reader = reader?;
            let (sink, budget) = (sink.clone(), budget.clone());
            std::thread::Builder::new()
                .name("shoal-native-output".into())
                .spawn(move || forward(reader, stream, &*sink, &budget))
                .ok()
        })
        .collect();
        // A thread waits for the exit, so that it is seen at once; this one
        // checks the limits every POLL meanwhile.
        let (exited, exit) = std::sync::mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name("shoal-native-wait".into())
            .spawn(move || {
                let _ = exited.send(child.wait());
            });
        if let Err(e) = waiter {
            kill_group(group);
            return Outcome::failed(RunError::Spawn(e.to_string()));
        }
        let deadline = clock() + limits.timeout;
        let mut ticks = 0u32;
        let outcome = loop {
            match exit.recv_timeout(POLL) {
                Ok(Ok(status)) => break exit_outcome(status),
                Ok(Err(e)) => break Outcome::failed(RunError::Io(e.to_string())),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    break Outcome::failed(RunError::Io("lost the command's exit status".into()));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            ticks = ticks.wrapping_add(1);
            let why = if cancel.is_cancelled() {
                Some(RunError::Cancelled)
            } else if clock() >= deadline {
                Some(RunError::Timeout(limits.timeout))
            } else if budget.is_over() {
                Some(RunError::LogOverCap { cap: limits.log_bytes })
            } else if ticks.is_multiple_of(10) && trees_bytes(&dir.capped(), limits.out_bytes) > limits.out_bytes {
                Some(RunError::OutputOverCap { cap: limits.out_bytes })
            } else {
                None
            };
            if let Some(why) = why {
                kill_group(group);
                let _ = exit.recv();
                break Outcome::failed(why);
            }
        };
        // Whatever the command left behind in its group goes with it.
        kill_group(group);
        for reader in readers {
            let _ = reader.join();
        }
        if outcome.error.is_none() && trees_bytes(&dir.capped(), limits.out_bytes) > limits.out_bytes {
            return Outcome::failed(RunError::OutputOverCap { cap: limits.out_bytes });
        }
        if outcome.error.is_none() && budget.is_over() {
            return Outcome::failed(RunError::LogOverCap { cap: limits.log_bytes });
        }
        outcome
    }
}

/// Whether `command` names an executable file: a path, or a name found
/// in [`PATH`].
fn found(command: &str) -> bool {
    locate(command).is_some()
}

/// The executable `command` names: itself if it is a path, else the first
/// of that name in [`PATH`].
fn locate(command: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let path = std::path::PathBuf::from(command);
        return executable(&path).then_some(path);
    }
    if command.is_empty() {
        return None;
    }
    PATH.split(':')
        .map(|dir| std::path::Path::new(dir).join(command))
        .find(|p| executable(p))
}

fn kill_group(group: rustix::process::Pid) {
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
}

/// How a command that exited ended: its code, or 128 + the signal that
/// killed it (as shells report it).
fn exit_outcome(status: std::process::ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::exited(code),
        (None, Some(signal)) => Outcome::exited(128 + signal),
        (None, None) => Outcome::exited(125),
    }
}

/// Copies a command's output to the sink within the budget; once over, it
/// keeps reading (so the command is not blocked on a full pipe) and drops.
fn forward(mut reader: Box<dyn Read + Send>, stream: Stream, sink: &dyn Sink, budget: &LogBudget) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let keep = budget.take(n);
                if keep > 0 {
                    sink.write(stream, &buf[..keep]);
                }
            }
        }
    }
}
