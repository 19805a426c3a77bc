//! `shoal-overlay`: the sans-IO Kademlia core of shoal.
//!
//! Every resource in shoal has a 256-bit [`Key`]; its *home* is the `r`
//! live peers closest to that key by XOR distance. This crate finds those
//! peers and keeps records there: it is one peer's routing table, iterative
//! lookups, signed value and provider records, and the replication that
//! keeps records at their home as peers come and go.
//!
//! # What this crate never does
//!
//! No sockets, no async runtime, no threads, no system clock, no global
//! random number generator. Time arrives as an [`Instant`] with every input;
//! randomness comes from an [`Rng`] seeded by the driver. The same core runs
//! under the real node (libp2p and tokio) and under `shoal-simnet`, which
//! drives 10^5–10^6 of them in virtual time and reproduces a run from its
//! seed.
//!
//! # Driving a core
//!
//! [`Overlay`] takes inputs through `handle_*` and commands (`find_node`,
//! `put_value`, ...) that return a [`QueryId`]; after each, the driver
//! drains [`Overlay::poll_transmit`] (requests to send, each with a
//! [`RequestId`] to hand back with the answer), then [`Overlay::poll_event`]
//! (results, tagged with their `QueryId`), then asks
//! [`Overlay::poll_timeout`] when to wake it next.
//!
//! ```
//! use std::sync::Arc;
//! use shoal_overlay::{Config, Instant, Key, Overlay, PeerInfo, Signer, Verifier};
//!
//! #[derive(Debug)]
//! struct Insecure(Vec<u8>);
//! impl Signer for Insecure {
//!     fn public_key(&self) -> &[u8] { &self.0 }
//!     fn sign(&self, _message: &[u8]) -> Vec<u8> { Vec::new() }
//! }
//! let config = Arc::new(Config::new(Verifier(|_, _, _| true)));
//! let local = PeerInfo::new(Key::of_public_key(b"peer 1"), 1u32);
//! let mut core = Overlay::new(config, local, Box::new(Insecure(b"peer 1".to_vec())), 7, Instant::ZERO).unwrap();
//! let seed = PeerInfo::new(Key::of_public_key(b"peer 2"), 2u32);
//! core.bootstrap(Instant::ZERO, vec![seed]).unwrap();
//! let first = core.poll_transmit().expect("the self-lookup asks the seed");
//! assert_eq!(first.to.addr, 2);
//! ```
//!
//! # Layout, in reading order
//!
//! - [`key`](Key): keys, XOR distance, prefix arithmetic; `time`:
//!   [`Instant`], the driver's clock as a value; `rng`: [`Rng`].
//! - `config`: [`Config`] and the constants ([`K`], [`ALPHA`],
//!   [`REPLICATION`]).
//! - `peer`: [`PeerInfo`], a peer's key and address; `rtt`: round-trip
//!   estimates that set request timeouts.
//! - `routing`: [`RoutingTable`], k-buckets with ping-before-evict, a
//!   replacement cache and stale marking.
//! - `lookup`: [`Lookup`], the iterative lookup state machine with α in
//!   flight and optional disjoint paths; `query`: ids, events and
//!   statistics of the commands a driver gives.
//! - `record`: [`ValueRecord`], [`ProviderRecord`] (or a decline),
//!   [`Signer`], [`Verifier`] (of signatures), the bounded [`RecordStore`].
//! - `wire`: [`Request`], [`Response`] and their CBOR codec.
//! - `overlay`: [`Overlay`], which ties them together — a folder whose
//!   `mod.rs` lists its parts (requests, queries, peers, homes, records,
//!   batched provide, bootstrap, maintenance, leave).

mod config;
mod key;
mod lookup;
mod overlay;
mod peer;
mod query;
mod record;
mod rng;
mod routing;
mod rtt;
mod time;
pub mod wire;

pub use config::{ALPHA, Config, ConfigError, K, REPLICATION};
pub use key::{Distance, KEY_BITS, Key, ParseKeyError};
pub use lookup::{Lookup, MAX_ATTEMPTS};
pub use overlay::Overlay;
pub use peer::{Addr, Mode, PeerInfo};
pub use query::{CommandError, Event, QueryId, QueryStats, RequestId};
pub use record::{
    MAX_CREDENTIAL_BYTES, MAX_VALUE_BYTES, ProviderRecord, PutOutcome, RecordError, RecordStore, Signer, StoreLimits,
    Successor, ValueRecord, Verifier,
};
pub use rng::Rng;
pub use routing::{Failed, Observed, RoutingTable, STALE_PROBES};
pub use time::Instant;
pub use wire::{Request, Response};

/// A request the core wants sent: to `to`, under `id`; the driver reports
/// the answer with [`Overlay::handle_response`] or its failure with
/// [`Overlay::handle_failure`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub struct Transmit<A> {
    /// Names the request; hand it back with the answer.
    pub id: RequestId,
    /// The peer to send to.
    pub to: PeerInfo<A>,
    /// The sender's mode, carried on the wire.
    pub mode: Mode,
    /// The request.
    pub request: Request<A>,
}
