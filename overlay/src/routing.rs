//! The routing table: k-buckets indexed by common-prefix length.
//!
//! Bucket `i` holds peers whose keys share exactly `i` leading bits with the
//! local key. Each entry remembers when it was last heard from; the
//! least-recently-seen entry is the one with the oldest time (ties go to the
//! earlier inserted), so hearing from a peer updates it in place. A full bucket does
//! not drop a live old entry for a new one: the new peer waits in a small
//! replacement cache while the oldest entry is pinged, and takes its place
//! only if the ping fails (old peers that stayed up tend to stay up).
//! An entry that fails repeatedly is replaced from the cache, or, when the
//! cache is empty, kept but marked stale: stale entries are left out of
//! lookups and pinged now and then, so that a healed partition finds its
//! way back.

use std::time::Duration;

use crate::{Addr, Distance, Instant, KEY_BITS, Key, PeerInfo};

/// Failed probes after which a stale entry is dropped: with the probe gap
/// doubling to eight maintenance rounds, about 80 rounds (80 minutes by
/// default) — long enough to ride out a partition, short enough that the
/// dead do not linger.
pub const STALE_PROBES: u8 = 12;

/// One peer in a bucket.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
struct Entry<A> {
    key: Key,
    addr: A,
    /// When the peer was last heard from, in whole seconds of the core's clock.
    seen_s: u32,
    /// Consecutive requests to this peer that failed.
    failures: u8,
    /// Failed too often with no replacement at hand; skipped by lookups.
    stale: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
struct Bucket<A> {
    /// In insertion order; recency is in `Entry::seen_s`.
    entries: Vec<Entry<A>>,
    /// Peers waiting for a place, most recently seen last.
    replacements: Vec<PeerInfo<A>>,
    /// Whether the least-recently-seen entry is being pinged for eviction.
    pinging: bool,
    /// Last time a lookup went into this bucket's range or it gained a peer.
    last_active: Instant,
}

impl<A> Entry<A> {
    fn new(peer: PeerInfo<A>, now: Instant) -> Self {
        Entry {
            key: peer.key,
            addr: peer.addr,
            seen_s: seconds(now),
            failures: 0,
            stale: false,
        }
    }
}

fn seconds(now: Instant) -> u32 {
    u32::try_from(now.as_micros() / 1_000_000).unwrap_or(u32::MAX)
}

impl<A> Bucket<A> {
    /// Position of the least-recently-seen entry (the first of the oldest).
    fn oldest(&self) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if best.is_none_or(|(seen, _)| e.seen_s < seen) {
                best = Some((e.seen_s, i));
            }
        }
        best.map(|(_, i)| i)
    }

    fn new(now: Instant) -> Self {
        Bucket {
            entries: Vec::new(),
            replacements: Vec::new(),
            pinging: false,
            last_active: now,
        }
    }
}

/// What [`RoutingTable::observe`] did with a peer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub enum Observed<A> {
    /// The peer is the local peer; nothing changed.
    Local,
    /// The peer was known; it is now the most recently seen.
    Refreshed,
    /// The peer was added to its bucket.
    Inserted,
    /// The peer took the place of a stale entry, which is returned.
    Replaced(PeerInfo<A>),
    /// The bucket is full: the peer waits in the replacement cache, and the
    /// returned least-recently-seen entry must be pinged to decide.
    PingOldest(PeerInfo<A>),
    /// The bucket is full and its oldest entry is already being pinged; the
    /// peer waits in the replacement cache.
    Queued,
}

/// What [`RoutingTable::record_failure`] did with a peer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub enum Failed<A> {
    /// The peer is not in the table.
    Unknown,
    /// The failure was counted; the peer stays.
    Counted,
    /// The peer was removed, and the returned replacement took its place.
    Replaced(PeerInfo<A>),
    /// The peer was removed and no replacement was waiting.
    Removed,
    /// The peer failed too often but has no replacement: kept, marked stale
    /// (returned once, when the mark is set).
    Stale,
}

