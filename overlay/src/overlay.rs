//! The overlay core: one peer's Kademlia state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::lookup::Lookup;
use crate::query::{Query, QueryKind};
use crate::record::{AnyRecord, MAX_VALUE_BYTES, PutOutcome, RecordStore, Signer};
use crate::routing::{Failed, Observed, RoutingTable};
use crate::rtt::RttEstimate;
use crate::wire::{MAX_BATCH_RECORDS, MAX_MESSAGE_BYTES};
use crate::{
    Addr, CommandError, Config, ConfigError, Event, Instant, Key, Mode, PeerInfo, ProviderRecord, QueryId, QueryStats,
    RecordError, Request, RequestId, Response, Rng, Transmit, ValueRecord,
};

/// Output queues keep at most this much capacity once drained.
const IDLE_QUEUE_CAPACITY: usize = 4;
/// A record holder outside the record's home replicates it this many times
/// less often than a member.
pub(crate) const OUTSIDE_REPLICATE_FACTOR: u32 = 4;

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

/// A value this peer publishes itself and so re-signs and re-puts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct PublishedValue {
    value: Vec<u8>,
    /// Version of the last signed record; the next is larger.
    seq: u64,
    /// How long each signed version lives.
    lifetime: std::time::Duration,
    /// When to republish.
    next: Instant,
}

