//! `shoal`: run a shoal peer, and talk to it.
//!
//! ```text
//! cargo run --release -p shoal-node -- up --no-mdns --data-dir /tmp/peer1
//! cargo run --release -p shoal-node -- status --data-dir /tmp/peer1
//! ```

// A transfer allocates a zeroed buffer for every yamux frame it receives
// (256 KiB): the system allocator hands those back to the kernel and takes
// them again, a page fault and a page clearing per 4 KiB; mimalloc keeps
// them (see BENCHMARKS.md, "1 GiB between two peers").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use shoal_node::admission::SwarmKey;
use shoal_node::cli_client::ask;
use shoal_node::control::{
    BlobView, DownloadView, GetRequest, KeyRequest, LookupView, PeerView, PinRequest, ProvideRequest, ProvideView,
    PutRequest, PutView, RecordView, ShareJobView, ShareRequest, Status, Stopping,
};
use shoal_node::settings::{self, Given};
use shoal_node::{control, start};

#[path = "cli/devices.rs"]
mod devices;
#[path = "cli/jobs.rs"]
mod jobs;
#[path = "cli/leases.rs"]
mod leases;

/// Prints a line on standard output. When the output is closed
/// (`shoal blobs | head -1`) the process ends quietly, as Unix tools do;
/// any other write error is said on standard error.
macro_rules! say {
    ($($arg:tt)*) => { write_line(&mut std::io::stdout().lock(), &format!($($arg)*)) };
}

/// [`say!`] for standard error.
macro_rules! tell {
    ($($arg:tt)*) => { write_line(&mut std::io::stderr().lock(), &format!($($arg)*)) };
}

