//! Pins: "the home of this blob keeps R copies". A pin is a small signed
//! value record stored at the blob's own key, so it lives exactly at the
//! blob's home and the overlay's replication and hand-off carry it to
//! whoever joins that home — which is how a crashed or departed member is
//! replaced (repair): the newcomer finds the pin among the records it now
//! holds and fetches the blob from the remaining copies.
//!
//! [`PinDuties`] is the home duty of pins, sans-IO: given the pins this peer
//! holds, whether it is among each blob's `R` closest peers, and what it
//! stores, it says what to fetch, keep, release and look up. The node and
//! the simulator both drive it; neither decides anything about pins itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

use crate::home::{Backoff, Budget, Rounds, is_member};

/// The first bytes of a pin record's value.
const MAGIC: &[u8; 13] = b"shoal-pin-v1\n";

/// How long a pin record lives. The pinning peer re-signs it every hour
/// while it runs; if it goes away for good, the pin still holds for this
/// long (and an unpin, signed the same way, outlives any stale copy of the
/// pin it replaces).
pub const PIN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 60 * 60);

/// What a pin record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Copies the home keeps; 0 is an unpin.
    pub replicas: u8,
    /// The blob's size (what a member must fetch).
    pub size: u64,
}

impl Pin {
    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        crate::value::encode(MAGIC, self)
    }

    /// Reads a record value; `None` if it is not a pin.
    pub fn decode(value: &[u8]) -> Option<Pin> {
        crate::value::decode(MAGIC, 64, value)
    }
}

/// Where a peer that leaves gracefully hands its copy of blob `id` first:
/// every member of the home it leaves behind (`home`: the `replicas` peers
/// nearest `id` other than itself) that does not hold it yet.
pub fn handoff_targets<P: Copy>(home: &[P], holds: impl Fn(P) -> bool) -> Vec<P> {
    home.iter().copied().filter(|p| !holds(*p)).collect()
}

/// Settings of the pin duties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinDutiesConfig {
    /// How often a round runs (the node's default: 30 s).
    pub every: Duration,
    /// Most lookups (membership checks and pin reads) one round starts.
    pub max_lookups: usize,
    /// The longest wait between two tries of a failing fetch, in rounds.
    pub max_retry_rounds: u64,
    /// How long a peer that handed a blob here as it left is left out of
    /// that blob's home: it may answer lookups until its other hand-offs
    /// end (the node's hand-off deadline, 10 minutes by default).
    pub handoff_grace: Duration,
}

impl Default for PinDutiesConfig {
    fn default() -> Self {
        PinDutiesConfig {
            every: Duration::from_secs(30),
            max_lookups: 8,
            max_retry_rounds: 20,
            handoff_grace: Duration::from_secs(10 * 60),
        }
    }
}

/// One pin record this peer holds (live, not expired), as the driver sees
/// it at the start of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinState {
    /// The blob.
    pub id: Key,
    /// The pin.
    pub pin: Pin,
    /// Whether the routing table makes this peer one of the blob's
    /// `pin.replicas` nearest (decliners left out).
    pub member: bool,
    /// Whether this peer stores the whole blob, servable.
    pub held: bool,
    /// Whether this peer marks it kept for the home (exempt from garbage
    /// collection).
    pub marked: bool,
    /// Whether a copy is on its way here already by other means than this
    /// machine's fetches (a leaving peer's hand-off).
    pub arriving: bool,
}

/// A blob this peer declines (stepped aside from its home for lack of
/// room), as the driver sees it at the start of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declined {
    /// The blob.
    pub id: Key,
    /// Whether it would fit now (once every copy not kept for a home is
    /// dropped).
    pub fits: bool,
}

/// What the driver hands to a round: everything the decisions read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Every live pin record this peer holds.
    pub pins: Vec<PinState>,
    /// Copies this peer marks kept for a home whose pin record it does not
    /// hold (it drifted away from the home and forgot the record, or got
    /// the copy by hand-off).
    pub orphans: Vec<Key>,
    /// The blobs this peer declines.
    pub declined: Vec<Declined>,
}

