//! The discrete-event engine: virtual time, a queue of events, and the
//! overlay cores it drives.
//!
//! # Layout, in reading order
//!
//! Each submodule adds an `impl` block to [`Sim`]:
//!
//! - this file: what the parts share — peer slots, the queued events and
//!   the messages they carry, why the simulator started a query, outcomes,
//!   counters and [`Violation`] — the [`Sim`] type, making and resuming
//!   one, its getters, the event loop and the queue.
//! - `peers`: slots; starting, crashing, leaving and going offline; the
//!   set of joined peers that lookups are judged against; partitions.
//! - `queries`: the user commands (lookup, put, get) and judging a lookup
//!   against the true closest peer.
//! - `deliver`: handing a core its inputs (a due wake-up, a message through
//!   the network model) and draining its outputs: transmits onto the
//!   network, events to what waits on them, the next wake-up.
//! - `invariants`: checks of sampled peers, of every peer, and of the
//!   simulator's own indexes.
//! - `files`: the files layer (disks, links, pin duties, transfers).
//!
//! The submodules share state through `Sim`'s fields and call each other's
//! methods; they import types only from this module and the crate.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use shoal_overlay::{
    Config, Event, Key, Mode, Overlay, QueryId, Request, RequestId, Response, Rng, Signer, Transmit, Verifier,
};

use crate::net::{NetConfig, Network, Placement};
use crate::trace::Trace;

mod deliver;
mod files;
mod invariants;
mod peers;
mod queries;
#[cfg(test)]
mod tests;

pub use files::{FileCounters, FilesConfig};

/// Index of a peer slot. A slot keeps its key across crashes and restarts.
pub type PeerIndex = u32;

/// The simulator's stand-in for a signature scheme: the "signature" is a
/// BLAKE3 hash of the public key and the message. Anyone could forge it; it
/// exercises every code path that signs and verifies at a fraction of
/// ed25519's cost. The node uses real ed25519.
#[derive(Debug)]
struct SimSigner([u8; 12]);

impl Signer for SimSigner {
    fn public_key(&self) -> &[u8] {
        &self.0
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        sim_signature(&self.0, message).to_vec()
    }
}

fn sim_signature(public_key: &[u8], message: &[u8]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(public_key);
    hasher.update(message);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

fn sim_verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    sim_signature(public_key, message) == signature
}

/// The verifier matching the simulator's signer.
pub fn sim_verifier() -> Verifier {
    Verifier(sim_verify)
}

/// A simulation's overlay settings until [`Sim::resume`] sets the ones it
/// ran with: the defaults.
fn default_config() -> Arc<Config> {
    Arc::new(Config::new(sim_verifier()))
}

/// Settings of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Fixes every random choice of the run.
    pub seed: u64,
    /// The network model.
    pub net: NetConfig,
    /// The overlay settings every core runs with (its verifier is replaced
    /// by the simulator's).
    pub overlay: Config,
    /// How often invariants are checked on a sample of peers.
    pub check_interval: Duration,
    /// How many peers each check looks at.
    pub check_sample: usize,
}

/// Where a slot's peer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PeerState {
    /// Not running.
    Offline,
    /// Running its bootstrap.
    Joining,
    /// Joined: part of the truth the simulator checks lookups against.
    Joined,
    /// Handing its records on before it goes.
    Leaving,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Slot {
    core: Option<Overlay<PeerIndex>>,
    key: Key,
    public: [u8; 12],
    incarnation: u32,
    /// Virtual time of the scheduled wake-up, `u64::MAX` for none.
    wake_at: u64,
    place: Placement,
    state: PeerState,
    joined_at: u64,
    /// Position in `live_list` while joined.
    live_pos: u32,
    /// Its disk and links (files layer).
    files: files::PeerFiles,
    /// A leaving peer stays up until its hand-off pushes end (virtual µs).
    leave_until: u64,
    /// The routing table's peers when it last stopped, as the node keeps
    /// them in `known-peers`: dialled again on restart.
    remembered: Vec<PeerIndex>,
}

/// Most peers a stopped peer remembers (the node's `MAX_KNOWN_PEERS`).
pub(crate) const REMEMBERED_PEERS: usize = 256;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Payload {
    Request {
        to: PeerIndex,
        from: PeerIndex,
        from_inc: u32,
        id: RequestId,
        mode: Mode,
        request: Request<PeerIndex>,
    },
    Response {
        to: PeerIndex,
        to_inc: u32,
        id: RequestId,
        response: Response<PeerIndex>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Ev {
    Wake {
        peer: PeerIndex,
        inc: u32,
    },
    Message {
        slot: u32,
    },
    /// A round of pin duties.
    Duty {
        peer: PeerIndex,
        inc: u32,
        first: bool,
    },
    /// A file transfer ends.
    Transfer {
        id: u64,
    },
    /// A leaving peer's hand-off is over.
    Offline {
        peer: PeerIndex,
        inc: u32,
    },
}

/// An event in the queue. `order` is the virtual time in the high 64 bits
/// and a sequence number in the low ones: events at the same time run in
/// the order they were scheduled, and the heap compares one integer.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Queued {
    order: Reverse<u128>,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order.cmp(&other.order)
    }
}

