//! Peer slots and their lives: adding a slot, starting a peer (joining it
//! through a live peer and the peers it remembers), crashing, leaving and
//! going offline; the set of joined peers; partitions.

use std::sync::Arc;

use shoal_overlay::{Instant, Key, Overlay, PeerInfo, QueryId, Rng};

use super::{PeerIndex, PeerState, REMEMBERED_PEERS, Sim, SimSigner, Slot, files};
use crate::net::{self, Partition};

impl Sim {
    /// Adds an offline slot with a fresh identity.
    pub fn add_slot(&mut self) -> PeerIndex {
        let index = self.slots.len() as PeerIndex;
        let mut public = [0u8; 12];
        public[..8].copy_from_slice(&self.seed.to_be_bytes());
        public[8..].copy_from_slice(&index.to_be_bytes());
        let place = self.net.place();
        self.slots.push(Slot {
            core: None,
            key: Key::of_public_key(&public),
            public,
            incarnation: 0,
            wake_at: u64::MAX,
            place,
            state: PeerState::Offline,
            joined_at: 0,
            live_pos: u32::MAX,
            files: files::PeerFiles::default(),
            leave_until: 0,
            remembered: Vec::new(),
        });
        index
    }

    /// Starts the peer in `slot` and joins it through a random joined peer
    /// (or alone, for the first) and, as the node does, through the peers
    /// it remembers from its last run: those that are up now (the node
    /// dials them; the others fail to connect and never enter its table).
    pub fn start(&mut self, peer: PeerIndex) {
        let seed_peer = self.random_live();
        let slot = &mut self.slots[peer as usize];
        debug_assert_eq!(slot.state, PeerState::Offline);
        slot.incarnation += 1;
        let local = PeerInfo::new(slot.key, peer);
        let rng_seed = Rng::derive(self.seed, (u64::from(slot.incarnation) << 32) | u64::from(peer)).next_u64();
        let now_local = Instant::from_micros(net::to_local(self.now, &slot.place));
        let signer = Box::new(SimSigner(slot.public));
        let mut core = match Overlay::new(Arc::clone(&self.overlay), local, signer, rng_seed, now_local) {
            Ok(core) => core,
            Err(e) => panic!("simulator built an invalid overlay config: {e}"),
        };
        let remembered = std::mem::take(&mut self.slots[peer as usize].remembered);
        let seeds: Vec<PeerInfo<PeerIndex>> = seed_peer
            .into_iter()
            .chain(remembered.into_iter().filter(|p| {
                let s = &self.slots[*p as usize];
                s.state == PeerState::Joined && Some(*p) != seed_peer
            }))
            .map(|p| PeerInfo::new(self.slots[p as usize].key, p))
            .collect();
        if let Err(e) = core.bootstrap(now_local, seeds) {
            panic!("a fresh core refused to bootstrap: {e}");
        }
        let slot = &mut self.slots[peer as usize];
        slot.core = Some(core);
        slot.state = PeerState::Joining;
        slot.wake_at = u64::MAX;
        self.trace.record(self.now, 1, peer, 0);
        self.flush(peer);
        self.files_started(peer);
    }

    /// Stops the peer at once: its state is gone, messages to it are lost.
    pub fn crash(&mut self, peer: PeerIndex) {
        if self.slots[peer as usize].state == PeerState::Offline {
            return;
        }
        self.counters.crashes += 1;
        self.go_offline(peer);
        self.trace.record(self.now, 2, peer, 0);
    }

    /// Asks the peer to leave gracefully: it hands its records on and goes
    /// offline when that is done.
    pub fn leave(&mut self, peer: PeerIndex) {
        let slot = &mut self.slots[peer as usize];
        let Some(core) = slot.core.as_mut() else { return };
        if slot.state == PeerState::Leaving {
            return;
        }
        let now_local = Instant::from_micros(net::to_local(self.now, &slot.place));
        core.leave(now_local);
        self.remove_live(peer);
        self.slots[peer as usize].state = PeerState::Leaving;
        self.slots[peer as usize].leave_until = self.files_leaving(peer).unwrap_or(0);
        self.counters.leaves += 1;
        self.trace.record(self.now, 3, peer, 0);
        self.flush(peer);
    }

    pub(super) fn go_offline(&mut self, peer: PeerIndex) {
        self.files_stopping(peer);
        self.remove_live(peer);
        let slot = &mut self.slots[peer as usize];
        if let Some(core) = slot.core.as_ref() {
            slot.remembered = core
                .routing_table()
                .peers()
                .take(REMEMBERED_PEERS)
                .map(|p| p.addr)
                .collect();
        }
        slot.core = None;
        slot.state = PeerState::Offline;
        slot.wake_at = u64::MAX;
        // Queries the peer started die with it; they count neither way.
        let abandoned: Vec<(PeerIndex, QueryId)> = self
            .pending
            .range((peer, QueryId(0))..=(peer, QueryId(u64::MAX)))
            .map(|(k, _)| *k)
            .collect();
        for key in abandoned {
            self.pending.remove(&key);
        }
    }

    pub(super) fn add_live(&mut self, peer: PeerIndex) {
        let slot = &mut self.slots[peer as usize];
        slot.state = PeerState::Joined;
        slot.joined_at = self.now;
        slot.live_pos = self.live_list.len() as u32;
        self.live_list.push(peer);
        self.live_keys.insert(slot.key, peer);
    }

    fn remove_live(&mut self, peer: PeerIndex) {
        let pos = self.slots[peer as usize].live_pos;
        if pos == u32::MAX {
            return;
        }
        let last = self.live_list.pop().unwrap_or(peer);
        if last != peer {
            self.live_list[pos as usize] = last;
            self.slots[last as usize].live_pos = pos;
        }
        let slot = &mut self.slots[peer as usize];
        slot.live_pos = u32::MAX;
        self.live_keys.remove(&slot.key);
    }

    /// Assigns partition groups (`group(peer)`) and sets the partition kind.
    pub fn partition(&mut self, kind: Partition, mut group: impl FnMut(PeerIndex) -> u8) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.place.group = group(i as PeerIndex);
        }
        self.net.partition = kind;
        self.trace.record(self.now, 4, 0, kind as u64);
    }
}
