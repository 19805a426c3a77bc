//! The local blob store: blobs on disk with their bao outboards, served as
//! verified ranges and received group by group.
//!
//! Layout of the store's directory (`blobs/` in the data directory):
//!
//! - `ID.data` — the bytes (absent for a blob shared in place);
//! - `ID.obao` — the pre-order bao outboard (16 KiB groups: 1/256 of the
//!   size);
//! - `ID.meta` — CBOR: size, and for a blob shared in place the source path
//!   with its length and modification time, checked before every use;
//! - `ID.part` and `ID.have` — a download in progress and the bitmap of its
//!   verified groups, which is what lets it resume after a crash.
//!
//! Imports stream: the file is read once, copied and hashed in the same
//! pass, never loaded whole into memory.
//!
//! # Layout, in reading order
//!
//! - this file: the store's core — its files and their metadata, the
//!   errors, opening the store, what it holds, serving ranges, removing.
//! - `import`: importing a file or a directory (hashing, copying and
//!   syncing in one streaming pass; temporary files and their cleanup).
//! - `quota`: the room blobs take, pin marks, and what the quota may drop
//!   to make room ([`Room`], [`room_for`]).
//! - `partial`: downloads in progress ([`Partial`]): receiving verified
//!   ranges, written in runs, and resuming from a saved bitmap.
//! - `export`: blobs going out to the user's files.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bao_tree::BaoTree;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{encode_ranges, encode_ranges_validated};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

use crate::blob::{BLOCK_SIZE, BlobInfo, chunk_ranges, hash_of_key};

mod export;
mod import;
mod partial;
mod quota;
#[cfg(test)]
mod tests;

pub use import::Reuse;
pub use partial::{Partial, WRITE_RUN_BYTES, verify_range};
pub use quota::{Room, room_for};

/// The files a whole blob in the store consists of (`ID.pin` marks it
/// pinned and is empty).
const BLOB_FILES: [&str; 4] = ["meta", "data", "obao", "pin"];
/// The files of a download in progress.
const PARTIAL_FILES: [&str; 3] = ["part", "opart", "have"];
/// A download nothing has been added to for this long was given up: the
/// quota may drop it.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);
/// Room a metadata file takes, at most (it is a few dozen bytes, plus a
/// path for a blob served in place).
const META_ALLOWANCE: u64 = 4096;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file to share cannot be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The store's own files could not be read or written (disk full,
    /// permissions).
    #[error("blob store: {0}")]
    Io(#[from] io::Error),
    /// The store holds no such blob.
    #[error("no blob {0} in this store")]
    Unknown(Key),
    /// A blob shared in place changed on disk since it was shared.
    #[error(
        "{path} changed or went away since this peer began serving {id} from it: put the file back as it was, or fetch the id from another peer that has it"
    )]
    SourceChanged {
        /// The blob.
        id: Key,
        /// Its source.
        path: PathBuf,
    },
    /// Data did not verify against its id.
    #[error("data for {id} does not match its hash")]
    Corrupt {
        /// The blob.
        id: Key,
    },
    /// Storing this would take the store over its quota, even after
    /// dropping every blob it may drop.
    #[error(
        "quota exceeded: {need} bytes more do not fit ({used} of the {quota}-byte quota in use by blobs that must stay)"
    )]
    QuotaExceeded {
        /// Bytes asked for.
        need: u64,
        /// Bytes in use after collecting what could be collected.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// The disk the store is on has no room for a download.
    #[error("disk full: {id} needs {need} bytes, and the blob store's disk has {free} free")]
    DiskFull {
        /// The blob.
        id: Key,
        /// Bytes it needs beyond what its download already holds.
        need: u64,
        /// Bytes free on the store's file system.
        free: u64,
    },
}

