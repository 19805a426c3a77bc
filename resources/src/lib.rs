//! `shoal-resources`: the resource layer. Its first resource is files:
//! blobs addressed by the BLAKE3 hash of their bytes.
//!
//! The protocol half is sans-IO, like the overlay: [`fetch`] plans a
//! download across providers (which groups to ask whom, faster providers
//! given more, liars dropped, resumption from a bitmap), [`ticket`] reads and
//! writes tickets, [`blob`] holds the chunk-group geometry, and
//! [`proves_size`] checks a provider's proof of a blob's size (a size from a
//! ticket or a peer is a claim until then). The local engine,
//! [`store`] (feature `store`, on by default), keeps blobs on disk with their
//! bao outboards and serves and receives verified ranges; the simulator
//! builds this crate without it.

pub mod blob;
pub mod collection;
pub mod fetch;
pub mod home;
pub mod pin;
#[cfg(feature = "store")]
pub mod store;
pub mod ticket;
mod verify;

pub use blob::{BlobInfo, GROUP_BYTES};
pub use fetch::{Failure, FetchPlan, ProviderId};
pub use ticket::{Ticket, TicketError};
pub use verify::proves_size;
