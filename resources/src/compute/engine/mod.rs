//! Running jobs on this machine (feature `compute-engine`): WebAssembly
//! modules in wasmtime's sandbox ([`wasm`]) and, for trusted submitters,
//! native commands under rlimits ([`native`]).
//!
//! Both run a job in a directory of its own that holds `in/` (its inputs,
//! read-only to a module) and `out/` (what it writes; capped), stream its
//! stdout and stderr to a [`Sink`] as they are written (capped together),
//! and stop it on its timeout or when its [`Cancel`] is set. Unlike the
//! sans-IO machines beside it, the engine runs threads and processes: it is
//! the machine's own CPU. Time still comes from the driver: each run is
//! given a [`Clock`], which it reads for its deadline.

/// The driver's clock, read by a run for its deadline (the node passes
/// `std::time::Instant::now`).
pub type Clock = fn() -> std::time::Instant;

pub mod native;
pub mod snapshot;
pub mod wasm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use native::NativeRunner;
pub use wasm::{Warm, WasmEngine};

/// Which of a job's output streams bytes were written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where a running job's output goes, as it is written.
pub trait Sink: Send + Sync + 'static {
    /// `bytes` were written to `stream`.
    fn write(&self, stream: Stream, bytes: &[u8]);
}

/// What a job may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory, bytes: a module's linear memories together; a native
    /// command's address space.
    pub memory: u64,
    /// Wall-clock time from start.
    pub timeout: Duration,
    /// Bytes under `out/`, all files together.
    pub out_bytes: u64,
    /// Bytes of stdout and stderr together.
    pub log_bytes: u64,
}

/// One run of a job: what it is given and where its output goes.
#[derive(Clone)]
pub struct Run<'a> {
    /// Its arguments (a module's first is its program name).
    pub args: &'a [String],
    /// Its environment (nothing else is given).
    pub env: &'a [(String, String)],
    /// Its directory.
    pub dir: &'a JobDir,
    /// What it may use.
    pub limits: Limits,
    /// Where its stdout and stderr go.
    pub sink: Arc<dyn Sink>,
    /// Stops it.
    pub cancel: &'a Cancel,
    /// Pauses a stepping module ([`snapshot`]), or has it saved while it
    /// goes on; any other job ignores it.
    pub pause: &'a Pause,
    /// Tells the time, for its deadline.
    pub clock: Clock,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("args", &self.args)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Stops a running job from another thread.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks the job to stop; it does within a tick of the engine.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Asks a stepping module's run ([`snapshot`]), from another thread, to
/// save the module between two steps: and go on (a *pre-copy*: most of
/// the state moves while the job still runs), or and stop.
#[derive(Clone, Debug, Default)]
pub struct Pause {
    stop: Arc<AtomicBool>,
    /// 0: nothing asked; 1: a save asked; 2: saved; 3: the save failed.
    save: Arc<std::sync::atomic::AtomicU8>,
}

impl Pause {
    /// Save after the step under way and end the run with
    /// [`RunError::Paused`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether [`Pause::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Save after the step under way, and go on.
    pub fn save(&self) {
        self.save.store(1, Ordering::Relaxed);
    }

    /// Whether the save asked for is done: `Some(true)` saved,
    /// `Some(false)` failed, `None` not yet (or none asked).
    pub fn saved(&self) -> Option<bool> {
        match self.save.load(Ordering::Acquire) {
            2 => Some(true),
            3 => Some(false),
            _ => None,
        }
    }

    /// The run's side: whether a save is asked for (and so taken up).
    pub fn take_save(&self) -> bool {
        self.save
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// The run's side: the save asked for is done (or failed).
    pub fn done_saving(&self, ok: bool) {
        self.save.store(if ok { 2 } else { 3 }, Ordering::Release);
    }
}

/// Why a job did not run to an exit of its own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum RunError {
    /// The bytes are not a WebAssembly module at all.
    #[error("not a WebAssembly module (it does not start with \\0asm)")]
    NotWasm,
    /// The module does not validate or compile.
    #[error("the module does not validate: {0}")]
    Invalid(String),
    /// The module imports something the sandbox does not offer.
    #[error("the module imports what the sandbox does not offer (WASI preview 1 only): {0}")]
    Import(String),
    /// The module has no `_start` (it is not a WASI command).
    #[error("the module exports no `_start` function (build it as a WASI command)")]
    NoStart,
    /// The module trapped.
    #[error("the job trapped: {0}")]
    Trap(String),
    /// It asked for more memory than its limit.
    #[error("the job ran out of memory (limit {limit} bytes)")]
    OutOfMemory {
        /// The limit, bytes.
        limit: u64,
    },
    /// It ran past its timeout.
    #[error("the job ran past its timeout of {0:?}")]
    Timeout(Duration),
    /// It was cancelled (by its submitter, or because its lease lapsed).
    #[error("the job was cancelled")]
    Cancelled,
    /// It was paused between two steps and saved under `ckpt/` (to go on
    /// from there, here or elsewhere).
    #[error("the job was paused and saved ({memory} bytes of memory)")]
    Paused {
        /// Bytes of memory saved.
        memory: u64,
    },
    /// It wrote more than its cap under `out/`.
    #[error("the job wrote more than {cap} bytes under /out")]
    OutputOverCap {
        /// The cap, bytes.
        cap: u64,
    },
    /// It wrote more than its cap to stdout and stderr.
    #[error("the job wrote more than {cap} bytes to stdout and stderr")]
    LogOverCap {
        /// The cap, bytes.
        cap: u64,
    },
    /// The command could not be started.
    #[error("the command could not be started: {0}")]
    Spawn(String),
    /// Its directory could not be prepared or read.
    #[error("the job's directory: {0}")]
    Io(String),
}

