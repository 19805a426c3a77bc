//! Checkpoint files: a long run's whole state on disk, so that it can stop
//! and go on later (another process, another day) and end exactly as the
//! uninterrupted run ends, trace hash included.
//!
//! A file is a header line naming the format, the BLAKE3 hash of the
//! executable that wrote it, and the state in CBOR. Only that executable
//! resumes it: another build may simulate differently, and a resumed run
//! would then be neither the old run nor a new one.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First bytes of a checkpoint file, with the format's version.
const MAGIC: &[u8; 24] = b"shoal-simnet checkpoint1";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a checkpoint.
    #[error("{0}: not a shoal-simnet checkpoint (or one of another format version)")]
    NotACheckpoint(PathBuf),
    /// Another executable wrote it.
    #[error(
        "{0}: written by another build of shoal-simnet; resume it with the executable that started the run \
         (another build may simulate differently)"
    )]
    OtherBuild(PathBuf),
    /// The state does not decode.
    #[error("{path}: damaged checkpoint: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The state does not encode.
    #[error("cannot encode the checkpoint: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The BLAKE3 hash of the running executable.
fn build_id() -> Result<[u8; 32], CheckpointError> {
    let exe = std::env::current_exe().map_err(io(Path::new("the running executable")))?;
    let bytes = fs::read(&exe).map_err(io(&exe))?;
    Ok(*blake3::hash(&bytes).as_bytes())
}

/// Writes `state` to `path` whole or not at all: into a temporary file
/// beside it, synced, then renamed over it. Returns the bytes written.
pub fn save<T: Serialize>(path: &Path, state: &T) -> Result<u64, CheckpointError> {
    let build = build_id()?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io(&tmp))?;
        out.write_all(&build).map_err(io(&tmp))?;
        ciborium::into_writer(state, &mut out).map_err(|e| match e {
            ciborium::ser::Error::Io(source) => CheckpointError::Io {
                path: tmp.clone(),
                source,
            },
            ciborium::ser::Error::Value(reason) => CheckpointError::Encode(reason),
        })?;
        let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        file.metadata().map(|m| m.len()).map_err(io(&tmp))
    })();
    let written = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, path).map_err(io(path))?;
    // The rename is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(written)
}

/// Reads a state [`save`] wrote, refusing files from another build.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let file = File::open(path).map_err(io(path))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; MAGIC.len()];
    let mut build = [0u8; 32];
    let header = input.read_exact(&mut magic).and_then(|()| input.read_exact(&mut build));
    match header {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(CheckpointError::NotACheckpoint(path.to_owned()));
        }
        Err(e) => return Err(io(path)(e)),
        Ok(()) if &magic != MAGIC => return Err(CheckpointError::NotACheckpoint(path.to_owned())),
        Ok(()) => {}
    }
    if build != build_id()? {
        return Err(CheckpointError::OtherBuild(path.to_owned()));
    }
    ciborium::from_reader(input).map_err(|e| match e {
        ciborium::de::Error::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            CheckpointError::Damaged {
                path: path.to_owned(),
                reason: "the file ends early".into(),
            }
        }
        ciborium::de::Error::Io(source) => CheckpointError::Io {
            path: path.to_owned(),
            source,
        },
        other => CheckpointError::Damaged {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}
