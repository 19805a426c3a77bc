//! The graceful leave: every held record handed to the rest of its home,
//! every running query aborted, [`Event::Left`] once the hand-offs answer.

use super::{Overlay, Purpose};
use crate::{Addr, Event, Instant, QueryId};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Leave {
    pub(super) query: QueryId,
    pub(super) pending: usize,
    pub(super) handed_off: usize,
    pub(super) failed: usize,
}

impl<A: Addr> Overlay<A> {
    /// Leaves gracefully: hands every held record to the rest of its home and
    /// reports [`Event::Left`] when they have answered. Stops serving.
    pub fn leave(&mut self, now: Instant) -> QueryId {
        if let Some(leave) = &self.leave {
            return leave.query;
        }
        let query = self.next_query_id();
        let mut leave = Leave {
            query,
            pending: 0,
            handed_off: 0,
            failed: 0,
        };
        for key in self.store.keys() {
            let records = self.store.records_at(&key, now);
            let home = self.table.closest(&key, self.config.replication, None);
            let requests = self.store_requests(records);
            for member in home {
                for request in &requests {
                    self.send(now, member.clone(), request.clone(), Purpose::Store { query });
                    leave.pending += 1;
                }
            }
        }
        self.owe_nothing();
        self.published_values.clear();
        self.published_providers.clear();
        self.declining.clear();
        for (id, _) in std::mem::take(&mut self.queries) {
            self.events.push_back(Event::Aborted { query: id });
        }
        for (id, _) in std::mem::take(&mut self.bootstraps) {
            self.events.push_back(Event::Aborted { query: id });
        }
        for (id, _) in std::mem::take(&mut self.batches) {
            self.events.push_back(Event::Aborted { query: id });
        }
        let done = leave.pending == 0;
        self.leave = Some(leave);
        if done {
            self.finish_leave();
        }
        query
    }

    pub(super) fn finish_leave(&mut self) {
        if let Some(leave) = &self.leave {
            self.events.push_back(Event::Left {
                query: leave.query,
                handed_off: leave.handed_off,
                failed: leave.failed,
            });
        }
    }
}
