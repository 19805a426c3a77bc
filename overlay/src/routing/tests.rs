//! Tests of the routing table: buckets and eviction pings, the replacement
//! cache, stale marking, lookups into the table and its invariants.

use super::*;
use crate::Rng;
use proptest::prelude::*;

fn table(local: Key) -> RoutingTable<u32> {
    RoutingTable::new(local, 4, 2, 2, Duration::ZERO)
}

proptest! {
    #[test]
    fn closest_matches_brute_force(seed in any::<u64>(), n in 0usize..300, count in 1usize..30) {
        let mut rng = Rng::seed_from_u64(seed);
        let local = rng.key();
        let mut t = RoutingTable::new(local, 20, 3, 2, Duration::ZERO);
        for i in 0..n {
            t.observe(PeerInfo::new(rng.key(), i as u32), Instant::ZERO);
        }
        t.check_invariants().map_err(TestCaseError::fail)?;
        let target = if seed % 3 == 0 { local.with_bit_flipped(255) } else { rng.key() };
        let got: Vec<Key> = t.closest(&target, count, None).iter().map(|p| p.key).collect();
        let mut all: Vec<Key> = t.peers().map(|p| p.key).collect();
        all.sort_by_key(|k| k.distance(&target));
        all.truncate(count);
        prop_assert_eq!(got, all);
    }
    #[test]
    fn count_closer_matches_brute_force(seed in any::<u64>(), n in 0usize..300, limit in 1usize..12, stale in 0usize..20) {
        let mut rng = Rng::seed_from_u64(seed);
        let local = rng.key();
        let mut t = RoutingTable::new(local, 20, 3, 1, Duration::ZERO);
        let mut keys = Vec::new();
        for i in 0..n {
            let key = rng.key();
            t.observe(PeerInfo::new(key, i as u32), Instant::ZERO);
            keys.push(key);
        }
        // Some entries fail until stale (or are replaced): stale ones never count.
        for key in keys.iter().take(stale) {
            t.record_failure(key, Instant::ZERO);
            t.record_failure(key, Instant::ZERO);
        }
        let target = match seed % 3 {
            0 => local.with_bit_flipped(255),
            1 => local,
            _ => rng.key(),
        };
        let live: Vec<Key> = t.closest(&target, t.len(), None).iter().map(|p| p.key).collect();
        // Distances of the local key, of every known peer and of random keys.
        let mut probes: Vec<Distance> = live.iter().map(|k| k.distance(&target)).collect();
        probes.push(local.distance(&target));
        probes.extend((0..8).map(|_| rng.key().distance(&target)));
        for than in probes {
            let want = live.iter().filter(|k| k.distance(&target) < than).count().min(limit);
            prop_assert_eq!(t.count_closer(&target, &than, limit), want);
        }
    }
    #[test]
    fn any_sequence_of_changes_keeps_the_counts(seed in any::<u64>(), steps in 1usize..400) {
        // Small buckets and few keys, so that entries fill buckets, fail,
        // go stale, come back, are replaced and removed in every order;
        // the counts the table keeps (peers, stale entries) must agree
        // with what it holds after each step.
        let mut rng = Rng::seed_from_u64(seed);
        let local = rng.key();
        let mut t = RoutingTable::new(local, 3, 2, 2, Duration::ZERO);
        let keys: Vec<Key> = (0..24)
            .map(|i| local.random_in_bucket(i % 4, &rng.key()))
            .collect();
        for step in 0..steps {
            let key = keys[rng.index(keys.len())];
            let now = Instant::from_micros(step as u64 * 1_000_000);
            match rng.index(5) {
                0 | 1 => {
                    t.observe(PeerInfo::new(key, step as u32), now);
                }
                2 => {
                    t.record_failure(&key, now);
                }
                3 => {
                    t.remove(&key, now);
                }
                _ => {
                    let alive = rng.index(2) == 0;
                    t.finish_eviction_ping(&key, alive, now);
                }
            }
            t.check_invariants().map_err(TestCaseError::fail)?;
            let stale = t.stale_peers(0).len();
            prop_assert!(stale <= t.len());
        }
    }
}

