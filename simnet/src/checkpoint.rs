//! Checkpoint files: a long run's whole state on disk, so that it can stop
//! and go on later (another process, another day) and end exactly as the
//! uninterrupted run ends, trace hash included.
//!
//! A file is a header naming the format, the BLAKE3 hash of the executable
//! that wrote it and the BLAKE3 hash of the state, then the state in CBOR.
//! Only that executable resumes it: another build may simulate differently,
//! and a resumed run would then be neither the old run nor a new one. The
//! state's hash catches a file damaged on disk or cut short; beyond that a
//! checkpoint is trusted as the user's own output, not checked field by
//! field.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First bytes of a checkpoint file, with the format's version.
const MAGIC: &[u8; 24] = b"shoal-simnet checkpoint3";
/// Where the state's hash sits: after the magic and the build's hash.
const STATE_HASH_AT: u64 = MAGIC.len() as u64 + 32;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The file is not a checkpoint.
    #[error("{0}: not a shoal-simnet checkpoint (or one of another format version); name the file --checkpoint wrote")]
    NotACheckpoint(PathBuf),
    /// Another executable wrote it.
    #[error(
        "{0}: written by another build of shoal-simnet; resume it with the executable that started the run \
         (another build may simulate differently)"
    )]
    OtherBuild(PathBuf),
    /// The state does not decode, or is not the state that was written.
    #[error("{path}: damaged checkpoint ({reason}); resume from a copy of it, or start the run again")]
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
    move |error| CheckpointError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The BLAKE3 hash of the running executable, read once: the file a
/// process runs stays readable through /proc/self/exe even when a rebuild
/// has replaced it on disk.
fn build_id() -> Result<[u8; 32], CheckpointError> {
    static BUILD: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(id) = BUILD.get() {
        return Ok(*id);
    }
    let exe = Path::new("/proc/self/exe");
    let bytes = match fs::read(exe) {
        Ok(bytes) => bytes,
        Err(_) => {
            let exe = std::env::current_exe().map_err(io(exe))?;
            fs::read(&exe).map_err(io(&exe))?
        }
    };
    Ok(*BUILD.get_or_init(|| *blake3::hash(&bytes).as_bytes()))
}