/// The k-bucket routing table of one peer.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub struct RoutingTable<A> {
    local: Key,
    k: usize,
    replacement_cap: usize,
    max_failures: u8,
    /// An oldest entry heard from this recently is not pinged for eviction.
    recently_seen_s: u32,
    /// `buckets[i]` holds peers at common-prefix length `i`; grown on demand,
    /// so a peer in a swarm of N holds about log2(N / k) + 1 buckets.
    buckets: Vec<Bucket<A>>,
    len: usize,
    /// Entries marked stale: most maintenance rounds find none, and need
    /// not walk the table to see that.
    stale: usize,
}

impl<A: Addr> RoutingTable<A> {
    /// An empty table around `local`. A full bucket whose oldest entry was
    /// heard from within `recently_seen` keeps it without a ping.
    pub fn new(local: Key, k: usize, replacement_cap: usize, max_failures: u8, recently_seen: Duration) -> Self {
        assert!(k > 0 && max_failures > 0, "k and max_failures must be positive");
        RoutingTable {
            local,
            k,
            replacement_cap,
            max_failures,
            recently_seen_s: u32::try_from(recently_seen.as_secs()).unwrap_or(u32::MAX),
            buckets: Vec::new(),
            len: 0,
            stale: 0,
        }
    }

    /// The local key.
    pub fn local_key(&self) -> Key {
        self.local
    }

    /// Most live peers a bucket holds (k).
    pub fn bucket_size(&self) -> usize {
        self.k
    }

    /// Number of peers in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of buckets allocated (the deepest non-empty prefix length + 1).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Live (not stale) entries in bucket `index`.
    pub fn live_in_bucket(&self, index: usize) -> usize {
        self.buckets
            .get(index)
            .map_or(0, |b| b.entries.iter().filter(|e| !e.stale).count())
    }

    /// Whether `key` is in the table.
    pub fn contains(&self, key: &Key) -> bool {
        self.bucket_of(key)
            .is_some_and(|b| b.entries.iter().any(|e| e.key == *key))
    }

    /// Whether `key` is in the table but marked stale: it failed
    /// repeatedly and is left out of lookups until it answers again.
    pub fn is_stale(&self, key: &Key) -> bool {
        self.bucket_of(key)
            .is_some_and(|b| b.entries.iter().any(|e| e.key == *key && e.stale))
    }

