//! The record store on disk: `records.cbor` in the data directory holds the
//! records this peer keeps for others, so a restart does not empty its part
//! of their homes.
//!
//! The file is written whole to a temporary file and renamed over the old
//! one, so a crash leaves either the old or the new file. On start every
//! record is verified again; a file that cannot be read is moved aside to
//! `records.cbor.bad` (never deleted) and the peer starts empty.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_overlay::{ProviderRecord, ValueRecord};

use crate::NodeAddr;

/// The file's name in the data directory.
pub const RECORDS_FILE: &str = "records.cbor";
const FORMAT_VERSION: u8 = 1;
/// The largest file read back: the store's default bound (65,536 records)
/// at an average of 16 KiB each.
const MAX_FILE_BYTES: u64 = 1 << 30;

#[derive(Serialize, Deserialize)]
struct Saved {
    version: u8,
    values: Vec<ValueRecord>,
    providers: Vec<ProviderRecord<NodeAddr>>,
}

/// Where the records are saved.
#[derive(Debug)]
pub struct SavedRecords {
    path: PathBuf,
}

/// What was read back.
pub type Loaded = (Vec<ValueRecord>, Vec<ProviderRecord<NodeAddr>>);

impl SavedRecords {
    /// The file in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        SavedRecords {
            path: data_dir.join(RECORDS_FILE),
        }
    }

    /// Reads the saved records; none if there is no file. A file that is
    /// not a record file is moved aside with a warning.
    pub fn load(&self) -> Loaded {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Default::default(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; starting with no records", self.path.display());
                return Default::default();
            }
        };
        match parse(BufReader::new(file.take(MAX_FILE_BYTES))) {
            Ok(loaded) => loaded,
            Err(why) => {
                self.set_aside(&why);
                Default::default()
            }
        }
    }

    fn set_aside(&self, why: &str) {
        let bad = self.path.with_extension("cbor.bad");
        tracing::warn!(
            "{} is not a record file ({why}); moved to {} and starting with no records",
            self.path.display(),
            bad.display()
        );
        if let Err(e) = std::fs::rename(&self.path, &bad) {
            tracing::warn!("cannot move {} aside: {e}", self.path.display());
        }
    }

    /// Writes the records (atomically: a temporary file renamed over the
    /// old one).
    pub fn save<'a>(
        &self,
        values: impl Iterator<Item = &'a ValueRecord>,
        providers: impl Iterator<Item = &'a ProviderRecord<NodeAddr>>,
    ) -> std::io::Result<()> {
        let tmp = self.path.with_extension("cbor.tmp");
        let file = std::fs::File::create(&tmp)?;
        let mut writer = BufWriter::new(file);
        encode(values, providers, &mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Reads a record file's contents from `reader`; the error says why they
/// are not a record file. Split from [`SavedRecords::load`] so that the
/// fuzz targets can feed it bytes without a file.
pub(crate) fn parse(reader: impl Read) -> Result<Loaded, String> {
    match ciborium::from_reader::<Saved, _>(reader) {
        Ok(saved) if saved.version == FORMAT_VERSION => Ok((saved.values, saved.providers)),
        Ok(saved) => Err(format!("format version {} is not {FORMAT_VERSION}", saved.version)),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the contents of a record file to `writer`.
pub(crate) fn encode<'a>(
    values: impl Iterator<Item = &'a ValueRecord>,
    providers: impl Iterator<Item = &'a ProviderRecord<NodeAddr>>,
    writer: impl Write,
) -> std::io::Result<()> {
    let saved = Saved {
        version: FORMAT_VERSION,
        values: values.cloned().collect(),
        providers: providers.cloned().collect(),
    };
    ciborium::into_writer(&saved, writer).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use shoal_overlay::{Instant, Key};

    #[test]
    fn records_round_trip_and_a_bad_file_is_set_aside_not_lost() {
        let dir = std::env::temp_dir().join(format!("shoal-saved-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let saved = SavedRecords::new(&dir);
        assert_eq!(saved.load(), Loaded::default());
        let value = ValueRecord {
            key: Key::of_content(b"k"),
            value: b"v".to_vec(),
            seq: 1,
            expires: Instant::from_micros(10),
            publisher: vec![1; 32],
            signature: vec![2; 64],
        };
        saved.save([&value].into_iter(), std::iter::empty()).unwrap();
        assert_eq!(saved.load(), (vec![value], Vec::new()));
        std::fs::write(dir.join(RECORDS_FILE), b"not cbor at all").unwrap();
        assert_eq!(saved.load(), Loaded::default());
        assert_eq!(std::fs::read(dir.join("records.cbor.bad")).unwrap(), b"not cbor at all");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
