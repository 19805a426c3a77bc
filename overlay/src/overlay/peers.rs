//! The routing table's side: peers the driver adds or removes, peers
//! observed in traffic, failures counted against them, and the pings that
//! decide whether a bucket's oldest entry stays. Peers entering or leaving
//! the table are passed on to the homes (`peer_arrived`, `peer_gone`).

use super::{Overlay, Purpose};
use crate::routing::{Failed, Observed};
use crate::{Addr, Event, Instant, Key, PeerInfo, Request};

impl<A: Addr> Overlay<A> {
    /// Adds a peer the driver learned about (mDNS, configuration).
    pub fn add_peer(&mut self, now: Instant, peer: PeerInfo<A>) {
        if peer.addr.matches_key(&peer.key) {
            self.observe(now, peer);
        }
    }

    /// Forgets a peer the driver knows has left.
    pub fn remove_peer(&mut self, now: Instant, key: &Key) {
        let Some(peer) = self.table.peers().find(|p| p.key == *key) else {
            return;
        };
        match self.table.remove(key, now) {
            Failed::Replaced(replacement) => {
                self.events.push_back(Event::PeerRemoved { peer });
                self.peer_gone(now, key);
                self.peer_arrived(now, replacement);
            }
            Failed::Removed => {
                self.events.push_back(Event::PeerRemoved { peer });
                self.peer_gone(now, key);
            }
            Failed::Unknown | Failed::Counted | Failed::Stale => {}
        }
    }

    pub(super) fn count_failure(&mut self, now: Instant, peer: &PeerInfo<A>) {
        match self.table.record_failure(&peer.key, now) {
            Failed::Replaced(replacement) => {
                self.events.push_back(Event::PeerRemoved { peer: peer.clone() });
                self.peer_gone(now, &peer.key);
                self.peer_arrived(now, replacement);
            }
            Failed::Removed => {
                self.events.push_back(Event::PeerRemoved { peer: peer.clone() });
                self.peer_gone(now, &peer.key);
            }
            // Skipped by lookups and homes from now on: its records need
            // another member at once.
            Failed::Stale => self.peer_gone(now, &peer.key),
            Failed::Unknown | Failed::Counted => {}
        }
    }

    pub(super) fn eviction_failed(&mut self, now: Instant, peer: &PeerInfo<A>) {
        match self.table.finish_eviction_ping(&peer.key, false, now) {
            Some((evicted, newcomer)) => {
                self.events.push_back(Event::PeerRemoved { peer: evicted.clone() });
                self.peer_gone(now, &evicted.key);
                self.peer_arrived(now, newcomer);
            }
            None => self.count_failure(now, peer),
        }
    }

    pub(super) fn observe(&mut self, now: Instant, peer: PeerInfo<A>) {
        if self.leave.is_some() {
            return; // a leaving peer starts no new work
        }
        match self.table.observe(peer.clone(), now) {
            Observed::Inserted => self.peer_arrived(now, peer),
            Observed::Replaced(old) => {
                self.events.push_back(Event::PeerRemoved { peer: old.clone() });
                self.peer_gone(now, &old.key);
                self.peer_arrived(now, peer);
            }
            Observed::PingOldest(oldest) => {
                self.send(now, oldest, Request::Ping, Purpose::EvictionPing);
            }
            Observed::Local | Observed::Refreshed | Observed::Queued => {}
        }
    }
}
