//! The discrete-event engine: virtual time, a queue of events, and the
//! overlay cores it drives.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use shoal_overlay::{
    Config, Event, Instant, Key, Mode, Overlay, PeerInfo, QueryId, Request, RequestId, Response, Rng, Signer, Transmit,
    Verifier,
};

use crate::net::{self, NetConfig, Network, Partition, Placement};
use crate::trace::Trace;

mod files;

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
enum Purpose {
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
    pending: BTreeMap<(PeerIndex, QueryId), Purpose>,
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
    files: Option<files::Files>,
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

    // ----- peers -----------------------------------------------------------

    /// Adds an offline slot with a fresh identity.
    pub fn add_slot(&mut self) -> PeerIndex {
        let index = self.slots.len() as PeerIndex;
        let mut public = [0u8; 12];
        public[..8].copy_from_slice(&self.seed.to_be_bytes());
        public[8..].copy_from_slice(&index.to_be_bytes());
        let place = self.net.place();
        self.slots.push(Slot {
            core: None,
            key: Key::of_public_key(&public),
            public,
            incarnation: 0,
            wake_at: u64::MAX,
            place,
            state: PeerState::Offline,
            joined_at: 0,
            live_pos: u32::MAX,
            files: files::PeerFiles::default(),
            leave_until: 0,
            remembered: Vec::new(),
        });
        index
    }

    /// Starts the peer in `slot` and joins it through a random joined peer
    /// (or alone, for the first) and, as the node does, through the peers
    /// it remembers from its last run: those that are up now (the node
    /// dials them; the others fail to connect and never enter its table).
    pub fn start(&mut self, peer: PeerIndex) {
        let seed_peer = self.random_live();
        let slot = &mut self.slots[peer as usize];
        debug_assert_eq!(slot.state, PeerState::Offline);
        slot.incarnation += 1;
        let local = PeerInfo::new(slot.key, peer);
        let rng_seed = Rng::derive(self.seed, (u64::from(slot.incarnation) << 32) | u64::from(peer)).next_u64();
        let now_local = Instant::from_micros(net::to_local(self.now, &slot.place));
        let signer = Box::new(SimSigner(slot.public));
        let mut core = match Overlay::new(Arc::clone(&self.overlay), local, signer, rng_seed, now_local) {
            Ok(core) => core,
            Err(e) => panic!("simulator built an invalid overlay config: {e}"),
        };
        let remembered = std::mem::take(&mut self.slots[peer as usize].remembered);
        let seeds: Vec<PeerInfo<PeerIndex>> = seed_peer
            .into_iter()
            .chain(remembered.into_iter().filter(|p| {
                let s = &self.slots[*p as usize];
                s.state == PeerState::Joined && Some(*p) != seed_peer
            }))
            .map(|p| PeerInfo::new(self.slots[p as usize].key, p))
            .collect();
        if let Err(e) = core.bootstrap(now_local, seeds) {
            panic!("a fresh core refused to bootstrap: {e}");
        }
        let slot = &mut self.slots[peer as usize];
        slot.core = Some(core);
        slot.state = PeerState::Joining;
        slot.wake_at = u64::MAX;
        self.trace.record(self.now, 1, peer, 0);
        self.flush(peer);
        self.files_started(peer);
    }

    /// Stops the peer at once: its state is gone, messages to it are lost.
    pub fn crash(&mut self, peer: PeerIndex) {
        if self.slots[peer as usize].state == PeerState::Offline {
            return;
        }
        self.counters.crashes += 1;
        self.go_offline(peer);
        self.trace.record(self.now, 2, peer, 0);
    }

    /// Asks the peer to leave gracefully: it hands its records on and goes
    /// offline when that is done.
    pub fn leave(&mut self, peer: PeerIndex) {
        let slot = &mut self.slots[peer as usize];
        let Some(core) = slot.core.as_mut() else { return };
        if slot.state == PeerState::Leaving {
            return;
        }
        let now_local = Instant::from_micros(net::to_local(self.now, &slot.place));
        core.leave(now_local);
        self.remove_live(peer);
        self.slots[peer as usize].state = PeerState::Leaving;
        self.slots[peer as usize].leave_until = self.files_leaving(peer).unwrap_or(0);
        self.counters.leaves += 1;
        self.trace.record(self.now, 3, peer, 0);
        self.flush(peer);
    }