/// What the pin duties ask the driver to do, drained with
/// [`PinDuties::poll_action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PinAction {
    /// Look up the peers nearest the blob (only answering ones count) and
    /// answer with [`PinDuties::handle_lookup`].
    LookUp(Key),
    /// Read the pin record at the blob's home and answer with
    /// [`PinDuties::handle_pin_record`].
    ReadPin(Key),
    /// Fetch the blob (of `size` bytes) and answer with
    /// [`PinDuties::handle_fetch`].
    Fetch {
        /// The blob.
        id: Key,
        /// Its size, from the pin.
        size: u64,
    },
    /// Held already: mark it kept for the home.
    Keep(Key),
    /// No longer this peer's to keep (not a member, or unpinned): unmark
    /// it. The bytes stay until the quota needs the room.
    Release(Key),
    /// It cannot fit here: step aside from its home (announce a decline),
    /// so that the next peer out keeps a copy instead.
    Decline(Key),
    /// Stop declining it: it fits again, or is no longer pinned.
    StopDeclining(Key),
}

/// How a fetch ordered by [`PinAction::Fetch`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The whole blob is stored and verified.
    Fetched,
    /// It does not fit under this peer's quota.
    NoRoom,
    /// Any other failure (no provider answered, a transfer broke).
    Failed,
}

/// Rounds after which a lookup or pin read that was never answered is
/// forgotten (and may be ordered again).
const ASK_ROUNDS: u64 = 10;

/// Why a lookup or a pin read is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Asked {
    /// A kept copy the routing table no longer vouches for.
    Membership { replicas: u8 },
    /// An orphan's pin record.
    OrphanPin,
    /// An orphan whose pin record is live.
    OrphanMembership { replicas: u8 },
}

/// The home duties of pinned blobs on one peer, sans-IO: every round it
/// reads the pins this peer holds (a [`Round`] from the driver) and
/// decides what to fetch, keep, release, decline and look up.
///
/// - A member that lacks a servable copy fetches it; one that holds it
///   marks it kept; a peer that is no longer a member (or whose pin became
///   an unpin) releases its copy.
/// - The routing table may list a crashed peer for a round or two, so a
///   kept copy is released only when a lookup — where only peers that
///   answer count — says this peer is no longer a member; until it
///   answers, the copy stays. At most `max_lookups` lookups a round,
///   starting at a rotating place.
/// - A kept copy whose pin record this peer no longer holds (an orphan)
///   is checked with the home: no pin or an unpin releases it, a live pin
///   is followed by a lookup.
/// - A fetch that fails waits out a [`Backoff`] before it is tried again;
///   one that cannot fit declines the blob, and a declined blob that fits
///   again (or is no longer pinned) stops being declined.
///
/// Inputs are `handle_*` calls with the driver's `now`; outputs are
/// [`poll_action`](Self::poll_action) and
/// [`poll_timeout`](Self::poll_timeout). The node drives it from a task
/// (`node/src/pins.rs`), the simulator from its event queue
/// (`simnet/src/sim/files.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinDuties {
    local: Key,
    rounds: Rounds,
    budget: Budget,
    backoff: Backoff,
    /// Fetches ordered and not yet answered.
    fetching: BTreeSet<Key>,
    /// Lookups and pin reads ordered and not yet answered, and the round
    /// that ordered each (one unanswered for [`ASK_ROUNDS`] is forgotten).
    asked: BTreeMap<Key, (Asked, u64)>,
    /// Blobs handed here by a leaving peer: that peer, and until when it
    /// counts as gone from the blob's home.
    handed: BTreeMap<Key, (Key, Instant)>,
    handoff_grace: Duration,
    actions: VecDeque<PinAction>,
}

