//! Downloads in progress: a sparse file, the outboard filled from the
//! parent hashes that arrive, and the bitmap of verified groups that lets a
//! download resume; verified ranges are written in vectored runs.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bao_tree::BaoTree;
use shoal_overlay::Key;

use crate::blob::{BLOCK_SIZE, BlobInfo, GROUP_BYTES, chunk_ranges, group_count, hash_of_key};
use crate::verify::{Broken, Item, RangeVerifier};

use super::{BlobStore, Meta, PARTIAL_FILES, ReceiveError, StoreError, source_of};

/// Bytes an unprivileged writer may still put on the file system of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

impl BlobStore {
    /// Downloads in progress or interrupted, with when each last received
    /// anything (its bitmap is saved as groups arrive).
    pub fn partials(&self) -> Result<Vec<(std::time::SystemTime, Key)>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".part"))
                .and_then(|h| h.parse::<Key>().ok())
            else {
                continue;
            };
            let last = PARTIAL_FILES
                .iter()
                .filter_map(|ext| std::fs::metadata(self.path(&id, ext)).and_then(|m| m.modified()).ok())
                .max()
                .unwrap_or(std::time::UNIX_EPOCH);
            out.push((last, id));
        }
        out.sort_by_key(|p| p.1);
        Ok(out)
    }

    /// Where a download of `id` in progress keeps its bytes.
    pub fn part_path(&self, id: &Key) -> PathBuf {
        self.path(id, "part")
    }

    /// Starts or resumes a download of `info` into the store.
    pub fn partial(&self, info: BlobInfo) -> Result<Partial, StoreError> {
        let data_path = self.path(&info.id, "part");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)?;
        let allocated = data.metadata()?.len();
        // A bitmap kept beside a file of another length belongs to another
        // size (sizes are proved before a download starts now; a download
        // begun on a claimed size may have left one): it starts over.
        let fresh = allocated != info.size;
        if allocated != info.size {
            // The size comes from a ticket or a peer: a download that cannot
            // fit stops here, before any file or bitmap takes its size.
            let tree = BaoTree::new(info.size, BLOCK_SIZE);
            let need = info.size.saturating_add(tree.outboard_size()).saturating_sub(allocated);
            let free = free_bytes(&self.dir)?;
            if need > free {
                drop(data);
                let _ = std::fs::remove_file(&data_path);
                return Err(StoreError::DiskFull {
                    id: info.id,
                    need,
                    free,
                });
            }
            data.set_len(info.size)?;
        }
        let outboard = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path(&info.id, "opart"))?;
        let tree = BaoTree::new(info.size, BLOCK_SIZE);
        if outboard.metadata()?.len() != tree.outboard_size() {
            outboard.set_len(tree.outboard_size())?;
        }
        let have_path = self.path(&info.id, "have");
        let words = group_count(info.size).div_ceil(64) as usize;
        if fresh {
            let _ = std::fs::remove_file(&have_path);
        }
        let have = std::fs::read(&have_path).ok().and_then(|bytes| {
            (bytes.len() == words * 8).then(|| {
                bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect()
            })
        });
        Ok(Partial {
            store: self.clone(),
            info,
            tree,
            data,
            outboard,
            have,
            writing: std::sync::Mutex::new(()),
        })
    }
}

/// Most bytes [`Partial::receive`] gathers before it writes them.
pub const WRITE_RUN_BYTES: usize = 4 << 20;

/// Most pieces in one vectored write (Linux's `UIO_MAXIOV`).
const MAX_PIECES: usize = 1024;

/// Verified bytes waiting to be written at one place in a file: borrowed
/// pieces of the response, back to back in the file, written with one
/// vectored write.
#[derive(Debug, Default)]
struct Run<'a> {
    offset: u64,
    len: usize,
    pieces: Vec<IoSlice<'a>>,
}

impl<'a> Run<'a> {
    /// Whether `len` bytes at `offset` can join the run: they follow it
    /// (or it is empty) and it stays within [`WRITE_RUN_BYTES`].
    fn extends(&self, offset: u64, len: usize) -> bool {
        self.pieces.is_empty()
            || (self.offset + self.len as u64 == offset
                && self.len + len <= WRITE_RUN_BYTES
                && self.pieces.len() < MAX_PIECES)
    }

