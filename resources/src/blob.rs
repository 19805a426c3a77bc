//! Blobs: files addressed by the BLAKE3 hash of their bytes, verified in
//! groups of 16 KiB while they stream (a bao tree with 16-chunk groups, whose
//! root is exactly the hash `b3sum` prints).

use std::ops::Range;

use bao_tree::{BlockSize, ChunkNum, ChunkRanges};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

/// Bytes per chunk group: the unit of verification and of transfer.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// The bao block size for [`GROUP_BYTES`].
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// BLAKE3 chunks per group.
const CHUNKS_PER_GROUP: u64 = GROUP_BYTES / 1024;

/// A blob's identity and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobInfo {
    /// BLAKE3 of the bytes.
    pub id: Key,
    /// Length in bytes.
    pub size: u64,
}

/// The content id of `bytes` (what `b3sum` prints).
pub fn id_of(bytes: &[u8]) -> Key {
    Key::of_content(bytes)
}

/// The key a bao root hash names.
pub fn key_of_hash(hash: &blake3::Hash) -> Key {
    Key::from_bytes(*hash.as_bytes())
}

/// The bao root hash of a key.
pub fn hash_of_key(key: &Key) -> blake3::Hash {
    blake3::Hash::from_bytes(key.to_bytes())
}

/// How many chunk groups a blob of `size` bytes has (an empty blob has none:
/// its id alone proves its content).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_BYTES)
}

/// Bytes of the groups `groups` in a blob of `size` bytes.
pub fn group_bytes(groups: &Range<u64>, size: u64) -> u64 {
    let start = groups.start.saturating_mul(GROUP_BYTES).min(size);
    let end = groups.end.saturating_mul(GROUP_BYTES).min(size);
    end - start
}

/// The groups whose bao encoding proves that a blob is `size` bytes long:
/// its last group, whose place in the tree and whose length depend on the
/// size (none for the empty blob, whose id alone says what it is).
pub fn last_group(size: u64) -> Range<u64> {
    let groups = group_count(size);
    groups.saturating_sub(1)..groups
}

/// The id of the empty blob.
pub fn empty_id() -> Key {
    id_of(&[])
}

/// The chunk ranges (bao's unit) of the groups `groups`.
pub fn chunk_ranges(groups: &Range<u64>) -> ChunkRanges {
    ChunkRanges::from(
        ChunkNum(groups.start.saturating_mul(CHUNKS_PER_GROUP))..ChunkNum(groups.end.saturating_mul(CHUNKS_PER_GROUP)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        assert_eq!(group_count(0), 0);
        assert_eq!(group_count(1), 1);
        assert_eq!(group_count(GROUP_BYTES), 1);
        assert_eq!(group_count(GROUP_BYTES + 1), 2);
        assert_eq!(group_bytes(&(0..2), GROUP_BYTES + 5), GROUP_BYTES + 5);
        assert_eq!(group_bytes(&(1..2), GROUP_BYTES + 5), 5);
        assert_eq!(BLOCK_SIZE.bytes() as u64, GROUP_BYTES);
        let hash = blake3::hash(b"abc");
        assert_eq!(hash_of_key(&key_of_hash(&hash)), hash);
        assert_eq!(id_of(b"abc"), key_of_hash(&hash));
        assert_eq!(last_group(0), 0..0);
        assert_eq!(last_group(1), 0..1);
        assert_eq!(last_group(GROUP_BYTES), 0..1);
        assert_eq!(last_group(GROUP_BYTES + 1), 1..2);
        assert_eq!(empty_id(), key_of_hash(&blake3::hash(b"")));
    }
}
