//! Compute slots: the sans-IO parts, driven by the node
//! (`shoal_node::jobs`) and the simulator (`shoal-simnet jobs`), and the
//! engine that runs a job on this machine.
//!
//! - [`job`]: a job's spec, its key, and the fenced record its home keeps
//!   (only the current placement changes it; a result is committed once;
//!   [`job::successor`] is the home's rule for its versions).
//! - [`offer`]: a peer's slot offer (a value record at its offer key) and
//!   the slot classes it is listed at (its kinds, its labels); what a job
//!   needs of a slot.
//! - [`place`]: placing one job without a negotiator — probe the holders
//!   of its inputs and `d` candidates, claim the best, queue where the
//!   queue is shortest when every slot is busy.
//! - [`supervise`]: supervising a job from its home — read its tenure
//!   at the home's majority ([`crate::quorum`]), place it anew from its
//!   newest checkpoint when no executor holds it.
//! - [`queue`]: an executor's jobs waiting for a slot, fair across
//!   submitters.
//! - [`steal`]: an executor handing the back of its queue to peers with
//!   slots free.
//! - `engine` (feature `compute-engine`): running a job on this machine —
//!   WebAssembly in wasmtime's sandbox, native commands under rlimits.

#[cfg(feature = "compute-engine")]
pub mod engine;
pub mod job;
pub mod offer;
pub mod place;
pub mod queue;
pub mod steal;
pub mod supervise;

pub use job::{JobError, JobRecord, JobResult, JobSpec, JobState, Placed};
pub use offer::{JobKind, Needs, SlotOffer};
pub use place::{Candidate, Load, PlaceAction, PlaceError, Placement};
pub use queue::{FairQueue, QueueError};
pub use steal::Steal;
pub use supervise::{Happened, SuperviseAction, Supervision};
