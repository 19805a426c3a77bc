//! Requests: sending one and tracking it until its answer, its failure or
//! its deadline, and the ids that name requests and queries.

use std::collections::BTreeSet;

use super::{Outstanding, Overlay, Purpose, release_if_empty};
use crate::{Addr, Instant, PeerInfo, QueryId, Request, RequestId, Transmit};

impl<A: Addr> Overlay<A> {
    pub(super) fn next_query_id(&mut self) -> QueryId {
        self.next_query += 1;
        QueryId(self.next_query)
    }

    pub(super) fn send(&mut self, now: Instant, to: PeerInfo<A>, request: Request<A>, purpose: Purpose) -> RequestId {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        let deadline = now + self.config.request_timeout;
        self.deadlines.insert((deadline, id));
        let stall_at = match purpose {
            Purpose::Lookup { .. } => {
                let at = now + self.rtt.stall_timeout(self.config.request_timeout);
                self.stalls.insert((at, id));
                Some(at)
            }
            _ => None,
        };
        self.outstanding.insert(
            id,
            Outstanding {
                peer: to.clone(),
                purpose,
                sent: now,
                deadline,
                stall_at,
            },
        );
        self.transmits.push_back(Transmit {
            id,
            to,
            mode: self.config.mode,
            request,
        });
        id
    }

    pub(super) fn take_outstanding(&mut self, id: RequestId) -> Option<Outstanding<A>> {
        let out = self.outstanding.remove(&id)?;
        self.deadlines.remove(&(out.deadline, id));
        if let Some(at) = out.stall_at {
            self.stalls.remove(&(at, id));
        }
        release_if_empty(&mut self.outstanding);
        if self.deadlines.is_empty() {
            self.deadlines = BTreeSet::new();
        }
        if self.stalls.is_empty() {
            self.stalls = BTreeSet::new();
        }
        Some(out)
    }

    pub(super) fn request_failed(&mut self, now: Instant, id: RequestId, out: Outstanding<A>) {
        let peer = out.peer;
        match out.purpose {
            Purpose::EvictionPing => self.eviction_failed(now, &peer),
            Purpose::Lookup { query, path, attempt } => {
                self.count_failure(now, &peer);
                if let Some(q) = self.queries.get_mut(&query) {
                    q.stats.failures += 1;
                    q.lookup.on_failure(path, &peer.key, attempt);
                    self.drive(now, query);
                }
            }
            Purpose::Store { query } => {
                self.count_failure(now, &peer);
                self.store_answered(now, query, false);
            }
            Purpose::StoreBatch { batch } => {
                self.count_failure(now, &peer);
                self.batch_stored(now, batch, id, None);
            }
            Purpose::Probe => self.count_failure(now, &peer),
            Purpose::Replicate => {
                self.count_failure(now, &peer);
                self.replicated(now, &peer.key);
            }
        }
    }
}