impl RunError {
    /// The exit code a job that ended this way reports, after the shell's
    /// conventions: 124 for a timeout (as `timeout(1)`), 130 cancelled (as
    /// an interrupt), 137 out of memory (as a kill), 134 a trap (as an
    /// abort), 125 a job that could not be run at all.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Timeout(_) => 124,
            RunError::Cancelled | RunError::Paused { .. } => 130,
            RunError::OutOfMemory { .. } => 137,
            RunError::Trap(_) | RunError::OutputOverCap { .. } | RunError::LogOverCap { .. } => 134,
            _ => 125,
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Its exit code (from [`RunError::exit_code`] if it failed).
    pub exit_code: i32,
    /// Why it failed, if it did not exit on its own.
    pub error: Option<RunError>,
}

impl Outcome {
    /// A run that exited on its own with `exit_code`.
    pub fn exited(exit_code: i32) -> Self {
        Outcome { exit_code, error: None }
    }

    /// A run that failed with `error` (the exit code is the error's).
    pub fn failed(error: RunError) -> Self {
        Outcome {
            exit_code: error.exit_code(),
            error: Some(error),
        }
    }
}

/// A job's directory: `in/` and `out/` below `root`.
#[derive(Clone, Debug)]
pub struct JobDir {
    root: PathBuf,
}

impl JobDir {
    /// Creates (or reuses) `root` with `in/`, `out/` and `ckpt/`.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("in"))?;
        std::fs::create_dir_all(root.join("out"))?;
        std::fs::create_dir_all(root.join("ckpt"))?;
        Ok(JobDir {
            root: root.to_path_buf(),
        })
    }

    /// The job directory at `root`, as [`create`](Self::create) made it.
    pub fn at(root: &Path) -> Self {
        JobDir {
            root: root.to_path_buf(),
        }
    }

    /// The directory itself (a native command's working directory).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where inputs go, one file per input name.
    pub fn inputs(&self) -> PathBuf {
        self.root.join("in")
    }

    /// What the job writes.
    pub fn outputs(&self) -> PathBuf {
        self.root.join("out")
    }

    /// The job's checkpoint: what it keeps there is saved when it exits
    /// with [`CHECKPOINT_EXIT`] (or when its submitter asks), and given back
    /// to it when it runs again, here or on another peer.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("ckpt")
    }

    /// The directories whose bytes count against the `/out` cap: `/out`
    /// and `/ckpt`.
    pub fn capped(&self) -> [PathBuf; 2] {
        [self.outputs(), self.checkpoints()]
    }
}

/// The exit code by which a job says "I saved my state under `/ckpt`: run
/// me again" (HTCondor's self-checkpointing jobs use an exit code the same
/// way, `checkpoint_exit_code`). The executor saves `/ckpt` as a blob, has
/// the job's home record it, and starts the job again at once with
/// `/ckpt` as it left it; a job placed again elsewhere finds it restored.
pub const CHECKPOINT_EXIT: i32 = 85;

/// Bytes under `dirs` together, stopping early once past `stop_after`.
pub fn trees_bytes(dirs: &[PathBuf], stop_after: u64) -> u64 {
    let mut total = 0u64;
    for dir in dirs {
        total = total.saturating_add(tree_bytes(dir, stop_after.saturating_sub(total)));
        if total > stop_after {
            break;
        }
    }
    total
}

/// Bytes in the files under `dir` (not following links), stopping early
/// once past `stop_after`.
pub fn tree_bytes(dir: &Path, stop_after: u64) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
            if total > stop_after {
                return total;
            }
        }
    }
    total
}

/// The bytes left of a job's stdout and stderr cap, shared by both streams.
#[derive(Debug)]
struct LogBudget {
    left: AtomicU64,
    over: AtomicBool,
}

impl LogBudget {
    fn new(cap: u64) -> Arc<Self> {
        Arc::new(LogBudget {
            left: AtomicU64::new(cap),
            over: AtomicBool::new(false),
        })
    }

    /// Takes `n` bytes of the budget: how many may be written (all of
    /// them, or what is left, after which the budget is over).
    fn take(&self, n: usize) -> usize {
        let n64 = n as u64;
        let mut left = self.left.load(Ordering::Relaxed);
        loop {
            let take = n64.min(left);
            match self
                .left
                .compare_exchange(left, left - take, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if take < n64 {
                        self.over.store(true, Ordering::Relaxed);
                    }
                    return take as usize;
                }
                Err(now) => left = now,
            }
        }
    }

    fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_log_budget_is_shared_and_marks_the_first_write_past_it() {
        let budget = LogBudget::new(10);
        assert_eq!(budget.take(4), 4);
        assert!(!budget.is_over());
        assert_eq!(budget.take(6), 6);
        assert!(!budget.is_over(), "exactly the cap is allowed");
        assert_eq!(budget.take(1), 0);
        assert!(budget.is_over());
    }

    #[test]
    fn tree_bytes_counts_nested_files_and_stops_early() {
        let dir = std::env::temp_dir().join(format!("shoal-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("x"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("a/b/y"), [0u8; 50]).unwrap();
        assert_eq!(tree_bytes(&dir, u64::MAX), 150);
        assert!(tree_bytes(&dir, 10) > 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
