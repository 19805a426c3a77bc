//! Signed records and the bounded store that holds them.
//!
//! Two kinds of record live at a key's home: *value records* (small, versioned
//! values) and *provider records* (who can serve the resource with that key).
//! Both are signed by their publisher and carry an absolute expiry; the store
//! checks the signature on every put, and a reader checks it again on get.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Addr, Instant, Key, PeerInfo};

/// Largest value a value record may carry, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Largest public key or signature accepted in a record, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 256;

/// Signs records with the local peer's key. The node uses ed25519.
pub trait Signer: Debug + Send {
    /// The public key whose BLAKE3 hash is this peer's [`Key`].
    fn public_key(&self) -> &[u8];
    /// A signature of `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// Checks a signature: `verify(public_key, message, signature)`.
///
/// A plain function pointer so that every core in a 10^6-peer simulation
/// carries eight bytes for it, not a boxed object.
#[derive(Clone, Copy)]
pub struct Verifier(pub fn(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool);

impl Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// A small versioned value at a key, signed by its publisher.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ValueRecord {
    /// Where the record lives.
    pub key: Key,
    /// The value, at most [`MAX_VALUE_BYTES`].
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Version: a later put by the same publisher carries a larger number.
    pub seq: u64,
    /// When the record stops being valid, on the publisher's clock.
    pub expires: Instant,
    /// The publisher's public key.
    #[serde(with = "serde_bytes")]
    pub publisher: Vec<u8>,
    /// The publisher's signature over [`ValueRecord::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A statement by a peer that it provides the resource at `key`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(bound = "A: Addr")]
pub struct ProviderRecord<A> {
    /// The resource's key.
    pub key: Key,
    /// The provider: its key must be the hash of `publisher`.
    pub provider: PeerInfo<A>,
    /// When the record stops being valid.
    pub expires: Instant,
    /// The provider's public key.
    #[serde(with = "serde_bytes")]
    pub publisher: Vec<u8>,
    /// The provider's signature over [`ProviderRecord::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The opposite of providing: the peer will not keep the resource
    /// (no room), so it steps aside from the key's home and the next peer
    /// out takes its place. Never listed as a provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub declined: bool,
    /// When the provider signed it (zero in records from before this field):
    /// of two records by one provider the later issued wins, whatever
    /// their lifetimes, so a short-lived decline can replace a day-long
    /// provider record and the other way round.
    #[serde(default, skip_serializing_if = "Instant::is_zero")]
    pub issued: Instant,
}

/// Why a record was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error, Serialize, Deserialize)]
pub enum RecordError {
    /// The signature does not verify against the publisher's key.
    #[error("record at {key} has a signature that does not verify")]
    BadSignature {
        /// The record's key.
        key: Key,
    },
    /// The provider's key is not the hash of the publisher's public key, or
    /// its address does not belong to that key.
    #[error("provider record at {key} names a provider that is not its publisher")]
    ProviderMismatch {
        /// The record's key.
        key: Key,
    },
    /// The record has expired.
    #[error("record at {key} has expired")]
    Expired {
        /// The record's key.
        key: Key,
    },
    /// A provider record says it was issued after it expires.
    #[error("provider record at {key} is issued after it expires")]
    IssuedAfterExpiry {
        /// The record's key.
        key: Key,
    },
    /// The record claims to live longer than the longest accepted lifetime.
    #[error("record at {key} expires too far in the future")]
    ExpiresTooLate {
        /// The record's key.
        key: Key,
    },
    /// The value or a credential is larger than allowed.
    #[error("record at {key} is too large: {bytes} bytes, at most {max}")]
    TooLarge {
        /// The record's key.
        key: Key,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The store holds as many records as it may.
    #[error("record store is full ({capacity} records); cannot store {key}")]
    StoreFull {
        /// The record's key.
        key: Key,
        /// The store's capacity.
        capacity: usize,
    },
    /// The key already has as many providers as it may.
    #[error("key {key} already has {max} providers")]
    ProvidersFull {
        /// The record's key.
        key: Key,
        /// The per-key limit.
        max: usize,
    },
    /// Another publisher holds this key until its record expires.
    #[error("key {key} is held by another publisher")]
    Conflict {
        /// The record's key.
        key: Key,
    },
    /// The peer is leaving the overlay and stores nothing more.
    #[error("the peer is leaving; store record {key} elsewhere")]
    Leaving {
        /// The record's key.
        key: Key,
    },
    /// The store already has this publisher's record with a newer version.
    #[error("record at {key} has version {seq}, the store has {current}")]
    Stale {
        /// The record's key.
        key: Key,
        /// The version offered.
        seq: u64,
        /// The version held.
        current: u64,
    },
}

impl ValueRecord {
    /// A record signed by `signer`.
    pub fn sign(key: Key, value: Vec<u8>, seq: u64, expires: Instant, signer: &dyn Signer) -> Self {
        let mut record = ValueRecord {
            key,
            value,
            seq,
            expires,
            publisher: signer.public_key().to_vec(),
            signature: Vec::new(),
        };
        record.signature = signer.sign(&record.signed_bytes());
        record
    }

    /// The bytes the signature covers, with a domain separator so that a
    /// signature over one kind of message is never valid for another.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(96 + self.value.len() + self.publisher.len());
        bytes.extend_from_slice(b"shoal value record v1\0");
        bytes.extend_from_slice(&self.key.to_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(&self.expires.as_micros().to_be_bytes());
        push_with_len(&mut bytes, &self.publisher);
        push_with_len(&mut bytes, &self.value);
        bytes
    }

    /// Checks size, expiry and signature.
    pub fn verify(&self, verifier: Verifier, now: Instant, max_lifetime: Duration) -> Result<(), RecordError> {
        let key = self.key;
        check_size(key, self.value.len(), MAX_VALUE_BYTES)?;
        check_credentials(key, &self.publisher, &self.signature)?;
        check_expiry(key, self.expires, now, max_lifetime)?;
        if !(verifier.0)(&self.publisher, &self.signed_bytes(), &self.signature) {
            return Err(RecordError::BadSignature { key });
        }
        Ok(())
    }
}

impl<A: Addr> ProviderRecord<A> {
    /// A record, signed by `signer`, saying that `provider` serves `key`.
    pub fn sign(key: Key, provider: PeerInfo<A>, expires: Instant, signer: &dyn Signer) -> Self {
        Self::sign_as(key, provider, Instant::ZERO, expires, false, signer)
    }

    /// A record issued at `issued` saying that `provider` serves `key`, or,
    /// if `declined`, that it steps aside from `key`'s home.
    pub fn sign_as(
        key: Key,
        provider: PeerInfo<A>,
        issued: Instant,
        expires: Instant,
        declined: bool,
        signer: &dyn Signer,
    ) -> Self {
        let mut record = ProviderRecord {
            key,
            provider,
            expires,
            publisher: signer.public_key().to_vec(),
            signature: Vec::new(),
            declined,
            issued,
        };
        record.signature = signer.sign(&record.signed_bytes());
        record
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(160);
        bytes.extend_from_slice(b"shoal provider record v1\0");
        bytes.extend_from_slice(&self.key.to_bytes());
        bytes.extend_from_slice(&self.provider.key.to_bytes());
        bytes.extend_from_slice(&self.expires.as_micros().to_be_bytes());
        push_with_len(&mut bytes, &self.publisher);
        let mut addr = Vec::new();
        // Writing CBOR into a Vec cannot fail for these plain data types; an
        // address that will not encode signs as empty and so fails to verify
        // against any honest signature.
        if ciborium::into_writer(&self.provider.addr, &mut addr).is_err() {
            addr.clear();
        }
        push_with_len(&mut bytes, &addr);
        if self.declined {
            bytes.extend_from_slice(b"declined");
        }
        if !self.issued.is_zero() {
            bytes.extend_from_slice(b"issued");
            bytes.extend_from_slice(&self.issued.as_micros().to_be_bytes());
        }
        bytes
    }

    /// Checks size, expiry, the provider's identity and the signature.
    pub fn verify(&self, verifier: Verifier, now: Instant, max_lifetime: Duration) -> Result<(), RecordError> {
        let key = self.key;
        check_credentials(key, &self.publisher, &self.signature)?;
        check_expiry(key, self.expires, now, max_lifetime)?;
        if self.issued > self.expires {
            return Err(RecordError::IssuedAfterExpiry { key });
        }
        if Key::of_public_key(&self.publisher) != self.provider.key
            || !self.provider.addr.matches_key(&self.provider.key)
        {
            return Err(RecordError::ProviderMismatch { key });
        }
        if !(verifier.0)(&self.publisher, &self.signed_bytes(), &self.signature) {
            return Err(RecordError::BadSignature { key });
        }
        Ok(())
    }
}

fn push_with_len(bytes: &mut Vec<u8>, field: &[u8]) {
    bytes.extend_from_slice(&(field.len() as u64).to_be_bytes());
    bytes.extend_from_slice(field);
}

fn check_size(key: Key, bytes: usize, max: usize) -> Result<(), RecordError> {
    if bytes > max {
        return Err(RecordError::TooLarge { key, bytes, max });
    }
    Ok(())
}

fn check_credentials(key: Key, publisher: &[u8], signature: &[u8]) -> Result<(), RecordError> {
    check_size(key, publisher.len(), MAX_CREDENTIAL_BYTES)?;
    check_size(key, signature.len(), MAX_CREDENTIAL_BYTES)
}

fn check_expiry(key: Key, expires: Instant, now: Instant, max_lifetime: Duration) -> Result<(), RecordError> {
    if expires <= now {
        return Err(RecordError::Expired { key });
    }
    if expires > now + max_lifetime {
        return Err(RecordError::ExpiresTooLate { key });
    }
    Ok(())
}

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
    provider_count: usize,
    /// How many of the provider records are declines: with none (the
    /// common case), [`decliners`](Self::decliners) need not walk a list.
    decline_count: usize,
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

    /// Every record stored under `key`, as store requests, and marks them
    /// replicated until `next_replicate`.
    pub(crate) fn records_at(&mut self, key: &Key, next_replicate: Instant) -> Vec<AnyRecord<A>> {
        let mut out = Vec::new();
        if let Some(s) = self.values.get_mut(key) {
            s.next_replicate = next_replicate;
            out.push(AnyRecord::Value(s.record.clone()));
        }
        if let Some(list) = self.providers.get_mut(key) {
            for s in list {
                s.next_replicate = next_replicate;
                out.push(AnyRecord::Provider(s.record.clone()));
            }
        }
        out
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

/// Either kind of record, as carried by replication.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub(crate) enum AnyRecord<A> {
    Value(ValueRecord),
    Provider(ProviderRecord<A>),
}

impl<A> AnyRecord<A> {
    /// When the record expires.
    pub(crate) fn expires(&self) -> Instant {
        match self {
            AnyRecord::Value(r) => r.expires,
            AnyRecord::Provider(r) => r.expires,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn record(key: Key, provider: Key, declined: bool) -> ProviderRecord<u32> {
        ProviderRecord {
            key,
            provider: PeerInfo::new(provider, 0),
            expires: Instant::from_micros(1_000),
            publisher: Vec::new(),
            signature: Vec::new(),
            declined,
            issued: Instant::from_micros(1),
        }
    }

    #[test]
    fn declines_have_their_own_bound_and_the_nearest_are_kept() {
        let mut rng = Rng::seed_from_u64(8);
        let key = rng.key();
        let mut store: RecordStore<u32> = RecordStore::new(StoreLimits {
            max_records: 100,
            max_providers_per_key: 2,
        });
        let mut peers: Vec<Key> = (0..6).map(|_| rng.key()).collect();
        peers.sort_by_key(|p| p.distance(&key));
        let next = Instant::ZERO;
        // Two far declines fill the declines' room ...
        for p in &peers[4..6] {
            assert!(store.put_provider(record(key, *p, true), next).is_ok());
        }
        // ... but not the providers'.
        for p in &peers[2..4] {
            assert!(store.put_provider(record(key, *p, false), next).is_ok());
        }
        assert!(store.put_provider(record(key, rng.key(), false), next).is_err());
        // A nearer decline takes the farthest one's place; a farther one is refused.
        assert!(store.put_provider(record(key, peers[0], true), next).is_ok());
        let mut declined = store.decliners(&key);
        declined.sort_by_key(|p| p.distance(&key));
        assert_eq!(declined, vec![peers[0], peers[4]]);
        assert!(store.put_provider(record(key, peers[5], true), next).is_err());
        assert_eq!(store.decliners(&key).len(), 2);
        // Declines are never listed as providers.
        let listed: Vec<Key> = store
            .providers(&key, Instant::ZERO, 10)
            .iter()
            .map(|r| r.provider.key)
            .collect();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|p| peers[2..4].contains(p)));
    }

    proptest::proptest! {
        /// Whatever arrives, is replaced, expires or is forgotten, the
        /// store's counts of providers and declines match what it holds
        /// (with no decline counted, `decliners` answers without looking).
        #[test]
        fn any_sequence_of_puts_and_removals_keeps_the_counts(
            ops in proptest::collection::vec((0u8..4, 0usize..3, 0usize..4, proptest::bool::ANY, 1u64..50), 1..80)
        ) {
            let mut rng = Rng::seed_from_u64(10);
            let keys: Vec<Key> = (0..3).map(|_| rng.key()).collect();
            let peers: Vec<Key> = (0..4).map(|_| rng.key()).collect();
            let mut store: RecordStore<u32> = RecordStore::new(StoreLimits {
                max_records: 8,
                max_providers_per_key: 2,
            });
            let mut now = 0;
            for (op, k, p, declined, t) in ops {
                match op {
                    0 | 1 => {
                        let mut r = record(keys[k], peers[p], declined);
                        r.expires = Instant::from_micros(now + t);
                        r.issued = Instant::from_micros(now + 1);
                        let _ = store.put_provider(r, Instant::ZERO);
                    }
                    2 => {
                        now += t / 4;
                        store.remove_expired(Instant::from_micros(now));
                    }
                    _ => store.forget(&keys[k]),
                }
                proptest::prop_assert_eq!(store.check_invariants(), Ok(()));
                let declines: usize = keys.iter().map(|k| store.decliners(k).len()).sum();
                proptest::prop_assert_eq!(declines, store.decline_count);
            }
        }
    }

    #[test]
    fn expired_records_go_whenever_they_arrived() {
        // The store skips its walk until the earliest expiry it has seen:
        // a record that arrives after a walk, expiring before the others,
        // must still go on time.
        let mut rng = Rng::seed_from_u64(9);
        let mut store: RecordStore<u32> = RecordStore::new(StoreLimits {
            max_records: 100,
            max_providers_per_key: 4,
        });
        let at = |us| Instant::from_micros(us);
        let (late, early, never) = (rng.key(), rng.key(), rng.key());
        let mut r = record(late, rng.key(), false);
        r.expires = at(5_000);
        assert!(store.put_provider(r, Instant::ZERO).is_ok());
        assert_eq!(store.remove_expired(at(100)), 0);
        let mut r = record(early, rng.key(), false);
        r.expires = at(1_000);
        assert!(store.put_provider(r, Instant::ZERO).is_ok());
        let mut r = record(never, rng.key(), false);
        r.expires = Instant::MAX;
        assert!(store.put_provider(r, Instant::ZERO).is_ok());
        assert_eq!(store.remove_expired(at(999)), 0);
        assert_eq!(store.remove_expired(at(1_000)), 1);
        assert!(store.providers(&early, Instant::ZERO, 10).is_empty());
        assert_eq!(store.remove_expired(at(4_999)), 0);
        assert_eq!(store.remove_expired(at(6_000)), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.providers(&never, Instant::ZERO, 10).len(), 1);
    }

    #[test]
    fn a_provider_record_issued_after_it_expires_is_refused() {
        let publisher = vec![7u8; 32];
        let mut r = record(Key::of_content(b"blob"), Key::of_public_key(&publisher), true);
        r.publisher = publisher;
        r.signature = vec![1; 64];
        r.issued = Instant::from_micros(2_000);
        let error = r
            .verify(
                Verifier(|_, _, _| true),
                Instant::from_micros(10),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(matches!(error, RecordError::IssuedAfterExpiry { .. }), "{error}");
        r.issued = Instant::from_micros(500);
        assert!(
            r.verify(
                Verifier(|_, _, _| true),
                Instant::from_micros(10),
                Duration::from_secs(60)
            )
            .is_ok()
        );
    }

    /// A signer whose "signature" is a BLAKE3 hash keyed by its public key:
    /// enough to tell whether the signed bytes changed.
    #[derive(Debug)]
    struct Keyed(Vec<u8>);

    fn mac(public_key: &[u8], message: &[u8]) -> Vec<u8> {
        blake3::keyed_hash(blake3::hash(public_key).as_bytes(), message)
            .as_bytes()
            .to_vec()
    }

    impl Signer for Keyed {
        fn public_key(&self) -> &[u8] {
            &self.0
        }
        fn sign(&self, message: &[u8]) -> Vec<u8> {
            mac(&self.0, message)
        }
    }

    const CHECK: Verifier = Verifier(|public_key, message, signature| mac(public_key, message) == signature);
    const NOW: Instant = Instant::from_micros(1_000_000);
    const LIFETIME: Duration = Duration::from_secs(60);

    #[test]
    fn a_value_record_signature_covers_every_field() {
        let mut rng = Rng::seed_from_u64(30);
        let signer = Keyed(vec![1; 32]);
        let expires = NOW + Duration::from_secs(30);
        let record = ValueRecord::sign(rng.key(), b"value".to_vec(), 7, expires, &signer);
        assert_eq!(record.verify(CHECK, NOW, LIFETIME), Ok(()));
        let key = record.key;
        let tampered: [(&str, ValueRecord); 5] = [
            (
                "key",
                ValueRecord {
                    key: rng.key(),
                    ..record.clone()
                },
            ),
            (
                "value",
                ValueRecord {
                    value: b"valuf".to_vec(),
                    ..record.clone()
                },
            ),
            (
                "seq",
                ValueRecord {
                    seq: 8,
                    ..record.clone()
                },
            ),
            (
                "expiry",
                ValueRecord {
                    expires: expires + Duration::from_micros(1),
                    ..record.clone()
                },
            ),
            (
                "publisher",
                ValueRecord {
                    publisher: vec![2; 32],
                    ..record.clone()
                },
            ),
        ];
        for (field, t) in tampered {
            assert_eq!(
                t.verify(CHECK, NOW, LIFETIME),
                Err(RecordError::BadSignature { key: t.key }),
                "{field}"
            );
        }
        // Where one length-prefixed field ends and the next begins is signed
        // too: a byte moved from the publisher to the value is a change.
        let a = ValueRecord::sign(key, b"c".to_vec(), 1, expires, &Keyed(b"ab".to_vec()));
        let b = ValueRecord {
            publisher: b"a".to_vec(),
            value: b"bc".to_vec(),
            ..a.clone()
        };
        assert_ne!(a.signed_bytes(), b.signed_bytes());
    }

    #[test]
    fn a_provider_record_signature_covers_every_field() {
        let mut rng = Rng::seed_from_u64(31);
        let signer = Keyed(vec![3; 32]);
        let me = PeerInfo::new(Key::of_public_key(&signer.0), 5u32);
        let expires = NOW + Duration::from_secs(30);
        let issued = NOW - Duration::from_millis(500);
        assert!(!issued.is_zero(), "issued at a time: signed apart from never issued");
        let record = ProviderRecord::sign_as(rng.key(), me.clone(), issued, expires, false, &signer);
        assert_eq!(record.verify(CHECK, NOW, LIFETIME), Ok(()));
        let declined = ProviderRecord::sign_as(record.key, me.clone(), issued, expires, true, &signer);
        assert_eq!(declined.verify(CHECK, NOW, LIFETIME), Ok(()));
        assert_ne!(declined.signature, record.signature);
        let tampered: [(&str, ProviderRecord<u32>); 5] = [
            (
                "key",
                ProviderRecord {
                    key: rng.key(),
                    ..record.clone()
                },
            ),
            (
                "expiry",
                ProviderRecord {
                    expires: expires + Duration::from_micros(1),
                    ..record.clone()
                },
            ),
            (
                "address",
                ProviderRecord {
                    provider: PeerInfo::new(me.key, 6),
                    ..record.clone()
                },
            ),
            (
                "declined",
                ProviderRecord {
                    declined: true,
                    ..record.clone()
                },
            ),
            (
                "issued",
                ProviderRecord {
                    issued: issued + Duration::from_micros(1),
                    ..record.clone()
                },
            ),
        ];
        for (field, t) in tampered {
            assert_eq!(
                t.verify(CHECK, NOW, LIFETIME),
                Err(RecordError::BadSignature { key: t.key }),
                "{field}"
            );
        }
        // Never issued (zero) signs differently from issued at some time.
        let plain = ProviderRecord::sign(record.key, me.clone(), expires, &signer);
        assert_eq!(plain.verify(CHECK, NOW, LIFETIME), Ok(()));
        assert_ne!(
            plain.signed_bytes(),
            ProviderRecord {
                issued: Instant::from_micros(1),
                ..plain.clone()
            }
            .signed_bytes()
        );
        // Another peer's key as the provider, or another publisher.
        let key = record.key;
        let other = ProviderRecord {
            provider: PeerInfo::new(rng.key(), 5),
            ..record.clone()
        };
        assert_eq!(
            other.verify(CHECK, NOW, LIFETIME),
            Err(RecordError::ProviderMismatch { key })
        );
        let forged = ProviderRecord::sign_as(key, me.clone(), issued, expires, false, &Keyed(vec![4; 32]));
        assert_eq!(
            forged.verify(CHECK, NOW, LIFETIME),
            Err(RecordError::ProviderMismatch { key })
        );
    }

    #[test]
    fn record_checks_hold_at_their_bounds() {
        // The bounds are part of the protocol: every peer must agree on them.
        assert_eq!((MAX_VALUE_BYTES, MAX_CREDENTIAL_BYTES), (16 * 1024, 256));
        let mut rng = Rng::seed_from_u64(32);
        let signer = Keyed(vec![5; 32]);
        let key = rng.key();
        let value = |len: usize, expires: Instant| ValueRecord::sign(key, vec![0; len], 1, expires, &signer);
        let soon = NOW + Duration::from_secs(1);
        assert_eq!(value(MAX_VALUE_BYTES, soon).verify(CHECK, NOW, LIFETIME), Ok(()));
        assert_eq!(
            value(MAX_VALUE_BYTES + 1, soon).verify(CHECK, NOW, LIFETIME),
            Err(RecordError::TooLarge {
                key,
                bytes: MAX_VALUE_BYTES + 1,
                max: MAX_VALUE_BYTES
            })
        );
        // Expiry: after now, and no later than now + the longest lifetime.
        assert_eq!(
            value(1, NOW).verify(CHECK, NOW, LIFETIME),
            Err(RecordError::Expired { key })
        );
        assert_eq!(value(1, NOW + LIFETIME).verify(CHECK, NOW, LIFETIME), Ok(()));
        assert_eq!(
            value(1, NOW + LIFETIME + Duration::from_micros(1)).verify(CHECK, NOW, LIFETIME),
            Err(RecordError::ExpiresTooLate { key })
        );
        // Credentials: each at most MAX_CREDENTIAL_BYTES.
        let signed = value(1, soon);
        for (publisher, signature, ok) in [
            (MAX_CREDENTIAL_BYTES, MAX_CREDENTIAL_BYTES, true),
            (MAX_CREDENTIAL_BYTES + 1, 1, false),
            (1, MAX_CREDENTIAL_BYTES + 1, false),
        ] {
            let t = ValueRecord {
                publisher: vec![9; publisher],
                signature: vec![9; signature],
                ..signed.clone()
            };
            let result = t.verify(Verifier(|_, _, _| true), NOW, LIFETIME);
            assert_eq!(
                result.is_ok(),
                ok,
                "publisher {publisher}, signature {signature}: {result:?}"
            );
        }
        // A provider record may be issued at its expiry, not after it.
        let me = PeerInfo::new(Key::of_public_key(&signer.0), 1u32);
        let at = ProviderRecord::sign_as(key, me.clone(), soon, soon, false, &signer);
        assert_eq!(at.verify(CHECK, NOW, LIFETIME), Ok(()));
        let after = ProviderRecord::sign_as(key, me, soon + Duration::from_micros(1), soon, false, &signer);
        assert_eq!(
            after.verify(CHECK, NOW, LIFETIME),
            Err(RecordError::IssuedAfterExpiry { key })
        );
    }

    #[test]
    fn the_store_counts_its_changes_and_hides_what_expired() {
        let mut rng = Rng::seed_from_u64(33);
        let signer = Keyed(vec![6; 32]);
        let me = PeerInfo::new(Key::of_public_key(&signer.0), 1u32);
        let mut store: RecordStore<u32> = RecordStore::new(StoreLimits::default());
        assert!(store.is_empty());
        let expires = NOW + Duration::from_secs(10);
        let value = ValueRecord::sign(rng.key(), b"v".to_vec(), 1, expires, &signer);
        assert!(!store.holds(&AnyRecord::Value(value.clone())));
        assert_eq!(store.put_value(value.clone(), NOW, NOW), Ok(PutOutcome::Inserted));
        assert!(!store.is_empty());
        assert!(store.holds(&AnyRecord::Value(value.clone())));
        assert_eq!(store.changes(), 1);
        // The same record again changes nothing; a newer version does.
        assert_eq!(store.put_value(value.clone(), NOW, NOW), Ok(PutOutcome::Unchanged));
        assert_eq!(store.changes(), 1);
        let newer = ValueRecord::sign(value.key, b"w".to_vec(), 2, expires, &signer);
        assert_eq!(store.put_value(newer.clone(), NOW, NOW), Ok(PutOutcome::Updated));
        assert_eq!(store.changes(), 2);
        let provider = ProviderRecord::sign(rng.key(), me, expires, &signer);
        assert_eq!(store.put_provider(provider.clone(), NOW), Ok(PutOutcome::Inserted));
        assert_eq!(store.changes(), 3);
        assert!(store.holds(&AnyRecord::Provider(provider.clone())));
        assert_eq!(store.value_records().cloned().collect::<Vec<_>>(), vec![newer.clone()]);
        assert_eq!(
            store.provider_records().cloned().collect::<Vec<_>>(),
            vec![provider.clone()]
        );
        // Held until its expiry, not at it.
        let before = expires - Duration::from_micros(1);
        assert_eq!(store.value(&newer.key, before), Some(&newer));
        assert_eq!(store.value(&newer.key, expires), None);
        assert_eq!(store.providers(&provider.key, before, 5), vec![provider.clone()]);
        assert!(store.providers(&provider.key, expires, 5).is_empty());
    }

    #[test]
    fn expiry_refreshes_removal_forgetting_and_replication_are_counted_at_their_bounds() {
        let mut rng = Rng::seed_from_u64(34);
        let signer = Keyed(vec![7; 32]);
        let me = PeerInfo::new(Key::of_public_key(&signer.0), 1u32);
        let mut store: RecordStore<u32> = RecordStore::new(StoreLimits::default());
        let t = NOW + Duration::from_secs(10);
        let value = ValueRecord::sign(rng.key(), b"v".to_vec(), 1, t, &signer);
        store.put_value(value.clone(), NOW, t).unwrap();
        // The same version signed to live longer refreshes it; shorter does not.
        let later = ValueRecord::sign(value.key, b"v".to_vec(), 1, t + Duration::from_secs(1), &signer);
        assert_eq!(store.put_value(later.clone(), NOW, t), Ok(PutOutcome::Updated));
        assert_eq!(store.put_value(value.clone(), NOW, t), Ok(PutOutcome::Unchanged));
        let provider = ProviderRecord::sign(rng.key(), me, t, &signer);
        store
            .put_provider(provider.clone(), t + Duration::from_secs(5))
            .unwrap();
        let short = ValueRecord::sign(rng.key(), b"s".to_vec(), 1, t, &signer);
        store.put_value(short, NOW, t + Duration::from_secs(5)).unwrap();
        assert_eq!(AnyRecord::<u32>::Value(later.clone()).expires(), later.expires);
        assert_eq!(AnyRecord::Provider(provider.clone()).expires(), t);
        // Replication is due at its time, not only after it.
        assert_eq!(
            store.due_for_replication(t - Duration::from_micros(1)),
            Vec::<Key>::new()
        );
        assert_eq!(store.due_for_replication(t), vec![value.key]);
        assert_eq!(store.due_for_replication(t + Duration::from_secs(5)).len(), 3);
        // Expiry: a record expiring at `now` goes; the removal is one change.
        let changes = store.changes();
        assert_eq!(store.remove_expired(t - Duration::from_micros(1)), 0);
        assert_eq!(store.changes(), changes, "nothing removed, nothing changed");
        assert_eq!(
            store.remove_expired(t),
            2,
            "the value and provider records expiring at t"
        );
        assert_eq!(store.changes(), changes + 1);
        assert_eq!(store.len(), 1);
        store.check_invariants().unwrap();
        // Forgetting a key is a change; forgetting one not held is none.
        store.forget(&rng.key());
        assert_eq!(store.changes(), changes + 1);
        store.forget(&value.key);
        assert_eq!((store.changes(), store.len()), (changes + 2, 0));
        store.check_invariants().unwrap();
    }

    #[test]
    fn the_store_invariants_catch_a_wrong_count() {
        let mut store: RecordStore<u32> = RecordStore::new(StoreLimits::default());
        let signer = Keyed(vec![8; 32]);
        let me = PeerInfo::new(Key::of_public_key(&signer.0), 1u32);
        let key = Rng::seed_from_u64(35).key();
        let t = NOW + Duration::from_secs(10);
        store
            .put_provider(ProviderRecord::sign_as(key, me, NOW, t, true, &signer), t)
            .unwrap();
        store.check_invariants().unwrap();
        store.provider_count += 1;
        assert!(store.check_invariants().is_err(), "a provider too many");
        store.provider_count -= 1;
        store.decline_count += 1;
        assert!(store.check_invariants().is_err(), "a decline too many");
    }
}
