//! Verifying a bao response that is already in memory, without copying it.
//!
//! A provider answers a run of groups with their bao encoding: parent hash
//! pairs and 16 KiB leaves, in pre-order. [`RangeVerifier`] walks that encoding
//! as a slice and hands out each verified pair and leaf as a borrow of it,
//! so the receiver can write them to disk straight from the buffer the
//! network filled (bao-tree's reader-based decoder copies every leaf into
//! a buffer of its own first: a second copy of every byte received).
//!
//! [`proves_size`] uses it to check a blob's size before anything is
//! written, made room for or announced: the shape of a BLAKE3 tree, and so
//! the path from the root to the last group and that group's length, depend
//! on the size, so only the true size has a last group that verifies.

use bao_tree::io::sync::truncate_ranges;
use bao_tree::iter::{BaoChunk, ResponseIterRef};
use bao_tree::{BaoTree, ChunkRangesRef, TreeNode};
use blake3::Hash;
use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use shoal_overlay::Key;

use crate::blob::{BLOCK_SIZE, chunk_ranges, empty_id, hash_of_key, last_group};

/// Whether `encoded`, a provider's bao encoding of the
/// [`last_group`](crate::blob::last_group) of blob `id` taken to be `size`
/// bytes long, proves that size: it verifies against the id, whole and with
/// nothing left over. A size of 0 needs no encoding: it is the empty blob's
/// id or it is false.
pub fn proves_size(id: &Key, size: u64, encoded: &[u8]) -> bool {
    if size == 0 {
        return *id == empty_id() && encoded.is_empty();
    }
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let ranges = chunk_ranges(&last_group(size));
    let mut verifier = RangeVerifier::new(hash_of_key(id), tree, &ranges, encoded);
    let mut leaves = 0;
    for item in verifier.by_ref() {
        match item {
            Ok(Item::Leaf { .. }) => leaves += 1,
            Ok(Item::Parent { .. }) => {}
            Err(_) => return false,
        }
    }
    leaves > 0 && verifier.rest.is_empty()
}

/// The hash of a subtree of leaves starting at chunk `start_chunk` (1 KiB
/// chunks), as its parent sees it — or the blob's hash, for the root.
fn subtree_cv(start_chunk: u64, data: &[u8], is_root: bool) -> Hash {
    if is_root {
        return blake3::hash(data);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(start_chunk * 1024);
    hasher.update(data);
    Hash::from(hasher.finalize_non_root())
}

/// The hash of a parent node from its children's.
fn parent_cv(left: &Hash, right: &Hash, is_root: bool) -> Hash {
    let (left, right): (&ChainingValue, &ChainingValue) = (left.as_bytes(), right.as_bytes());
    if is_root {
        merge_subtrees_root(left, right, Mode::Hash)
    } else {
        Hash::from(merge_subtrees_non_root(left, right, Mode::Hash))
    }
}

/// One verified item of a response, borrowed from the encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// The 64 bytes of a parent's two child hashes.
    Parent { node: TreeNode, pair: &'a [u8] },
    /// A leaf's bytes, at byte `offset` of the blob.
    Leaf { offset: u64, data: &'a [u8] },
}

/// Why a response stopped verifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// The bytes ran out before the response did.
    Short,
    /// A hash did not match.
    Mismatch,
}

/// Verifies the bao encoding of `ranges` of the blob with root hash `root`
/// item by item; stops at the first item that fails.
#[derive(Debug)]
pub(crate) struct RangeVerifier<'a> {
    chunks: ResponseIterRef<'a>,
    /// The hashes still expected, the next one on top.
    stack: Vec<Hash>,
    rest: &'a [u8],
    failed: bool,
}

