//! Compute slots (in progress, issue 18): the sans-IO parts an executor
//! runs — [`lease`], fenced slot leases whose tokens survive a restart, and
//! [`queue`], the jobs waiting for a slot, fair across submitters. The
//! placement, the slot index, the job record at its home and the
//! WebAssembly engine come next.

pub mod lease;
pub mod queue;

pub use lease::{Grant, Lease, LeaseError, Leases};
pub use queue::{FairQueue, QueueError};
