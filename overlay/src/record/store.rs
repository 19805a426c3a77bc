//! The bounded store of the records a peer holds as a member of their homes.
//!
//! Records arrive already verified; the store decides which version wins,
//! keeps its bounds (records in all, providers and declines per key), drops
//! what expired, and tells replication what is due.

use std::collections::BTreeMap;

use super::{AnyRecord, ProviderRecord, RecordError, ValueRecord};
use crate::{Addr, Instant, Key};

/// Bounds on a [`RecordStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreLimits {
    /// Most records (values plus provider entries) held at once.
    pub max_records: usize,
    /// Most providers held for one key (and, apart, most declines).
    pub max_providers_per_key: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_records: 65_536,
            max_providers_per_key: 20,
        }
    }
}

/// A stored record and when this peer next replicates it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stored<R> {
    pub(crate) record: R,
    pub(crate) next_replicate: Instant,
}

/// The records this peer holds as a member of their homes, bounded.
///
/// Iteration is in key order, so replication and hand-off are deterministic.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub struct RecordStore<A> {
    limits: StoreLimits,
    values: BTreeMap<Key, Stored<ValueRecord>>,
    providers: BTreeMap<Key, Vec<Stored<ProviderRecord<A>>>>,
    pub(super) provider_count: usize,
    /// How many of the provider records are declines: with none (the
    /// common case), [`decliners`](Self::decliners) need not walk a list.
    pub(super) decline_count: usize,
    /// No record expires before this (an early bound: records replaced
    /// since may have gone), so that most maintenance rounds need not walk
    /// the store to find nothing expired.
    next_expiry: Instant,
    /// Counts inserts, updates and removals: tells a driver that saves the
    /// store whether anything changed since it last did.
    changes: u64,
}

/// What a successful put changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The record was new to this store.
    Inserted,
    /// The record replaced an older version or refreshed its expiry.
    Updated,
    /// The store already held exactly this record.
    Unchanged,
}

impl<A: Addr> RecordStore<A> {
    /// An empty store with these limits.
    pub fn new(limits: StoreLimits) -> Self {
        RecordStore {
            limits,
            values: BTreeMap::new(),
            providers: BTreeMap::new(),
            provider_count: 0,
            decline_count: 0,
            next_expiry: Instant::ZERO,
            changes: 0,
        }
    }

    /// How many records (values plus provider entries) the store holds.
    pub fn len(&self) -> usize {
        self.values.len() + self.provider_count
    }

    /// How many times the store has changed since it was made.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Every value record held, in key order (expired ones included until
    /// the next [`remove_expired`](Self::remove_expired)).
    pub fn value_records(&self) -> impl Iterator<Item = &ValueRecord> {
        self.values.values().map(|s| &s.record)
    }