impl<'a> RangeVerifier<'a> {
    pub(crate) fn new(root: Hash, tree: BaoTree, ranges: &'a ChunkRangesRef, encoded: &'a [u8]) -> Self {
        let ranges = truncate_ranges(ranges, tree.size());
        Self {
            chunks: ResponseIterRef::new(tree, ranges),
            stack: vec![root],
            rest: encoded,
            failed: false,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Broken> {
        if self.rest.len() < n {
            return Err(Broken::Short);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn verify(&mut self, chunk: BaoChunk) -> Result<Item<'a>, Broken> {
        match chunk {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let pair = self.take(64)?;
                let (l, r) = pair.split_at(32);
                let l = Hash::from_bytes(l.try_into().map_err(|_| Broken::Short)?);
                let r = Hash::from_bytes(r.try_into().map_err(|_| Broken::Short)?);
                let expected = self.stack.pop().ok_or(Broken::Mismatch)?;
                if parent_cv(&l, &r, is_root) != expected {
                    return Err(Broken::Mismatch);
                }
                if right {
                    self.stack.push(r);
                }
                if left {
                    self.stack.push(l);
                }
                Ok(Item::Parent { node, pair })
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                let data = self.take(size)?;
                let expected = self.stack.pop().ok_or(Broken::Mismatch)?;
                if subtree_cv(start_chunk.0, data, is_root) != expected {
                    return Err(Broken::Mismatch);
                }
                Ok(Item::Leaf {
                    offset: start_chunk.to_bytes(),
                    data,
                })
            }
        }
    }
}

impl<'a> Iterator for RangeVerifier<'a> {
    type Item = Result<Item<'a>, Broken>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let chunk = self.chunks.next()?;
        let item = self.verify(chunk);
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use bao_tree::io::outboard::PreOrderMemOutboard;
    use bao_tree::io::sync::{DecodeResponseIter, encode_ranges_validated};
    use bao_tree::io::{BaoContentItem, DecodeError};
    use proptest::prelude::*;

    use super::*;
    use crate::blob::{BLOCK_SIZE, chunk_ranges};

    /// What a decoder made of a response: its items, then how it stopped.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Parent(TreeNode, Vec<u8>),
        Leaf(u64, Vec<u8>),
        Broken(Broken),
    }

    fn ours(root: Hash, tree: BaoTree, ranges: &ChunkRangesRef, wire: &[u8]) -> Vec<Seen> {
        RangeVerifier::new(root, tree, ranges, wire)
            .map(|item| match item {
                Ok(Item::Parent { node, pair }) => Seen::Parent(node, pair.to_vec()),
                Ok(Item::Leaf { offset, data }) => Seen::Leaf(offset, data.to_vec()),
                Err(broken) => Seen::Broken(broken),
            })
            .collect()
    }

    /// bao-tree's own decoder, reading the same bytes.
    fn reference(root: Hash, tree: BaoTree, ranges: &ChunkRangesRef, wire: &[u8]) -> Vec<Seen> {
        let mut seen = Vec::new();
        for item in DecodeResponseIter::new(root, tree, wire, ranges) {
            seen.push(match item {
                Ok(BaoContentItem::Parent(p)) => {
                    let mut pair = p.pair.0.as_bytes().to_vec();
                    pair.extend_from_slice(p.pair.1.as_bytes());
                    Seen::Parent(p.node, pair)
                }
                Ok(BaoContentItem::Leaf(l)) => Seen::Leaf(l.offset, l.data.to_vec()),
                Err(DecodeError::ParentNotFound(_) | DecodeError::LeafNotFound(_)) => Seen::Broken(Broken::Short),
                Err(DecodeError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Seen::Broken(Broken::Short),
                Err(_) => Seen::Broken(Broken::Mismatch),
            });
            if matches!(seen.last(), Some(Seen::Broken(_))) {
                break;
            }
        }
        seen
    }

    proptest! {
        /// Whole, cut short or with one byte flipped, any response of any
        /// range of any size verifies item for item as bao-tree's decoder
        /// has it, and stops where that one stops.
        #[test]
        fn agrees_with_bao_tree(
            size in prop_oneof![0usize..40_000, 40_000usize..300_000],
            start in 0u64..24,
            len in 1u64..24,
            flip in proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let tree = BaoTree::new(size as u64, BLOCK_SIZE);
            let outboard = PreOrderMemOutboard::create(&data, BLOCK_SIZE);
            let ranges = chunk_ranges(&(start..start + len));
            let mut wire = Vec::new();
            encode_ranges_validated(data.as_slice(), &outboard, &ranges, &mut wire).unwrap();
            if let Some((at, x)) = flip
                && !wire.is_empty()
            {
                let at = at.index(wire.len());
                wire[at] ^= x;
            }
            if let Some(at) = cut {
                let at = at.index(wire.len() + 1);
                wire.truncate(at);
            }
            let root = outboard.root;
            let got = ours(root, tree, &ranges, &wire);
            prop_assert_eq!(&got, &reference(root, tree, &ranges, &wire));
            if flip.is_none() && cut.is_none() {
                prop_assert!(!got.iter().any(|s| matches!(s, Seen::Broken(_))));
            }
        }
    }

    /// What an honest provider of `data` sends when asked for the last group
    /// of a blob of `claimed` bytes (bao encodes ranges past the end as the
    /// last chunk).
    fn honest_answer(data: &[u8], claimed: u64) -> Vec<u8> {
        let outboard = PreOrderMemOutboard::create(data, BLOCK_SIZE);
        let mut wire = Vec::new();
        encode_ranges_validated(data, &outboard, &chunk_ranges(&last_group(claimed)), &mut wire).unwrap();
        wire
    }

    fn sample(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_last_group_proves_the_true_size_and_no_other() {
        let group = crate::blob::GROUP_BYTES;
        for size in [1, 1000, group, group + 1, 100_000, (1 << 20) + 3] {
            let data = sample(size as usize);
            let id = crate::blob::id_of(&data);
            let proof = honest_answer(&data, size);
            assert!(proves_size(&id, size, &proof), "size {size}");
            for claimed in [
                0,
                size - 1,
                size + 1,
                size + group,
                size.saturating_sub(group),
                size * 2,
                1 << 40,
            ] {
                if claimed == size {
                    continue;
                }
                assert!(!proves_size(&id, claimed, &proof), "{size} taken for {claimed}");
                let asked = honest_answer(&data, claimed);
                assert!(!proves_size(&id, claimed, &asked), "{size} taken for {claimed} (asked)");
            }
            // Damaged, cut or padded proofs prove nothing.
            let mut flipped = proof.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert!(!proves_size(&id, size, &flipped));
            assert!(!proves_size(&id, size, &proof[..proof.len() - 1]));
            let mut padded = proof.clone();
            padded.push(0);
            assert!(!proves_size(&id, size, &padded));
        }
    }

    #[test]
    fn size_zero_is_the_empty_blob_only() {
        assert!(proves_size(&empty_id(), 0, &[]));
        assert!(!proves_size(&empty_id(), 0, &[0]));
        assert!(!proves_size(&crate::blob::id_of(b"x"), 0, &[]));
        // The empty blob is no other size.
        assert!(!proves_size(&empty_id(), 1, &honest_answer(&[], 1)));
    }

    proptest! {
        /// Whatever size is claimed for whatever blob, an honest provider's
        /// answer proves the claim only when it is the true size.
        #[test]
        fn only_the_true_size_is_proved(size in 0u64..300_000, claimed in 0u64..300_000) {
            let data = sample(size as usize);
            let id = crate::blob::id_of(&data);
            let asked = honest_answer(&data, claimed);
            prop_assert_eq!(proves_size(&id, claimed, &asked), claimed == size);
        }
    }
}