    fn go_offline(&mut self, peer: PeerIndex) {
        self.files_stopping(peer);
        self.remove_live(peer);
        let slot = &mut self.slots[peer as usize];
        if let Some(core) = slot.core.as_ref() {
            slot.remembered = core
                .routing_table()
                .peers()
                .take(REMEMBERED_PEERS)
                .map(|p| p.addr)
                .collect();
        }
        slot.core = None;
        slot.state = PeerState::Offline;
        slot.wake_at = u64::MAX;
        // Queries the peer started die with it; they count neither way.
        let abandoned: Vec<(PeerIndex, QueryId)> = self
            .pending
            .range((peer, QueryId(0))..=(peer, QueryId(u64::MAX)))
            .map(|(k, _)| *k)
            .collect();
        for key in abandoned {
            self.pending.remove(&key);
        }
    }

    fn add_live(&mut self, peer: PeerIndex) {
        let slot = &mut self.slots[peer as usize];
        slot.state = PeerState::Joined;
        slot.joined_at = self.now;
        slot.live_pos = self.live_list.len() as u32;
        self.live_list.push(peer);
        self.live_keys.insert(slot.key, peer);
    }

    fn remove_live(&mut self, peer: PeerIndex) {
        let pos = self.slots[peer as usize].live_pos;
        if pos == u32::MAX {
            return;
        }
        let last = self.live_list.pop().unwrap_or(peer);
        if last != peer {
            self.live_list[pos as usize] = last;
            self.slots[last as usize].live_pos = pos;
        }
        let slot = &mut self.slots[peer as usize];
        slot.live_pos = u32::MAX;
        self.live_keys.remove(&slot.key);
    }

