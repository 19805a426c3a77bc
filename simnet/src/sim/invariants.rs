//! Invariant checks: a sample of peers on a timer, every peer at the end of
//! a run, and the simulator's own indexes; a broken one becomes a
//! [`Violation`] that names the seed.

use super::{PeerIndex, PeerState, Sim, Violation};

impl Sim {
    pub(super) fn violation(&self, peer: Option<PeerIndex>, message: String) -> Violation {
        Violation {
            seed: self.seed,
            time_s: self.now_s(),
            peer,
            message,
        }
    }

    pub(super) fn check_sample(&mut self) -> Result<(), Violation> {
        for _ in 0..self.check_sample.min(self.slots.len()) {
            let peer = self.check_rng.index(self.slots.len()) as PeerIndex;
            self.check_peer(peer)?;
        }
        self.check_global()
    }

    fn check_peer(&self, peer: PeerIndex) -> Result<(), Violation> {
        let slot = &self.slots[peer as usize];
        if let Some(core) = &slot.core {
            core.check_invariants().map_err(|m| self.violation(Some(peer), m))?;
            for p in core.routing_table().peers() {
                if self.slots.get(p.addr as usize).map(|s| s.key) != Some(p.key) {
                    return Err(self.violation(Some(peer), format!("table entry {p:?} has the wrong key for its slot")));
                }
            }
        } else if slot.state != PeerState::Offline {
            return Err(self.violation(Some(peer), format!("state {:?} without a running core", slot.state)));
        }
        Ok(())
    }

    fn check_global(&self) -> Result<(), Violation> {
        if self.live_list.len() != self.live_keys.len() {
            return Err(self.violation(None, "live list and live key index disagree".into()));
        }
        Ok(())
    }

    /// Checks every peer's invariants (end of a run).
    pub fn check_all(&self) -> Result<(), Violation> {
        for peer in 0..self.slots.len() as PeerIndex {
            self.check_peer(peer)?;
        }
        self.check_global()
    }
}
