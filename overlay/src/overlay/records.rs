//! Records: getting values and providers, putting values, announcing this
//! peer as a provider, the store phase that follows a put's lookup, and
//! verifying, accepting and signing records.

use super::{Overlay, Purpose, release_if_empty};
use crate::query::{Query, QueryKind};
use crate::record::{AnyRecord, MAX_VALUE_BYTES, PutOutcome};
use crate::{
    Addr, CommandError, Event, Instant, Key, Mode, PeerInfo, ProviderRecord, QueryId, RecordError, Request, ValueRecord,
};

/// A value this peer publishes itself and so re-signs and re-puts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct PublishedValue {
    pub(super) value: Vec<u8>,
    /// Version of the last signed record; the next is larger.
    pub(super) seq: u64,
    /// How long each signed version lives.
    pub(super) lifetime: std::time::Duration,
    /// When to republish.
    pub(super) next: Instant,
}

impl<A: Addr> Overlay<A> {
    /// Takes back records saved by an earlier run of this peer: each is
    /// verified and stored as if a home member had sent it (expired or
    /// forged ones are dropped), then replicated on the usual schedule.
    /// Returns how many were kept.
    pub fn restore_records(
        &mut self,
        now: Instant,
        values: Vec<ValueRecord>,
        providers: Vec<ProviderRecord<A>>,
    ) -> usize {
        let records = values
            .into_iter()
            .map(AnyRecord::Value)
            .chain(providers.into_iter().map(AnyRecord::Provider));
        records.filter(|r| self.accept(now, r.clone()).is_ok()).count()
    }

    /// Looks up the value record at `key`.
    pub fn get_value(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        // A copy held here counts like one found on the way (it was
        // verified when it was stored).
        let found = self.store.value(&key, now).cloned();
        let valid = usize::from(found.is_some());
        self.start_query(now, key, QueryKind::GetValue { found, valid })
    }

    /// Looks up providers of `key`.
    pub fn get_providers(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        let found = self.store.providers(&key, now, self.config.max_providers);
        self.start_query(now, key, QueryKind::GetProviders { found })
    }

    /// Signs `value` as the record at `key` and stores it at the key's home.
    /// The core republishes it every `republish_interval`; each version lives
    /// `record_ttl`.
    pub fn put_value(&mut self, now: Instant, key: Key, value: Vec<u8>) -> Result<QueryId, CommandError> {
        self.put_value_for(now, key, value, self.config.record_ttl)
    }

    /// As [`put_value`](Self::put_value), but the record lives `lifetime`
    /// (at most `max_value_lifetime`): it outlasts this peer by that long if
    /// the peer goes away for good. Republished versions get the same.
    pub fn put_value_for(
        &mut self,
        now: Instant,
        key: Key,
        value: Vec<u8>,
        lifetime: std::time::Duration,
    ) -> Result<QueryId, CommandError> {
        let max = self.config.max_value_lifetime.max(self.config.record_ttl);
        if lifetime > max || lifetime.is_zero() {
            return Err(CommandError::BadLifetime {
                key,
                secs: lifetime.as_secs(),
                max_secs: max.as_secs(),
            });
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(CommandError::ValueTooLarge {
                key,
                bytes: value.len(),
                max: MAX_VALUE_BYTES,
            });
        }
        let seq = self.next_seq(now, &key);
        let record = self.sign_value(now, key, value.clone(), seq, lifetime);
        let id = self.start_query(now, key, QueryKind::PutValue { record })?;
        let next = now + self.config.republish_interval;
        self.published_values.insert(
            key,
            PublishedValue {
                value,
                seq,
                lifetime,
                next,
            },
        );
        Ok(id)
    }

    /// Announces at the home of `key` that this peer provides it, and keeps
    /// announcing until [`stop_providing`](Self::stop_providing).
    pub fn start_providing(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        self.declining.remove(&key);
        self.announce(now, key)
    }

    /// The keys this peer announces itself as provider of (declined ones
    /// included), in key order.
    pub fn providing(&self) -> impl Iterator<Item = &Key> {
        self.published_providers.keys()
    }

    pub(super) fn announce(&mut self, now: Instant, key: Key) -> Result<QueryId, CommandError> {
        let record = self.sign_provider(now, key);
        let id = self.start_query(now, key, QueryKind::AddProvider { record })?;
        let next = now + self.config.republish_interval;
        self.published_providers.insert(key, next);
        Ok(id)
    }

    /// Stops re-announcing `key`; the record lapses at its home when it expires.
    pub fn stop_providing(&mut self, key: &Key) {
        self.published_providers.remove(key);
        self.declining.remove(key);
    }

    /// Stops republishing the value this peer put at `key`; the record lapses
    /// at its home when it expires.
    pub fn stop_publishing(&mut self, key: &Key) {
        self.published_values.remove(key);
    }

    /// A version for a new record at `key`: the signing time in
    /// microseconds, but always above the last version this peer signed for
    /// the key, so two puts in one microsecond (or after the clock stepped
    /// back) still order.
    pub(super) fn next_seq(&self, now: Instant, key: &Key) -> u64 {
        let last = self.published_values.get(key).map_or(0, |p| p.seq);
        now.as_micros().max(last.saturating_add(1))
    }

    // ----- internals: the store phase -------------------------------------