/// Why receiving a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The sender's bytes do not verify: it lies or is broken.
    #[error("the data does not verify against the id")]
    BadData,
    /// Reading from the sender or writing locally failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    size: u64,
    /// For a blob served in place: where, and the length and mtime it had.
    source: Option<Source>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Source {
    path: PathBuf,
    len: u64,
    modified_ns: u128,
    /// Its bytes were found not to match the outboard while being served
    /// (edited with its length and mtime put back): it no longer matches
    /// any file, so the blob counts as changed from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    mismatched: bool,
}

/// One blob the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBlob {
    /// Id and size.
    pub info: BlobInfo,
    /// Served from this file in place, not from a copy.
    pub in_place: Option<PathBuf>,
}

/// How [`BlobStore::import`] keeps the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Import {
    /// Copy it into the store.
    Copy,
    /// Serve it from where it is (only the outboard goes into the store).
    InPlace,
}

/// Blobs on disk.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

fn source_of(path: &Path, file: &File) -> io::Result<Source> {
    let meta = file.metadata()?;
    let modified_ns = meta.modified()?.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Ok(Source {
        path: std::fs::canonicalize(path)?,
        len: meta.len(),
        modified_ns,
        mismatched: false,
    })
}

/// Whether an error opening a file says nothing about the file: the
/// process or the system is out of file descriptors or memory, or a signal
/// came.
fn transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.kind() == io::ErrorKind::Interrupted
        || e.kind() == io::ErrorKind::OutOfMemory
        || [Errno::MFILE, Errno::NFILE, Errno::NOMEM]
            .iter()
            .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

