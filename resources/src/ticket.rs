//! Tickets: a blob's id plus addresses of a peer that has it, as one
//! printable string, so a download can start where the overlay cannot be
//! reached. `shoal1` + lowercase base32 (RFC 4648, no padding) of a CBOR
//! map `{v: 1, id, size, addrs}`; the version inside lets later formats be
//! told apart.

use serde::{Deserialize, Serialize};
use shoal_overlay::Key;

use crate::blob::BlobInfo;

/// What every ticket starts with.
pub const TICKET_PREFIX: &str = "shoal1";
const VERSION: u8 = 1;
/// Most addresses one ticket carries.
pub const MAX_TICKET_ADDRS: usize = 16;
/// Longest address accepted in a ticket.
pub const MAX_ADDR_LEN: usize = 256;
/// Longest ticket text accepted.
pub const MAX_TICKET_LEN: usize = 8 * 1024;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A blob and where to get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The blob.
    pub blob: BlobInfo,
    /// Addresses of a peer that provides it (multiaddrs as text, each ending
    /// in `/p2p/PEER_ID`).
    pub addrs: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    #[serde(with = "serde_bytes")]
    id: Vec<u8>,
    size: u64,
    addrs: Vec<String>,
}

/// Why a text is not a ticket.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// It does not start with `shoal1`.
    #[error("a ticket starts with {TICKET_PREFIX}")]
    Prefix,
    /// Too long to be a ticket.
    #[error("longer than {MAX_TICKET_LEN} characters")]
    TooLong,
    /// A character outside base32.
    #[error("a character outside the ticket alphabet (a-z, 2-7)")]
    Alphabet,
    /// The bytes inside are not a ticket.
    #[error("malformed contents: {0}")]
    Contents(String),
    /// A later format.
    #[error("ticket version {0}; this shoal reads version {VERSION}")]
    Version(u8),
}

impl Ticket {
    /// The printable form.
    pub fn to_text(&self) -> String {
        let wire = Wire {
            v: VERSION,
            id: self.blob.id.to_bytes().to_vec(),
            size: self.blob.size,
            addrs: self.addrs.iter().take(MAX_TICKET_ADDRS).cloned().collect(),
        };
        let mut bytes = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(&wire, &mut bytes);
        format!("{TICKET_PREFIX}{}", encode_base32(&bytes))
    }

    /// Parses a ticket; every bound is checked.
    pub fn parse(text: &str) -> Result<Self, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        let body = text.strip_prefix(TICKET_PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = decode_base32(body).ok_or(TicketError::Alphabet)?;
        // (The decoder's own words name CBOR types, which mean nothing to
        // whoever pasted the ticket.)
        let wire: Wire = ciborium::from_reader(bytes.as_slice())
            .map_err(|_| TicketError::Contents("they do not decode; was the ticket cut short or mistyped?".into()))?;
        if wire.v != VERSION {
            return Err(TicketError::Version(wire.v));
        }
        let id: [u8; 32] = wire
            .id
            .try_into()
            .map_err(|_| TicketError::Contents("the id is not 32 bytes".into()))?;
        if wire.addrs.len() > MAX_TICKET_ADDRS || wire.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN) {
            return Err(TicketError::Contents("too many or too long addresses".into()));
        }
        Ok(Ticket {
            blob: BlobInfo {
                id: Key::from_bytes(id),
                size: wire.size,
            },
            addrs: wire.addrs,
        })
    }
}