    /// Assigns partition groups (`group(peer)`) and sets the partition kind.
    pub fn partition(&mut self, kind: Partition, mut group: impl FnMut(PeerIndex) -> u8) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.place.group = group(i as PeerIndex);
        }
        self.net.partition = kind;
        self.trace.record(self.now, 4, 0, kind as u64);
    }

    // ----- queries ---------------------------------------------------------

    fn command(
        &mut self,
        peer: PeerIndex,
        f: impl FnOnce(&mut Overlay<PeerIndex>, Instant) -> Option<QueryId>,
    ) -> Option<QueryId> {
        let slot = &mut self.slots[peer as usize];
        let core = slot.core.as_mut()?;
        let now_local = Instant::from_micros(net::to_local(self.now, &slot.place));
        let id = f(core, now_local);
        self.flush(peer);
        id
    }

    /// Starts a lookup for `key` from `peer`; its outcome lands in `lookups`.
    pub fn lookup(&mut self, peer: PeerIndex, key: Key) -> bool {
        let closest_at_start = self.true_closest(&key, peer);
        let start = self.now;
        match self.command(peer, |core, now| core.find_node(now, key).ok()) {
            Some(id) => {
                self.pending.insert(
                    (peer, id),
                    Purpose::Lookup {
                        start,
                        key,
                        closest_at_start,
                    },
                );
                true
            }
            None => false,
        }
    }

    /// Stores `value` at `key` from `peer`.
    pub fn put(&mut self, peer: PeerIndex, key: Key, value: Vec<u8>) -> bool {
        match self.command(peer, |core, now| core.put_value(now, key, value).ok()) {
            Some(id) => {
                self.pending.insert((peer, id), Purpose::Put);
                true
            }
            None => false,
        }
    }

    /// Reads `key` from `peer`, expecting a value whose BLAKE3 hash is `value_hash`.
    pub fn get(&mut self, peer: PeerIndex, key: Key, value_hash: [u8; 32]) -> bool {
        let start = self.now;
        match self.command(peer, |core, now| core.get_value(now, key).ok()) {
            Some(id) => {
                self.pending.insert((peer, id), Purpose::Get { start, value_hash });
                true
            }
            None => false,
        }
    }

    /// The joined peer closest to `key` by XOR, other than `exclude`.
    ///
    /// Descends the implicit binary trie of the sorted live keys: at each
    /// bit, keep to the half that matches the target's bit if it is not empty.
    pub fn true_closest(&self, key: &Key, exclude: PeerIndex) -> Option<PeerIndex> {
        closest_in(&self.live_keys, key, self.slots.get(exclude as usize).map(|s| s.key))
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

    fn wake(&mut self, peer: PeerIndex, inc: u32) -> Result<(), Violation> {
        let now = self.now;
        let slot = &mut self.slots[peer as usize];
        if slot.incarnation != inc || slot.wake_at != now {
            return Ok(()); // superseded by an earlier or later wake-up
        }
        slot.wake_at = u64::MAX;
        let Some(core) = slot.core.as_mut() else { return Ok(()) };
        let local = Instant::from_micros(net::to_local(now, &slot.place));
        core.handle_timeout(local);
        if core.poll_timeout().is_some_and(|t| t <= local) {
            return Err(self.violation(
                Some(peer),
                "a timer stayed due after handle_timeout: the core would livelock".into(),
            ));
        }
        self.trace.record(now, 5, peer, 0);
        self.flush(peer);
        Ok(())
    }

    fn deliver(&mut self, index: u32) {
        let Some(payload) = self.payloads[index as usize].take() else {
            return;
        };
        self.free.push(index);
        match payload {
            Payload::Request {
                to,
                from,
                from_inc,
                id,
                mode,
                request,
            } => {
                let from_key = self.slots[from as usize].key;
                let slot = &mut self.slots[to as usize];
                let Some(core) = slot.core.as_mut() else {
                    self.counters.dropped += 1;
                    return;
                };
                let local = Instant::from_micros(net::to_local(self.now, &slot.place));
                let response = core.handle_request(local, PeerInfo::new(from_key, from), mode, request);
                self.trace.record(self.now, 6, to, id.0);
                self.flush(to);
                self.send(
                    to,
                    from,
                    Payload::Response {
                        to: from,
                        to_inc: from_inc,
                        id,
                        response,
                    },
                );
            }
            Payload::Response {
                to,
                to_inc,
                id,
                response,
            } => {
                let slot = &mut self.slots[to as usize];
                let Some(core) = slot.core.as_mut().filter(|_| slot.incarnation == to_inc) else {
                    self.counters.dropped += 1;
                    return;
                };
                let local = Instant::from_micros(net::to_local(self.now, &slot.place));
                core.handle_response(local, id, response);
                self.trace.record(self.now, 7, to, id.0);
                self.flush(to);
            }
        }
    }

    /// Puts a message on the network from `from`.
    fn send(&mut self, from: PeerIndex, to: PeerIndex, payload: Payload) {
        self.counters.messages += 1;
        let delays = {
            let (a, b) = (&self.slots[from as usize], &self.slots[to as usize]);
            if b.core.is_none() {
                [None, None]
            } else {
                self.net.transmit(&a.place, &b.place)
            }
        };
        let duplicate = if delays[1].is_some() {
            Some(payload.clone())
        } else {
            None
        };
        match delays[0] {
            Some(delay) => {
                let slot = self.alloc(payload);
                self.push(self.now + micros(delay).max(1), Ev::Message { slot });
            }
            None => self.counters.dropped += 1,
        }
        if let (Some(delay), Some(copy)) = (delays[1], duplicate) {
            let slot = self.alloc(copy);
            self.push(self.now + micros(delay).max(1), Ev::Message { slot });
        }
    }

    fn alloc(&mut self, payload: Payload) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.payloads[i as usize] = Some(payload);
                i
            }
            None => {
                self.payloads.push(Some(payload));
                (self.payloads.len() - 1) as u32
            }
        }
    }

    fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        let order = (u128::from(time) << 64) | u128::from(self.seq);
        self.heap.push(Queued {
            order: Reverse(order),
            ev,
        });
    }

    /// Drains a core's outputs after an input: transmits, events, timeout.
    fn flush(&mut self, peer: PeerIndex) {
        let mut transmits = std::mem::take(&mut self.tx_buf);
        let mut events = std::mem::take(&mut self.ev_buf);
        let slot = &mut self.slots[peer as usize];
        let (inc, mut next_wake) = (slot.incarnation, None);
        if let Some(core) = slot.core.as_mut() {
            while let Some(t) = core.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            next_wake = core.poll_timeout();
        }
        for t in transmits.drain(..) {
            let (to, id, mode, request) = (t.to.addr, t.id, t.mode, t.request);
            self.counters.requests_by_kind[request_kind(&request)] += 1;
            self.send(
                peer,
                to,
                Payload::Request {
                    to,
                    from: peer,
                    from_inc: inc,
                    id,
                    mode,
                    request,
                },
            );
        }
        for e in events.drain(..) {
            self.on_event(peer, e);
        }
        self.tx_buf = transmits;
        self.ev_buf = events;
        let slot = &mut self.slots[peer as usize];
        if let (Some(t), true) = (next_wake, slot.core.is_some()) {
            let at = net::to_virtual(t.as_micros(), &slot.place).max(self.now);
            if at < slot.wake_at {
                slot.wake_at = at;
                self.push(at, Ev::Wake { peer, inc });
            }
        }
    }

    fn on_event(&mut self, peer: PeerIndex, event: Event<PeerIndex>) {
        match event {
            Event::Bootstrapped { .. } => {
                if self.slots[peer as usize].state == PeerState::Joining {
                    self.add_live(peer);
                    self.counters.joins += 1;
                }
            }
            Event::Left { .. } => {
                let slot = &self.slots[peer as usize];
                if slot.leave_until > self.now {
                    // Its hand-off pushes are still running.
                    let (at, inc) = (slot.leave_until, slot.incarnation);
                    self.push(at, Ev::Offline { peer, inc });
                } else {
                    self.go_offline(peer);
                }
            }
            Event::FoundNodes {
                query, peers, stats, ..
            } => {
                let (start, key, closest_at_start) = match self.pending.remove(&(peer, query)) {
                    Some(Purpose::Lookup {
                        start,
                        key,
                        closest_at_start,
                    }) => (start, key, closest_at_start),
                    Some(Purpose::Membership { blob }) => return self.membership_found(peer, blob, &peers),
                    _ => return,
                };
                let success = self.judge(peer, start, &key, closest_at_start, &peers);
                self.lookups.push(LookupOutcome {
                    start_s: start as f64 / 1e6,
                    latency_ms: (self.now - start) as f64 / 1e3,
                    hops: stats.hops,
                    requests: stats.requests,
                    success,
                });
            }
            Event::GotValue { query, record, .. } => {
                let (start, value_hash) = match self.pending.remove(&(peer, query)) {
                    Some(Purpose::Get { start, value_hash }) => (start, value_hash),
                    Some(Purpose::PinRecord { blob }) => return self.pin_record_found(peer, blob, record.as_ref()),
                    _ => return,
                };
                let found = record.is_some_and(|r| *blake3::hash(&r.value).as_bytes() == value_hash);
                self.gets.push(GetOutcome {
                    start_s: start as f64 / 1e6,
                    found,
                });
            }
            Event::Put { query, stored, .. } => {
                if let Some(Purpose::Put) = self.pending.remove(&(peer, query)) {
                    self.counters.puts += 1;
                    self.counters.put_stored += stored as u64;
                }
            }
            Event::GotProviders { query, providers, .. } => {
                if let Some(Purpose::Providers { blob }) = self.pending.remove(&(peer, query)) {
                    let from: Vec<PeerIndex> = providers.iter().map(|r| r.provider.addr).collect();
                    self.providers_found(peer, blob, &from);
                }
            }
            Event::ProvidedMany { .. }
            | Event::PeerAdded { .. }
            | Event::PeerRemoved { .. }
            | Event::Aborted { .. } => {}
        }
    }

    /// A lookup succeeds when its result holds the closest joined peer at
    /// its end; if that peer joined after the lookup began, holding the
    /// closest peer at its start (still joined) also counts.
    fn judge(
        &self,
        origin: PeerIndex,
        start: u64,
        key: &Key,
        at_start: Option<PeerIndex>,
        result: &[PeerInfo<PeerIndex>],
    ) -> bool {
        let holds = |p: PeerIndex| result.iter().any(|r| r.addr == p);
        match self.true_closest(key, origin) {
            None => true, // nobody else is up: nothing to find
            Some(now_closest) if holds(now_closest) => true,
            Some(now_closest) => {
                let joined_late = self.slots[now_closest as usize].joined_at > start;
                joined_late && at_start.is_some_and(|p| self.slots[p as usize].state == PeerState::Joined && holds(p))
            }
        }
    }

    // ----- invariants ------------------------------------------------------

    fn violation(&self, peer: Option<PeerIndex>, message: String) -> Violation {
        Violation {
            seed: self.seed,
            time_s: self.now_s(),
            peer,
            message,
        }
    }

    fn check_sample(&mut self) -> Result<(), Violation> {
        for _ in 0..self.check_sample.min(self.slots.len()) {
            let peer = self.check_rng.index(self.slots.len()) as PeerIndex;
            self.check_peer(peer)?;
        }
        self.check_global()
    }

    fn check_peer(&self, peer: PeerIndex) -> Result<(), Violation> {
        let slot = &self.slots[peer as usize];
        if let Some(core) = &slot.core {
            core.check_invariants().map_err(|m| self.violation(Some(peer), m))?;
            for p in core.routing_table().peers() {
                if self.slots.get(p.addr as usize).map(|s| s.key) != Some(p.key) {
                    return Err(self.violation(Some(peer), format!("table entry {p:?} has the wrong key for its slot")));
                }
            }
        } else if slot.state != PeerState::Offline {
            return Err(self.violation(Some(peer), format!("state {:?} without a running core", slot.state)));
        }
        Ok(())
    }

    fn check_global(&self) -> Result<(), Violation> {
        if self.live_list.len() != self.live_keys.len() {
            return Err(self.violation(None, "live list and live key index disagree".into()));
        }
        Ok(())
    }

    /// Checks every peer's invariants (end of a run).
    pub fn check_all(&self) -> Result<(), Violation> {
        for peer in 0..self.slots.len() as PeerIndex {
            self.check_peer(peer)?;
        }
        self.check_global()
    }
}

