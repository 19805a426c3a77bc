//! Files in the simulator: blobs on each peer's simulated disk, the pin
//! duties of [`shoal_resources::pin`] run by every peer on a timer, and
//! transfers that take time on each peer's link.
//!
//! The overlay part is the real core: pins are value records put with
//! [`Overlay::put_value_for`](shoal_overlay::Overlay::put_value_for), a
//! copy is announced with a provider record, a fetch looks providers up with
//! `get_providers`, and membership that the routing table cannot vouch for
//! is checked with a lookup — what the node does. Only the bytes are
//! modelled: a transfer of `n` bytes occupies the sender's uplink and the
//! receiver's downlink for `n / link` seconds, after the ones already
//! booked on either (first come, first served), and fails if either peer is
//! gone or restarted when it would end. A fetch takes the whole blob from
//! one provider (the node spreads it over several, so this is slower).
//!
//! As on the node, a copy a peer no longer keeps for a home is only
//! released: it stays on the disk (and is still provided) until the peer's
//! quota needs the room, least recently released first; a peer that
//! becomes a member again with such a copy keeps it without a fetch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rustc_hash::FxHashMap;
use shoal_overlay::{Instant, Key, PeerInfo, ValueRecord};
use shoal_resources::pin::{self, Action, Duty, Pin};

use super::{Ev, PeerIndex, PeerState, Pending, Sim, micros};
use crate::net;

/// Settings of the files layer.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FilesConfig {
    /// Each peer's link speed, each way, in bytes per second.
    pub link_bytes_per_s: u64,
    /// How often each peer runs its pin duties.
    pub pin_check: Duration,
    /// Most membership lookups one round of duties starts.
    pub max_lookups: usize,
    /// Whether a peer that leaves gracefully hands its pinned copies to the
    /// home it leaves behind first.
    pub handoff: bool,
    /// Whether a peer that cannot fit a copy its home asks for declines the
    /// blob (steps aside for the next peer out), as the node does.
    pub decline: bool,
    /// Most bytes each peer's disk holds (the node's `--quota`); `None`, the
    /// node's default, is no limit.
    pub quota_bytes: Option<u64>,
}

/// Counters of the files layer.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FileCounters {
    /// Fetches started by pin duties.
    pub fetches: u64,
    /// Of which ended with a whole copy.
    pub fetched: u64,
    /// Provider lookups that found no live provider holding the blob.
    pub no_provider: u64,
    /// Transfers cut off because an end went away.
    pub broken_transfers: u64,
    /// Copies pushed by leaving peers.
    pub handoffs: u64,
    /// Membership lookups.
    pub membership_lookups: u64,
    /// Pin record reads for copies kept for a home whose record the peer
    /// no longer holds (the node's orphan check).
    pub orphan_checks: u64,
    /// Copies no longer kept for a home (they stay on the disk until the
    /// quota needs the room).
    pub released: u64,
    /// Released copies dropped to make room under the quota.
    pub evicted: u64,
    /// Copies that did not fit under the quota even after every released
    /// copy was dropped.
    pub refused: u64,
    /// Of those, the blobs the peer then declined (stepped aside from the
    /// home, so that the next peer out keeps a copy instead).
    pub declined: u64,
    /// Bytes moved by finished transfers.
    pub bytes_moved: u64,
}

/// A peer's disk and links. It survives restarts; a peer that is gone for
/// good loses it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct PeerFiles {
    /// Whole blobs held, and whether each is marked pinned.
    disk: BTreeMap<Key, bool>,
    /// Blobs released (unmarked), oldest first: the order in which the
    /// quota drops them. May name blobs since marked again or dropped.
    released: VecDeque<Key>,
    /// Blobs being fetched.
    fetching: BTreeSet<Key>,
    /// Virtual time at which the uplink and the downlink are free.
    up_free: u64,
    down_free: u64,
    /// Bytes sent and received by finished transfers.
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// Value records kept across a restart (the node's records.cbor).
    saved: Vec<shoal_overlay::ValueRecord>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Transfer {
    blob: Key,
    from: PeerIndex,
    from_inc: u32,
    to: PeerIndex,
    to_inc: u32,
    bytes: u64,
}