    /// Every peer in the table, bucket by bucket.
    pub fn peers(&self) -> impl Iterator<Item = PeerInfo<A>> + '_ {
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter().map(|e| PeerInfo::new(e.key, e.addr.clone())))
    }

    fn index(&self, key: &Key) -> usize {
        self.local.common_prefix_len(key)
    }

    fn bucket_of(&self, key: &Key) -> Option<&Bucket<A>> {
        self.buckets.get(self.index(key))
    }

    /// Notes that `peer` was just heard from (it sent a request or answered).
    pub fn observe(&mut self, peer: PeerInfo<A>, now: Instant) -> Observed<A> {
        if peer.key == self.local {
            return Observed::Local;
        }
        let (k, cap, recent) = (self.k, self.replacement_cap, self.recently_seen_s);
        let index = self.index(&peer.key);
        while self.buckets.len() <= index {
            self.buckets.push(Bucket::new(now));
        }
        let bucket = &mut self.buckets[index];
        bucket.last_active = bucket.last_active.max(now);
        if let Some(entry) = bucket.entries.iter_mut().find(|e| e.key == peer.key) {
            entry.failures = 0;
            if std::mem::replace(&mut entry.stale, false) {
                self.stale -= 1;
            }
            entry.addr = peer.addr;
            entry.seen_s = seconds(now);
            return Observed::Refreshed;
        }
        let entry = Entry::new(peer, now);
        if bucket.entries.len() < k {
            if bucket.entries.capacity() == bucket.entries.len() {
                // Grow towards exactly k: a full bucket should not carry the
                // slack of Vec's doubling (it adds up over 10^6 peers).
                let target = (bucket.entries.len() * 2).max(4).min(k);
                bucket.entries.reserve_exact(target - bucket.entries.len());
            }
            bucket.entries.push(entry);
            bucket.last_active = now;
            self.len += 1;
            return Observed::Inserted;
        }
        if self.stale > 0
            && let Some(pos) = bucket.entries.iter().position(|e| e.stale)
        {
            let old = bucket.entries.remove(pos);
            self.stale -= 1;
            let new_key = entry.key;
            bucket.entries.push(entry);
            bucket.replacements.retain(|r| r.key != new_key);
            return Observed::Replaced(PeerInfo::new(old.key, old.addr));
        }
        let waiting = PeerInfo::new(entry.key, entry.addr);
        bucket.replacements.retain(|r| r.key != waiting.key);
        if cap > 0 {
            if bucket.replacements.len() >= cap {
                bucket.replacements.remove(0);
            }
            bucket.replacements.push(waiting);
        }
        let Some(oldest) = bucket.oldest().map(|i| &bucket.entries[i]) else {
            return Observed::Queued; // unreachable: the bucket is full
        };
        // Probing is lazy (Kademlia, section 4.1): the newcomer waits in the
        // replacement cache, and the oldest entry is pinged only once it
        // has missed a request and been quiet for `recently_seen`. Pinging
        // the oldest for every newcomer cost a 10,000-peer swarm more
        // requests than every other kind of maintenance.
        if bucket.pinging || oldest.failures == 0 || oldest.seen_s.saturating_add(recent) > seconds(now) {
            return Observed::Queued;
        }
        let oldest = PeerInfo::new(oldest.key, oldest.addr.clone());
        bucket.pinging = true;
        Observed::PingOldest(oldest)
    }

    /// Ends the eviction ping of the bucket holding `key`: the ping answered
    /// (`alive`), or it failed and the oldest entry gives way to the newest
    /// replacement. Returns the evicted peer and the one that took its place.
    pub fn finish_eviction_ping(&mut self, key: &Key, alive: bool, now: Instant) -> Option<(PeerInfo<A>, PeerInfo<A>)> {
        let index = self.index(key);
        let bucket = self.buckets.get_mut(index)?;
        bucket.pinging = false;
        if alive {
            self.observe_known(key, now);
            return None;
        }
        let pos = bucket.entries.iter().position(|e| e.key == *key)?;
        let replacement = bucket.replacements.pop()?;
        let old = bucket.entries.remove(pos);
        if old.stale {
            self.stale -= 1;
        }
        bucket.entries.push(Entry::new(replacement.clone(), now));
        Some((PeerInfo::new(old.key, old.addr), replacement))
    }

    fn observe_known(&mut self, key: &Key, now: Instant) {
        let index = self.index(key);
        if let Some(bucket) = self.buckets.get_mut(index)
            && let Some(entry) = bucket.entries.iter_mut().find(|e| e.key == *key)
        {
            entry.failures = 0;
            if std::mem::replace(&mut entry.stale, false) {
                self.stale -= 1;
            }
            entry.seen_s = seconds(now);
            bucket.last_active = bucket.last_active.max(now);
        }
    }

    /// Notes that a request to `key` failed (timed out or was refused).
    pub fn record_failure(&mut self, key: &Key, now: Instant) -> Failed<A> {
        let max_failures = self.max_failures;
        let index = self.index(key);
        let Some(bucket) = self.buckets.get_mut(index) else {
            return Failed::Unknown;
        };
        bucket.replacements.retain(|r| r.key != *key);
        let Some(pos) = bucket.entries.iter().position(|e| e.key == *key) else {
            return Failed::Unknown;
        };
        let entry = &mut bucket.entries[pos];
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures < max_failures {
            return Failed::Counted;
        }
        if let Some(replacement) = bucket.replacements.pop() {
            if bucket.entries.remove(pos).stale {
                self.stale -= 1;
            }
            bucket.entries.push(Entry::new(replacement.clone(), now));
            return Failed::Replaced(replacement);
        }
        if entry.failures >= max_failures.saturating_add(STALE_PROBES) {
            // Probed for over an hour without an answer: gone for good.
            if bucket.entries.remove(pos).stale {
                self.stale -= 1;
            }
            self.len -= 1;
            return Failed::Removed;
        }
        if std::mem::replace(&mut entry.stale, true) {
            // Already stale: one more failed probe.
            return Failed::Counted;
        }
        self.stale += 1;
        Failed::Stale
    }

    /// Removes `key` from the table (a peer that left gracefully).
    pub fn remove(&mut self, key: &Key, now: Instant) -> Failed<A> {
        let index = self.index(key);
        let Some(bucket) = self.buckets.get_mut(index) else {
            return Failed::Unknown;
        };
        bucket.replacements.retain(|r| r.key != *key);
        let Some(pos) = bucket.entries.iter().position(|e| e.key == *key) else {
            return Failed::Unknown;
        };
        if bucket.entries.remove(pos).stale {
            self.stale -= 1;
        }
        if let Some(replacement) = bucket.replacements.pop() {
            bucket.entries.push(Entry::new(replacement.clone(), now));
            return Failed::Replaced(replacement);
        }
        self.len -= 1;
        Failed::Removed
    }

    /// Up to `count` live (non-stale) peers closest to `target`, closest
    /// first, leaving out `exclude`.
    ///
    /// Walks buckets in distance order instead of sorting the whole table:
    /// peers in bucket `i = cpl(local, target)` are closest to the target,
    /// then all deeper buckets (they differ from the target at bit `i`), then
    /// shallower buckets from `i - 1` down to 0.
    pub fn closest(&self, target: &Key, count: usize, exclude: Option<&Key>) -> Vec<PeerInfo<A>> {
        self.closest_entries(target, count, exclude)
            .iter()
            .map(|(_, e)| PeerInfo::new(e.key, e.addr.clone()))
            .collect()
    }

    /// How many live (not stale) peers the table holds nearer `target` than
    /// `than`, counting up to `limit`: whether a peer at that distance is
    /// among the `limit` nearest the table knows, with no sort and no
    /// allocation. The buckets are visited nearest range first: the
    /// target's own bucket `c` (every entry shares `c + 1` leading bits with
    /// the target), then the deeper buckets (distance with exactly `c`
    /// leading zeros), then the shallower ones, bucket `j` at `j` leading
    /// zeros — none of which can be nearer than `than` once `than` has more.
    pub fn count_closer(&self, target: &Key, than: &Distance, limit: usize) -> usize {
        self.count_closer_except(target, than, limit, &[])
    }

    /// [`count_closer`](Self::count_closer), leaving out the peers `except`.
    pub fn count_closer_except(&self, target: &Key, than: &Distance, limit: usize, except: &[Key]) -> usize {
        let mut n = 0;
        let mut count = |bucket: &Bucket<A>| {
            for e in &bucket.entries {
                if n >= limit {
                    return;
                }
                if !e.stale && e.key.distance(target) < *than && !except.contains(&e.key) {
                    n += 1;
                }
            }
        };
        let c = self.index(target);
        for bucket in self.buckets.iter().skip(c) {
            count(bucket);
        }
        let zeros = than.leading_zeros();
        for j in (0..c.min(self.buckets.len())).rev() {
            if zeros > j {
                break;
            }
            count(&self.buckets[j]);
        }
        n.min(limit)
    }

    /// Of the `count` live peers closest to the local peer, those not heard
    /// from within `quiet` before `now`: the neighbours whose liveness the
    /// home depends on, due for a probe.
    pub fn quiet_neighbours(&self, count: usize, now: Instant, quiet: Duration) -> Vec<PeerInfo<A>> {
        let horizon = seconds(now).saturating_sub(u32::try_from(quiet.as_secs()).unwrap_or(u32::MAX));
        self.closest_entries(&self.local, count, None)
            .iter()
            .filter(|(_, e)| e.seen_s < horizon)
            .map(|(_, e)| PeerInfo::new(e.key, e.addr.clone()))
            .collect()
    }

    fn closest_entries(&self, target: &Key, count: usize, exclude: Option<&Key>) -> Vec<(Distance, &Entry<A>)> {
        let mut out: Vec<(Distance, &Entry<A>)> = Vec::with_capacity(count + self.k);
        let first = self.index(target).min(KEY_BITS - 1);
        if let Some(bucket) = self.buckets.get(first) {
            take_bucket(bucket, target, exclude, &mut out);
        }
        if out.len() < count {
            // Deeper buckets are all at the same order of distance: one sort.
            let from = out.len();
            for bucket in self.buckets.iter().skip(first + 1) {
                out.extend(
                    bucket
                        .entries
                        .iter()
                        .filter(|e| !e.stale && Some(&e.key) != exclude)
                        .map(|e| (e.key.distance(target), e)),
                );
            }
            out[from..].sort_unstable_by_key(|a| a.0);
        }
        for bucket in self.buckets.iter().take(first.min(self.buckets.len())).rev() {
            if out.len() >= count {
                break;
            }
            take_bucket(bucket, target, exclude, &mut out);
        }
        out.truncate(count);
        out
    }

    /// Indices of buckets with no activity since `now - idle`. A lookup
    /// into a bucket's range marks it active again ([`touch`](Self::touch)),
    /// and so does hearing from any peer in its range: a bucket that traffic
    /// passes through is kept fresh by it (Kademlia, section 2.3) and needs
    /// no refresh lookup.
    pub fn idle_buckets(&self, now: Instant, idle: Duration) -> Vec<usize> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.last_active + idle <= now)
            .map(|(i, _)| i)
            .collect()
    }

    /// Marks bucket `index` as active.
    pub fn touch_index(&mut self, index: usize, now: Instant) {
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.last_active = bucket.last_active.max(now);
        }
    }

    /// Marks the bucket that `target` falls in as active (a lookup went there).
    pub fn touch(&mut self, target: &Key, now: Instant) {
        self.touch_index(self.index(target), now);
    }

    /// The stale entries due for a probe at maintenance round `round`, in
    /// case they came back. Each failed probe doubles the gap to the next,
    /// up to every eighth round; after [`STALE_PROBES`] failed probes the
    /// entry is dropped.
    pub fn stale_peers(&self, round: u64) -> Vec<PeerInfo<A>> {
        if self.stale == 0 {
            return Vec::new();
        }
        let max_failures = self.max_failures;
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter().filter(|e| e.stale))
            .filter(|e| {
                let missed = u32::from(e.failures.saturating_sub(max_failures)).min(3);
                round.is_multiple_of(1u64 << missed)
            })
            .map(|e| PeerInfo::new(e.key, e.addr.clone()))
            .collect()
    }

    /// Heap bytes held by the table, for memory reports.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<Bucket<A>>()
            + self
                .buckets
                .iter()
                .map(|b| {
                    b.entries.capacity() * size_of::<Entry<A>>() + b.replacements.capacity() * size_of::<PeerInfo<A>>()
                })
                .sum::<usize>()
    }

    /// Checks the table's invariants; the simulator calls this as it runs.
    pub fn check_invariants(&self) -> Result<(), String> {
        let (mut count, mut stale) = (0, 0);
        for (i, bucket) in self.buckets.iter().enumerate() {
            if bucket.entries.len() > self.k {
                return Err(format!("bucket {i} holds {} > k = {}", bucket.entries.len(), self.k));
            }
            if bucket.replacements.len() > self.replacement_cap {
                return Err(format!("bucket {i} replacement cache over its cap"));
            }
            for (j, e) in bucket.entries.iter().enumerate() {
                if e.key == self.local {
                    return Err("the local key is in its own table".into());
                }
                if self.index(&e.key) != i {
                    return Err(format!(
                        "peer {:?} is in bucket {i}, belongs in {}",
                        e.key,
                        self.index(&e.key)
                    ));
                }
                if bucket.entries[..j].iter().any(|o| o.key == e.key) {
                    return Err(format!("peer {:?} appears twice in bucket {i}", e.key));
                }
            }
            count += bucket.entries.len();
            stale += bucket.entries.iter().filter(|e| e.stale).count();
        }
        if count != self.len {
            return Err(format!("table counts {} peers but holds {count}", self.len));
        }
        if stale != self.stale {
            return Err(format!("table counts {} stale entries but holds {stale}", self.stale));
        }
        Ok(())
    }
}

/// Appends a bucket's live entries (but `exclude`) sorted by distance to
/// `target`. Earlier parts of `out` are sorted and all closer than this
/// bucket: the bucket walk in `closest` guarantees it.
fn take_bucket<'a, A>(
    bucket: &'a Bucket<A>,
    target: &Key,
    exclude: Option<&Key>,
    out: &mut Vec<(Distance, &'a Entry<A>)>,
) {
    let from = out.len();
    for e in &bucket.entries {
        if !e.stale && Some(&e.key) != exclude {
            out.push((e.key.distance(target), e));
        }
    }
    out[from..].sort_unstable_by_key(|a| a.0);
}

#[cfg(test)]
mod tests {
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
        let entries = 20 * std::mem::size_of::<Entry<u32>>();
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
        twice.buckets[0].entries.push(Entry::new(p, Instant::ZERO));
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
}
