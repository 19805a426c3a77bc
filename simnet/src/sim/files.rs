//! FilesModel in the simulator: blobs on each peer's simulated disk, the pin
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
use shoal_resources::pin::{self, Declined, FetchOutcome, Pin, PinAction, PinDuties, PinDutiesConfig, PinState, Round};

use super::{Awaited, Ev, PeerIndex, PeerState, Sim, micros};
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

impl FilesConfig {
    fn duties(&self) -> PinDutiesConfig {
        PinDutiesConfig {
            every: self.pin_check,
            max_lookups: self.max_lookups,
            ..PinDutiesConfig::default()
        }
    }
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
    /// The pin duties of the peer's current run (a restart starts afresh,
    /// as the node's do).
    duties: Option<PinDuties>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Transfer {
    blob: Key,
    from: PeerIndex,
    from_inc: u32,
    to: PeerIndex,
    to_inc: u32,
    bytes: u64,
    /// Pushed by a leaving peer (a hand-off), not fetched by a pin duty.
    #[serde(default)]
    handoff: bool,
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
pub(crate) struct FilesModel {
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

impl FilesModel {
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
        self.files = Some(FilesModel {
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
                self.pending.insert((peer, id), Awaited::Put);
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
        files.duties = None;
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

    /// A peer started: take back its saved records, start its pin duties
    /// (their first round, which also announces what its disk holds, a
    /// random phase into the period).
    pub(super) fn files_started(&mut self, peer: PeerIndex) {
        let Some(files) = self.files.as_ref() else { return };
        let config = files.config.duties();
        let every = micros(config.every);
        let phase = self.rng.below(every.max(1));
        let slot = &mut self.slots[peer as usize];
        let saved = std::mem::take(&mut slot.files.saved);
        slot.files.fetching.clear();
        let inc = slot.incarnation;
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        slot.files.duties = Some(PinDuties::new(slot.key, config, now, Duration::from_micros(phase)));
        let held = !slot.files.disk.is_empty();
        if let Some(core) = slot.core.as_mut() {
            core.restore_records(now, saved, Vec::new());
        }
        self.push(self.now + every + phase, Ev::Duty { peer, inc, first: held });
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
            if let Some(end) = self.start_transfer(blob, peer, to, true) {
                self.slots[to as usize].files.fetching.insert(blob);
                if let Some(f) = self.files.as_mut() {
                    f.counters.handoffs += 1;
                }
                last = last.max(Some(end));
            }
        }
        last
    }

    /// One round of pin duties on `peer`: what it holds, handed to its
    /// [`PinDuties`], whose actions are carried out at once.
    pub(super) fn duty(&mut self, peer: PeerIndex, inc: u32, first: bool) {
        let Some(files) = self.files.as_ref() else { return };
        let every = micros(files.config.pin_check);
        let slot = &self.slots[peer as usize];
        if slot.incarnation != inc || slot.core.is_none() {
            return;
        }
        if slot.state != PeerState::Joined {
            // The first round waits for the join to announce the disk.
            self.push(self.now + every, Ev::Duty { peer, inc, first });
            return;
        }
        if first {
            let held: Vec<Key> = slot.files.disk.keys().copied().collect();
            let _ = self.command(peer, |core, now| core.provide_many(now, held).ok());
        }
        let Some(round) = self.pin_round(peer) else { return };
        let slot = &mut self.slots[peer as usize];
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        let Some(duties) = slot.files.duties.as_mut() else {
            return;
        };
        duties.handle_round(now, round);
        let next = self.now + micros(duties.poll_timeout().saturating_since(now)).max(1);
        self.push(
            next,
            Ev::Duty {
                peer,
                inc,
                first: false,
            },
        );
        self.pin_actions(peer);
    }

    /// What `peer`'s pin duties read for a round.
    fn pin_round(&mut self, peer: PeerIndex) -> Option<Round> {
        let slot = &self.slots[peer as usize];
        let core = slot.core.as_ref()?;
        let files = self.files.as_mut()?;
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        let mut pins = Vec::new();
        for record in core.record_store().value_records() {
            if record.expires <= now {
                continue;
            }
            let Some(pin) = files.decode_pin(record) else {
                continue;
            };
            pins.push(PinState {
                id: record.key,
                pin,
                member: core.is_member_of(&record.key, usize::from(pin.replicas)),
                held: slot.files.disk.contains_key(&record.key),
                marked: slot.files.disk.get(&record.key).copied().unwrap_or(false),
                arriving: slot.files.fetching.contains(&record.key),
            });
        }
        let orphans = slot
            .files
            .disk
            .iter()
            .filter(|(blob, marked)| **marked && core.record_store().value(blob, now).is_none())
            .map(|(blob, _)| *blob)
            .collect();
        let declining: Vec<Key> = core.declining().copied().collect();
        let declined = declining
            .into_iter()
            .map(|id| Declined {
                id,
                fits: self.could_fit(peer, id),
            })
            .collect();
        Some(Round {
            pins,
            orphans,
            declined,
        })
    }

    /// Carries out what `peer`'s pin duties ask, as the node's
    /// `pins::act` does.
    fn pin_actions(&mut self, peer: PeerIndex) {
        loop {
            let slot = &mut self.slots[peer as usize];
            let Some(action) = slot.files.duties.as_mut().and_then(|d| d.poll_action()) else {
                return;
            };
            match action {
                PinAction::LookUp(blob) => {
                    if let Some(id) = self.command(peer, |core, now| core.find_node(now, blob).ok()) {
                        self.pending.insert((peer, id), Awaited::Membership { blob });
                        if let Some(f) = self.files.as_mut() {
                            f.counters.membership_lookups += 1;
                        }
                    }
                }
                PinAction::ReadPin(blob) => {
                    if let Some(id) = self.command(peer, |core, now| core.get_value(now, blob).ok()) {
                        self.pending.insert((peer, id), Awaited::PinRecord { blob });
                        if let Some(f) = self.files.as_mut() {
                            f.counters.orphan_checks += 1;
                        }
                    }
                }
                PinAction::Fetch { id: blob, .. } => {
                    // As the node's download: refused at once if the blob
                    // cannot fit even after dropping every released copy.
                    if !self.could_fit(peer, blob) {
                        if let Some(f) = self.files.as_mut() {
                            f.counters.refused += 1;
                        }
                        self.fetch_ended(peer, blob, FetchOutcome::NoRoom);
                        continue;
                    }
                    match self.command(peer, |core, now| core.get_providers(now, blob).ok()) {
                        Some(id) => {
                            self.slots[peer as usize].files.fetching.insert(blob);
                            self.pending.insert((peer, id), Awaited::Providers { blob });
                            if let Some(f) = self.files.as_mut() {
                                f.counters.fetches += 1;
                            }
                        }
                        None => self.fetch_ended(peer, blob, FetchOutcome::Failed),
                    }
                }
                PinAction::Keep(blob) => {
                    let files = &mut self.slots[peer as usize].files;
                    if let Some(marked) = files.disk.get_mut(&blob) {
                        *marked = true;
                        files.released.retain(|k| *k != blob);
                    }
                }
                PinAction::Release(blob) => self.release(peer, blob),
                PinAction::Decline(blob) => {
                    // Steps aside from the home: the next peer out takes
                    // its place.
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
                }
                PinAction::StopDeclining(blob) => {
                    if let Some(core) = self.slots[peer as usize].core.as_mut() {
                        core.stop_providing(&blob);
                    }
                }
            }
        }
    }

    /// A fetch ordered by `peer`'s pin duties ended.
    fn fetch_ended(&mut self, peer: PeerIndex, blob: Key, outcome: FetchOutcome) {
        let slot = &mut self.slots[peer as usize];
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        if let Some(duties) = slot.files.duties.as_mut() {
            duties.handle_fetch(now, blob, outcome);
        }
        self.pin_actions(peer);
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

    /// A pin read for an orphaned copy came back.
    pub(super) fn pin_record_found(&mut self, peer: PeerIndex, blob: Key, record: Option<&ValueRecord>) {
        let slot = &mut self.slots[peer as usize];
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        if let Some(duties) = slot.files.duties.as_mut() {
            duties.handle_pin_record(now, blob, Ok(record.and_then(|r| Pin::decode(&r.value))));
        }
        self.pin_actions(peer);
    }

    /// A membership lookup of `peer`'s pin duties ended.
    pub(super) fn membership_found(&mut self, peer: PeerIndex, blob: Key, found: &[PeerInfo<PeerIndex>]) {
        let slot = &mut self.slots[peer as usize];
        let Some(core) = slot.core.as_ref() else { return };
        let declined = core.decliners(&blob);
        let now = Instant::from_micros(net::to_local(self.now, &slot.place));
        if let Some(duties) = slot.files.duties.as_mut() {
            duties.handle_lookup(now, blob, Some(found.iter().map(|p| p.key)), &declined);
        }
        self.pin_actions(peer);
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
        let started = source.and_then(|from| self.start_transfer(blob, from, peer, false));
        if started.is_none() {
            self.slots[peer as usize].files.fetching.remove(&blob);
            if let Some(f) = self.files.as_mut() {
                f.counters.no_provider += 1;
            }
            self.fetch_ended(peer, blob, FetchOutcome::Failed);
        }
    }

    /// Books a transfer of `blob` from `from` to `to`; returns when it ends.
    fn start_transfer(&mut self, blob: Key, from: PeerIndex, to: PeerIndex, handoff: bool) -> Option<u64> {
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
                handoff,
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
            if receiver_ok {
                self.fetch_ended(t.to, t.blob, FetchOutcome::Failed);
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
            self.fetch_ended(t.to, t.blob, FetchOutcome::NoRoom);
            return;
        }
        self.slots[t.to as usize].files.disk.insert(t.blob, true);
        let blob = t.blob;
        let _ = self.command(t.to, |core, now| core.start_providing(now, blob).ok());
        if t.handoff {
            // As the node's hand-off receiver: the leaving peer is left out
            // of the blob's home while it may still answer.
            let from = self.slots[t.from as usize].key;
            let slot = &mut self.slots[t.to as usize];
            let now = Instant::from_micros(net::to_local(self.now, &slot.place));
            if let Some(duties) = slot.files.duties.as_mut() {
                duties.handle_handoff(now, blob, from);
            }
        }
        self.fetch_ended(t.to, blob, FetchOutcome::Fetched);
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
