//! Private swarms: a shared swarm key, and the admission handshake that
//! every connection must pass before the swarm sees it.
//!
//! libp2p's `pnet` wraps the raw TCP socket and so cannot cover QUIC, whose
//! encryption is built in. Admission instead runs as a transport step after
//! the connection is authenticated and multiplexed, on TCP and QUIC alike:
//! the dialer opens the first substream, and both sides prove they hold the
//! swarm key with a keyed BLAKE3 tag over both peer ids (authenticated by
//! noise or TLS) and a fresh nonce from each side:
//!
//! ```text
//! dialer   -> listener : "shoal/a1" | nonce_d (32)
//! listener -> dialer   : nonce_l (32) | tag(K, "listener", D, L, nonce_d, nonce_l)
//! dialer   -> listener : tag(K, "dialer", D, L, nonce_d, nonce_l)
//! ```
//!
//! A tag is bound to the two peer ids of this connection and its nonces, so
//! it is useless anywhere else: a peer without the key learns nothing it can
//! replay or relay. A connection that fails (wrong magic, wrong tag, a
//! closed stream, ten seconds without an answer) is dropped before the swarm
//! reports it, so such a peer never reaches identify, the overlay or a
//! routing table; the swarm logs the refusal as a connection error.

use std::future::Future;
use std::io;
use std::path::Path;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::poll_fn;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;
use libp2p::core::ConnectedPoint;
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox};

/// The first line of a swarm key file.
const KEY_HEADER: &str = "/shoal/swarm-key/1";
/// The first bytes on an admission stream.
pub(crate) const MAGIC: &[u8; 8] = b"shoal/a1";
/// Key files are two short lines; anything longer is not one.
const MAX_KEY_FILE: u64 = 1024;
/// How long a connection may take to pass admission.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The secret every member of a private swarm holds.
#[derive(Clone)]
pub struct SwarmKey {
    /// Derived from the file's secret, so the file's bytes are used for
    /// nothing but this.
    mac_key: [u8; 32],
}

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwarmKey({})", self.fingerprint())
    }
}

/// Why a swarm key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The file is not a swarm key.
    #[error("{path} is not a shoal swarm key: {why} (make one with `shoal key new`)")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// `key new` would overwrite a file.
    #[error("{0} already exists; not overwriting it")]
    Exists(String),
}

impl SwarmKey {
    fn from_secret(secret: &[u8; 32]) -> Self {
        SwarmKey {
            mac_key: blake3::derive_key("shoal swarm admission v1", secret),
        }
    }