/// A [`Overlay::provide_many`] batch: keys are placed at their homes a
/// range at a time, one lookup per range.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Batch {
    /// Keys not yet placed, in key order.
    remaining: BTreeSet<Key>,
    /// The running lookup and the key it looks up.
    lookup: Option<(QueryId, Key)>,
    /// Per key: home members it was sent to (or stored locally), and how
    /// many confirmed.
    homes: BTreeMap<Key, (u8, u8)>,
    /// Keys carried by each store request awaiting its answer.
    sent: BTreeMap<RequestId, Vec<Key>>,
    lookups: u32,
    stores: u32,
    started: Instant,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Leave {
    query: QueryId,
    pending: usize,
    handed_off: usize,
    failed: usize,
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
    leave: Option<Leave>,
    batches: BTreeMap<QueryId, Batch>,
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

    /// The `r` peers this peer believes form the home of `key`, counting
    /// itself when it is one of them; closest first.
    /// Peers that declined `key` ([`decline`](Self::decline)) are left out:
    /// the next peers out take their places.
    pub fn home_of(&self, key: &Key) -> Vec<PeerInfo<A>> {
        let r = self.config.replication;
        let decliners = self.decliners(key);
        let mut home = self.table.closest(key, r + decliners.len(), None);
        home.retain(|p| !decliners.contains(&p.key));
        home.truncate(r);
        if decliners.contains(&self.local.key) {
            return home;
        }
        let own = self.local.key.distance(key);
        let pos = home
            .iter()
            .position(|p| p.key.distance(key) > own)
            .unwrap_or(home.len());
        if pos < r {
            home.insert(pos, self.local.clone());
            home.truncate(r);
        }
        home
    }

    /// Whether `peer` belongs to the home of `key` as this peer sees it:
    /// it has not declined the key, and fewer than `replication` peers this
    /// one knows (itself included) that have not declined it are nearer.
    /// The same answer as looking for `peer` in [`home_of`](Self::home_of),
    /// without building the home.
    pub fn in_home(&self, key: &Key, peer: &Key) -> bool {
        self.among_nearest(key, peer, self.config.replication)
    }

    /// Whether this peer belongs to the home of `key`, as its table sees it.
    pub fn is_home_member(&self, key: &Key) -> bool {
        self.is_member_of(key, self.config.replication)
    }

    /// Whether this peer is among the `n` peers nearest `key` that have not
    /// declined it, as its table sees it: a resource's home of `n` copies.
    pub fn is_member_of(&self, key: &Key, n: usize) -> bool {
        self.among_nearest(key, &self.local.key, n)
    }

    /// The peers that declined `key`, as far as the records held here say
    /// (this one included if it declines it: it knows its own declines
    /// whatever its store holds).
    pub fn decliners(&self, key: &Key) -> Vec<Key> {
        let mut decliners = self.store.decliners(key);
        if self.declining.contains(key) && !decliners.contains(&self.local.key) {
            decliners.push(self.local.key);
        }
        decliners
    }

    fn among_nearest(&self, key: &Key, peer: &Key, n: usize) -> bool {
        let decliners = self.decliners(key);
        if n == 0 || decliners.contains(peer) {
            return false;
        }
        let distance = peer.distance(key);
        let local_nearer =
            *peer != self.local.key && !decliners.contains(&self.local.key) && self.local.key.distance(key) < distance;
        usize::from(local_nearer) + self.table.count_closer_except(key, &distance, n, &decliners) < n
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
            Purpose::Probe | Purpose::Replicate => {
                self.observe(now, peer);
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

    // ----- commands -------------------------------------------------------

    /// Joins the overlay through `seeds` (bootstrap peers, peers found by
    /// mDNS, or remembered ones): a lookup for the local key, then a refresh
    /// of every bucket farther than the closest neighbour found (and not
    /// deeper than the k-th closest found: those the lookup saw whole) that
    /// holds fewer than k/2 live peers. A peer that restarts with the peers it
    /// remembers skips the buckets they already fill: their refresh would
    /// find what it knows and cost a lookup each.
    pub fn bootstrap(&mut self, now: Instant, seeds: Vec<PeerInfo<A>>) -> Result<QueryId, CommandError> {
        for seed in seeds {
            self.add_peer(now, seed);
        }
        self.start_query(now, self.local.key, QueryKind::Bootstrap)
    }

    /// Adds a peer the driver learned about (mDNS, configuration).
    pub fn add_peer(&mut self, now: Instant, peer: PeerInfo<A>) {
        if peer.addr.matches_key(&peer.key) {
            self.observe(now, peer);
        }
    }

    /// Takes back records saved by an earlier run of this peer: each is
    /// verified and stored as if a home member had sent it (expired or
    /// forged ones are dropped), then replicated on the usual schedule.
    /// Returns how many were kept.
    pub fn restore_records(
        &mut self,
        now: Instant,
        values: Vec<ValueRecord>,
        providers: Vec<ProviderRecord<A>>,
    ) -> usize {
        let records = values
            .into_iter()
            .map(AnyRecord::Value)
            .chain(providers.into_iter().map(AnyRecord::Provider));
        records.filter(|r| self.accept(now, r.clone()).is_ok()).count()
    }

    /// Forgets a peer the driver knows has left.
    pub fn remove_peer(&mut self, now: Instant, key: &Key) {
        let Some(peer) = self.table.peers().find(|p| p.key == *key) else {
            return;
        };
        match self.table.remove(key, now) {
            Failed::Replaced(replacement) => {
                self.events.push_back(Event::PeerRemoved { peer });
                self.peer_gone(now, key);
                self.peer_arrived(now, replacement);
            }
            Failed::Removed => {
                self.events.push_back(Event::PeerRemoved { peer });
                self.peer_gone(now, key);
            }
            Failed::Unknown | Failed::Counted | Failed::Stale => {}
        }
    }

    /// Looks up the k peers closest to `target`.
    pub fn find_node(&mut self, now: Instant, target: Key) -> Result<QueryId, CommandError> {
        self.start_query(now, target, QueryKind::FindNode)
    }

    /// Looks up the value record at `key`.
    pub fn get_value(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        // A copy held here counts like one found on the way (it was
        // verified when it was stored).
        let found = self.store.value(&key, now).cloned();
        let valid = usize::from(found.is_some());
        self.start_query(now, key, QueryKind::GetValue { found, valid })
    }

    /// Looks up providers of `key`.
    pub fn get_providers(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        let found = self.store.providers(&key, now, self.config.max_providers);
        self.start_query(now, key, QueryKind::GetProviders { found })
    }

    /// Signs `value` as the record at `key` and stores it at the key's home.
    /// The core republishes it every `republish_interval`; each version lives
    /// `record_ttl`.
    pub fn put_value(&mut self, now: Instant, key: Key, value: Vec<u8>) -> Result<QueryId, CommandError> {
        self.put_value_for(now, key, value, self.config.record_ttl)
    }

    /// As [`put_value`](Self::put_value), but the record lives `lifetime`
    /// (at most `max_value_lifetime`): it outlasts this peer by that long if
    /// the peer goes away for good. Republished versions get the same.
    pub fn put_value_for(
        &mut self,
        now: Instant,
        key: Key,
        value: Vec<u8>,
        lifetime: std::time::Duration,
    ) -> Result<QueryId, CommandError> {
        let max = self.config.max_value_lifetime.max(self.config.record_ttl);
        if lifetime > max || lifetime.is_zero() {
            return Err(CommandError::BadLifetime {
                key,
                secs: lifetime.as_secs(),
                max_secs: max.as_secs(),
            });
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(CommandError::ValueTooLarge {
                key,
                bytes: value.len(),
                max: MAX_VALUE_BYTES,
            });
        }
        let seq = self.next_seq(now, &key);
        let record = self.sign_value(now, key, value.clone(), seq, lifetime);
        let id = self.start_query(now, key, QueryKind::PutValue { record })?;
        let next = now + self.config.republish_interval;
        self.published_values.insert(
            key,
            PublishedValue {
                value,
                seq,
                lifetime,
                next,
            },
        );
        Ok(id)
    }

    /// Announces at the home of `key` that this peer provides it, and keeps
    /// announcing until [`stop_providing`](Self::stop_providing).
    pub fn start_providing(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        self.declining.remove(&key);
        self.announce(now, key)
    }

    /// Says at `key`'s home that this peer steps aside from it (it will not
    /// keep the resource: no room): a declined provider record, re-announced
    /// like a provider's until [`stop_providing`](Self::stop_providing) or
    /// [`start_providing`](Self::start_providing). Every peer that holds it
    /// leaves this one out of the home ([`home_of`](Self::home_of),
    /// [`is_member_of`](Self::is_member_of)), so the next peer out takes its
    /// place; providers lookups never list it.
    pub fn decline(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        let fresh = self.declining.insert(key);
        let started = self.announce(now, key);
        if started.is_err() && fresh {
            self.declining.remove(&key);
        }
        started
    }

    /// The keys this peer declines.
    pub fn declining(&self) -> impl Iterator<Item = &Key> {
        self.declining.iter()
    }

    /// The keys this peer announces itself as provider of (declined ones
    /// included), in key order.
    pub fn providing(&self) -> impl Iterator<Item = &Key> {
        self.published_providers.keys()
    }

    fn announce(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        let record = self.sign_provider(now, key);
        let id = self.start_query(now, key, QueryKind::AddProvider { record })?;
        let next = now + self.config.republish_interval;
        self.published_providers.insert(key, next);
        Ok(id)
    }

    /// Announces many keys at once, as [`start_providing`](Self::start_providing)
    /// does one, but batched by home: the keys are taken in key order, a
    /// lookup for the first unplaced key finds the k peers closest to it, and
    /// every following key whose home provably lies among those peers is
    /// placed too (XOR's triangle inequality: if the r-th closest of them to
    /// key y is nearer to y than the farthest of the k is to the looked-up
    /// key x, less d(x, y), no peer outside can be closer). Each home member
    /// then gets one message per [`MAX_BATCH_RECORDS`] keys. In a swarm of at
    /// most k peers one lookup places every key. Ends with
    /// [`Event::ProvidedMany`]; the keys are re-announced together every
    /// `republish_interval`.
    pub fn provide_many(&mut self, now: Instant, keys: Vec<Key>) -> Result<QueryId, CommandError> {
        for key in &keys {
            self.declining.remove(key);
        }
        self.announce_many(now, keys)
    }

    /// [`provide_many`](Self::provide_many) keeping each key's flag: the
    /// republishing of provided and declined keys alike.
    fn announce_many(&mut self, now: Instant, keys: Vec<Key>) -> Result<QueryId, CommandError> {
        if self.leave.is_some() {
            return Err(CommandError::Leaving);
        }
        let id = self.next_query_id();
        let next = now + self.config.republish_interval;
        for key in &keys {
            self.published_providers.insert(*key, next);
        }
        let batch = Batch {
            remaining: keys.into_iter().collect(),
            lookup: None,
            homes: BTreeMap::new(),
            sent: BTreeMap::new(),
            lookups: 0,
            stores: 0,
            started: now,
        };
        self.batches.insert(id, batch);
        self.batch_next(now, id);
        Ok(id)
    }

    /// Stops re-announcing `key`; the record lapses at its home when it expires.
    pub fn stop_providing(&mut self, key: &Key) {
        self.published_providers.remove(key);
        self.declining.remove(key);
    }

    /// Stops republishing the value this peer put at `key`; the record lapses
    /// at its home when it expires.
    pub fn stop_publishing(&mut self, key: &Key) {
        self.published_values.remove(key);
    }

    /// A version for a new record at `key`: the signing time in
    /// microseconds, but always above the last version this peer signed for
    /// the key, so two puts in one microsecond (or after the clock stepped
    /// back) still order.
    fn next_seq(&self, now: Instant, key: &Key) -> u64 {
        let last = self.published_values.get(key).map_or(0, |p| p.seq);
        now.as_micros().max(last.saturating_add(1))
    }

    /// Leaves gracefully: hands every held record to the rest of its home and
    /// reports [`Event::Left`] when they have answered. Stops serving.
    pub fn leave(&mut self, now: Instant) -> QueryId {
        if let Some(leave) = &self.leave {
            return leave.query;
        }
        let query = self.next_query_id();
        let mut leave = Leave {
            query,
            pending: 0,
            handed_off: 0,
            failed: 0,
        };
        for key in self.store.keys() {
            let records = self.store.records_at(&key, now);
            let home = self.table.closest(&key, self.config.replication, None);
            let requests = self.store_requests(records);
            for member in home {
                for request in &requests {
                    self.send(now, member.clone(), request.clone(), Purpose::Store { query });
                    leave.pending += 1;
                }
            }
        }
        self.published_values.clear();
        self.published_providers.clear();
        self.declining.clear();
        for (id, _) in std::mem::take(&mut self.queries) {
            self.events.push_back(Event::Aborted { query: id });
        }
        for (id, _) in std::mem::take(&mut self.bootstraps) {
            self.events.push_back(Event::Aborted { query: id });
        }
        for (id, _) in std::mem::take(&mut self.batches) {
            self.events.push_back(Event::Aborted { query: id });
        }
        let done = leave.pending == 0;
        self.leave = Some(leave);
        if done {
            self.finish_leave();
        }
        query
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

    // ----- internals: requests ---------------------------------------------

    fn next_query_id(&mut self) -> QueryId {
        self.next_query += 1;
        QueryId(self.next_query)
    }

    fn send(&mut self, now: Instant, to: PeerInfo<A>, request: Request<A>, purpose: Purpose) -> RequestId {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        let deadline = now + self.config.request_timeout;
        self.deadlines.insert((deadline, id));
        let stall_at = match purpose {
            Purpose::Lookup { .. } => {
                let at = now + self.rtt.stall_timeout(self.config.request_timeout);
                self.stalls.insert((at, id));
                Some(at)
            }
            _ => None,
        };
        self.outstanding.insert(
            id,
            Outstanding {
                peer: to.clone(),
                purpose,
                sent: now,
                deadline,
                stall_at,
            },
        );
        self.transmits.push_back(Transmit {
            id,
            to,
            mode: self.config.mode,
            request,
        });
        id
    }

    fn take_outstanding(&mut self, id: RequestId) -> Option<Outstanding<A>> {
        let out = self.outstanding.remove(&id)?;
        self.deadlines.remove(&(out.deadline, id));
        if let Some(at) = out.stall_at {
            self.stalls.remove(&(at, id));
        }
        release_if_empty(&mut self.outstanding);
        if self.deadlines.is_empty() {
            self.deadlines = BTreeSet::new();
        }
        if self.stalls.is_empty() {
            self.stalls = BTreeSet::new();
        }
        Some(out)
    }

    /// A lookup step has not answered within the stall timeout: its lookup
    /// stops waiting for it (a late answer is still used).
    fn request_stalled(&mut self, now: Instant, id: RequestId) {
        let Some(out) = self.outstanding.get_mut(&id) else {
            return;
        };
        out.stall_at = None;
        let Purpose::Lookup { query, path, .. } = out.purpose else {
            return;
        };
        let peer = out.peer.clone();
        let Some(q) = self.queries.get_mut(&query) else { return };
        if q.lookup.on_stall(path, &peer.key) {
            // Perhaps only a message was lost: ask once more, and keep waiting.
            q.stats.requests += 1;
            let attempt = q.lookup.attempts(path, &peer.key);
            let request = lookup_request(&q.kind, q.lookup.target());
            self.send(now, peer, request, Purpose::Lookup { query, path, attempt });
        } else {
            self.drive(now, query);
        }
    }

    fn request_failed(&mut self, now: Instant, id: RequestId, out: Outstanding<A>) {
        let peer = out.peer;
        match out.purpose {
            Purpose::EvictionPing => self.eviction_failed(now, &peer),
            Purpose::Lookup { query, path, attempt } => {
                self.count_failure(now, &peer);
                if let Some(q) = self.queries.get_mut(&query) {
                    q.stats.failures += 1;
                    q.lookup.on_failure(path, &peer.key, attempt);
                    self.drive(now, query);
                }
            }
            Purpose::Store { query } => {
                self.count_failure(now, &peer);
                self.store_answered(now, query, false);
            }
            Purpose::StoreBatch { batch } => {
                self.count_failure(now, &peer);
                self.batch_stored(now, batch, id, None);
            }
            Purpose::Probe | Purpose::Replicate => self.count_failure(now, &peer),
        }
    }

    fn count_failure(&mut self, now: Instant, peer: &PeerInfo<A>) {
        match self.table.record_failure(&peer.key, now) {
            Failed::Replaced(replacement) => {
                self.events.push_back(Event::PeerRemoved { peer: peer.clone() });
                self.peer_gone(now, &peer.key);
                self.peer_arrived(now, replacement);
            }
            Failed::Removed => {
                self.events.push_back(Event::PeerRemoved { peer: peer.clone() });
                self.peer_gone(now, &peer.key);
            }
            // Skipped by lookups and homes from now on: its records need
            // another member at once.
            Failed::Stale => self.peer_gone(now, &peer.key),
            Failed::Unknown | Failed::Counted => {}
        }
    }

    fn eviction_failed(&mut self, now: Instant, peer: &PeerInfo<A>) {
        match self.table.finish_eviction_ping(&peer.key, false, now) {
            Some((evicted, newcomer)) => {
                self.events.push_back(Event::PeerRemoved { peer: evicted.clone() });
                self.peer_gone(now, &evicted.key);
                self.peer_arrived(now, newcomer);
            }
            None => self.count_failure(now, peer),
        }
    }

    // ----- internals: routing table ----------------------------------------

    fn observe(&mut self, now: Instant, peer: PeerInfo<A>) {
        if self.leave.is_some() {
            return; // a leaving peer starts no new work
        }
        match self.table.observe(peer.clone(), now) {
            Observed::Inserted => self.peer_arrived(now, peer),
            Observed::Replaced(old) => {
                self.events.push_back(Event::PeerRemoved { peer: old.clone() });
                self.peer_gone(now, &old.key);
                self.peer_arrived(now, peer);
            }
            Observed::PingOldest(oldest) => {
                self.send(now, oldest, Request::Ping, Purpose::EvictionPing);
            }
            Observed::Local | Observed::Refreshed | Observed::Queued => {}
        }
    }

    /// A peer entered the table: hand it the records whose home it joined.
    fn peer_arrived(&mut self, now: Instant, peer: PeerInfo<A>) {
        self.events.push_back(Event::PeerAdded { peer: peer.clone() });
        if self.store.is_empty() {
            return;
        }
        for key in self.store.keys() {
            if self.in_home(&key, &peer.key) {
                let next = now + self.config.replicate_interval;
                let records = self.store.records_at(&key, next);
                for request in self.store_requests(records) {
                    self.send(now, peer.clone(), request, Purpose::Replicate);
                }
            }
        }
    }

    /// A peer left the table: where it was in a home with us, the home now
    /// has a new member. We do not know which member lacks the records, so
    /// all of them get them again; those that hold them answer at once.
    fn peer_gone(&mut self, now: Instant, gone: &Key) {
        if self.store.is_empty() {
            return;
        }
        for key in self.store.keys() {
            // It was a member if it would be one now, back in the table.
            if !self.in_home(&key, gone) || !self.is_home_member(&key) {
                continue;
            }
            let home = self.home_of(&key);
            let next = now + self.config.replicate_interval;
            let records = self.store.records_at(&key, next);
            self.send_to_home(now, &home, records);
        }
    }

    /// Sends `records` (all at one key) to every member of `home` but this
    /// peer, provider records batched.
    fn send_to_home(&mut self, now: Instant, home: &[PeerInfo<A>], records: Vec<AnyRecord<A>>) {
        let local = self.local.key;
        let requests = self.store_requests(records);
        for member in home.iter().filter(|m| m.key != local) {
            for request in &requests {
                self.send(now, member.clone(), request.clone(), Purpose::Replicate);
            }
        }
    }

    /// The store messages that carry `records`: one per value record, and
    /// the provider records in as few `AddProviders` batches as fit.
    fn store_requests(&self, records: Vec<AnyRecord<A>>) -> Vec<Request<A>> {
        let mut out = Vec::new();
        let mut providers = Vec::new();
        for record in records {
            match record {
                AnyRecord::Value(record) => out.push(Request::PutValue { record }),
                AnyRecord::Provider(record) => providers.push(record),
            }
        }
        if providers.len() == 1 {
            out.extend(providers.pop().map(|record| Request::AddProvider { record }));
        } else if !providers.is_empty() {
            let chunk = self.batch_chunk(providers.first());
            for part in providers.chunks(chunk) {
                out.push(Request::AddProviders { records: part.to_vec() });
            }
        }
        out
    }

    // ----- internals: queries ----------------------------------------------

    fn start_query(&mut self, now: Instant, target: Key, kind: QueryKind<A>) -> Result<QueryId, CommandError> {
        if self.leave.is_some() {
            return Err(CommandError::Leaving);
        }
        if self.queries.len() >= self.config.max_queries {
            return Err(CommandError::TooManyQueries {
                max: self.config.max_queries,
            });
        }
        let id = self.next_query_id();
        let seeds = self.table.closest(&target, self.config.k, None);
        self.table.touch(&target, now);
        let lookup = Lookup::new(
            target,
            seeds,
            self.config.k,
            self.config.alpha,
            self.config.disjoint_paths,
        );
        self.queries.insert(
            id,
            Query {
                kind,
                lookup,
                started: now,
                stats: QueryStats::default(),
                storing: None,
            },
        );
        self.drive(now, id);
        Ok(id)
    }

    /// Sends what the lookup wants sent, and finishes it when it is done.
    fn drive(&mut self, now: Instant, id: QueryId) {
        let Some(query) = self.queries.get_mut(&id) else { return };
        if query.storing.is_some() {
            return;
        }
        let target = query.lookup.target();
        let mut sends = Vec::new();
        while let Some((path, peer)) = query.lookup.next_query() {
            query.stats.requests += 1;
            sends.push((peer, lookup_request(&query.kind, target), path));
        }
        let finished = query.lookup.is_finished();
        for (peer, request, path) in sends {
            self.send(
                now,
                peer,
                request,
                Purpose::Lookup {
                    query: id,
                    path,
                    attempt: 1,
                },
            );
        }
        if finished {
            self.lookup_finished(now, id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn lookup_answered(
        &mut self,
        now: Instant,
        request: RequestId,
        id: QueryId,
        path: usize,
        attempt: u8,
        peer: PeerInfo<A>,
        response: Response<A>,
    ) {
        let (closer, record, providers) = match response {
            Response::Nodes { closer } => (closer, None, Vec::new()),
            Response::Value { record, closer } => (closer, record, Vec::new()),
            Response::Providers { providers, closer } => (closer, None, providers),
            Response::Pong | Response::Stored | Response::Rejected(_) | Response::StoredBatch { .. } => {
                // Not an answer to a lookup step: the peer misbehaves.
                let purpose = Purpose::Lookup {
                    query: id,
                    path,
                    attempt,
                };
                return self.request_failed(
                    now,
                    request,
                    Outstanding {
                        peer,
                        purpose,
                        sent: now,
                        deadline: now,
                        stall_at: None,
                    },
                );
            }
        };
        self.observe(now, peer.clone());
        let local = self.local.key;
        let closer: Vec<PeerInfo<A>> = closer
            .into_iter()
            .take(self.config.k)
            .filter(|p| p.key != local && p.addr.matches_key(&p.key))
            .collect();
        let (verifier, max_life) = (self.config.verifier, self.max_value_lifetime());
        let provider_life = self.max_lifetime();
        let (quorum, max_providers) = (self.config.value_quorum, self.config.max_providers);
        let Some(query) = self.queries.get_mut(&id) else { return };
        query.stats.responses += 1;
        let mut done_early = false;
        match &mut query.kind {
            QueryKind::GetValue { found, valid } => {
                if let Some(record) =
                    record.filter(|r| r.key == query.lookup.target() && r.verify(verifier, now, max_life).is_ok())
                {
                    *valid += 1;
                    // Versions order one publisher's records; a record by
                    // another publisher never displaces the first found (the
                    // home keeps the first writer's record the same way).
                    if found
                        .as_ref()
                        .is_none_or(|f| f.publisher == record.publisher && record.seq > f.seq)
                    {
                        *found = Some(record);
                    }
                    done_early = *valid >= quorum;
                }
            }
            QueryKind::GetProviders { found } => {
                for p in providers {
                    if p.key == query.lookup.target()
                        && !p.declined
                        && !found.iter().any(|f| f.provider.key == p.provider.key)
                        && p.verify(verifier, now, provider_life).is_ok()
                    {
                        found.push(p);
                    }
                }
                done_early = found.len() >= max_providers;
            }
            _ => {}
        }
        query.lookup.on_success(path, &peer.key, closer);
        if done_early {
            self.lookup_finished(now, id);
        } else {
            self.drive(now, id);
        }
    }

    fn lookup_finished(&mut self, now: Instant, id: QueryId) {
        let Some(mut query) = self.queries.remove(&id) else {
            return;
        };
        release_if_empty(&mut self.queries);
        let (peers, hops) = query.lookup.result(self.config.k);
        query.stats.hops = hops;
        query.stats.duration = now.saturating_since(query.started);
        let stats = query.stats;
        let target = query.lookup.target();
        match query.kind {
            QueryKind::FindNode => self.events.push_back(Event::FoundNodes {
                query: id,
                target,
                peers,
                stats,
            }),
            QueryKind::GetValue { found, .. } => self.events.push_back(Event::GotValue {
                query: id,
                key: target,
                record: found,
                stats,
            }),
            QueryKind::GetProviders { found, .. } => self.events.push_back(Event::GotProviders {
                query: id,
                key: target,
                providers: found,
                stats,
            }),
            QueryKind::Bootstrap => self.bootstrap_refresh(now, id, &peers, stats),
            QueryKind::Refresh { bootstrap } => {
                if let Some(parent) = bootstrap {
                    self.refresh_done(parent);
                }
            }
            QueryKind::PutValue { ref record } => {
                let record = AnyRecord::Value(record.clone());
                self.start_storing(now, id, query, peers, record);
            }
            QueryKind::AddProvider { ref record } => {
                let record = AnyRecord::Provider(record.clone());
                self.start_storing(now, id, query, peers, record);
            }
            QueryKind::BatchLookup { batch } => self.batch_place(now, batch, id, &peers),
        }
    }

    /// The store phase of a put: the home is the `r` closest among the peers
    /// that answered and this peer itself.
    fn start_storing(
        &mut self,
        now: Instant,
        id: QueryId,
        mut query: Query<A>,
        answered: Vec<PeerInfo<A>>,
        record: AnyRecord<A>,
    ) {
        let target = query.lookup.target();
        let r = self.config.replication;
        let own = self.local.key.distance(&target);
        // The home: the nearest peers, this one included, up to `r` that
        // have not declined the key (those that have are sent the record
        // too, on the way; a decline being stored counts as one).
        let mut declined = self.store.decliners(&target);
        let own_decline = match &record {
            AnyRecord::Provider(p) if p.declined => {
                declined.push(p.provider.key);
                p.provider.key == self.local.key
            }
            _ => false,
        };
        let server = self.config.mode == Mode::Server;
        let mut members = Vec::new();
        let (mut counted, mut self_in_home) = (0, false);
        for peer in answered {
            if counted >= r {
                break;
            }
            if server && !self_in_home && own < peer.key.distance(&target) {
                self_in_home = true;
                counted += usize::from(!declined.contains(&self.local.key));
                if counted >= r {
                    break;
                }
            }
            counted += usize::from(!declined.contains(&peer.key));
            members.push(peer);
        }
        self_in_home |= server && counted < r;
        // A peer always keeps its own decline: it is how it knows.
        let stored = usize::from((self_in_home || own_decline) && self.accept(now, record.clone()).is_ok());
        let request = store_request(record);
        query.storing = Some((members.len(), stored));
        query.stats.requests += members.len() as u32;
        for member in members {
            self.send(now, member, request.clone(), Purpose::Store { query: id });
        }
        self.queries.insert(id, query);
        self.maybe_finish_put(now, id);
    }

    fn store_answered(&mut self, now: Instant, id: QueryId, stored: bool) {
        if let Some(leave) = self.leave.as_mut().filter(|l| l.query == id) {
            leave.pending -= 1;
            if stored {
                leave.handed_off += 1;
            } else {
                leave.failed += 1;
            }
            if leave.pending == 0 {
                self.finish_leave();
            }
            return;
        }
        let Some(query) = self.queries.get_mut(&id) else { return };
        if let Some((pending, count)) = query.storing.as_mut() {
            *pending -= 1;
            if stored {
                *count += 1;
                query.stats.responses += 1;
            } else {
                query.stats.failures += 1;
            }
        }
        self.maybe_finish_put(now, id);
    }

    fn maybe_finish_put(&mut self, now: Instant, id: QueryId) {
        let Some(query) = self.queries.get(&id) else { return };
        let Some((0, stored)) = query.storing else { return };
        let Some(mut query) = self.queries.remove(&id) else {
            return;
        };
        release_if_empty(&mut self.queries);
        query.stats.duration = now.saturating_since(query.started);
        self.events.push_back(Event::Put {
            query: id,
            key: query.lookup.target(),
            stored,
            stats: query.stats,
        });
    }

    /// Starts the lookup for the next unplaced key of a batch, or ends the
    /// batch when nothing is left to place or to confirm.
    fn batch_next(&mut self, now: Instant, id: QueryId) {
        let Some(batch) = self.batches.get(&id) else { return };
        if batch.lookup.is_some() {
            return;
        }
        if let Some(&first) = batch.remaining.first() {
            match self.start_query(now, first, QueryKind::BatchLookup { batch: id }) {
                Ok(query) => {
                    if let Some(batch) = self.batches.get_mut(&id) {
                        batch.lookups += 1;
                        // A lookup that finished at once (no peers) has
                        // placed its keys already.
                        if self.queries.contains_key(&query) {
                            batch.lookup = Some((query, first));
                        }
                    }
                    return self.batch_next(now, id);
                }
                Err(_) => {
                    // The query table is full: what is left stays unplaced
                    // this time and goes out with the next republish.
                    if let Some(batch) = self.batches.get_mut(&id) {
                        batch.remaining.clear();
                    }
                }
            }
        }
        let Some(batch) = self.batches.get(&id) else { return };
        if batch.remaining.is_empty() && batch.lookup.is_none() && batch.sent.is_empty() {
            let Some(batch) = self.batches.remove(&id) else { return };
            release_if_empty(&mut self.batches);
            let keys = batch.homes.len();
            let placed_everywhere = batch.homes.values().filter(|(sent, ok)| ok >= sent && *ok > 0).count();
            let unconfirmed = batch.homes.values().filter(|(_, ok)| *ok == 0).count();
            self.events.push_back(Event::ProvidedMany {
                query: id,
                keys,
                stored_everywhere: placed_everywhere,
                unconfirmed,
                lookups: batch.lookups,
                stores: batch.stores,
                duration: now.saturating_since(batch.started),
            });
        }
    }

    /// The lookup for a batch's first unplaced key found `peers`: place
    /// every key whose home is provably among them, and send the stores.
    fn batch_place(&mut self, now: Instant, id: QueryId, lookup: QueryId, peers: &[PeerInfo<A>]) {
        let Some(batch) = self.batches.get_mut(&id) else { return };
        let Some((_, x)) = batch.lookup.take_if(|(q, _)| *q == lookup).or_else(|| {
            // Finished inside `start_query` before its id was recorded.
            batch.remaining.first().map(|k| (lookup, *k))
        }) else {
            return;
        };
        let r = self.config.replication;
        // Farther than every peer the lookup did not return: the k-th
        // answer's distance, or unbounded if fewer than k peers answered.
        let bound = (peers.len() >= self.config.k)
            .then(|| peers.last().map(|p| p.key.distance(&x)))
            .flatten();
        let mut candidates: Vec<PeerInfo<A>> = peers.to_vec();
        if self.config.mode == Mode::Server {
            candidates.push(self.local.clone());
        }
        let mut placed: Vec<(Key, Vec<PeerInfo<A>>)> = Vec::new();
        for &y in batch.remaining.range(x..) {
            candidates.sort_by_key(|p| p.key.distance(&y));
            let home: Vec<PeerInfo<A>> = candidates.iter().take(r).cloned().collect();
            if let (Some(bound), Some(farthest)) = (bound, home.last()) {
                let certain = farthest
                    .key
                    .distance(&y)
                    .checked_add(&x.distance(&y))
                    .is_some_and(|reach| reach < bound);
                if !certain {
                    break;
                }
            }
            placed.push((y, home));
        }
        for (key, _) in &placed {
            batch.remaining.remove(key);
        }
        // One signed record per key; one message per member per chunk.
        let local = self.local.key;
        let mut per_member: BTreeMap<Key, (PeerInfo<A>, Vec<ProviderRecord<A>>)> = BTreeMap::new();
        let mut confirmed_here = Vec::new();
        for (key, home) in placed {
            let record = self.sign_provider(now, key);
            let mut here = false;
            for member in &home {
                if member.key == local {
                    here = self.accept(now, AnyRecord::Provider(record.clone())).is_ok();
                } else {
                    per_member
                        .entry(member.key)
                        .or_insert_with(|| (member.clone(), Vec::new()))
                        .1
                        .push(record.clone());
                }
            }
            confirmed_here.push((key, home.len() as u8, u8::from(here)));
        }
        let chunk = self.batch_chunk(per_member.values().flat_map(|(_, r)| r.first()).next());
        let mut sends = Vec::new();
        for (_, (member, records)) in per_member {
            for part in records.chunks(chunk) {
                sends.push((member.clone(), part.to_vec()));
            }
        }
        let Some(batch) = self.batches.get_mut(&id) else { return };
        for (key, members, ok) in confirmed_here {
            batch.homes.insert(key, (members, ok));
        }
        for (member, records) in sends {
            let keys = records.iter().map(|r| r.key).collect();
            let request = self.send(
                now,
                member,
                Request::AddProviders { records },
                Purpose::StoreBatch { batch: id },
            );
            if let Some(batch) = self.batches.get_mut(&id) {
                batch.stores += 1;
                batch.sent.insert(request, keys);
            }
        }
        self.batch_next(now, id);
    }

    /// How many provider records fit in one batched store message.
    fn batch_chunk(&self, sample: Option<&ProviderRecord<A>>) -> usize {
        let Some(sample) = sample else { return 1 };
        let one = crate::wire::encode_request(self.config.mode, &Request::AddProvider { record: sample.clone() })
            .map_or(MAX_MESSAGE_BYTES, |b| b.len());
        // Leave room for the envelope and for records with longer addresses.
        ((MAX_MESSAGE_BYTES * 3 / 4) / one.max(1)).clamp(1, MAX_BATCH_RECORDS)
    }

    /// A batched store was answered (`refused` lists what the member did not
    /// store) or failed (`None`).
    fn batch_stored(&mut self, now: Instant, id: QueryId, request: RequestId, refused: Option<Vec<u32>>) {
        let Some(batch) = self.batches.get_mut(&id) else { return };
        let Some(keys) = batch.sent.remove(&request) else {
            return;
        };
        if let Some(refused) = refused {
            let refused: BTreeSet<u32> = refused.into_iter().collect();
            for (i, key) in keys.iter().enumerate() {
                if !refused.contains(&(i as u32))
                    && let Some((_, ok)) = batch.homes.get_mut(key)
                {
                    *ok = ok.saturating_add(1);
                }
            }
        }
        self.batch_next(now, id);
    }

    fn finish_leave(&mut self) {
        if let Some(leave) = &self.leave {
            self.events.push_back(Event::Left {
                query: leave.query,
                handed_off: leave.handed_off,
                failed: leave.failed,
            });
        }
    }

    /// After the self-lookup: refresh every bucket farther out than the
    /// closest neighbour, so that the table covers the whole key space.
    fn bootstrap_refresh(&mut self, now: Instant, id: QueryId, found: &[PeerInfo<A>], stats: QueryStats) {
        let cpl = |p: &PeerInfo<A>| self.local.key.common_prefix_len(&p.key);
        // Every peer nearer than the k-th found is among those found: the
        // buckets deeper than that one's are complete already.
        let depth = match (found.first(), found.get(self.config.k - 1)) {
            (Some(first), Some(kth)) => cpl(first).min(cpl(kth) + 1),
            (Some(first), None) => cpl(first),
            _ => 0,
        };
        let filled = self.config.k.div_ceil(2);
        for bucket in 0..depth.min(self.table.bucket_count()) {
            if self.table.live_in_bucket(bucket) >= filled {
                continue;
            }
            let target = self.local.key.random_in_bucket(bucket, &self.rng.key());
            // A full query table skips a bucket; maintenance refreshes it later.
            let _ = self.start_query(now, target, QueryKind::Refresh { bootstrap: Some(id) });
        }
        // Refresh lookups that finished at once (no peers) already counted
        // down from zero; start from what is still running.
        let running = self
            .queries
            .values()
            .filter(|q| matches!(q.kind, QueryKind::Refresh { bootstrap: Some(b) } if b == id))
            .count();
        if running == 0 {
            self.events.push_back(Event::Bootstrapped {
                query: id,
                peers: self.table.len(),
                stats,
            });
        } else {
            self.bootstraps.insert(id, (running, stats));
        }
    }

    fn refresh_done(&mut self, parent: QueryId) {
        let Some((left, stats)) = self.bootstraps.get_mut(&parent) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            let stats = *stats;
            self.bootstraps.remove(&parent);
            release_if_empty(&mut self.bootstraps);
            self.events.push_back(Event::Bootstrapped {
                query: parent,
                peers: self.table.len(),
                stats,
            });
        }
    }

    // ----- internals: records ----------------------------------------------

    fn max_lifetime(&self) -> std::time::Duration {
        self.config.record_ttl + self.config.clock_skew_tolerance
    }

    fn max_value_lifetime(&self) -> std::time::Duration {
        self.config.max_value_lifetime.max(self.config.record_ttl) + self.config.clock_skew_tolerance
    }

    fn accept(&mut self, now: Instant, record: AnyRecord<A>) -> Result<PutOutcome, RecordError> {
        let (verifier, max_life) = (self.config.verifier, self.max_lifetime());
        let next = now + self.config.replicate_interval;
        if record.expires() > now && self.store.holds(&record) {
            // A copy of a record held here: only time has passed since it
            // was verified, and it has not expired.
            return match record {
                AnyRecord::Value(r) => self.store.put_value(r, now, next),
                AnyRecord::Provider(r) => self.store.put_provider(r, next),
            };
        }
        match record {
            AnyRecord::Value(r) => {
                r.verify(verifier, now, self.max_value_lifetime())?;
                self.store.put_value(r, now, next)
            }
            AnyRecord::Provider(r) => {
                r.verify(verifier, now, max_life)?;
                let (key, provider, declined) = (r.key, r.provider.key, r.declined);
                let was_declined = self.store.decliners(&key).contains(&provider);
                let outcome = self.store.put_provider(r, next)?;
                if outcome != PutOutcome::Unchanged && declined != was_declined {
                    self.rehome(now, &key, &provider);
                }
                Ok(outcome)
            }
        }
    }

    /// A peer declined `key` or took it back: the home changed, so a member
    /// sends the records at `key` to the home as it is now (the members
    /// that hold them answer at once). If every one of the nearest peers
    /// declined, none is a member: the spare holders' replication tells
    /// the new home, at a quarter of the members' pace.
    fn rehome(&mut self, now: Instant, key: &Key, provider: &Key) {
        // Only a member acts, and only for a peer near enough to have been
        // in the home: a stranger's declines for far keys cost nothing.
        let near = self.config.replication + self.store.decliners(key).len();
        if !self.is_home_member(key) || self.table.count_closer(key, &provider.distance(key), near) >= near {
            return;
        }
        let home = self.home_of(key);
        let records = self.store.records_at(key, now + self.config.replicate_interval);
        self.send_to_home(now, &home, records);
    }

    fn sign_value(
        &mut self,
        now: Instant,
        key: Key,
        value: Vec<u8>,
        seq: u64,
        lifetime: std::time::Duration,
    ) -> ValueRecord {
        ValueRecord::sign(key, value, seq, now + lifetime, self.signer.as_ref())
    }

    /// A provider record for `key` issued now. A decline lives two
    /// republish intervals, not `record_ttl`: re-announced while it holds,
    /// it lapses soon after this peer takes it back.
    fn sign_provider(&mut self, now: Instant, key: Key) -> ProviderRecord<A> {
        let declined = self.declining.contains(&key);
        let lifetime = if declined {
            (self.config.republish_interval * 2).min(self.config.record_ttl)
        } else {
            self.config.record_ttl
        };
        ProviderRecord::sign_as(
            key,
            self.local.clone(),
            now,
            now + lifetime,
            declined,
            self.signer.as_ref(),
        )
    }

    // ----- internals: maintenance ----------------------------------------

    fn maintain(&mut self, now: Instant) {
        if self.leave.is_some() {
            return;
        }
        self.store.remove_expired(now);
        self.replicate(now);
        self.republish(now);
        // Every peer in a bucket deeper than the k-th nearest neighbour's is
        // among the k nearest to any id that deep, so one lookup refreshes
        // all such buckets (at 10,000 peers, the last four or five, mostly
        // empty, each of which used to cost a lookup of its own).
        let k = self.config.k;
        let nearest = self.table.closest(&self.local.key, k, None);
        // (Not with fewer than k live peers known: a sparse table refreshes
        // every bucket.)
        let covered = nearest
            .get(k - 1)
            .map_or(usize::MAX, |p| self.local.key.common_prefix_len(&p.key) + 1);
        let mut idle = self.table.idle_buckets(now, self.config.refresh_interval);
        let mut deeper = Vec::new();
        if let Some(first_deep) = idle.iter().position(|b| *b >= covered) {
            deeper = idle.split_off(first_deep + 1);
        }
        for bucket in idle {
            let target = self.local.key.random_in_bucket(bucket, &self.rng.key());
            // Starting the lookup marks the bucket active; a full query table
            // leaves it idle, to be tried again at the next maintenance.
            if self
                .start_query(now, target, QueryKind::Refresh { bootstrap: None })
                .is_err()
            {
                break;
            }
            if bucket >= covered {
                // The one lookup for all of them started: they are fresh.
                for deep in &deeper {
                    self.table.touch_index(*deep, now);
                }
            }
        }
        let round = now.as_micros() / self.config.maintenance_interval.as_micros().max(1) as u64;
        for peer in self.table.stale_peers(round) {
            self.send(now, peer, Request::Ping, Purpose::Probe);
        }
        // The nearest neighbours share this peer's homes: one that stopped
        // answering must leave the table within a few rounds, so that the
        // home (and whoever keeps copies for it) moves on. Twice the home's
        // size, so that a peer just outside a home also notices a member
        // of it die and finds itself in the home.
        let quiet = self.config.maintenance_interval;
        for peer in self.table.quiet_neighbours(2 * self.config.replication, now, quiet) {
            self.send(now, peer, Request::Ping, Purpose::Probe);
        }
    }

    /// Sends each record due for replication to the rest of its home. A home
    /// member that received the same record from another member this round
    /// skips its own turn (the record's timer was pushed back on receipt).
    /// A holder outside the home sends every [`OUTSIDE_REPLICATE_FACTOR`]th
    /// interval.
    ///
    /// A peer that has drifted far outside a key's home (at least twice
    /// `replication` live peers nearer the key) hands the records on this
    /// once and forgets them: otherwise every peer that was ever in the
    /// home of a long-lived record would keep sending it, forever. Peers
    /// just outside keep theirs, so a table that still lists a dead peer
    /// never costs the last copy.
    fn replicate(&mut self, now: Instant) {
        let far = 2 * self.config.replication;
        for key in self.store.due_for_replication(now) {
            let home = self.home_of(&key);
            let own = self.local.key.distance(&key);
            let member = home.iter().any(|m| m.key == self.local.key);
            // A peer just outside the home keeps its copy as a spare; the
            // members keep each other's copies current, and a member that
            // goes is replaced at once (`peer_gone`), so the spare holder
            // checks on them at a quarter of the members' pace.
            let interval = if member {
                self.config.replicate_interval
            } else {
                self.config.replicate_interval * OUTSIDE_REPLICATE_FACTOR
            };
            let records = self.store.records_at(&key, now + interval);
            self.send_to_home(now, &home, records);
            if self.table.count_closer(&key, &own, far) >= far {
                self.store.forget(&key);
            }
        }
    }

    fn republish(&mut self, now: Instant) {
        let next_time = now + self.config.republish_interval;
        let values: Vec<Key> = self
            .published_values
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in values {
            let seq = self.next_seq(now, &key);
            let Some((value, lifetime)) = self.published_values.get(&key).map(|p| (p.value.clone(), p.lifetime)) else {
                continue;
            };
            let record = self.sign_value(now, key, value, seq, lifetime);
            // A full query table leaves the entry due: it is tried again at
            // the next maintenance round.
            if self.start_query(now, key, QueryKind::PutValue { record }).is_ok()
                && let Some(p) = self.published_values.get_mut(&key)
            {
                p.seq = seq;
                p.next = next_time;
            }
        }
        let providers: Vec<Key> = self
            .published_providers
            .iter()
            .filter(|(_, next)| **next <= now)
            .map(|(k, _)| *k)
            .collect();
        if providers.len() > 1 {
            // Many keys due together (they were announced together): one
            // batch places them a home at a time.
            if self.announce_many(now, providers).is_err() {
                // Tried again at the next maintenance round.
            }
            return;
        }
        for key in providers {
            let record = self.sign_provider(now, key);
            if self.start_query(now, key, QueryKind::AddProvider { record }).is_ok() {
                self.published_providers.insert(key, next_time);
            }
        }
    }

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

/// The request a lookup step of this kind of query sends.
fn lookup_request<A>(kind: &QueryKind<A>, target: Key) -> Request<A> {
    match kind {
        QueryKind::GetValue { .. } => Request::GetValue { key: target },
        QueryKind::GetProviders { .. } => Request::GetProviders { key: target },
        _ => Request::FindNode { target },
    }
}

/// Drops the empty root node a `BTreeMap` keeps after its last removal: a
/// few hundred bytes per map, which add up over a million simulated peers.
fn release_if_empty<K, V>(map: &mut BTreeMap<K, V>) {
    if map.is_empty() {
        *map = BTreeMap::new();
    }
}

fn store_request<A>(record: AnyRecord<A>) -> Request<A> {
    match record {
        AnyRecord::Value(record) => Request::PutValue { record },
        AnyRecord::Provider(record) => Request::AddProvider { record },
    }
}
