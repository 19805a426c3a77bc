//! `shoal`: a structured peer-to-peer overlay that turns the machines of a
//! LAN into one pool of files, compute slots and devices, with no central
//! coordinator.
//!
//! This facade re-exports the workspace's crates, the way the `libp2p`
//! crate does:
//!
//! - [`overlay`] (`shoal-overlay`): the sans-IO Kademlia core — keys,
//!   routing table, lookups, signed records, replication, wire codec.
//! - [`resources`] (`shoal-resources`): the resource layer — files as
//!   content-addressed blobs, the download planner, the home duties of
//!   pins (one sans-IO machine the node and the simulator both drive), the
//!   blob store.
//! - [`simnet`] (`shoal-simnet`): the deterministic simulator that runs
//!   that core at 10^5–10^6 peers.
//! - [`node`] (`shoal-node`): the real peer, the same core over libp2p;
//!   a running node is a [`node::Client`] with a handle per resource
//!   (`client.files()`, `client.pins()`).
//!
//! `ARCHITECTURE.md` at the root of the repository is the map: the shape
//! every resource follows and where a new one goes.
//!
//! ```
//! use shoal::overlay::Key;
//! let key = Key::of_content(b"abc");
//! assert_eq!(key.to_string().len(), 64);
//! ```

pub use shoal_node as node;
pub use shoal_overlay as overlay;
pub use shoal_resources as resources;
pub use shoal_simnet as simnet;

pub use shoal_overlay::{Key, Overlay, PeerInfo};