/// What names one version of a pin record in the decode cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecordStamp {
    seq: u64,
    expires: Instant,
    len: usize,
}

/// The files layer's state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Files {
    config: FilesConfig,
    /// Every blob's size.
    sizes: BTreeMap<Key, u64>,
    /// The last pin record decoded at each key, named by its version and
    /// expiry, and what it said: every peer reads the same few records
    /// every round. Only looked up, never iterated, so its order cannot
    /// reach a run; a checkpoint leaves it out.
    #[serde(skip)]
    decoded: FxHashMap<Key, (RecordStamp, Option<Pin>)>,
    transfers: BTreeMap<u64, Transfer>,
    next_transfer: u64,
    pub(crate) counters: FileCounters,
}

impl Files {
    /// Bytes of the blobs `keys`.
    fn bytes<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) -> u64 {
        keys.into_iter().filter_map(|k| self.sizes.get(k)).sum()
    }

    /// [`Pin::decode`] of a record's value, from the cache when it holds
    /// the same record. In the simulator a pin is published by one peer,
    /// whose versions grow with its clock, so a key, version, expiry and
    /// length name one value; comparing those instead of the bytes spares
    /// reading every holder's copy of the value (a cache miss each, tens
    /// of millions of times a simulated day).
    fn decode_pin(&mut self, record: &ValueRecord) -> Option<Pin> {
        let stamp = RecordStamp {
            seq: record.seq,
            expires: record.expires,
            len: record.value.len(),
        };
        if let Some((cached, pin)) = self.decoded.get(&record.key)
            && *cached == stamp
        {
            return *pin;
        }
        let pin = Pin::decode(&record.value);
        self.decoded.insert(record.key, (stamp, pin));
        pin
    }
}

impl Sim {
    /// Turns the files layer on (before any peer starts).
    pub fn enable_files(&mut self, config: FilesConfig) {
        self.files = Some(Files {
            config,
            sizes: BTreeMap::new(),
            decoded: FxHashMap::default(),
            transfers: BTreeMap::new(),
            next_transfer: 0,
            counters: FileCounters::default(),
        });
    }

    /// Counters of the files layer.
    pub fn file_counters(&self) -> FileCounters {
        self.files.as_ref().map(|f| f.counters).unwrap_or_default()
    }

    /// Puts a whole blob of `size` bytes on `peer`'s disk (not pinned) and
    /// announces it, as `shoal share` does.
    pub fn share(&mut self, peer: PeerIndex, blob: Key, size: u64) {
        let Some(files) = self.files.as_mut() else { return };
        files.sizes.insert(blob, size);
        self.slots[peer as usize].files.disk.entry(blob).or_insert(false);
        let _ = self.command(peer, |core, now| core.start_providing(now, blob).ok());
    }

    /// Pins `blob` from `peer` with `replicas` copies, as `shoal pin` does.
    pub fn pin(&mut self, peer: PeerIndex, blob: Key, replicas: u8) -> bool {
        let Some(size) = self.files.as_ref().and_then(|f| f.sizes.get(&blob).copied()) else {
            return false;
        };
        let value = Pin { replicas, size }.encode();
        match self.command(peer, |core, now| {
            core.put_value_for(now, blob, value, pin::PIN_LIFETIME).ok()
        }) {
            Some(id) => {
                self.pending.insert((peer, id), Pending::Put);
                true
            }
            None => false,
        }
    }

    /// Removes from `peer`'s disk every blob it does not keep for a home.
    pub fn drop_unpinned(&mut self, peer: PeerIndex) {
        let slot = &mut self.slots[peer as usize];
        let dropped: Vec<Key> = slot.files.disk.iter().filter(|(_, p)| !**p).map(|(k, _)| *k).collect();
        for blob in dropped {
            slot.files.disk.remove(&blob);
            if let Some(core) = slot.core.as_mut() {
                core.stop_providing(&blob);
            }
        }
    }

