//! Homes: which peers form the home of a key (the `r` nearest that have not
//! declined it), this peer's declines, and handing records on to a home
//! that changed: a peer joined it, a member left the table, or a peer
//! declined the key or took its decline back.

use std::collections::BTreeSet;

use super::{Overlay, Purpose, release_if_empty};
use crate::record::AnyRecord;
use crate::{Addr, CommandError, Event, Instant, Key, PeerInfo, QueryId, Request};

/// Replication requests that may wait on one peer's answers at a time. A
/// peer that joins a home, or a home whose member left, is owed every
/// record at its keys; sent all at once, hundreds of them overran the
/// receiver (libp2p's request-response takes 100 streams per connection
/// and drops the rest), the drops counted as failures, the failures made
/// the receiver stale, and each stale peer sent every one of its records
/// again: a storm that outlived the restart that began it.
pub(crate) const HANDOFF_IN_FLIGHT: usize = 8;

/// What this peer owes one peer: the keys whose records it is to be sent,
/// a few at a time. A key owed twice is sent once, with the records as
/// they are when its turn comes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: Addr")]
pub(super) struct Owed<A> {
    peer: PeerInfo<A>,
    keys: BTreeSet<Key>,
    /// Replication requests sent to it and not yet answered.
    in_flight: usize,
}

impl<A: Addr> Overlay<A> {
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

    // ----- internals: hand-off ---------------------------------------------

    /// A peer entered the table: hand it the records whose home it joined.
    pub(super) fn peer_arrived(&mut self, now: Instant, peer: PeerInfo<A>) {
        self.events.push_back(Event::PeerAdded { peer: peer.clone() });
        if self.store.is_empty() {
            return;
        }
        let next = now + self.config.replicate_interval;
        for key in self.store.keys() {
            if self.in_home(&key, &peer.key) {
                self.store.replicated_until(&key, next);
                self.owe(&peer, key);
            }
        }
        self.hand_off(now, &peer.key);
    }

    /// A peer left the table: where it was in a home with us, the home now
    /// has a new member. We do not know which member lacks the records, so
    /// all of them get them again; those that hold them answer at once.
    /// What was still owed to the peer that left is dropped.
    pub(super) fn peer_gone(&mut self, now: Instant, gone: &Key) {
        if let Some(owed) = self.owed.get_mut(gone) {
            owed.keys.clear();
            self.settle(gone);
        }
        if self.store.is_empty() {
            return;
        }
        for key in self.store.keys() {
            // It was a member if it would be one now, back in the table.
            if !self.in_home(&key, gone) || !self.is_home_member(&key) {
                continue;
            }
            let home = self.home_of(&key);
            self.send_to_home(now, &home, key);
        }
    }

    /// Owes every member of `home` but this peer the records at `key`, and
    /// marks them replicated for an interval.
    pub(super) fn send_to_home(&mut self, now: Instant, home: &[PeerInfo<A>], key: Key) {
        self.store.replicated_until(&key, now + self.config.replicate_interval);
        let local = self.local.key;
        for member in home.iter().filter(|m| m.key != local) {
            self.owe(member, key);
            self.hand_off(now, &member.key);
        }
    }

    /// Sends `records` to `to` at once, counted against what may wait on it
    /// (for records about to be forgotten, which cannot wait their turn).
    pub(super) fn send_now(&mut self, now: Instant, to: &PeerInfo<A>, records: Vec<AnyRecord<A>>) {
        let requests = self.store_requests(records);
        self.owed
            .entry(to.key)
            .or_insert_with(|| Owed {
                peer: to.clone(),
                keys: BTreeSet::new(),
                in_flight: 0,
            })
            .in_flight += requests.len();
        for request in requests {
            self.send(now, to.clone(), request, Purpose::Replicate);
        }
    }

    /// Adds `key` to what `peer` is owed.
    fn owe(&mut self, peer: &PeerInfo<A>, key: Key) {
        let owed = self.owed.entry(peer.key).or_insert_with(|| Owed {
            peer: peer.clone(),
            keys: BTreeSet::new(),
            in_flight: 0,
        });
        owed.peer = peer.clone();
        owed.keys.insert(key);
    }

    /// Sends `peer` the records it is owed, while fewer than
    /// [`HANDOFF_IN_FLIGHT`] requests wait on it.
    pub(super) fn hand_off(&mut self, now: Instant, peer: &Key) {
        loop {
            let Some(owed) = self.owed.get_mut(peer) else { return };
            if owed.in_flight >= HANDOFF_IN_FLIGHT {
                return;
            }
            let Some(key) = owed.keys.pop_first() else {
                self.settle(peer);
                return;
            };
            let to = owed.peer.clone();
            // Expired or forgotten since it was owed: nothing to send.
            let records = self.store.records_of(&key, now);
            if !records.is_empty() {
                self.send_now(now, &to, records);
            }
        }
    }

    /// A replication request to `peer` was answered or failed: the next
    /// owed records may go.
    pub(super) fn replicated(&mut self, now: Instant, peer: &Key) {
        if let Some(owed) = self.owed.get_mut(peer) {
            owed.in_flight = owed.in_flight.saturating_sub(1);
        }
        self.hand_off(now, peer);
        self.settle(peer);
    }

    /// Drops everything owed that has not gone out (a leaving peer hands
    /// its records on by itself).
    pub(super) fn owe_nothing(&mut self) {
        for owed in self.owed.values_mut() {
            owed.keys.clear();
        }
        self.owed.retain(|_, o| o.in_flight > 0);
    }

    /// Forgets `peer`'s entry once nothing is owed or waiting.
    fn settle(&mut self, peer: &Key) {
        if self
            .owed
            .get(peer)
            .is_some_and(|o| o.in_flight == 0 && o.keys.is_empty())
        {
            self.owed.remove(peer);
            release_if_empty(&mut self.owed);
        }
    }

    /// Replication requests waiting on each peer, as this peer counts them
    /// (checked against the requests outstanding).
    pub(super) fn handoffs_in_flight(&self) -> impl Iterator<Item = (&Key, usize)> {
        self.owed.iter().map(|(k, o)| (k, o.in_flight))
    }

    /// The store messages that carry `records`: one per value record, and
    /// the provider records in as few `AddProviders` batches as fit.
    pub(super) fn store_requests(&self, records: Vec<AnyRecord<A>>) -> Vec<Request<A>> {
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

    /// A peer declined `key` or took it back: the home changed, so a member
    /// sends the records at `key` to the home as it is now (the members
    /// that hold them answer at once). If every one of the nearest peers
    /// declined, none is a member: the spare holders' replication tells
    /// the new home, at a quarter of the members' pace.
    pub(super) fn rehome(&mut self, now: Instant, key: &Key, provider: &Key) {
        // Only a member acts, and only for a peer near enough to have been
        // in the home: a stranger's declines for far keys cost nothing.
        let near = self.config.replication + self.store.decliners(key).len();
        if !self.is_home_member(key) || self.table.count_closer(key, &provider.distance(key), near) >= near {
            return;
        }
        let home = self.home_of(key);
        self.send_to_home(now, &home, *key);
    }
}
