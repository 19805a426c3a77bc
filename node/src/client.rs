//! The handle to a running node: [`Client`] sends `DriverCommand`s to the
//! driver task over a bounded channel and awaits each reply — the shape of
//! rust-libp2p's `file-sharing` example. It carries the overlay's
//! operations (lookups, records, providers, declines); each resource adds
//! its own handle in its own module ([`Client::files`], [`Client::pins`]),
//! built on these and on `Client::on_core`, not lines here.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use shoal_overlay::{Instant, Key, Overlay, PeerInfo, ValueRecord};
use shoal_resources::store::BlobStore;
use tokio::sync::{mpsc, oneshot};

use crate::addr::NodeAddr;
use crate::error::NodeError;

/// The node's view of one finished lookup.
#[derive(Clone, Debug)]
pub struct FoundNodes {
    /// The closest peers that answered, closest first.
    pub peers: Vec<PeerInfo<NodeAddr>>,
    /// What it cost.
    pub stats: shoal_overlay::QueryStats,
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

/// An inbound connection the node refused (a private swarm's outsider, a
/// connection over a cap, a handshake that failed or timed out).
#[derive(Clone, Debug)]
pub struct Refusal {
    /// Where it came from.
    pub from: Multiaddr,
    /// Why, as logged.
    pub reason: String,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// A closure run on the overlay core by the driver (see
/// [`Client::on_core`]).
pub(crate) type CoreFn = Box<dyn FnOnce(&mut Overlay<NodeAddr>, Instant) + Send>;

/// What a [`Client`] asks the driver task.
pub(crate) enum DriverCommand {
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
    Refusals {
        reply: Reply<Vec<Refusal>>,
    },
    Leave {
        reply: Reply<()>,
    },
    /// Run a closure on the core.
    OnCore(CoreFn),
}

/// A handle to a running node.
#[derive(Clone)]
pub struct Client {
    pub(crate) commands: mpsc::Sender<DriverCommand>,
    pub(crate) peer_id: PeerId,
    pub(crate) key: Key,
    pub(crate) swarm: Option<Arc<str>>,
    pub(crate) blobs: BlobStore,
    pub(crate) streams: crate::streams::Control,
    pub(crate) quota: Option<u64>,
    pub(crate) replication: usize,
    pub(crate) handoff_deadline: Duration,
    pub(crate) fetching: crate::turns::Turns,
    /// Imports (shares) running at once: each holds a blocking thread and
    /// reads a whole file, so the rest wait their turn here.
    pub(crate) imports: Arc<tokio::sync::Semaphore>,
    /// Blob bytes (data and hashes) sent to other peers.
    pub(crate) served: Arc<std::sync::atomic::AtomicU64>,
    /// Blobs handed here by leaving peers (the blob, the peer's key), for
    /// the pin duties to hear at their next round; at most
    /// [`MAX_HANDED_OVER`], oldest dropped first.
    pub(crate) handed_over: Arc<std::sync::Mutex<std::collections::VecDeque<(Key, Key)>>>,
    /// Compute slots and jobs (see [`crate::jobs`]).
    pub(crate) compute: Arc<crate::jobs::Compute>,
    /// The keys this peer is a quorum member for (see [`crate::quorum`]).
    pub(crate) quorum: Arc<crate::quorum::Quorum>,
    /// The devices this peer shares (see [`crate::devices`]).
    pub(crate) provided: Arc<crate::devices::Provided>,
    /// The devices this peer uses.
    pub(crate) uses: Arc<crate::devices::using::Uses>,
    /// The named leases this peer acquires and holds (see [`crate::leases`]).
    pub(crate) sessions: Arc<crate::leases::Sessions>,
    /// This peer's identity, which signs what it submits.
    pub(crate) identity: libp2p::identity::Keypair,
    /// Streams this peer asks each peer on at once (jobs, quorum): past a
    /// peer's limit the asks wait their turn rather than open more (yamux
    /// closes a connection with more than 512 streams open).
    pub(crate) stream_permits: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, Arc<tokio::sync::Semaphore>>>>,
}

/// Request streams open to one peer at once, at most (see
/// `Client::stream_permit`).
pub(crate) const STREAMS_PER_PEER: usize = 128;

/// Hand-offs waiting for the pin duties' next round, at most.
pub(crate) const MAX_HANDED_OVER: usize = 1024;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for DriverCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriverCommand")
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
        self.on_core(|core, _| core.record_store().len()).await
    }

    /// The last inbound connections this node refused (up to 64), oldest
    /// first.
    pub async fn refusals(&self) -> Result<Vec<Refusal>, NodeError> {
        self.ask(|reply| DriverCommand::Refusals { reply }).await
    }

