//! Signed records and the bounded store that holds them.
//!
//! Two kinds of record live at a key's home: *value records* (small, versioned
//! values) and *provider records* (who can serve the resource with that key).
//! Both are signed by their publisher and carry an absolute expiry; the store
//! checks the signature on every put, and a reader checks it again on get.
//!
//! # Layout, in reading order
//!
//! - this file: the records themselves — the bounds every peer agrees on
//!   ([`MAX_VALUE_BYTES`], [`MAX_CREDENTIAL_BYTES`]), [`Signer`] and
//!   [`Verifier`], [`ValueRecord`] and [`ProviderRecord`] with their signed
//!   bytes and checks, [`RecordError`], and `AnyRecord`, either kind as
//!   replication carries it.
//! - `store`: [`RecordStore`], the bounded store of the records this peer
//!   holds for their homes, with its [`StoreLimits`] and [`PutOutcome`].
//! - `tests`: signing and checking records, and the store's bounds, counts
//!   and expiry.

use std::fmt::Debug;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Addr, Instant, Key, PeerInfo};

mod store;
#[cfg(test)]
mod tests;

pub use store::{PutOutcome, RecordStore, StoreLimits};

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

/// A resource's rule for the versions of its value records: whether `new`
/// may replace `held` (same publisher, a higher sequence number). A home
/// member refuses a version the rule rejects — a job's record, for one,
/// ends once and changes only through its current placement. A plain
/// function pointer, as [`Verifier`] is.
#[derive(Clone, Copy)]
pub struct Successor(pub fn(held: &[u8], new: &[u8]) -> bool);

impl Debug for Successor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Successor(..)")
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
    /// The value may not follow the version held (the rule of its
    /// resource, [`Successor`], says no).
    #[error("the home refuses this version of {key}: it may not follow the one held")]
    Refused {
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
