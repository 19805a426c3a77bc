//! The `shoal` subcommands of compute slots and jobs: `run`, `slots`,
//! `jobs` and `job status|wait|logs|cancel`. They call the daemon's
//! `/v1/jobs` and `/v1/slots` routes.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use shoal_node::cli_client::ask;
use shoal_node::control::{Drained, JobView, ManyRequest, MoveRequest, OutputView, RunRequest, SlotView};
use shoal_node::settings;

use super::Talk;

/// What `shoal run` takes.
#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// The WebAssembly module (a WASI preview 1 command: `clang
    /// --target=wasm32-wasi`, Rust's `wasm32-wasip1`), or a content id of
    /// one already shared. Not with --native.
    #[arg(required_unless_present = "native")]
    module: Option<String>,
    /// Run a native command (the words after `--`) instead of a module,
    /// on a peer that allows native commands from this peer (`shoal up
    /// --allow-native --trust THIS_PEER_ID`).
    #[arg(long)]
    native: bool,
    /// An input: a file (shared first) or a content id, seen read-only by
    /// the job as /in/NAME (default NAME: the file's name, or the id).
    /// Repeatable. A native job finds it at in/NAME in its directory.
    #[arg(long = "input", value_name = "PATH_OR_ID[:NAME]")]
    inputs: Vec<String>,
    /// An environment variable for the job (it gets no other). Repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Memory the job needs (e.g. 64M, 2G); only slots with at least this
    /// much take it. Default: the slot's memory.
    #[arg(long, value_name = "SIZE", value_parser = settings::parse_size)]
    memory: Option<u64>,
    /// Time limit (e.g. 30s, 10m, 2h). Default: the executor's (1 h).
    #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
    timeout: Option<Duration>,
    /// Run only on a peer labelled KEY=VALUE (`shoal up --label`).
    /// Repeatable: all must match.
    #[arg(long = "where", value_name = "KEY=VALUE", value_parser = settings::parse_label)]
    labels: Vec<(String, String)>,
    /// Print the job id once placed and return; follow it with `shoal job`.
    #[arg(long)]
    detach: bool,
    /// Keep R copies of the job's output at the output's home, as `shoal
    /// pin --replicas R` does (the executor pins it before the job counts
    /// as ended), so the output outlives its executor. Default: no pin;
    /// the executor alone provides the output.
    #[arg(long, value_name = "R")]
    replicas: Option<u8>,
    /// Submit N copies of the job at once (each its own job; with
    /// --detach): prints their ids, one per line.
    #[arg(long, value_name = "N", requires = "detach")]
    repeat: Option<u32>,
    /// The module's arguments, or the native command and its arguments.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
    #[command(flatten)]
    talk: Talk,
}

