//! The node: one task that owns the libp2p swarm and the overlay core, and a
//! [`Client`] handle that talks to it over a bounded channel — the shape of
//! rust-libp2p's `file-sharing` example.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade;
use libp2p::futures::future::Either;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, identity::Keypair, mdns, noise, ping, quic, tcp, yamux};
use shoal_overlay::{Config, Event, Instant, Key, Overlay, PeerInfo, QueryId, RequestId, Transmit, ValueRecord, wire};
use tokio::sync::{mpsc, oneshot};

use crate::addr::{MAX_ADDRS_PER_PEER, NodeAddr, key_of_peer};
use crate::admission::{self, SwarmKey};
use crate::codec::{FrameCodec, OVERLAY_PROTOCOL};
use crate::identity::{self, NodeSigner};
use crate::known::KnownPeers;
use crate::saved::SavedRecords;
use shoal_resources::pin::Pin;
use shoal_resources::store::{BlobStore, Import};
use shoal_resources::{BlobInfo, Ticket};

/// Bytes of the regular files at or below `path` (0 if unreadable: the
/// import then says why).
fn tree_size(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// A listing (directory) blob larger than this is treated as a file.
const MAX_LISTING_BYTES: u64 = 64 * 1024 * 1024;

/// How often a changed record store is written to disk, at most.
const RECORD_SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// What identify tells other peers this peer runs.
pub const AGENT_VERSION: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

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
        }
    }
}

/// Why a node or one of its operations failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The transport could not be built.
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
    /// Listening on an address failed (in use, not local, ...).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Another node (in this process or another) runs on the data
    /// directory: two would share one identity and one store.
    #[error(
        "a shoal daemon is already running for {0} (it holds the lock on {0}/lock); stop it first (`shoal down --data-dir {0}`) or pick another --data-dir"
    )]
    DataDirInUse(String),
    /// The data directory cannot be created or locked.
    #[error("cannot use the data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// A bootstrap address lacks its `/p2p/PEER_ID` suffix.
    #[error("bootstrap address {0} must end in /p2p/PEER_ID")]
    BootstrapWithoutPeer(Multiaddr),
    /// The overlay refused the command.
    #[error(transparent)]
    Command(#[from] shoal_overlay::CommandError),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] shoal_resources::store::StoreError),
    /// A download failed.
    #[error(transparent)]
    Fetch(#[from] crate::files::FetchError),
    /// A pin was refused.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A task of the daemon's own failed (a bug: its log says more).
    #[error("the daemon failed inside ({0}); see its log")]
    Task(String),
}

/// The node's view of one finished lookup.
#[derive(Clone, Debug)]
pub struct FoundNodes {
    /// The closest peers that answered, closest first.
    pub peers: Vec<PeerInfo<NodeAddr>>,
    /// What it cost.
    pub stats: shoal_overlay::QueryStats,
}

/// A pin record this node holds, and whether it is among the pinned blob's
/// `replicas` closest peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinView {
    /// The blob.
    pub id: Key,
    /// What the pin says.
    pub pin: Pin,
    /// Whether this node must keep a copy.
    pub member: bool,
    /// The peers that declined the blob (no room), as far as the records
    /// held here say: they are left out of its home.
    pub declined: Vec<Key>,
    /// Whether this node declines it.
    pub declining: bool,
}

/// Why a pin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// No replicas, or more than the overlay keeps records at.
    #[error("--replicas must be between 1 and {max} in this swarm (its records live at the {max} closest peers)")]
    ReplicasOutOfRange {
        /// The overlay's replication factor.
        max: usize,
    },
    /// The pin record reached no home member.
    #[error("the pin of {0} reached no home member")]
    NotStored(Key),
    /// Another peer pinned the blob: only it may change or remove the pin.
    #[error(
        "{id} is pinned by another peer ({publisher}); only that peer can change or remove its pin, until the pin lapses"
    )]
    PinnedByAnother {
        /// The blob.
        id: Key,
        /// The key of the peer whose pin record holds the blob's key.
        publisher: Key,
    },
}

/// How a batch of provider announcements went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provided {
    /// Keys announced.
    pub keys: usize,
    /// Keys every home member confirmed.
    pub stored_everywhere: usize,
    /// Keys no home member confirmed.
    pub unconfirmed: usize,
    /// Lookups it took.
    pub lookups: u32,
    /// Store messages sent.
    pub stores: u32,
    /// How long it took.
    pub duration: Duration,
}

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

