//! A node's start and leave: the data directory's lock, the identity, the
//! swarm, the overlay core with the records saved by the last run, the
//! driver task, and the resource services (serving and receiving blobs,
//! pin duties, hand-offs); and the leave sequence (hand pinned copies on,
//! then records, then stop).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use shoal_overlay::{Config, Overlay, PeerInfo};
use shoal_resources::store::BlobStore;
use tokio::sync::mpsc;

use crate::addr::{NodeAddr, key_of_peer};
use crate::admission::SwarmKey;
use crate::client::{Client, DriverCommand, now};
use crate::driver::Driver;
use crate::error::NodeError;
use crate::identity::{self, NodeSigner};
use crate::known::KnownPeers;
use crate::saved::SavedRecords;
use crate::swarm::build_swarm;

/// Shares importing at once, at most (the rest wait for a turn).
pub const MAX_IMPORTS: usize = 4;

/// Commands waiting in the channel to the node, at most.
const COMMAND_QUEUE: usize = 64;

/// How a node starts.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the identity lives.
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; each must end in `/p2p/PEER_ID`.
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// Admit only peers holding this key (a private swarm).
    pub swarm_key: Option<SwarmKey>,
    /// Most bytes the blob store may take; least recently used blobs are
    /// dropped to make room. None: no limit.
    pub quota: Option<u64>,
    /// How often the node checks its duties for pinned blobs.
    pub pin_check: Duration,
    /// How long a graceful leave may spend handing pinned copies to the
    /// home it leaves behind before it goes anyway.
    pub handoff_deadline: Duration,
    /// Overlay settings (the verifier is replaced by ed25519's).
    pub overlay: Option<Config>,
    /// Caps on inbound connections. None: derived from the open-file limit
    /// (which `start` raises to its hard limit first).
    pub caps: Option<crate::limits::ConnectionCaps>,
    /// Compute slots offered and how jobs run (default: no slots).
    pub compute: crate::jobs::ComputeConfig,
    /// Devices to share from the start (`[[device]]` in `shoal.toml`):
    /// name, class, adapter.
    pub devices: Vec<(String, String, crate::devices::Adapter)>,
    /// How long a member of a named lease's set may be silent before the
    /// set moves without it ([`crate::leases::GONE_AFTER`] by default).
    pub member_gone_after: Duration,
}