/// `shoal job ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum JobCommand {
    /// A job's state, placement and times. Works from any peer: the record
    /// is read from the job's home.
    Status {
        /// The job id.
        id: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Wait for a job to end; exits with its exit code.
    Wait {
        /// The job id.
        id: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Print a job's output (stdout to stdout, stderr to stderr).
    Logs {
        /// The job id.
        id: String,
        /// Keep printing as the job writes, until it ends.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Stop a job this peer submitted (queued or running).
    Cancel {
        /// The job id.
        id: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Save a running job's /ckpt now (a job this peer submitted): its
    /// home keeps it, and a job placed again goes on from it. A job can
    /// also checkpoint itself: it writes its state under /ckpt and exits
    /// with 85 ("checkpointed: run me again").
    Checkpoint {
        /// The job id.
        id: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Move a job this peer submitted off the peer that runs it: it stops
    /// there and runs anew on another peer from its newest checkpoint (or
    /// from the start, if it has none).
    Move {
        /// The job id.
        id: String,
        /// The peer to move it to (a peer id; `shoal slots` lists them).
        /// Default: the better of two other fitting peers.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
}

/// Exit code of a job that ended without one of its own.
const NO_EXIT_CODE: i32 = 125;

fn body_of(args: &RunArgs) -> anyhow::Result<RunRequest> {
    let module = match &args.module {
        Some(m) => Some(absolute_or_id(m)?),
        None => None,
    };
    let mut inputs = Vec::new();
    for input in &args.inputs {
        // A file path wins over PATH:NAME, so a path with a colon works.
        let (what, name) = match input.rsplit_once(':') {
            Some((what, name)) if !std::path::Path::new(input).exists() => (what, Some(name)),
            _ => (input.as_str(), None),
        };
        let name = match name {
            Some(n) => n.to_string(),
            None => std::path::Path::new(what)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| what.to_string()),
        };
        inputs.push((absolute_or_id(what)?, name));
    }
    let mut env = std::collections::BTreeMap::new();
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair:?} is not K=V"))?;
        env.insert(k.to_string(), v.to_string());
    }
    if args.native && args.args.is_empty() {
        anyhow::bail!("--native runs the command after `--`: shoal run --native -- COMMAND [ARGS...]");
    }
    Ok(RunRequest {
        native: args.native,
        module,
        args: args.args.clone(),
        env,
        inputs,
        memory: args.memory.unwrap_or(0),
        timeout_ms: args.timeout.map_or(0, |t| t.as_millis().max(1) as u64),
        labels: args.labels.iter().cloned().collect(),
        detach: args.detach,
        replicas: args.replicas.unwrap_or(0),
    })
}

/// A file as an absolute path (the daemon shares it), or text that is not
/// a file, as is (the daemon reads it as a content id).
fn absolute_or_id(what: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(what);
    if path.exists() {
        return Ok(std::path::absolute(path)
            .with_context(|| format!("cannot resolve {what}"))?
            .display()
            .to_string());
    }
    Ok(what.to_string())
}

/// `shoal run`: places the job; unless detached, streams its output and
/// exits with its exit code.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<i32> {
    let body = body_of(&args)?;
    if let Some(repeat) = args.repeat {
        let ids: Vec<String> = ask(
            &args.talk.data_dir,
            "POST",
            "/v1/jobs/many",
            Some(&ManyRequest { job: body, repeat }),
        )?;
        if args.talk.json {
            println!("{}", serde_json::to_string(&ids)?);
        } else {
            let mut out = std::io::stdout().lock();
            for id in ids {
                let _ = writeln!(out, "{id}");
            }
        }
        return Ok(0);
    }
    let view: JobView = ask(&args.talk.data_dir, "POST", "/v1/jobs", Some(&body))?;
    if args.detach {
        if args.talk.json {
            println!("{}", serde_json::to_string(&view)?);
        } else {
            println!("{}", view.job_id);
        }
        return Ok(0);
    }
    // With --json, stdout holds the one document: the job's output goes to
    // standard error.
    let ended = follow(&args.talk, &view.job_id, 0, true, args.talk.json)?;
    finish(&args.talk, &view.job_id, ended)
}

/// Prints output from `from` on until the job ends (or, if not `until_end`,
/// until what is there now was printed); the job as it ended, if the
/// daemon said.
fn follow(
    talk: &Talk,
    id: &str,
    mut from: u64,
    until_end: bool,
    all_to_stderr: bool,
) -> anyhow::Result<Option<JobView>> {
    loop {
        let wait = if until_end { 5000 } else { 0 };
        let path = format!("/v1/jobs/{id}/output?from={from}&wait_ms={wait}");
        let out: OutputView = ask(&talk.data_dir, "GET", &path, None::<&()>)?;
        for chunk in &out.chunks {
            let written = if chunk.stream == "stderr" || all_to_stderr {
                std::io::stderr()
                    .lock()
                    .write_all(&chunk.bytes)
                    .and_then(|()| std::io::stderr().flush())
            } else {
                std::io::stdout()
                    .lock()
                    .write_all(&chunk.bytes)
                    .and_then(|()| std::io::stdout().flush())
            };
            if let Err(e) = written {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    std::process::exit(0);
                }
                return Err(e.into());
            }
        }
        from = out.next;
        if out.ended || (!until_end && out.chunks.is_empty()) {
            return Ok(out.job);
        }
    }
}

