//! The trace hash: a BLAKE3 hash over every event a run processes.

/// Accumulates event records and hashes them in batches.
#[derive(Debug)]
pub(crate) struct Trace {
    hasher: blake3::Hasher,
    buffer: Vec<u8>,
}

const BATCH_BYTES: usize = 64 * 1024;

impl Trace {
    pub(crate) fn new() -> Self {
        Trace {
            hasher: blake3::Hasher::new(),
            buffer: Vec::with_capacity(BATCH_BYTES),
        }
    }

    /// Adds one event: when, what kind, which peer, and a detail.
    pub(crate) fn record(&mut self, time_us: u64, kind: u8, peer: u32, detail: u64) {
        self.buffer.extend_from_slice(&time_us.to_le_bytes());
        self.buffer.push(kind);
        self.buffer.extend_from_slice(&peer.to_le_bytes());
        self.buffer.extend_from_slice(&detail.to_le_bytes());
        if self.buffer.len() >= BATCH_BYTES {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
    }

    /// The hash so far, as 32 hex digits (the first 128 bits).
    pub(crate) fn hash(&mut self) -> String {
        self.hasher.update(&self.buffer);
        self.buffer.clear();
        let hash = self.hasher.finalize();
        hash.to_hex()[..32].to_string()
    }
}
