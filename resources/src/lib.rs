//! `shoal-resources`: the resource layer. Its first resource is files:
//! blobs addressed by the BLAKE3 hash of their bytes, pinned with `R`
//! copies at their home.
//!
//! # What this crate never does
//!
//! Its protocol half reads no clock and no global random generator and
//! does no I/O: time comes in as an argument, decisions come out as values
//! (the sans-IO shape of the overlay). Only the local engine, behind the
//! feature `store`, touches the disk; the simulator builds the crate
//! without it and runs the very same machines as the node.
//!
//! # Layout, in reading order
//!
//! - [`blob`]: a blob's id and size, and its 16 KiB chunk-group geometry.
//! - [`ticket`]: tickets (a blob and where to get it) as text.
//! - [`collection`]: a directory as a listing blob.
//! - [`fetch`]: [`FetchPlan`], the download plan across providers (which
//!   groups to ask whom, faster providers given more, liars dropped,
//!   resumption from a bitmap).
//! - `verify`: checking received ranges against the bao tree;
//!   [`proves_size`] checks a provider's proof of a blob's size (a size
//!   from a ticket or a peer is a claim until then).
//! - `value`: the shape of a resource's value record (a magic line, then
//!   CBOR, read back within a cap).
//! - [`home`]: what every home duty shares — membership, the round timer,
//!   a rotating lookup budget, back-off.
//! - [`pin`]: pin records and [`pin::PinDuties`], the home duty of pinned
//!   blobs (fetch, keep, release, decline, look up), driven by the node and
//!   by the simulator.
//! - [`quorum`]: tenure at a quorum — the right to act on a key granted
//!   and kept by a majority of a fixed set of peers, with the argument why
//!   two holders never overlap; job supervision and named leases use it.
//! - [`rehome`]: handing a key's member set, with its state, to its new
//!   home (Paxos among the old set), so that a named lease outlives the
//!   peers that first kept it.
//! - [`compute`]: compute slots — slot offers, placement by power-of-d
//!   choices, fenced slot leases, the executor's fair queue, job records
//!   and the home's rule for them; the engine (feature `compute-engine`)
//!   runs WebAssembly in wasmtime and native commands under rlimits.
//! - [`store`] (feature `store`, on by default): the on-disk blob store
//!   with bao outboards, serving and receiving verified ranges.

pub mod blob;
pub mod collection;
pub mod compute;
pub mod device;
pub mod fetch;
pub mod home;
pub mod lease;
pub mod pin;
pub mod quorum;
pub mod rehome;
#[cfg(feature = "store")]
pub mod store;
pub mod ticket;
mod value;
mod verify;

pub use blob::{BlobInfo, GROUP_BYTES};
pub use fetch::{Failure, FetchPlan, ProviderId};
pub use ticket::{Ticket, TicketError};
pub use verify::proves_size;
