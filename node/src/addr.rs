//! How the node names peers for the overlay: a libp2p peer id and its addresses.

use libp2p::identity::PublicKey;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use shoal_overlay::{Addr, Key};

/// Most addresses kept or sent for one peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// A peer's libp2p identity and the addresses it can be dialled at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The peer id; its ed25519 public key hashes to the peer's overlay key.
    pub peer: PeerId,
    /// Where to dial it (at most [`MAX_ADDRS_PER_PEER`] are used).
    pub addrs: Vec<Multiaddr>,
}

impl Addr for NodeAddr {
    fn matches_key(&self, key: &Key) -> bool {
        key_of_peer(&self.peer) == Some(*key)
    }
}

/// The overlay key of a peer: BLAKE3 of its raw ed25519 public key, which
/// an ed25519 peer id carries inline. `None` for other kinds of peer id.
pub fn key_of_peer(peer: &PeerId) -> Option<Key> {
    let multihash = peer.as_ref();
    // Code 0 is the identity multihash: the digest is the encoded key itself.
    if multihash.code() != 0 {
        return None;
    }
    let public = PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    Some(Key::of_public_key(&ed25519.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn peer_id_binds_its_key() {
        let keypair = Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let raw = keypair.public().try_into_ed25519().unwrap().to_bytes();
        let key = Key::of_public_key(&raw);
        assert_eq!(key_of_peer(&peer), Some(key));
        let addr = NodeAddr { peer, addrs: vec![] };
        assert!(addr.matches_key(&key));
        assert!(!addr.matches_key(&Key::of_content(b"someone else")));
        assert_eq!(key_of_peer(&PeerId::random()), None, "a random peer id carries no key");
    }
}
