//! 256-bit keys and the XOR metric.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of bits in a [`Key`].
pub const KEY_BITS: usize = 256;

/// A 256-bit position in the overlay's key space.
///
/// Peers, files, jobs and names all live in this one space. The key is stored
/// as four big-endian 64-bit limbs so that comparing XOR distances is four
/// integer comparisons; it prints and parses as 64 lowercase hex digits, the
/// same text `b3sum` prints for a BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key([u64; 4]);

/// The XOR distance between two keys, ordered as a 256-bit unsigned integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Distance([u64; 4]);

impl Key {
    /// The key made of these 32 bytes, most significant first.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *limb = u64::from_be_bytes(word);
        }
        Key(limbs)
    }

    /// The 32 bytes of this key, most significant first.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        for (chunk, limb) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        bytes
    }

    /// The key of a peer: the BLAKE3 hash of its public key bytes, so that no
    /// peer chooses its own position in the key space.
    pub fn of_public_key(public_key: &[u8]) -> Self {
        Key::from_bytes(*blake3::hash(public_key).as_bytes())
    }

    /// The key of content: the BLAKE3 hash of its bytes.
    pub fn of_content(bytes: &[u8]) -> Self {
        Key::from_bytes(*blake3::hash(bytes).as_bytes())
    }

    /// The key of a named thing of a kind (device, slot class, name):
    /// BLAKE3 `derive_key("shoal <kind> v1", name)`.
    pub fn of_name(kind: &str, name: &[u8]) -> Self {
        let context = format!("shoal {kind} v1");
        Key::from_bytes(blake3::derive_key(&context, name))
    }

    /// The XOR distance from this key to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        Distance([
            self.0[0] ^ other.0[0],
            self.0[1] ^ other.0[1],
            self.0[2] ^ other.0[2],
            self.0[3] ^ other.0[3],
        ])
    }

    /// The number of leading bits this key shares with `other`
    /// (256 when they are equal).
    pub fn common_prefix_len(&self, other: &Key) -> usize {
        self.distance(other).leading_zeros()
    }

    /// The bit at `index`, counting from the most significant bit (0).
    pub fn bit(&self, index: usize) -> bool {
        debug_assert!(index < KEY_BITS);
        (self.0[index / 64] >> (63 - index % 64)) & 1 == 1
    }

    /// This key with the bit at `index` flipped.
    pub fn with_bit_flipped(&self, index: usize) -> Key {
        debug_assert!(index < KEY_BITS);
        let mut limbs = self.0;
        limbs[index / 64] ^= 1 << (63 - index % 64);
        Key(limbs)
    }

    /// A key that shares exactly `prefix_len` leading bits with `self` and
    /// takes its remaining bits from `random`: the target of a refresh lookup
    /// for bucket `prefix_len`.
    pub fn random_in_bucket(&self, prefix_len: usize, random: &Key) -> Key {
        debug_assert!(prefix_len < KEY_BITS);
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let start = i * 64;
            // Bits of this limb that belong to the shared prefix come from self.
            let keep = prefix_len.saturating_sub(start).min(64);
            let mask = if keep == 0 { 0 } else { u64::MAX << (64 - keep) };
            *limb = (self.0[i] & mask) | (random.0[i] & !mask);
        }
        Key(limbs).with_forced_bit(prefix_len, !self.bit(prefix_len))
    }

    fn with_forced_bit(mut self, index: usize, value: bool) -> Key {
        let bit = 1 << (63 - index % 64);
        if value {
            self.0[index / 64] |= bit;
        } else {
            self.0[index / 64] &= !bit;
        }
        self
    }

    /// The smallest and the largest key that share the first `len` bits with
    /// this one: the range a prefix covers in key order.
    pub fn prefix_range(&self, len: usize) -> (Key, Key) {
        let mut low = [0u64; 4];
        let mut high = [0u64; 4];
        for i in 0..4 {
            let keep = len.saturating_sub(i * 64).min(64);
            let mask = if keep == 0 { 0 } else { u64::MAX << (64 - keep) };
            low[i] = self.0[i] & mask;
            high[i] = self.0[i] | !mask;
        }
        (Key(low), Key(high))
    }

    /// The first 64 bits of the key, for cheap hashing and short display.
    pub fn prefix_u64(&self) -> u64 {
        self.0[0]
    }

    /// Short form for logs: the first 8 hex digits.
    pub fn short(&self) -> String {
        format!("{:08x}", self.0[0] >> 32)
    }
}

impl Distance {
    /// The number of leading zero bits (256 for distance zero).
    pub fn leading_zeros(&self) -> usize {
        let mut zeros = 0;
        for limb in self.0 {
            if limb == 0 {
                zeros += 64;
            } else {
                return zeros + limb.leading_zeros() as usize;
            }
        }
        zeros
    }
}

