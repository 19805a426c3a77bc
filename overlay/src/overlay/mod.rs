//! The overlay core: one peer's Kademlia state machine.
//!
//! [`Overlay`] is everything one peer knows and owes to the others: its
//! routing table, the queries it runs, the requests it waits on, the records
//! it holds for the homes it belongs to, and the values and provider records
//! it publishes itself. It does no I/O: the driver hands it inputs with the
//! time through `handle_*` and commands, and drains its outputs through
//! `poll_*`, in the order the type's documentation gives.
//!
//! Every request the core sends is tracked until its answer, its failure or
//! its deadline, under a [`RequestId`] and a `Purpose` that says what its
//! answer means. [`handle_response`](Overlay::handle_response) and
//! [`handle_failure`](Overlay::handle_failure) dispatch on that purpose back
//! to the part of the core that asked.
//!
//! Most commands are queries. A query walks a [`Lookup`](crate::Lookup)
//! toward its key; what happens when the lookup ends depends on the query's
//! kind: an event for `find_node` and the gets, the store phase for a put or
//! an announcement, bucket refreshes for a bootstrap, the placing of a range
//! of keys for a `provide_many` batch.
//!
//! A key's *home* is the `r` live peers nearest it that have not declined
//! it. The core keeps records at their home as the table changes: a peer
//! that enters the table is handed the records whose home it joined, and
//! when a member leaves the table, or a peer declines a key or takes its
//! decline back, the home as it is now is sent the records again. A
//! periodic maintenance round expires records, replicates them, republishes
//! what this peer published, refreshes idle buckets and probes stale and
//! quiet neighbours. A graceful leave hands every held record on and stops.
//!
//! # Layout
//!
//! Each submodule adds an `impl` block to [`Overlay`], in reading order:
//!
//! - this file: the [`Overlay`] type and the request bookkeeping it is built
//!   on (`Purpose`, `Outstanding`), its constructor, getters, the `handle_*`
//!   inputs and `poll_*` outputs, and the invariant check.
//! - `requests`: sending a request and tracking it to its answer, failure
//!   or deadline; query ids.
//! - `queries`: starting a query, driving its lookup (stalled steps
//!   included), taking lookup answers and finishing by the query's kind.
//! - `peers`: the routing table's side: peers added, removed, observed and
//!   failing, and eviction pings.
//! - `homes`: who belongs to a key's home, declines, and the hand-off of
//!   records to a home that changed.
//! - `records`: getting, putting and providing records, the store phase of
//!   a put, and verifying, accepting and signing records.
//! - `provide`: `provide_many`, provider records placed a home at a time.
//! - `bootstrap`: joining, and the bucket refreshes after the self-lookup.
//! - `maintenance`: the periodic round: replication, republishing, bucket
//!   refresh, probes.
//! - `leave`: the graceful leave.
//!
//! The submodules share state through `Overlay`'s fields and call each
//! other's methods; they import types only from this module and the crate.

mod bootstrap;
mod homes;
mod leave;
mod maintenance;
mod peers;
mod provide;
mod queries;
mod records;
mod requests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::query::Query;
use crate::record::{AnyRecord, RecordStore, Signer};
use crate::routing::RoutingTable;
use crate::rtt::RttEstimate;
use crate::wire::MAX_BATCH_RECORDS;
use crate::{
    Addr, Config, ConfigError, Event, Instant, Key, Mode, PeerInfo, QueryId, QueryStats, RecordError, Request,
    RequestId, Response, Rng, Transmit,
};

use self::homes::Owed;
use self::leave::Leave;
use self::provide::Batch;
use self::records::PublishedValue;

/// Output queues keep at most this much capacity once drained.
const IDLE_QUEUE_CAPACITY: usize = 4;

/// Why a request was sent; decides what its answer means.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum Purpose {
    /// A step of a query's lookup, on one of its paths; `attempt` 1 is the
    /// first request to that peer, 2 the retry after a stall.
    Lookup { query: QueryId, path: usize, attempt: u8 },
    /// Storing a record at a home member, for a put or a leave.
    Store { query: QueryId },
    /// Pinging a bucket's oldest entry to decide whether it stays.
    EvictionPing,
    /// Pinging a stale entry in case it came back.
    Probe,
    /// Replicating a record to a home member; only liveness matters.
    Replicate,
    /// Storing many provider records at one home member, for a batch.
    StoreBatch { batch: QueryId },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
