//! The trace hash: a BLAKE3 hash over every event a run processes.
//!
//! The events are hashed as one byte stream, but a subtree of
//! [`SUBTREE_BYTES`] at a time, keeping the chaining values of the whole
//! subtrees (BLAKE3's own hasher keeps the same stack, out of reach). That
//! state is a few hundred bytes and serializes, so a run saved to a
//! checkpoint and resumed gives the hash the uninterrupted run gives.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use serde::{Deserialize, Serialize};

/// Bytes of each subtree hashed at once: 64 BLAKE3 chunks, a power of two.
const SUBTREE_BYTES: usize = 64 * 1024;

/// Accumulates event records and hashes them a subtree at a time.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Trace {
    /// Chaining values of the whole subtrees hashed so far, merged as far
    /// as they can be: one per set bit of `subtrees`, largest first.
    stack: Vec<ChainingValue>,
    /// Whole subtrees hashed.
    subtrees: u64,
    /// Bytes after the last whole subtree. A subtree is hashed only once a
    /// byte beyond it arrives, so that the last one can still be the root.
    #[serde(with = "serde_bytes")]
    pending: Vec<u8>,
}

impl Trace {
    pub(crate) fn new() -> Self {
        Trace {
            stack: Vec::new(),
            subtrees: 0,
            pending: Vec::with_capacity(SUBTREE_BYTES + 64),
        }
    }

    /// Adds one event: when, what kind, which peer, and a detail.
    pub(crate) fn record(&mut self, time_us: u64, kind: u8, peer: u32, detail: u64) {
        self.pending.extend_from_slice(&time_us.to_le_bytes());
        self.pending.push(kind);
        self.pending.extend_from_slice(&peer.to_le_bytes());
        self.pending.extend_from_slice(&detail.to_le_bytes());
        if self.pending.len() > SUBTREE_BYTES {
            self.push_subtree();
        }
    }

    fn push_subtree(&mut self) {
        let offset = self.subtrees * SUBTREE_BYTES as u64;
        let cv = blake3::Hasher::new()
            .set_input_offset(offset)
            .update(&self.pending[..SUBTREE_BYTES])
            .finalize_non_root();
        self.pending.drain(..SUBTREE_BYTES);
        self.stack.push(cv);
        self.subtrees += 1;
        // Input follows (the bytes left in `pending`), so none of these
        // merges is the root.
        while self.stack.len() > self.subtrees.count_ones() as usize {
            let right = self.stack.pop().expect("two entries");
            let left = self.stack.pop().expect("two entries");
            self.stack.push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
    }

    /// Checks the shape a trace read back from a file must have.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.stack.len() != self.subtrees.count_ones() as usize {
            return Err(format!(
                "trace: {} chaining values for {} subtrees",
                self.stack.len(),
                self.subtrees
            ));
        }
        if self.pending.len() > SUBTREE_BYTES || (self.subtrees > 0 && self.pending.is_empty()) {
            return Err(format!("trace: {} bytes pending", self.pending.len()));
        }
        Ok(())
    }

    /// The hash so far, as 32 hex digits (the first 128 bits).
    pub(crate) fn hash(&self) -> String {
        let hash = if self.stack.is_empty() {
            blake3::hash(&self.pending)
        } else {
            // `pending` is not empty: a subtree is pushed only with a byte after it.
            let offset = self.subtrees * SUBTREE_BYTES as u64;
            let mut right = blake3::Hasher::new()
                .set_input_offset(offset)
                .update(&self.pending)
                .finalize_non_root();
            let (first, rest) = self.stack.split_first().expect("not empty");
            for left in rest.iter().rev() {
                right = merge_subtrees_non_root(left, &right, Mode::Hash);
            }
            merge_subtrees_root(first, &right, Mode::Hash)
        };
        hash.to_hex()[..32].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(trace: &mut Trace, bytes: &mut Vec<u8>, range: std::ops::Range<u64>) {
        for i in range {
            let (time, kind, peer, detail) = (i * 7919, (i % 9) as u8, (i * 31) as u32, i ^ 0xdead_beef);
            trace.record(time, kind, peer, detail);
            bytes.extend_from_slice(&time.to_le_bytes());
            bytes.push(kind);
            bytes.extend_from_slice(&peer.to_le_bytes());
            bytes.extend_from_slice(&detail.to_le_bytes());
        }
    }

    #[test]
    fn the_hash_is_blake3_of_the_whole_stream() {
        // Record counts (21 bytes each) on both sides of one to nine
        // subtrees, so that every shape of the stack is met, and 65,536
        // records: a stream that ends exactly at a subtree's end (the 21st).
        let mut counts = vec![0, 1, 48, 49, 50, 65_535, 65_536, 65_537];
        for subtrees in [1, 2, 3, 4, 5, 7, 8, 9] {
            let n = subtrees * SUBTREE_BYTES as u64 / 21;
            counts.extend([n - 1, n, n + 1, n + 2]);
        }
        for count in counts {
            let (mut trace, mut bytes) = (Trace::new(), Vec::new());
            records(&mut trace, &mut bytes, 0..count);
            assert_eq!(
                trace.hash(),
                blake3::hash(&bytes).to_hex()[..32],
                "{count} records ({} bytes)",
                bytes.len()
            );
        }
    }

    #[test]
    fn a_trace_saved_and_restored_hashes_as_if_never_interrupted() {
        let (mut whole, mut bytes) = (Trace::new(), Vec::new());
        records(&mut whole, &mut bytes, 0..20_000);
        let (mut first, mut unused) = (Trace::new(), Vec::new());
        records(&mut first, &mut unused, 0..9_000);
        let mut saved = Vec::new();
        ciborium::into_writer(&first, &mut saved).unwrap();
        let mut resumed: Trace = ciborium::from_reader(saved.as_slice()).unwrap();
        records(&mut resumed, &mut unused, 9_000..20_000);
        assert_eq!(resumed.hash(), whole.hash());
        assert_eq!(whole.hash(), blake3::hash(&bytes).to_hex()[..32]);
    }
}