    /// Every provider record held, in key order.
    pub fn provider_records(&self) -> impl Iterator<Item = &ProviderRecord<A>> {
        self.providers.values().flatten().map(|s| &s.record)
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value record at `key`, if one is held and unexpired.
    pub fn value(&self, key: &Key, now: Instant) -> Option<&ValueRecord> {
        self.values.get(key).map(|s| &s.record).filter(|r| r.expires > now)
    }

    /// Up to `max` unexpired provider records for `key` (not the declines).
    pub fn providers(&self, key: &Key, now: Instant, max: usize) -> Vec<ProviderRecord<A>> {
        self.providers
            .get(key)
            .map(|list| {
                list.iter()
                    .map(|s| &s.record)
                    .filter(|r| r.expires > now && !r.declined)
                    .take(max)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The peers that declined `key` (their records not yet removed as
    /// expired): they step aside from its home.
    pub fn decliners(&self, key: &Key) -> Vec<Key> {
        if self.decline_count == 0 {
            return Vec::new();
        }
        self.providers
            .get(key)
            .map(|list| {
                list.iter()
                    .filter(|s| s.record.declined)
                    .map(|s| s.record.provider.key)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the store holds exactly `record`. Replication sends every
    /// record again each round: a copy of one held was verified when it
    /// was stored, and needs no second check of its signature.
    pub(crate) fn holds(&self, record: &AnyRecord<A>) -> bool {
        match record {
            AnyRecord::Value(r) => self.values.get(&r.key).is_some_and(|s| s.record == *r),
            AnyRecord::Provider(r) => self
                .providers
                .get(&r.key)
                .is_some_and(|list| list.iter().any(|s| s.record == *r)),
        }
    }

    /// Stores a value record that has already been verified.
    pub(crate) fn put_value(
        &mut self,
        record: ValueRecord,
        now: Instant,
        next_replicate: Instant,
    ) -> Result<PutOutcome, RecordError> {
        let outcome = self.put_value_inner(record, now, next_replicate);
        self.count(&outcome);
        outcome
    }

    /// Stores a provider record that has already been verified.
    pub(crate) fn put_provider(
        &mut self,
        record: ProviderRecord<A>,
        next_replicate: Instant,
    ) -> Result<PutOutcome, RecordError> {
        let outcome = self.put_provider_inner(record, next_replicate);
        self.count(&outcome);
        outcome
    }

    fn count(&mut self, outcome: &Result<PutOutcome, RecordError>) {
        if matches!(outcome, Ok(PutOutcome::Inserted | PutOutcome::Updated)) {
            self.changes += 1;
        }
    }

    fn put_value_inner(
        &mut self,
        record: ValueRecord,
        now: Instant,
        next_replicate: Instant,
    ) -> Result<PutOutcome, RecordError> {
        let key = record.key;
        self.next_expiry = self.next_expiry.min(record.expires);
        if let Some(held) = self.values.get_mut(&key) {
            let current = &held.record;
            if current.expires <= now {
                // An expired record holds nothing: the new one takes its place.
                held.record = record;
                held.next_replicate = next_replicate;
                return Ok(PutOutcome::Updated);
            }
            if current.publisher != record.publisher {
                // The first writer holds the key until its record expires.
                return Err(RecordError::Conflict { key });
            }
            if record.seq < current.seq {
                return Err(RecordError::Stale {
                    key,
                    seq: record.seq,
                    current: current.seq,
                });
            }
            if *current == record {
                // Another home member replicated the same record: it did this
                // round's work, so this peer may skip its own.
                held.next_replicate = held.next_replicate.max(next_replicate);
                return Ok(PutOutcome::Unchanged);
            }
            if record.seq == current.seq && record.expires <= current.expires {
                return Ok(PutOutcome::Unchanged);
            }
            held.record = record;
            return Ok(PutOutcome::Updated);
        }
        if self.len() >= self.limits.max_records {
            return Err(RecordError::StoreFull {
                key,
                capacity: self.limits.max_records,
            });
        }
        self.values.insert(key, Stored { record, next_replicate });
        Ok(PutOutcome::Inserted)
    }

    fn put_provider_inner(
        &mut self,
        record: ProviderRecord<A>,
        next_replicate: Instant,
    ) -> Result<PutOutcome, RecordError> {
        let key = record.key;
        self.next_expiry = self.next_expiry.min(record.expires);
        let full = self.len() >= self.limits.max_records;
        let list = self.providers.entry(key).or_default();
        if let Some(held) = list.iter_mut().find(|s| s.record.provider.key == record.provider.key) {
            if held.record == record {
                held.next_replicate = held.next_replicate.max(next_replicate);
                return Ok(PutOutcome::Unchanged);
            }
            // Records from before `issued` (zero) lose to any issued since,
            // and compare by expiry among themselves.
            if (record.issued, record.expires) <= (held.record.issued, held.record.expires) {
                return Ok(PutOutcome::Unchanged);
            }
            self.decline_count = self.decline_count + usize::from(record.declined) - usize::from(held.record.declined);
            held.record = record;
            return Ok(PutOutcome::Updated);
        }
        let same_kind = list.iter().filter(|s| s.record.declined == record.declined).count();
        if record.declined && same_kind >= self.limits.max_providers_per_key {
            // Declines that matter are near the key: a nearer one takes the
            // place of the farthest, so far peers cannot use up the room.
            let distance = record.provider.key.distance(&key);
            if let Some(farthest) = list
                .iter_mut()
                .filter(|s| s.record.declined)
                .max_by_key(|s| s.record.provider.key.distance(&key))
                .filter(|s| s.record.provider.key.distance(&key) > distance)
            {
                *farthest = Stored { record, next_replicate };
                return Ok(PutOutcome::Inserted);
            }
        }
        let result = if full {
            Err(RecordError::StoreFull {
                key,
                capacity: self.limits.max_records,
            })
        } else if same_kind >= self.limits.max_providers_per_key {
            // Declines have a bound of their own: they never crowd out the
            // providers a fetch needs.
            Err(RecordError::ProvidersFull {
                key,
                max: self.limits.max_providers_per_key,
            })
        } else {
            self.decline_count += usize::from(record.declined);
            list.push(Stored { record, next_replicate });
            self.provider_count += 1;
            Ok(PutOutcome::Inserted)
        };
        if list.is_empty() {
            self.providers.remove(&key);
        }
        result
    }

    /// Drops every record that expired at or before `now`; returns how many.
    pub fn remove_expired(&mut self, now: Instant) -> usize {
        if now < self.next_expiry {
            return 0;
        }
        let before = self.len();
        let mut next = Instant::MAX;
        self.values.retain(|_, s| {
            let keep = s.record.expires > now;
            if keep {
                next = next.min(s.record.expires);
            }
            keep
        });
        let (mut count, mut declines) = (0, 0);
        self.providers.retain(|_, list| {
            list.retain(|s| {
                let keep = s.record.expires > now;
                if keep {
                    next = next.min(s.record.expires);
                    declines += usize::from(s.record.declined);
                }
                keep
            });
            count += list.len();
            !list.is_empty()
        });
        self.provider_count = count;
        self.decline_count = declines;
        self.next_expiry = next;
        let removed = before - self.len();
        if removed > 0 {
            self.changes += 1;
        }
        removed
    }

    /// The keys held, in order.
    pub fn keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.values.keys().chain(self.providers.keys()).copied().collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Every record stored under `key`, and marks them replicated until
    /// `next_replicate`.
    pub(crate) fn records_at(&mut self, key: &Key, next_replicate: Instant) -> Vec<AnyRecord<A>> {
        self.replicated_until(key, next_replicate);
        let mut out = Vec::new();
        if let Some(s) = self.values.get(key) {
            out.push(AnyRecord::Value(s.record.clone()));
        }
        if let Some(list) = self.providers.get(key) {
            out.extend(list.iter().map(|s| AnyRecord::Provider(s.record.clone())));
        }
        out
    }

    /// The records at `key` still alive at `now` (a hand-off sends them
    /// when its turn comes, which may be after some expired).
    pub(crate) fn records_of(&self, key: &Key, now: Instant) -> Vec<AnyRecord<A>> {
        let mut out = Vec::new();
        if let Some(s) = self.values.get(key).filter(|s| s.record.expires > now) {
            out.push(AnyRecord::Value(s.record.clone()));
        }
        if let Some(list) = self.providers.get(key) {
            let alive = list.iter().filter(|s| s.record.expires > now);
            out.extend(alive.map(|s| AnyRecord::Provider(s.record.clone())));
        }
        out
    }

    /// Marks the records at `key` replicated until `next_replicate`.
    pub(crate) fn replicated_until(&mut self, key: &Key, next_replicate: Instant) {
        if let Some(s) = self.values.get_mut(key) {
            s.next_replicate = next_replicate;
        }
        for s in self.providers.get_mut(key).into_iter().flatten() {
            s.next_replicate = next_replicate;
        }
    }

    /// Drops every record at `key` (this peer is far outside its home and
    /// has handed them on).
    pub(crate) fn forget(&mut self, key: &Key) {
        let values = usize::from(self.values.remove(key).is_some());
        let list = self.providers.remove(key).unwrap_or_default();
        let providers = list.len();
        self.provider_count -= providers;
        self.decline_count -= list.iter().filter(|s| s.record.declined).count();
        if values + providers > 0 {
            self.changes += 1;
        }
    }

    /// Checks that the counts kept match the records held.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let held: usize = self.providers.values().map(Vec::len).sum();
        let declines = self.providers.values().flatten().filter(|s| s.record.declined).count();
        if held != self.provider_count || declines != self.decline_count {
            return Err(format!(
                "store counts {} providers and {} declines, holds {held} and {declines}",
                self.provider_count, self.decline_count
            ));
        }
        Ok(())
    }

    /// Keys with a record due for replication at `now`.
    pub(crate) fn due_for_replication(&self, now: Instant) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .values
            .iter()
            .filter(|(_, s)| s.next_replicate <= now)
            .map(|(k, _)| *k)
            .chain(
                self.providers
                    .iter()
                    .filter(|(_, l)| l.iter().any(|s| s.next_replicate <= now))
                    .map(|(k, _)| *k),
            )
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}
