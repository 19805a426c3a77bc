//! Benchmarks of the real peer, each printing a table; figures go into
//! BENCHMARKS.md. Run in `--release`:
//!
//! ```text
//! cargo run --release --example bench_node -- lookups --peers 50 --lookups 500
//! cargo run --release --example bench_node -- provide --peers 20 --keys 10000
//! cargo build --release -p shoal-node && cargo run --release --example bench_node -- ready
//! cargo build --release -p shoal-node && cargo run --release --example bench_node -- memory --records 10000
//! ```
//!
//! `lookups` and `provide` run shoal and rust-libp2p's own Kademlia
//! (`libp2p-kad` with identify, as its examples wire it) side by side in one
//! process: the same number of peers on 127.0.0.1, the same transport (TCP
//! with noise and yamux, or QUIC), one bootstrap peer, the same lookups.
//! `ready` and `memory` start the `shoal` binary as a user would.

#![allow(clippy::unwrap_used)]

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, kad, noise, tcp, yamux};
use shoal::node::{Client, NodeConfig, start};
use shoal::overlay::{Key, Rng};
use tokio::sync::{mpsc, oneshot};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Transport {
    Tcp,
    Quic,
}

#[derive(Subcommand)]
enum Bench {
    /// Lookup latency and messages per lookup, shoal vs libp2p-kad.
    Lookups {
        #[arg(long, default_value_t = 50)]
        peers: usize,
        #[arg(long, default_value_t = 500)]
        lookups: usize,
        /// Transports to run (each runs both systems).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp,quic")]
        transport: Vec<Transport>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Provider-record publish throughput from one peer, shoal vs libp2p-kad.
    Provide {
        #[arg(long, default_value_t = 20)]
        peers: usize,
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, value_enum, default_value = "tcp")]
        transport: Transport,
        /// libp2p-kad provide queries in flight at once.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Time from starting `shoal up` to its `ready` line.
    Ready {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, default_value = "target/release/shoal")]
        shoal: PathBuf,
    },
    /// A lone libp2p-kad peer in its own process, for `memory`: prints
    /// `idle`, waits for a line on stdin, stores RECORDS records of 100 B,
    /// prints `held`, waits again.
    #[command(hide = true)]
    KadPeer {
        #[arg(long)]
        records: usize,
    },
    /// Resident memory of a `shoal up` peer, idle and holding records.
    Memory {
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        #[arg(long, default_value = "target/release/shoal")]
        shoal: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.bench {
        Bench::Lookups {
            peers,
            lookups,
            transport,
            seed,
        } => runtime.block_on(bench_lookups(peers, lookups, &transport, seed)),
        Bench::Provide {
            peers,
            keys,
            transport,
            window,
        } => runtime.block_on(bench_provide(peers, keys, transport, window)),
        Bench::Ready { runs, shoal } => bench_ready(runs, &shoal),
        Bench::Memory { records, shoal } => bench_memory(records, &shoal),
        Bench::KadPeer { records } => runtime.block_on(kad_holder(records)),
    }
}