impl BlobStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = BlobStore { dir: dir.to_path_buf() };
        store.remove_dead_imports()?;
        Ok(store)
    }

    fn path(&self, id: &Key, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    fn write_meta(&self, id: &Key, meta: &Meta) -> io::Result<()> {
        let tmp = self.path(id, "meta.tmp");
        let mut bytes = Vec::new();
        ciborium::into_writer(meta, &mut bytes).map_err(io::Error::other)?;
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        // On disk before it names the blob held: a power cut must not leave
        // a metadata file that does not parse.
        file.sync_data()?;
        std::fs::rename(&tmp, self.path(id, "meta"))
    }

    fn read_meta(&self, id: &Key) -> Result<Option<Meta>, StoreError> {
        match File::open(self.path(id, "meta")) {
            Ok(file) => ciborium::from_reader(io::BufReader::new(file.take(64 * 1024)))
                .map(Some)
                .map_err(|_| {
                    StoreError::Io(io::Error::other(format!(
                        "blob {id}: bad metadata in {}: remove it to drop the blob (it can be fetched again)",
                        self.path(id, "meta").display()
                    )))
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the store holds the whole blob `id` and can serve it. A blob
    /// served in place whose file changed or went away since is not held
    /// (see [`changed_source`](Self::changed_source)): whoever asks (a
    /// `get`, a pin duty) fetches it again into the store.
    pub fn contains(&self, id: &Key) -> bool {
        matches!(self.read_meta(id), Ok(Some(_))) && self.changed_source(id).is_none()
    }

    /// For a blob served in place: its file, if that changed or cannot be
    /// opened since it was shared (the blob can no longer be served).
    /// `None` for a store copy, a blob not held, or when it cannot be told
    /// now (metadata unreadable, or the process out of file descriptors).
    pub fn changed_source(&self, id: &Key) -> Option<PathBuf> {
        let Ok(Some(Meta {
            source: Some(source), ..
        })) = self.read_meta(id)
        else {
            return None;
        };
        match File::open(&source.path).and_then(|file| source_of(&source.path, &file)) {
            Ok(now) if now == source => None,
            Err(e) if transient(&e) => None,
            Ok(_) | Err(_) => Some(source.path),
        }
    }

    /// The size of blob `id`, if held.
    pub fn size(&self, id: &Key) -> Result<Option<u64>, StoreError> {
        Ok(self.read_meta(id)?.map(|m| m.size))
    }

    /// Opens blob `id` for serving: its bytes and outboard, and whether
    /// they come from an in-place source.
    fn open_blob(&self, id: &Key) -> Result<(File, PreOrderOutboard<File>, bool), StoreError> {
        let meta = self.read_meta(id)?.ok_or(StoreError::Unknown(*id))?;
        let data = match &meta.source {
            None => File::open(self.path(id, "data"))?,
            Some(source) => {
                let file = File::open(&source.path).map_err(|_| StoreError::SourceChanged {
                    id: *id,
                    path: source.path.clone(),
                })?;
                let now = source_of(&source.path, &file)?;
                if now != *source {
                    return Err(StoreError::SourceChanged {
                        id: *id,
                        path: source.path.clone(),
                    });
                }
                file
            }
        };
        let outboard = PreOrderOutboard {
            root: hash_of_key(id),
            tree: BaoTree::new(meta.size, BLOCK_SIZE),
            data: File::open(self.path(id, "obao"))?,
        };
        Ok((data, outboard, meta.source.is_some()))
    }

    /// Writes the bao encoding of the groups `groups` of blob `id` (parent
    /// hashes and data) to `out`. Data shared in place is verified as it is
    /// read (the file may have been edited behind the store's back); a
    /// store copy is sent as it is, and the receiver verifies every group.
    ///
    /// In-place data that does not match (the file was edited and its
    /// length and mtime put back) marks the blob changed for good and is
    /// [`StoreError::SourceChanged`]: it is not served again, and
    /// [`contains`](Self::contains) no longer counts it held.
    pub fn encode(&self, id: &Key, groups: &Range<u64>, out: impl Write) -> Result<(), StoreError> {
        let (data, outboard, in_place) = self.open_blob(id)?;
        let ranges = chunk_ranges(groups);
        let result = if in_place {
            encode_ranges_validated(&data, &outboard, &ranges, out)
        } else {
            encode_ranges(&data, &outboard, &ranges, out)
        };
        match result {
            Ok(()) => Ok(()),
            Err(bao_tree::io::EncodeError::Io(e)) => Err(StoreError::Io(e)),
            Err(_) if in_place => Err(self.mark_mismatched(id)),
            Err(_) => Err(StoreError::Corrupt { id: *id }),
        }
    }

    /// Records that blob `id`'s in-place file no longer matches its
    /// outboard; returns the error that says so.
    fn mark_mismatched(&self, id: &Key) -> StoreError {
        match self.read_meta(id) {
            Ok(Some(mut meta)) => {
                let Some(source) = meta.source.as_mut() else {
                    return StoreError::Corrupt { id: *id };
                };
                source.mismatched = true;
                let path = source.path.clone();
                if let Err(e) = self.write_meta(id, &meta) {
                    return StoreError::Io(e);
                }
                StoreError::SourceChanged { id: *id, path }
            }
            Ok(None) => StoreError::Unknown(*id),
            Err(e) => e,
        }
    }

    /// Every whole blob held.
    pub fn list(&self) -> Result<Vec<HeldBlob>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".meta")) else {
                continue;
            };
            let Ok(id) = hex.parse::<Key>() else { continue };
            // One damaged entry must not hide the others (or stop the quota
            // from collecting them): it is left out, and reading it on its
            // own says what is wrong with it.
            if let Ok(Some(meta)) = self.read_meta(&id) {
                out.push(HeldBlob {
                    info: BlobInfo { id, size: meta.size },
                    in_place: meta.source.map(|s| s.path),
                });
            }
        }
        out.sort_by_key(|e| e.info.id);
        Ok(out)
    }

    /// Forgets blob `id` (its copy and outboard; an in-place source stays).
    pub fn remove(&self, id: &Key) -> Result<(), StoreError> {
        for ext in BLOB_FILES.iter().chain(&PARTIAL_FILES) {
            match std::fs::remove_file(self.path(id, ext)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
