//! Wire messages and their CBOR codec.
//!
//! One protocol name per message family ([`PROTOCOL`]); every encoded message
//! starts with a version number, is at most [`MAX_MESSAGE_BYTES`] long, and
//! is checked after decoding (list lengths, value sizes). Decoding never
//! panics: any malformed input is a [`DecodeError`].

use serde::{Deserialize, Serialize};

use crate::record::{MAX_CREDENTIAL_BYTES, MAX_VALUE_BYTES};
use crate::{Addr, Key, Mode, PeerInfo, ProviderRecord, RecordError, ValueRecord};

/// The protocol name overlay messages travel under.
pub const PROTOCOL: &str = "/shoal/overlay/2";
/// The version every message carries.
pub const WIRE_VERSION: u8 = 2;
/// Hard cap on one encoded message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most peers one response may list.
pub const MAX_PEERS_PER_MESSAGE: usize = 32;
/// Most provider records one response may carry.
pub const MAX_PROVIDERS_PER_MESSAGE: usize = 32;
/// Most provider records one batched store may carry (the batch must also
/// fit under [`MAX_MESSAGE_BYTES`]).
pub const MAX_BATCH_RECORDS: usize = 512;

// A full response must fit under the cap: a value, its credentials, a full
// list of peers (a node address is at most ~1 KiB) and full provider records.
const _: () =
    assert!(MAX_VALUE_BYTES + 2 * MAX_CREDENTIAL_BYTES + MAX_PEERS_PER_MESSAGE * 1024 / 2 <= MAX_MESSAGE_BYTES);

/// A request from one peer to another.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(bound = "A: Addr")]
pub enum Request<A> {
    /// Are you there?
    Ping,
    /// Which peers do you know closest to `target`?
    FindNode {
        /// The key sought.
        target: Key,
    },
    /// The value record at `key` if you hold it, and closer peers.
    GetValue {
        /// The key sought.
        key: Key,
    },
    /// Providers of `key` you know of, and closer peers.
    GetProviders {
        /// The key sought.
        key: Key,
    },
    /// Store this value record (you are in its home).
    PutValue {
        /// The record, signed by its publisher.
        record: ValueRecord,
    },
    /// Store this provider record (you are in its home).
    AddProvider {
        /// The record, signed by the provider.
        record: ProviderRecord<A>,
    },
    /// Store these provider records (you are in the home of each): one
    /// message for many keys that share a home.
    AddProviders {
        /// The records, each signed by its provider.
        records: Vec<ProviderRecord<A>>,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(bound = "A: Addr")]
pub enum Response<A> {
    /// Answer to [`Request::Ping`].
    Pong,
    /// Answer to [`Request::FindNode`].
    Nodes {
        /// The closest peers the responder knows.
        closer: Vec<PeerInfo<A>>,
    },
    /// Answer to [`Request::GetValue`].
    Value {
        /// The record, if the responder holds it.
        record: Option<ValueRecord>,
        /// The closest peers the responder knows.
        closer: Vec<PeerInfo<A>>,
    },
    /// Answer to [`Request::GetProviders`].
    Providers {
        /// Provider records the responder holds.
        providers: Vec<ProviderRecord<A>>,
        /// The closest peers the responder knows.
        closer: Vec<PeerInfo<A>>,
    },
    /// The record was stored.
    Stored,
    /// The record was refused.
    Rejected(RecordError),
    /// Answer to [`Request::AddProviders`]: which records were refused, by
    /// position in the request; the rest were stored.
    StoredBatch {
        /// Positions of the refused records.
        refused: Vec<u32>,
    },
}

#[derive(Serialize)]
#[serde(bound = "A: Addr")]
struct OutRequest<'a, A> {
    version: u8,
    mode: Mode,
    request: &'a Request<A>,
}

#[derive(Deserialize)]
#[serde(bound = "A: Addr")]
struct InRequest<A> {
    version: u8,
    mode: Mode,
    request: Request<A>,
}