    fn push(&mut self, offset: u64, bytes: &'a [u8]) {
        if self.pieces.is_empty() {
            self.offset = offset;
        }
        // (An empty piece, the one leaf of an empty blob, has nothing to write.)
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.pieces.push(IoSlice::new(bytes));
        }
    }

    fn write(&mut self, file: &File) -> io::Result<()> {
        write_all_at(&mut self.pieces, self.offset, |pieces, at| {
            rustix::io::pwritev(file, pieces, at)
        })?;
        self.pieces.clear();
        self.len = 0;
        Ok(())
    }
}

/// Writes all of `pieces` (none empty) at `offset` with `pwritev`, however
/// short its writes and however often a signal interrupts it.
fn write_all_at(
    pieces: &mut [IoSlice<'_>],
    mut offset: u64,
    mut pwritev: impl FnMut(&[IoSlice<'_>], u64) -> rustix::io::Result<usize>,
) -> io::Result<()> {
    let mut pieces = pieces;
    while !pieces.is_empty() {
        let n = match pwritev(pieces, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        IoSlice::advance_slices(&mut pieces, n);
    }
    Ok(())
}

/// What [`Partial::receive`] has verified and not yet written.
#[derive(Debug, Default)]
struct Unwritten<'a> {
    data: Run<'a>,
    outboard: Run<'a>,
    /// The groups in `data`, reported once written.
    groups: Vec<u64>,
}

impl Unwritten<'_> {
    /// Writes the parent hashes, then the data, then reports the groups:
    /// a group reported (and so saved as had) is on disk with every hash
    /// that a later run, or serving it, needs.
    fn write(&mut self, partial: &Partial, on_group: &mut impl FnMut(u64)) -> io::Result<()> {
        {
            // A poisoned lock guards nothing: the files are still whole.
            let _writing = partial.writing.lock().unwrap_or_else(|e| e.into_inner());
            self.outboard.write(&partial.outboard)?;
            self.data.write(&partial.data)?;
        }
        for group in self.groups.drain(..) {
            on_group(group);
        }
        Ok(())
    }
}

/// A download in progress: a sparse file and the bitmap of verified groups.
#[derive(Debug)]
pub struct Partial {
    store: BlobStore,
    info: BlobInfo,
    tree: BaoTree,
    data: File,
    /// The outboard, filled with the parent hashes that arrive (verified)
    /// with the data: once every group has arrived it is complete, so the
    /// finished blob needs no second hashing pass.
    outboard: File,
    have: Option<Vec<u64>>,
    /// Taken around each write run. Runs from several providers' streams
    /// land in the same files; the kernel serialises them anyway (on the
    /// inode's lock) but spins while it waits, taking a core from the
    /// decryption and verification the other streams need. Waiting here
    /// sleeps instead.
    writing: std::sync::Mutex<()>,
}

impl Partial {
    /// The blob being fetched.
    pub fn info(&self) -> BlobInfo {
        self.info
    }

    /// The bitmap saved by an earlier run, if any.
    pub fn saved_have(&self) -> Option<Vec<u64>> {
        self.have.clone()
    }

    /// Verifies the bao encoding of `groups` in `encoded`; verified groups
    /// are written to disk and then reported to `on_group`. Stops at the
    /// first group that does not verify (what verified before it is still
    /// written and reported); bytes too few for the groups are
    /// [`io::ErrorKind::UnexpectedEof`].
    ///
    /// Consecutive groups and parent hashes are written in runs of up to
    /// [`WRITE_RUN_BYTES`], straight from `encoded`: one positioned write
    /// per 16 KiB group and per 64-byte parent pair was 130,000 system
    /// calls per GiB, and with two streams writing one file the kernel's
    /// inode lock spun on every one of them.
    pub fn receive(
        &self,
        groups: &Range<u64>,
        encoded: &[u8],
        mut on_group: impl FnMut(u64),
    ) -> Result<(), ReceiveError> {
        if groups.is_empty() {
            return Ok(());
        }
        let ranges = chunk_ranges(groups);
        let root = hash_of_key(&self.info.id);
        let mut pending = Unwritten::default();
        for item in RangeVerifier::new(root, self.tree, &ranges, encoded) {
            match item {
                Ok(Item::Parent { node, pair }) => {
                    if let Some(offset) = self.tree.pre_order_offset(node) {
                        if !pending.outboard.extends(offset * 64, pair.len()) {
                            pending.write(self, &mut on_group)?;
                        }
                        pending.outboard.push(offset * 64, pair);
                    }
                }
                Ok(Item::Leaf { offset, data }) => {
                    if !pending.data.extends(offset, data.len()) {
                        pending.write(self, &mut on_group)?;
                    }
                    pending.data.push(offset, data);
                    pending.groups.push(offset / GROUP_BYTES);
                }
                Err(broken) => {
                    // What verified before the bad part is kept.
                    pending.write(self, &mut on_group)?;
                    return Err(broken.into());
                }
            }
        }
        Ok(pending.write(self, &mut on_group)?)
    }

    /// Saves the bitmap of verified groups (atomically).
    pub fn save_have(&self, have: &[u64]) -> io::Result<()> {
        let path = self.store.path(&self.info.id, "have");
        let tmp = self.store.path(&self.info.id, "have.tmp");
        let bytes: Vec<u8> = have.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }

    /// Every group arrived (the caller's plan says so): moves the file and
    /// its outboard, both filled from verified data, into the store. With
    /// `out`, the file is moved there instead (no copy) and the store serves
    /// it in place from there; if `out` is on another file system it is
    /// copied there and the store keeps its own copy.
    pub fn finish(&self, out: Option<&Path>) -> Result<BlobInfo, StoreError> {
        let id = self.info.id;
        let part = self.store.path(&id, "part");
        let mut source = None;
        if let Some(out) = out {
            if out.exists() {
                return Err(StoreError::Io(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", out.display()),
                )));
            }
            match std::fs::rename(&part, out) {
                Ok(()) => source = Some(source_of(out, &File::open(out)?)?),
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    let tmp = out.with_extension("shoal-part");
                    std::fs::copy(&part, &tmp)?;
                    std::fs::rename(&tmp, out)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // No fsync of the bytes: a crash of the process keeps them (the page
        // cache survives it), and after a power loss a damaged blob is
        // caught by whoever fetches it (every group is verified there).
        if source.is_none() {
            std::fs::rename(&part, self.store.path(&id, "data"))?;
        }
        std::fs::rename(self.store.path(&id, "opart"), self.store.path(&id, "obao"))?;
        self.store.write_meta(
            &id,
            &Meta {
                size: self.info.size,
                source,
            },
        )?;
        let _ = std::fs::remove_file(self.store.path(&id, "have"));
        Ok(self.info)
    }
}

/// Verifies a range without storing it (for a probe, or a test): checks
/// `encoded` against `info`; returns the bytes of data it carried.
pub fn verify_range(info: BlobInfo, groups: &Range<u64>, encoded: &[u8]) -> Result<u64, ReceiveError> {
    if groups.is_empty() {
        return Ok(0);
    }
    let ranges = chunk_ranges(groups);
    let tree = BaoTree::new(info.size, BLOCK_SIZE);
    let mut bytes = 0;
    for item in RangeVerifier::new(hash_of_key(&info.id), tree, &ranges, encoded) {
        if let Item::Leaf { data, .. } = item? {
            bytes += data.len() as u64;
        }
    }
    Ok(bytes)
}

impl From<Broken> for ReceiveError {
    fn from(broken: Broken) -> Self {
        match broken {
            Broken::Short => ReceiveError::Io(io::ErrorKind::UnexpectedEof.into()),
            Broken::Mismatch => ReceiveError::BadData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::content;

    #[test]
    fn vectored_writes_go_on_until_every_byte_is_written() {
        // A stand-in for pwritev that writes at most 5 bytes a call and is
        // interrupted every third call.
        let (a, b, c) = (content(17), content(3), content(40));
        let mut pieces = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let mut file = [0u8; 100];
        let mut calls = 0;
        write_all_at(&mut pieces, 10, |pieces, at| {
            calls += 1;
            if calls % 3 == 0 {
                return Err(rustix::io::Errno::INTR);
            }
            let mut n = 0;
            for piece in pieces {
                for byte in piece.iter() {
                    if n == 5 {
                        return Ok(n);
                    }
                    file[at as usize + n] = *byte;
                    n += 1;
                }
            }
            Ok(n)
        })
        .unwrap();
        assert_eq!(&file[10..70], [a, b, c].concat().as_slice());
        assert!(file[..10].iter().chain(&file[70..]).all(|b| *b == 0));
        // A device that takes nothing is an error, not a loop.
        let d = content(4);
        let mut pieces = [IoSlice::new(&d)];
        let stuck = write_all_at(&mut pieces, 0, |_, _| Ok(0));
        assert_eq!(stuck.unwrap_err().kind(), io::ErrorKind::WriteZero);
    }
}