    /// Wipes `peer`'s disk: the peer is gone for good.
    pub fn wipe_disk(&mut self, peer: PeerIndex) {
        let files = &mut self.slots[peer as usize].files;
        files.disk.clear();
        files.released.clear();
        files.fetching.clear();
        files.saved.clear();
        // The node's known-peers file was on that disk too.
        self.slots[peer as usize].remembered.clear();
    }

    /// Every blob the files layer knows, with its size.
    pub fn blobs(&self) -> Vec<(Key, u64)> {
        self.files
            .as_ref()
            .map(|f| f.sizes.iter().map(|(k, s)| (*k, *s)).collect())
            .unwrap_or_default()
    }

    /// For each blob: how many whole copies live peers hold, and how many
    /// exist on any disk that is not gone (`gone(peer)`).
    pub fn copies(&self, gone: impl Fn(PeerIndex) -> bool) -> BTreeMap<Key, (u32, u32)> {
        let mut out: BTreeMap<Key, (u32, u32)> = self.blobs().into_iter().map(|(k, _)| (k, (0, 0))).collect();
        for (i, slot) in self.slots.iter().enumerate() {
            if gone(i as PeerIndex) {
                continue;
            }
            let live = slot.state == PeerState::Joined;
            for blob in slot.files.disk.keys() {
                if let Some(c) = out.get_mut(blob) {
                    c.0 += u32::from(live);
                    c.1 += 1;
                }
            }
        }
        out
    }

    /// Pinned copies held by each joined peer.
    pub fn pinned_per_live_peer(&self) -> Vec<u32> {
        self.live_list
            .iter()
            .map(|p| self.slots[*p as usize].files.disk.values().filter(|p| **p).count() as u32)
            .collect()
    }

    /// Copies on each joined peer's disk, pinned or released.
    pub fn stored_per_live_peer(&self) -> Vec<u32> {
        self.live_list
            .iter()
            .map(|p| self.slots[*p as usize].files.disk.len() as u32)
            .collect()
    }

    /// Bytes each slot sent and received in finished transfers.
    pub fn transfer_bytes(&self) -> Vec<(u64, u64)> {
        self.slots.iter().map(|s| (s.files.sent, s.files.received)).collect()
    }

    // ----- hooks called by the engine ---------------------------------------

    /// A peer started: take back its saved records, announce what its disk
    /// holds, and start its duty timer.
    pub(super) fn files_started(&mut self, peer: PeerIndex) {
        let Some(files) = self.files.as_ref() else { return };
        let every = micros(files.config.pin_check);
        let slot = &mut self.slots[peer as usize];
        let saved = std::mem::take(&mut slot.files.saved);
        slot.files.fetching.clear();
        let held: Vec<Key> = slot.files.disk.keys().copied().collect();
        let inc = slot.incarnation;
        if let Some(core) = slot.core.as_mut() {
            let now = Instant::from_micros(net::to_local(self.now, &slot.place));
            core.restore_records(now, saved, Vec::new());
        }
        // The announcement waits for the join (the node's first duty round).
        let phase = self.rng.below(every.max(1));
        self.push(
            self.now + every + phase,
            Ev::Duty {
                peer,
                inc,
                first: !held.is_empty(),
            },
        );
    }

    /// A peer stops: keep its value records on its disk.
    pub(super) fn files_stopping(&mut self, peer: PeerIndex) {
        if self.files.is_none() {
            return;
        }
        let slot = &mut self.slots[peer as usize];
        if let Some(core) = slot.core.as_ref() {
            slot.files.saved = core.record_store().value_records().cloned().collect();
        }
    }

