//! Batched provide: [`Overlay::provide_many`] places many provider records
//! a home at a time, one lookup per range of keys and one store message
//! per home member and chunk.

use std::collections::{BTreeMap, BTreeSet};

use super::{Overlay, Purpose, release_if_empty};
use crate::query::QueryKind;
use crate::record::AnyRecord;
use crate::wire::{MAX_BATCH_RECORDS, MAX_MESSAGE_BYTES};
use crate::{Addr, CommandError, Event, Instant, Key, Mode, PeerInfo, ProviderRecord, QueryId, Request, RequestId};

/// A [`Overlay::provide_many`] batch: keys are placed at their homes a
/// range at a time, one lookup per range.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Batch {
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

impl<A: Addr> Overlay<A> {
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
    pub(super) fn announce_many(&mut self, now: Instant, keys: Vec<Key>) -> Result<QueryId, CommandError> {
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
    pub(super) fn batch_place(&mut self, now: Instant, id: QueryId, lookup: QueryId, peers: &[PeerInfo<A>]) {
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
    pub(super) fn batch_chunk(&self, sample: Option<&ProviderRecord<A>>) -> usize {
        let Some(sample) = sample else { return 1 };
        let one = crate::wire::encode_request(self.config.mode, &Request::AddProvider { record: sample.clone() })
            .map_or(MAX_MESSAGE_BYTES, |b| b.len());
        // Leave room for the envelope and for records with longer addresses.
        ((MAX_MESSAGE_BYTES * 3 / 4) / one.max(1)).clamp(1, MAX_BATCH_RECORDS)
    }

    /// A batched store was answered (`refused` lists what the member did not
    /// store) or failed (`None`).
    pub(super) fn batch_stored(&mut self, now: Instant, id: QueryId, request: RequestId, refused: Option<Vec<u32>>) {
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
}