struct Outstanding<A> {
    peer: PeerInfo<A>,
    purpose: Purpose,
    sent: Instant,
    deadline: Instant,
    /// When a lookup step counts as stalled (lookup steps only).
    stall_at: Option<Instant>,
}

/// One peer's overlay: routing table, lookups, records, replication.
///
/// # Driving it
///
/// - Inputs, each with the driver's `now`: [`handle_request`](Self::handle_request)
///   (answered at once), [`handle_response`](Self::handle_response),
///   [`handle_failure`](Self::handle_failure), [`handle_timeout`](Self::handle_timeout).
/// - Commands: [`bootstrap`](Self::bootstrap), [`find_node`](Self::find_node),
///   [`get_value`](Self::get_value), [`put_value`](Self::put_value),
///   [`start_providing`](Self::start_providing), [`get_providers`](Self::get_providers),
///   [`leave`](Self::leave), [`add_peer`](Self::add_peer). Each returns the
///   [`QueryId`] that comes back in its [`Event`].
/// - Outputs, drained after every input or command, in this order:
///   [`poll_transmit`](Self::poll_transmit) until `None`, then
///   [`poll_event`](Self::poll_event) until `None`, then
///   [`poll_timeout`](Self::poll_timeout) — the instant at which to call
///   `handle_timeout` next.
///
/// # Snapshots
///
/// A core serializes (serde) into everything it holds but its settings and
/// its signer; a deserialized core is *detached* until
/// [`resume`](Self::resume) gives them back. The simulator checkpoints
/// long runs this way; a resumed core behaves exactly as the one saved.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: Addr")]
pub struct Overlay<A: Addr> {
    #[serde(skip, default = "detached_config")]
    config: Arc<Config>,
    local: PeerInfo<A>,
    #[serde(skip, default = "detached_signer")]
    signer: Box<dyn Signer>,
    rng: Rng,
    table: RoutingTable<A>,
    store: RecordStore<A>,
    published_values: BTreeMap<Key, PublishedValue>,
    /// Keys this peer announces itself as provider of, and when to re-announce.
    published_providers: BTreeMap<Key, Instant>,
    /// Keys of `published_providers` this peer declines instead of providing.
    declining: BTreeSet<Key>,
    queries: BTreeMap<QueryId, Query<A>>,
    /// Bootstrap queries waiting on their refresh lookups: how many are left.
    bootstraps: BTreeMap<QueryId, (usize, QueryStats)>,
    outstanding: BTreeMap<RequestId, Outstanding<A>>,
    deadlines: BTreeSet<(Instant, RequestId)>,
    /// Lookup steps that have not answered within the stall timeout move
    /// their lookup on to other peers (the request stays open).
    stalls: BTreeSet<(Instant, RequestId)>,
    rtt: RttEstimate,
    maintenance_at: Instant,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<Event<A>>,
    next_request: u64,
    next_query: u64,
    leave: Option<Leave<A>>,
    batches: BTreeMap<QueryId, Batch>,
    /// Records owed to peers whose homes changed, by peer, sent a few at
    /// a time (`homes`).
    owed: BTreeMap<Key, Owed<A>>,
}

impl<A: Addr> Overlay<A> {
    /// A core for the local peer `local`, signing with `signer` (whose public
    /// key must hash to `local.key`), drawing randomness from `rng_seed`.
    pub fn new(
        config: Arc<Config>,
        local: PeerInfo<A>,
        signer: Box<dyn Signer>,
        rng_seed: u64,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if Key::of_public_key(signer.public_key()) != local.key {
            return Err(ConfigError(
                "the local key must be the BLAKE3 hash of the signer's public key",
            ));
        }
        let table = RoutingTable::new(
            local.key,
            config.k,
            config.replacement_cache,
            config.max_failures,
            config.recently_seen,
        );
        let store = RecordStore::new(config.store);
        let maintenance_at = now + config.maintenance_interval;
        Ok(Overlay {
            config,
            local,
            signer,
            rng: Rng::seed_from_u64(rng_seed),
            table,
            store,
            published_values: BTreeMap::new(),
            published_providers: BTreeMap::new(),
            declining: BTreeSet::new(),
            queries: BTreeMap::new(),
            bootstraps: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            stalls: BTreeSet::new(),
            rtt: RttEstimate::default(),
            maintenance_at,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_request: 0,
            next_query: 0,
            leave: None,
            batches: BTreeMap::new(),
            owed: BTreeMap::new(),
        })
    }

