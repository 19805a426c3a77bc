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

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bao_tree::BaoTree;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{encode_ranges, encode_ranges_validated, outboard};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

use crate::blob::{BLOCK_SIZE, BlobInfo, GROUP_BYTES, chunk_ranges, group_count, hash_of_key, key_of_hash};
use crate::verify::{Broken, Item, RangeVerifier};

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
pub struct Entry {
    /// Id and size.
    pub info: BlobInfo,
    /// Served from this file in place, not from a copy.
    pub in_place: Option<PathBuf>,
}

/// Bytes a blob of `size` takes in the store: its copy and its outboard
/// (and at most a metadata file).
pub fn room_for(size: u64) -> u64 {
    size.saturating_add(BaoTree::new(size, BLOCK_SIZE).outboard_size())
        .saturating_add(META_ALLOWANCE)
}

/// Room under a quota for a run of imports (a file, or a directory's
/// files and listing): each import makes its own room once its id is
/// known — keeping what the run imported before it — so a blob the store
/// already holds drops nothing, and what cannot fit is refused with
/// nothing dropped and no file left behind.
#[derive(Debug)]
pub struct Room {
    quota: u64,
    now: std::time::SystemTime,
    imported: Vec<Key>,
    dropped: Vec<Key>,
}

impl Room {
    /// Room under `quota` bytes; `now` dates what the quota may drop.
    pub fn new(quota: u64, now: std::time::SystemTime) -> Self {
        Room {
            quota,
            now,
            imported: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// The blobs dropped to make room so far.
    pub fn dropped(&self) -> &[Key] {
        &self.dropped
    }
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

/// A name for an import's temporary files, unique among this process's
/// imports however many run at once, and naming the process (so that
/// opening the store removes those of a process that died).
fn import_nonce() -> String {
    static IMPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nth = IMPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("import-{}-{nth}", std::process::id())
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

/// Bytes an unprivileged writer may still put on the file system of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Copies everything it reads into `copy`.
struct Tee<'a, R, W> {
    read: R,
    /// Bytes read so far, for whoever shows progress.
    counted: &'a std::sync::atomic::AtomicU64,
    copy: Option<W>,
    /// Reading the file failed: the file's fault.
    read_failed: bool,
    /// Why writing the copy failed: the store's fault (a full disk, say),
    /// not the file's, though the hashing sees it as a failed read.
    copy_failed: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read.read(buf).inspect_err(|_| self.read_failed = true)?;
        self.counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(copy) = self.copy.as_mut()
            && let Err(e) = copy.write_all(&buf[..n])
        {
            let kind = e.kind();
            self.copy_failed = Some(e);
            return Err(io::Error::new(kind, "writing the store's copy failed"));
        }
        Ok(n)
    }
}

/// Files removed when this goes out of scope (those still there).
#[derive(Debug)]
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bytes written to an import's copy between two syncs behind it.
const SYNC_BEHIND_BYTES: u64 = 32 << 20;

/// The store's copy of a file being imported, synced to disk behind the
/// writing: every [`SYNC_BEHIND_BYTES`] a thread of its own syncs what has
/// been written so far, so the disk writes while the rest of the file is
/// still read and hashed, and the sync at the end waits for the tail only
/// (it was half of a 1 GiB `share`: 0.69 s).
#[derive(Debug)]
struct SyncBehind {
    out: io::BufWriter<File>,
    written: u64,
    every: u64,
    next_sync: u64,
    syncer: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<io::Result<()>>)>,
}

impl SyncBehind {
    fn new(file: File, every: u64) -> Self {
        SyncBehind {
            out: io::BufWriter::with_capacity(1 << 20, file),
            written: 0,
            every,
            next_sync: every,
            syncer: None,
        }
    }

    /// Asks the syncing thread (started the first time) to sync; a request
    /// while it is still busy with the last one is folded into it.
    fn sync_behind(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.syncer.is_none() {
            let file = self.out.get_ref().try_clone()?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let thread = std::thread::Builder::new().name("import-sync".into()).spawn(move || {
                for () in rx {
                    file.sync_data()?;
                }
                Ok(())
            })?;
            self.syncer = Some((tx, thread));
        }
        let stopped = match &self.syncer {
            // Full: a sync is waiting to start and will cover these bytes.
            Some((tx, _)) => matches!(tx.try_send(()), Err(std::sync::mpsc::TrySendError::Disconnected(()))),
            None => false,
        };
        if stopped {
            // The thread ends only on a failed sync: say so now, not after
            // the rest of the file.
            self.join()?;
        }
        Ok(())
    }

    /// Stops the syncing thread; its error, if a sync failed.
    fn join(&mut self) -> io::Result<()> {
        if let Some((tx, thread)) = self.syncer.take() {
            drop(tx);
            thread
                .join()
                .map_err(|_| io::Error::other("the import's sync thread panicked"))??;
        }
        Ok(())
    }

    /// Writes what is buffered and waits until all of it is on disk.
    fn finish(mut self) -> io::Result<()> {
        self.out.flush()?;
        self.join()?;
        self.out.get_ref().sync_all()
    }
}

impl Write for SyncBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        if self.written >= self.next_sync {
            self.next_sync = self.written + self.every;
            self.sync_behind()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = BlobStore { dir: dir.to_path_buf() };
        store.remove_dead_imports()?;
        Ok(store)
    }

