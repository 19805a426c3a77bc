//! `shoal`: run a shoal peer.
//!
//! ```text
//! cargo run --release -p shoal-node -- up --no-mdns --data-dir /tmp/peer1
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use shoal_node::{NodeConfig, start};

/// A peer of a shoal swarm: the machines of a LAN pooled into one overlay.
#[derive(Parser, Debug)]
#[command(name = "shoal", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the peer until Ctrl-C or SIGTERM, then hand its records on and stop.
    Up {
        /// Where the identity key lives (created on first start).
        #[arg(long, env = "SHOAL_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
        /// Address to listen on (repeatable). Default: all interfaces, TCP
        /// and QUIC, ports chosen by the system.
        #[arg(long, env = "SHOAL_LISTEN", value_delimiter = ',')]
        listen: Vec<Multiaddr>,
        /// Peer to join through, ending in /p2p/PEER_ID (repeatable).
        #[arg(long, env = "SHOAL_BOOTSTRAP", value_delimiter = ',')]
        bootstrap: Vec<Multiaddr>,
        /// Do not look for peers on the LAN by mDNS.
        #[arg(long, env = "SHOAL_NO_MDNS")]
        no_mdns: bool,
    },
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("shoal")
}

async fn up(data_dir: PathBuf, listen: Vec<Multiaddr>, bootstrap: Vec<Multiaddr>, no_mdns: bool) -> anyhow::Result<()> {
    let mut config = NodeConfig::new(data_dir.clone());
    if !listen.is_empty() {
        config.listen = listen;
    }
    config.bootstrap = bootstrap;
    config.mdns = !no_mdns;
    let client = start(config)
        .await
        .with_context(|| format!("cannot start the peer (data dir {})", data_dir.display()))?;
    println!("peer id {}", client.peer_id());
    // Listen addresses arrive as the transports come up.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for addr in client.listening().await? {
        println!("listening on {addr}");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("stopping: handing records to their new homes");
    client.leave().await?;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up {
                data_dir,
                listen,
                bootstrap,
                no_mdns,
            } => up(data_dir, listen, bootstrap, no_mdns).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