enum Command {
    FindNode {
        target: Key,
        reply: Reply<FoundNodes>,
    },
    PutValue {
        key: Key,
        value: Vec<u8>,
        /// `None`: the overlay's `record_ttl`.
        lifetime: Option<Duration>,
        reply: Reply<usize>,
    },
    GetValue {
        key: Key,
        reply: Reply<Option<ValueRecord>>,
    },
    Provide {
        keys: Vec<Key>,
        reply: Reply<Provided>,
    },
    GetProviders {
        key: Key,
        reply: Reply<Vec<PeerInfo<NodeAddr>>>,
    },
    Peers {
        reply: Reply<Vec<(PeerInfo<NodeAddr>, bool)>>,
    },
    Listening {
        reply: Reply<Vec<Multiaddr>>,
    },
    Ready {
        reply: Reply<Vec<Multiaddr>>,
    },
    Addresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply<()>,
    },
    RecordsHeld {
        reply: Reply<usize>,
    },
    Refusals {
        reply: Reply<Vec<Refusal>>,
    },
    Pins {
        reply: Reply<Vec<PinView>>,
    },
    Decline {
        key: Key,
        reply: Reply<()>,
    },
    StopProviding {
        key: Key,
        reply: Reply<()>,
    },
    Declining {
        reply: Reply<Vec<Key>>,
    },
    Providing {
        reply: Reply<Vec<Key>>,
    },
    Decliners {
        key: Key,
        reply: Reply<Vec<Key>>,
    },
    Leave {
        reply: Reply<()>,
    },
}

