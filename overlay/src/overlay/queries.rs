//! Queries: starting one, driving its lookup (stalled steps included),
//! taking the lookup's answers, and finishing it by its kind.

use super::{Outstanding, Overlay, Purpose, release_if_empty};
use crate::lookup::Lookup;
use crate::query::{Query, QueryKind};
use crate::record::AnyRecord;
use crate::{Addr, CommandError, Event, Instant, Key, PeerInfo, QueryId, QueryStats, Request, RequestId, Response};

impl<A: Addr> Overlay<A> {
    /// Looks up the k peers closest to `target`.
    pub fn find_node(&mut self, now: Instant, target: Key) -> Result<QueryId, CommandError> {
        self.start_query(now, target, QueryKind::FindNode)
    }

    pub(super) fn start_query(
        &mut self,
        now: Instant,
        target: Key,
        kind: QueryKind<A>,
    ) -> Result<QueryId, CommandError> {
        if self.leave.is_some() {
            return Err(CommandError::Leaving);
        }
        if self.queries.len() >= self.config.max_queries {
            return Err(CommandError::TooManyQueries {
                max: self.config.max_queries,
            });
        }
        let id = self.next_query_id();
        let seeds = self.table.closest(&target, self.config.k, None);
        self.table.touch(&target, now);
        let lookup = Lookup::new(
            target,
            seeds,
            self.config.k,
            self.config.alpha,
            self.config.disjoint_paths,
        );
        self.queries.insert(
            id,
            Query {
                kind,
                lookup,
                started: now,
                stats: QueryStats::default(),
                storing: None,
            },
        );
        self.drive(now, id);
        Ok(id)
    }

    /// Sends what the lookup wants sent, and finishes it when it is done.
    pub(super) fn drive(&mut self, now: Instant, id: QueryId) {
        let Some(query) = self.queries.get_mut(&id) else { return };
        if query.storing.is_some() {
            return;
        }
        let target = query.lookup.target();
        let mut sends = Vec::new();
        while let Some((path, peer)) = query.lookup.next_query() {
            query.stats.requests += 1;
            sends.push((peer, lookup_request(&query.kind, target), path));
        }
        let finished = query.lookup.is_finished();
        for (peer, request, path) in sends {
            self.send(
                now,
                peer,
                request,
                Purpose::Lookup {
                    query: id,
                    path,
                    attempt: 1,
                },
            );
        }
        if finished {
            self.lookup_finished(now, id);
        }
    }