/// Hashes what passes through it.
struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes `state` to `path` whole or not at all: into `PATH.tmp`, synced,
/// then renamed over `path`. Returns the bytes written.
pub fn save<T: Serialize>(path: &Path, state: &T) -> Result<u64, CheckpointError> {
    let build = build_id()?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = write_state(&tmp, &build, state).and_then(|n| {
        fs::rename(&tmp, path).map_err(io(path))?;
        Ok(n)
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let written = written?;
    // The rename is durable once the directory is synced.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(written)
}

fn write_state<T: Serialize>(tmp: &Path, build: &[u8; 32], state: &T) -> Result<u64, CheckpointError> {
    let mut file = File::create(tmp).map_err(io(tmp))?;
    file.write_all(MAGIC).map_err(io(tmp))?;
    file.write_all(build).map_err(io(tmp))?;
    file.write_all(&[0; 32]).map_err(io(tmp))?; // the state's hash, below
    // Buffered before the hash: BLAKE3 is fast on large pieces only.
    let mut out = BufWriter::with_capacity(
        1 << 20,
        Hashing {
            inner: file,
            hasher: blake3::Hasher::new(),
        },
    );
    ciborium::into_writer(state, &mut out).map_err(|e| match e {
        ciborium::ser::Error::Io(source) => io(tmp)(source),
        ciborium::ser::Error::Value(reason) => CheckpointError::Encode(reason),
    })?;
    let Hashing {
        inner: mut file,
        hasher,
    } = out.into_inner().map_err(|e| io(tmp)(e.into_error()))?;
    file.seek(SeekFrom::Start(STATE_HASH_AT)).map_err(io(tmp))?;
    file.write_all(hasher.finalize().as_bytes()).map_err(io(tmp))?;
    file.sync_all().map_err(io(tmp))?;
    file.metadata().map(|m| m.len()).map_err(io(tmp))
}

/// Reads a state [`save`] wrote, refusing files from another build and
/// files whose state is not the one written.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let damaged = |reason: &str| CheckpointError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let mut file = File::open(path).map_err(io(path))?;
    let mut magic = [0u8; MAGIC.len()];
    let (mut build, mut state_hash) = ([0u8; 32], [0u8; 32]);
    let header = file
        .read_exact(&mut magic)
        .and_then(|()| file.read_exact(&mut build))
        .and_then(|()| file.read_exact(&mut state_hash));
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
    let mut input = BufReader::with_capacity(
        1 << 20,
        Hashing {
            inner: file,
            hasher: blake3::Hasher::new(),
        },
    );
    let state = ciborium::from_reader(&mut input).map_err(|e| match e {
        ciborium::de::Error::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            damaged("the file ends early")
        }
        ciborium::de::Error::Io(source) => io(path)(source),
        other => damaged(&other.to_string()),
    })?;
    if !input.fill_buf().map_err(io(path))?.is_empty() {
        return Err(damaged("bytes after the state"));
    }
    if input.into_inner().hasher.finalize().as_bytes() != &state_hash {
        return Err(damaged("the state is not the one written: its hash differs"));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file named `name` in a directory of its own (removed by the test).
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-checkpoint-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn remove(path: &Path) {
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_saved_state_loads_back_and_leaves_no_temporary_file() {
        let path = scratch("round-trip");
        let state: Vec<(u64, String)> = (0..1000).map(|i| (i * 7, format!("peer {i}"))).collect();
        let written = save(&path, &state).unwrap();
        assert_eq!(written, fs::metadata(&path).unwrap().len());
        assert!(!path.with_file_name("round-trip.tmp").exists());
        assert_eq!(load::<Vec<(u64, String)>>(&path).unwrap(), state);
        remove(&path);
    }

    #[test]
    fn a_file_another_executable_wrote_is_refused_as_another_build() {
        let path = scratch("other-build");
        save(&path, &vec![1u32, 2, 3]).unwrap();
        // Another executable writes its own hash where this one's stands;
        // the state and the state's hash are untouched, so nothing but the
        // build tells the two apart.
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len() + 5] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let refused = load::<Vec<u32>>(&path).unwrap_err();
        assert!(matches!(refused, CheckpointError::OtherBuild(_)), "{refused:?}");
        assert!(refused.to_string().contains("another build"), "{refused}");
        // Put back, it loads: the refusal was the build's alone.
        bytes[MAGIC.len() + 5] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), vec![1, 2, 3]);
        remove(&path);
    }

    #[test]
    fn a_changed_state_hash_a_cut_state_or_trailing_bytes_are_damage() {
        let path = scratch("damaged");
        save(&path, &vec![9u8; 100]).unwrap();
        let good = fs::read(&path).unwrap();
        let mut hash_changed = good.clone();
        hash_changed[STATE_HASH_AT as usize] ^= 1;
        fs::write(&path, &hash_changed).unwrap();
        let refused = load::<Vec<u8>>(&path).unwrap_err();
        assert!(matches!(refused, CheckpointError::Damaged { .. }), "{refused:?}");
        assert!(refused.to_string().contains("its hash differs"), "{refused}");
        fs::write(&path, &good[..good.len() - 10]).unwrap();
        let refused = load::<Vec<u8>>(&path).unwrap_err();
        assert!(refused.to_string().contains("the file ends early"), "{refused}");
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        let refused = load::<Vec<u8>>(&path).unwrap_err();
        assert!(refused.to_string().contains("bytes after the state"), "{refused}");
        fs::write(&path, &good[..MAGIC.len() + 10]).unwrap();
        assert!(matches!(
            load::<Vec<u8>>(&path),
            Err(CheckpointError::NotACheckpoint(_))
        ));
        remove(&path);
    }
}
