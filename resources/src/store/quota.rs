//! Room and the quota: the bytes a blob takes, the store's use, pin marks,
//! and what the quota may drop to make room (least recently used first;
//! never a pinned blob, never a download still going on).

use std::fs::OpenOptions;
use std::io;

use bao_tree::BaoTree;
use shoal_overlay::Key;

use crate::blob::BLOCK_SIZE;

use super::{ABANDONED_AFTER, BLOB_FILES, BlobStore, META_ALLOWANCE, PARTIAL_FILES, StoreError};

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
    pub(super) quota: u64,
    pub(super) now: std::time::SystemTime,
    pub(super) imported: Vec<Key>,
    pub(super) dropped: Vec<Key>,
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

impl BlobStore {
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
    pub(super) fn make_room_into(
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
}
