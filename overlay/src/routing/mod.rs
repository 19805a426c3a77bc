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
//!
//! The table's tests live in `tests`.

use std::time::Duration;

use crate::{Addr, Distance, Instant, KEY_BITS, Key, PeerInfo};

#[cfg(test)]
mod tests;

/// Failed probes after which a stale entry is dropped: with the probe gap
/// doubling to eight maintenance rounds, about 80 rounds (80 minutes by
/// default) — long enough to ride out a partition, short enough that the
/// dead do not linger.
pub const STALE_PROBES: u8 = 12;

/// One peer in a bucket.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
struct BucketEntry<A> {
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
    /// In insertion order; recency is in `BucketEntry::seen_s`.
    entries: Vec<BucketEntry<A>>,
    /// Peers waiting for a place, most recently seen last.
    replacements: Vec<PeerInfo<A>>,
    /// Whether the least-recently-seen entry is being pinged for eviction.
    pinging: bool,
    /// Last time a lookup went into this bucket's range or it gained a peer.
    last_active: Instant,
}

impl<A> BucketEntry<A> {
    fn new(peer: PeerInfo<A>, now: Instant) -> Self {
        BucketEntry {
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
        let entry = BucketEntry::new(peer, now);
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
        bucket.entries.push(BucketEntry::new(replacement.clone(), now));
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
            bucket.entries.push(BucketEntry::new(replacement.clone(), now));
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
            bucket.entries.push(BucketEntry::new(replacement.clone(), now));
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

    fn closest_entries(&self, target: &Key, count: usize, exclude: Option<&Key>) -> Vec<(Distance, &BucketEntry<A>)> {
        let mut out: Vec<(Distance, &BucketEntry<A>)> = Vec::with_capacity(count + self.k);
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
                    b.entries.capacity() * size_of::<BucketEntry<A>>()
                        + b.replacements.capacity() * size_of::<PeerInfo<A>>()
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
    out: &mut Vec<(Distance, &'a BucketEntry<A>)>,
) {
    let from = out.len();
    for e in &bucket.entries {
        if !e.stale && Some(&e.key) != exclude {
            out.push((e.key.distance(target), e));
        }
    }
    out[from..].sort_unstable_by_key(|a| a.0);
}
