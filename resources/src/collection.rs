//! Collections: a shared directory is a blob listing its files (relative
//! path, id, size), so one id names the whole tree. The listing is CBOR
//! after a fixed magic line, and every path in it is checked before use: no
//! absolute paths, no `..`, no empty or odd components — a listing from a
//! peer can only ever name files below the directory it is fetched into.

use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

use crate::blob::BlobInfo;

/// The first bytes of every collection blob.
pub const MAGIC: &[u8; 20] = b"shoal-collection-v1\n";
/// Most files one collection lists.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest relative path accepted.
pub const MAX_PATH: usize = 4096;

/// One file of a collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, components separated by `/`.
    pub path: String,
    /// The file's blob.
    pub blob: BlobInfo,
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    path: String,
    #[serde(with = "serde_bytes")]
    id: Vec<u8>,
    size: u64,
}

/// Why bytes are not a valid collection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CollectionError {
    /// Not a collection at all (no magic): an ordinary file.
    #[error("not a collection")]
    NotACollection,
    /// A collection that cannot be read.
    #[error("malformed collection: {0}")]
    Malformed(String),
    /// A path that would escape the target directory or is not portable.
    #[error("refused path {0:?} in collection")]
    BadPath(String),
}

/// Whether `path` is a safe relative path: `/`-separated components, none
/// empty, `.` or `..`, no NUL or backslash, not absolute, bounded length.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.starts_with('/')
        && !path.contains(['\0', '\\'])
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Encodes a listing (entries sorted by path).
pub fn encode(entries: &[Entry]) -> Result<Vec<u8>, CollectionError> {
    let mut wire: Vec<WireEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        if !valid_path(&e.path) {
            return Err(CollectionError::BadPath(e.path.clone()));
        }
        wire.push(WireEntry {
            path: e.path.clone(),
            id: e.blob.id.to_bytes().to_vec(),
            size: e.blob.size,
        });
    }
    wire.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = MAGIC.to_vec();
    ciborium::into_writer(&wire, &mut out).map_err(|e| CollectionError::Malformed(e.to_string()))?;
    Ok(out)
}

/// Decodes and checks a listing.
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>, CollectionError> {
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(CollectionError::NotACollection)?;
    let wire: Vec<WireEntry> = ciborium::from_reader(body).map_err(|e| CollectionError::Malformed(e.to_string()))?;
    if wire.len() > MAX_ENTRIES {
        return Err(CollectionError::Malformed(format!("more than {MAX_ENTRIES} files")));
    }
    let mut out = Vec::with_capacity(wire.len());
    let mut seen = std::collections::BTreeSet::new();
    for w in wire {
        if !valid_path(&w.path) {
            return Err(CollectionError::BadPath(w.path));
        }
        // A path may not also be the directory of another one.
        if !seen.insert(w.path.clone()) {
            return Err(CollectionError::Malformed(format!("{} listed twice", w.path)));
        }
        let id: [u8; 32] =
            w.id.try_into()
                .map_err(|_| CollectionError::Malformed("an id is not 32 bytes".into()))?;
        out.push(Entry {
            path: w.path,
            blob: BlobInfo {
                id: Key::from_bytes(id),
                size: w.size,
            },
        });
    }
    for e in &out {
        let mut prefix = String::new();
        for component in e
            .path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            if seen.contains(&prefix) {
                return Err(CollectionError::Malformed(format!(
                    "{prefix} is both a file and a directory"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.into(),
            blob: BlobInfo {
                id: Key::of_content(path.as_bytes()),
                size: 3,
            },
        }
    }

    #[test]
    fn round_trips_sorted() {
        let entries = vec![entry("b/c.txt"), entry("a.txt")];
        let decoded = decode(&encode(&entries).unwrap()).unwrap();
        assert_eq!(decoded, vec![entry("a.txt"), entry("b/c.txt")]);
        assert_eq!(decode(b"just a file"), Err(CollectionError::NotACollection));
    }

    #[test]
    fn escaping_and_odd_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\0b",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        assert!(valid_path("a/b c/d.txt"));
        // A hostile listing is refused as a whole.
        let mut bytes = MAGIC.to_vec();
        let wire = vec![WireEntry {
            path: "../../etc/cron.d/x".into(),
            id: vec![0; 32],
            size: 1,
        }];
        ciborium::into_writer(&wire, &mut bytes).unwrap();
        assert!(matches!(decode(&bytes), Err(CollectionError::BadPath(_))));
        let both = [entry("a"), entry("a/b")];
        let mut bytes = MAGIC.to_vec();
        let wire: Vec<WireEntry> = both
            .iter()
            .map(|e| WireEntry {
                path: e.path.clone(),
                id: e.blob.id.to_bytes().to_vec(),
                size: 3,
            })
            .collect();
        ciborium::into_writer(&wire, &mut bytes).unwrap();
        assert!(matches!(decode(&bytes), Err(CollectionError::Malformed(_))));
        assert!(matches!(
            decode(&[MAGIC.as_slice(), b"\xff\xff"].concat()),
            Err(CollectionError::Malformed(_))
        ));
    }

    fn listing(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let wire: Vec<WireEntry> = entries
            .iter()
            .map(|(path, id)| WireEntry {
                path: (*path).into(),
                id: id.clone(),
                size: 3,
            })
            .collect();
        let mut bytes = MAGIC.to_vec();
        ciborium::into_writer(&wire, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_path_may_be_exactly_max_path_long() {
        let longest = format!(
            "{}/{}",
            "a".repeat(MAX_PATH / 2),
            "b".repeat(MAX_PATH - MAX_PATH / 2 - 1)
        );
        assert_eq!(longest.len(), MAX_PATH);
        assert!(valid_path(&longest));
        assert!(!valid_path(&format!("{longest}c")));
    }

    #[test]
    fn a_listing_is_refused_for_a_repeated_path_a_short_id_or_a_file_inside_a_file() {
        let id = vec![7u8; 32];
        assert!(decode(&listing(&[("a/b/c", id.clone()), ("a/b/d", id.clone())])).is_ok());
        let refused = [
            vec![("x", id.clone()), ("x", id.clone())],
            vec![("x", vec![7u8; 31])],
            // "a/b" is a file, and a directory of "a/b/c": three levels deep,
            // so the prefix is built with its separator.
            vec![("a/b", id.clone()), ("a/b/c", id.clone())],
        ];
        for entries in refused {
            assert!(
                matches!(decode(&listing(&entries)), Err(CollectionError::Malformed(_))),
                "{:?}",
                entries.iter().map(|e| e.0).collect::<Vec<_>>()
            );
        }
        // A writer refuses a bad path as a reader does.
        assert!(matches!(encode(&[entry("../x")]), Err(CollectionError::BadPath(_))));
    }

    #[test]
    fn a_listing_may_hold_exactly_max_entries() {
        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| i.to_string()).collect();
        let entries: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (n.as_str(), vec![1u8; 32])).collect();
        assert_eq!(decode(&listing(&entries[..MAX_ENTRIES])).unwrap().len(), MAX_ENTRIES);
        assert!(matches!(decode(&listing(&entries)), Err(CollectionError::Malformed(_))));
    }
}