#[derive(Serialize)]
#[serde(bound = "A: Addr")]
struct OutResponse<'a, A> {
    version: u8,
    response: &'a Response<A>,
}

#[derive(Deserialize)]
#[serde(bound = "A: Addr")]
struct InResponse<A> {
    version: u8,
    response: Response<A>,
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoding is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message is {bytes} bytes, more than the {MAX_MESSAGE_BYTES}-byte cap")]
    TooLarge {
        /// The encoded size.
        bytes: usize,
    },
    /// The CBOR encoder failed.
    #[error("cannot encode message: {0}")]
    Cbor(String),
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than [`MAX_MESSAGE_BYTES`].
    #[error("message is {bytes} bytes, more than the {MAX_MESSAGE_BYTES}-byte cap")]
    TooLarge {
        /// The input's size.
        bytes: usize,
    },
    /// The input is not a CBOR encoding of a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message is from a protocol version this peer does not speak.
    #[error("unsupported protocol version {found} (this peer speaks {WIRE_VERSION})")]
    Version {
        /// The version in the message.
        found: u8,
    },
    /// A field is out of bounds (too many peers, a value too large, ...).
    #[error("message out of bounds: {0}")]
    OutOfBounds(&'static str),
    /// Bytes follow the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = Vec::with_capacity(256);
    ciborium::into_writer(message, &mut bytes).map_err(|e| EncodeError::Cbor(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge { bytes: bytes.len() });
    }
    Ok(bytes)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { bytes: bytes.len() });
    }
    let mut reader = bytes;
    // The recursion limit keeps a deeply nested input from exhausting the stack.
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, 32)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError::Trailing(reader.len()));
    }
    Ok(value)
}

/// Encodes a request sent by a peer in `mode`.
pub fn encode_request<A: Addr>(mode: Mode, request: &Request<A>) -> Result<Vec<u8>, EncodeError> {
    encode(&OutRequest {
        version: WIRE_VERSION,
        mode,
        request,
    })
}

/// Decodes and checks a request, returning the sender's mode with it.
pub fn decode_request<A: Addr>(bytes: &[u8]) -> Result<(Mode, Request<A>), DecodeError> {
    let message: InRequest<A> = decode(bytes)?;
    check_version(message.version)?;
    check_request(&message.request)?;
    Ok((message.mode, message.request))
}

/// Encodes a response.
pub fn encode_response<A: Addr>(response: &Response<A>) -> Result<Vec<u8>, EncodeError> {
    encode(&OutResponse {
        version: WIRE_VERSION,
        response,
    })
}

/// Decodes and checks a response.
pub fn decode_response<A: Addr>(bytes: &[u8]) -> Result<Response<A>, DecodeError> {
    let message: InResponse<A> = decode(bytes)?;
    check_version(message.version)?;
    check_response(&message.response)?;
    Ok(message.response)
}

fn check_version(found: u8) -> Result<(), DecodeError> {
    if found != WIRE_VERSION {
        return Err(DecodeError::Version { found });
    }
    Ok(())
}

fn check_value(record: &ValueRecord) -> Result<(), DecodeError> {
    if record.value.len() > MAX_VALUE_BYTES {
        return Err(DecodeError::OutOfBounds("value larger than MAX_VALUE_BYTES"));
    }
    check_credentials(&record.publisher, &record.signature)
}

fn check_credentials(publisher: &[u8], signature: &[u8]) -> Result<(), DecodeError> {
    if publisher.len() > MAX_CREDENTIAL_BYTES || signature.len() > MAX_CREDENTIAL_BYTES {
        return Err(DecodeError::OutOfBounds("credential larger than MAX_CREDENTIAL_BYTES"));
    }
    Ok(())
}

fn check_peers<A>(peers: &[PeerInfo<A>]) -> Result<(), DecodeError> {
    if peers.len() > MAX_PEERS_PER_MESSAGE {
        return Err(DecodeError::OutOfBounds("more peers than MAX_PEERS_PER_MESSAGE"));
    }
    Ok(())
}