#[test]
fn full_bucket_pings_a_suspect_oldest_and_keeps_it_when_alive() {
    let mut rng = Rng::seed_from_u64(3);
    let local = rng.key();
    let mut t = table(local);
    // Five peers in bucket 0 (first bit differs from local).
    let peers: Vec<PeerInfo<u32>> = (0..5)
        .map(|i| PeerInfo::new(local.random_in_bucket(0, &rng.key()), i))
        .collect();
    for p in &peers[..4] {
        assert_eq!(t.observe(p.clone(), Instant::ZERO), Observed::Inserted);
    }
    // An oldest entry that has missed nothing is not pinged: the
    // newcomer waits.
    assert_eq!(t.observe(peers[4].clone(), Instant::ZERO), Observed::Queued);
    assert_eq!(t.record_failure(&peers[0].key, Instant::ZERO), Failed::Counted);
    assert_eq!(
        t.observe(peers[4].clone(), Instant::ZERO),
        Observed::PingOldest(peers[0].clone())
    );
    // A second newcomer does not start a second ping.
    let sixth = PeerInfo::new(local.random_in_bucket(0, &rng.key()), 6);
    assert_eq!(t.observe(sixth, Instant::ZERO), Observed::Queued);
    assert_eq!(t.finish_eviction_ping(&peers[0].key, true, Instant::ZERO), None);
    assert!(t.contains(&peers[0].key));
    assert!(!t.contains(&peers[4].key));
    t.check_invariants().unwrap();
}

#[test]
fn recently_seen_oldest_is_kept_without_a_ping() {
    let mut rng = Rng::seed_from_u64(8);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 2, 2, 2, Duration::from_secs(60));
    let at = |s: u64| Instant::from_micros(s * 1_000_000);
    let peers: Vec<PeerInfo<u32>> = (0..3)
        .map(|i| PeerInfo::new(local.random_in_bucket(0, &rng.key()), i))
        .collect();
    t.observe(peers[0].clone(), at(0));
    t.observe(peers[1].clone(), at(10));
    assert_eq!(t.record_failure(&peers[0].key, at(0)), Failed::Counted);
    assert_eq!(
        t.observe(peers[2].clone(), at(30)),
        Observed::Queued,
        "oldest seen 30 s ago"
    );
    assert_eq!(
        t.observe(peers[2].clone(), at(61)),
        Observed::PingOldest(peers[0].clone())
    );
}

#[test]
fn a_bucket_heard_from_needs_no_refresh() {
    let mut rng = Rng::seed_from_u64(9);
    let local = rng.key();
    let mut t = table(local);
    let at = |s: u64| Instant::from_micros(s * 1_000_000);
    let far = PeerInfo::new(local.random_in_bucket(0, &rng.key()), 1u32);
    let near = PeerInfo::new(local.random_in_bucket(1, &rng.key()), 2u32);
    t.observe(far.clone(), at(0));
    t.observe(near.clone(), at(0));
    let hour = Duration::from_secs(3600);
    assert_eq!(t.idle_buckets(at(3600), hour), vec![0, 1]);
    // A known peer of bucket 0 writes at 1800 s: only bucket 1 is idle
    // an hour after the start.
    assert_eq!(t.observe(far, at(1800)), Observed::Refreshed);
    assert_eq!(t.idle_buckets(at(3600), hour), vec![1]);
    assert_eq!(t.idle_buckets(at(5400), hour), vec![0, 1]);
}

#[test]
fn failed_ping_evicts_oldest_for_newest_replacement() {
    let mut rng = Rng::seed_from_u64(4);
    let local = rng.key();
    let mut t = table(local);
    let peers: Vec<PeerInfo<u32>> = (0..5)
        .map(|i| PeerInfo::new(local.random_in_bucket(0, &rng.key()), i))
        .collect();
    for p in &peers {
        t.observe(p.clone(), Instant::ZERO);
    }
    assert_eq!(
        t.finish_eviction_ping(&peers[0].key, false, Instant::ZERO),
        Some((peers[0].clone(), peers[4].clone()))
    );
    assert!(!t.contains(&peers[0].key));
    assert!(t.contains(&peers[4].key));
    assert_eq!(t.len(), 4);
    t.check_invariants().unwrap();
}