    /// Parses the text of a key file: the header line, then 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_HEADER) {
            return Err("the first line must be /shoal/swarm-key/1");
        }
        let hex = lines.next().ok_or("the key line is missing")?;
        if lines.next().is_some() {
            return Err("there is more than the header and one key line");
        }
        let secret = decode_hex(hex).ok_or("the key line must be 64 hex digits")?;
        Ok(Self::from_secret(&secret))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, SwarmKeyError> {
        let name = path.display().to_string();
        let io = |source| SwarmKeyError::Io {
            path: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut text = String::new();
        let read = io::Read::read_to_string(&mut io::Read::take(file, MAX_KEY_FILE + 1), &mut text);
        match read {
            Ok(n) if n as u64 > MAX_KEY_FILE => Err(SwarmKeyError::Malformed {
                path: name,
                why: "the file is too long",
            }),
            Ok(_) => Self::parse(&text).map_err(|why| SwarmKeyError::Malformed { path: name, why }),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(SwarmKeyError::Malformed {
                path: name,
                why: "the file is not text",
            }),
            Err(e) => Err(io(e)),
        }
    }

    /// Makes a new random key and writes it to `path` (mode 0600), refusing
    /// to overwrite anything.
    pub fn create(path: &Path) -> Result<Self, SwarmKeyError> {
        let name = path.display().to_string();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| SwarmKeyError::Io {
            path: name.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let text = format!("{KEY_HEADER}\n{}\n", encode_hex(&secret));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                SwarmKeyError::Exists(name.clone())
            } else {
                SwarmKeyError::Io {
                    path: name.clone(),
                    source,
                }
            }
        })?;
        io::Write::write_all(&mut file, text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| SwarmKeyError::Io { path: name, source })?;
        Ok(Self::from_secret(&secret))
    }

    /// A short public name for the swarm: safe to print, tells two swarm
    /// keys apart.
    pub fn fingerprint(&self) -> String {
        let hash = blake3::derive_key("shoal swarm fingerprint v1", &self.mac_key);
        encode_hex(&hash[..8])
    }

    fn tag(&self, role: &[u8], dialer: &PeerId, listener: &PeerId, nonces: &[u8; 64]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        for part in [role, &dialer.to_bytes(), &listener.to_bytes()] {
            h.update(&(part.len() as u32).to_be_bytes());
            h.update(part);
        }
        h.update(nonces);
        h.finalize()
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The remote did not start the handshake: it runs without a swarm key,
    /// or is not a shoal peer.
    #[error("peer {0} did not open the admission handshake (no swarm key?)")]
    NoHandshake(PeerId),
    /// The remote's proof does not match: it holds another swarm key.
    #[error("peer {0} does not hold this swarm's key")]
    WrongKey(PeerId),
    /// No answer in time.
    #[error("peer {0} did not finish admission within {ADMISSION_TIMEOUT:?}")]
    Timeout(PeerId),
    /// The connection broke during the handshake.
    #[error("admission of peer {peer} failed: {source}")]
    Io {
        /// The remote.
        peer: PeerId,
        /// Why.
        source: io::Error,
    },
}