impl PinDuties {
    /// The duties of the peer `local`, started at `now`; the first round
    /// is due `config.every + phase` later.
    pub fn new(local: Key, config: PinDutiesConfig, now: Instant, phase: Duration) -> Self {
        PinDuties {
            local,
            rounds: Rounds::new(now, config.every, phase),
            budget: Budget::new(config.max_lookups),
            backoff: Backoff::new(config.max_retry_rounds),
            fetching: BTreeSet::new(),
            asked: BTreeMap::new(),
            handed: BTreeMap::new(),
            handoff_grace: config.handoff_grace,
            actions: VecDeque::new(),
        }
    }

    /// When the next round is due: the driver then gathers a [`Round`]
    /// and calls [`handle_round`](Self::handle_round).
    pub fn poll_timeout(&self) -> Instant {
        self.rounds.next()
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<PinAction> {
        self.actions.pop_front()
    }

    /// Whether a fetch of `id` ordered by this machine is unanswered.
    pub fn is_fetching(&self, id: &Key) -> bool {
        self.fetching.contains(id)
    }

    /// One round of duties, on what the driver found at `now`.
    pub fn handle_round(&mut self, now: Instant, round: Round) {
        let number = self.rounds.begin(now);
        let held: BTreeSet<Key> = round.pins.iter().map(|p| p.id).collect();
        let live: BTreeSet<Key> = round.pins.iter().filter(|p| p.pin.replicas > 0).map(|p| p.id).collect();
        for d in &round.declined {
            if d.fits || !live.contains(&d.id) {
                self.actions.push_back(PinAction::StopDeclining(d.id));
            }
        }
        self.backoff.retain(|id| held.contains(id));
        self.asked.retain(|_, (_, at)| at.saturating_add(ASK_ROUNDS) > number);

        let mut lookups = 0;
        let mut wanted: Vec<(PinState, bool)> = round.pins.iter().map(|p| (*p, p.member)).collect();
        for i in self.budget.order(wanted.len()) {
            let (p, member) = &mut wanted[i];
            if *member || p.pin.replicas == 0 || !p.marked {
                continue;
            }
            // Not a member by the table, with a copy kept for the home: it
            // stays until a lookup confirms.
            *member = true;
            if lookups < self.budget.limit() && !self.asked.contains_key(&p.id) {
                lookups += 1;
                self.ask(
                    p.id,
                    Asked::Membership {
                        replicas: p.pin.replicas,
                    },
                );
            }
        }
        let mut decided: Vec<(Key, PinAction)> = Vec::new();
        for (p, member) in &wanted {
            let busy = self.fetching.contains(&p.id) || p.arriving || self.backoff.waiting(&p.id, number);
            let wanted = *member && p.pin.replicas > 0;
            let action = match (wanted, p.held, p.marked) {
                (true, false, _) if !busy => Some(PinAction::Fetch {
                    id: p.id,
                    size: p.pin.size,
                }),
                (true, true, false) => Some(PinAction::Keep(p.id)),
                (false, _, true) => Some(PinAction::Release(p.id)),
                _ => None,
            };
            decided.extend(action.map(|a| (p.id, a)));
        }
        decided.sort_by_key(|(id, _)| *id);
        for (id, action) in decided {
            if let PinAction::Fetch { .. } = action {
                self.fetching.insert(id);
            }
            self.actions.push_back(action);
        }
        for id in round.orphans {
            if lookups >= self.budget.limit() {
                break;
            }
            if !self.asked.contains_key(&id) {
                lookups += 1;
                self.ask(id, Asked::OrphanPin);
            }
        }
    }

    /// A round the driver could not gather (its store unreadable): nothing
    /// is decided, and the next round is due a period from `now`.
    pub fn skip_round(&mut self, now: Instant) {
        self.rounds.begin(now);
    }

    fn ask(&mut self, id: Key, why: Asked) {
        self.asked.insert(id, (why, self.rounds.begun()));
        self.actions.push_back(match why {
            Asked::OrphanPin => PinAction::ReadPin(id),
            Asked::Membership { .. } | Asked::OrphanMembership { .. } => PinAction::LookUp(id),
        });
    }

    /// A lookup ordered by [`PinAction::LookUp`] ended: `found` are the
    /// nearest peers that answered (`None`: the lookup failed, which
    /// changes nothing), `declined` the blob's decliners as this peer
    /// knows them. A copy is released if this peer is not a member.
    pub fn handle_lookup(
        &mut self,
        now: Instant,
        id: Key,
        found: Option<impl IntoIterator<Item = Key>>,
        declined: &[Key],
    ) {
        let replicas = match self.asked.get(&id) {
            Some((Asked::Membership { replicas } | Asked::OrphanMembership { replicas }, _)) => *replicas,
            _ => return,
        };
        self.asked.remove(&id);
        let Some(found) = found else { return };
        // The peer that handed this copy over as it left still answers
        // until its other hand-offs end: it is gone from the home already.
        let leaving = self
            .handed
            .get(&id)
            .filter(|(_, until)| now < *until)
            .map(|(peer, _)| *peer);
        let found = found.into_iter().filter(|k| Some(*k) != leaving);
        if !is_member(&self.local, &id, replicas, found, declined) {
            self.actions.push_back(PinAction::Release(id));
        }
    }

    /// Peer `from` handed blob `id` here as it left (this peer now holds
    /// and marks the copy): for the hand-off grace, `from` is left out of
    /// the blob's home, so that the copy is not released on the word of a
    /// lookup that the leaving peer still answers.
    pub fn handle_handoff(&mut self, now: Instant, id: Key, from: Key) {
        self.handed.retain(|_, (_, until)| now < *until);
        self.handed.insert(id, (from, now + self.handoff_grace));
    }

    /// A pin read ordered by [`PinAction::ReadPin`] ended: `Ok(None)`, no
    /// pin at the home; `Err(())`, the read failed (which changes nothing).
    /// No pin, or an unpin, releases the copy; a live pin is followed by a
    /// lookup.
    pub fn handle_pin_record(&mut self, _now: Instant, id: Key, pin: Result<Option<Pin>, ()>) {
        if !matches!(self.asked.get(&id), Some((Asked::OrphanPin, _))) {
            return;
        }
        self.asked.remove(&id);
        match pin {
            Ok(Some(pin)) if pin.replicas > 0 => self.ask(id, Asked::OrphanMembership { replicas: pin.replicas }),
            Ok(_) => self.actions.push_back(PinAction::Release(id)),
            Err(()) => {}
        }
    }

    /// A fetch ordered by [`PinAction::Fetch`] ended at `now`.
    pub fn handle_fetch(&mut self, _now: Instant, id: Key, outcome: FetchOutcome) {
        if !self.fetching.remove(&id) {
            return;
        }
        match outcome {
            FetchOutcome::Fetched => {
                self.backoff.forget(&id);
                self.actions.push_back(PinAction::Keep(id));
            }
            FetchOutcome::NoRoom => {
                self.backoff.failed(id, self.rounds.begun());
                self.actions.push_back(PinAction::Decline(id));
            }
            FetchOutcome::Failed => self.backoff.failed(id, self.rounds.begun()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(30);

    fn t(secs: u64) -> Instant {
        Instant::from_micros(secs * 1_000_000)
    }

    fn blob(n: u8) -> Key {
        Key::of_content(&[n])
    }

    fn state(n: u8, member: bool, held: bool, marked: bool) -> PinState {
        PinState {
            id: blob(n),
            pin: Pin { replicas: 3, size: 10 },
            member,
            held,
            marked,
            arriving: false,
        }
    }

    fn machine(max_lookups: usize) -> PinDuties {
        let config = PinDutiesConfig {
            every: EVERY,
            max_lookups,
            max_retry_rounds: 20,
            handoff_grace: Duration::from_secs(600),
        };
        PinDuties::new(Key::of_content(b"local"), config, t(0), Duration::from_secs(5))
    }

    fn drain(duties: &mut PinDuties) -> Vec<PinAction> {
        std::iter::from_fn(|| duties.poll_action()).collect()
    }

    fn round(pins: Vec<PinState>) -> Round {
        Round {
            pins,
            ..Round::default()
        }
    }

    /// `count` peers that would all be nearer `id` than `local` is, or
    /// (with `nearer` false) all farther.
    fn peers_around(local: &Key, id: &Key, nearer: bool, count: usize) -> Vec<Key> {
        (0..u16::MAX)
            .map(|n| Key::of_content(&n.to_be_bytes()))
            .filter(|k| (k.distance(id) < local.distance(id)) == nearer)
            .take(count)
            .collect()
    }

    #[test]
    fn rounds_are_due_every_period_after_the_phase() {
        let mut duties = machine(4);
        assert_eq!(duties.poll_timeout(), t(35));
        duties.handle_round(t(35), Round::default());
        assert_eq!(duties.poll_timeout(), t(65));
        assert_eq!(duties.poll_action(), None);
    }

    #[test]
    fn a_round_the_driver_could_not_gather_still_moves_the_timer_on() {
        let mut duties = machine(4);
        duties.skip_round(t(35));
        assert_eq!(duties.poll_timeout(), t(65));
        assert_eq!(duties.poll_action(), None);
    }

    #[test]
    fn a_peer_that_becomes_a_member_fetches_then_keeps() {
        let mut duties = machine(4);
        // Not a member: nothing to do.
        duties.handle_round(t(35), round(vec![state(1, false, false, false)]));
        assert_eq!(drain(&mut duties), []);
        // The home changed (a member left): fetch, once.
        duties.handle_round(t(65), round(vec![state(1, true, false, false)]));
        assert_eq!(drain(&mut duties), [PinAction::Fetch { id: blob(1), size: 10 }]);
        assert!(duties.is_fetching(&blob(1)));
        duties.handle_round(t(95), round(vec![state(1, true, false, false)]));
        assert_eq!(drain(&mut duties), [], "a running fetch is not started twice");
        duties.handle_fetch(t(100), blob(1), FetchOutcome::Fetched);
        assert_eq!(drain(&mut duties), [PinAction::Keep(blob(1))]);
        assert!(!duties.is_fetching(&blob(1)));
        // A copy held but unmarked is marked; a copy arriving by hand-off
        // is not fetched again.
        let mut arriving = state(3, true, false, false);
        arriving.arriving = true;
        duties.handle_round(t(125), round(vec![state(2, true, true, false), arriving]));
        assert_eq!(drain(&mut duties), [PinAction::Keep(blob(2))]);
    }

    #[test]
    fn a_kept_copy_is_released_only_when_a_lookup_says_this_peer_left_the_home() {
        let mut duties = machine(4);
        let local = Key::of_content(b"local");
        let id = blob(1);
        // The table says this peer is no longer a member, but it keeps a
        // copy: look it up, release nothing yet.
        duties.handle_round(t(35), round(vec![state(1, false, true, true)]));
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        // Asked once, not again while the lookup runs.
        duties.handle_round(t(65), round(vec![state(1, false, true, true)]));
        assert_eq!(drain(&mut duties), []);
        // The answering peers still make it a member: it keeps the copy.
        duties.handle_lookup(t(66), id, Some(peers_around(&local, &id, false, 5)), &[]);
        assert_eq!(drain(&mut duties), []);
        // A failed lookup changes nothing.
        duties.handle_round(t(95), round(vec![state(1, false, true, true)]));
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        duties.handle_lookup(t(96), id, None::<Vec<Key>>, &[]);
        assert_eq!(drain(&mut duties), []);
        // Three answering peers nearer: released.
        duties.handle_round(t(125), round(vec![state(1, false, true, true)]));
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        duties.handle_lookup(t(126), id, Some(peers_around(&local, &id, true, 3)), &[]);
        assert_eq!(drain(&mut duties), [PinAction::Release(id)]);
        // Unless one of them declined the blob.
        duties.handle_round(t(155), round(vec![state(1, false, true, true)]));
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        let nearer = peers_around(&local, &id, true, 3);
        duties.handle_lookup(t(156), id, Some(nearer.clone()), &nearer[..1]);
        assert_eq!(drain(&mut duties), []);
        // An answer nobody asked for is ignored.
        duties.handle_lookup(t(157), blob(9), Some(nearer), &[]);
        assert_eq!(drain(&mut duties), []);
        // An unpin releases at once, with no lookup.
        let mut unpinned = state(1, false, true, true);
        unpinned.pin.replicas = 0;
        duties.handle_round(t(185), round(vec![unpinned]));
        assert_eq!(drain(&mut duties), [PinAction::Release(id)]);
    }

    #[test]
    fn lookups_per_round_are_bounded_and_each_pin_gets_its_turn() {
        let mut duties = machine(2);
        let pins: Vec<PinState> = (0..5).map(|n| state(n, false, true, true)).collect();
        let mut looked_up = Vec::new();
        for r in 0..3 {
            duties.handle_round(t(35 + 30 * r), round(pins.clone()));
            let actions = drain(&mut duties);
            assert!(actions.len() <= 2, "{actions:?}");
            for a in actions {
                let PinAction::LookUp(id) = a else { panic!("{a:?}") };
                duties.handle_lookup(t(36 + 30 * r), id, None::<Vec<Key>>, &[]);
                looked_up.push(id);
            }
        }
        looked_up.sort();
        looked_up.dedup();
        assert_eq!(looked_up.len(), 5, "every pin was looked up within three rounds");
    }

    #[test]
    fn a_failing_fetch_is_tried_again_ever_less_often() {
        let mut duties = machine(4);
        let pins = || round(vec![state(1, true, false, false)]);
        let mut tries = Vec::new();
        for r in 1..=40u64 {
            duties.handle_round(t(5 + 30 * r), pins());
            for a in drain(&mut duties) {
                assert_eq!(a, PinAction::Fetch { id: blob(1), size: 10 });
                tries.push(r);
                duties.handle_fetch(t(6 + 30 * r), blob(1), FetchOutcome::Failed);
            }
        }
        // Failed at round 1: tried again at 2, then after 2, 4, 8, 16 and
        // 20 rounds (the cap).
        assert_eq!(tries, [1, 2, 4, 8, 16, 32]);
        // A success ends the back-off: the next failure waits one round.
        let mut r = 40;
        let fetch = loop {
            r += 1;
            duties.handle_round(t(5 + 30 * r), pins());
            if let Some(a) = duties.poll_action() {
                break a;
            }
        };
        assert_eq!((r, fetch), (52, PinAction::Fetch { id: blob(1), size: 10 }));
        duties.handle_fetch(t(6 + 30 * r), blob(1), FetchOutcome::Fetched);
        assert_eq!(drain(&mut duties), [PinAction::Keep(blob(1))]);
        duties.handle_round(t(5 + 30 * 53), pins());
        assert_eq!(drain(&mut duties).len(), 1);
        duties.handle_fetch(t(6 + 30 * 53), blob(1), FetchOutcome::Failed);
        duties.handle_round(t(5 + 30 * 54), pins());
        assert_eq!(drain(&mut duties).len(), 1, "tried again the next round");
    }

    #[test]
    fn a_blob_that_cannot_fit_is_declined_until_it_fits_or_is_unpinned() {
        let mut duties = machine(4);
        duties.handle_round(t(35), round(vec![state(1, true, false, false)]));
        assert_eq!(drain(&mut duties).len(), 1);
        duties.handle_fetch(t(36), blob(1), FetchOutcome::NoRoom);
        assert_eq!(drain(&mut duties), [PinAction::Decline(blob(1))]);
        let declined = |fits| Declined { id: blob(1), fits };
        // Still pinned and still too big: declined on.
        let not_member = state(1, false, false, false);
        duties.handle_round(
            t(65),
            Round {
                pins: vec![not_member],
                orphans: vec![],
                declined: vec![declined(false)],
            },
        );
        assert_eq!(drain(&mut duties), []);
        // It fits now: stop declining.
        duties.handle_round(
            t(95),
            Round {
                pins: vec![not_member],
                orphans: vec![],
                declined: vec![declined(true)],
            },
        );
        assert_eq!(drain(&mut duties), [PinAction::StopDeclining(blob(1))]);
        // No longer pinned here (no record, or an unpin): stop declining.
        duties.handle_round(
            t(125),
            Round {
                pins: vec![],
                orphans: vec![],
                declined: vec![declined(false)],
            },
        );
        assert_eq!(drain(&mut duties), [PinAction::StopDeclining(blob(1))]);
        let mut unpinned = not_member;
        unpinned.pin.replicas = 0;
        duties.handle_round(
            t(155),
            Round {
                pins: vec![unpinned],
                orphans: vec![],
                declined: vec![declined(false)],
            },
        );
        assert_eq!(drain(&mut duties), [PinAction::StopDeclining(blob(1))]);
        // Another blob's live pin keeps nothing declined.
        duties.handle_round(
            t(185),
            Round {
                pins: vec![state(2, false, false, false)],
                orphans: vec![],
                declined: vec![declined(false)],
            },
        );
        assert_eq!(drain(&mut duties), [PinAction::StopDeclining(blob(1))]);
    }

    #[test]
    fn an_unpin_is_never_fetched_even_where_the_table_says_member() {
        let mut duties = machine(4);
        let mut unpinned = state(1, true, false, false);
        unpinned.pin.replicas = 0;
        duties.handle_round(t(35), round(vec![unpinned]));
        assert_eq!(drain(&mut duties), []);
    }

    #[test]
    fn an_orphaned_copy_is_checked_with_its_home() {
        let mut duties = machine(2);
        let local = Key::of_content(b"local");
        let (a, b, c) = (blob(1), blob(2), blob(3));
        let orphans = |ids: Vec<Key>| Round {
            orphans: ids,
            ..Round::default()
        };
        // Two reads a round at most.
        duties.handle_round(t(35), orphans(vec![a, b, c]));
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(a), PinAction::ReadPin(b)]);
        // No pin: released. A failed read: nothing.
        duties.handle_pin_record(t(36), a, Ok(None));
        duties.handle_pin_record(t(36), b, Err(()));
        assert_eq!(drain(&mut duties), [PinAction::Release(a)]);
        // A live pin: a lookup decides.
        duties.handle_round(t(65), orphans(vec![c]));
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(c)]);
        duties.handle_pin_record(t(66), c, Ok(Some(Pin { replicas: 1, size: 10 })));
        assert_eq!(drain(&mut duties), [PinAction::LookUp(c)]);
        duties.handle_lookup(t(67), c, Some(peers_around(&local, &c, true, 1)), &[]);
        assert_eq!(drain(&mut duties), [PinAction::Release(c)]);
        // An unpin releases.
        duties.handle_round(t(95), orphans(vec![b]));
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(b)]);
        duties.handle_pin_record(t(96), b, Ok(Some(Pin { replicas: 0, size: 10 })));
        assert_eq!(drain(&mut duties), [PinAction::Release(b)]);
    }

    #[test]
    fn a_copy_handed_over_by_a_leaving_peer_is_kept_while_that_peer_still_answers() {
        let mut duties = machine(4);
        let local = Key::of_content(b"local");
        let id = blob(1);
        let leaver = peers_around(&local, &id, true, 1)[0];
        let orphan = Round {
            orphans: vec![id],
            ..Round::default()
        };
        let one_copy = Ok(Some(Pin { replicas: 1, size: 10 }));
        // Without a hand-off: the nearer peer that answers keeps the home,
        // and this copy is released.
        duties.handle_round(t(35), orphan.clone());
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(id)]);
        duties.handle_pin_record(t(36), id, one_copy);
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        duties.handle_lookup(t(37), id, Some([leaver]), &[]);
        assert_eq!(drain(&mut duties), [PinAction::Release(id)]);
        // Handed over by that peer as it left: kept while it still answers.
        duties.handle_handoff(t(60), id, leaver);
        duties.handle_round(t(65), orphan.clone());
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(id)]);
        duties.handle_pin_record(t(66), id, one_copy);
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        duties.handle_lookup(t(67), id, Some([leaver]), &[]);
        assert_eq!(drain(&mut duties), []);
        // A second hand-off does not cut the first one's grace short.
        let other = blob(2);
        duties.handle_handoff(t(90), other, leaver);
        duties.handle_round(t(95), orphan.clone());
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(id)]);
        duties.handle_pin_record(t(96), id, one_copy);
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        duties.handle_lookup(t(97), id, Some([leaver]), &[]);
        assert_eq!(drain(&mut duties), [], "the first hand-off's grace still runs");
        // At the grace's end exactly, the leaving peer counts again.
        let end = t(60 + 600);
        duties.handle_round(end, orphan.clone());
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(id)]);
        duties.handle_pin_record(end, id, one_copy);
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        duties.handle_lookup(end, id, Some([leaver]), &[]);
        assert_eq!(drain(&mut duties), [PinAction::Release(id)]);
        // After the grace, a peer that answers is a member again.
        let after = t(60 + 601);
        duties.handle_round(after, orphan);
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(id)]);
        duties.handle_pin_record(after, id, one_copy);
        assert_eq!(drain(&mut duties), [PinAction::LookUp(id)]);
        duties.handle_lookup(after, id, Some([leaver]), &[]);
        assert_eq!(drain(&mut duties), [PinAction::Release(id)]);
    }

    #[test]
    fn a_question_never_answered_is_asked_again_after_ten_rounds() {
        let mut duties = machine(4);
        let orphan = Round {
            orphans: vec![blob(1)],
            ..Round::default()
        };
        duties.handle_round(t(35), orphan.clone());
        assert_eq!(drain(&mut duties), [PinAction::ReadPin(blob(1))]);
        let mut asked_again = None;
        for r in 1..=12u64 {
            duties.handle_round(t(35 + 30 * r), orphan.clone());
            if !drain(&mut duties).is_empty() {
                asked_again = Some(r);
                break;
            }
        }
        assert_eq!(asked_again, Some(10));
    }

    #[test]
    fn pins_round_trip_and_other_values_are_not_pins() {
        let pin = Pin {
            replicas: 3,
            size: 1 << 40,
        };
        assert_eq!(Pin::decode(&pin.encode()), Some(pin));
        assert_eq!(Pin::decode(b"hello"), None);
        assert_eq!(Pin::decode(&[MAGIC.as_slice(), &[0xff; 100]].concat()), None);
        assert_eq!(handoff_targets(&[1, 2, 3], |p| p == 2), vec![1, 3]);
    }

    #[test]
    fn a_pin_outlives_its_pinner_by_a_year() {
        assert_eq!(PIN_LIFETIME, std::time::Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn a_pin_value_is_at_most_64_bytes_after_its_magic() {
        let pin = Pin { replicas: 2, size: 7 };
        let padded = |len: usize| {
            let mut value = pin.encode();
            value.resize(MAGIC.len() + len, 0);
            value
        };
        assert_eq!(Pin::decode(&padded(64)), Some(pin));
        assert_eq!(Pin::decode(&padded(65)), None);
    }
}
