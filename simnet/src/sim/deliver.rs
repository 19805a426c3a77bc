//! Between the queue and the cores: a due wake-up or a message is handed to
//! its peer's core, and the core's outputs are drained — transmits go onto
//! the network model (with loss, delay and duplicates), events go to what
//! waits on them, and the next wake-up is queued.

use shoal_overlay::{Event, Instant, PeerInfo, Request};

use super::{Awaited, Ev, GetOutcome, LookupOutcome, Payload, PeerIndex, PeerState, Sim, Violation, micros};
use crate::net;

impl Sim {
    pub(super) fn wake(&mut self, peer: PeerIndex, inc: u32) -> Result<(), Violation> {
        let now = self.now;
        let slot = &mut self.slots[peer as usize];
        if slot.incarnation != inc || slot.wake_at != now {
            return Ok(()); // superseded by an earlier or later wake-up
        }
        slot.wake_at = u64::MAX;
        let Some(core) = slot.core.as_mut() else { return Ok(()) };
        let local = Instant::from_micros(net::to_local(now, &slot.place));
        core.handle_timeout(local);
        if core.poll_timeout().is_some_and(|t| t <= local) {
            return Err(self.violation(
                Some(peer),
                "a timer stayed due after handle_timeout: the core would livelock".into(),
            ));
        }
        self.trace.record(now, 5, peer, 0);
        self.flush(peer);
        Ok(())
    }

    pub(super) fn deliver(&mut self, index: u32) {
        let Some(payload) = self.payloads[index as usize].take() else {
            return;
        };
        self.free.push(index);
        match payload {
            Payload::Request {
                to,
                from,
                from_inc,
                id,
                mode,
                request,
            } => {
                let from_key = self.slots[from as usize].key;
                let slot = &mut self.slots[to as usize];
                let Some(core) = slot.core.as_mut() else {
                    self.counters.dropped += 1;
                    return;
                };
                let local = Instant::from_micros(net::to_local(self.now, &slot.place));
                let response = core.handle_request(local, PeerInfo::new(from_key, from), mode, request);
                self.trace.record(self.now, 6, to, id.0);
                self.flush(to);
                self.send(
                    to,
                    from,
                    Payload::Response {
                        to: from,
                        to_inc: from_inc,
                        id,
                        response,
                    },
                );
            }
            Payload::Response {
                to,
                to_inc,
                id,
                response,
            } => {
                let slot = &mut self.slots[to as usize];
                let Some(core) = slot.core.as_mut().filter(|_| slot.incarnation == to_inc) else {
                    self.counters.dropped += 1;
                    return;
                };
                let local = Instant::from_micros(net::to_local(self.now, &slot.place));
                core.handle_response(local, id, response);
                self.trace.record(self.now, 7, to, id.0);
                self.flush(to);
            }
        }
    }

    /// Puts a message on the network from `from`.
    fn send(&mut self, from: PeerIndex, to: PeerIndex, payload: Payload) {
        self.counters.messages += 1;
        let delays = {
            let (a, b) = (&self.slots[from as usize], &self.slots[to as usize]);
            if b.core.is_none() {
                [None, None]
            } else {
                self.net.transmit(&a.place, &b.place)
            }
        };
        let duplicate = if delays[1].is_some() {
            Some(payload.clone())
        } else {
            None
        };
        match delays[0] {
            Some(delay) => {
                let slot = self.alloc(payload);
                self.push(self.now + micros(delay).max(1), Ev::Message { slot });
            }
            None => self.counters.dropped += 1,
        }
        if let (Some(delay), Some(copy)) = (delays[1], duplicate) {
            let slot = self.alloc(copy);
            self.push(self.now + micros(delay).max(1), Ev::Message { slot });
        }
    }