    /// Gives a deserialized core back its settings and signer: the same
    /// settings it ran with before it was saved, and a signer for its key.
    pub fn resume(&mut self, config: Arc<Config>, signer: Box<dyn Signer>) -> Result<(), ConfigError> {
        config.validate()?;
        if Key::of_public_key(signer.public_key()) != self.local.key {
            return Err(ConfigError(
                "the local key must be the BLAKE3 hash of the signer's public key",
            ));
        }
        if config.k != self.table.bucket_size() {
            return Err(ConfigError("a core resumes with the bucket size it was saved with"));
        }
        self.config = config;
        self.signer = signer;
        Ok(())
    }

    // ----- getters -------------------------------------------------------

    /// This peer.
    pub fn local(&self) -> &PeerInfo<A> {
        &self.local
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The routing table.
    pub fn routing_table(&self) -> &RoutingTable<A> {
        &self.table
    }

    /// The records this peer holds for the homes it belongs to.
    pub fn record_store(&self) -> &RecordStore<A> {
        &self.store
    }

    /// Queries running now.
    pub fn queries_in_flight(&self) -> usize {
        self.queries.len()
    }

    /// Requests awaiting an answer.
    pub fn requests_in_flight(&self) -> usize {
        self.outstanding.len()
    }

    // ----- inputs ----------------------------------------------------------

    /// Answers a request from `from`, who says it runs in `mode`.
    ///
    /// `from.key` must already be bound to `from.addr` by the driver (the node
    /// derives it from the authenticated peer id).
    pub fn handle_request(&mut self, now: Instant, from: PeerInfo<A>, mode: Mode, request: Request<A>) -> Response<A> {
        if mode == Mode::Server && from.addr.matches_key(&from.key) && self.leave.is_none() {
            self.observe(now, from.clone());
        }
        let k = self.config.k;
        if self.leave.is_some() {
            // What is stored now would not be handed on: send it elsewhere.
            match &request {
                Request::PutValue { record } => return Response::Rejected(RecordError::Leaving { key: record.key }),
                Request::AddProvider { record } => return Response::Rejected(RecordError::Leaving { key: record.key }),
                Request::AddProviders { records } => {
                    return Response::StoredBatch {
                        refused: (0..records.len() as u32).collect(),
                    };
                }
                _ => {}
            }
        }
        match request {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                closer: self.table.closest(&target, k, Some(&from.key)),
            },
            Request::GetValue { key } => Response::Value {
                record: self.store.value(&key, now).cloned(),
                closer: self.table.closest(&key, k, Some(&from.key)),
            },
            Request::GetProviders { key } => Response::Providers {
                providers: self.store.providers(&key, now, self.config.max_providers),
                closer: self.table.closest(&key, k, Some(&from.key)),
            },
            Request::PutValue { record } => match self.accept(now, AnyRecord::Value(record)) {
                Ok(_) => Response::Stored,
                Err(e) => Response::Rejected(e),
            },
            Request::AddProvider { record } => match self.accept(now, AnyRecord::Provider(record)) {
                Ok(_) => Response::Stored,
                Err(e) => Response::Rejected(e),
            },
            Request::AddProviders { records } => {
                let mut refused = Vec::new();
                for (i, record) in records.into_iter().take(MAX_BATCH_RECORDS).enumerate() {
                    if self.accept(now, AnyRecord::Provider(record)).is_err() {
                        refused.push(i as u32);
                    }
                }
                Response::StoredBatch { refused }
            }
        }
    }

    /// The answer to request `id` arrived.
    pub fn handle_response(&mut self, now: Instant, id: RequestId, response: Response<A>) {
        let Some(out) = self.take_outstanding(id) else {
            return; // answered after its timeout, or a duplicate
        };
        self.rtt.sample(now.saturating_since(out.sent));
        let peer = out.peer;
        match out.purpose {
            Purpose::EvictionPing => {
                if matches!(response, Response::Pong) {
                    self.table.finish_eviction_ping(&peer.key, true, now);
                } else {
                    self.eviction_failed(now, &peer);
                }
            }
            Purpose::Probe => self.observe(now, peer),
            Purpose::Replicate => {
                let key = peer.key;
                self.observe(now, peer);
                self.replicated(now, &key);
            }
            Purpose::Store { query } => {
                let stored = match &response {
                    Response::Stored => true,
                    Response::StoredBatch { refused } => refused.is_empty(),
                    _ => false,
                };
                if self.leave.is_none() {
                    self.observe(now, peer);
                }
                self.store_answered(now, query, stored);
            }
            Purpose::StoreBatch { batch } => {
                let refused = match response {
                    Response::StoredBatch { refused } => Some(refused),
                    _ => None,
                };
                if refused.is_some() && self.leave.is_none() {
                    self.observe(now, peer);
                }
                self.batch_stored(now, batch, id, refused);
            }
            Purpose::Lookup { query, path, attempt } => {
                self.lookup_answered(now, id, query, path, attempt, peer, response)
            }
        }
    }