/// Why the simulator started a query: what to do with its result.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Awaited {
    Lookup {
        start: u64,
        key: Key,
        closest_at_start: Option<PeerIndex>,
    },
    Get {
        start: u64,
        value_hash: [u8; 32],
    },
    Put,
    /// Providers of a blob a pin duty fetches.
    Providers {
        blob: Key,
    },
    /// A lookup a pin duty asked for (is this peer a home member?).
    Membership {
        blob: Key,
    },
    /// A pin record a pin duty asked for (of a copy kept for a home whose
    /// record this peer no longer holds).
    PinRecord {
        blob: Key,
    },
}

/// How one lookup went.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct LookupOutcome {
    /// Virtual start, seconds.
    pub start_s: f64,
    /// Virtual duration, milliseconds.
    pub latency_ms: f64,
    /// Hops (see `BENCHMARKS.md`).
    pub hops: u8,
    /// Requests the lookup sent.
    pub requests: u32,
    /// Whether its result held the true closest live peer.
    pub success: bool,
}

/// How one record read went.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct GetOutcome {
    /// Virtual start, seconds.
    pub start_s: f64,
    /// Whether the stored value came back.
    pub found: bool,
}

/// An invariant that did not hold, with what it takes to reproduce it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invariant violated at t = {time_s:.3} s (seed {seed}), peer {peer:?}: {message}")]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// Virtual time of the check.
    pub time_s: f64,
    /// The peer whose state broke, if one did.
    pub peer: Option<PeerIndex>,
    /// What broke.
    pub message: String,
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Events processed (message deliveries and wake-ups).
    pub events: u64,
    /// Messages sent (requests plus responses).
    pub messages: u64,
    /// Messages the network lost (loss, partition, offline receiver).
    pub dropped: u64,
    /// Peers that finished joining (restarts included).
    pub joins: u64,
    /// Crashes.
    pub crashes: u64,
    /// Graceful leaves.
    pub leaves: u64,
    /// Puts that finished, and home members that confirmed them.
    pub puts: u64,
    /// Sum over puts of the members that confirmed.
    pub put_stored: u64,
    /// Requests sent, by kind: ping, find_node, get_value, get_providers,
    /// put_value, add_provider.
    pub requests_by_kind: [u64; 6],
}