/// Reads the job's final state, prints it (JSON, or a line on standard
/// error when it failed or wrote `/out`), and returns its exit code.
fn finish(talk: &Talk, id: &str, ended: Option<JobView>) -> anyhow::Result<i32> {
    let view: JobView = match ended.filter(|v| v.state == "ended" || v.state == "cancelled") {
        Some(view) => view,
        None => ask(&talk.data_dir, "GET", &format!("/v1/jobs/{id}"), None::<&()>)?,
    };
    if talk.json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        if let Some(error) = &view.error {
            eprintln!("error: job {id}: {error}");
        }
        if let Some(output) = &view.output {
            eprintln!("output {output} (fetch it with: shoal get {output} -o DIR)");
        }
    }
    Ok(view.exit_code.unwrap_or(NO_EXIT_CODE))
}

fn times(v: &JobView) -> String {
    let at = |ms: Option<u64>| ms.map_or("-".to_string(), |ms| format!("{:.3}", ms as f64 / 1000.0));
    format!(
        "queued {}  placed {}  started {}  ended {}",
        at(Some(v.queued)),
        at(v.placed),
        at(v.started),
        at(v.ended)
    )
}

/// A job as text.
pub(crate) fn job_text(v: &JobView) -> String {
    let mut lines = vec![format!("job      {}", v.job_id), format!("state    {}", v.state)];
    if let Some(p) = v.position {
        lines.push(format!("queue    position {p}"));
    }
    if let Some(peer) = &v.peer {
        lines.push(format!("peer     {peer}"));
    }
    if let Some(token) = v.token {
        lines.push(format!("token    {token}"));
    }
    if let Some(code) = v.exit_code {
        lines.push(format!("exit     {code}"));
    }
    if let Some(e) = &v.error {
        lines.push(format!("error    {e}"));
    }
    if let Some(o) = &v.output {
        lines.push(format!("output   {o}"));
    }
    lines.push(format!("times    {} (seconds since the epoch)", times(v)));
    if !v.history.is_empty() {
        lines.push("history  token  placed (s since the epoch)  executor  checkpoints  ended".into());
    }
    for p in &v.history {
        let ckpts = match p.last_checkpoint {
            Some(at) => format!("{} (last {:.1})", p.checkpoints, at as f64 / 1000.0),
            None => p.checkpoints.to_string(),
        };
        let end = match (&p.why, p.ended) {
            (Some(why), Some(at)) => format!("{why} at {:.1}", at as f64 / 1000.0),
            _ if p.ran => "running".to_string(),
            _ => "placed".to_string(),
        };
        lines.push(format!(
            "         {:<5}  {:.1}  {}  {ckpts}  {end}",
            p.token,
            p.placed as f64 / 1000.0,
            p.peer.as_deref().unwrap_or("(not found)"),
        ));
    }
    lines.join("\n")
}