#[test]
fn repeated_failures_mark_stale_without_replacement_and_recover() {
    let mut rng = Rng::seed_from_u64(5);
    let local = rng.key();
    let mut t = table(local);
    let p = PeerInfo::new(rng.key(), 1u32);
    t.observe(p.clone(), Instant::ZERO);
    assert_eq!(t.record_failure(&p.key, Instant::ZERO), Failed::Counted);
    assert_eq!(t.record_failure(&p.key, Instant::ZERO), Failed::Stale);
    assert!(
        t.closest(&p.key, 5, None).is_empty(),
        "stale peers are left out of lookups"
    );
    assert_eq!(t.stale_peers(0), vec![p.clone()]);
    // Each failed probe spaces the next one further out (and is only
    // counted: the entry became stale once); then it goes.
    assert_eq!(t.record_failure(&p.key, Instant::ZERO), Failed::Counted);
    assert!(t.stale_peers(1).is_empty() && t.stale_peers(2).len() == 1);
    for _ in 1..STALE_PROBES - 1 {
        assert_eq!(t.record_failure(&p.key, Instant::ZERO), Failed::Counted);
    }
    assert_eq!(t.record_failure(&p.key, Instant::ZERO), Failed::Removed);
    assert!(t.is_empty());
    t.observe(p.clone(), Instant::ZERO);
    t.record_failure(&p.key, Instant::ZERO);
    t.record_failure(&p.key, Instant::ZERO);
    assert_eq!(t.observe(p.clone(), Instant::ZERO), Observed::Refreshed);
    assert_eq!(t.closest(&p.key, 5, None), vec![p]);
}

#[test]
fn local_key_never_enters() {
    let local = Rng::seed_from_u64(6).key();
    let mut t = table(local);
    assert_eq!(t.observe(PeerInfo::new(local, 0), Instant::ZERO), Observed::Local);
    assert!(t.is_empty());
}

/// `n` peers in bucket 0 of `local` (their first bit differs).
fn far_peers(rng: &mut Rng, local: &Key, n: u32) -> Vec<PeerInfo<u32>> {
    (0..n)
        .map(|i| PeerInfo::new(local.random_in_bucket(0, &rng.key()), i))
        .collect()
}

fn at(s: u64) -> Instant {
    Instant::from_micros(s * 1_000_000)
}

#[test]
fn the_table_says_what_it_is() {
    let local = Rng::seed_from_u64(40).key();
    let mut t = table(local);
    assert_eq!(t.local_key(), local);
    assert_eq!(t.bucket_size(), 4);
    assert!(t.is_empty());
    t.observe(PeerInfo::new(local.with_bit_flipped(0), 1), Instant::ZERO);
    assert!(!t.is_empty());
    assert_eq!(t.len(), 1);
}

#[test]
fn the_ping_goes_to_the_least_recently_seen_not_the_first_inserted() {
    let mut rng = Rng::seed_from_u64(41);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 2, 2, 3, Duration::from_secs(30));
    let peers = far_peers(&mut rng, &local, 3);
    t.observe(peers[0].clone(), at(0));
    t.observe(peers[1].clone(), at(5));
    // The first inserted is heard from again: the second is now oldest.
    t.observe(peers[0].clone(), at(10));
    for p in &peers[..2] {
        assert_eq!(t.record_failure(&p.key, at(10)), Failed::Counted);
    }
    assert_eq!(
        t.observe(peers[2].clone(), at(100)),
        Observed::PingOldest(peers[1].clone())
    );
    // It answers: heard from now, its failures forgotten, so the next
    // newcomer pings the other one (quiet and with a miss) instead.
    assert_eq!(t.finish_eviction_ping(&peers[1].key, true, at(100)), None);
    let fourth = PeerInfo::new(local.random_in_bucket(0, &rng.key()), 4);
    assert_eq!(
        t.observe(fourth.clone(), at(120)),
        Observed::PingOldest(peers[0].clone())
    );
    assert_eq!(t.finish_eviction_ping(&peers[0].key, true, at(120)), None);
    // Both answered lately and have no misses: nobody is pinged.
    assert_eq!(t.observe(fourth, at(121)), Observed::Queued);
    t.check_invariants().unwrap();
}

