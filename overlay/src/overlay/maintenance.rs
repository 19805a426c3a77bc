//! The maintenance round, every `maintenance_interval`: expire records,
//! replicate them to their homes, republish what this peer published,
//! refresh idle buckets, and probe stale entries and quiet neighbours.

use super::{Overlay, Purpose};
use crate::query::QueryKind;
use crate::{Addr, Instant, Key, Request};

/// A record holder outside the record's home replicates it this many times
/// less often than a member.
pub(crate) const OUTSIDE_REPLICATE_FACTOR: u32 = 4;

impl<A: Addr> Overlay<A> {
    pub(super) fn maintain(&mut self, now: Instant) {
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
            if self.table.count_closer(&key, &own, far) >= far {
                // Handed on now, as the records are forgotten.
                let records = self.store.records_at(&key, now + interval);
                let local = self.local.key;
                for member in home.iter().filter(|m| m.key != local) {
                    self.send_now(now, member, records.clone());
                }
                self.store.forget(&key);
            } else {
                self.send_to_home(now, &home, key);
                // (A spare holder's own pace, which `send_to_home` set
                // to a member's.)
                self.store.replicated_until(&key, now + interval);
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
}