fn write_line(out: &mut dyn std::io::Write, line: &str) {
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// A peer of a shoal swarm: the machines of a LAN pooled into one overlay.
///
/// `shoal up` runs the peer (the daemon); every other subcommand talks to the
/// daemon of the same `--data-dir` through its control API.
#[derive(Parser, Debug)]
#[command(name = "shoal", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of the subcommands that talk to a running daemon.
#[derive(clap::Args, Debug)]
struct Talk {
    /// The data directory of the daemon to talk to.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Record {
    /// Store a small signed value record at KEY's home.
    Put {
        /// 64 hex digits.
        key: String,
        /// The value (text, at most 16 KiB).
        value: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Read the value record at KEY.
    Get {
        /// 64 hex digits.
        key: String,
        #[command(flatten)]
        talk: Talk,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Write a new random swarm key to FILE (mode 0600; never overwrites).
    /// Copy it to every peer of the swarm and start each with
    /// `shoal up --swarm-key FILE`.
    New {
        /// Where to write the key.
        #[arg(default_value = "swarm.key")]
        file: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the peer until Ctrl-C, SIGTERM or `shoal down`, then hand its
    /// records on and stop.
    ///
    /// Each setting comes from its flag, else its SHOAL_* environment
    /// variable, else `shoal.toml` in the data directory (keys `listen`,
    /// `bootstrap`, `mdns`, `swarm_key`, `quota`, `slots`, `slot_memory`, `labels`,
    /// `allow_native`, `trust`, `member_gone_after`; see README.md), else
    /// the default.
    #[command(verbatim_doc_comment)]
    Up {
        /// Where the identity key, records, remembered peers, shoal.toml and
        /// control.json live (created on first start).
        #[arg(long, env = "SHOAL_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
        /// Address to listen on (repeatable, or comma-separated in the
        /// variable). Default: all interfaces, TCP and QUIC, ports chosen by
        /// the system (/ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1).
        /// File: listen = ["..."].
        #[arg(long, env = "SHOAL_LISTEN", value_delimiter = ',')]
        listen: Vec<Multiaddr>,
        /// Peer to join through, ending in /p2p/PEER_ID (repeatable). Peers
        /// met in earlier runs are tried as well. File: bootstrap = ["..."].
        #[arg(long, env = "SHOAL_BOOTSTRAP", value_delimiter = ',')]
        bootstrap: Vec<Multiaddr>,
        /// Do not look for peers on the LAN by mDNS (on by default).
        /// File: mdns = false.
        #[arg(long, env = "SHOAL_NO_MDNS")]
        no_mdns: bool,
        /// Make the swarm private: admit only peers holding this key (made
        /// by `shoal key new`), on TCP and QUIC. Default: open swarm.
        /// File: swarm_key = "PATH" (relative to the data directory).
        #[arg(long, env = "SHOAL_SWARM_KEY", value_name = "FILE")]
        swarm_key: Option<PathBuf>,
        /// Most disk the blob store may take (e.g. 500M, 10G, 1.5G; K, M, G
        /// and T are powers of 1024, so 10G, 10GB, 10Gi and 10GiB all mean
        /// 10 GiB): downloads
        /// given up a day ago and then the least recently used blobs are
        /// dropped to make room, and what still does not fit is refused.
        /// Default: no limit. File: quota = "10G".
        #[arg(long, env = "SHOAL_QUOTA", value_name = "SIZE", value_parser = settings::parse_size)]
        quota: Option<u64>,
        /// Compute slots to offer: jobs that run here at once (0: none;
        /// this peer still submits). Default: the number of cores.
        /// File: slots = 4.
        #[arg(long, env = "SHOAL_SLOTS", value_name = "N")]
        slots: Option<u32>,
        /// Memory of each slot: the most one job here may use (its linear
        /// memory; a native command's address space). Default 1G.
        /// File: slot_memory = "2G".
        #[arg(long, env = "SHOAL_SLOT_MEMORY", value_name = "SIZE", value_parser = settings::parse_size)]
        slot_memory: Option<u64>,
        /// A label of this peer's slots, matched by `shoal run --where
        /// KEY=VALUE` (repeatable). File: labels = { gpu = "a100" }.
        #[arg(long = "label", env = "SHOAL_LABELS", value_delimiter = ',', value_name = "KEY=VALUE",
              value_parser = settings::parse_label)]
        labels: Vec<(String, String)>,
        /// Also run native commands (`shoal run --native`), only for the
        /// peers given with --trust. Off by default, and safe that way:
        /// without it a slot runs only WebAssembly, which sees no file but
        /// its /in and /out, no network and no environment of this machine,
        /// within its memory and time. File: allow_native = true.
        #[arg(long, env = "SHOAL_ALLOW_NATIVE")]
        allow_native: bool,
        /// A peer whose native commands run here with --allow-native
        /// (repeatable). A native command runs as this daemon's user, with
        /// rlimits but no sandbox: trust only your own machines.
        /// File: trust = ["12D3KooW..."].
        #[arg(long, env = "SHOAL_TRUST", value_delimiter = ',', value_name = "PEER_ID")]
        trust: Vec<libp2p::PeerId>,
        /// How long a member of a named lease's set may be silent before
        /// the set moves to the name's home without it (carrying the
        /// holder and its token). Default 60s; at least 1s.
        /// File: member_gone_after = "60s".
        #[arg(long, env = "SHOAL_MEMBER_GONE_AFTER", value_name = "DURATION",
              value_parser = settings::parse_duration)]
        member_gone_after: Option<std::time::Duration>,
    },
    /// Swarm keys for private swarms.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show the running peer: its id, key, addresses and table size.
    Status {
        #[command(flatten)]
        talk: Talk,
    },
    /// List the peers in the routing table.
    Peers {
        #[command(flatten)]
        talk: Talk,
    },
    /// Find the peers closest to KEY (64 hex digits).
    Lookup {
        /// 64 hex digits.
        key: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Small value records.
    #[command(subcommand)]
    Record(Record),
    /// Announce this peer as a provider of each KEY (batched by home;
    /// re-announced every hour while the peer runs). With `-`, read keys
    /// from standard input, one per line.
    Provide {
        /// 64 hex digits each, or `-`.
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Share a file or a directory: import it into the blob store (or serve it in place)
    /// and announce this peer as its provider. Prints the content id (its
    /// BLAKE3 hash, as `b3sum` prints it) and a ticket.
    Share {
        /// The file, or the directory (every file in it, recursively).
        path: PathBuf,
        /// Serve the file from where it is instead of copying it (it must
        /// not change afterwards; a changed file stops being served).
        #[arg(long)]
        in_place: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Download a file by content id or ticket from every provider at once,
    /// verifying each 16 KiB as it arrives; resumes an interrupted download.
    Get {
        /// A content id (64 hex digits) or a ticket (shoal1...).
        target: String,
        /// Where to write the file. Default: ./ID
        #[arg(short, long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Pin a file: its home (the R peers closest to its id) keeps a copy
    /// each, and a new member fetches one when another leaves or crashes.
    Pin {
        /// The content id.
        id: String,
        /// Copies to keep (at most the swarm's record replication, 3).
        #[arg(long, default_value_t = 3)]
        replicas: u8,
        #[command(flatten)]
        talk: Talk,
    },
    /// Unpin a file this peer pinned: its home stops keeping copies for it.
    Unpin {
        /// The content id.
        id: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// List the blobs this peer stores.
    Blobs {
        #[command(flatten)]
        talk: Talk,
    },
    /// Find the peers that provide KEY.
    Providers {
        /// 64 hex digits.
        key: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Run a job on a peer's slot: a WebAssembly module (or, with --native,
    /// a command), placed on a lightly loaded peer that fits it (beside its
    /// inputs when they are shared), queued there if every slot is busy.
    /// Streams its stdout and stderr and exits with its exit code; what it
    /// writes under /out becomes one directory blob (`shoal get ID -o DIR`).
    ///
    /// Exit codes of jobs that did not exit on their own: 124 timeout, 130
    /// cancelled, 134 trap (or over a cap), 137 out of memory, 125 could not
    /// run.
    Run(jobs::RunArgs),
    /// The slot offers in the swarm: peer, free/total slots, memory, kinds,
    /// labels, running and queued jobs.
    Slots {
        #[command(flatten)]
        talk: Talk,
    },
    /// Jobs this peer submitted, and jobs running or queued here (newest
    /// first).
    Jobs {
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        talk: Talk,
    },
    /// One job: status, wait, logs, cancel, checkpoint, move.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Devices: share this machine's (a TCP service, a command, a
    /// character device), list the swarm's, use one (share, unshare, ls,
    /// use).
    #[command(subcommand)]
    Device(devices::DeviceCommand),
    /// Named leases: lock anything by name (acquire, release, run, ls).
    #[command(subcommand)]
    Lease(leases::LeaseCommand),
    /// Move every job off this peer (each from its newest checkpoint, or
    /// from the start) and take no new ones until the peer restarts: run
    /// it before taking a machine away.
    Drain {
        #[command(flatten)]
        talk: Talk,
    },
    /// Stop the running peer (it hands its records on first).
    Down {
        #[command(flatten)]
        talk: Talk,
    },
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("shoal")
}

async fn up(data_dir: PathBuf, given: Given) -> anyhow::Result<()> {
    // Whether a daemon runs for this data directory is the directory lock's
    // to say (`start` takes it): a control.json left behind, whatever
    // listens at its address now, is only overwritten.
    let config = settings::resolve(data_dir.clone(), given)?;
    match &config.swarm_key {
        Some(key) => tracing::info!("private swarm {}", key.fingerprint()),
        None => tracing::info!("open swarm (no swarm key)"),
    }
    let client = start(config)
        .await
        .with_context(|| format!("cannot start the peer (data dir {})", data_dir.display()))?;
    // Listen addresses arrive as the transports come up.
    let addrs = match tokio::time::timeout(Duration::from_secs(5), client.ready()).await {
        Ok(addrs) => addrs?,
        Err(_) => client.listening().await?,
    };
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let control_file = control::serve(client.clone(), &data_dir, shutdown.clone())
        .await
        .context("cannot start the control API")?;
    // The daemon goes on serving if whoever started it stops reading.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "peer id {}", client.peer_id());
    for addr in addrs {
        let _ = writeln!(out, "listening on {addr}");
    }
    let _ = writeln!(out, "ready").and_then(|()| out.flush());
    drop(out);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        () = shutdown.notified() => {}
    }
    let _ = writeln!(
        std::io::stderr(),
        "stopping: handing pinned copies and records to their new homes"
    );
    let _ = std::fs::remove_file(&control_file);
    let handed = client.leave().await?;
    if handed.taken + handed.failed > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "handed {} pinned copies on ({} offers failed)",
            handed.taken,
            handed.failed
        );
    }
    Ok(())
}

/// No request body.
const NO_BODY: Option<&()> = None;

/// Calls the daemon and reads its answer as an `R`; prints it as JSON with
/// `--json`, else `human(answer)`.
fn talk_to<R: serde::Serialize + serde::de::DeserializeOwned>(
    talk: &Talk,
    method: &str,
    path: &str,
    body: Option<&impl serde::Serialize>,
    human: impl FnOnce(&R) -> String,
) -> anyhow::Result<()> {
    let answer: R = ask(&talk.data_dir, method, path, body)?;
    if talk.json {
        say!("{}", serde_json::to_string(&answer)?);
    } else {
        say!("{}", human(&answer));
    }
    Ok(())
}

fn status(v: &Status) -> String {
    let swarm = match &v.swarm {
        Some(fingerprint) => format!("private ({fingerprint})"),
        None => "open".to_string(),
    };
    format!(
        "peer id   {}\nkey       {}\nswarm     {swarm}\npeers     {}\nrecords   {}\nlistening {}",
        v.peer_id,
        v.key,
        v.peers,
        v.records,
        v.listening.join("\n          ")
    )
}

fn peer_lines(peers: &[PeerView]) -> String {
    peers
        .iter()
        .map(|p| {
            let stale = if p.stale { "  (stale: not answering)" } else { "" };
            format!("\n{}  {}{stale}", p.key, p.peer_id)
        })
        .collect()
}

fn blob_lines(blobs: &[BlobView]) -> String {
    let lines: String = blobs
        .iter()
        .map(|b| {
            let mut place = b
                .in_place
                .as_ref()
                .map(|p| format!("  (in place: {p})"))
                .unwrap_or_default();
            if b.changed {
                place.push_str("  (its file changed: not served; `get` the id to fetch it again)");
            }
            if b.pinned {
                place.push_str("  pinned");
            }
            if b.partial {
                place.push_str("  (download not finished: `get` it again to resume)");
            }
            let size = indicatif::HumanBytes(b.size).to_string();
            format!("\n{}  {size:>11}{place}", b.id)
        })
        .collect();
    format!("{} blobs{lines}", blobs.len())
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            data_dir,
            listen,
            bootstrap,
            no_mdns,
            swarm_key,
            quota,
            slots,
            slot_memory,
            labels,
            allow_native,
            trust,
            member_gone_after,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let given = Given {
                listen,
                bootstrap,
                no_mdns,
                swarm_key,
                quota,
                slots,
                slot_memory,
                labels,
                allow_native,
                trust,
                member_gone_after,
            };
            runtime.block_on(up(data_dir, given))
        }
        Command::Key(KeyCommand::New { file, json }) => {
            let key = SwarmKey::create(&file)?;
            if json {
                let path = file.display().to_string();
                say!(
                    "{}",
                    serde_json::json!({ "file": path, "fingerprint": key.fingerprint() })
                );
                return Ok(());
            }
            say!(
                "wrote swarm key {} (fingerprint {})\ncopy it to every peer of the swarm and start each with: shoal up --swarm-key {}",
                file.display(),
                key.fingerprint(),
                file.display()
            );
            Ok(())
        }
        Command::Status { talk } => talk_to(&talk, "GET", "/v1/status", NO_BODY, status),
        Command::Peers { talk } => talk_to(&talk, "GET", "/v1/peers", NO_BODY, |peers: &Vec<PeerView>| {
            format!("{} peers{}", peers.len(), peer_lines(peers))
        }),
        Command::Lookup { key, talk } => {
            let body = KeyRequest { key };
            talk_to(&talk, "POST", "/v1/lookup", Some(&body), |v: &LookupView| {
                format!(
                    "{} closest peers ({} hops, {} requests, {:.1} ms){}",
                    v.peers.len(),
                    v.hops,
                    v.requests,
                    v.duration_ms,
                    peer_lines(&v.peers)
                )
            })
        }
        Command::Record(Record::Put { key, value, talk }) => {
            let body = PutRequest { key, value };
            talk_to(&talk, "POST", "/v1/record/put", Some(&body), |v: &PutView| {
                format!("stored at {} home members", v.stored)
            })
        }
        Command::Record(Record::Get { key, talk }) => {
            let body = KeyRequest { key };
            talk_to(
                &talk,
                "POST",
                "/v1/record/get",
                Some(&body),
                |v: &RecordView| match &v.value {
                    Some(value) => value.clone(),
                    None => "no record at this key".to_string(),
                },
            )
        }
        Command::Provide { keys, talk } => {
            let keys = if keys == ["-"] {
                std::io::read_to_string(std::io::stdin())
                    .context("cannot read keys from standard input")?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            } else {
                keys
            };
            let body = ProvideRequest { keys };
            talk_to(&talk, "POST", "/v1/provide", Some(&body), |v: &ProvideView| {
                format!(
                    "announced {} keys: {} stored at their whole home, {} unconfirmed ({} lookups, {} messages, {:.1} ms)",
                    v.keys, v.stored_everywhere, v.unconfirmed, v.lookups, v.stores, v.duration_ms
                )
            })
        }
        Command::Share { path, in_place, talk } => share(&path, in_place, &talk),
        Command::Get { target, out, talk } => get(&target, out, &talk),
        Command::Pin { id, replicas, talk } => {
            let body = PinRequest {
                id,
                replicas: Some(replicas),
            };
            talk_to(&talk, "POST", "/v1/pin", Some(&body), |v: &PutView| {
                format!("pinned: {} home members hold the pin", v.stored)
            })
        }
        Command::Unpin { id, talk } => {
            let body = PinRequest { id, replicas: None };
            talk_to(&talk, "POST", "/v1/unpin", Some(&body), |_: &PutView| {
                "unpinned".to_string()
            })
        }
        Command::Blobs { talk } => talk_to(&talk, "GET", "/v1/blobs", NO_BODY, |blobs: &Vec<BlobView>| {
            blob_lines(blobs)
        }),
        Command::Providers { key, talk } => {
            let body = KeyRequest { key };
            talk_to(&talk, "POST", "/v1/providers", Some(&body), |peers: &Vec<PeerView>| {
                format!("{} providers{}", peers.len(), peer_lines(peers))
            })
        }
        Command::Run(args) => exit_with(jobs::run(args)?),
        Command::Slots { talk } => jobs::slots(&talk),
        Command::Jobs { limit, talk } => jobs::list(&talk, limit),
        Command::Job(command) => exit_with(jobs::job(command)?),
        Command::Drain { talk } => exit_with(jobs::drain(&talk)?),
        Command::Lease(command) => exit_with(leases::lease(command)?),
        Command::Device(command) => exit_with(devices::device(command)?),
        Command::Down { talk } => talk_to(&talk, "POST", "/v1/down", NO_BODY, |_: &Stopping| {
            "stopping".to_string()
        }),
    }
}

/// A progress bar on standard error when it is a terminal (and not for
/// `--json`); hidden otherwise.
fn progress_bar(talk: &Talk) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::hidden();
    if !talk.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bytes:>10}/{total_bytes:<10} {bar:40} {bytes_per_sec:>12}  eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    }
    bar
}

