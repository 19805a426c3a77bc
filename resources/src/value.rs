//! The shape every resource's value record shares: a magic line that names
//! the kind and version, then CBOR, read back only within a cap.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// `value` as a record value: `magic`, then its CBOR.
pub(crate) fn encode<T: Serialize>(magic: &[u8], value: &T) -> Vec<u8> {
    let mut out = magic.to_vec();
    // Writing CBOR into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

/// A record value read back: `None` unless it starts with `magic` and the
/// rest, at most `cap` bytes, decodes.
pub(crate) fn decode<T: DeserializeOwned>(magic: &[u8], cap: usize, bytes: &[u8]) -> Option<T> {
    let body = bytes.strip_prefix(magic)?;
    if body.len() > cap {
        return None;
    }
    ciborium::from_reader(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_under_their_magic_and_cap_only() {
        let bytes = encode(b"m\n", &(1u8, "x".to_string()));
        assert_eq!(decode::<(u8, String)>(b"m\n", 100, &bytes), Some((1, "x".to_string())));
        assert_eq!(decode::<(u8, String)>(b"n\n", 100, &bytes), None, "another kind");
        assert_eq!(
            decode::<(u8, String)>(b"m\n", bytes.len() - 3, &bytes),
            None,
            "over the cap"
        );
        assert_eq!(
            decode::<(u8, String)>(b"m\n", bytes.len() - 2, &bytes),
            Some((1, "x".to_string()))
        );
        assert_eq!(decode::<u64>(b"m\n", 100, &bytes), None, "another type");
    }
}