    /// A peer leaves gracefully: push each pinned copy to every member of
    /// the home it leaves behind that lacks one. Returns when the last push
    /// ends (virtual µs), if any.
    pub(super) fn files_leaving(&mut self, peer: PeerIndex) -> Option<u64> {
        let files = self.files.as_ref()?;
        if !files.config.handoff {
            return None;
        }
        let slot = &self.slots[peer as usize];
        let core = slot.core.as_ref()?;
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        let mut pushes = Vec::new();
        for (blob, pinned) in &slot.files.disk {
            if !*pinned {
                continue;
            }
            let Some(pin) = core.record_store().value(blob, now).and_then(|r| Pin::decode(&r.value)) else {
                continue;
            };
            let home: Vec<PeerIndex> = core
                .routing_table()
                .closest(blob, usize::from(pin.replicas), None)
                .iter()
                .map(|p| p.addr)
                .collect();
            let targets = pin::handoff_targets(&home, |p| {
                let s = &self.slots[p as usize];
                s.files.disk.contains_key(blob) || s.files.fetching.contains(blob) || s.core.is_none()
            });
            pushes.extend(targets.into_iter().map(|to| (*blob, to)));
        }
        let mut last = None;
        for (blob, to) in pushes {
            if let Some(end) = self.start_transfer(blob, peer, to) {
                self.slots[to as usize].files.fetching.insert(blob);
                if let Some(f) = self.files.as_mut() {
                    f.counters.handoffs += 1;
                }
                last = last.max(Some(end));
            }
        }
        last
    }

    /// One round of pin duties on `peer`.
    pub(super) fn duty(&mut self, peer: PeerIndex, inc: u32, first: bool) {
        let Some(files) = self.files.as_ref() else { return };
        let (every, max_lookups) = (micros(files.config.pin_check), files.config.max_lookups);
        let slot = &self.slots[peer as usize];
        if slot.incarnation != inc || slot.core.is_none() {
            return;
        }
        let joined = slot.state == PeerState::Joined;
        // The first round waits for the join to announce the disk.
        self.push(
            self.now + every,
            Ev::Duty {
                peer,
                inc,
                first: first && !joined,
            },
        );
        if !joined {
            return;
        }
        let slot = &self.slots[peer as usize];
        if first {
            let held: Vec<Key> = slot.files.disk.keys().copied().collect();
            let _ = self.command(peer, |core, now| core.provide_many(now, held).ok());
        }
        // A blob declined for lack of room that fits now: stop declining
        // it (the record lapses at the home, and this peer is counted in).
        let fits: Vec<Key> = self.slots[peer as usize]
            .core
            .as_ref()
            .map(|core| core.declining().copied().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|blob| self.could_fit(peer, *blob))
            .collect();
        if let Some(core) = self.slots[peer as usize].core.as_mut() {
            for blob in &fits {
                core.stop_providing(blob);
            }
        }
        let slot = &self.slots[peer as usize];
        let Some(core) = slot.core.as_ref() else { return };
        let Some(files) = self.files.as_mut() else { return };
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        let mut duties = Vec::new();
        let mut unsure = Vec::new();
        for record in core.record_store().value_records() {
            if record.expires <= now {
                continue;
            }
            let Some(pin) = files.decode_pin(record) else {
                continue;
            };
            let mut member = core.is_member_of(&record.key, usize::from(pin.replicas));
            let marked = slot.files.disk.get(&record.key).copied().unwrap_or(false);
            if pin::confirm_by_lookup(member, &pin, marked) {
                // As the node does: a kept copy is released only on a
                // lookup's word; until one answers it stays.
                if unsure.len() < max_lookups {
                    unsure.push(record.key);
                }
                member = true;
            }
            duties.push(Duty {
                id: record.key,
                pin,
                member,
                held: slot.files.disk.contains_key(&record.key),
                fetching: slot.files.fetching.contains(&record.key),
                marked,
            });
        }
        // Copies kept for a home whose pin record this peer no longer holds
        // (it drifted away and forgot it, or got the copy by hand-off): ask
        // the home, within the same budget, as the node does.
        let orphans: Vec<Key> = slot
            .files
            .disk
            .iter()
            .filter(|(blob, marked)| **marked && core.record_store().value(blob, now).is_none())
            .map(|(blob, _)| *blob)
            .take(max_lookups.saturating_sub(unsure.len()))
            .collect();
        self.apply(peer, &duties);
        for blob in orphans {
            if let Some(id) = self.command(peer, |core, now| core.get_value(now, blob).ok()) {
                self.pending.insert((peer, id), Pending::OrphanPin { blob });
                if let Some(f) = self.files.as_mut() {
                    f.counters.orphan_checks += 1;
                }
            }
        }
        for blob in unsure {
            if let Some(id) = self.command(peer, |core, now| core.find_node(now, blob).ok()) {
                self.pending.insert((peer, id), Pending::Membership { blob });
                if let Some(f) = self.files.as_mut() {
                    f.counters.membership_lookups += 1;
                }
            }
        }
    }