/// Starts a share in the daemon and follows it to the end (each poll is a
/// short call: a daemon that stops answering is noticed within a minute,
/// however large the file).
fn share(path: &std::path::Path, in_place: bool, talk: &Talk) -> anyhow::Result<()> {
    let path = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let body = ShareRequest {
        path: path.display().to_string(),
        in_place,
    };
    let started: ShareJobView = ask(&talk.data_dir, "POST", "/v1/share", Some(&body))?;
    let n = started.share;
    let bar = progress_bar(talk);
    bar.set_message("read and hashed");
    let last = loop {
        let v: ShareJobView = ask(&talk.data_dir, "GET", &format!("/v1/shares/{n}"), NO_BODY)?;
        bar.set_length(v.total);
        bar.set_position(v.read);
        if v.done {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    bar.finish_and_clear();
    if let Some(error) = last.error {
        anyhow::bail!("{error}");
    }
    let result = last
        .result
        .context("the daemon ended the share with neither a result nor an error")?;
    if talk.json {
        say!("{}", serde_json::to_string(&result)?);
    } else {
        say!("{}  {}\nticket {}", result.id, path.display(), result.ticket);
    }
    Ok(())
}

/// Starts a download in the daemon and follows it to the end, with a
/// progress bar on a terminal.
fn get(target: &str, out: Option<PathBuf>, talk: &Talk) -> anyhow::Result<()> {
    let target = target.trim();
    let id_text = if target.starts_with(shoal_resources::ticket::TICKET_PREFIX) {
        shoal_resources::Ticket::parse(target)
            .map_err(|e| anyhow::anyhow!("malformed ticket: {e}"))?
            .blob
            .id
            .to_string()
    } else {
        target
            .parse::<shoal_overlay::Key>()
            .map_err(|e| anyhow::anyhow!("{target:?} is neither a content id nor a ticket: {e}"))?
            .to_string()
    };
    let out = out.unwrap_or_else(|| PathBuf::from(&id_text));
    let out = std::path::absolute(&out).with_context(|| format!("cannot resolve {}", out.display()))?;
    if out.exists() {
        anyhow::bail!("{} already exists; not overwriting it", out.display());
    }
    let body = GetRequest {
        target: target.to_string(),
        out: Some(out.display().to_string()),
    };
    let started: DownloadView = ask(&talk.data_dir, "POST", "/v1/get", Some(&body))?;
    let n = started.download;
    let bar = progress_bar(talk);
    let interrupted = on_ctrl_c();
    let last = loop {
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            bar.abandon();
            let v: DownloadView = ask(&talk.data_dir, "DELETE", &format!("/v1/downloads/{n}"), NO_BODY)?;
            anyhow::bail!(
                "cancelled after {}; `shoal get` of the same id resumes it",
                indicatif::HumanBytes(v.verified)
            );
        }
        let v: DownloadView = ask(&talk.data_dir, "GET", &format!("/v1/downloads/{n}"), NO_BODY)?;
        bar.set_length(v.size);
        bar.set_position(v.verified);
        bar.set_message(format!("{} providers", v.providers));
        if v.done {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    bar.finish_and_clear();
    if let Some(error) = &last.error {
        anyhow::bail!("{error}");
    }
    if talk.json {
        say!("{}", serde_json::to_string(&last)?);
    } else {
        say!("{}  {}", last.id, last.out.as_deref().unwrap_or("?"));
    }
    Ok(())
}

/// A flag set when Ctrl-C is pressed (which then no longer stops the
/// process by itself): `get` cancels its download in the daemon first.
fn on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_io().build() else {
            return; // Ctrl-C then stops the process as usual
        };
        if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
            set.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    flag
}

/// Ends the process with a job's exit code (0 returns).
fn exit_with(code: i32) -> anyhow::Result<()> {
    if code != 0 {
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tell!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
