//! Who a peer is and how to reach it.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Key;

/// How a driver names and reaches a peer.
///
/// The simulator uses a `u32` index, the real node a libp2p peer id with its
/// addresses. The core only stores, compares and hands these back.
pub trait Addr: Clone + Eq + Ord + Debug + Serialize + DeserializeOwned + 'static {
    /// Whether this address may belong to the peer whose key is `key`.
    ///
    /// The node checks that the peer id's public key hashes to `key`, so a
    /// peer cannot claim a position it does not own. Addresses that carry no
    /// identity (the simulator's indices) accept every key.
    fn matches_key(&self, key: &Key) -> bool {
        let _ = key;
        true
    }
}

impl Addr for u32 {}
impl Addr for u64 {}

/// A peer as the overlay knows it: its key and its address.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct PeerInfo<A> {
    /// The peer's key: BLAKE3 of its public key.
    pub key: Key,
    /// How to reach it.
    pub addr: A,
}

impl<A> PeerInfo<A> {
    /// A peer with this key and address.
    pub fn new(key: Key, addr: A) -> Self {
        PeerInfo { key, addr }
    }
}

/// Whether a peer serves the overlay or only uses it.
///
/// Clients (a laptop that only fetches, a CLI) never enter routing tables,
/// so lookups never wait on peers that come and go.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Mode {
    /// Answers requests and is placed in routing tables.
    #[default]
    Server,
    /// Sends requests only; kept out of routing tables.
    Client,
}
