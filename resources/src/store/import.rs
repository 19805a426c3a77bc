//! Importing files and directories: one streaming pass reads the file,
//! hashes it into its outboard and (unless it is served in place) copies
//! it, synced behind the writing; temporary files are named by process so
//! that opening the store removes those of an import that died.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bao_tree::BaoTree;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::outboard;

use crate::blob::{BLOCK_SIZE, BlobInfo, key_of_hash};

use super::{BlobStore, Import, META_ALLOWANCE, Meta, Room, StoreError, source_of};

/// A name for an import's temporary files, unique among this process's
/// imports however many run at once, and naming the process (so that
/// opening the store removes those of a process that died).
fn import_nonce() -> String {
    static IMPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nth = IMPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("import-{}-{nth}", std::process::id())
}

/// Files a directory's import took before, by identity, so that importing
/// it again skips those that are still the same file: same device, inode,
/// size and modification time, and their blob still held here. Only paths
/// under `under` (relative to the directory) are remembered: the caller
/// vouches that the files there are replaced, never changed in place (a
/// change within the clock's tick keeps the modification time). A job's
/// snapshot pages are such files: the engine links a page that did not
/// change and writes a new file for one that did.
#[derive(Clone, Debug, Default)]
pub struct Reuse {
    under: String,
    files: std::collections::BTreeMap<(u64, u64), (u64, i64, i64, BlobInfo)>,
    /// Files imported again / taken as they were, in the last import.
    pub counts: (usize, usize),
}

impl Reuse {
    /// Remembers the files below `under` (a relative path, `/`-separated).
    pub fn under(under: impl Into<String>) -> Self {
        Reuse {
            under: under.into(),
            ..Default::default()
        }
    }

    fn covers(&self, rel: &str) -> bool {
        rel.strip_prefix(self.under.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    fn identity(meta: &std::fs::Metadata) -> ((u64, u64), u64, i64, i64) {
        use std::os::unix::fs::MetadataExt;
        ((meta.dev(), meta.ino()), meta.len(), meta.mtime(), meta.mtime_nsec())
    }
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
    /// Removes the temporary files of imports whose process is gone (killed
    /// mid-import): nothing else would, and the quota counts them.
    pub(super) fn remove_dead_imports(&self) -> io::Result<()> {
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

    /// Imports every regular file below `dir` and a listing of them (a
    /// collection blob, whose id names the directory). Symbolic links and
    /// names that are not portable UTF-8 are refused, not followed.
    /// With `room`, each import makes its room as in [`import_within`](Self::import_within).
    /// With `reuse`, a file it knows is taken as it was (see [`Reuse`]).
    /// A file removed between the listing of its directory and its
    /// reading is left out (a running job's checkpoint directory changes
    /// under the share: its temporary files come and go).
    pub fn import_dir(
        &self,
        dir: &Path,
        how: Import,
        mut room: Option<&mut Room>,
        read: &std::sync::atomic::AtomicU64,
        mut reuse: Option<&mut Reuse>,
    ) -> Result<(BlobInfo, Vec<BlobInfo>), StoreError> {
        let mut seen = std::collections::BTreeMap::new();
        if let Some(reuse) = reuse.as_deref_mut() {
            reuse.counts = (0, 0);
        }
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
                    let known = match reuse.as_deref_mut().filter(|r| how == Import::Copy && r.covers(&rel)) {
                        Some(reuse) => {
                            let meta = match std::fs::metadata(&path) {
                                Ok(meta) => meta,
                                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                                Err(e) => return Err(unreadable(&path, e)),
                            };
                            let (file, len, secs, nanos) = Reuse::identity(&meta);
                            let before = reuse.files.get(&file).copied();
                            let blob = match before {
                                Some((l, s, n, blob))
                                    if (l, s, n) == (len, secs, nanos)
                                        && matches!(self.read_meta(&blob.id), Ok(Some(Meta { source: None, .. }))) =>
                                {
                                    reuse.counts.1 += 1;
                                    if let Some(room) = room.as_deref_mut() {
                                        // Not to be dropped for a later file's room.
                                        room.imported.push(blob.id);
                                    }
                                    blob
                                }
                                _ => {
                                    reuse.counts.0 += 1;
                                    match self.import_within(&path, how, room.as_deref_mut(), read) {
                                        Err(e) if vanished(&e) => continue,
                                        imported => imported?,
                                    }
                                }
                            };
                            seen.insert(file, (len, secs, nanos, blob));
                            Some(blob)
                        }
                        None => None,
                    };
                    let blob = match known {
                        Some(blob) => blob,
                        None => match self.import_within(&path, how, room.as_deref_mut(), read) {
                            Err(e) if vanished(&e) => continue,
                            imported => imported?,
                        },
                    };
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
        if let Some(reuse) = reuse {
            // Only the files of this import: those gone since are forgotten.
            reuse.files = seen;
        }
        Ok((root?, entries.into_iter().map(|e| e.blob).collect()))
    }
}

/// Whether an import failed because its file was gone by the time it was
/// read.
fn vanished(e: &StoreError) -> bool {
    match e {
        StoreError::Unreadable { source, .. } | StoreError::Io(source) => source.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{content, temp};

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
}