pub(crate) fn job(command: JobCommand) -> anyhow::Result<i32> {
    match command {
        JobCommand::Status { id, talk } => {
            let view: JobView = ask(
                &talk.data_dir,
                "GET",
                &format!("/v1/jobs/{id}?history=true"),
                None::<&()>,
            )?;
            print_view(&talk, &view)?;
            Ok(0)
        }
        JobCommand::Wait { id, talk } => loop {
            let view: JobView = ask(&talk.data_dir, "GET", &format!("/v1/jobs/{id}"), None::<&()>)?;
            if view.state == "ended" || view.state == "cancelled" {
                print_view(&talk, &view)?;
                return Ok(view.exit_code.unwrap_or(NO_EXIT_CODE));
            }
            std::thread::sleep(Duration::from_millis(200));
        },
        JobCommand::Logs { id, follow: f, talk } => {
            let _ = follow(&talk, &id, 0, f, false)?;
            Ok(0)
        }
        JobCommand::Cancel { id, talk } => {
            let view: JobView = ask(&talk.data_dir, "DELETE", &format!("/v1/jobs/{id}"), None::<&()>)?;
            print_view(&talk, &view)?;
            Ok(0)
        }
        JobCommand::Move { id, to, talk } => {
            let view: JobView = ask(
                &talk.data_dir,
                "POST",
                &format!("/v1/jobs/{id}/move"),
                Some(&MoveRequest { to }),
            )?;
            if !talk.json {
                eprintln!(
                    "moved job {id} to {} (grant {})",
                    view.peer.as_deref().unwrap_or("another peer"),
                    view.token.unwrap_or(0)
                );
            }
            print_view(&talk, &view)?;
            Ok(0)
        }
        JobCommand::Checkpoint { id, talk } => {
            let view: JobView = ask(
                &talk.data_dir,
                "POST",
                &format!("/v1/jobs/{id}/checkpoint"),
                None::<&()>,
            )?;
            if !talk.json {
                eprintln!(
                    "asked {} to save the checkpoint of job {id}",
                    view.peer.as_deref().unwrap_or("its executor")
                );
            }
            print_view(&talk, &view)?;
            Ok(0)
        }
    }
}

/// `shoal drain`.
pub(crate) fn drain(talk: &Talk) -> anyhow::Result<i32> {
    let moved: Vec<Drained> = ask(&talk.data_dir, "POST", "/v1/drain", None::<&()>)?;
    if talk.json {
        println!("{}", serde_json::to_string(&moved)?);
    } else {
        for d in &moved {
            match (&d.peer, &d.error) {
                (Some(peer), _) => println!("{}  moved to {peer} (grant {})", d.job_id, d.token.unwrap_or(0)),
                (None, Some(why)) => println!("{}  not moved: {why}", d.job_id),
                (None, None) => println!("{}  not moved", d.job_id),
            }
        }
        let failed = moved.iter().filter(|d| d.peer.is_none()).count();
        eprintln!(
            "drained: {} job(s) moved, {failed} not; this peer takes no new jobs until it restarts",
            moved.len() - failed
        );
    }
    Ok(i32::from(moved.iter().any(|d| d.peer.is_none())))
}

fn print_view(talk: &Talk, view: &JobView) -> anyhow::Result<()> {
    if talk.json {
        println!("{}", serde_json::to_string(view)?);
    } else {
        println!("{}", job_text(view));
    }
    Ok(())
}

/// `shoal jobs`.
pub(crate) fn list(talk: &Talk, limit: usize) -> anyhow::Result<()> {
    let jobs: Vec<JobView> = ask(&talk.data_dir, "GET", &format!("/v1/jobs?limit={limit}"), None::<&()>)?;
    if talk.json {
        println!("{}", serde_json::to_string(&jobs)?);
        return Ok(());
    }
    println!("{} jobs", jobs.len());
    for j in &jobs {
        let place = if j.submitted_here {
            "submitted here"
        } else {
            "runs here"
        };
        let exit = j.exit_code.map(|c| format!("  exit {c}")).unwrap_or_default();
        let peer = j.peer.as_deref().unwrap_or("-");
        println!("{}  {:<9} {peer}  {place}{exit}", j.job_id, j.state);
    }
    Ok(())
}

/// `shoal slots`.
pub(crate) fn slots(talk: &Talk) -> anyhow::Result<()> {
    let slots: Vec<SlotView> = ask(&talk.data_dir, "GET", "/v1/slots", None::<&()>)?;
    if talk.json {
        println!("{}", serde_json::to_string(&slots)?);
        return Ok(());
    }
    println!("{} peers offer slots", slots.len());
    for s in &slots {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{}  free {}/{}  memory {}  {}  running {}  queued {}{}",
            s.peer,
            s.free,
            s.total,
            indicatif::HumanBytes(s.memory),
            s.kinds.join(","),
            s.running,
            s.queued,
            if labels.is_empty() {
                String::new()
            } else {
                format!("  {}", labels.join(" "))
            }
        );
    }
    Ok(())
}