    pub(crate) async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> DriverCommand) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// A turn to open a request stream to `peer` (held until the answer is
    /// read).
    pub(crate) async fn stream_permit(&self, peer: PeerId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permits = self
            .stream_permits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(STREAMS_PER_PEER)))
            .clone();
        permits.acquire_owned().await.ok()
    }

    /// Looks up the peers closest to `target`.
    pub async fn find_node(&self, target: Key) -> Result<FoundNodes, NodeError> {
        self.ask(|reply| DriverCommand::FindNode { target, reply }).await
    }

    /// Stores a signed value record at `key`'s home; returns how many home
    /// members confirmed.
    pub async fn put_value(&self, key: Key, value: Vec<u8>) -> Result<usize, NodeError> {
        self.ask(|reply| DriverCommand::PutValue {
            key,
            value,
            lifetime: None,
            reply,
        })
        .await
    }

    /// Reads the value record at `key`.
    pub async fn get_value(&self, key: Key) -> Result<Option<ValueRecord>, NodeError> {
        self.ask(|reply| DriverCommand::GetValue { key, reply }).await
    }

    /// Announces this node as a provider of every key in `keys`, batched
    /// by home (one lookup per range of keys that share one, one message per
    /// home member per few hundred keys); re-announced every hour.
    pub async fn provide(&self, keys: Vec<Key>) -> Result<Provided, NodeError> {
        self.ask(|reply| DriverCommand::Provide { keys, reply }).await
    }

    /// The providers of `key`.
    pub async fn get_providers(&self, key: Key) -> Result<Vec<PeerInfo<NodeAddr>>, NodeError> {
        self.ask(|reply| DriverCommand::GetProviders { key, reply }).await
    }

    /// The peers in the routing table.
    pub async fn peers(&self) -> Result<Vec<PeerInfo<NodeAddr>>, NodeError> {
        let table = self.routing_table().await?;
        Ok(table.into_iter().map(|(peer, _)| peer).collect())
    }

    /// The peers in the routing table, each with whether it is stale
    /// (failed repeatedly; left out of lookups until it answers again).
    pub async fn routing_table(&self) -> Result<Vec<(PeerInfo<NodeAddr>, bool)>, NodeError> {
        self.ask(|reply| DriverCommand::Peers { reply }).await
    }

    /// The addresses the node listens on, each ending in `/p2p/PEER_ID`.
    pub async fn listening(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(|reply| DriverCommand::Listening { reply }).await
    }

    /// Waits until every listener is up, then returns the listen addresses.
    pub async fn ready(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(|reply| DriverCommand::Ready { reply }).await
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

    /// Runs `f` on the overlay core, on the driver task, and returns what
    /// it returns: how a resource module reads or changes the core without
    /// a command of its own here. `f` must be quick (the driver waits).
    pub(crate) async fn on_core<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Overlay<NodeAddr>, Instant) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        let run: CoreFn = Box::new(move |core, now| drop(reply.send(f(core, now))));
        self.commands
            .send(DriverCommand::OnCore(run))
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// Steps aside from blob `key`'s home: no room for it here, the next
    /// peer out takes this one's place. [`stop_providing`](Self::stop_providing)
    /// ends it.
    pub async fn decline(&self, key: Key) -> Result<(), NodeError> {
        self.on_core(move |core, now| core.decline(now, key).map(drop))
            .await?
            .map_err(NodeError::from)
    }

    /// Stops announcing `key`, as a provider or as a decliner of its home.
    pub async fn stop_providing(&self, key: Key) -> Result<(), NodeError> {
        self.on_core(move |core, _| core.stop_providing(&key)).await
    }

    /// The blobs this node declines.
    pub async fn declining(&self) -> Result<Vec<Key>, NodeError> {
        self.on_core(|core, _| core.declining().copied().collect()).await
    }

    /// The blobs this node announces itself as provider of.
    pub async fn providing(&self) -> Result<Vec<Key>, NodeError> {
        self.on_core(|core, _| core.providing().copied().collect()).await
    }

    /// The peers known here to decline blob `key`.
    pub async fn decliners(&self, key: Key) -> Result<Vec<Key>, NodeError> {
        self.on_core(move |core, _| core.decliners(&key)).await
    }

    /// Tells the swarm where `peer` can be reached.
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NodeError> {
        self.ask(|reply| DriverCommand::Addresses { peer, addrs, reply }).await
    }

    /// Most bytes the store keeps (`--quota`), if limited.
    pub(crate) fn quota(&self) -> Option<u64> {
        self.quota
    }

    pub(crate) fn blob_store(&self) -> &BlobStore {
        &self.blobs
    }

    pub(crate) fn stream_control(&self) -> crate::streams::Control {
        self.streams.clone()
    }
}

/// The clock the core runs on: microseconds since the Unix epoch.
pub(crate) fn now() -> Instant {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// A handle that does not keep the node alive.
#[derive(Clone)]
pub(crate) struct WeakClient {
    commands: mpsc::WeakSender<DriverCommand>,
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