    /// Removes the temporary files of imports whose process is gone (killed
    /// mid-import): nothing else would, and the quota counts them.
    fn remove_dead_imports(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("import-"))
                .filter(|n| n.ends_with(".tmp"))
                .and_then(|n| n.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists();
            if !alive {
                let _ = std::fs::remove_file(self.dir.join(&name));
            }
        }
        Ok(())
    }

    fn path(&self, id: &Key, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    /// Imports the file at `path`: hashes it and computes its outboard in
    /// one streaming pass (copying it too unless in place).
    pub fn import(&self, path: &Path, how: Import) -> Result<BlobInfo, StoreError> {
        self.import_within(path, how, None, &std::sync::atomic::AtomicU64::new(0))
    }

    /// [`import`](Self::import), making room under a quota first if `room`
    /// says so (see [`Room`]).
    /// Adds the bytes it reads to `read` as it goes (a share's progress).
    pub fn import_within(
        &self,
        path: &Path,
        how: Import,
        room: Option<&mut Room>,
        read: &std::sync::atomic::AtomicU64,
    ) -> Result<BlobInfo, StoreError> {
        let unreadable = |source| StoreError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        // Opened without blocking: opening a FIFO would wait for a writer
        // forever (O_NONBLOCK changes nothing for a regular file).
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(path)
                .map_err(unreadable)?
        };
        if !file.metadata().map_err(unreadable)?.is_file() {
            return Err(unreadable(io::Error::other(
                "not a regular file or a directory (a pipe, socket or device cannot be shared)",
            )));
        }
        let source = source_of(path, &file).map_err(unreadable)?;
        let size = source.len;
        let nonce = import_nonce();
        let tmp_data = self.dir.join(format!("{nonce}.data.tmp"));
        let tmp_obao = self.dir.join(format!("{nonce}.obao.tmp"));
        // Whatever fails from here on leaves no temporary file behind (after
        // the renames there is nothing left to remove).
        let _scratch = Scratch(vec![tmp_data.clone(), tmp_obao.clone()]);
        let copy = match how {
            Import::Copy => Some(SyncBehind::new(File::create(&tmp_data)?, SYNC_BEHIND_BYTES)),
            Import::InPlace => None,
        };
        let mut tee = Tee {
            read: io::BufReader::with_capacity(1 << 20, file),
            counted: read,
            copy,
            read_failed: false,
            copy_failed: None,
        };
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let mut ob = PreOrderOutboard {
            root: blake3::Hash::from_bytes([0; 32]),
            tree,
            data: File::create(&tmp_obao)?,
        };
        // A failed read is the file's fault; a failed write (of the copy or
        // the outboard) the store's.
        let root = outboard(&mut tee, tree, &mut ob).map_err(|e| match tee.copy_failed.take() {
            Some(e) => StoreError::Io(e),
            None if tee.read_failed => unreadable(e),
            None => StoreError::Io(e),
        })?;
        // A file with more bytes than its size says (/proc and /sys files
        // say 0) has no fixed content to share.
        let mut more = [0u8; 1];
        if tee.read.read(&mut more).map_err(unreadable)? > 0 {
            return Err(unreadable(io::Error::other(if size == 0 {
                "it reads as longer than its size of 0 bytes (a /proc or /sys file?): only files with a fixed size can be shared; copy it to a regular file first"
            } else {
                "the file grew while it was read"
            })));
        }
        // The file must not have grown or shrunk under us.
        if tee.read.into_inner().metadata().map_err(unreadable)?.len() != size {
            return Err(unreadable(io::Error::other("the file changed while it was read")));
        }
        if let Some(copy) = tee.copy.take() {
            copy.finish()?;
        }
        ob.data.sync_all()?;
        let id = key_of_hash(&root);
        // A store copy held before is replaced by the same bytes (or, for
        // an import in place, kept: it is out of the user's hands).
        let held = matches!(self.read_meta(&id), Ok(Some(Meta { source: None, .. })));
        if let Some(room) = room {
            // The temporary files count already.
            if !held {
                let mut keep = room.imported.clone();
                keep.push(id);
                self.make_room_into(META_ALLOWANCE, room.quota, &keep, room.now, &mut room.dropped)?;
            }
            room.imported.push(id);
        }
        if held && how == Import::InPlace {
            return Ok(BlobInfo { id, size });
        }
        if how == Import::Copy {
            std::fs::rename(&tmp_data, self.path(&id, "data"))?;
        }
        std::fs::rename(&tmp_obao, self.path(&id, "obao"))?;
        let meta = Meta {
            size,
            source: (how == Import::InPlace).then_some(source),
        };
        self.write_meta(&id, &meta)?;
        Ok(BlobInfo { id, size })
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

    /// Marks blob `id` pinned (or not): pinned blobs are never dropped to
    /// make room.
    pub fn set_pinned(&self, id: &Key, pinned: bool) -> Result<(), StoreError> {
        let path = self.path(id, "pin");
        if pinned {
            std::fs::write(path, b"")?;
        } else if let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e.into());
        }
        Ok(())
    }

    /// Every blob marked pinned (one directory scan; no metadata read).
    pub fn pinned(&self) -> Result<Vec<Key>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(Ok(id)) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pin"))
                .map(str::parse::<Key>)
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether blob `id` is marked pinned.
    pub fn is_pinned(&self, id: &Key) -> bool {
        self.path(id, "pin").exists()
    }

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

    /// Bytes the store's own files take (copies, outboards, downloads in
    /// progress; files served in place count only their outboards).
    pub fn usage(&self) -> Result<u64, StoreError> {
        let mut used = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                used += entry.metadata()?.len();
            }
        }
        Ok(used)
    }

    /// Marks blob `id` as used at `now`, the driver's clock (garbage
    /// collection drops the least recently used first). Cheap: touches the
    /// metadata file at most every ten minutes.
    pub fn touch(&self, id: &Key, now: std::time::SystemTime) {
        let path = self.path(id, "meta");
        let stale = std::fs::metadata(&path).and_then(|m| m.modified()).map_or(true, |t| {
            now.duration_since(t).unwrap_or_default() > std::time::Duration::from_secs(600)
        });
        if stale && let Ok(file) = OpenOptions::new().append(true).open(&path) {
            let _ = file.set_modified(now);
        }
    }

    /// What the quota may drop, least recently used first (never what is
    /// in `keep`, never a pinned blob, never a download in progress), and
    /// the bytes dropping all of it would free.
    fn droppable(&self, keep: &[Key], now: std::time::SystemTime) -> Result<(Vec<Key>, u64), StoreError> {
        let mut candidates = Vec::new();
        let mut freeable = 0u64;
        let bytes = |id: &Key, exts: &[&str]| -> u64 {
            exts.iter()
                .filter_map(|ext| std::fs::metadata(self.path(id, ext)).ok())
                .map(|m| m.len())
                .sum()
        };
        for entry in self.list()? {
            if keep.contains(&entry.info.id) || self.is_pinned(&entry.info.id) {
                continue;
            }
            let modified = std::fs::metadata(self.path(&entry.info.id, "meta")).and_then(|m| m.modified())?;
            freeable = freeable.saturating_add(bytes(&entry.info.id, &BLOB_FILES));
            candidates.push((modified, entry.info.id));
        }
        // Downloads nobody has added to for a day were given up: their
        // files go before any whole blob (an interrupted download resumes
        // within that time, and a running one writes all the while).
        let given_up = now.checked_sub(ABANDONED_AFTER).unwrap_or(std::time::UNIX_EPOCH);
        for (modified, id) in self.partials()? {
            if modified < given_up && !keep.contains(&id) {
                freeable = freeable.saturating_add(bytes(&id, &PARTIAL_FILES));
                candidates.push((std::time::UNIX_EPOCH, id));
            }
        }
        candidates.sort();
        Ok((candidates.into_iter().map(|(_, id)| id).collect(), freeable))
    }

    /// Bytes that stay whatever the quota drops: pinned blobs, downloads in
    /// progress, files of imports under way.
    pub fn kept_bytes(&self, now: std::time::SystemTime) -> Result<u64, StoreError> {
        let (_, freeable) = self.droppable(&[], now)?;
        Ok(self.usage()?.saturating_sub(freeable))
    }

    /// Whether `need` more bytes would fit under `quota` once everything
    /// the quota may drop was dropped: whether [`make_room`](Self::make_room)
    /// could succeed, without dropping anything.
    pub fn could_fit(&self, need: u64, quota: u64, now: std::time::SystemTime) -> Result<bool, StoreError> {
        Ok(self.kept_bytes(now)?.saturating_add(need) <= quota)
    }

    /// Makes room for `need` more bytes under `quota`: drops the least
    /// recently used blobs (never those in `keep`, never a pinned one,
    /// never a download in progress) until the store fits, or says why it
    /// cannot — having dropped nothing, when that can be told beforehand.
    pub fn make_room(
        &self,
        need: u64,
        quota: u64,
        keep: &[Key],
        now: std::time::SystemTime,
    ) -> Result<Vec<Key>, StoreError> {
        let mut dropped = Vec::new();
        self.make_room_into(need, quota, keep, now, &mut dropped)?;
        Ok(dropped)
    }

    /// [`make_room`](Self::make_room), adding what it drops to `dropped`
    /// even when it fails in the end (others took the room meanwhile).
    fn make_room_into(
        &self,
        need: u64,
        quota: u64,
        keep: &[Key],
        now: std::time::SystemTime,
        dropped: &mut Vec<Key>,
    ) -> Result<(), StoreError> {
        let mut used = self.usage()?;
        if used.saturating_add(need) <= quota {
            return Ok(());
        }
        let (candidates, freeable) = self.droppable(keep, now)?;
        let staying = used.saturating_sub(freeable);
        if staying.saturating_add(need) > quota {
            return Err(StoreError::QuotaExceeded {
                need,
                used: staying,
                quota,
            });
        }
        for id in candidates {
            if used.saturating_add(need) <= quota {
                break;
            }
            let before = used;
            self.remove(&id)?;
            used = self.usage()?;
            if used < before {
                dropped.push(id);
            }
        }
        if used.saturating_add(need) > quota {
            // Others took the room meanwhile.
            return Err(StoreError::QuotaExceeded { need, used, quota });
        }
        Ok(())
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
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
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
                out.push(Entry {
                    info: BlobInfo { id, size: meta.size },
                    in_place: meta.source.map(|s| s.path),
                });
            }
        }
        out.sort_by_key(|e| e.info.id);
        Ok(out)
    }

    /// Writes blob `id` to `path` (a new file; an existing one is not
    /// overwritten). The bytes were verified when they arrived or were
    /// imported; the copy is made by the kernel where it can
    /// (`copy_file_range`).
    pub fn export(&self, id: &Key, path: &Path) -> Result<(), StoreError> {
        let (mut data, _, _) = self.open_blob(id)?;
        let tmp = path.with_extension("shoal-part");
        let mut out = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Err(e) = io::copy(&mut data, &mut out) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        if path.exists() {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            )));
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Moves the store's copy of blob `id` to `path` (a new file) and serves
    /// it in place from there; copies instead if `path` is on another file
    /// system, the blob is already served in place, or it is pinned (a copy
    /// kept for a home stays the store's own, out of the user's hands).
    pub fn move_out(&self, id: &Key, path: &Path) -> Result<(), StoreError> {
        let meta = self.read_meta(id)?.ok_or(StoreError::Unknown(*id))?;
        if meta.source.is_some() || path.exists() || self.is_pinned(id) {
            return self.export(id, path);
        }
        match std::fs::rename(self.path(id, "data"), path) {
            Ok(()) => {
                let source = source_of(path, &File::open(path)?)?;
                self.write_meta(
                    id,
                    &Meta {
                        size: meta.size,
                        source: Some(source),
                    },
                )?;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => self.export(id, path),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a small blob whole (a collection listing), at most `max` bytes.
    pub fn read_small(&self, id: &Key, max: u64) -> Result<Vec<u8>, StoreError> {
        let (data, _, _) = self.open_blob(id)?;
        let mut out = Vec::new();
        data.take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(StoreError::Io(io::Error::other(format!(
                "blob {id} is larger than {max} bytes"
            ))));
        }
        Ok(out)
    }

    /// Imports every regular file below `dir` and a listing of them (a
    /// collection blob, whose id names the directory). Symbolic links and
    /// names that are not portable UTF-8 are refused, not followed.
    /// With `room`, each import makes its room as in [`import_within`](Self::import_within).
    pub fn import_dir(
        &self,
        dir: &Path,
        how: Import,
        mut room: Option<&mut Room>,
        read: &std::sync::atomic::AtomicU64,
    ) -> Result<(BlobInfo, Vec<BlobInfo>), StoreError> {
        let unreadable = |path: &Path, source| StoreError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let mut entries = Vec::new();
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((at, prefix)) = stack.pop() {
            let mut children: Vec<_> = std::fs::read_dir(&at)
                .map_err(|e| unreadable(&at, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable(&at, e))?;
            children.sort_by_key(|c| c.file_name());
            for child in children {
                let path = child.path();
                let name = child
                    .file_name()
                    .into_string()
                    .map_err(|_| unreadable(&path, io::Error::other("the name is not UTF-8")))?;
                let rel = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if !crate::collection::valid_path(&rel) {
                    return Err(unreadable(
                        &path,
                        io::Error::other("the name cannot be shared portably"),
                    ));
                }
                let kind = child.file_type().map_err(|e| unreadable(&path, e))?;
                if kind.is_dir() {
                    stack.push((path, rel));
                } else if kind.is_file() {
                    let blob = self.import_within(&path, how, room.as_deref_mut(), read)?;
                    entries.push(crate::collection::Entry { path: rel, blob });
                } else {
                    return Err(unreadable(
                        &path,
                        io::Error::other("not a regular file or directory (links are not followed)"),
                    ));
                }
            }
        }
        let listing =
            crate::collection::encode(&entries).map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?;
        let tmp = self.dir.join(format!("{}.listing.tmp", import_nonce()));
        std::fs::write(&tmp, listing)?;
        let root = self.import_within(&tmp, Import::Copy, room, &std::sync::atomic::AtomicU64::new(0));
        let _ = std::fs::remove_file(&tmp);
        Ok((root?, entries.into_iter().map(|e| e.blob).collect()))
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
    use crate::FetchPlan;
    use std::sync::atomic::AtomicU64;

    /// A `now` at which no download has been given up yet.
    const NOTHING_GIVEN_UP: std::time::SystemTime = UNIX_EPOCH;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Fetches every group `fetch` still lacks from store `from` into
    /// `partial`, as one provider; returns how many groups were asked for.
    fn pull(from: &BlobStore, info: BlobInfo, partial: &Partial, fetch: &mut FetchPlan) -> u64 {
        fetch.add_provider(0);
        let mut asked = 0;
        while let Some(range) = fetch.next_range(0) {
            asked += range.end - range.start;
            let mut wire = Vec::new();
            from.encode(&info.id, &range, &mut wire).unwrap();
            partial
                .receive(&range, wire.as_slice(), |g| {
                    fetch.verified(0, g);
                })
                .unwrap();
            fetch.finished(0, range, std::time::Duration::from_millis(1));
        }
        asked
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn import_gives_the_b3sum_id_and_ranges_move_between_stores() {
        let dir = temp("move");
        let bytes = content(3 * GROUP_BYTES as usize + 1000);
        let path = dir.join("file");
        std::fs::write(&path, &bytes).unwrap();
        let a = BlobStore::open(&dir.join("a")).unwrap();
        let info = a.import(&path, Import::Copy).unwrap();
        assert_eq!(info.id, Key::of_content(&bytes));
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(a.list().unwrap().len(), 1);

        let b = BlobStore::open(&dir.join("b")).unwrap();
        let partial = b.partial(info).unwrap();
        let mut fetch = FetchPlan::new(info.size, partial.saved_have());
        pull(&a, info, &partial, &mut fetch);
        assert!(fetch.is_complete());
        partial.finish(None).unwrap();
        assert_eq!(
            std::fs::read(dir.join("b").join(format!("{}.data", info.id))).unwrap(),
            bytes
        );
        // The outboard built from the parents that arrived is complete: b
        // serves the blob, and its outboard equals the one an import makes.
        let mut wire = Vec::new();
        b.encode(&info.id, &(0..4), &mut wire).unwrap();
        assert_eq!(verify_range(info, &(0..4), wire.as_slice()).unwrap(), info.size);
        assert_eq!(
            std::fs::read(dir.join("b").join(format!("{}.obao", info.id))).unwrap(),
            std::fs::read(dir.join("a").join(format!("{}.obao", info.id))).unwrap()
        );
        let out = dir.join("exported");
        b.export(&info.id, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
        assert!(b.export(&info.id, &out).is_err(), "export never overwrites");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

    #[test]
    fn an_empty_blob_or_range_is_received_without_a_write() {
        let dir = temp("empty");
        std::fs::write(dir.join("file"), b"").unwrap();
        let a = BlobStore::open(&dir.join("a")).unwrap();
        let info = a.import(&dir.join("file"), Import::Copy).unwrap();
        assert_eq!(info.size, 0);
        let b = BlobStore::open(&dir.join("b")).unwrap();
        let partial = b.partial(info).unwrap();
        let mut wire = Vec::new();
        a.encode(&info.id, &(0..1), &mut wire).unwrap();
        assert!(partial.receive(&(0..1), &wire, |_| {}).is_ok());
        assert!(partial.receive(&(3..3), &[], |_| {}).is_ok());
        assert_eq!(verify_range(info, &(3..3), &[]).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_copy_synced_behind_its_writing_is_whole() {
        // Syncs every 4 KiB of 1 MiB written in odd-sized pieces: the
        // thread starts, and the file is the bytes written, all of them.
        let dir = temp("syncbehind");
        let path = dir.join("copy");
        let bytes = content(1 << 20);
        let mut copy = SyncBehind::new(File::create(&path).unwrap(), 4096);
        for piece in bytes.chunks(7919) {
            copy.write_all(piece).unwrap();
        }
        assert!(copy.syncer.is_some(), "no sync behind the writing");
        copy.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == bytes);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_group_is_on_disk_with_its_hashes_when_it_is_reported() {
        // More than one write run, and a range that starts mid-blob.
        use std::os::unix::fs::FileExt;
        let dir = temp("runs");
        let groups = (2 * WRITE_RUN_BYTES as u64) / GROUP_BYTES + 7;
        let bytes = content((groups * GROUP_BYTES) as usize - 100);
        std::fs::write(dir.join("file"), &bytes).unwrap();
        let a = BlobStore::open(&dir.join("a")).unwrap();
        let info = a.import(&dir.join("file"), Import::Copy).unwrap();
        let b = BlobStore::open(&dir.join("b")).unwrap();
        let partial = b.partial(info).unwrap();
        let part = File::open(b.path(&info.id, "part")).unwrap();
        let mut reported = Vec::new();
        for range in [3..groups, 0..3] {
            let mut wire = Vec::new();
            a.encode(&info.id, &range, &mut wire).unwrap();
            partial
                .receive(&range, wire.as_slice(), |g| {
                    let start = (g * GROUP_BYTES) as usize;
                    let end = (start + GROUP_BYTES as usize).min(bytes.len());
                    let mut on_disk = vec![0u8; end - start];
                    part.read_exact_at(&mut on_disk, start as u64).unwrap();
                    assert!(on_disk == bytes[start..end], "group {g} reported before it was written");
                    // Its hashes too: the files on disk alone serve it,
                    // verified against the id.
                    let on_disk = PreOrderOutboard {
                        root: hash_of_key(&info.id),
                        tree: BaoTree::new(info.size, BLOCK_SIZE),
                        data: File::open(b.path(&info.id, "opart")).unwrap(),
                    };
                    let one = chunk_ranges(&(g..g + 1));
                    assert!(
                        encode_ranges_validated(&part, &on_disk, &one, io::sink()).is_ok(),
                        "group {g} reported before its hashes were written"
                    );
                    reported.push(g);
                })
                .unwrap();
        }
        reported.sort_unstable();
        assert_eq!(reported, (0..groups).collect::<Vec<_>>());
        // The outboard was filled as the data arrived: the finished blob
        // serves and verifies without hashing it again.
        let got = partial.finish(None).unwrap();
        assert_eq!(got.id, info.id);
        let mut wire = Vec::new();
        b.encode(&info.id, &(0..groups), &mut wire).unwrap();
        assert_eq!(
            verify_range(info, &(0..groups), wire.as_slice()).unwrap(),
            bytes.len() as u64
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tampered_data_is_caught_group_by_group() {
        let dir = temp("tamper");
        let bytes = content(4 * GROUP_BYTES as usize);
        std::fs::write(dir.join("file"), &bytes).unwrap();
        let a = BlobStore::open(&dir.join("a")).unwrap();
        let info = a.import(&dir.join("file"), Import::Copy).unwrap();
        let mut wire = Vec::new();
        a.encode(&info.id, &(0..4), &mut wire).unwrap();
        // Flip one byte near the end: the groups before it still verify.
        let at = wire.len() - 10;
        wire[at] ^= 1;
        let b = BlobStore::open(&dir.join("b")).unwrap();
        let partial = b.partial(info).unwrap();
        let mut good = Vec::new();
        let result = partial.receive(&(0..4), wire.as_slice(), |g| good.push(g));
        assert!(matches!(result, Err(ReceiveError::BadData)));
        assert_eq!(good, vec![0, 1, 2]);
        assert!(matches!(
            verify_range(info, &(0..4), wire.as_slice()),
            Err(ReceiveError::BadData)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_place_blobs_are_served_until_their_source_changes() {
        let dir = temp("inplace");
        let path = dir.join("file");
        std::fs::write(&path, content(50_000)).unwrap();
        let store = BlobStore::open(&dir.join("s")).unwrap();
        let info = store.import(&path, Import::InPlace).unwrap();
        assert!(!dir.join("s").join(format!("{}.data", info.id)).exists());
        let mut wire = Vec::new();
        store.encode(&info.id, &(0..4), &mut wire).unwrap();
        assert_eq!(verify_range(info, &(0..4), wire.as_slice()).unwrap(), 50_000);
        assert!(store.contains(&info.id));
        std::fs::write(&path, content(50_001)).unwrap();
        assert!(matches!(
            store.encode(&info.id, &(0..4), &mut Vec::new()),
            Err(StoreError::SourceChanged { .. })
        ));
        // No longer held, so it is fetched again — into the store's own copy.
        assert!(!store.contains(&info.id));
        let other = BlobStore::open(&dir.join("other")).unwrap();
        std::fs::write(dir.join("original"), content(50_000)).unwrap();
        assert_eq!(other.import(&dir.join("original"), Import::Copy).unwrap(), info);
        let partial = store.partial(info).unwrap();
        let mut fetch = FetchPlan::new(info.size, None);
        pull(&other, info, &partial, &mut fetch);
        partial.finish(None).unwrap();
        assert!(store.contains(&info.id));
        let mut wire = Vec::new();
        store.encode(&info.id, &(0..4), &mut wire).unwrap();
        assert_eq!(verify_range(info, &(0..4), wire.as_slice()).unwrap(), 50_000);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content(50_001),
            "the user's file is left alone"
        );
        // A change of the modification time alone counts too (a rewrite
        // of the same length).
        let touched = dir.join("touched");
        std::fs::write(&touched, content(9_000)).unwrap();
        let touched_id = store.import(&touched, Import::InPlace).unwrap().id;
        assert!(store.contains(&touched_id));
        let later = std::fs::metadata(&touched).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
        File::options()
            .append(true)
            .open(&touched)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            store.changed_source(&touched_id),
            Some(std::fs::canonicalize(&touched).unwrap())
        );
        assert!(!store.contains(&touched_id));
        // A source that is gone is not held either.
        let gone = dir.join("gone");
        std::fs::write(&gone, content(7_000)).unwrap();
        let gone_id = store.import(&gone, Import::InPlace).unwrap().id;
        assert!(store.contains(&gone_id));
        std::fs::remove_file(&gone).unwrap();
        assert!(!store.contains(&gone_id));
        assert!(matches!(
            store.import(&dir.join("missing"), Import::Copy),
            Err(StoreError::Unreadable { .. })
        ));
        assert!(matches!(
            store.encode(&Key::of_content(b"x"), &(0..1), &mut Vec::new()),
            Err(StoreError::Unknown(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Gives each blob a distinct use time, in the order given.
    fn used_in_order(store_dir: &Path, ids: &[Key]) {
        for (n, id) in ids.iter().enumerate() {
            let t = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + n as u64);
            let meta = store_dir.join(format!("{id}.meta"));
            OpenOptions::new()
                .append(true)
                .open(meta)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }

    #[test]
    fn an_import_makes_room_once_its_id_is_known_and_a_refusal_drops_nothing() {
        let dir = temp("room");
        let store = BlobStore::open(&dir.join("s")).unwrap();
        let file = |n: u8, len: usize| {
            let path = dir.join(format!("f{n}"));
            std::fs::write(&path, content(len + usize::from(n))).unwrap();
            path
        };
        let (a, b) = (file(0, 100_000), file(1, 100_000));
        let ids = [
            store.import(&a, Import::Copy).unwrap().id,
            store.import(&b, Import::Copy).unwrap().id,
        ];
        used_in_order(&dir.join("s"), &ids);
        let quota = store.usage().unwrap() + 20_000;
        // Importing b again needs no room: nothing goes.
        let mut room = Room::new(quota, NOTHING_GIVEN_UP);
        assert_eq!(
            store
                .import_within(&b, Import::Copy, Some(&mut room), &AtomicU64::new(0))
                .unwrap()
                .id,
            ids[1]
        );
        assert!(room.dropped().is_empty());
        assert!(store.contains(&ids[0]) && store.contains(&ids[1]));
        // A new file needs room: the least recently used (a) goes.
        let c = file(2, 100_000);
        let mut room = Room::new(quota, NOTHING_GIVEN_UP);
        let c_id = store
            .import_within(&c, Import::Copy, Some(&mut room), &AtomicU64::new(0))
            .unwrap()
            .id;
        assert_eq!(room.dropped(), &[ids[0]]);
        assert!(store.contains(&ids[1]) && store.contains(&c_id));
        assert!(store.usage().unwrap() <= quota);
        // Pinned, b stays; a file that cannot fit beside it even with c
        // dropped is refused — c is still there and no temporary file is.
        store.set_pinned(&ids[1], true).unwrap();
        let before = store.usage().unwrap();
        let big = file(3, 150_000);
        let mut room = Room::new(quota, NOTHING_GIVEN_UP);
        let refused = store
            .import_within(&big, Import::Copy, Some(&mut room), &AtomicU64::new(0))
            .unwrap_err();
        assert!(matches!(refused, StoreError::QuotaExceeded { .. }), "{refused}");
        assert!(room.dropped().is_empty());
        assert!(store.contains(&c_id) && store.contains(&ids[1]));
        assert_eq!(store.usage().unwrap(), before);
        // make_room alone refuses the same way, before dropping anything.
        assert!(store.make_room(150_000, quota, &[], NOTHING_GIVEN_UP).is_err());
        assert!(store.contains(&c_id));
        // An import in place of a blob held as a store copy keeps the copy,
        // and leaves nothing else behind.
        let before = store.usage().unwrap();
        assert_eq!(store.import(&c, Import::InPlace).unwrap().id, c_id);
        assert!(dir.join("s").join(format!("{c_id}.data")).exists());
        let entry = store.list().unwrap().into_iter().find(|e| e.info.id == c_id).unwrap();
        assert_eq!(entry.in_place, None);
        assert_eq!(store.usage().unwrap(), before);
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_import_keeps_its_own_earlier_files_when_it_makes_room() {
        let dir = temp("room-dir");
        let store = BlobStore::open(&dir.join("s")).unwrap();
        let old = dir.join("old");
        std::fs::write(&old, content(100_000)).unwrap();
        let old_id = store.import(&old, Import::Copy).unwrap().id;
        let tree = dir.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("a"), content(100_001)).unwrap();
        std::fs::write(tree.join("b"), content(100_002)).unwrap();
        // The old blob looks used more recently than anything the import
        // writes: only keeping the directory's own first file makes the
        // second one drop the old blob rather than the first file.
        let meta = OpenOptions::new()
            .append(true)
            .open(dir.join("s").join(format!("{old_id}.meta")))
            .unwrap();
        let later = meta.metadata().unwrap().modified().unwrap() + std::time::Duration::from_secs(86_400);
        meta.set_modified(later).unwrap();
        let quota = store.usage().unwrap() + 150_000;
        let mut room = Room::new(quota, NOTHING_GIVEN_UP);
        let (listing, files) = store
            .import_dir(&tree, Import::Copy, Some(&mut room), &AtomicU64::new(0))
            .unwrap();
        assert_eq!(room.dropped(), &[old_id]);
        assert!(files.iter().all(|f| store.contains(&f.id)) && store.contains(&listing.id));
        assert!(store.usage().unwrap() <= quota);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_download_resumes_from_its_saved_bitmap() {
        let dir = temp("resume");
        let bytes = content(40 * GROUP_BYTES as usize + 3);
        std::fs::write(dir.join("file"), &bytes).unwrap();
        let a = BlobStore::open(&dir.join("a")).unwrap();
        let info = a.import(&dir.join("file"), Import::Copy).unwrap();
        let b = BlobStore::open(&dir.join("b")).unwrap();
        {
            let partial = b.partial(info).unwrap();
            let mut fetch = FetchPlan::new(info.size, None);
            fetch.add_provider(0);
            let range = 0..16;
            let mut wire = Vec::new();
            a.encode(&info.id, &range, &mut wire).unwrap();
            partial
                .receive(&range, wire.as_slice(), |g| {
                    fetch.verified(0, g);
                })
                .unwrap();
            partial.save_have(fetch.have()).unwrap();
            // Dropped here: the process "dies".
        }
        let partial = b.partial(info).unwrap();
        let mut fetch = FetchPlan::new(info.size, partial.saved_have());
        assert_eq!(fetch.verified_bytes(), 16 * GROUP_BYTES);
        assert_eq!(pull(&a, info, &partial, &mut fetch), 41 - 16);
        let done = partial.finish(None).unwrap();
        assert_eq!(done, info);
        assert!(b.contains(&info.id));
        // Parents saved before the crash and after it make a whole outboard.
        assert_eq!(
            std::fs::read(dir.join("b").join(format!("{}.obao", info.id))).unwrap(),
            std::fs::read(dir.join("a").join(format!("{}.obao", info.id))).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_quota_drops_the_least_recently_used_and_refuses_what_cannot_fit() {
        let dir = temp("quota");
        let store = BlobStore::open(&dir.join("s")).unwrap();
        let mut ids = Vec::new();
        for n in 0..3u8 {
            let path = dir.join(format!("f{n}"));
            std::fs::write(&path, content(100_000 + usize::from(n))).unwrap();
            ids.push(store.import(&path, Import::Copy).unwrap().id);
        }
        used_in_order(&dir.join("s"), &ids);
        let used = store.usage().unwrap();
        assert!(used > 300_000);
        // Room for 50 kB within the current use plus 10 kB: the oldest goes.
        let dropped = store.make_room(50_000, used + 10_000, &[], NOTHING_GIVEN_UP).unwrap();
        assert_eq!(dropped, vec![ids[0]]);
        assert!(!store.contains(&ids[0]) && store.contains(&ids[1]));
        // Kept blobs are never dropped; what cannot fit is refused clearly.
        let error = store
            .make_room(10_000_000, used, &[ids[1], ids[2]], NOTHING_GIVEN_UP)
            .unwrap_err();
        assert!(matches!(error, StoreError::QuotaExceeded { .. }), "{error}");
        assert!(store.contains(&ids[1]) && store.contains(&ids[2]));
        // Marked pinned blobs are listed, and only they.
        assert!(store.pinned().unwrap().is_empty());
        store.set_pinned(&ids[2], true).unwrap();
        assert_eq!(store.pinned().unwrap(), vec![ids[2]]);
        store.set_pinned(&ids[2], false).unwrap();
        assert!(store.pinned().unwrap().is_empty());
        // What could fit counts only the pinned blobs as staying.
        let used = store.usage().unwrap();
        assert!(
            store.could_fit(150_000, used, NOTHING_GIVEN_UP).unwrap(),
            "both blobs could go"
        );
        store.set_pinned(&ids[1], true).unwrap();
        assert!(
            store.could_fit(90_000, used, NOTHING_GIVEN_UP).unwrap(),
            "the unpinned one could go"
        );
        assert!(
            !store.could_fit(150_000, used, NOTHING_GIVEN_UP).unwrap(),
            "the pinned one stays"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_download_that_cannot_fit_on_the_disk_is_refused_before_it_takes_room() {
        let dir = temp("diskfull");
        let store = BlobStore::open(&dir.join("s")).unwrap();
        // A size a ticket or a peer may claim: far past any disk.
        let info = BlobInfo {
            id: Key::of_content(b"huge"),
            size: 1 << 62,
        };
        let error = store.partial(info).map(drop).unwrap_err();
        assert!(
            matches!(error, StoreError::DiskFull { need, .. } if need >= 1 << 62),
            "{error}"
        );
        assert!(error.to_string().starts_with("disk full: "), "{error}");
        assert!(!store.part_path(&info.id).exists(), "nothing left behind");
        // A size that fits still starts.
        let small = BlobInfo {
            id: Key::of_content(b"small"),
            size: 100_000,
        };
        assert!(store.partial(small).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_metadata_file_hides_its_own_blob_only() {
        let dir = temp("badmeta");
        let store = BlobStore::open(&dir.join("s")).unwrap();
        let mut ids = Vec::new();
        for n in 0..3u8 {
            let path = dir.join(format!("f{n}"));
            std::fs::write(&path, content(10_000 + usize::from(n))).unwrap();
            ids.push(store.import(&path, Import::Copy).unwrap().id);
        }
        std::fs::write(dir.join("s").join(format!("{}.meta", ids[1])), b"\xff\x00 not cbor").unwrap();
        let listed: Vec<Key> = store.list().unwrap().iter().map(|e| e.info.id).collect();
        let mut expected = vec![ids[0], ids[2]];
        expected.sort();
        assert_eq!(listed, expected);
        let error = store.size(&ids[1]).unwrap_err().to_string();
        assert!(error.contains("bad metadata"), "{error}");
        // The quota still collects around it.
        assert!(store.make_room(0, u64::MAX, &[], NOTHING_GIVEN_UP).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pinned_blob_is_copied_out_not_moved() {
        let dir = temp("moveout");
        let store = BlobStore::open(&dir.join("s")).unwrap();
        let path = dir.join("file");
        std::fs::write(&path, content(30_000)).unwrap();
        let info = store.import(&path, Import::Copy).unwrap();
        store.set_pinned(&info.id, true).unwrap();
        store.move_out(&info.id, &dir.join("out")).unwrap();
        assert_eq!(std::fs::read(dir.join("out")).unwrap(), content(30_000));
        // The store keeps its own copy: the user's file is theirs to change.
        std::fs::write(dir.join("out"), b"edited").unwrap();
        let mut wire = Vec::new();
        store.encode(&info.id, &(0..2), &mut wire).unwrap();
        assert_eq!(verify_range(info, &(0..2), wire.as_slice()).unwrap(), 30_000);
        // An unpinned one is moved, and served from where it went.
        store.set_pinned(&info.id, false).unwrap();
        store.move_out(&info.id, &dir.join("moved")).unwrap();
        assert!(!dir.join("s").join(format!("{}.data", info.id)).exists());
        assert_eq!(
            store.list().unwrap()[0].in_place.as_deref(),
            Some(std::fs::canonicalize(dir.join("moved")).unwrap().as_path())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn downloads_given_up_a_day_ago_and_dead_imports_do_not_keep_their_room() {
        let dir = temp("abandoned");
        let store = BlobStore::open(&dir.join("s")).unwrap();
        let old = BlobInfo {
            id: Key::of_content(b"old"),
            size: 200_000,
        };
        let fresh = BlobInfo {
            id: Key::of_content(b"fresh"),
            size: 200_000,
        };
        for info in [old, fresh] {
            let partial = store.partial(info).unwrap();
            partial.save_have(&[0; 1]).unwrap();
        }
        // The clock is the file system's: when the partial files were made.
        let now = std::fs::metadata(store.part_path(&fresh.id))
            .unwrap()
            .modified()
            .unwrap();
        let two_days_ago = now - 2 * ABANDONED_AFTER;
        for ext in PARTIAL_FILES {
            let file = OpenOptions::new().append(true).open(store.path(&old.id, ext)).unwrap();
            file.set_modified(two_days_ago).unwrap();
        }
        let listed: Vec<Key> = store.partials().unwrap().into_iter().map(|p| p.1).collect();
        assert_eq!(listed.len(), 2);
        let used = store.usage().unwrap();
        let dropped = store.make_room(100_000, used, &[], now).unwrap();
        assert_eq!(dropped, vec![old.id], "only the download given up goes");
        assert!(!store.part_path(&old.id).exists() && store.part_path(&fresh.id).exists());
        assert!(PARTIAL_FILES.iter().all(|ext| !store.path(&old.id, ext).exists()));

        // An import killed mid-way left its temporary file: the next open of
        // the store removes it; a live process's is left alone.
        let dead = dir.join("s").join("import-4000000000-0.data.tmp");
        let live = dir.join("s").join(format!("import-{}-9.data.tmp", std::process::id()));
        std::fs::write(&dead, b"half a file").unwrap();
        std::fs::write(&live, b"being written").unwrap();
        BlobStore::open(&dir.join("s")).unwrap();
        assert!(!dead.exists() && live.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