    /// Request `id` failed: the connection broke, or the peer refused it.
    pub fn handle_failure(&mut self, now: Instant, id: RequestId) {
        let Some(out) = self.take_outstanding(id) else { return };
        self.request_failed(now, id, out);
    }

    /// Time passed: expire requests and run due maintenance.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.stalls.first() {
            if at > now {
                break;
            }
            self.stalls.remove(&(at, id));
            self.request_stalled(now, id);
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(out) = self.take_outstanding(id) {
                self.request_failed(now, id, out);
            }
        }
        if self.maintenance_at <= now {
            self.maintenance_at = now + self.config.maintenance_interval;
            self.maintain(now);
        }
    }

    // ----- outputs --------------------------------------------------------

    /// The next request to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<A>> {
        let next = self.transmits.pop_front();
        if next.is_none() && self.transmits.capacity() > IDLE_QUEUE_CAPACITY {
            // A burst (a bootstrap, a hand-off) is over: give its memory
            // back, which adds up over a million simulated peers.
            self.transmits = VecDeque::new();
        }
        next
    }

    /// The next event for the user.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<A>> {
        let next = self.events.pop_front();
        if next.is_none() && self.events.capacity() > IDLE_QUEUE_CAPACITY {
            self.events = VecDeque::new();
        }
        next
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let request = self.deadlines.first().map(|&(t, _)| t);
        let stall = self.stalls.first().map(|&(t, _)| t);
        let next = [request, stall]
            .into_iter()
            .flatten()
            .fold(self.maintenance_at, Instant::min);
        Some(next)
    }

    // ----- checks ---------------------------------------------------------

    /// Checks internal invariants; the simulator calls this as it runs.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.table.check_invariants()?;
        if self.outstanding.len() != self.deadlines.len() {
            return Err(format!(
                "{} requests outstanding but {} deadlines",
                self.outstanding.len(),
                self.deadlines.len()
            ));
        }
        let stalling = self.outstanding.values().filter(|o| o.stall_at.is_some()).count();
        if stalling != self.stalls.len() {
            return Err(format!(
                "{stalling} lookup steps may stall but {} stall timers",
                self.stalls.len()
            ));
        }
        if self.queries.len() > self.config.max_queries {
            return Err("more queries than max_queries".into());
        }
        if self.store.len() > self.config.store.max_records {
            return Err("record store over its bound".into());
        }
        let mut replicating: BTreeMap<Key, usize> = BTreeMap::new();
        for out in self.outstanding.values() {
            if matches!(out.purpose, Purpose::Replicate) {
                *replicating.entry(out.peer.key).or_default() += 1;
            }
        }
        let counted: BTreeMap<Key, usize> = self
            .handoffs_in_flight()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (*k, n))
            .collect();
        if counted != replicating {
            return Err(format!(
                "replication requests outstanding {replicating:?} but counted {counted:?}"
            ));
        }
        self.store.check_invariants()
    }
}

/// A deserialized core's settings until [`Overlay::resume`]: they refuse
/// every signature.
fn detached_config() -> Arc<Config> {
    Arc::new(Config::new(crate::record::Verifier(|_, _, _| false)))
}

/// A deserialized core's signer until [`Overlay::resume`]: it signs
/// nothing any peer accepts.
fn detached_signer() -> Box<dyn Signer> {
    #[derive(Debug)]
    struct Detached;
    impl Signer for Detached {
        fn public_key(&self) -> &[u8] {
            &[]
        }
        fn sign(&self, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
    }
    Box::new(Detached)
}

/// Drops the empty root node a `BTreeMap` keeps after its last removal: a
/// few hundred bytes per map, which add up over a million simulated peers.
fn release_if_empty<K, V>(map: &mut BTreeMap<K, V>) {
    if map.is_empty() {
        *map = BTreeMap::new();
    }
}
