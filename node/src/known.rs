//! Peers remembered across restarts: `known-peers` in the data directory,
//! one `/…/p2p/PEER_ID` multiaddr per line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// File in the data directory that lists remembered peers.
pub const KNOWN_PEERS_FILE: &str = "known-peers";
/// Most peers remembered (and read back): about the whole routing table of
/// a 10,000-peer swarm, so that a restart refreshes few buckets.
pub const MAX_KNOWN_PEERS: usize = 256;
/// Longest line read from or written to the file; longer ones are skipped.
/// An address is measured as it is written: a multiaddr may print longer
/// than the text it was parsed from (percent-encoding), and one that would
/// not be read back is neither kept nor written.
const MAX_LINE_BYTES: usize = 1024;

/// The peers of the routing table with their addresses, kept for the next start.
#[derive(Debug, Default)]
pub struct KnownPeers {
    path: PathBuf,
    peers: BTreeMap<PeerId, Vec<Multiaddr>>,
}

impl KnownPeers {
    /// The list kept in `data_dir` (empty until loaded or learned).
    pub fn new(data_dir: &Path) -> Self {
        KnownPeers {
            path: data_dir.join(KNOWN_PEERS_FILE),
            peers: BTreeMap::new(),
        }
    }

    /// Reads the file; lines that are not a multiaddr ending in `/p2p/PEER_ID`
    /// are skipped with a warning, a missing file is an empty list.
    pub fn load(&self) -> Vec<Multiaddr> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(
                    "cannot read {}: {e}; starting without remembered peers",
                    self.path.display()
                );
                return Vec::new();
            }
        };
        parse(&text, &self.path)
    }

    /// Remembers a peer of the routing table.
    pub fn add(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if addrs.is_empty() || (self.peers.len() >= MAX_KNOWN_PEERS && !self.peers.contains_key(&peer)) {
            return;
        }
        self.peers.insert(peer, addrs.to_vec());
    }

    /// Forgets a peer that left the routing table.
    pub fn remove(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// Writes the list (to a temporary file, then renamed over the old one,
    /// so a crash never leaves half a file).
    pub fn save(&self) -> std::io::Result<()> {
        let mut text = String::new();
        for (peer, addrs) in &self.peers {
            for addr in addrs {
                let full = addr.clone().with_p2p(*peer).unwrap_or_else(|a| a).to_string();
                if full.len() <= MAX_LINE_BYTES {
                    text.push_str(&full);
                    text.push('\n');
                }
            }
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Reads the text of a `known-peers` file (named `source` in warnings):
/// at most [`MAX_KNOWN_PEERS`] multiaddrs ending in `/p2p/PEER_ID`; other
/// lines are skipped with a warning. Split from [`KnownPeers::load`] so that
/// the fuzz targets can feed it text without a file.
pub(crate) fn parse(text: &str, source: &Path) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.len() > MAX_LINE_BYTES {
            continue;
        }
        match line.parse::<Multiaddr>() {
            Ok(addr)
                if matches!(addr.iter().last(), Some(Protocol::P2p(_))) && addr.to_string().len() <= MAX_LINE_BYTES =>
            {
                out.push(addr)
            }
            _ => tracing::warn!(
                "{} line {}: not a multiaddr ending in /p2p/PEER_ID that fits a line; skipped",
                source.display(),
                n + 1
            ),
        }
        if out.len() >= MAX_KNOWN_PEERS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_skips_garbage() {
        let dir = std::env::temp_dir().join(format!("shoal-known-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut known = KnownPeers::new(&dir);
        assert!(known.load().is_empty(), "no file yet");
        let peer = PeerId::random();
        known.add(peer, &["/ip4/127.0.0.1/tcp/4001".parse().unwrap()]);
        known.save().unwrap();
        let loaded = known.load();
        assert_eq!(
            loaded,
            vec![
                format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
                    .parse::<Multiaddr>()
                    .unwrap()
            ]
        );
        let mut text = std::fs::read_to_string(dir.join(KNOWN_PEERS_FILE)).unwrap();
        text.push_str("not an address\n/ip4/1.2.3.4/tcp/1\n");
        std::fs::write(dir.join(KNOWN_PEERS_FILE), text).unwrap();
        assert_eq!(
            known.load().len(),
            1,
            "bad lines and addresses without /p2p are skipped"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Found by the `known_peers` fuzz target: a multiaddr that parses
    /// from a short line but prints longer than a line (each non-ASCII
    /// byte of an `/http-path` prints as `%XX`) was loaded, then written as
    /// a line the next load skipped.
    #[test]
    fn an_address_too_long_to_write_is_neither_loaded_nor_written() {
        let peer = PeerId::random();
        let long = format!("/http-path/{}/p2p/{peer}", "é".repeat(200));
        assert!(long.len() <= MAX_LINE_BYTES);
        let addr: Multiaddr = long.parse().unwrap();
        assert!(
            addr.to_string().len() > MAX_LINE_BYTES,
            "it prints longer than it parsed"
        );
        let source = Path::new(KNOWN_PEERS_FILE);
        assert!(parse(&long, source).is_empty());
        let short: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let dir = std::env::temp_dir().join(format!("shoal-known-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut known = KnownPeers::new(&dir);
        known.add(peer, &[addr, short.clone()]);
        known.save().unwrap();
        assert_eq!(known.load(), vec![short.with_p2p(peer).unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