fn listen_addr(transport: Transport) -> Multiaddr {
    match transport {
        Transport::Tcp => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct LookupRow {
    system: &'static str,
    transport: Transport,
    ready_s: f64,
    table_mean: f64,
    latencies_ms: Vec<f64>,
    requests: Vec<f64>,
}

impl LookupRow {
    fn print(&mut self) {
        self.latencies_ms.sort_by(f64::total_cmp);
        let mean_req = self.requests.iter().sum::<f64>() / self.requests.len().max(1) as f64;
        let mean_ms = self.latencies_ms.iter().sum::<f64>() / self.latencies_ms.len().max(1) as f64;
        println!(
            "{:<11} {:<5} {:>8.1} {:>7.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
            self.system,
            format!("{:?}", self.transport).to_lowercase(),
            self.ready_s,
            self.table_mean,
            pct(&self.latencies_ms, 0.5),
            pct(&self.latencies_ms, 0.99),
            mean_ms,
            pct(&self.latencies_ms, 1.0),
            mean_req,
        );
    }
}

async fn bench_lookups(peers: usize, lookups: usize, transports: &[Transport], seed: u64) -> Result<()> {
    println!("# {peers} peers on 127.0.0.1, {lookups} lookups of random keys, one at a time, origins round-robin");
    println!("# (a warm-up round of one lookup per peer runs first and is not counted)");
    println!(
        "{:<11} {:<5} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "system", "trans", "join_s", "table", "p50_ms", "p99_ms", "mean_ms", "max_ms", "msgs"
    );
    for &transport in transports {
        let mut row = shoal_lookups(peers, lookups, transport, seed).await?;
        row.print();
        let mut row = kad_lookups(peers, lookups, transport, seed).await?;
        row.print();
    }
    println!("# msgs: requests sent per lookup (shoal QueryStats.requests, libp2p-kad QueryStats::num_requests)");
    Ok(())
}

/// Starts `n` shoal nodes joined through the first; returns them once every
/// table holds at least `min_table` peers (or after 60 s).
async fn shoal_swarm(n: usize, transport: Transport, name: &str, min_table: usize) -> Result<(Vec<Client>, f64)> {
    let started = Instant::now();
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..n {
        let mut config = NodeConfig::new(temp_dir(&format!("{name}-{i}")));
        config.mdns = false;
        config.listen = vec![listen_addr(transport)];
        if let Some(first) = clients.first() {
            config.bootstrap = first.ready().await?;
        }
        clients.push(start(config).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut smallest = usize::MAX;
        for c in &clients {
            smallest = smallest.min(c.peers().await?.len());
        }
        if smallest >= min_table || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((clients, started.elapsed().as_secs_f64()))
}

async fn shoal_lookups(peers: usize, lookups: usize, transport: Transport, seed: u64) -> Result<LookupRow> {
    let (clients, ready_s) = shoal_swarm(peers, transport, "lookups", peers.min(20) * 3 / 4).await?;
    let mut table = 0;
    for c in &clients {
        table += c.peers().await?.len();
    }
    let mut rng = Rng::seed_from_u64(seed);
    for c in &clients {
        c.find_node(rng.key()).await?;
    }
    let mut row = LookupRow {
        system: "shoal",
        transport,
        ready_s,
        table_mean: table as f64 / peers as f64,
        latencies_ms: Vec::new(),
        requests: Vec::new(),
    };
    for i in 0..lookups {
        let target = rng.key();
        let t = Instant::now();
        let lookup = clients[i % peers].find_node(target).await?;
        row.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
        row.requests.push(f64::from(lookup.stats.requests));
    }
    for c in &clients {
        let _ = c.leave().await;
    }
    Ok(row)
}

// ----- libp2p-kad ------------------------------------------------------------

#[derive(NetworkBehaviour)]
struct KadBehaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
}

enum KadCommand {
    Closest(Vec<u8>, oneshot::Sender<u32>),
    Provide(Vec<kad::RecordKey>, usize, oneshot::Sender<(u32, usize)>),
    TableSize(oneshot::Sender<usize>),
    Listening(oneshot::Sender<Vec<Multiaddr>>),
    /// Puts this many 100-byte records into the local store.
    Fill(usize, oneshot::Sender<()>),
}

#[derive(Clone)]
struct KadPeer {
    peer_id: PeerId,
    commands: mpsc::Sender<KadCommand>,
}

impl KadPeer {
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> KadCommand) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).await.ok().context("kad peer stopped")?;
        rx.await.context("kad peer dropped the reply")
    }
}

