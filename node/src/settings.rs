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

/// Parses a size: a number of bytes, or a number (with an optional
/// fraction: `1.5G`) and a binary unit — `K`, `M`, `G` or `T`, in either
/// case, each also spelt with `B`, `i` or `iB` after it (`10G`, `10GB`,
/// `10Gi`, `10GiB` and `10 gib` are all 10 GiB); `B` alone is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size like 500M, 10G or 1.5GiB");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let prefix = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('I'))
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift: u32 = match (prefix, unit.as_str()) {
        ("", "" | "B") => 0,
        ("K", _) => 10,
        ("M", _) => 20,
        ("G", _) => 30,
        ("T", _) => 40,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction_digits = u32::try_from(fraction.len()).map_err(|_| bad())?;
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| bad())?
    };
    let scale = 10u128.pow(fraction_digits);
    let bytes = whole
        .checked_mul(scale)
        .and_then(|n| n.checked_add(fraction))
        .and_then(|n| n.checked_mul(1u128 << shift))
        .map(|n| n / scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
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
        // The usual spellings of one unit all mean the same.
        for ten_gib in ["10G", "10GB", "10Gi", "10GiB", "10 gib", "10g", "10gi"] {
            assert_eq!(parse_size(ten_gib), Ok(10 << 30), "{ten_gib:?}");
        }
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size("100B"), Ok(100));
        for bad in [
            "",
            "G",
            "10X",
            "-1",
            "99999999999T",
            "10iB",
            "1.2.3G",
            ".",
            "10GG",
            "1e3",
        ] {
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
