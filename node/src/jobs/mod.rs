//! Compute slots and jobs: `client.jobs()`.
//!
//! A peer that offers slots ([`ComputeConfig::slots`] > 0) runs an
//! [`executor`]: it publishes its [`SlotOffer`](shoal_resources::compute::SlotOffer)
//! (a value record at its offer key, and provider records at its slot
//! classes — one per kind, one per label), answers probes and claims on
//! `/shoal/jobs/1` ([`protocol`]), runs jobs on the engine of
//! `shoal_resources::compute::engine`, and stops a job whose lease lapses.
//!
//! Any peer submits ([`submit`]): it shares the module and inputs as
//! blobs, places the job with the sans-IO
//! [`Placement`](shoal_resources::compute::Placement) (candidates from the
//! slot class and the inputs' providers, `d` probes, claim the best,
//! queue where shortest), holds the job's lease and renews it, mirrors its
//! output ([`log`]), and keeps the job's record at the job's home (the
//! peers nearest its key), so `status` and `wait` work from any peer.
//!
//! The job's record is fenced: it changes only through the placement it
//! names (executor and token), and it ends once
//! ([`JobRecord`](shoal_resources::compute::JobRecord)). In this version
//! the submitter writes it; supervision by the home, which lets the
//! submitter leave, builds on it.

pub mod executor;
pub mod home;
pub mod log;
pub mod output;
pub mod protocol;
pub mod submission;
pub mod submit;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use shoal_overlay::{Instant, Key};
use shoal_resources::compute::engine::WasmEngine;

pub use output::{OutputChunk, OutputView};
pub use protocol::JOBS_PROTOCOL;
pub use submit::{JobView, PlacementView, SlotView, Submit, SubmitError};

use crate::client::Client;

/// What a peer offers and how it runs jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComputeConfig {
    /// Slots offered (0: none; this peer only submits).
    pub slots: u32,
    /// Memory of each slot, bytes: the most a job here may use.
    pub slot_memory: u64,
    /// This peer's labels (`--label KEY=VALUE`), matched by `--where`.
    pub labels: BTreeMap<String, String>,
    /// Whether native commands run here (only for `trust`).
    pub allow_native: bool,
    /// The peers whose native commands run here.
    pub trust: Vec<PeerId>,
    /// The term of a job's tenure: an executor cut off from the job's home
    /// stops the job within it, and the home places the job again after it.
    pub lease_term: Duration,
    /// A job's time limit when it names none.
    pub default_timeout: Duration,
    /// Bytes a job may write under `/out`.
    pub out_bytes: u64,
    /// Bytes a job may write to stdout and stderr together.
    pub log_bytes: u64,
    /// Candidates probed per placement (`d` of power-of-d choices).
    pub probes: usize,
    /// How often a stepping module (one that exports `shoal_step`) running
    /// here is saved whole while it goes on, and its home keeps it: a
    /// crash of this peer then costs it at most this much work. Zero: only
    /// when it is moved or drained.
    pub snapshot_every: Duration,
}

impl Default for ComputeConfig {
    /// No slots; the defaults of everything else.
    fn default() -> Self {
        ComputeConfig {
            slots: 0,
            slot_memory: 1 << 30,
            labels: BTreeMap::new(),
            allow_native: false,
            trust: Vec::new(),
            lease_term: Duration::from_secs(10),
            default_timeout: Duration::from_secs(3600),
            out_bytes: 1 << 30,
            log_bytes: 64 << 20,
            probes: 2,
            snapshot_every: Duration::from_secs(60),
        }
    }
}

/// A node's compute state: its executor (if it offers slots), the
/// engine, and the jobs it submitted.
pub(crate) struct Compute {
    pub(crate) config: ComputeConfig,
    pub(crate) engine: Arc<WasmEngine>,
    pub(crate) executor: Option<Arc<executor::Executor>>,
    pub(crate) submitted: Mutex<submit::Submissions>,
    pub(crate) offers: Mutex<submit::OfferCache>,
    /// Held while a slot class or an offer is looked up for the cache.
    pub(crate) lookups: tokio::sync::Mutex<()>,
    /// Files shared as modules or inputs: path → (size, modified, id).
    pub(crate) shared: Mutex<std::collections::HashMap<std::path::PathBuf, (u64, std::time::SystemTime, Key)>>,
    /// Watches of jobs open to each executor: a queue of thousands waits
    /// for its turn here instead of holding a stream each.
    pub(crate) watching: Mutex<std::collections::HashMap<PeerId, Arc<tokio::sync::Semaphore>>>,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Compute {
    pub(crate) fn new(
        config: ComputeConfig,
        data_dir: &std::path::Path,
        local: PeerId,
    ) -> Result<Self, crate::NodeError> {
        let engine = Arc::new(WasmEngine::new().map_err(|e| crate::NodeError::Task(e.to_string()))?);
        let executor = if config.slots > 0 {
            Some(Arc::new(
                executor::Executor::new(config.clone(), engine.clone(), data_dir, local)
                    .map_err(|e| crate::NodeError::Task(format!("cannot prepare the executor: {e}")))?,
            ))
        } else {
            None
        };
        Ok(Compute {
            config,
            engine,
            executor,
            submitted: Mutex::default(),
            offers: Mutex::default(),
            lookups: tokio::sync::Mutex::new(()),
            shared: Mutex::default(),
            watching: Mutex::default(),
        })
    }
}

/// Jobs: submit, watch, cancel, list; the swarm's slots.
#[derive(Clone, Copy, Debug)]
pub struct Jobs<'a> {
    client: &'a Client,
}

impl Client {
    /// Compute slots and jobs on this node.
    pub fn jobs(&self) -> Jobs<'_> {
        Jobs { client: self }
    }
}

/// Microseconds since the Unix epoch of a core instant.
pub(crate) fn micros(at: Instant) -> u64 {
    at.as_micros()
}
