//! Pins: "the home of this blob keeps R copies". A pin is a small signed
//! value record stored at the blob's own key, so it lives exactly at the
//! blob's home and the overlay's replication and hand-off carry it to
//! whoever joins that home — which is how a crashed or departed member is
//! replaced (repair): the newcomer finds the pin among the records it now
//! holds and fetches the blob from the remaining copies.
//!
//! [`duties`] is the sans-IO half: given the pins this peer holds, whether
//! it is among each blob's `R` closest peers, and what it stores, it says
//! what to fetch and what to stop keeping.

use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

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
        let mut out = MAGIC.to_vec();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Reads a record value; `None` if it is not a pin.
    pub fn decode(value: &[u8]) -> Option<Pin> {
        let body = value.strip_prefix(MAGIC.as_slice())?;
        if body.len() > 64 {
            return None;
        }
        ciborium::from_reader(body).ok()
    }
}

/// Whether `local` is among the `replicas` peers closest to blob `id`, given
/// the peers it knows nearest to `id` (at least `replicas` of them if it
/// knows that many; any order, `local` itself not among them). Peers that
/// `declined` the blob (no room: see the overlay's `decline`) are left out,
/// `local` included.
pub fn is_member(local: &Key, id: &Key, replicas: u8, known: impl IntoIterator<Item = Key>, declined: &[Key]) -> bool {
    let mine = local.distance(id);
    let closer = known
        .into_iter()
        .filter(|k| k.distance(id) < mine && !declined.contains(k))
        .count();
    replicas > 0 && closer < usize::from(replicas) && !declined.contains(local)
}

/// Whether "not a member", by the routing table, must be confirmed by a
/// lookup before it is acted on: only when this peer keeps a copy for the
/// home (`marked`), which it would otherwise release on the word of a table
/// that may list a crashed peer for a minute or two. A peer without a copy
/// trusts its table; the overlay probes its nearest neighbours every round,
/// so a dead one soon drops out and the table makes it a member.
pub fn confirm_by_lookup(member_by_table: bool, pin: &Pin, marked: bool) -> bool {
    !member_by_table && pin.replicas > 0 && marked
}

/// Where a peer that leaves gracefully hands its copy of blob `id` first:
/// every member of the home it leaves behind (`home`: the `replicas` peers
/// nearest `id` other than itself) that does not hold it yet.
pub fn handoff_targets<P: Copy>(home: &[P], holds: impl Fn(P) -> bool) -> Vec<P> {
    home.iter().copied().filter(|p| !holds(*p)).collect()
}

/// One pin as this peer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duty {
    /// The blob.
    pub id: Key,
    /// The pin.
    pub pin: Pin,
    /// Whether this peer is among the blob's `pin.replicas` closest peers.
    pub member: bool,
    /// Whether this peer stores the whole blob.
    pub held: bool,
    /// Whether a fetch of it is already running.
    pub fetching: bool,
    /// Whether this peer marks it pinned (exempt from garbage collection).
    pub marked: bool,
}

/// What to do about one pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fetch the blob and keep it (mark it pinned).
    Fetch(Key),
    /// Already held: mark it pinned.
    Keep(Key),
    /// No longer a member, or unpinned: stop exempting it from garbage
    /// collection (the bytes stay until the quota needs the room).
    Release(Key),
}

/// The actions for `duties`, in key order.
pub fn duties(duties: &[Duty]) -> Vec<Action> {
    let mut out = Vec::new();
    for d in duties {
        let wanted = d.member && d.pin.replicas > 0;
        match (wanted, d.held, d.marked) {
            (true, false, _) if !d.fetching => out.push(Action::Fetch(d.id)),
            (true, true, false) => out.push(Action::Keep(d.id)),
            (false, _, true) => out.push(Action::Release(d.id)),
            _ => {}
        }
    }
    out.sort_by_key(|a| match a {
        Action::Fetch(k) | Action::Keep(k) | Action::Release(k) => *k,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duty(n: u8, member: bool, held: bool, marked: bool) -> Duty {
        Duty {
            id: Key::of_content(&[n]),
            pin: Pin { replicas: 3, size: 10 },
            member,
            held,
            fetching: false,
            marked,
        }
    }

    #[test]
    fn membership_counts_the_known_peers_nearer_the_blob() {
        let id = Key::of_content(b"blob");
        let mut peers: Vec<Key> = (0..10u8).map(|n| Key::of_content(&[n, 1])).collect();
        peers.sort_by_key(|k| k.distance(&id));
        // The 3rd nearest is a member of a 3-replica home, the 4th is not.
        let others = |me: usize| -> Vec<Key> { peers.iter().copied().filter(|k| *k != peers[me]).collect() };
        assert!(is_member(&peers[2], &id, 3, others(2), &[]));
        assert!(!is_member(&peers[3], &id, 3, others(3), &[]));
        assert!(is_member(&peers[3], &id, 4, others(3), &[]));
        // A nearer peer that declined the blob makes room for the 4th; the
        // one that declined is no member.
        assert!(is_member(&peers[3], &id, 3, others(3), &[peers[0]]));
        assert!(!is_member(&peers[0], &id, 3, others(0), &[peers[0]]));
        // An unpin (0 replicas) makes nobody a member.
        assert!(!is_member(&peers[0], &id, 0, [], &[]));
        assert_eq!(handoff_targets(&[1, 2, 3], |p| p == 2), vec![1, 3]);
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
    }

    #[test]
    fn members_fetch_or_keep_and_others_release() {
        let ds = [
            duty(1, true, false, false),
            duty(2, true, true, false),
            duty(3, false, true, true),
            duty(4, true, true, true),
            duty(5, false, true, false),
        ];
        let actions = duties(&ds);
        assert!(actions.contains(&Action::Fetch(ds[0].id)));
        assert!(actions.contains(&Action::Keep(ds[1].id)));
        assert!(actions.contains(&Action::Release(ds[2].id)));
        assert_eq!(actions.len(), 3);
        // A running fetch is not started twice; an unpin releases.
        let mut running = ds[0];
        running.fetching = true;
        assert!(duties(&[running]).is_empty());
        let mut unpinned = ds[3];
        unpinned.pin.replicas = 0;
        assert_eq!(duties(&[unpinned]), vec![Action::Release(unpinned.id)]);
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

    #[test]
    fn the_local_peer_listed_among_the_known_does_not_count_against_itself() {
        let id = Key::of_content(b"blob");
        let mut peers: Vec<Key> = (0..4u8).map(|n| Key::of_content(&[n, 2])).collect();
        peers.sort_by_key(|k| k.distance(&id));
        // The 3rd nearest, given a list that includes itself, is still one
        // of 3.
        assert!(is_member(&peers[2], &id, 3, peers.clone(), &[]));
    }

    #[test]
    fn only_a_kept_copy_of_a_live_pin_waits_for_a_lookup_before_release() {
        let pin = Pin { replicas: 3, size: 10 };
        let unpin = Pin { replicas: 0, size: 10 };
        // (member by the table, pin, marked) -> confirm by lookup
        let cases = [
            (false, pin, true, true),
            (false, pin, false, false),
            (true, pin, true, false),
            (true, pin, false, false),
            (false, unpin, true, false),
        ];
        for (member, pin, marked, confirm) in cases {
            assert_eq!(
                confirm_by_lookup(member, &pin, marked),
                confirm,
                "member {member}, replicas {}, marked {marked}",
                pin.replicas
            );
        }
    }
}
