//! Settings of `shoal up`: flags first, then `SHOAL_*` environment variables
//! (clap reads both), then `shoal.toml` in the data directory, then the
//! defaults.
//!
//! ```toml
//! # <data-dir>/shoal.toml
//! listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
//! bootstrap = ["/ip4/192.168.1.20/tcp/4001/p2p/12D3KooW..."]
//! mdns = false
//! swarm_key = "swarm.key"   # relative to the data directory
//! quota = "100G"            # the blob store's size limit
//! ```

use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::Deserialize;

use crate::NodeConfig;
use crate::admission::{SwarmKey, SwarmKeyError};

/// The settings file's name in the data directory.
pub const SETTINGS_FILE: &str = "shoal.toml";
/// A settings file is a few lines; refuse anything absurd.
const MAX_SETTINGS_BYTES: u64 = 64 * 1024;

/// What `shoal up` was given on its command line or through `SHOAL_*`.
#[derive(Clone, Debug, Default)]
pub struct Given {
    /// `--listen`; empty: not given.
    pub listen: Vec<Multiaddr>,
    /// `--bootstrap`; empty: not given.
    pub bootstrap: Vec<Multiaddr>,
    /// `--no-mdns`.
    pub no_mdns: bool,
    /// `--swarm-key`.
    pub swarm_key: Option<PathBuf>,
    /// `--quota`, in bytes.
    pub quota: Option<u64>,
}

/// The contents of `shoal.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Addresses to listen on.
    pub listen: Option<Vec<Multiaddr>>,
    /// Peers to join through.
    pub bootstrap: Option<Vec<Multiaddr>>,
    /// Look for peers on the LAN by mDNS.
    pub mdns: Option<bool>,
    /// The swarm key file, relative to the data directory unless absolute.
    pub swarm_key: Option<PathBuf>,
    /// The blob store's quota, like `"10G"`.
    pub quota: Option<String>,
}

/// Why the settings could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `shoal.toml` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `shoal.toml` is not valid.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        why: String,
    },
    /// The swarm key could not be loaded.
    #[error(transparent)]
    SwarmKey(#[from] SwarmKeyError),
}

impl FileSettings {
    /// Reads `shoal.toml` from `data_dir`; no file means no settings.
    pub fn load(data_dir: &Path) -> Result<Self, SettingsError> {
        let path = data_dir.join(SETTINGS_FILE);
        let name = path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(SettingsError::Read { path: name, source }),
        };
        let mut text = String::new();
        let read = std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SETTINGS_BYTES + 1), &mut text)
            .map_err(|source| SettingsError::Read {
                path: name.clone(),
                source,
            })?;
        if read as u64 > MAX_SETTINGS_BYTES {
            return Err(SettingsError::Invalid {
                path: name,
                why: format!("larger than {MAX_SETTINGS_BYTES} bytes"),
            });
        }
        Self::parse(&text).map_err(|why| SettingsError::Invalid { path: name, why })
    }

    /// Parses the text of a settings file.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

/// Puts together how a node starts: what was given wins over the file,
/// the file over the defaults.
pub fn resolve(data_dir: PathBuf, given: Given) -> Result<NodeConfig, SettingsError> {
    let file = FileSettings::load(&data_dir)?;
    let mut config = NodeConfig::new(data_dir.clone());
    if !given.listen.is_empty() {
        config.listen = given.listen;
    } else if let Some(listen) = file.listen.filter(|l| !l.is_empty()) {
        config.listen = listen;
    }
    config.bootstrap = if given.bootstrap.is_empty() {
        file.bootstrap.unwrap_or_default()
    } else {
        given.bootstrap
    };
    config.mdns = !given.no_mdns && file.mdns.unwrap_or(true);
    config.quota = match (given.quota, file.quota) {
        (Some(q), _) => Some(q),
        (None, Some(text)) => Some(parse_size(&text).map_err(|why| SettingsError::Invalid {
            path: data_dir.join(SETTINGS_FILE).display().to_string(),
            why: format!("quota: {why}"),
        })?),
        (None, None) => None,
    };
    let key_path = given.swarm_key.or_else(|| file.swarm_key.map(|p| data_dir.join(p)));
    config.swarm_key = key_path.map(|p| SwarmKey::load(&p)).transpose()?;
    Ok(config)
}

/// Parses a size: a number of bytes, or one with a binary suffix
/// (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 500M or 10G"))?;
    let shift = match unit
        .trim()
        .trim_end_matches("iB")
        .trim_end_matches('B')
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{text:?} is not a size like 500M or 10G")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-settings-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let d = dir("order");
        let defaults = resolve(d.clone(), Given::default()).unwrap();
        assert!(defaults.mdns && defaults.swarm_key.is_none() && defaults.listen.len() == 2);
        SwarmKey::create(&d.join("swarm.key")).unwrap();
        std::fs::write(
            d.join(SETTINGS_FILE),
            "listen = [\"/ip4/127.0.0.1/tcp/4001\"]\nbootstrap = []\nmdns = false\nswarm_key = \"swarm.key\"\n",
        )
        .unwrap();
        let from_file = resolve(d.clone(), Given::default()).unwrap();
        assert_eq!(
            from_file.listen,
            vec!["/ip4/127.0.0.1/tcp/4001".parse::<Multiaddr>().unwrap()]
        );
        assert!(!from_file.mdns);
        assert!(from_file.swarm_key.is_some());
        let flag: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
        let given = Given {
            listen: vec![flag.clone()],
            ..Given::default()
        };
        assert_eq!(resolve(d.clone(), given).unwrap().listen, vec![flag]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("2 TB"), Ok(2 << 40));
        for bad in ["", "G", "10X", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_files_are_named_with_their_fault() {
        let d = dir("bad");
        for (text, needle) in [
            ("lisen = []", "unknown field"),
            ("listen = [\"not an address\"]", "listen"),
            ("mdns = \"yes\"", "mdns"),
            ("swarm_key = \"missing.key\"", "missing.key"),
            ("quota = \"lots\"", "quota"),
        ] {
            std::fs::write(d.join(SETTINGS_FILE), text).unwrap();
            let error = resolve(d.clone(), Given::default()).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?} gave {error:?}");
        }
        std::fs::write(d.join(SETTINGS_FILE), vec![b'#'; 70_000]).unwrap();
        assert!(
            resolve(d.clone(), Given::default())
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