fn encode_base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn decode_base32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Ticket {
        Ticket {
            blob: BlobInfo {
                id: Key::of_content(b"hello"),
                size: 5,
            },
            addrs: vec!["/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWExample".into()],
        }
    }

    #[test]
    fn round_trips_and_names_its_faults() {
        let ticket = sample();
        let text = ticket.to_text();
        assert!(text.starts_with("shoal1"));
        assert_eq!(Ticket::parse(&text), Ok(ticket));
        assert_eq!(Ticket::parse("bafy123"), Err(TicketError::Prefix));
        assert_eq!(Ticket::parse("shoal1ABC"), Err(TicketError::Alphabet));
        assert!(matches!(Ticket::parse("shoal1aaaa"), Err(TicketError::Contents(_))));
        assert_eq!(Ticket::parse(&"shoal1".repeat(2000)), Err(TicketError::TooLong));
    }

    #[test]
    fn base32_is_rfc_4648_lowercase_without_padding() {
        // The test vectors of RFC 4648 section 10, lowercased, "=" dropped.
        let vectors = [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode_base32(plain.as_bytes()), encoded, "{plain:?}");
            assert_eq!(decode_base32(encoded), Some(plain.as_bytes().to_vec()), "{encoded:?}");
        }
    }

    /// A ticket as another writer could make it: any version, any id length.
    fn text_of(v: u8, id: Vec<u8>, addrs: Vec<String>) -> String {
        let mut bytes = Vec::new();
        ciborium::into_writer(&Wire { v, id, size: 5, addrs }, &mut bytes).unwrap();
        format!("{TICKET_PREFIX}{}", encode_base32(&bytes))
    }

    #[test]
    fn every_bound_holds_at_its_limit_and_refuses_one_past_it() {
        let id = Key::of_content(b"hello").to_bytes().to_vec();
        let addr = |len: usize| format!("/dns/{}", "a".repeat(len - 5));
        // Addresses: count and length.
        let most = vec![addr(MAX_ADDR_LEN); MAX_TICKET_ADDRS];
        let text = text_of(VERSION, id.clone(), most.clone());
        assert!(
            text.len() <= MAX_TICKET_LEN,
            "the largest valid ticket fits the text bound"
        );
        assert_eq!(Ticket::parse(&text).unwrap().addrs, most);
        let too_many = vec![addr(8); MAX_TICKET_ADDRS + 1];
        assert!(matches!(
            Ticket::parse(&text_of(VERSION, id.clone(), too_many)),
            Err(TicketError::Contents(_))
        ));
        let too_long = vec![addr(MAX_ADDR_LEN + 1)];
        assert!(matches!(
            Ticket::parse(&text_of(VERSION, id.clone(), too_long)),
            Err(TicketError::Contents(_))
        ));
        // Another version, an id of another length.
        assert_eq!(
            Ticket::parse(&text_of(2, id.clone(), vec![])),
            Err(TicketError::Version(2))
        );
        assert!(matches!(
            Ticket::parse(&text_of(VERSION, id[..31].to_vec(), vec![])),
            Err(TicketError::Contents(_))
        ));
        // The text bound: exactly MAX_TICKET_LEN characters (with spaces
        // trimmed first) is read; one more is refused unread.
        let long = text_of(VERSION, id, vec![addr(200); 2]);
        let padded = |len: usize| format!("{long}{}", "a".repeat(len - long.len()));
        assert!(!matches!(
            Ticket::parse(&padded(MAX_TICKET_LEN)),
            Err(TicketError::TooLong)
        ));
        assert_eq!(Ticket::parse(&padded(MAX_TICKET_LEN + 1)), Err(TicketError::TooLong));
        assert!(Ticket::parse(&format!("  {}  \n", sample().to_text())).is_ok());
    }

    #[test]
    fn a_ticket_carries_at_most_max_ticket_addrs() {
        let mut ticket = sample();
        ticket.addrs = (0..MAX_TICKET_ADDRS + 4)
            .map(|i| format!("/ip4/10.0.0.{i}/tcp/1"))
            .collect();
        let parsed = Ticket::parse(&ticket.to_text()).unwrap();
        assert_eq!(parsed.addrs, ticket.addrs[..MAX_TICKET_ADDRS]);
    }

    proptest! {
        #[test]
        fn base32_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(decode_base32(&encode_base32(&bytes)), Some(bytes));
        }

        #[test]
        fn random_text_never_panics(text in "shoal1[a-z2-7]{0,300}") {
            let _ = Ticket::parse(&text);
        }
    }
}