async fn kad_peer(transport: Transport, bootstrap: Option<(PeerId, Multiaddr)>, replication: usize) -> Result<KadPeer> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let store = kad::store::MemoryStore::with_config(
                peer,
                kad::store::MemoryStoreConfig {
                    max_records: 100_000,
                    max_provided_keys: 100_000,
                    ..Default::default()
                },
            );
            let mut config = kad::Config::new(kad::PROTOCOL_NAME);
            config.set_replication_factor(NonZeroUsize::new(replication).unwrap());
            let mut kad = kad::Behaviour::with_config(peer, store, config);
            kad.set_mode(Some(kad::Mode::Server));
            KadBehaviour {
                kad,
                identify: identify::Behaviour::new(identify::Config::new("/bench/1".into(), key.public())),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm.listen_on(listen_addr(transport))?;
    let peer_id = *swarm.local_peer_id();
    if let Some((peer, addr)) = bootstrap {
        swarm.behaviour_mut().kad.add_address(&peer, addr);
        swarm.behaviour_mut().kad.bootstrap()?;
    }
    let (commands, mut rx) = mpsc::channel::<KadCommand>(16);
    tokio::spawn(async move {
        let mut listening = Vec::new();
        let mut closest: std::collections::HashMap<kad::QueryId, oneshot::Sender<u32>> = Default::default();
        let mut provide: Option<ProvideRun> = None;
        loop {
            tokio::select! {
                event = swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => listening.push(address),
                    SwarmEvent::Behaviour(KadBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                        for addr in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                    SwarmEvent::Behaviour(KadBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, stats, step })) => {
                        match result {
                            kad::QueryResult::GetClosestPeers(_) if step.last => {
                                if let Some(reply) = closest.remove(&id) {
                                    let _ = reply.send(stats.num_requests());
                                }
                            }
                            kad::QueryResult::StartProviding(outcome) => {
                                if let Some(run) = provide.as_mut() {
                                    run.in_flight -= 1;
                                    run.requests += stats.num_requests();
                                    run.failed += usize::from(outcome.is_err());
                                }
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                },
                command = rx.recv() => match command {
                    None => return,
                    Some(KadCommand::Closest(target, reply)) => {
                        let id = swarm.behaviour_mut().kad.get_closest_peers(target);
                        closest.insert(id, reply);
                    }
                    Some(KadCommand::Provide(keys, window, reply)) => {
                        provide = Some(ProvideRun { keys, window, in_flight: 0, requests: 0, failed: 0, reply });
                    }
                    Some(KadCommand::TableSize(reply)) => {
                        let n = swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum();
                        let _ = reply.send(n);
                    }
                    Some(KadCommand::Listening(reply)) => { let _ = reply.send(listening.clone()); }
                    Some(KadCommand::Fill(n, reply)) => {
                        use kad::store::RecordStore;
                        for i in 0..n {
                            let key = kad::RecordKey::new(&Key::of_name("bench", &(i as u64).to_be_bytes()).to_bytes());
                            let record = kad::Record::new(key, format!("{i:0>100}").into_bytes());
                            let _ = swarm.behaviour_mut().kad.store_mut().put(record);
                        }
                        let _ = reply.send(());
                    }
                },
            }
            // Keep the provide window full; answer when every key is done.
            if let Some(run) = provide.as_mut() {
                while run.in_flight < run.window
                    && let Some(key) = run.keys.pop()
                {
                    if swarm.behaviour_mut().kad.start_providing(key).is_ok() {
                        run.in_flight += 1;
                    } else {
                        run.failed += 1;
                    }
                }
                if run.keys.is_empty() && run.in_flight == 0 {
                    let run = provide.take().unwrap();
                    let _ = run.reply.send((run.requests, run.failed));
                }
            }
        }
    });
    Ok(KadPeer { peer_id, commands })
}

/// A libp2p-kad provide run: keys left, queries in flight (at most
/// `window`), requests counted, failures.
struct ProvideRun {
    keys: Vec<kad::RecordKey>,
    window: usize,
    in_flight: usize,
    requests: u32,
    failed: usize,
    reply: oneshot::Sender<(u32, usize)>,
}

async fn kad_swarm(
    n: usize,
    transport: Transport,
    replication: usize,
    min_table: usize,
) -> Result<(Vec<KadPeer>, f64)> {
    let started = Instant::now();
    let mut peers: Vec<KadPeer> = Vec::new();
    for _ in 0..n {
        let bootstrap = match peers.first() {
            Some(first) => {
                let mut addrs = Vec::new();
                for _ in 0..100 {
                    addrs = first.ask(KadCommand::Listening).await?;
                    if !addrs.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Some((first.peer_id, addrs.first().context("kad peer never listened")?.clone()))
            }
            None => None,
        };
        peers.push(kad_peer(transport, bootstrap, replication).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut smallest = usize::MAX;
        for p in &peers {
            smallest = smallest.min(p.ask(KadCommand::TableSize).await?);
        }
        if smallest >= min_table || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((peers, started.elapsed().as_secs_f64()))
}

async fn kad_lookups(peers: usize, lookups: usize, transport: Transport, seed: u64) -> Result<LookupRow> {
    let (swarm, ready_s) = kad_swarm(peers, transport, 20, peers.min(20) * 3 / 4).await?;
    let mut table = 0;
    for p in &swarm {
        table += p.ask(KadCommand::TableSize).await?;
    }
    // The same targets as shoal's run (kad hashes them into its key space).
    let mut rng = Rng::seed_from_u64(seed);
    for p in &swarm {
        let target = rng.key().to_bytes().to_vec();
        p.ask(|r| KadCommand::Closest(target, r)).await?;
    }
    let mut row = LookupRow {
        system: "libp2p-kad",
        transport,
        ready_s,
        table_mean: table as f64 / peers as f64,
        latencies_ms: Vec::new(),
        requests: Vec::new(),
    };
    for i in 0..lookups {
        let target = rng.key().to_bytes().to_vec();
        let t = Instant::now();
        let requests = swarm[i % peers].ask(|r| KadCommand::Closest(target, r)).await?;
        row.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
        row.requests.push(f64::from(requests));
    }
    Ok(row)
}

async fn bench_provide(peers: usize, keys: usize, transport: Transport, window: usize) -> Result<()> {
    println!(
        "# {keys} provider records published from one peer into a {peers}-peer swarm on 127.0.0.1 ({transport:?})"
    );
    println!(
        "{:<24} {:>9} {:>10} {:>10} {:>9} {:>10}",
        "system", "seconds", "keys/s", "lookups", "messages", "failed"
    );
    let (clients, _) = shoal_swarm(peers, transport, "provide", peers.saturating_sub(1).min(20)).await?;
    let mut rng = Rng::seed_from_u64(7);
    let key_list: Vec<Key> = (0..keys).map(|_| rng.key()).collect();
    let t = Instant::now();
    let done = clients[1].provide(key_list.clone()).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{:<24} {:>9.3} {:>10.0} {:>10} {:>9} {:>10}",
        "shoal (r=3, batched)",
        secs,
        keys as f64 / secs,
        done.lookups,
        done.stores,
        done.unconfirmed
    );
    // Check from elsewhere that the records are there.
    let mut found = 0;
    for key in key_list.iter().step_by((keys / 50).max(1)) {
        if clients[peers - 1]
            .get_providers(*key)
            .await?
            .iter()
            .any(|p| p.addr.peer == clients[1].peer_id())
        {
            found += 1;
        }
    }
    println!(
        "#   shoal: {found} of {} sampled keys found from another peer",
        keys.div_ceil((keys / 50).max(1))
    );
    for c in &clients {
        let _ = c.leave().await;
    }
    for replication in [20, 3] {
        let (swarm, _) = kad_swarm(peers, transport, replication, peers.saturating_sub(1).min(20)).await?;
        let kad_keys: Vec<kad::RecordKey> = key_list.iter().map(|k| kad::RecordKey::new(&k.to_bytes())).collect();
        let t = Instant::now();
        let (requests, failed) = swarm[1].ask(|r| KadCommand::Provide(kad_keys, window, r)).await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:<24} {:>9.3} {:>10.0} {:>10} {:>9} {:>10}",
            format!("libp2p-kad (r={replication})"),
            secs,
            keys as f64 / secs,
            keys,
            requests,
            failed
        );
    }
    println!("# shoal messages: batched store messages (lookup requests not included; one lookup here);");
    println!("# libp2p-kad messages: QueryStats::num_requests over all provide queries ({window} in flight)");
    Ok(())
}

// ----- the binary ---------------------------------------------------------------

fn check_binary(shoal: &Path) -> Result<()> {
    if !shoal.exists() {
        bail!(
            "no shoal binary at {} (cargo build --release -p shoal-node)",
            shoal.display()
        );
    }
    Ok(())
}

/// Starts `shoal up` on loopback and waits for its `ready` line.
fn spawn_up(shoal: &Path, data_dir: &Path, bootstrap: Option<&str>) -> Result<(Child, Vec<String>, Duration)> {
    use std::io::BufRead;
    let mut command = Command::new(shoal);
    command
        .args([
            "up",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(addr) = bootstrap {
        command.args(["--bootstrap", addr]);
    }
    let t = Instant::now();
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut addrs = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if line == "ready" {
            return Ok((child, addrs, t.elapsed()));
        }
        if let Some(addr) = line.strip_prefix("listening on ") {
            addrs.push(addr.to_string());
        }
    }
    bail!("shoal up exited before it was ready")
}

fn bench_ready(runs: usize, shoal: &Path) -> Result<()> {
    check_binary(shoal)?;
    let dir = temp_dir("ready");
    let mut times = Vec::new();
    for run in 0..runs {
        let (mut child, _, elapsed) = spawn_up(shoal, &dir, None)?;
        times.push(elapsed.as_secs_f64() * 1e3);
        if run == 0 {
            println!("first start (creates the identity): {:.1} ms", times[0]);
        }
        let _ = Command::new(shoal).arg("down").arg("--data-dir").arg(&dir).output();
        child.wait()?;
    }
    let mut later = times[1..].to_vec();
    later.sort_by(f64::total_cmp);
    println!(
        "restarts ({}): p50 {:.1} ms, max {:.1} ms (from spawning the process to its `ready` line, TCP and QUIC on 127.0.0.1)",
        later.len(),
        pct(&later, 0.5),
        pct(&later, 1.0)
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?)
}

/// The `kad-peer` child: one libp2p-kad peer (TCP and QUIC on 127.0.0.1,
/// identify) whose store is filled locally on request.
async fn kad_holder(records: usize) -> Result<()> {
    use std::io::BufRead;
    let peer = kad_peer(Transport::Tcp, None, 20).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("idle");
    let mut stdin = std::io::stdin().lock().lines();
    stdin.next();
    peer.ask(|r| KadCommand::Fill(records, r)).await?;
    println!("held");
    stdin.next();
    Ok(())
}

/// RSS of a libp2p-kad peer process: idle, then holding `records` records.
fn kad_memory(records: usize) -> Result<(f64, f64)> {
    use std::io::{BufRead, Write};
    let mut child = Command::new(std::env::current_exe()?)
        .args(["kad-peer", "--records", &records.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut rss = Vec::new();
    for expected in ["idle", "held"] {
        let line = lines.next().context("kad peer exited")??;
        if line != expected {
            bail!("kad peer said {line:?}");
        }
        rss.push(rss_kib(child.id())? as f64 / 1024.0);
        writeln!(stdin)?;
    }
    child.wait()?;
    Ok((rss[0], rss[1]))
}

fn bench_memory(records: usize, shoal: &Path) -> Result<()> {
    check_binary(shoal)?;
    // Three peers: every key's home (r = 3) is all of them, so each holds
    // every record.
    let dirs: Vec<PathBuf> = (0..3).map(|i| temp_dir(&format!("memory-{i}"))).collect();
    let (first, addrs, _) = spawn_up(shoal, &dirs[0], None)?;
    let mut children = vec![first];
    for dir in &dirs[1..] {
        children.push(spawn_up(shoal, dir, Some(&addrs[0]))?.0);
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = children[0].id();
    println!(
        "idle peer (3-peer swarm, after 3 s): RSS {:.1} MiB",
        rss_kib(pid)? as f64 / 1024.0
    );
    // Value records of 100 bytes, put from peer 2.
    let t = Instant::now();
    for n in 0..records {
        let key = Key::of_name("bench", &(n as u64).to_be_bytes()).to_string();
        let value = format!("{n:0>100}");
        let body = serde_json::json!({ "key": key, "value": value });
        shoal::node::cli_client::call(&dirs[2], "POST", "/v1/record/put", Some(&body))?;
    }
    let put_secs = t.elapsed().as_secs_f64();
    let held = shoal::node::cli_client::call(&dirs[0], "GET", "/v1/status", None)?["records"].clone();
    println!(
        "after {records} value records of 100 B (put one by one through the CLI's API in {put_secs:.1} s): peer holds {held}, RSS {:.1} MiB",
        rss_kib(pid)? as f64 / 1024.0
    );
    let keys: Vec<String> = (0..records)
        .map(|n| Key::of_name("bench-p", &(n as u64).to_be_bytes()).to_string())
        .collect();
    shoal::node::cli_client::call(
        &dirs[2],
        "POST",
        "/v1/provide",
        Some(&serde_json::json!({ "keys": keys })),
    )?;
    let held = shoal::node::cli_client::call(&dirs[0], "GET", "/v1/status", None)?["records"].clone();
    println!(
        "after {records} provider records more: peer holds {held}, RSS {:.1} MiB",
        rss_kib(pid)? as f64 / 1024.0
    );
    let size = std::fs::metadata(dirs[0].join("records.cbor"))
        .map(|m| m.len())
        .unwrap_or(0);
    for (child, dir) in children.iter_mut().zip(&dirs) {
        let _ = Command::new(shoal).arg("down").arg("--data-dir").arg(dir).output();
        child.wait()?;
    }
    let size_after = std::fs::metadata(dirs[0].join("records.cbor"))
        .map(|m| m.len())
        .unwrap_or(size);
    println!(
        "records.cbor on disk after stop: {:.1} MiB",
        size_after as f64 / (1024.0 * 1024.0)
    );
    let (idle, held) = kad_memory(records)?;
    println!(
        "libp2p-kad peer in its own process (TCP+QUIC, identify, MemoryStore): idle RSS {idle:.1} MiB, holding {records} records of 100 B {held:.1} MiB"
    );
    Ok(())
}