enum Waiting {
    FindNode(Reply<FoundNodes>),
    PutValue(Reply<usize>),
    GetValue(Reply<Option<ValueRecord>>),
    Provide(Reply<Provided>),
    GetProviders(Reply<Vec<PeerInfo<NodeAddr>>>),
    Leave(Reply<()>),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First: a connection over a cap is refused before anyone else hears
    /// of it.
    limits: libp2p::connection_limits::Behaviour,
    per_ip: crate::limits::PerIp,
    overlay: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// A handle to a running node.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    key: Key,
    swarm: Option<Arc<str>>,
    blobs: BlobStore,
    streams: libp2p_stream::Control,
    quota: Option<u64>,
    replication: usize,
    handoff_deadline: Duration,
    fetching: crate::files::InFlight,
    /// Imports (shares) running at once: each holds a blocking thread and
    /// reads a whole file, so the rest wait their turn here.
    imports: Arc<tokio::sync::Semaphore>,
    /// Blob bytes (data and hashes) sent to other peers.
    served: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Client {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node's overlay key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// The swarm key's fingerprint in a private swarm.
    pub fn swarm_fingerprint(&self) -> Option<&str> {
        self.swarm.as_deref()
    }

    /// How many records the node holds for others.
    pub async fn records_held(&self) -> Result<usize, NodeError> {
        self.ask(|reply| Command::RecordsHeld { reply }).await
    }

    /// The last inbound connections this node refused (up to 64), oldest
    /// first.
    pub async fn refusals(&self) -> Result<Vec<Refusal>, NodeError> {
        self.ask(|reply| Command::Refusals { reply }).await
    }

    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// Looks up the peers closest to `target`.
    pub async fn find_node(&self, target: Key) -> Result<FoundNodes, NodeError> {
        self.ask(|reply| Command::FindNode { target, reply }).await
    }

    /// Stores a signed value record at `key`'s home; returns how many home
    /// members confirmed.
    pub async fn put_value(&self, key: Key, value: Vec<u8>) -> Result<usize, NodeError> {
        self.ask(|reply| Command::PutValue {
            key,
            value,
            lifetime: None,
            reply,
        })
        .await
    }

    /// Reads the value record at `key`.
    pub async fn get_value(&self, key: Key) -> Result<Option<ValueRecord>, NodeError> {
        self.ask(|reply| Command::GetValue { key, reply }).await
    }

    /// Announces this node as a provider of every key in `keys`, batched
    /// by home (one lookup per range of keys that share one, one message per
    /// home member per few hundred keys); re-announced every hour.
    pub async fn provide(&self, keys: Vec<Key>) -> Result<Provided, NodeError> {
        self.ask(|reply| Command::Provide { keys, reply }).await
    }

    /// The providers of `key`.
    pub async fn get_providers(&self, key: Key) -> Result<Vec<PeerInfo<NodeAddr>>, NodeError> {
        self.ask(|reply| Command::GetProviders { key, reply }).await
    }

    /// The peers in the routing table.
    pub async fn peers(&self) -> Result<Vec<PeerInfo<NodeAddr>>, NodeError> {
        let table = self.routing_table().await?;
        Ok(table.into_iter().map(|(peer, _)| peer).collect())
    }

    /// The peers in the routing table, each with whether it is stale
    /// (failed repeatedly; left out of lookups until it answers again).
    pub async fn routing_table(&self) -> Result<Vec<(PeerInfo<NodeAddr>, bool)>, NodeError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// The addresses the node listens on, each ending in `/p2p/PEER_ID`.
    pub async fn listening(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(|reply| Command::Listening { reply }).await
    }

    /// Waits until every listener is up, then returns the listen addresses.
    pub async fn ready(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(|reply| Command::Ready { reply }).await
    }

    /// The pin records this node holds, with its duty for each.
    pub async fn pins(&self) -> Result<Vec<PinView>, NodeError> {
        self.ask(|reply| Command::Pins { reply }).await
    }

    /// Stops announcing blobs this node no longer holds (the quota dropped
    /// them to make room): `shoal providers` stops listing this peer for them.
    pub(crate) async fn forget_provided(&self, ids: &[Key], why: &str) -> Result<(), NodeError> {
        for id in ids {
            tracing::info!("{id}: {why}; no longer providing it");
            self.stop_providing(*id).await?;
        }
        Ok(())
    }

    /// Steps aside from blob `key`'s home: no room for it here, the next
    /// peer out takes this one's place. [`stop_providing`](Self::stop_providing)
    /// ends it.
    pub async fn decline(&self, key: Key) -> Result<(), NodeError> {
        self.ask(|reply| Command::Decline { key, reply }).await
    }

    /// Stops announcing `key`, as a provider or as a decliner of its home.
    pub async fn stop_providing(&self, key: Key) -> Result<(), NodeError> {
        self.ask(|reply| Command::StopProviding { key, reply }).await
    }

    /// The blobs this node declines.
    pub async fn declining(&self) -> Result<Vec<Key>, NodeError> {
        self.ask(|reply| Command::Declining { reply }).await
    }

    /// The blobs this node announces itself as provider of.
    pub async fn providing(&self) -> Result<Vec<Key>, NodeError> {
        self.ask(|reply| Command::Providing { reply }).await
    }

    /// The peers known here to decline blob `key`.
    pub async fn decliners(&self, key: Key) -> Result<Vec<Key>, NodeError> {
        self.ask(|reply| Command::Decliners { key, reply }).await
    }

    /// Pins blob `id`: its home (the `replicas` closest peers) keeps a copy
    /// each and repairs the count when members leave or crash. Returns how
    /// many home members stored the pin record.
    pub async fn pin(&self, id: Key, replicas: u8) -> Result<usize, NodeError> {
        if usize::from(replicas) > self.replication || replicas == 0 {
            return Err(PinError::ReplicasOutOfRange { max: self.replication }.into());
        }
        let size = match self.blobs.size(&id)? {
            Some(size) => size,
            None => {
                // The pin record carries the size: a proved one.
                let providers: Vec<PeerId> = self.get_providers(id).await?.into_iter().map(|p| p.addr.peer).collect();
                if providers.is_empty() {
                    return Err(crate::files::FetchError::NoProvider(id).into());
                }
                crate::files::prove_size(&self.streams, id, None, &providers).await?
            }
        };
        self.put_pin(id, Pin { replicas, size }).await
    }

    /// Unpins blob `id` (only the peer that pinned it can).
    pub async fn unpin(&self, id: Key) -> Result<usize, NodeError> {
        self.put_pin(id, Pin { replicas: 0, size: 0 }).await
    }

    async fn put_pin(&self, id: Key, pin: Pin) -> Result<usize, NodeError> {
        let put = self.ask(|reply| Command::PutValue {
            key: id,
            value: pin.encode(),
            lifetime: Some(shoal_resources::pin::PIN_LIFETIME),
            reply,
        });
        match put.await {
            Ok(0) => {
                // The home refuses a record at a key another publisher
                // holds: say whose it is rather than that nobody answered.
                if let Ok(Some(record)) = self.get_value(id).await {
                    let publisher = Key::of_public_key(&record.publisher);
                    if publisher != self.key {
                        return Err(PinError::PinnedByAnother { id, publisher }.into());
                    }
                }
                Err(PinError::NotStored(id).into())
            }
            Ok(stored) => Ok(stored),
            Err(e) => Err(e),
        }
    }

    /// Tells the swarm where `peer` can be reached.
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NodeError> {
        self.ask(|reply| Command::Addresses { peer, addrs, reply }).await
    }

    /// Blob bytes (data and hashes) this node has sent to other peers.
    pub fn served_bytes(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The local blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Imports the file at `path` into the blob store (or serves it in
    /// place) and announces this peer as its provider. Returns the blob and
    /// a ticket naming this peer's addresses.
    pub async fn share(&self, path: std::path::PathBuf, how: Import) -> Result<(BlobInfo, Ticket), NodeError> {
        self.share_counted(path, how, Arc::default()).await
    }

    /// [`share`](Self::share), counting in `progress` the bytes to read
    /// (`size`) and read so far (`verified`).
    pub async fn share_counted(
        &self,
        path: std::path::PathBuf,
        how: Import,
        progress: Arc<crate::files::Progress>,
    ) -> Result<(BlobInfo, Ticket), NodeError> {
        let _turn = self
            .imports
            .acquire()
            .await
            .map_err(|e| NodeError::Task(e.to_string()))?;
        let store = self.blobs.clone();
        let quota = self.quota;
        let (imported, evicted) = tokio::task::spawn_blocking(move || {
            use shoal_resources::store::{Room, StoreError};
            let now = std::time::SystemTime::now();
            let quota = quota.filter(|_| how == Import::Copy);
            let mut room = quota.map(|quota| Room::new(quota, now));
            let imported = (|| {
                let total = tree_size(&path);
                progress.size.store(total, std::sync::atomic::Ordering::Relaxed);
                if let Some(quota) = quota {
                    // What is larger than the whole quota is refused before
                    // a byte is copied. The rest is decided import by
                    // import once the id is known (a file the store holds
                    // already needs no room, whatever else is pinned).
                    let need = shoal_resources::store::room_for(total);
                    if need > quota {
                        let used = store.kept_bytes(now)?;
                        return Err(StoreError::QuotaExceeded { need, used, quota });
                    }
                }
                if path.is_dir() {
                    store.import_dir(&path, how, room.as_mut(), &progress.verified)
                } else {
                    Ok((
                        store.import_within(&path, how, room.as_mut(), &progress.verified)?,
                        Vec::new(),
                    ))
                }
            })();
            // What was dropped is gone even if a later file of a directory
            // did not fit: it is no longer announced either way.
            let evicted = room.map(|r| r.dropped().to_vec()).unwrap_or_default();
            (imported, evicted)
        })
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?;
        self.forget_provided(&evicted, "dropped to make room").await?;
        let (info, files) = imported?;
        let mut keys: Vec<Key> = files.iter().map(|f| f.id).collect();
        keys.push(info.id);
        self.provide(keys).await?;
        let addrs = self.listening().await?.iter().map(ToString::to_string).collect();
        Ok((info, Ticket { blob: info, addrs }))
    }

    /// Downloads blob `id` (size and a first provider may come from a
    /// ticket) from every provider the overlay knows, several at once, into
    /// the blob store — or to `out`, which the store then serves in place —
    /// and provides it too.
    pub async fn download(
        &self,
        id: Key,
        ticket: Option<Ticket>,
        progress: Arc<crate::files::Progress>,
        out: Option<std::path::PathBuf>,
    ) -> Result<BlobInfo, NodeError> {
        // Until it is filed where it goes (see `InFlight`).
        let _turn = self.fetching.turn(id).await;
        let mut providers: Vec<PeerId> = Vec::new();
        if let Some(ticket) = &ticket {
            let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
            for text in &ticket.addrs {
                if let Ok(addr) = text.parse::<Multiaddr>()
                    && let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last()
                {
                    by_peer.entry(peer).or_default().push(addr);
                }
            }
            for (peer, addrs) in by_peer {
                self.add_addresses(peer, addrs).await?;
                providers.push(peer);
            }
        }
        if !self.blobs.contains(&id) {
            // The overlay may not be reachable; a ticket alone is enough.
            if let Ok(found) = self.get_providers(id).await {
                for p in found {
                    if !providers.contains(&p.addr.peer) {
                        self.add_addresses(p.addr.peer, p.addr.addrs.clone()).await?;
                        providers.push(p.addr.peer);
                    }
                }
            }
        }
        providers.retain(|p| *p != self.peer_id);
        // A ticket's size is a claim: the fetch proves the size first.
        let claimed = ticket.map(|t| t.blob.size);
        progress
            .size
            .store(claimed.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        let crate::files::Fetched {
            info,
            mut evicted,
            downloaded,
        } = crate::files::fetch(
            self.blobs.clone(),
            self.streams.clone(),
            id,
            claimed,
            providers.clone(),
            progress.clone(),
            None,
            self.quota,
        )
        .await?;
        let mut provided = vec![info.id];
        // A directory's id names its listing: fetch every file it lists.
        let listing = if info.size <= MAX_LISTING_BYTES {
            let store = self.blobs.clone();
            let bytes = tokio::task::spawn_blocking(move || store.read_small(&id, MAX_LISTING_BYTES))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??;
            // A file that only looks like a listing (or a listing that does
            // not decode) is what its id names: those bytes, as a file.
            shoal_resources::collection::decode(&bytes).ok()
        } else {
            None
        };
        match (listing, out) {
            (None, None) => {}
            (None, Some(out)) => {
                let store = self.blobs.clone();
                // A copy held before this download (kept for a home, shared
                // here) stays the store's own: `-o` gets a copy of it.
                tokio::task::spawn_blocking(move || {
                    if downloaded {
                        store.move_out(&id, &out)
                    } else {
                        store.export(&id, &out)
                    }
                })
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??;
            }
            (Some(entries), out) => {
                // Sizes from the sharer's listing: summed without overflow;
                // each file's fetch checks its own against the disk.
                let total = entries.iter().fold(0u64, |sum, e| sum.saturating_add(e.blob.size));
                progress.size.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
                if let Some(out) = &out {
                    std::fs::create_dir_all(out).map_err(|e| NodeError::Store(e.into()))?;
                }
                for entry in entries {
                    let mut from = providers.clone();
                    if let Ok(found) = self.get_providers(entry.blob.id).await {
                        for p in found {
                            if p.addr.peer != self.peer_id && !from.contains(&p.addr.peer) {
                                self.add_addresses(p.addr.peer, p.addr.addrs.clone()).await?;
                                from.push(p.addr.peer);
                            }
                        }
                    }
                    let target = out.as_ref().map(|o| o.join(&entry.path));
                    // (A listing cannot name itself: its id hashes its entries.)
                    let _entry_turn = self.fetching.turn(entry.blob.id).await;
                    if let Some(parent) = target.as_ref().and_then(|t| t.parent()) {
                        std::fs::create_dir_all(parent).map_err(|e| NodeError::Store(e.into()))?;
                    }
                    let got = crate::files::fetch(
                        self.blobs.clone(),
                        self.streams.clone(),
                        entry.blob.id,
                        Some(entry.blob.size),
                        from,
                        progress.clone(),
                        target,
                        self.quota,
                    )
                    .await?;
                    provided.push(got.info.id);
                    evicted.extend(got.evicted);
                }
            }
        }
        self.forget_provided(&evicted, "dropped to make room").await?;
        self.provide(provided).await?;
        Ok(info)
    }

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
        self.ask(|reply| Command::Leave { reply }).await?;
        Ok(handed)
    }

    /// Most bytes the store keeps (`--quota`), if limited.
    pub(crate) fn quota(&self) -> Option<u64> {
        self.quota
    }

    pub(crate) fn blob_store(&self) -> &BlobStore {
        &self.blobs
    }

    pub(crate) fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if text.is_empty() {
            text = part;
        } else if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// The clock the core runs on: microseconds since the Unix epoch.
pub(crate) fn now() -> Instant {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
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
    let mut streams = swarm.behaviour().stream.new_control();
    let incoming = streams
        .accept(crate::files::BLOB_PROTOCOL)
        .map_err(|_| NodeError::Transport("the blob protocol is registered twice".into()))?;
    let offers = streams
        .accept(crate::handoff::HANDOFF_PROTOCOL)
        .map_err(|_| NodeError::Transport("the hand-off protocol is registered twice".into()))?;
    let peer_id = *swarm.local_peer_id();
    let mut listeners = Vec::new();
    for addr in &config.listen {
        port_free(addr)?;
        let id = swarm.listen_on(addr.clone()).map_err(|e| NodeError::Listen {
            addr: addr.clone(),
            reason: error_chain(&e),
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
        fetching: crate::files::InFlight::default(),
        imports: Arc::new(tokio::sync::Semaphore::new(MAX_IMPORTS)),
        served: Arc::default(),
    };
    tokio::spawn(crate::files::serve(
        client.downgrade(),
        client.blobs.clone(),
        client.served.clone(),
        incoming,
    ));
    tokio::spawn(crate::pins::run(client.downgrade(), config.pin_check));
    tokio::spawn(crate::handoff::accept(client.downgrade(), offers));
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

/// A handle that does not keep the node alive.
pub(crate) struct WeakClient {
    commands: mpsc::WeakSender<Command>,
    template: Client,
}

impl Client {
    pub(crate) fn downgrade(&self) -> WeakClient {
        let (dead, _) = mpsc::channel(1);
        WeakClient {
            commands: self.commands.downgrade(),
            template: Client {
                commands: dead,
                ..self.clone()
            },
        }
    }
}

impl WeakClient {
    pub(crate) fn upgrade(&self) -> Option<Client> {
        Some(Client {
            commands: self.commands.upgrade()?,
            ..self.template.clone()
        })
    }
}

/// How long a new TCP connection may take to finish its security and
/// multiplexing handshakes; one that takes longer (or never starts them)
/// is dropped. (QUIC's handshake has a timeout of its own.)
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn build_swarm(
    keypair: &Keypair,
    mdns: bool,
    swarm_key: Option<SwarmKey>,
    caps: crate::limits::ConnectionCaps,
) -> Result<Swarm<Behaviour>, NodeError> {
    let transport_error = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
    let peer_id = keypair.public().to_peer_id();
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(keypair).map_err(|e| transport_error(&e))?)
        .multiplex(yamux::Config::default())
        .timeout(HANDSHAKE_TIMEOUT);
    let quic = quic::tokio::Transport::new(quic::Config::new(keypair));
    let both = tcp.or_transport(quic).map(|either, _| match either {
        Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
    });
    // In a private swarm every connection, TCP or QUIC, passes admission
    // before the swarm hears of it.
    let transport: Boxed<(PeerId, StreamMuxerBox)> = match swarm_key {
        Some(key) => both
            .and_then(move |output, endpoint| admission::admit(key.clone(), peer_id, output, endpoint))
            .boxed(),
        None => both.boxed(),
    };
    let overlay = request_response::Behaviour::new(
        [(OVERLAY_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let identify = identify::Behaviour::new(
        identify::Config::new("/shoal/1".into(), keypair.public()).with_agent_version(AGENT_VERSION.to_string()),
    );
    let mdns = if mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(|e| transport_error(&e))?)
    } else {
        None
    };
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(caps.pending_incoming))
        .with_max_established_incoming(Some(caps.established_incoming));
    let behaviour = Behaviour {
        limits: libp2p::connection_limits::Behaviour::new(limits),
        per_ip: crate::limits::PerIp::new(caps.per_ip),
        overlay,
        identify,
        ping: ping::Behaviour::default(),
        mdns: mdns.into(),
        stream: libp2p_stream::Behaviour::new(),
    };
    let config = libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(60));
    Ok(Swarm::new(transport, behaviour, peer_id, config))
}

struct Driver {
    swarm: Swarm<Behaviour>,
    core: Overlay<NodeAddr>,
    commands: mpsc::Receiver<Command>,
    waiting: BTreeMap<QueryId, Waiting>,
    outbound: HashMap<OutboundRequestId, RequestId>,
    /// Addresses learned through identify and mDNS, per peer.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    listening: Vec<Multiaddr>,
    /// Listeners that have not reported an address yet.
    listeners_starting: Vec<libp2p::core::transport::ListenerId>,
    /// `ready` calls waiting for them.
    ready_waiters: Vec<Reply<Vec<Multiaddr>>>,
    bootstrapped: bool,
    stopping: Option<Reply<()>>,
    /// The data directory's lock, let go when the node stops.
    lock: Option<std::fs::File>,
    /// Routing-table peers, saved for the next start.
    known: KnownPeers,
    known_dirty: bool,
    /// The record store on disk, the store's change count when last saved,
    /// and when.
    saved: SavedRecords,
    saved_changes: u64,
    saved_at: std::time::Instant,
    /// The last inbound connections refused, newest last.
    refusals: std::collections::VecDeque<Refusal>,
}

/// An inbound connection the node refused (a private swarm's outsider, a
/// connection over a cap, a handshake that failed or timed out).
#[derive(Clone, Debug)]
pub struct Refusal {
    /// Where it came from.
    pub from: Multiaddr,
    /// Why, as logged.
    pub reason: String,
}

/// Refusals a node remembers; older ones are only in its log.
const REFUSALS_KEPT: usize = 64;

impl Driver {
    async fn run(mut self) {
        loop {
            let wake = self.core.poll_timeout().map(|t| {
                let wait = t.saturating_since(now());
                tokio::time::Instant::now() + wait
            });
            let sleep = tokio::time::sleep_until(
                wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return, // every client is gone
                },
                () = sleep => {
                    self.core.handle_timeout(now());
                    // Maintenance runs on these wake-ups: a good moment to
                    // save what changed.
                    self.save_known();
                    self.save_records(false);
                }
            }
            self.drain();
            if self.stopping.is_some() && self.waiting.is_empty() {
                self.save_known();
                self.save_records(true);
                // Free for the next node before the caller hears it stopped.
                self.lock.take();
                if let Some(reply) = self.stopping.take() {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
        }
    }

    /// The pin records held, with membership: whether this node is among
    /// each blob's `replicas` closest (by its routing table).
    fn pins(&self, t: Instant) -> Vec<PinView> {
        let mut out = Vec::new();
        for record in self.core.record_store().value_records() {
            if record.expires <= t {
                continue;
            }
            let Some(pin) = Pin::decode(&record.value) else {
                continue;
            };
            out.push(PinView {
                id: record.key,
                pin,
                member: self.core.is_member_of(&record.key, usize::from(pin.replicas)),
                declined: self.core.decliners(&record.key),
                declining: self.core.declining().any(|k| *k == record.key),
            });
        }
        out
    }

    /// A listener reported its first address (or gave up): once all have,
    /// `ready` calls are answered.
    fn listener_started(&mut self, id: libp2p::core::transport::ListenerId) {
        self.listeners_starting.retain(|l| *l != id);
        if self.listeners_starting.is_empty() {
            for reply in self.ready_waiters.drain(..) {
                let _ = reply.send(Ok(self.listening.clone()));
            }
        }
    }

    /// Dials a peer unless already connected; what it is learns identify.
    fn dial(&mut self, peer: PeerId) {
        if !self.swarm.is_connected(&peer)
            && let Err(e) = self.swarm.dial(peer)
        {
            tracing::debug!("cannot dial {peer}: {e}");
        }
    }

    /// A connected (and admitted) peer that serves the overlay: the first
    /// one starts the join, later ones go into the routing table.
    fn met(&mut self, info: PeerInfo<NodeAddr>) {
        if self.bootstrapped {
            self.core.add_peer(now(), info);
            return;
        }
        self.bootstrapped = true;
        if let Err(e) = self.core.bootstrap(now(), vec![info]) {
            tracing::warn!("bootstrap did not start: {e}");
        }
    }

    fn on_command(&mut self, command: Command) {
        let t = now();
        match command {
            Command::FindNode { target, reply } => match self.core.find_node(t, target) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::FindNode(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Command::PutValue {
                key,
                value,
                lifetime,
                reply,
            } => match self
                .core
                .put_value_for(t, key, value, lifetime.unwrap_or(self.core.config().record_ttl))
            {
                Ok(id) => drop(self.waiting.insert(id, Waiting::PutValue(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Command::GetValue { key, reply } => match self.core.get_value(t, key) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::GetValue(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Command::Provide { keys, reply } => match self.core.provide_many(t, keys) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::Provide(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Command::GetProviders { key, reply } => match self.core.get_providers(t, key) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::GetProviders(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Command::Peers { reply } => {
                let table = self.core.routing_table();
                let peers = table.peers().map(|p| {
                    let stale = table.is_stale(&p.key);
                    (p, stale)
                });
                drop(reply.send(Ok(peers.collect())));
            }
            Command::Listening { reply } => drop(reply.send(Ok(self.listening.clone()))),
            Command::Addresses { peer, addrs, reply } => {
                for addr in addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                    self.swarm.add_peer_address(peer, addr);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Ready { reply } => {
                if self.listeners_starting.is_empty() {
                    let _ = reply.send(Ok(self.listening.clone()));
                } else {
                    self.ready_waiters.push(reply);
                }
            }
            Command::RecordsHeld { reply } => drop(reply.send(Ok(self.core.record_store().len()))),
            Command::Refusals { reply } => drop(reply.send(Ok(self.refusals.iter().cloned().collect()))),
            Command::Pins { reply } => drop(reply.send(Ok(self.pins(t)))),
            Command::Declining { reply } => drop(reply.send(Ok(self.core.declining().copied().collect()))),
            Command::Providing { reply } => drop(reply.send(Ok(self.core.providing().copied().collect()))),
            Command::Decliners { key, reply } => drop(reply.send(Ok(self.core.decliners(&key)))),
            Command::Decline { key, reply } => {
                let result = self.core.decline(t, key).map(drop).map_err(NodeError::from);
                drop(reply.send(result));
            }
            Command::StopProviding { key, reply } => {
                self.core.stop_providing(&key);
                drop(reply.send(Ok(())));
            }
            Command::Leave { reply } => {
                let id = self.core.leave(t);
                self.waiting.insert(id, Waiting::Leave(reply));
            }
        }
    }

    fn info_of(&self, peer: PeerId) -> Option<PeerInfo<NodeAddr>> {
        let key = key_of_peer(&peer)?;
        let addrs = self.addresses.get(&peer).cloned().unwrap_or_default();
        Some(PeerInfo::new(key, NodeAddr { peer, addrs }))
    }

    fn learn_addresses(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let known = self.addresses.entry(peer).or_default();
        for addr in addrs {
            if known.len() >= MAX_ADDRS_PER_PEER {
                break;
            }
            if !known.contains(&addr) {
                known.push(addr);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, listener_id } => {
                let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                tracing::info!("listening on {full}");
                self.listening.push(full);
                self.listener_started(listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id, reason, ..
            } => {
                if let Err(e) = reason {
                    tracing::warn!("a listener stopped: {}", error_chain(&e));
                }
                self.listener_started(listener_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(event)) => self.on_overlay_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Stream(())) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let serves = info.protocols.iter().any(|p| p.as_ref() == wire::PROTOCOL);
                self.learn_addresses(peer_id, info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER));
                if serves && let Some(info) = self.info_of(peer_id) {
                    for addr in &info.addr.addrs {
                        self.swarm.add_peer_address(peer_id, addr.clone());
                    }
                    // Adds it, or refreshes the addresses the table holds.
                    self.met(info);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.add_peer_address(peer, addr.clone());
                    self.learn_addresses(peer, [addr]);
                    if key_of_peer(&peer).is_some() {
                        self.dial(peer);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr, error, ..
            } => {
                let reason = error_chain(&error);
                tracing::warn!("refused a connection from {send_back_addr}: {reason}");
                if self.refusals.len() == REFUSALS_KEPT {
                    self.refusals.pop_front();
                }
                self.refusals.push_back(Refusal {
                    from: send_back_addr,
                    reason,
                });
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::info!("cannot connect to {peer}: {}", error_chain(&error));
            }
            _ => {}
        }
    }

    fn on_overlay_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        let t = now();
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let Some(from) = self.info_of(peer) else {
                        tracing::debug!("request from {peer}, whose id carries no ed25519 key: ignored");
                        return;
                    };
                    let response = match wire::decode_request::<NodeAddr>(&request) {
                        Ok((mode, request)) => {
                            let mut response = self.core.handle_request(t, from, mode, request);
                            self.fill_addresses(&mut response);
                            response
                        }
                        Err(e) => {
                            tracing::debug!("malformed request from {peer}: {e}");
                            return; // dropping the channel tells the peer it failed
                        }
                    };
                    match wire::encode_response(&response) {
                        Ok(bytes) => drop(self.swarm.behaviour_mut().overlay.send_response(channel, bytes)),
                        Err(e) => tracing::warn!("cannot encode a response: {e}"),
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    let Some(id) = self.outbound.remove(&request_id) else {
                        return;
                    };
                    match wire::decode_response::<NodeAddr>(&response) {
                        Ok(response) => self.core.handle_response(t, id, response),
                        Err(e) => {
                            tracing::debug!("malformed response from {peer}: {e}");
                            self.core.handle_failure(t, id);
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!("request to {peer} failed: {error}");
                if let Some(id) = self.outbound.remove(&request_id) {
                    self.core.handle_failure(t, id);
                }
            }
            _ => {}
        }
    }

    /// Peers the core learned from inbound requests may lack addresses (the
    /// sender's identify had not arrived yet); fill them in from what the
    /// node has learned since, so the asker can dial them.
    fn fill_addresses(&self, response: &mut shoal_overlay::Response<NodeAddr>) {
        use shoal_overlay::Response;
        let closer = match response {
            Response::Nodes { closer } | Response::Value { closer, .. } | Response::Providers { closer, .. } => closer,
            Response::Pong | Response::Stored | Response::Rejected(_) | Response::StoredBatch { .. } => return,
        };
        for peer in closer.iter_mut() {
            if peer.addr.addrs.is_empty()
                && let Some(known) = self.addresses.get(&peer.addr.peer)
            {
                peer.addr.addrs = known.iter().take(MAX_ADDRS_PER_PEER).cloned().collect();
            }
        }
    }

    /// Saves the record store if it changed, at most every
    /// [`RECORD_SAVE_INTERVAL`] unless `now` says so.
    fn save_records(&mut self, now: bool) {
        let changes = self.core.record_store().changes();
        if changes == self.saved_changes || (!now && self.saved_at.elapsed() < RECORD_SAVE_INTERVAL) {
            return;
        }
        let store = self.core.record_store();
        match self.saved.save(store.value_records(), store.provider_records()) {
            Ok(()) => {
                self.saved_changes = changes;
                self.saved_at = std::time::Instant::now();
            }
            Err(e) => tracing::warn!("cannot save records: {e}"),
        }
    }

    fn save_known(&mut self) {
        if self.known_dirty {
            self.known_dirty = false;
            if let Err(e) = self.known.save() {
                tracing::warn!("cannot save known peers: {e}");
            }
        }
    }

    /// Drains the core's outputs: transmits, then events.
    fn drain(&mut self) {
        while let Some(transmit) = self.core.poll_transmit() {
            self.send(transmit);
        }
        while let Some(event) = self.core.poll_event() {
            self.on_core_event(event);
        }
    }

    fn send(&mut self, transmit: Transmit<NodeAddr>) {
        let Transmit { id, to, mode, request } = transmit;
        let bytes = match wire::encode_request(mode, &request) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("cannot encode a request: {e}");
                self.core.handle_failure(now(), id);
                return;
            }
        };
        let peer = to.addr.peer;
        // Each address added is announced to every behaviour: only worth it
        // when the request has to dial.
        if !self.swarm.is_connected(&peer) {
            for addr in to.addr.addrs.iter().take(MAX_ADDRS_PER_PEER) {
                self.swarm.add_peer_address(peer, addr.clone());
            }
        }
        let outbound = self.swarm.behaviour_mut().overlay.send_request(&peer, bytes);
        self.outbound.insert(outbound, id);
    }

    fn on_core_event(&mut self, event: Event<NodeAddr>) {
        match event {
            Event::FoundNodes {
                query, peers, stats, ..
            } => {
                if let Some(Waiting::FindNode(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(FoundNodes { peers, stats }));
                }
            }
            Event::Put { query, stored, .. } => {
                if let Some(Waiting::PutValue(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(stored));
                }
            }
            Event::GotValue { query, record, .. } => {
                if let Some(Waiting::GetValue(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(record));
                }
            }
            Event::Left {
                query,
                handed_off,
                failed,
            } => {
                tracing::info!("left the overlay: {handed_off} records handed on, {failed} hand-offs failed");
                if let Some(Waiting::Leave(reply)) = self.waiting.remove(&query) {
                    self.stopping = Some(reply);
                }
            }
            Event::Aborted { query } => {
                if let Some(waiting) = self.waiting.remove(&query) {
                    match waiting {
                        Waiting::FindNode(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::PutValue(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::GetValue(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::Provide(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::GetProviders(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::Leave(r) => drop(r.send(Err(NodeError::Stopped))),
                    }
                }
            }
            Event::Bootstrapped { peers, .. } => {
                tracing::info!("joined the overlay: {peers} peers in the routing table")
            }
            Event::PeerAdded { peer } => {
                self.known.add(peer.addr.peer, &peer.addr.addrs);
                self.known_dirty = true;
            }
            Event::PeerRemoved { peer } => {
                self.known.remove(&peer.addr.peer);
                self.known_dirty = true;
            }
            Event::GotProviders { query, providers, .. } => {
                if let Some(Waiting::GetProviders(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(providers.into_iter().map(|p| p.provider).collect()));
                }
            }
            Event::ProvidedMany {
                query,
                keys,
                stored_everywhere,
                unconfirmed,
                lookups,
                stores,
                duration,
            } => {
                if let Some(Waiting::Provide(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(Provided {
                        keys,
                        stored_everywhere,
                        unconfirmed,
                        lookups,
                        stores,
                        duration,
                    }));
                }
            }
        }
    }
}
