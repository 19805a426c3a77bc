//! Joining: the self-lookup through the seeds, then the refresh of the
//! buckets it left thin, reported as one [`Event::Bootstrapped`].

use super::{Overlay, release_if_empty};
use crate::query::QueryKind;
use crate::{Addr, CommandError, Event, Instant, PeerInfo, QueryId, QueryStats};

impl<A: Addr> Overlay<A> {
    /// Joins the overlay through `seeds` (bootstrap peers, peers found by
    /// mDNS, or remembered ones): a lookup for the local key, then a refresh
    /// of every bucket farther than the closest neighbour found (and not
    /// deeper than the k-th closest found: those the lookup saw whole) that
    /// holds fewer than k/2 live peers. A peer that restarts with the peers it
    /// remembers skips the buckets they already fill: their refresh would
    /// find what it knows and cost a lookup each.
    pub fn bootstrap(&mut self, now: Instant, seeds: Vec<PeerInfo<A>>) -> Result<QueryId, CommandError> {
        for seed in seeds {
            self.add_peer(now, seed);
        }
        self.start_query(now, self.local.key, QueryKind::Bootstrap)
    }

    /// After the self-lookup: refresh every bucket farther out than the
    /// closest neighbour, so that the table covers the whole key space.
    pub(super) fn bootstrap_refresh(&mut self, now: Instant, id: QueryId, found: &[PeerInfo<A>], stats: QueryStats) {
        let cpl = |p: &PeerInfo<A>| self.local.key.common_prefix_len(&p.key);
        // Every peer nearer than the k-th found is among those found: the
        // buckets deeper than that one's are complete already.
        let depth = match (found.first(), found.get(self.config.k - 1)) {
            (Some(first), Some(kth)) => cpl(first).min(cpl(kth) + 1),
            (Some(first), None) => cpl(first),
            _ => 0,
        };
        let filled = self.config.k.div_ceil(2);
        for bucket in 0..depth.min(self.table.bucket_count()) {
            if self.table.live_in_bucket(bucket) >= filled {
                continue;
            }
            let target = self.local.key.random_in_bucket(bucket, &self.rng.key());
            // A full query table skips a bucket; maintenance refreshes it later.
            let _ = self.start_query(now, target, QueryKind::Refresh { bootstrap: Some(id) });
        }
        // Refresh lookups that finished at once (no peers) already counted
        // down from zero; start from what is still running.
        let running = self
            .queries
            .values()
            .filter(|q| matches!(q.kind, QueryKind::Refresh { bootstrap: Some(b) } if b == id))
            .count();
        if running == 0 {
            self.events.push_back(Event::Bootstrapped {
                query: id,
                peers: self.table.len(),
                stats,
            });
        } else {
            self.bootstraps.insert(id, (running, stats));
        }
    }

    pub(super) fn refresh_done(&mut self, parent: QueryId) {
        let Some((left, stats)) = self.bootstraps.get_mut(&parent) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            let stats = *stats;
            self.bootstraps.remove(&parent);
            release_if_empty(&mut self.bootstraps);
            self.events.push_back(Event::Bootstrapped {
                query: parent,
                peers: self.table.len(),
                stats,
            });
        }
    }
}