#[test]
fn stale_marks_are_reported_per_peer_and_counted_through_every_path() {
    let mut rng = Rng::seed_from_u64(42);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 2, 2, 1, Duration::ZERO);
    let peers = far_peers(&mut rng, &local, 4);
    t.observe(peers[0].clone(), at(0));
    t.observe(peers[1].clone(), at(0));
    // One failure with an empty cache: stale, but kept.
    assert_eq!(t.record_failure(&peers[0].key, at(1)), Failed::Stale);
    assert!(t.is_stale(&peers[0].key));
    assert!(!t.is_stale(&peers[1].key), "only the one that failed");
    assert!(!t.is_stale(&peers[2].key), "nor one the table does not hold");
    assert_eq!(t.stale, 1);
    // A newcomer to the full bucket takes the stale entry's place.
    assert_eq!(t.observe(peers[2].clone(), at(2)), Observed::Replaced(peers[0].clone()));
    assert_eq!(t.stale, 0);
    t.check_invariants().unwrap();
    // Stale again, then pinged out for a replacement from the cache.
    assert_eq!(t.record_failure(&peers[1].key, at(3)), Failed::Stale);
    let mut held = t.clone();
    t.buckets[0].replacements.push(peers[3].clone());
    assert_eq!(
        t.finish_eviction_ping(&peers[1].key, false, at(4)),
        Some((peers[1].clone(), peers[3].clone()))
    );
    t.check_invariants().unwrap();
    // Or, failing once more with a replacement waiting, replaced.
    held.buckets[0].replacements.push(peers[3].clone());
    assert_eq!(
        held.record_failure(&peers[1].key, at(4)),
        Failed::Replaced(peers[3].clone())
    );
    held.check_invariants().unwrap();
    // Or probed out for good after STALE_PROBES more failures.
    let mut gone = RoutingTable::new(local, 2, 2, 1, Duration::ZERO);
    gone.observe(peers[0].clone(), at(0));
    assert_eq!(gone.record_failure(&peers[0].key, at(1)), Failed::Stale);
    for _ in 0..STALE_PROBES - 1 {
        assert_eq!(gone.record_failure(&peers[0].key, at(1)), Failed::Counted);
    }
    assert_eq!(gone.record_failure(&peers[0].key, at(1)), Failed::Removed);
    assert_eq!((gone.len(), gone.stale), (0, 0));
    gone.check_invariants().unwrap();
}

#[test]
fn a_full_bucket_holds_exactly_k_entries_worth_of_memory() {
    let mut rng = Rng::seed_from_u64(43);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 20, 3, 2, Duration::ZERO);
    for p in far_peers(&mut rng, &local, 20) {
        assert_eq!(t.observe(p, Instant::ZERO), Observed::Inserted);
    }
    assert_eq!(t.buckets[0].entries.capacity(), 20);
}

#[test]
fn the_replacement_cache_keeps_the_newest_cap_waiting_peers() {
    let mut rng = Rng::seed_from_u64(44);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 2, 2, 2, Duration::ZERO);
    let peers = far_peers(&mut rng, &local, 6);
    for p in &peers {
        t.observe(p.clone(), Instant::ZERO);
    }
    let waiting: Vec<Key> = t.buckets[0].replacements.iter().map(|p| p.key).collect();
    assert_eq!(waiting, vec![peers[4].key, peers[5].key]);
    // A waiting peer that fails a request leaves the cache; the entry
    // that fails for good is replaced by the one still waiting.
    assert_eq!(t.record_failure(&peers[5].key, Instant::ZERO), Failed::Unknown);
    t.record_failure(&peers[0].key, Instant::ZERO);
    assert_eq!(
        t.record_failure(&peers[0].key, Instant::ZERO),
        Failed::Replaced(peers[4].clone())
    );
    t.check_invariants().unwrap();
}

#[test]
fn a_neighbour_is_quiet_only_once_heard_from_longer_ago_than_the_limit() {
    let mut rng = Rng::seed_from_u64(45);
    let local = rng.key();
    let mut t = table(local);
    let p = PeerInfo::new(local.with_bit_flipped(200), 1u32);
    t.observe(p.clone(), at(0));
    let quiet = Duration::from_secs(60);
    assert!(
        t.quiet_neighbours(3, at(60), quiet).is_empty(),
        "heard from exactly 60 s ago"
    );
    assert_eq!(t.quiet_neighbours(3, at(61), quiet), vec![p]);
}