/// The value in `keys` whose key is XOR-closest to `target`, skipping `excluded`.
///
/// Descends the implicit binary trie of the sorted keys. `path` holds the
/// prefix chosen so far in its first `len` bits and the target's bits after
/// it; at each bit, keep to the half that agrees with the target if it has a
/// key, else take the other half.
fn closest_in(keys: &BTreeMap<Key, PeerIndex>, target: &Key, excluded: Option<Key>) -> Option<PeerIndex> {
    let mut path = *target;
    let mut len = 0;
    loop {
        let (low, high) = path.prefix_range(len);
        let mut range = keys.range(low..=high).filter(|(k, _)| Some(**k) != excluded);
        let first = range.next()?;
        if len == shoal_overlay::KEY_BITS || range.next().is_none() {
            return Some(*first.1);
        }
        let (want_low, want_high) = path.prefix_range(len + 1);
        if !keys.range(want_low..=want_high).any(|(k, _)| Some(*k) != excluded) {
            path = path.with_bit_flipped(len);
        }
        len += 1;
    }
}

fn request_kind(request: &Request<PeerIndex>) -> usize {
    match request {
        Request::Ping => 0,
        Request::FindNode { .. } => 1,
        Request::GetValue { .. } => 2,
        Request::GetProviders { .. } => 3,
        Request::PutValue { .. } => 4,
        Request::AddProvider { .. } | Request::AddProviders { .. } => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_invariant_stops_the_run_and_names_the_seed() {
        let mut sim = Sim::new(SimConfig {
            seed: 99,
            net: NetConfig::preset(crate::Preset::Lan),
            overlay: Config::new(sim_verifier()),
            check_interval: Duration::from_secs(1),
            check_sample: 8,
        });
        for _ in 0..3 {
            let peer = sim.add_slot();
            sim.start(peer);
            sim.run_until(sim.now_us() + 1_000_000).unwrap();
        }
        sim.check_all().unwrap();
        // Corrupt one core: it learns peer 2's address under a stranger's key.
        let bogus = PeerInfo::new(Key::of_content(b"not peer 2"), 2);
        let now = Instant::from_micros(net::to_local(sim.now, &sim.slots[0].place));
        sim.slots[0].core.as_mut().unwrap().add_peer(now, bogus);
        let violation = sim.check_all().unwrap_err();
        assert_eq!(violation.seed, 99);
        assert_eq!(violation.peer, Some(0));
        assert!(violation.to_string().contains("seed 99"), "{violation}");
    }

    #[test]
    fn closest_in_matches_brute_force() {
        let mut rng = Rng::seed_from_u64(17);
        for n in [1usize, 2, 3, 10, 100, 1000] {
            let keys: BTreeMap<Key, PeerIndex> = (0..n).map(|i| (rng.key(), i as PeerIndex)).collect();
            for _ in 0..300 {
                let target = rng.key();
                let excluded = if rng.chance(0.5) {
                    keys.keys().nth(rng.index(n)).copied()
                } else {
                    None
                };
                let brute = keys
                    .iter()
                    .filter(|(k, _)| Some(**k) != excluded)
                    .min_by_key(|(k, _)| k.distance(&target))
                    .map(|(_, v)| *v);
                assert_eq!(closest_in(&keys, &target, excluded), brute, "n = {n}");
            }
        }
    }
}