/// A simulated swarm.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Sim {
    seed: u64,
    now: u64,
    /// Not in a checkpoint: [`Sim::resume`] puts it back.
    #[serde(skip, default = "default_config")]
    overlay: Arc<Config>,
    net: Network,
    slots: Vec<Slot>,
    heap: BinaryHeap<Queued>,
    payloads: Vec<Option<Payload>>,
    free: Vec<u32>,
    seq: u64,
    rng: Rng,
    /// The invariant checker's own stream, so that how often it samples
    /// never changes the workload a seed produces.
    check_rng: Rng,
    trace: Trace,
    live_keys: BTreeMap<Key, PeerIndex>,
    live_list: Vec<PeerIndex>,
    pending: BTreeMap<(PeerIndex, QueryId), Awaited>,
    #[serde(skip)]
    tx_buf: Vec<Transmit<PeerIndex>>,
    #[serde(skip)]
    ev_buf: Vec<Event<PeerIndex>>,
    next_check: u64,
    check_interval: u64,
    check_sample: usize,
    /// Finished lookups, in order of completion.
    pub lookups: Vec<LookupOutcome>,
    /// Finished record reads.
    pub gets: Vec<GetOutcome>,
    /// Counters.
    pub counters: Counters,
    files: Option<files::FilesModel>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Sim {
    /// An empty swarm.
    pub fn new(config: SimConfig) -> Self {
        let mut overlay = config.overlay;
        overlay.verifier = sim_verifier();
        Sim {
            seed: config.seed,
            now: 0,
            overlay: Arc::new(overlay),
            net: Network::new(config.net, config.seed),
            slots: Vec::new(),
            heap: BinaryHeap::new(),
            payloads: Vec::new(),
            free: Vec::new(),
            seq: 0,
            rng: Rng::derive(config.seed, u64::MAX - 1),
            check_rng: Rng::derive(config.seed, u64::MAX - 2),
            trace: Trace::new(),
            live_keys: BTreeMap::new(),
            live_list: Vec::new(),
            pending: BTreeMap::new(),
            tx_buf: Vec::new(),
            ev_buf: Vec::new(),
            next_check: micros(config.check_interval),
            check_interval: micros(config.check_interval).max(1),
            check_sample: config.check_sample,
            lookups: Vec::new(),
            gets: Vec::new(),
            counters: Counters::default(),
            files: None,
        }
    }

    /// Gives a simulation read back from a checkpoint its overlay settings
    /// (the ones it was created with: a checkpoint does not hold them) and
    /// each running core its settings and signer.
    pub fn resume(&mut self, mut overlay: Config) -> Result<(), shoal_overlay::ConfigError> {
        overlay.verifier = sim_verifier();
        self.overlay = Arc::new(overlay);
        for slot in &mut self.slots {
            if let Some(core) = slot.core.as_mut() {
                core.resume(Arc::clone(&self.overlay), Box::new(SimSigner(slot.public)))?;
            }
        }
        Ok(())
    }

    /// Checks that a simulation read back from a file hangs together:
    /// every queued event names a slot and a message that exist.
    pub(crate) fn check_loaded(&self) -> Result<(), String> {
        self.trace.check()?;
        let slots = self.slots.len();
        let peer_ok = |p: PeerIndex| (p as usize) < slots;
        for queued in &self.heap {
            let ok = match queued.ev {
                Ev::Wake { peer, .. } | Ev::Duty { peer, .. } | Ev::Offline { peer, .. } => peer_ok(peer),
                Ev::Message { slot } => match self.payloads.get(slot as usize) {
                    Some(Some(Payload::Request { to, from, .. })) => peer_ok(*to) && peer_ok(*from),
                    Some(Some(Payload::Response { to, .. })) => peer_ok(*to),
                    _ => false,
                },
                Ev::Transfer { .. } => true,
            };
            if !ok {
                return Err(format!("an event names what does not exist: {:?}", queued.ev));
            }
        }
        if !self
            .live_list
            .iter()
            .chain(self.live_keys.values())
            .all(|p| peer_ok(*p))
        {
            return Err("the live peers name slots that do not exist".into());
        }
        Ok(())
    }

    // ----- getters ---------------------------------------------------------

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time, in microseconds.
    pub fn now_us(&self) -> u64 {
        self.now
    }

    /// Virtual time, in seconds.
    pub fn now_s(&self) -> f64 {
        self.now as f64 / 1e6
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Peers joined and running.
    pub fn live(&self) -> usize {
        self.live_list.len()
    }

    /// State of a slot.
    pub fn state(&self, peer: PeerIndex) -> PeerState {
        self.slots[peer as usize].state
    }

    /// Key of a slot.
    pub fn key(&self, peer: PeerIndex) -> Key {
        self.slots[peer as usize].key
    }

    /// The core running in a slot.
    pub fn core(&self, peer: PeerIndex) -> Option<&Overlay<PeerIndex>> {
        self.slots[peer as usize].core.as_ref()
    }

    /// Mean bytes per running core: the core itself plus its routing table.
    pub fn core_bytes_per_peer(&self) -> u64 {
        let (mut bytes, mut cores) = (0usize, 0usize);
        for slot in &self.slots {
            if let Some(core) = &slot.core {
                // The core lives inside its slot, counted below.
                bytes += core.routing_table().heap_bytes();
                cores += 1;
            }
        }
        (bytes / cores.max(1)) as u64 + size_of::<Slot>() as u64
    }

    /// Queries started by the simulator that have not finished.
    pub fn pending_queries(&self) -> usize {
        self.pending.len()
    }

    /// The hash of every event processed so far.
    pub fn trace_hash(&self) -> String {
        self.trace.hash()
    }

    /// A random joined peer.
    pub fn random_live(&mut self) -> Option<PeerIndex> {
        if self.live_list.is_empty() {
            return None;
        }
        Some(self.live_list[self.rng.index(self.live_list.len())])
    }

    /// The simulator's own random stream (for scenarios).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    // ----- running ---------------------------------------------------------

    /// Processes every event up to and including virtual time `until_us`.
    pub fn run_until(&mut self, until_us: u64) -> Result<(), Violation> {
        while let Some(&Queued { order, ev }) = self.heap.peek() {
            let time = (order.0 >> 64) as u64;
            if time > until_us {
                break;
            }
            self.heap.pop();
            self.now = time;
            self.counters.events += 1;
            match ev {
                Ev::Wake { peer, inc } => self.wake(peer, inc)?,
                Ev::Message { slot } => self.deliver(slot),
                Ev::Duty { peer, inc, first } => self.duty(peer, inc, first),
                Ev::Transfer { id } => {
                    self.trace.record(self.now, 8, 0, id);
                    self.transfer_done(id);
                }
                Ev::Offline { peer, inc } => {
                    let slot = &self.slots[peer as usize];
                    if slot.incarnation == inc && slot.state == PeerState::Leaving {
                        self.go_offline(peer);
                    }
                }
            }
            if self.now >= self.next_check {
                self.next_check = self.now + self.check_interval;
                self.check_sample()?;
            }
        }
        self.now = self.now.max(until_us);
        Ok(())
    }

    /// Runs until no simulator-started query is pending, or `limit_us` passes.
    pub fn run_until_idle(&mut self, limit_us: u64) -> Result<(), Violation> {
        let step = 100_000; // 100 ms of virtual time
        while !self.pending.is_empty() && self.now < limit_us {
            self.run_until((self.now + step).min(limit_us))?;
        }
        Ok(())
    }

    fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        let order = (u128::from(time) << 64) | u128::from(self.seq);
        self.heap.push(Queued {
            order: Reverse(order),
            ev,
        });
    }
}