    fn apply(&mut self, peer: PeerIndex, duties: &[Duty]) {
        for action in pin::duties(duties) {
            match action {
                Action::Fetch(blob) => {
                    // As the node's download: refused at once if the blob
                    // cannot fit even after dropping every released copy.
                    if !self.could_fit(peer, blob) {
                        // And, as the node, steps aside from the home: the
                        // next peer out takes its place.
                        let declining = !self.files.as_ref().is_some_and(|f| f.config.decline)
                            || self.slots[peer as usize]
                                .core
                                .as_ref()
                                .is_some_and(|core| core.declining().any(|k| *k == blob));
                        if !declining
                            && self.command(peer, |core, now| core.decline(now, blob).ok()).is_some()
                            && let Some(f) = self.files.as_mut()
                        {
                            f.counters.declined += 1;
                        }
                        if let Some(f) = self.files.as_mut() {
                            f.counters.refused += 1;
                        }
                        continue;
                    }
                    if let Some(id) = self.command(peer, |core, now| core.get_providers(now, blob).ok()) {
                        self.slots[peer as usize].files.fetching.insert(blob);
                        self.pending.insert((peer, id), Pending::Providers { blob });
                        if let Some(f) = self.files.as_mut() {
                            f.counters.fetches += 1;
                        }
                    }
                }
                Action::Keep(blob) => {
                    let files = &mut self.slots[peer as usize].files;
                    files.disk.insert(blob, true);
                    files.released.retain(|k| *k != blob);
                }
                Action::Release(blob) => self.release(peer, blob),
            }
        }
    }

    /// A copy is no longer kept for a home: it stays, unmarked, until the
    /// quota needs the room.
    fn release(&mut self, peer: PeerIndex, blob: Key) {
        let files = &mut self.slots[peer as usize].files;
        if let Some(marked) = files.disk.get_mut(&blob) {
            *marked = false;
            files.released.push_back(blob);
        }
        if let Some(f) = self.files.as_mut() {
            f.counters.released += 1;
        }
    }

    /// The pin record of an orphaned copy came back (or did not): no pin,
    /// or a pin with no copies, releases it; otherwise a lookup decides.
    pub(super) fn orphan_pin_found(&mut self, peer: PeerIndex, blob: Key, record: Option<&shoal_overlay::ValueRecord>) {
        match record.and_then(|r| Pin::decode(&r.value)) {
            Some(pin) if pin.replicas > 0 => {
                if let Some(id) = self.command(peer, |core, now| core.find_node(now, blob).ok()) {
                    let replicas = pin.replicas;
                    self.pending
                        .insert((peer, id), Pending::OrphanMembership { blob, replicas });
                }
            }
            _ => self.release(peer, blob),
        }
    }

    /// The lookup for an orphaned copy ended: released unless this peer is
    /// among the `replicas` nearest that answered.
    pub(super) fn orphan_membership_found(
        &mut self,
        peer: PeerIndex,
        blob: Key,
        replicas: u8,
        found: &[PeerInfo<PeerIndex>],
    ) {
        let slot = &self.slots[peer as usize];
        let declined = slot.core.as_ref().map(|c| c.decliners(&blob)).unwrap_or_default();
        if !pin::is_member(&slot.key, &blob, replicas, found.iter().map(|p| p.key), &declined) {
            self.release(peer, blob);
        }
    }

