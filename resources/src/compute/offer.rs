//! Slot offers: what a peer offers for jobs. A value record has one
//! publisher per key, so the index has two parts: the peer announces itself
//! as a *provider* of each slot class it belongs to (one per kind of job,
//! and one per label value: [`SlotOffer::classes`]), and keeps its
//! [`SlotOffer`] as a small value record at its own offer key
//! ([`offer_key`]). A submitter reads the providers of one class, then
//! their offers (or probes them directly, which answers the offer too).
//! Load is not in the record (it would go stale): the placement asks the
//! candidates themselves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

/// The first bytes of an offer record's value.
const MAGIC: &[u8; 15] = b"shoal-offer-v1\n";

/// Largest offer body after its magic.
pub const MAX_OFFER_BYTES: usize = 2048;
/// Most labels an offer carries.
pub const MAX_LABELS: usize = 16;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// What kind of job a slot runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobKind {
    /// A WebAssembly module (WASI preview 1) in the sandbox.
    Wasm,
    /// A native command, for trusted submitters only.
    Native,
}

impl JobKind {
    fn name(self) -> &'static str {
        match self {
            JobKind::Wasm => "wasm",
            JobKind::Native => "native",
        }
    }
}

/// A peer's offer of slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotOffer {
    /// The kinds of job it runs.
    pub kinds: Vec<JobKind>,
    /// Slots in all.
    pub slots: u32,
    /// Memory per slot, bytes.
    pub slot_memory: u64,
    /// Its labels (`--label KEY=VALUE`).
    pub labels: BTreeMap<String, String>,
}

/// What a job needs of a slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The kind of job (none: any).
    pub kind: Option<JobKind>,
    /// Memory, bytes.
    pub memory: u64,
    /// Labels the slot must carry with these values (`--where K=V`).
    pub labels: BTreeMap<String, String>,
}

impl SlotOffer {
    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        crate::value::encode(MAGIC, self)
    }

    /// Reads a record value; `None` if it is not a well-formed offer within
    /// the bounds.
    pub fn decode(value: &[u8]) -> Option<SlotOffer> {
        let offer: SlotOffer = crate::value::decode(MAGIC, MAX_OFFER_BYTES, value)?;
        offer.is_valid().then_some(offer)
    }

    fn is_valid(&self) -> bool {
        !self.kinds.is_empty()
            && self.kinds.len() <= 2
            && self.labels.len() <= MAX_LABELS
            && self
                .labels
                .iter()
                .all(|(k, v)| !k.is_empty() && k.len() <= MAX_LABEL_BYTES && v.len() <= MAX_LABEL_BYTES)
    }

    /// Whether a slot of this offer can run a job that needs `needs`.
    pub fn fits(&self, needs: &Needs) -> bool {
        needs.kind.is_none_or(|k| self.kinds.contains(&k))
            && self.slot_memory >= needs.memory
            && needs.labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// The slot classes this offer is published at: one per kind, and one
    /// per label value.
    pub fn classes(&self) -> Vec<Key> {
        let mut out: Vec<Key> = self.kinds.iter().map(|k| kind_class(*k)).collect();
        out.extend(self.labels.iter().map(|(k, v)| label_class(k, v)));
        out
    }
}

/// Where a peer keeps its offer: a value record only it publishes.
pub fn offer_key(peer: &Key) -> Key {
    Key::of_name("slot-offer", &peer.to_bytes())
}

/// The slot class of every slot of a kind.
pub fn kind_class(kind: JobKind) -> Key {
    Key::of_name("slot-class", kind.name().as_bytes())
}

/// The slot class of every slot labelled `key=value`.
pub fn label_class(key: &str, value: &str) -> Key {
    // The key's length first, so that `a`=`b=c` and `a=b`=`c` differ.
    Key::of_name("slot-class", format!("{}:{key}={value}", key.len()).as_bytes())
}

/// Where a job that needs `needs` looks for candidates: the class of one of
/// its labels if it names any (fewer, closer matches), else its kind's.
pub fn class_for(needs: &Needs) -> Key {
    match needs.labels.iter().next() {
        Some((k, v)) => label_class(k, v),
        None => kind_class(needs.kind.unwrap_or(JobKind::Wasm)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> SlotOffer {
        SlotOffer {
            kinds: vec![JobKind::Wasm],
            slots: 4,
            slot_memory: 512 << 20,
            labels: [("gpu".to_string(), "yes".to_string())].into(),
        }
    }

    #[test]
    fn offers_round_trip_and_malformed_or_oversized_ones_are_refused() {
        let o = offer();
        assert_eq!(SlotOffer::decode(&o.encode()), Some(o.clone()));
        assert_eq!(SlotOffer::decode(b"hello"), None);
        let mut none = o.clone();
        none.kinds.clear();
        assert_eq!(SlotOffer::decode(&none.encode()), None, "an offer of no kind");
        let mut many = o.clone();
        many.labels = (0..=MAX_LABELS).map(|n| (format!("k{n}"), "v".into())).collect();
        assert_eq!(SlotOffer::decode(&many.encode()), None, "too many labels");
        let mut long = o.clone();
        long.labels = [("k".to_string(), "v".repeat(MAX_LABEL_BYTES + 1))].into();
        assert_eq!(SlotOffer::decode(&long.encode()), None, "a label too long");
        let mut padded = o.encode();
        padded.resize(MAGIC.len() + MAX_OFFER_BYTES + 1, 0);
        assert_eq!(SlotOffer::decode(&padded), None, "a body over the cap");
    }

    #[test]
    fn a_slot_fits_a_job_by_kind_memory_and_labels() {
        let o = offer();
        let mut needs = Needs {
            kind: Some(JobKind::Wasm),
            memory: 256 << 20,
            labels: BTreeMap::new(),
        };
        assert!(o.fits(&needs));
        needs.kind = Some(JobKind::Native);
        assert!(!o.fits(&needs), "no native slots");
        needs.kind = None;
        needs.memory = 1 << 30;
        assert!(!o.fits(&needs), "not enough memory");
        needs.memory = 512 << 20;
        needs.labels.insert("gpu".into(), "yes".into());
        assert!(o.fits(&needs));
        needs.labels.insert("arch".into(), "arm".into());
        assert!(!o.fits(&needs), "a label it lacks");
    }

    #[test]
    fn an_offer_is_found_at_its_kinds_and_labels_classes() {
        let o = offer();
        let classes = o.classes();
        assert_eq!(classes, vec![kind_class(JobKind::Wasm), label_class("gpu", "yes")]);
        let plain = Needs::default();
        assert_eq!(class_for(&plain), kind_class(JobKind::Wasm));
        let labelled = Needs {
            labels: [("gpu".to_string(), "yes".to_string())].into(),
            ..Needs::default()
        };
        assert!(classes.contains(&class_for(&labelled)));
        assert_ne!(kind_class(JobKind::Wasm), kind_class(JobKind::Native));
        assert_ne!(
            label_class("a", "b=c"),
            label_class("a=b", "c"),
            "no two labels share a class"
        );
    }
}
