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
//! slots = 4                 # compute slots offered (default: the cores)
//! slot_memory = "2G"        # memory per slot (default 1G)
//! labels = { gpu = "a100" } # matched by `shoal run --where gpu=a100`
//! allow_native = true       # native commands, only for `trust`
//! trust = ["12D3KooW..."]   # peers whose native commands run here
//!
//! [[device]]                # shared at every start (`shoal device share`)
//! name = "printer-2f"
//! class = "printer"
//! tcp = "127.0.0.1:631"     # or cmd = "picocom -q /dev/ttyUSB0", or path = "/dev/ttyS0"
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
    /// `--slots`.
    pub slots: Option<u32>,
    /// `--slot-memory`.
    pub slot_memory: Option<u64>,
    /// `--label KEY=VALUE`.
    pub labels: Vec<(String, String)>,
    /// `--allow-native`.
    pub allow_native: bool,
    /// `--trust PEER_ID`.
    pub trust: Vec<libp2p::PeerId>,
    /// `--member-gone-after`.
    pub member_gone_after: Option<std::time::Duration>,
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
    /// Compute slots offered.
    pub slots: Option<u32>,
    /// Memory per slot, as a size.
    pub slot_memory: Option<String>,
    /// This peer's labels.
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Whether native commands run here.
    pub allow_native: Option<bool>,
    /// Peers whose native commands run here.
    pub trust: Option<Vec<String>>,
    /// Devices shared at every start.
    pub device: Option<Vec<DeviceSetting>>,
    /// How long a lease member may be silent before its set moves on.
    pub member_gone_after: Option<String>,
}

/// A device in `shoal.toml`: `[[device]]` with a name, a class and one
/// adapter.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSetting {
    /// The device's name.
    pub name: String,
    /// Its class.
    pub class: String,
    /// A local service, `HOST:PORT`.
    pub tcp: Option<String>,
    /// A command whose stdin and stdout are the device.
    pub cmd: Option<String>,
    /// A character device or FIFO.
    pub path: Option<PathBuf>,
}

impl DeviceSetting {
    /// The device as the node shares it, or what is wrong with it.
    pub fn adapter(&self) -> Result<crate::devices::Adapter, String> {
        shoal_resources::device::check_name("device", &self.name)?;
        shoal_resources::device::check_name("class", &self.class)?;
        match (&self.tcp, &self.cmd, &self.path) {
            (Some(addr), None, None) => Ok(crate::devices::Adapter::Tcp(addr.clone())),
            (None, Some(cmd), None) => Ok(crate::devices::Adapter::Cmd(cmd.clone())),
            (None, None, Some(path)) => Ok(crate::devices::Adapter::Path(path.clone())),
            _ => Err(format!("device {:?}: one of tcp, cmd or path", self.name)),
        }
    }
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
    let invalid = |why: String| SettingsError::Invalid {
        path: data_dir.join(SETTINGS_FILE).display().to_string(),
        why,
    };
    let compute = &mut config.compute;
    compute.slots = given.slots.or(file.slots).unwrap_or_else(default_slots);
    compute.slot_memory = match (given.slot_memory, file.slot_memory) {
        (Some(m), _) => m,
        (None, Some(text)) => parse_size(&text).map_err(|why| invalid(format!("slot_memory: {why}")))?,
        (None, None) => compute.slot_memory,
    };
    compute.labels = if given.labels.is_empty() {
        file.labels.unwrap_or_default()
    } else {
        given.labels.into_iter().collect()
    };
    if compute.labels.len() > shoal_resources::compute::offer::MAX_LABELS {
        return Err(invalid(format!(
            "more than {} labels",
            shoal_resources::compute::offer::MAX_LABELS
        )));
    }
    for (k, v) in &compute.labels {
        check_label(k, v).map_err(|why| invalid(format!("labels: {why}")))?;
    }
    compute.allow_native = given.allow_native || file.allow_native.unwrap_or(false);
    compute.trust = if given.trust.is_empty() {
        let mut trust = Vec::new();
        for text in file.trust.unwrap_or_default() {
            trust.push(
                text.parse()
                    .map_err(|_| invalid(format!("trust: {text:?} is not a peer id")))?,
            );
        }
        trust
    } else {
        given.trust
    };
    config.member_gone_after = match (given.member_gone_after, file.member_gone_after) {
        (Some(d), _) => d,
        (None, Some(text)) => parse_duration(&text).map_err(|why| invalid(format!("member_gone_after: {why}")))?,
        (None, None) => config.member_gone_after,
    };
    if config.member_gone_after < std::time::Duration::from_secs(1) {
        return Err(invalid("member_gone_after: at least 1s".into()));
    }
    for device in file.device.unwrap_or_default() {
        let adapter = device.adapter().map_err(|why| invalid(format!("[[device]]: {why}")))?;
        config.devices.push((device.name, device.class, adapter));
    }
    Ok(config)
}

/// A `--wait`: a duration as [`parse_duration`] reads it, or `0` (do not
/// wait at all).
pub fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_duration(text)
}

/// The slots a peer offers unless told: one per core.
pub fn default_slots() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// A label is a key of letters, digits, `-`, `_` and `.`, and a value of
/// at most 64 bytes with no `=`.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    use shoal_resources::compute::offer::MAX_LABEL_BYTES;
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if key.is_empty() || key.len() > MAX_LABEL_BYTES || !key.chars().all(plain) {
        return Err(format!(
            "label key {key:?}: 1 to {MAX_LABEL_BYTES} letters, digits, '-', '_' or '.'"
        ));
    }
    if value.len() > MAX_LABEL_BYTES || value.contains('=') {
        return Err(format!(
            "label value {value:?}: at most {MAX_LABEL_BYTES} bytes, no '='"
        ));
    }
    Ok(())
}

/// `KEY=VALUE` as a label.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    check_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// A duration like `500ms`, `30s`, `10m`, `2h` (a bare number: seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 10m or 2h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(format!("{text:?} is not a duration like 30s, 10m or 2h")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 365.0 * 86400.0 {
        return Err(format!("{text:?} is not between 1 ms and a year"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
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
    fn devices_in_the_file_are_shared_and_a_bad_one_is_named() {
        let d = dir("devices");
        std::fs::write(
            d.join(SETTINGS_FILE),
            "[[device]]\nname = \"printer-2f\"\nclass = \"printer\"\ntcp = \"127.0.0.1:631\"\n\n\
             [[device]]\nname = \"console\"\nclass = \"serial\"\ncmd = \"picocom /dev/ttyUSB0\"\n",
        )
        .unwrap();
        let config = resolve(d.clone(), Given::default()).unwrap();
        assert_eq!(
            config.devices,
            vec![
                (
                    "printer-2f".to_string(),
                    "printer".to_string(),
                    crate::devices::Adapter::Tcp("127.0.0.1:631".into())
                ),
                (
                    "console".to_string(),
                    "serial".to_string(),
                    crate::devices::Adapter::Cmd("picocom /dev/ttyUSB0".into())
                ),
            ]
        );
        for bad in [
            "[[device]]\nname = \"x\"\nclass = \"y\"\n",
            "[[device]]\nname = \"x\"\nclass = \"y\"\ntcp = \"a:1\"\ncmd = \"cat\"\n",
            "[[device]]\nname = \"a b\"\nclass = \"y\"\ncmd = \"cat\"\n",
        ] {
            std::fs::write(d.join(SETTINGS_FILE), bad).unwrap();
            let err = resolve(d.clone(), Given::default()).unwrap_err().to_string();
            assert!(err.contains("[[device]]"), "{err}");
        }
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
