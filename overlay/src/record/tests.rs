//! Tests of signing and checking records, and of the store's bounds,
//! counts and expiry.

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