impl NodeConfig {
    /// Defaults: all interfaces, TCP and QUIC on ports the system picks, mDNS on.
    pub fn new(data_dir: PathBuf) -> Self {
        NodeConfig {
            data_dir,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("a literal multiaddr parses"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("a literal multiaddr parses"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            swarm_key: None,
            quota: None,
            pin_check: Duration::from_secs(30),
            handoff_deadline: Duration::from_secs(10 * 60),
            overlay: None,
            caps: None,
            compute: crate::jobs::ComputeConfig::default(),
            devices: Vec::new(),
            member_gone_after: crate::leases::GONE_AFTER,
        }
    }
}

/// Starts a node and returns its handle; the node runs on the current tokio
/// runtime until [`Client::leave`] or until every handle is dropped.
pub async fn start(config: NodeConfig) -> Result<Client, NodeError> {
    let lock = lock_data_dir(&config.data_dir)?;
    let keypair = identity::load_or_create(&config.data_dir)?;
    let signer = NodeSigner::new(&keypair).ok_or_else(|| NodeError::Transport("identity is not ed25519".into()))?;
    let key = signer.key();
    let descriptors = crate::limits::raise_descriptor_limit();
    let caps = config
        .caps
        .unwrap_or_else(|| crate::limits::ConnectionCaps::for_descriptors(descriptors));
    let mut swarm = build_swarm(&keypair, config.mdns, config.swarm_key.clone(), caps)?;
    let blobs = BlobStore::open(&config.data_dir.join("blobs")).map_err(|e| NodeError::Store(e.into()))?;
    let streams = swarm.behaviour().stream.new_control();
    let incoming = streams
        .accept(crate::files::BLOB_PROTOCOL)
        .map_err(|_| NodeError::Transport("the blob protocol is registered twice".into()))?;
    let offers = streams
        .accept(crate::handoff::HANDOFF_PROTOCOL)
        .map_err(|_| NodeError::Transport("the hand-off protocol is registered twice".into()))?;
    let compute = Arc::new(crate::jobs::Compute::new(
        config.compute.clone(),
        &config.data_dir,
        keypair.public().to_peer_id(),
    )?);
    let device_streams = streams
        .accept(crate::devices::DEVICE_PROTOCOL)
        .map_err(|_| NodeError::Transport("the device protocol is registered twice".into()))?;
    let quorum_streams = streams
        .accept(crate::quorum::QUORUM_PROTOCOL)
        .map_err(|_| NodeError::Transport("the quorum protocol is registered twice".into()))?;
    let quorum = Arc::new(
        crate::quorum::Quorum::open(
            keypair.public().to_peer_id(),
            &config.data_dir,
            [
                (
                    crate::quorum::Kind::Job,
                    crate::jobs::submission::validate as crate::quorum::Validator,
                ),
                (
                    crate::quorum::Kind::Lease,
                    crate::leases::validate as crate::quorum::Validator,
                ),
            ]
            .into(),
        )
        .map_err(|e| NodeError::Task(format!("cannot read the quorum state: {e}")))?,
    );
    let claims = streams
        .accept(crate::jobs::JOBS_PROTOCOL)
        .map_err(|_| NodeError::Transport("the jobs protocol is registered twice".into()))?;
    let peer_id = *swarm.local_peer_id();
    let mut listeners = Vec::new();
    for addr in &config.listen {
        port_free(addr)?;
        let id = swarm.listen_on(addr.clone()).map_err(|e| NodeError::Listen {
            addr: addr.clone(),
            reason: crate::error::error_chain(&e),
        })?;
        listeners.push(id);
    }
    let known = KnownPeers::new(&config.data_dir);
    // Peers remembered from the last run join the bootstrap list.
    let remembered = known.load();
    // Seeds are dialed, not put into the table: a peer enters the routing
    // table only once a connection to it is up (and, in a private swarm,
    // has passed admission) and identify has shown it serves the overlay.
    let mut seeds = Vec::new();
    for addr in config.bootstrap.iter().chain(&remembered) {
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(NodeError::BootstrapWithoutPeer(addr.clone()));
        };
        if key_of_peer(&peer).is_none() || peer == *swarm.local_peer_id() {
            continue;
        }
        swarm.add_peer_address(peer, addr.clone());
        seeds.push(peer);
    }
    let mut overlay_config = config
        .overlay
        .clone()
        .unwrap_or_else(|| Config::new(identity::verifier()));
    overlay_config.verifier = identity::verifier();
    // A job's record at its home ends once and never goes back to an older
    // placement token.
    overlay_config.successor = Some(shoal_overlay::Successor(shoal_resources::compute::job::successor));
    let replication = overlay_config.replication;
    let local = PeerInfo::new(
        key,
        NodeAddr {
            peer: peer_id,
            addrs: Vec::new(),
        },
    );
    let rng_seed = u64::from_le_bytes(key.to_bytes()[..8].try_into().unwrap_or_default()) ^ now().as_micros();
    let mut core = Overlay::new(Arc::new(overlay_config), local, Box::new(signer), rng_seed, now())
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    let saved = SavedRecords::new(&config.data_dir);
    let (values, providers) = saved.load();
    let offered = values.len() + providers.len();
    if offered > 0 {
        let kept = core.restore_records(now(), values, providers);
        tracing::info!("restored {kept} of {offered} saved records (the rest expired or failed verification)");
    }
    let saved_changes = core.record_store().changes();
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
    let mut driver = Driver {
        swarm,
        core,
        commands: receiver,
        waiting: BTreeMap::new(),
        outbound: HashMap::new(),
        addresses: HashMap::new(),
        listening: Vec::new(),
        listeners_starting: listeners,
        ready_waiters: Vec::new(),
        bootstrapped: false,
        stopping: None,
        lock: Some(lock),
        known,
        known_dirty: false,
        saved,
        saved_changes,
        saved_at: std::time::Instant::now(),
        refusals: std::collections::VecDeque::new(),
    };
    for peer in seeds {
        driver.dial(peer);
    }
    tokio::spawn(driver.run());
    let swarm = config.swarm_key.as_ref().map(|k| Arc::from(k.fingerprint()));
    let client = Client {
        commands,
        peer_id,
        key,
        swarm,
        blobs,
        streams,
        quota: config.quota,
        replication,
        handoff_deadline: config.handoff_deadline,
        handed_over: Arc::default(),
        fetching: crate::turns::Turns::default(),
        imports: Arc::new(tokio::sync::Semaphore::new(MAX_IMPORTS)),
        served: Arc::default(),
        compute,
        quorum,
        identity: keypair.clone(),
        stream_permits: Arc::default(),
        sessions: Arc::default(),
        provided: Arc::new(crate::devices::Provided::new(&config.data_dir)),
        uses: Arc::default(),
    };
    tokio::spawn(crate::files::serve(
        client.downgrade(),
        client.blobs.clone(),
        client.served.clone(),
        incoming,
    ));
    tokio::spawn(crate::pins::run(client.downgrade(), config.pin_check));
    tokio::spawn(crate::handoff::accept(client.downgrade(), offers));
    tokio::spawn(crate::quorum::serve(client.downgrade(), quorum_streams));
    tokio::spawn(crate::leases::homes::run(client.downgrade(), config.member_gone_after));
    tokio::spawn(crate::devices::serve(client.downgrade(), device_streams));
    tokio::spawn(crate::devices::share_at_start(
        client.downgrade(),
        config.devices.clone(),
    ));
    tokio::spawn(crate::jobs::home::run(client.downgrade()));
    tokio::spawn(crate::jobs::executor::run(
        client.downgrade(),
        client.compute.executor.clone(),
        claims,
    ));
    Ok(client)
}

/// Refuses a TCP listen address whose port another socket listens on.
/// libp2p's TCP listeners set `SO_REUSEPORT` (so that dials can leave from
/// the listen port), which lets two processes listen on one port, and the
/// kernel would then split that port's connections between them. A plain
/// socket, without it, cannot bind where anyone listens.
fn port_free(addr: &Multiaddr) -> Result<(), NodeError> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let Some(Protocol::Tcp(port)) = parts.next() else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NodeError::Listen {
            addr: addr.clone(),
            reason: format!("TCP port {port} is already in use by another process (another peer?); pick another port"),
        }),
        // Anything else is for the real listener to find and report.
        _ => Ok(()),
    }
}

/// Takes the OS lock on `data_dir/lock` (created if need be), held for as
/// long as the node runs: one node per data directory. The lock goes with
/// the process, however it ends.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, NodeError> {
    let dir = data_dir.display().to_string();
    let failed = |source| NodeError::DataDir {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(failed)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("lock"))
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(NodeError::DataDirInUse(dir)),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
    }
}

impl Client {
    /// Hands the pinned copies this node keeps for homes to the members
    /// that replace it (see [`crate::handoff`]), then its records, then
    /// stops the node.
    pub async fn leave(&self) -> Result<crate::handoff::HandedOff, NodeError> {
        let handed = crate::handoff::hand_off(self, self.handoff_deadline).await;
        if handed != crate::handoff::HandedOff::default() {
            tracing::info!(
                "handed {} pinned copies on before leaving ({} offers failed)",
                handed.taken,
                handed.failed
            );
        }
        self.ask(|reply| DriverCommand::Leave { reply }).await?;
        Ok(handed)
    }
}
