//! `shoal-node`: the real shoal peer. It drives the sans-IO overlay core of
//! `shoal-overlay` over libp2p (TCP with noise and yamux, and QUIC; identify,
//! ping, mDNS) on a tokio runtime.
//!
//! One task owns the swarm and the core; a [`Client`] talks to it over a
//! bounded channel and gets each result back on the query id the core
//! returned. Overlay messages travel as request-response on
//! `/shoal/overlay/2`, framed by [`codec::FrameCodec`] around the overlay's
//! CBOR codec and its size cap. A peer's overlay key is BLAKE3 of its ed25519
//! public key, which its peer id carries ([`addr::key_of_peer`]), so no peer
//! can claim a position it does not own. Records are signed with the node's
//! key ([`identity`]).
//!
//! `shoal up` serves a control API on loopback ([`control`]) that the other
//! subcommands call ([`cli_client`]). A private swarm admits only peers that
//! hold its key ([`admission`]); settings come from flags, `SHOAL_*` and
//! `shoal.toml` ([`settings`]).
//!
//! # Layout, in reading order
//!
//! - [`daemon`]: [`start`], [`NodeConfig`] and the leave sequence — where
//!   everything below is put together.
//! - [`client`]: [`Client`], the handle to a running node, and the
//!   overlay's operations; each resource adds its own handle.
//! - `driver`: the task that owns the swarm and the overlay core; `swarm`:
//!   transports and behaviours.
//! - [`files`]: serving and downloading blobs; `client.files()`.
//! - [`pins`]: pins and the driver of their home duties; `client.pins()`.
//! - [`jobs`]: compute slots — the executor of a peer that offers them,
//!   and submitting, placing and following jobs; `client.jobs()`.
//! - [`handoff`]: a leaving home member hands its copies on.
//! - [`control`] and [`cli_client`]: the HTTP/JSON control API (a route
//!   group per part of the node) and the CLI's typed caller.
//! - [`codec`]: the one framing of every stream (a length, then CBOR).
//! - [`error`]: [`NodeError`], [`PinError`], [`FetchError`](error::FetchError).
//! - [`addr`]: [`NodeAddr`], the overlay address of a peer; [`identity`]:
//!   the key in the data directory, signing and verification.
//! - [`admission`]: swarm keys and the admission handshake; [`limits`]:
//!   caps on inbound connections and the descriptor limit.
//! - [`known`] and [`saved`]: peers and records kept across restarts;
//!   `turns`: one task at a time per key.
//! - [`settings`]: flags, environment and `shoal.toml`; [`fuzzing`]: entry
//!   points of the fuzz targets.

pub mod addr;
pub mod admission;
pub mod cli_client;
pub mod client;
pub mod codec;
pub mod control;
pub mod daemon;
pub mod devices;
mod driver;
pub mod error;
pub mod files;
pub mod fuzzing;
pub mod handoff;
pub mod identity;
pub mod jobs;
pub mod known;
pub mod leases;
pub mod limits;
pub mod pins;
pub mod quorum;
pub mod saved;
pub mod settings;
pub(crate) mod streams;
mod swarm;
mod turns;

pub use addr::NodeAddr;
pub use client::{Client, FoundNodes, Provided, Refusal};
pub use daemon::{NodeConfig, start};
pub use error::{NodeError, PinError};
pub use files::Files;
pub use jobs::{ComputeConfig, Jobs};
pub use libp2p::{Multiaddr, PeerId};
pub use pins::{PinView, Pins};
