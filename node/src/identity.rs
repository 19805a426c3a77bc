//! The node's ed25519 identity, kept in its data directory.

use std::io::Write;
use std::path::Path;

use libp2p::identity::{Keypair, ed25519};
use shoal_overlay::{Key, Signer, Verifier};

/// File in the data directory that holds the identity key.
pub const IDENTITY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("cannot use identity file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold an ed25519 key.
    #[error("identity file {path} is not an ed25519 key; move it away to create a new identity")]
    Malformed {
        /// The file.
        path: String,
    },
}

/// Loads the keypair from `data_dir`, or creates one (readable by the owner
/// only) on first start.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let shown = path.display().to_string();
    let io = |source| IdentityError::Io {
        path: shown.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes).ok_or(IdentityError::Malformed { path: shown }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|_| IdentityError::Malformed { path: shown.clone() })?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&path).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(keypair)
        }
        Err(e) => Err(io(e)),
    }
}

/// Reads the contents of an identity file: an ed25519 keypair in libp2p's
/// protobuf encoding; `None` for anything else.
pub(crate) fn parse(bytes: &[u8]) -> Option<Keypair> {
    let keypair = Keypair::from_protobuf_encoding(bytes).ok()?;
    keypair.clone().try_into_ed25519().ok()?;
    Some(keypair)
}

/// Signs overlay records with the node's ed25519 key.
#[derive(Debug)]
pub struct NodeSigner {
    keypair: ed25519::Keypair,
    public: Vec<u8>,
}

impl NodeSigner {
    /// A signer for `keypair`; `None` when it is not ed25519.
    pub fn new(keypair: &Keypair) -> Option<Self> {
        let keypair = keypair.clone().try_into_ed25519().ok()?;
        let public = keypair.public().to_bytes().to_vec();
        Some(NodeSigner { keypair, public })
    }

    /// The overlay key this identity owns.
    pub fn key(&self) -> Key {
        Key::of_public_key(&self.public)
    }
}

impl Signer for NodeSigner {
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.keypair.sign(message)
    }
}

fn verify_ed25519(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ed25519::PublicKey::try_from_bytes(public_key).is_ok_and(|key| key.verify(message, signature))
}

/// The verifier for records signed by nodes.
pub fn verifier() -> Verifier {
    Verifier(verify_ed25519)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_signs() {
        let dir = std::env::temp_dir().join(format!("shoal-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create(&dir).unwrap();
        let again = load_or_create(&dir).unwrap();
        assert_eq!(first.public(), again.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(IDENTITY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let signer = NodeSigner::new(&first).unwrap();
        let signature = signer.sign(b"hello");
        assert!(verify_ed25519(signer.public_key(), b"hello", &signature));
        assert!(!verify_ed25519(signer.public_key(), b"hullo", &signature));
        std::fs::write(dir.join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(load_or_create(&dir), Err(IdentityError::Malformed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
