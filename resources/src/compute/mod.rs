//! Compute slots (in progress, issue 18): the sans-IO parts.
//!
//! - [`job`]: a job's spec, its key, and the fenced record its home keeps
//!   (only the current placement changes it; a result is committed once).
//! - [`offer`]: a peer's slot offer, a value record at each slot class it
//!   belongs to (its kinds, its labels); what a job needs of a slot.
//! - [`place`]: placing one job without a negotiator — probe `d`
//!   candidates (input holders first), claim the best, queue where the
//!   queue is shortest when every slot is busy.
//! - [`lease`]: fenced slot leases as an executor grants them, tokens that
//!   survive a restart.
//! - [`queue`]: an executor's jobs waiting for a slot, fair across
//!   submitters.
//!
//! - `engine` (feature `compute-engine`): running a job on this machine —
//!   WebAssembly in wasmtime's sandbox, native commands under rlimits.

#[cfg(feature = "compute-engine")]
pub mod engine;
pub mod job;
pub mod lease;
pub mod offer;
pub mod place;
pub mod queue;

pub use job::{JobError, JobRecord, JobSpec, JobState, Placed};
pub use lease::{Grant, Lease, LeaseError, Leases};
pub use offer::{JobKind, Needs, SlotOffer};
pub use place::{Candidate, Load, PlaceAction, PlaceError, Placement};
pub use queue::{FairQueue, QueueError};
