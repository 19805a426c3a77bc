//! The user's commands to a peer (lookup, put, get), and the truth a lookup
//! is judged against: the joined peer closest to its key.

use std::collections::BTreeMap;

use shoal_overlay::{Instant, Key, Overlay, PeerInfo, QueryId};

use super::{Awaited, PeerIndex, PeerState, Sim};
use crate::net;

impl Sim {
    pub(super) fn command(
        &mut self,
        peer: PeerIndex,
        f: impl FnOnce(&mut Overlay<PeerIndex>, Instant) -> Option<QueryId>,
    ) -> Option<QueryId> {
        let slot = &mut self.slots[peer as usize];
        let core = slot.core.as_mut()?;
        let now_local = Instant::from_micros(net::to_local(self.now, &slot.place));
        let id = f(core, now_local);
        self.flush(peer);
        id
    }

    /// Starts a lookup for `key` from `peer`; its outcome lands in `lookups`.
    pub fn lookup(&mut self, peer: PeerIndex, key: Key) -> bool {
        let closest_at_start = self.true_closest(&key, peer);
        let start = self.now;
        match self.command(peer, |core, now| core.find_node(now, key).ok()) {
            Some(id) => {
                self.pending.insert(
                    (peer, id),
                    Awaited::Lookup {
                        start,
                        key,
                        closest_at_start,
                    },
                );
                true
            }
            None => false,
        }
    }

    /// Stores `value` at `key` from `peer`.
    pub fn put(&mut self, peer: PeerIndex, key: Key, value: Vec<u8>) -> bool {
        match self.command(peer, |core, now| core.put_value(now, key, value).ok()) {
            Some(id) => {
                self.pending.insert((peer, id), Awaited::Put);
                true
            }
            None => false,
        }
    }

    /// Reads `key` from `peer`, expecting a value whose BLAKE3 hash is `value_hash`.
    pub fn get(&mut self, peer: PeerIndex, key: Key, value_hash: [u8; 32]) -> bool {
        let start = self.now;
        match self.command(peer, |core, now| core.get_value(now, key).ok()) {
            Some(id) => {
                self.pending.insert((peer, id), Awaited::Get { start, value_hash });
                true
            }
            None => false,
        }
    }

    /// The joined peer closest to `key` by XOR, other than `exclude`.
    ///
    /// Descends the implicit binary trie of the sorted live keys: at each
    /// bit, keep to the half that matches the target's bit if it is not empty.
    pub fn true_closest(&self, key: &Key, exclude: PeerIndex) -> Option<PeerIndex> {
        closest_in(&self.live_keys, key, self.slots.get(exclude as usize).map(|s| s.key))
    }

    /// A lookup succeeds when its result holds the closest joined peer at
    /// its end; if that peer joined after the lookup began, holding the
    /// closest peer at its start (still joined) also counts.
    pub(super) fn judge(
        &self,
        origin: PeerIndex,
        start: u64,
        key: &Key,
        at_start: Option<PeerIndex>,
        result: &[PeerInfo<PeerIndex>],
    ) -> bool {
        let holds = |p: PeerIndex| result.iter().any(|r| r.addr == p);
        match self.true_closest(key, origin) {
            None => true, // nobody else is up: nothing to find
            Some(now_closest) if holds(now_closest) => true,
            Some(now_closest) => {
                let joined_late = self.slots[now_closest as usize].joined_at > start;
                joined_late && at_start.is_some_and(|p| self.slots[p as usize].state == PeerState::Joined && holds(p))
            }
        }
    }
}

/// The value in `keys` whose key is XOR-closest to `target`, skipping `excluded`.
///
/// Descends the implicit binary trie of the sorted keys. `path` holds the
/// prefix chosen so far in its first `len` bits and the target's bits after
/// it; at each bit, keep to the half that agrees with the target if it has a
/// key, else take the other half.
pub(super) fn closest_in(keys: &BTreeMap<Key, PeerIndex>, target: &Key, excluded: Option<Key>) -> Option<PeerIndex> {
    let mut path = *target;
    let mut len = 0;
    loop {
        let (low, high) = path.prefix_range(len);
        let mut range = keys.range(low..=high).filter(|(k, _)| Some(**k) != excluded);
        let first = range.next()?;
        if len == shoal_overlay::KEY_BITS || range.next().is_none() {
            return Some(*first.1);
        }
        let (want_low, want_high) = path.prefix_range(len + 1);
        if !keys.range(want_low..=want_high).any(|(k, _)| Some(*k) != excluded) {
            path = path.with_bit_flipped(len);
        }
        len += 1;
    }
}