impl Distance {
    /// `self + other` as 256-bit integers, or `None` if it overflows. XOR
    /// distances obey `d(a,c) <= d(a,b) + d(b,c)`, which bounds how far a
    /// lookup's answer for one key carries over to a nearby key.
    pub fn checked_add(&self, other: &Distance) -> Option<Distance> {
        let mut out = [0u64; 4];
        let mut carry = false;
        for i in (0..4).rev() {
            let (sum, c1) = self.0[i].overflowing_add(other.0[i]);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            out[i] = sum;
            carry = c1 || c2;
        }
        (!carry).then_some(Distance(out))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for limb in self.0 {
            write!(f, "{limb:016x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

/// Why a string is not a [`Key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseKeyError {
    /// The text is not 64 characters long.
    #[error("a key is 64 hex digits, got {length} characters")]
    Length {
        /// The length that was given.
        length: usize,
    },
    /// The text holds a character that is not a hex digit.
    #[error("a key is 64 hex digits; {character:?} is not one")]
    NotHex {
        /// The offending character.
        character: char,
    },
}

impl FromStr for Key {
    type Err = ParseKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 64 {
            return Err(ParseKeyError::Length {
                length: text.chars().count(),
            });
        }
        let mut bytes = [0u8; 32];
        let digits = text.as_bytes();
        for (i, byte) in bytes.iter_mut().enumerate() {
            let high = hex_value(digits[2 * i])?;
            let low = hex_value(digits[2 * i + 1])?;
            *byte = (high << 4) | low;
        }
        Ok(Key::from_bytes(bytes))
    }
}

fn hex_value(digit: u8) -> Result<u8, ParseKeyError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(ParseKeyError::NotHex {
            character: char::from(digit),
        }),
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(deserializer)?;
        Ok(Key::from_bytes(bytes.into_array()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(bytes: [u8; 32]) -> Key {
        Key::from_bytes(bytes)
    }

    proptest! {
        #[test]
        fn bytes_round_trip(bytes in any::<[u8; 32]>()) {
            prop_assert_eq!(key(bytes).to_bytes(), bytes);
        }

        #[test]
        fn hex_round_trip(bytes in any::<[u8; 32]>()) {
            let k = key(bytes);
            prop_assert_eq!(k.to_string().parse::<Key>(), Ok(k));
        }

        #[test]
        fn distance_is_a_metric(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (key(a), key(b));
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&a), Distance::default());
            prop_assert_eq!(a == b, a.distance(&b) == Distance::default());
        }

        #[test]
        fn xor_distance_obeys_the_triangle_inequality(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), c in any::<[u8; 32]>()) {
            let (a, b, c) = (key(a), key(b), key(c));
            // (An overflowing sum exceeds every distance.)
            if let Some(sum) = a.distance(&b).checked_add(&b.distance(&c)) {
                prop_assert!(a.distance(&c) <= sum);
            }
            // Addition agrees with u128 arithmetic on the low limbs.
            let small = |x: u128| Distance([0, 0, (x >> 64) as u64, x as u64]);
            let (x, y) = (u128::from(a.prefix_u64()), u128::from(b.prefix_u64()));
            prop_assert_eq!(small(x).checked_add(&small(y)), Some(small(x + y)));
        }

        #[test]
        fn random_in_bucket_lands_in_that_bucket(a in any::<[u8; 32]>(), r in any::<[u8; 32]>(), p in 0usize..256) {
            let (a, r) = (key(a), key(r));
            prop_assert_eq!(a.common_prefix_len(&a.random_in_bucket(p, &r)), p);
        }

        #[test]
        fn prefix_range_bounds_exactly_the_prefix(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), len in 0usize..=256) {
            let (a, b) = (key(a), key(b));
            let (low, high) = a.prefix_range(len);
            let inside = b >= low && b <= high;
            prop_assert_eq!(inside, a.common_prefix_len(&b) >= len);
        }

        #[test]
        fn prefix_len_matches_bits(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (key(a), key(b));
            let cpl = a.common_prefix_len(&b);
            for i in 0..cpl.min(KEY_BITS) {
                prop_assert_eq!(a.bit(i), b.bit(i));
            }
            if cpl < KEY_BITS {
                prop_assert_ne!(a.bit(cpl), b.bit(cpl));
            }
        }
    }

    #[test]
    fn content_key_is_what_b3sum_prints() {
        // `printf abc | b3sum`
        assert_eq!(
            Key::of_content(b"abc").to_string(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn malformed_hex_is_an_error() {
        assert_eq!("abc".parse::<Key>(), Err(ParseKeyError::Length { length: 3 }));
        let bad = "g".repeat(64);
        assert_eq!(bad.parse::<Key>(), Err(ParseKeyError::NotHex { character: 'g' }));
        // Multi-byte characters must not panic on slicing.
        let wide = "é".repeat(32);
        assert!(wide.parse::<Key>().is_err());
    }
}