/// Runs the admission handshake on a fresh connection; the transport's
/// `and_then` step. Hands the connection on only if the remote proved it
/// holds `key`.
pub async fn admit(
    key: SwarmKey,
    local: PeerId,
    (remote, mut muxer): (PeerId, StreamMuxerBox),
    endpoint: ConnectedPoint,
) -> Result<(PeerId, StreamMuxerBox), AdmissionError> {
    let dialer = endpoint.is_dialer();
    let handshake = async {
        let stream = drive(&mut muxer, |m, cx| {
            if dialer {
                m.poll_outbound_unpin(cx)
            } else {
                m.poll_inbound_unpin(cx)
            }
        })
        .await
        .map_err(|source| AdmissionError::Io { peer: remote, source })?;
        let exchange = exchange(&key, dialer, local, remote, stream);
        futures::pin_mut!(exchange);
        // The muxer must keep being polled while the stream talks.
        poll_fn(|cx| {
            if let Err(source) = poll_muxer(&mut muxer, cx) {
                return Poll::Ready(Err(AdmissionError::Io { peer: remote, source }));
            }
            exchange.as_mut().poll(cx)
        })
        .await
    };
    match tokio::time::timeout(ADMISSION_TIMEOUT, handshake).await {
        Ok(Ok(())) => Ok((remote, muxer)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(AdmissionError::Timeout(remote)),
    }
}

/// Polls the muxer's background work until it has nothing more to do.
fn poll_muxer(muxer: &mut StreamMuxerBox, cx: &mut Context<'_>) -> io::Result<()> {
    loop {
        match muxer.poll_unpin(cx) {
            Poll::Ready(Ok(_)) => continue,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(()),
        }
    }
}

/// Waits for `open` to yield a substream, driving the muxer meanwhile.
async fn drive(
    muxer: &mut StreamMuxerBox,
    mut open: impl FnMut(&mut StreamMuxerBox, &mut Context<'_>) -> Poll<io::Result<SubstreamBox>>,
) -> io::Result<SubstreamBox> {
    poll_fn(|cx| {
        poll_muxer(muxer, cx)?;
        open(muxer, cx)
    })
    .await
}

/// The handshake itself on an open `stream`, as the dialer or as the
/// listener. Generic over the stream so that the fuzz targets can play the
/// remote side from bytes in memory.
pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    key: &SwarmKey,
    dialer: bool,
    local: PeerId,
    remote: PeerId,
    mut stream: S,
) -> Result<(), AdmissionError> {
    let io = |source| AdmissionError::Io { peer: remote, source };
    let mut nonces = [0u8; 64];
    if dialer {
        getrandom::fill(&mut nonces[..32]).map_err(|e| io(io::Error::other(e.to_string())))?;
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&nonces[..32]);
        stream.write_all(&hello).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut answer = [0u8; 64];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|_| AdmissionError::NoHandshake(remote))?;
        nonces[32..].copy_from_slice(&answer[..32]);
        let theirs = blake3::Hash::from_bytes(answer[32..].try_into().map_err(|_| AdmissionError::WrongKey(remote))?);
        if theirs != key.tag(b"listener", &local, &remote, &nonces) {
            return Err(AdmissionError::WrongKey(remote));
        }
        let ours = key.tag(b"dialer", &local, &remote, &nonces);
        stream.write_all(ours.as_bytes()).await.map_err(io)?;
        stream.close().await.map_err(io)?;
    } else {
        // The magic alone first: a peer without admission sends a shorter
        // multistream-select header and then waits for an answer.
        let mut magic = [0u8; 8];
        stream
            .read_exact(&mut magic)
            .await
            .map_err(|_| AdmissionError::NoHandshake(remote))?;
        if &magic != MAGIC {
            return Err(AdmissionError::NoHandshake(remote));
        }
        stream.read_exact(&mut nonces[..32]).await.map_err(io)?;
        getrandom::fill(&mut nonces[32..]).map_err(|e| io(io::Error::other(e.to_string())))?;
        let ours = key.tag(b"listener", &remote, &local, &nonces);
        let mut answer = nonces[32..].to_vec();
        answer.extend_from_slice(ours.as_bytes());
        stream.write_all(&answer).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut proof = [0u8; 32];
        stream
            .read_exact(&mut proof)
            .await
            .map_err(|_| AdmissionError::WrongKey(remote))?;
        if blake3::Hash::from_bytes(proof) != key.tag(b"dialer", &remote, &local, &nonces) {
            return Err(AdmissionError::WrongKey(remote));
        }
        // The dialer closes its side after its proof; so does the listener.
        let _ = stream.close().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn key_files_round_trip_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("shoal-swarm-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("swarm.key");
        let _ = std::fs::remove_file(&path);
        let made = SwarmKey::create(&path).unwrap();
        let loaded = SwarmKey::load(&path).unwrap();
        assert_eq!(made.mac_key, loaded.mac_key);
        assert!(matches!(SwarmKey::create(&path), Err(SwarmKeyError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        for bad in [
            "",
            "/shoal/swarm-key/1\n",
            "/key/swarm/psk/1.0.0/\n/base16/\n00",
            "/shoal/swarm-key/1\nzz",
            "/shoal/swarm-key/1\n0000000000000000000000000000000000000000000000000000000000000000\nextra",
        ] {
            assert!(SwarmKey::parse(bad).is_err(), "{bad:?} parsed");
        }
        std::fs::write(&path, vec![b'a'; 4096]).unwrap();
        assert!(matches!(SwarmKey::load(&path), Err(SwarmKeyError::Malformed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tags_depend_on_key_role_peers_and_nonces() {
        let a = SwarmKey::from_secret(&[1; 32]);
        let b = SwarmKey::from_secret(&[2; 32]);
        let (p, q) = (PeerId::random(), PeerId::random());
        let n = [7u8; 64];
        let base = a.tag(b"dialer", &p, &q, &n);
        assert_ne!(base, b.tag(b"dialer", &p, &q, &n));
        assert_ne!(base, a.tag(b"listener", &p, &q, &n));
        assert_ne!(base, a.tag(b"dialer", &q, &p, &n));
        let mut m = n;
        m[63] ^= 1;
        assert_ne!(base, a.tag(b"dialer", &p, &q, &m));
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