fn check_request<A: Addr>(request: &Request<A>) -> Result<(), DecodeError> {
    match request {
        Request::PutValue { record } => check_value(record),
        Request::AddProvider { record } => check_credentials(&record.publisher, &record.signature),
        Request::AddProviders { records } => {
            if records.is_empty() || records.len() > MAX_BATCH_RECORDS {
                return Err(DecodeError::OutOfBounds(
                    "a batch of 0 or more than MAX_BATCH_RECORDS records",
                ));
            }
            records
                .iter()
                .try_for_each(|r| check_credentials(&r.publisher, &r.signature))
        }
        Request::Ping | Request::FindNode { .. } | Request::GetValue { .. } | Request::GetProviders { .. } => Ok(()),
    }
}

fn check_response<A: Addr>(response: &Response<A>) -> Result<(), DecodeError> {
    match response {
        Response::Nodes { closer } => check_peers(closer),
        Response::Value { record, closer } => {
            if let Some(record) = record {
                check_value(record)?;
            }
            check_peers(closer)
        }
        Response::Providers { providers, closer } => {
            if providers.len() > MAX_PROVIDERS_PER_MESSAGE {
                return Err(DecodeError::OutOfBounds(
                    "more providers than MAX_PROVIDERS_PER_MESSAGE",
                ));
            }
            for p in providers {
                check_credentials(&p.publisher, &p.signature)?;
            }
            check_peers(closer)
        }
        Response::StoredBatch { refused } => {
            if refused.len() > MAX_BATCH_RECORDS {
                return Err(DecodeError::OutOfBounds("more refusals than MAX_BATCH_RECORDS"));
            }
            Ok(())
        }
        Response::Pong | Response::Stored | Response::Rejected(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Instant, Rng};
    use proptest::prelude::*;

    fn sample_requests(rng: &mut Rng) -> Vec<Request<u32>> {
        let key = rng.key();
        let record = ValueRecord {
            key,
            value: b"hello".to_vec(),
            seq: 3,
            expires: Instant::from_micros(99),
            publisher: vec![1; 32],
            signature: vec![2; 64],
        };
        let provider = ProviderRecord {
            key,
            provider: PeerInfo::new(rng.key(), 7u32),
            expires: Instant::from_micros(5),
            publisher: vec![3; 32],
            signature: vec![4; 64],
            declined: false,
            issued: Instant::ZERO,
        };
        vec![
            Request::Ping,
            Request::FindNode { target: key },
            Request::GetValue { key },
            Request::GetProviders { key },
            Request::PutValue { record },
            Request::AddProvider {
                record: ProviderRecord {
                    declined: true,
                    issued: Instant::from_micros(4),
                    ..provider.clone()
                },
            },
            Request::AddProvider {
                record: provider.clone(),
            },
            Request::AddProviders {
                records: vec![provider; 3],
            },
        ]
    }

    fn sample_responses(rng: &mut Rng) -> Vec<Response<u32>> {
        let closer: Vec<PeerInfo<u32>> = (0..20).map(|i| PeerInfo::new(rng.key(), i)).collect();
        vec![
            Response::Pong,
            Response::Nodes { closer: closer.clone() },
            Response::Value {
                record: None,
                closer: closer.clone(),
            },
            Response::Providers {
                providers: vec![],
                closer,
            },
            Response::Stored,
            Response::Rejected(RecordError::Conflict { key: rng.key() }),
            Response::StoredBatch { refused: vec![0, 2] },
        ]
    }

    #[test]
    fn round_trips() {
        let mut rng = Rng::seed_from_u64(1);
        for request in sample_requests(&mut rng) {
            let bytes = encode_request(Mode::Client, &request).unwrap();
            assert_eq!(decode_request::<u32>(&bytes).unwrap(), (Mode::Client, request));
        }
        for response in sample_responses(&mut rng) {
            let bytes = encode_response(&response).unwrap();
            assert_eq!(decode_response::<u32>(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn refuses_oversized_and_out_of_bounds() {
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(decode_request::<u32>(&big), Err(DecodeError::TooLarge { .. })));
        let mut rng = Rng::seed_from_u64(2);
        let many: Vec<PeerInfo<u32>> = (0..MAX_PEERS_PER_MESSAGE as u32 + 1)
            .map(|i| PeerInfo::new(rng.key(), i))
            .collect();
        let bytes = encode_response(&Response::Nodes { closer: many }).unwrap();
        assert!(matches!(
            decode_response::<u32>(&bytes),
            Err(DecodeError::OutOfBounds(_))
        ));
        let huge = ValueRecord {
            key: rng.key(),
            value: vec![0; MAX_VALUE_BYTES + 1],
            seq: 0,
            expires: Instant::ZERO,
            publisher: vec![],
            signature: vec![],
        };
        let bytes = encode_request(Mode::Server, &Request::<u32>::PutValue { record: huge }).unwrap();
        assert!(matches!(
            decode_request::<u32>(&bytes),
            Err(DecodeError::OutOfBounds(_))
        ));
    }

    #[test]
    fn refuses_other_versions_and_trailing_bytes() {
        let mut bytes = encode_request::<u32>(Mode::Server, &Request::Ping).unwrap();
        bytes.push(0);
        assert_eq!(decode_request::<u32>(&bytes), Err(DecodeError::Trailing(1)));
        #[derive(Serialize)]
        struct Future {
            version: u8,
            mode: Mode,
            request: Request<u32>,
        }
        let mut future = Vec::new();
        ciborium::into_writer(
            &Future {
                version: 9,
                mode: Mode::Server,
                request: Request::Ping,
            },
            &mut future,
        )
        .unwrap();
        assert_eq!(decode_request::<u32>(&future), Err(DecodeError::Version { found: 9 }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request::<u32>(&bytes);
            let _ = decode_response::<u32>(&bytes);
        }

        /// Valid messages with bytes flipped, cut or spliced never panic, and
        /// whatever still decodes re-encodes within the cap.
        #[test]
        fn mutated_messages_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut rng = Rng::seed_from_u64(seed);
            let mut messages: Vec<Vec<u8>> = sample_requests(&mut rng).iter().map(|r| encode_request(Mode::Server, r).unwrap()).collect();
            messages.extend(sample_responses(&mut rng).iter().map(|r| encode_response(r).unwrap()));
            for mut bytes in messages {
                for (at, byte) in &flips {
                    let i = at % bytes.len();
                    bytes[i] ^= byte;
                }
                let whole = bytes.clone();
                bytes.truncate(cut % (bytes.len() + 1));
                for input in [&whole, &bytes] {
                    if let Ok((mode, request)) = decode_request::<u32>(input) {
                        prop_assert!(encode_request(mode, &request).is_ok());
                    }
                    if let Ok(response) = decode_response::<u32>(input) {
                        prop_assert!(encode_response(&response).is_ok());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    /// Headers that declare enormous lengths must fail fast, not allocate.
    #[test]
    fn huge_declared_lengths_are_errors() {
        let cases: [&[u8]; 4] = [
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x7b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ];
        for bytes in cases {
            assert!(decode_request::<u32>(bytes).is_err());
            assert!(decode_response::<u32>(bytes).is_err());
        }
        // Deep nesting hits the recursion limit instead of the stack.
        let deep = vec![0x81u8; 10_000];
        assert!(decode_request::<u32>(&deep).is_err());
    }
}

/// Every bound holds exactly at its limit and refuses one past it, in every
/// message that carries the bounded field.
#[cfg(test)]
mod bounds {
    use super::*;
    use crate::{Instant, Rng};

    fn provider(rng: &mut Rng, publisher: usize, signature: usize) -> ProviderRecord<u32> {
        ProviderRecord {
            key: rng.key(),
            provider: PeerInfo::new(rng.key(), 7),
            expires: Instant::from_micros(5),
            publisher: vec![3; publisher],
            signature: vec![4; signature],
            declined: false,
            issued: Instant::ZERO,
        }
    }

    fn value(rng: &mut Rng, len: usize, publisher: usize, signature: usize) -> ValueRecord {
        ValueRecord {
            key: rng.key(),
            value: vec![1; len],
            seq: 1,
            expires: Instant::from_micros(9),
            publisher: vec![1; publisher],
            signature: vec![2; signature],
        }
    }

    fn request_ok(request: Request<u32>) -> bool {
        let bytes = encode_request(Mode::Server, &request).unwrap();
        match decode_request::<u32>(&bytes) {
            Ok((_, decoded)) => {
                assert_eq!(decoded, request);
                true
            }
            Err(DecodeError::OutOfBounds(_)) => false,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn response_ok(response: Response<u32>) -> bool {
        let bytes = encode_response(&response).unwrap();
        match decode_response::<u32>(&bytes) {
            Ok(decoded) => {
                assert_eq!(decoded, response);
                true
            }
            Err(DecodeError::OutOfBounds(_)) => false,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn a_value_may_be_exactly_max_value_bytes() {
        let mut rng = Rng::seed_from_u64(1);
        assert!(request_ok(Request::PutValue {
            record: value(&mut rng, MAX_VALUE_BYTES, 32, 64)
        }));
        assert!(!request_ok(Request::PutValue {
            record: value(&mut rng, MAX_VALUE_BYTES + 1, 32, 64)
        }));
        assert!(response_ok(Response::Value {
            record: Some(value(&mut rng, MAX_VALUE_BYTES, 32, 64)),
            closer: vec![],
        }));
        assert!(!response_ok(Response::Value {
            record: Some(value(&mut rng, MAX_VALUE_BYTES + 1, 32, 64)),
            closer: vec![],
        }));
    }

    #[test]
    fn credentials_are_bounded_in_every_message_that_carries_them() {
        let mut rng = Rng::seed_from_u64(2);
        let max = MAX_CREDENTIAL_BYTES;
        // (publisher, signature, accepted): each field alone can break the bound.
        for (publisher, signature, accepted) in [(max, max, true), (max + 1, 1, false), (1, max + 1, false)] {
            let label = format!("publisher {publisher}, signature {signature}");
            let p = provider(&mut rng, publisher, signature);
            assert_eq!(
                request_ok(Request::AddProvider { record: p.clone() }),
                accepted,
                "AddProvider, {label}"
            );
            let batch = vec![provider(&mut rng, 1, 1), p.clone()];
            assert_eq!(
                request_ok(Request::AddProviders { records: batch }),
                accepted,
                "AddProviders, {label}"
            );
            let v = value(&mut rng, 3, publisher, signature);
            assert_eq!(
                request_ok(Request::PutValue { record: v.clone() }),
                accepted,
                "PutValue, {label}"
            );
            let providers = vec![provider(&mut rng, 1, 1), p];
            assert_eq!(
                response_ok(Response::Providers {
                    providers,
                    closer: vec![]
                }),
                accepted,
                "Providers, {label}"
            );
            assert_eq!(
                response_ok(Response::Value {
                    record: Some(v),
                    closer: vec![]
                }),
                accepted,
                "Value, {label}"
            );
        }
    }

    #[test]
    fn lists_may_be_exactly_their_limit() {
        let mut rng = Rng::seed_from_u64(3);
        let peers = |rng: &mut Rng, n: usize| -> Vec<PeerInfo<u32>> {
            (0..n as u32).map(|i| PeerInfo::new(rng.key(), i)).collect()
        };
        for (n, accepted) in [(MAX_PEERS_PER_MESSAGE, true), (MAX_PEERS_PER_MESSAGE + 1, false)] {
            assert_eq!(
                response_ok(Response::Nodes {
                    closer: peers(&mut rng, n)
                }),
                accepted,
                "Nodes, {n}"
            );
            assert_eq!(
                response_ok(Response::Value {
                    record: None,
                    closer: peers(&mut rng, n)
                }),
                accepted,
                "Value, {n} peers"
            );
            assert_eq!(
                response_ok(Response::Providers {
                    providers: vec![],
                    closer: peers(&mut rng, n)
                }),
                accepted,
                "Providers, {n} peers"
            );
        }
        for (n, accepted) in [
            (MAX_PROVIDERS_PER_MESSAGE, true),
            (MAX_PROVIDERS_PER_MESSAGE + 1, false),
        ] {
            let providers = (0..n).map(|_| provider(&mut rng, 32, 64)).collect();
            assert_eq!(
                response_ok(Response::Providers {
                    providers,
                    closer: vec![]
                }),
                accepted,
                "{n} providers"
            );
        }
        for (n, accepted) in [(MAX_BATCH_RECORDS, true), (MAX_BATCH_RECORDS + 1, false)] {
            let refused = (0..n as u32).collect();
            assert_eq!(response_ok(Response::StoredBatch { refused }), accepted, "{n} refusals");
        }
        assert!(!request_ok(Request::AddProviders { records: vec![] }), "an empty batch");
        assert!(request_ok(Request::AddProviders {
            records: vec![provider(&mut rng, 32, 64)]
        }));
    }

    #[test]
    fn a_batch_may_hold_exactly_max_batch_records() {
        let mut rng = Rng::seed_from_u64(4);
        let records: Vec<_> = (0..MAX_BATCH_RECORDS + 1).map(|_| provider(&mut rng, 0, 0)).collect();
        assert!(request_ok(Request::AddProviders {
            records: records[..MAX_BATCH_RECORDS].to_vec()
        }));
        assert!(!request_ok(Request::AddProviders { records }));
    }

    /// An AddProviders request of exactly `target` encoded bytes: whole
    /// records first, then credentials lengthened a byte at a time (a byte
    /// string of 24..=255 bytes has a two-byte header, so each added byte adds
    /// exactly one).
    fn batch_of_exactly(rng: &mut Rng, target: usize) -> Request<u32> {
        let len = |records: &Vec<ProviderRecord<u32>>| {
            encode_request(
                Mode::Server,
                &Request::AddProviders {
                    records: records.clone(),
                },
            )
            .map(|b| b.len())
            .unwrap_or(usize::MAX)
        };
        let mut records = Vec::new();
        loop {
            records.push(provider(rng, 24, 24));
            if len(&records) > target {
                records.pop();
                break;
            }
        }
        let mut deficit = target - len(&records);
        for record in records.iter_mut().rev() {
            for field in [&mut record.publisher, &mut record.signature] {
                let grow = deficit.min(255 - field.len());
                field.resize(field.len() + grow, 5);
                deficit -= grow;
            }
        }
        assert_eq!(deficit, 0);
        let request = Request::AddProviders { records };
        assert_eq!(encode_request(Mode::Server, &request).unwrap().len(), target);
        request
    }

    #[test]
    fn a_message_may_be_exactly_max_message_bytes() {
        let mut rng = Rng::seed_from_u64(5);
        let request = batch_of_exactly(&mut rng, MAX_MESSAGE_BYTES);
        let bytes = encode_request(Mode::Server, &request).unwrap();
        assert_eq!(decode_request::<u32>(&bytes).unwrap().1, request);

        // One byte more: the encoder refuses it, and so does the decoder when
        // another implementation sends it.
        let Request::AddProviders { mut records } = request else {
            unreachable!()
        };
        let short = records.iter_mut().find(|r| r.publisher.len() < 255).unwrap();
        short.publisher.push(5);
        let request = Request::AddProviders { records };
        assert!(matches!(
            encode_request(Mode::Server, &request),
            Err(EncodeError::TooLarge { bytes }) if bytes == MAX_MESSAGE_BYTES + 1
        ));
        let mut raw = Vec::new();
        ciborium::into_writer(
            &OutRequest {
                version: WIRE_VERSION,
                mode: Mode::Server,
                request: &request,
            },
            &mut raw,
        )
        .unwrap();
        assert_eq!(raw.len(), MAX_MESSAGE_BYTES + 1);
        assert_eq!(
            decode_request::<u32>(&raw),
            Err(DecodeError::TooLarge {
                bytes: MAX_MESSAGE_BYTES + 1
            })
        );
    }
}