    /// A lookup step has not answered within the stall timeout: its lookup
    /// stops waiting for it (a late answer is still used).
    pub(super) fn request_stalled(&mut self, now: Instant, id: RequestId) {
        let Some(out) = self.outstanding.get_mut(&id) else {
            return;
        };
        out.stall_at = None;
        let Purpose::Lookup { query, path, .. } = out.purpose else {
            return;
        };
        let peer = out.peer.clone();
        let Some(q) = self.queries.get_mut(&query) else { return };
        if q.lookup.on_stall(path, &peer.key) {
            // Perhaps only a message was lost: ask once more, and keep waiting.
            q.stats.requests += 1;
            let attempt = q.lookup.attempts(path, &peer.key);
            let request = lookup_request(&q.kind, q.lookup.target());
            self.send(now, peer, request, Purpose::Lookup { query, path, attempt });
        } else {
            self.drive(now, query);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn lookup_answered(
        &mut self,
        now: Instant,
        request: RequestId,
        id: QueryId,
        path: usize,
        attempt: u8,
        peer: PeerInfo<A>,
        response: Response<A>,
    ) {
        let (closer, record, providers) = match response {
            Response::Nodes { closer } => (closer, None, Vec::new()),
            Response::Value { record, closer } => (closer, record, Vec::new()),
            Response::Providers { providers, closer } => (closer, None, providers),
            Response::Pong | Response::Stored | Response::Rejected(_) | Response::StoredBatch { .. } => {
                // Not an answer to a lookup step: the peer misbehaves.
                let purpose = Purpose::Lookup {
                    query: id,
                    path,
                    attempt,
                };
                return self.request_failed(
                    now,
                    request,
                    Outstanding {
                        peer,
                        purpose,
                        sent: now,
                        deadline: now,
                        stall_at: None,
                    },
                );
            }
        };
        self.observe(now, peer.clone());
        let local = self.local.key;
        let closer: Vec<PeerInfo<A>> = closer
            .into_iter()
            .take(self.config.k)
            .filter(|p| p.key != local && p.addr.matches_key(&p.key))
            .collect();
        let (verifier, max_life) = (self.config.verifier, self.max_value_lifetime());
        let provider_life = self.max_lifetime();
        let (quorum, max_providers) = (self.config.value_quorum, self.config.max_providers);
        let Some(query) = self.queries.get_mut(&id) else { return };
        query.stats.responses += 1;
        let mut done_early = false;
        match &mut query.kind {
            QueryKind::GetValue { found, valid } => {
                if let Some(record) =
                    record.filter(|r| r.key == query.lookup.target() && r.verify(verifier, now, max_life).is_ok())
                {
                    *valid += 1;
                    // Versions order one publisher's records; a record by
                    // another publisher never displaces the first found (the
                    // home keeps the first writer's record the same way).
                    if found
                        .as_ref()
                        .is_none_or(|f| f.publisher == record.publisher && record.seq > f.seq)
                    {
                        *found = Some(record);
                    }
                    done_early = *valid >= quorum;
                }
            }
            QueryKind::GetProviders { found } => {
                for p in providers {
                    if p.key == query.lookup.target()
                        && !p.declined
                        && !found.iter().any(|f| f.provider.key == p.provider.key)
                        && p.verify(verifier, now, provider_life).is_ok()
                    {
                        found.push(p);
                    }
                }
                done_early = found.len() >= max_providers;
            }
            _ => {}
        }
        query.lookup.on_success(path, &peer.key, closer);
        if done_early {
            self.lookup_finished(now, id);
        } else {
            self.drive(now, id);
        }
    }

    fn lookup_finished(&mut self, now: Instant, id: QueryId) {
        let Some(mut query) = self.queries.remove(&id) else {
            return;
        };
        release_if_empty(&mut self.queries);
        let (peers, hops) = query.lookup.result(self.config.k);
        query.stats.hops = hops;
        query.stats.duration = now.saturating_since(query.started);
        let stats = query.stats;
        let target = query.lookup.target();
        match query.kind {
            QueryKind::FindNode => self.events.push_back(Event::FoundNodes {
                query: id,
                target,
                peers,
                stats,
            }),
            QueryKind::GetValue { found, .. } => self.events.push_back(Event::GotValue {
                query: id,
                key: target,
                record: found,
                stats,
            }),
            QueryKind::GetProviders { found, .. } => self.events.push_back(Event::GotProviders {
                query: id,
                key: target,
                providers: found,
                stats,
            }),
            QueryKind::Bootstrap => self.bootstrap_refresh(now, id, &peers, stats),
            QueryKind::Refresh { bootstrap } => {
                if let Some(parent) = bootstrap {
                    self.refresh_done(parent);
                }
            }
            QueryKind::PutValue { ref record } => {
                let record = AnyRecord::Value(record.clone());
                self.start_storing(now, id, query, peers, record);
            }
            QueryKind::AddProvider { ref record } => {
                let record = AnyRecord::Provider(record.clone());
                self.start_storing(now, id, query, peers, record);
            }
            QueryKind::BatchLookup { batch } => self.batch_place(now, batch, id, &peers),
        }
    }
}

/// The request a lookup step of this kind of query sends.
fn lookup_request<A>(kind: &QueryKind<A>, target: Key) -> Request<A> {
    match kind {
        QueryKind::GetValue { .. } => Request::GetValue { key: target },
        QueryKind::GetProviders { .. } => Request::GetProviders { key: target },
        _ => Request::FindNode { target },
    }
}