    /// A membership lookup ended: act on that one pin with its answer.
    pub(super) fn membership_found(&mut self, peer: PeerIndex, blob: Key, found: &[PeerInfo<PeerIndex>]) {
        let slot = &self.slots[peer as usize];
        let Some(core) = slot.core.as_ref() else { return };
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        let Some(pin) = core
            .record_store()
            .value(&blob, now)
            .and_then(|r| Pin::decode(&r.value))
        else {
            return;
        };
        let declined = core.decliners(&blob);
        let member = pin::is_member(&slot.key, &blob, pin.replicas, found.iter().map(|p| p.key), &declined);
        let duty = Duty {
            id: blob,
            pin,
            member,
            held: slot.files.disk.contains_key(&blob),
            fetching: slot.files.fetching.contains(&blob),
            marked: slot.files.disk.get(&blob).copied().unwrap_or(false),
        };
        self.apply(peer, &[duty]);
    }

    /// A provider lookup for a fetch ended: take the blob from the first
    /// provider that is up and holds it.
    pub(super) fn providers_found(&mut self, peer: PeerIndex, blob: Key, providers: &[PeerIndex]) {
        let source = providers.iter().copied().find(|p| {
            *p != peer && {
                let s = &self.slots[*p as usize];
                s.state == PeerState::Joined && s.files.disk.contains_key(&blob)
            }
        });
        let started = source.and_then(|from| self.start_transfer(blob, from, peer));
        if started.is_none() {
            self.slots[peer as usize].files.fetching.remove(&blob);
            if let Some(f) = self.files.as_mut() {
                f.counters.no_provider += 1;
            }
        }
    }

    /// Books a transfer of `blob` from `from` to `to`; returns when it ends.
    fn start_transfer(&mut self, blob: Key, from: PeerIndex, to: PeerIndex) -> Option<u64> {
        let files = self.files.as_mut()?;
        let bytes = *files.sizes.get(&blob)?;
        let link = files.config.link_bytes_per_s.max(1);
        let duration = (u128::from(bytes) * 1_000_000 / u128::from(link)) as u64;
        let rtt = 2 * micros(
            self.net
                .path_delay(&self.slots[from as usize].place, &self.slots[to as usize].place),
        );
        let start = (self.now + rtt)
            .max(self.slots[from as usize].files.up_free)
            .max(self.slots[to as usize].files.down_free);
        let end = start + duration.max(1);
        self.slots[from as usize].files.up_free = end;
        self.slots[to as usize].files.down_free = end;
        let id = files.next_transfer;
        files.next_transfer += 1;
        files.transfers.insert(
            id,
            Transfer {
                blob,
                from,
                from_inc: self.slots[from as usize].incarnation,
                to,
                to_inc: self.slots[to as usize].incarnation,
                bytes,
            },
        );
        self.push(end, Ev::Transfer { id });
        Some(end)
    }

    /// Whether `blob` fits on `peer`'s disk once every released copy is gone.
    fn could_fit(&self, peer: PeerIndex, blob: Key) -> bool {
        let Some(files) = self.files.as_ref() else { return false };
        let Some(quota) = files.config.quota_bytes else {
            return true;
        };
        let disk = &self.slots[peer as usize].files.disk;
        files.bytes(disk.iter().filter(|(_, marked)| **marked).map(|(k, _)| k)) + files.bytes([&blob]) <= quota
    }

    /// Drops `peer`'s released copies, least recently released first, until
    /// `blob` fits under the quota, as the node's store does. False (and
    /// counted) if it cannot fit.
    fn make_room(&mut self, peer: PeerIndex, blob: Key) -> bool {
        let Some(files) = self.files.as_mut() else { return false };
        let Some(quota) = files.config.quota_bytes else {
            return true;
        };
        let slot = &mut self.slots[peer as usize];
        let mut used = files.bytes(slot.files.disk.keys());
        let need = files.bytes([&blob]);
        while used + need > quota {
            let Some(old) = slot.files.released.pop_front() else {
                files.counters.refused += 1;
                return false;
            };
            if slot.files.disk.get(&old) == Some(&false) {
                slot.files.disk.remove(&old);
                used -= files.bytes([&old]);
                files.counters.evicted += 1;
                if let Some(core) = slot.core.as_mut() {
                    core.stop_providing(&old);
                }
            }
        }
        true
    }