    fn alloc(&mut self, payload: Payload) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.payloads[i as usize] = Some(payload);
                i
            }
            None => {
                self.payloads.push(Some(payload));
                (self.payloads.len() - 1) as u32
            }
        }
    }
    /// Drains a core's outputs after an input: transmits, events, timeout.
    pub(super) fn flush(&mut self, peer: PeerIndex) {
        let mut transmits = std::mem::take(&mut self.tx_buf);
        let mut events = std::mem::take(&mut self.ev_buf);
        let slot = &mut self.slots[peer as usize];
        let (inc, mut next_wake) = (slot.incarnation, None);
        if let Some(core) = slot.core.as_mut() {
            while let Some(t) = core.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            next_wake = core.poll_timeout();
        }
        for t in transmits.drain(..) {
            let (to, id, mode, request) = (t.to.addr, t.id, t.mode, t.request);
            self.counters.requests_by_kind[request_kind(&request)] += 1;
            self.send(
                peer,
                to,
                Payload::Request {
                    to,
                    from: peer,
                    from_inc: inc,
                    id,
                    mode,
                    request,
                },
            );
        }
        for e in events.drain(..) {
            self.on_event(peer, e);
        }
        self.tx_buf = transmits;
        self.ev_buf = events;
        let slot = &mut self.slots[peer as usize];
        if let (Some(t), true) = (next_wake, slot.core.is_some()) {
            let at = net::to_virtual(t.as_micros(), &slot.place).max(self.now);
            if at < slot.wake_at {
                slot.wake_at = at;
                self.push(at, Ev::Wake { peer, inc });
            }
        }
    }

    fn on_event(&mut self, peer: PeerIndex, event: Event<PeerIndex>) {
        match event {
            Event::Bootstrapped { .. } => {
                if self.slots[peer as usize].state == PeerState::Joining {
                    self.add_live(peer);
                    self.counters.joins += 1;
                }
            }
            Event::Left { .. } => {
                let slot = &self.slots[peer as usize];
                if slot.leave_until > self.now {
                    // Its hand-off pushes are still running.
                    let (at, inc) = (slot.leave_until, slot.incarnation);
                    self.push(at, Ev::Offline { peer, inc });
                } else {
                    self.go_offline(peer);
                }
            }
            Event::FoundNodes {
                query, peers, stats, ..
            } => {
                let (start, key, closest_at_start) = match self.pending.remove(&(peer, query)) {
                    Some(Awaited::Lookup {
                        start,
                        key,
                        closest_at_start,
                    }) => (start, key, closest_at_start),
                    Some(Awaited::Membership { blob }) => return self.membership_found(peer, blob, &peers),
                    _ => return,
                };
                let success = self.judge(peer, start, &key, closest_at_start, &peers);
                self.lookups.push(LookupOutcome {
                    start_s: start as f64 / 1e6,
                    latency_ms: (self.now - start) as f64 / 1e3,
                    hops: stats.hops,
                    requests: stats.requests,
                    success,
                });
            }
            Event::GotValue { query, record, .. } => {
                let (start, value_hash) = match self.pending.remove(&(peer, query)) {
                    Some(Awaited::Get { start, value_hash }) => (start, value_hash),
                    Some(Awaited::PinRecord { blob }) => return self.pin_record_found(peer, blob, record.as_ref()),
                    _ => return,
                };
                let found = record.is_some_and(|r| *blake3::hash(&r.value).as_bytes() == value_hash);
                self.gets.push(GetOutcome {
                    start_s: start as f64 / 1e6,
                    found,
                });
            }
            Event::Put { query, stored, .. } => {
                if let Some(Awaited::Put) = self.pending.remove(&(peer, query)) {
                    self.counters.puts += 1;
                    self.counters.put_stored += stored as u64;
                }
            }
            Event::GotProviders { query, providers, .. } => {
                if let Some(Awaited::Providers { blob }) = self.pending.remove(&(peer, query)) {
                    let from: Vec<PeerIndex> = providers.iter().map(|r| r.provider.addr).collect();
                    self.providers_found(peer, blob, &from);
                }
            }
            Event::ProvidedMany { .. }
            | Event::PeerAdded { .. }
            | Event::PeerRemoved { .. }
            | Event::Aborted { .. } => {}
        }
    }
}

fn request_kind(request: &Request<PeerIndex>) -> usize {
    match request {
        Request::Ping => 0,
        Request::FindNode { .. } => 1,
        Request::GetValue { .. } => 2,
        Request::GetProviders { .. } => 3,
        Request::PutValue { .. } => 4,
        Request::AddProvider { .. } | Request::AddProviders { .. } => 5,
    }
}
