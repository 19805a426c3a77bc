//! The graceful leave: every held record handed to the rest of its home,
//! every running query aborted, [`Event::Left`] once the hand-offs answer.

use std::collections::VecDeque;

use super::{Overlay, Purpose};
use crate::{Addr, Event, Instant, PeerInfo, QueryId, Request};

/// Hand-off requests of a leave waiting on answers at a time: a peer that
/// holds hundreds of records would otherwise overrun its neighbours (see
/// `homes::HANDOFF_IN_FLIGHT`), and each request dropped is a record the
/// home does not get.
pub(crate) const LEAVE_IN_FLIGHT: usize = 32;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: Addr")]
pub(super) struct Leave<A> {
    pub(super) query: QueryId,
    /// Hand-offs not answered yet, sent or queued.
    pub(super) pending: usize,
    pub(super) handed_off: usize,
    pub(super) failed: usize,
    /// Hand-offs not sent yet.
    queued: VecDeque<(PeerInfo<A>, Request<A>)>,
    /// Hand-offs sent and not answered yet.
    in_flight: usize,
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
            queued: VecDeque::new(),
            in_flight: 0,
        };
        for key in self.store.keys() {
            let records = self.store.records_at(&key, now);
            let home = self.table.closest(&key, self.config.replication, None);
            let requests = self.store_requests(records);
            for member in home {
                for request in &requests {
                    leave.queued.push_back((member.clone(), request.clone()));
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
        self.send_leave(now);
        query
    }

    /// Sends queued hand-offs while fewer than [`LEAVE_IN_FLIGHT`] wait.
    fn send_leave(&mut self, now: Instant) {
        loop {
            let Some(leave) = self.leave.as_mut() else { return };
            if leave.in_flight >= LEAVE_IN_FLIGHT {
                return;
            }
            let Some((to, request)) = leave.queued.pop_front() else {
                return;
            };
            leave.in_flight += 1;
            let query = leave.query;
            self.send(now, to, request, Purpose::Store { query });
        }
    }

    /// A hand-off of the leave answered (`stored`) or failed.
    pub(super) fn leave_answered(&mut self, now: Instant, stored: bool) {
        let Some(leave) = self.leave.as_mut() else { return };
        leave.pending -= 1;
        leave.in_flight = leave.in_flight.saturating_sub(1);
        if stored {
            leave.handed_off += 1;
        } else {
            leave.failed += 1;
        }
        if leave.pending == 0 {
            self.finish_leave();
        } else {
            self.send_leave(now);
        }
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