    /// A transfer's last byte would arrive now.
    pub(super) fn transfer_done(&mut self, id: u64) {
        let Some(t) = self.files.as_mut().and_then(|f| f.transfers.remove(&id)) else {
            return;
        };
        let (from, to) = (&self.slots[t.from as usize], &self.slots[t.to as usize]);
        // The sender must have stayed up (a leaving sender counts: it waits
        // for its pushes), and the receiver be the same run that asked.
        let sender_ok = from.incarnation == t.from_inc && from.core.is_some();
        let receiver_ok = to.incarnation == t.to_inc && to.core.is_some();
        if receiver_ok {
            self.slots[t.to as usize].files.fetching.remove(&t.blob);
        }
        if !(sender_ok && receiver_ok) {
            if let Some(f) = self.files.as_mut() {
                f.counters.broken_transfers += 1;
            }
            return;
        }
        self.slots[t.from as usize].files.sent += t.bytes;
        self.slots[t.to as usize].files.received += t.bytes;
        if let Some(f) = self.files.as_mut() {
            f.counters.fetched += 1;
            f.counters.bytes_moved += t.bytes;
        }
        if !self.make_room(t.to, t.blob) {
            return;
        }
        self.slots[t.to as usize].files.disk.insert(t.blob, true);
        let blob = t.blob;
        let _ = self.command(t.to, |core, now| core.start_providing(now, blob).ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, sim_verifier};
    use shoal_overlay::Config;

    fn swarm(peers: usize) -> Sim {
        let mut sim = Sim::new(SimConfig {
            seed: 5,
            net: crate::net::NetConfig::preset(crate::Preset::Lan),
            overlay: Config::new(sim_verifier()),
            check_interval: Duration::from_secs(60),
            check_sample: 8,
        });
        sim.enable_files(FilesConfig {
            link_bytes_per_s: 125_000_000,
            pin_check: Duration::from_secs(30),
            max_lookups: 4,
            handoff: true,
            decline: true,
            quota_bytes: None,
        });
        for _ in 0..peers {
            let peer = sim.add_slot();
            sim.start(peer);
            sim.run_until(sim.now_us() + 1_000_000).unwrap();
        }
        sim
    }

    fn marked(sim: &Sim, peer: PeerIndex, blob: &Key) -> Option<bool> {
        sim.slots[peer as usize].files.disk.get(blob).copied()
    }

    #[test]
    fn copies_kept_for_a_home_whose_pin_record_is_gone_are_released() {
        let mut sim = swarm(30);
        let pinned = Key::of_content(b"pinned");
        let never = Key::of_content(b"shared, never pinned");
        sim.share(0, pinned, 1 << 20);
        sim.share(0, never, 1 << 20);
        assert!(sim.pin(0, pinned, 3));
        sim.run_until(sim.now_us() + 5 * 60 * 1_000_000).unwrap();
        let members: Vec<PeerIndex> = (1..30).filter(|p| marked(&sim, *p, &pinned) == Some(true)).collect();
        assert_eq!(members.len(), 3, "the home keeps the pinned blob");
        // A peer outside the home that holds no pin record keeps both blobs
        // marked, as a hand-off receiver that never became a member would.
        let outsider = (1..30)
            .find(|p| {
                marked(&sim, *p, &pinned).is_none()
                    && sim.slots[*p as usize]
                        .core
                        .as_ref()
                        .is_some_and(|c| c.record_store().value_records().next().is_none())
            })
            .expect("a peer without records");
        for blob in [pinned, never] {
            sim.slots[outsider as usize].files.disk.insert(blob, true);
        }
        sim.run_until(sim.now_us() + 2 * 60 * 1_000_000).unwrap();
        assert_eq!(
            marked(&sim, outsider, &pinned),
            Some(false),
            "not a member: released, kept on disk"
        );
        assert_eq!(marked(&sim, outsider, &never), Some(false), "no pin at all: released");
        assert!(sim.file_counters().orphan_checks >= 2);
        for member in members {
            assert_eq!(marked(&sim, member, &pinned), Some(true), "members keep theirs");
        }
    }
}