#[test]
fn a_removed_peer_leaves_the_table_and_the_cache() {
    let mut rng = Rng::seed_from_u64(46);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 2, 2, 2, Duration::ZERO);
    let peers = far_peers(&mut rng, &local, 3);
    for p in &peers {
        t.observe(p.clone(), Instant::ZERO);
    }
    // One waiting peer leaves: gone from the cache, so the entry removed
    // next is replaced by the other one waiting.
    let fourth = PeerInfo::new(local.random_in_bucket(0, &rng.key()), 4);
    t.observe(fourth.clone(), Instant::ZERO);
    assert_eq!(t.remove(&peers[2].key, Instant::ZERO), Failed::Unknown);
    assert_eq!(t.remove(&peers[1].key, Instant::ZERO), Failed::Replaced(fourth.clone()));
    assert!(t.contains(&peers[0].key) && t.contains(&fourth.key) && !t.contains(&peers[2].key));
    // Nobody waits now: the next removal leaves a place empty.
    assert_eq!(t.remove(&peers[0].key, Instant::ZERO), Failed::Removed);
    assert_eq!(t.len(), 1);
    t.check_invariants().unwrap();
}

#[test]
fn a_lookup_into_a_bucket_keeps_it_from_needing_a_refresh() {
    let mut rng = Rng::seed_from_u64(47);
    let local = rng.key();
    let mut t = table(local);
    t.observe(PeerInfo::new(local.random_in_bucket(0, &rng.key()), 1u32), at(0));
    t.observe(PeerInfo::new(local.random_in_bucket(1, &rng.key()), 2u32), at(0));
    let hour = Duration::from_secs(3600);
    t.touch(&local.random_in_bucket(1, &rng.key()), at(1800));
    assert_eq!(t.idle_buckets(at(3600), hour), vec![0]);
    t.touch_index(0, at(1800));
    assert!(t.idle_buckets(at(3600), hour).is_empty());
}

#[test]
fn heap_bytes_counts_the_entries_held() {
    let mut rng = Rng::seed_from_u64(48);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 20, 3, 2, Duration::ZERO);
    let empty = t.heap_bytes();
    for p in far_peers(&mut rng, &local, 23) {
        t.observe(p, Instant::ZERO);
    }
    let entries = 20 * std::mem::size_of::<BucketEntry<u32>>();
    let waiting = 3 * std::mem::size_of::<PeerInfo<u32>>();
    let bucket = std::mem::size_of::<Bucket<u32>>();
    let grown = t.heap_bytes() - empty;
    assert!(
        grown >= entries + waiting + bucket,
        "{grown} < {}",
        entries + waiting + bucket
    );
    assert!(grown <= 2 * (entries + waiting) + 4 * bucket, "{grown}");
}

#[test]
fn the_table_invariants_catch_a_wrong_count_or_a_misplaced_peer() {
    let mut rng = Rng::seed_from_u64(49);
    let local = rng.key();
    let mut t = table(local);
    let p = PeerInfo::new(local.random_in_bucket(0, &rng.key()), 1u32);
    t.observe(p.clone(), Instant::ZERO);
    t.check_invariants().unwrap();
    let mut count = t.clone();
    count.len += 1;
    assert!(count.check_invariants().is_err());
    let mut stale = t.clone();
    stale.stale += 1;
    assert!(stale.check_invariants().is_err());
    let mut twice = t.clone();
    twice.buckets[0].entries.push(BucketEntry::new(p, Instant::ZERO));
    twice.len += 1;
    assert!(twice.check_invariants().is_err());
}

#[test]
fn without_a_replacement_cache_a_full_bucket_keeps_nobody_waiting() {
    let mut rng = Rng::seed_from_u64(50);
    let local = rng.key();
    let mut t = RoutingTable::new(local, 2, 0, 2, Duration::ZERO);
    for p in far_peers(&mut rng, &local, 4) {
        t.observe(p, Instant::ZERO);
    }
    assert!(t.buckets[0].replacements.is_empty());
    assert_eq!(t.len(), 2);
}
