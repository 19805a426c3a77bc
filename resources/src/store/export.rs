//! Blobs going out of the store: exported to a new file, moved out and
//! served in place from there, or read whole when small.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

use shoal_overlay::Key;

use super::{BlobStore, Meta, StoreError, source_of};

impl BlobStore {
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

    /// Puts blob `id` at `path` (a new file) as a second name of the
    /// store's own copy, where the store holds one on the same file
    /// system; else writes a copy there as [`export`](Self::export) does.
    /// A link shares the store's bytes, so it is only for a reader that
    /// never writes to `path` and removes it after reading (a snapshot's
    /// memory page, read once by the engine before any of the job's code
    /// runs).
    pub fn link_out(&self, id: &Key, path: &Path) -> Result<(), StoreError> {
        let meta = self.read_meta(id)?.ok_or(StoreError::Unknown(*id))?;
        if meta.source.is_none() && std::fs::hard_link(self.path(id, "data"), path).is_ok() {
            return Ok(());
        }
        self.export(id, path)
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
}