    /// The store phase of a put: the home is the `r` closest among the peers
    /// that answered and this peer itself.
    pub(super) fn start_storing(
        &mut self,
        now: Instant,
        id: QueryId,
        mut query: Query<A>,
        answered: Vec<PeerInfo<A>>,
        record: AnyRecord<A>,
    ) {
        let target = query.lookup.target();
        let r = self.config.replication;
        let own = self.local.key.distance(&target);
        // The home: the nearest peers, this one included, up to `r` that
        // have not declined the key (those that have are sent the record
        // too, on the way; a decline being stored counts as one).
        let mut declined = self.store.decliners(&target);
        let own_decline = match &record {
            AnyRecord::Provider(p) if p.declined => {
                declined.push(p.provider.key);
                p.provider.key == self.local.key
            }
            _ => false,
        };
        let server = self.config.mode == Mode::Server;
        let mut members = Vec::new();
        let (mut counted, mut self_in_home) = (0, false);
        for peer in answered {
            if counted >= r {
                break;
            }
            if server && !self_in_home && own < peer.key.distance(&target) {
                self_in_home = true;
                counted += usize::from(!declined.contains(&self.local.key));
                if counted >= r {
                    break;
                }
            }
            counted += usize::from(!declined.contains(&peer.key));
            members.push(peer);
        }
        self_in_home |= server && counted < r;
        // A peer always keeps its own decline: it is how it knows.
        let stored = usize::from((self_in_home || own_decline) && self.accept(now, record.clone()).is_ok());
        let request = store_request(record);
        query.storing = Some((members.len(), stored));
        query.stats.requests += members.len() as u32;
        for member in members {
            self.send(now, member, request.clone(), Purpose::Store { query: id });
        }
        self.queries.insert(id, query);
        self.maybe_finish_put(now, id);
    }

    pub(super) fn store_answered(&mut self, now: Instant, id: QueryId, stored: bool) {
        if self.leave.as_ref().is_some_and(|l| l.query == id) {
            self.leave_answered(now, stored);
            return;
        }
        let Some(query) = self.queries.get_mut(&id) else { return };
        if let Some((pending, count)) = query.storing.as_mut() {
            *pending -= 1;
            if stored {
                *count += 1;
                query.stats.responses += 1;
            } else {
                query.stats.failures += 1;
            }
        }
        self.maybe_finish_put(now, id);
    }

    fn maybe_finish_put(&mut self, now: Instant, id: QueryId) {
        let Some(query) = self.queries.get(&id) else { return };
        let Some((0, stored)) = query.storing else { return };
        let Some(mut query) = self.queries.remove(&id) else {
            return;
        };
        release_if_empty(&mut self.queries);
        query.stats.duration = now.saturating_since(query.started);
        self.events.push_back(Event::Put {
            query: id,
            key: query.lookup.target(),
            stored,
            stats: query.stats,
        });
    }

    // ----- internals: records ----------------------------------------------

    pub(super) fn max_lifetime(&self) -> std::time::Duration {
        self.config.record_ttl + self.config.clock_skew_tolerance
    }

    pub(super) fn max_value_lifetime(&self) -> std::time::Duration {
        self.config.max_value_lifetime.max(self.config.record_ttl) + self.config.clock_skew_tolerance
    }

    /// A newer version of a value held here passes its resource's rule
    /// ([`Config::successor`](crate::Config)).
    fn check_successor(&self, now: Instant, record: &ValueRecord) -> Result<(), RecordError> {
        if let (Some(rule), Some(held)) = (self.config.successor, self.store.value(&record.key, now))
            && held.publisher == record.publisher
            && held.seq < record.seq
            && !(rule.0)(&held.value, &record.value)
        {
            return Err(RecordError::Refused { key: record.key });
        }
        Ok(())
    }

    pub(super) fn accept(&mut self, now: Instant, record: AnyRecord<A>) -> Result<PutOutcome, RecordError> {
        let (verifier, max_life) = (self.config.verifier, self.max_lifetime());
        let next = now + self.config.replicate_interval;
        if record.expires() > now && self.store.holds(&record) {
            // A copy of a record held here: only time has passed since it
            // was verified, and it has not expired.
            return match record {
                AnyRecord::Value(r) => self.store.put_value(r, now, next),
                AnyRecord::Provider(r) => self.store.put_provider(r, next),
            };
        }
        match record {
            AnyRecord::Value(r) => {
                r.verify(verifier, now, self.max_value_lifetime())?;
                self.check_successor(now, &r)?;
                self.store.put_value(r, now, next)
            }
            AnyRecord::Provider(r) => {
                r.verify(verifier, now, max_life)?;
                let (key, provider, declined) = (r.key, r.provider.key, r.declined);
                let was_declined = self.store.decliners(&key).contains(&provider);
                let outcome = self.store.put_provider(r, next)?;
                if outcome != PutOutcome::Unchanged && declined != was_declined {
                    self.rehome(now, &key, &provider);
                }
                Ok(outcome)
            }
        }
    }

    pub(super) fn sign_value(
        &mut self,
        now: Instant,
        key: Key,
        value: Vec<u8>,
        seq: u64,
        lifetime: std::time::Duration,
    ) -> ValueRecord {
        ValueRecord::sign(key, value, seq, now + lifetime, self.signer.as_ref())
    }

    /// A provider record for `key` issued now. A decline lives two
    /// republish intervals, not `record_ttl`: re-announced while it holds,
    /// it lapses soon after this peer takes it back.
    pub(super) fn sign_provider(&mut self, now: Instant, key: Key) -> ProviderRecord<A> {
        let declined = self.declining.contains(&key);
        let lifetime = if declined {
            (self.config.republish_interval * 2).min(self.config.record_ttl)
        } else {
            self.config.record_ttl
        };
        ProviderRecord::sign_as(
            key,
            self.local.clone(),
            now,
            now + lifetime,
            declined,
            self.signer.as_ref(),
        )
    }
}

fn store_request<A>(record: AnyRecord<A>) -> Request<A> {
    match record {
        AnyRecord::Value(record) => Request::PutValue { record },
        AnyRecord::Provider(record) => Request::AddProvider { record },
    }
}
