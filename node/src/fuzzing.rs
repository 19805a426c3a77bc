//! Entry points for the fuzz targets and their corpus replay.
//!
//! Every decoder that a peer or a file can reach has one function here that
//! takes arbitrary bytes, runs the decoder exactly as the node runs it, and
//! checks what holds of every input: nothing panics, and what decodes
//! encodes again to the same value (where the format has an encoder). The
//! cargo-fuzz targets in `fuzz/` each call one of these functions, and
//! `node/tests/fuzz_corpus.rs` replays the kept corpus through the same
//! functions on stable, so a finding fixed once stays fixed.
//!
//! Here a panic is how a finding is reported: each `assert` and `expect`
//! names the property that failed.
//!
//! Not an API: hidden from the docs, and free to change with the decoders.

#![doc(hidden)]

pub mod seeds;

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::multiaddr::Protocol;
use shoal_overlay::wire::{self, MAX_MESSAGE_BYTES};
use shoal_overlay::{Addr, Config, Instant, PeerInfo, ProviderRecord, Request, Response, ValueRecord};
use shoal_resources::collection;
use shoal_resources::pin::Pin as PinRecord;
use shoal_resources::ticket::Ticket;

use crate::NodeAddr;
use crate::admission::SwarmKey;
use crate::{codec, files, handoff, identity, known, saved, settings};

/// What a target runs: one input, any bytes; panics on a finding.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory of its corpus under
/// `fuzz/corpus/` and the name of its cargo-fuzz target) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_request", wire_request),
    ("wire_response", wire_response),
    ("frame", frame),
    ("ticket", ticket),
    ("collection", collection),
    ("pin", pin),
    ("slot_offer", slot_offer),
    ("job_record", job_record),
    ("jobs_message", jobs_message),
    ("saved_records", saved_records),
    ("known_peers", known_peers),
    ("settings", settings),
    ("size", size),
    ("swarm_key", swarm_key),
    ("admission", admission),
    ("handoff_offer", handoff_offer),
    ("identity", identity),
    ("blob_request", blob_request),
    ("blob_response", blob_response),
    ("quorum_message", quorum_message),
];

/// An overlay request as a peer sends it (the body of a frame): decoded
/// with the node's address type, re-encoded and decoded to the same value;
/// its records are verified and its addresses checked against their keys,
/// as the core does with them.
pub fn wire_request(data: &[u8]) {
    let Ok((mode, request)) = wire::decode_request::<NodeAddr>(data) else {
        return;
    };
    let bytes = wire::encode_request(mode, &request).expect("a decoded request encodes again");
    let again = wire::decode_request::<NodeAddr>(&bytes).expect("a re-encoded request decodes");
    assert_eq!(again, (mode, request.clone()), "a request round-trips");
    match &request {
        Request::PutValue { record } => check_value(record),
        Request::AddProvider { record } => check_provider(record),
        Request::AddProviders { records } => records.iter().for_each(check_provider),
        Request::Ping | Request::FindNode { .. } | Request::GetValue { .. } | Request::GetProviders { .. } => {}
    }
}

/// An overlay response as a peer sends it; checked like [`wire_request`].
pub fn wire_response(data: &[u8]) {
    let Ok(response) = wire::decode_response::<NodeAddr>(data) else {
        return;
    };
    let bytes = wire::encode_response(&response).expect("a decoded response encodes again");
    let again = wire::decode_response::<NodeAddr>(&bytes).expect("a re-encoded response decodes");
    assert_eq!(again, response, "a response round-trips");
    match &response {
        Response::Nodes { closer } => check_peers(closer),
        Response::Value { record, closer } => {
            record.iter().for_each(check_value);
            check_peers(closer);
        }
        Response::Providers { providers, closer } => {
            providers.iter().for_each(check_provider);
            check_peers(closer);
        }
        Response::Pong | Response::Stored | Response::Rejected(_) | Response::StoredBatch { .. } => {}
    }
}

/// The overlay's frame codec reading a stream that holds `data`: a frame
/// it reads is within the cap and is written back as the same bytes.
pub fn frame(data: &[u8]) {
    futures::executor::block_on(async {
        let Ok(frame) = codec::read_frame(&mut futures::io::Cursor::new(data)).await else {
            return;
        };
        assert!(frame.len() <= MAX_MESSAGE_BYTES, "a frame read is within the cap");
        let read = &data[..4 + frame.len()];
        let mut written = futures::io::Cursor::new(Vec::new());
        codec::write_frame(&mut written, frame)
            .await
            .expect("a frame that was read can be written");
        assert_eq!(written.into_inner(), read, "a frame round-trips");
    });
}

/// A ticket as pasted (the bytes as UTF-8, lossily).
pub fn ticket(data: &[u8]) {
    let Ok(ticket) = Ticket::parse(&String::from_utf8_lossy(data)) else {
        return;
    };
    assert_eq!(Ticket::parse(&ticket.to_text()), Ok(ticket), "a ticket round-trips");
}

/// A directory listing fetched from a peer: every path it yields is safe,
/// and it encodes again to the same entries, sorted by path.
pub fn collection(data: &[u8]) {
    let Ok(entries) = collection::decode(data) else {
        return;
    };
    assert!(
        entries.iter().all(|e| collection::valid_path(&e.path)),
        "only safe paths"
    );
    let bytes = collection::encode(&entries).expect("a decoded listing encodes again");
    let mut sorted = entries;
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(collection::decode(&bytes), Ok(sorted), "a listing round-trips");
}

/// The value of a pin record.
pub fn pin(data: &[u8]) {
    let Some(pin) = PinRecord::decode(data) else {
        return;
    };
    assert_eq!(PinRecord::decode(&pin.encode()), Some(pin), "a pin round-trips");
}

/// The value of a slot offer record
/// (`shoal_resources::compute::SlotOffer::decode`): a decoded offer is
/// within its bounds and round-trips.
pub fn slot_offer(data: &[u8]) {
    let Some(offer) = shoal_resources::compute::SlotOffer::decode(data) else {
        return;
    };
    assert!(!offer.kinds.is_empty(), "an offer names a kind");
    assert!(offer.labels.len() <= shoal_resources::compute::offer::MAX_LABELS);
    assert_eq!(
        shoal_resources::compute::SlotOffer::decode(&offer.encode()),
        Some(offer),
        "an offer round-trips"
    );
}

/// The value of a job record (`shoal_resources::compute::JobRecord::decode`):
/// a decoded record round-trips, and a stale placement cannot end it.
pub fn job_record(data: &[u8]) {
    use shoal_resources::compute::{JobRecord, Placed};
    let Some(record) = JobRecord::decode(data) else {
        return;
    };
    assert_eq!(
        JobRecord::decode(&record.encode()),
        Some(record.clone()),
        "a record round-trips"
    );
    let mut changed = record.clone();
    let stranger = Placed {
        peer: shoal_overlay::Key::of_content(b"not the executor"),
        token: u64::MAX,
    };
    if record.placement() != Some(stranger) {
        let now = shoal_overlay::Instant::from_micros(1);
        assert!(
            changed.end(now, stranger, 0, None).is_err(),
            "a stale placement ends nothing"
        );
        assert_eq!(changed, record, "a refused change leaves the record as it was");
    }
}

/// A message of `/shoal/jobs/1` as a peer sends it (the body of a frame):
/// read as a request (whose submission is checked as an executor checks a
/// grant)
/// and as an event (applied to a job's mirror, which stays within its cap);
/// what decodes round-trips.
pub fn jobs_message(data: &[u8]) {
    use crate::jobs::log::{JobLog, MAX_MIRRORED_BYTES};
    use crate::jobs::protocol::{Event, Request, check_spec};
    if let Ok(request) = ciborium::from_reader::<Request, _>(data) {
        if let Request::Grant { job, submission, .. } = &request
            && let Some(submission) = crate::jobs::submission::Submission::decode(submission)
        {
            let _ = check_spec(&submission.spec);
            let _ = submission.check(job);
        }
        let again = codec::encode_cbor(&request).expect("a request encodes");
        let back: Request = ciborium::from_reader(&again[4..]).expect("a request decodes again");
        assert_eq!(format!("{back:?}"), format!("{request:?}"), "a request round-trips");
    }
    if let Ok(event) = ciborium::from_reader::<Event, _>(data) {
        let mirror = JobLog::default();
        mirror.apply(&event);
        mirror.apply(&event);
        assert!(mirror.len() <= MAX_MIRRORED_BYTES, "a mirror stays within its cap");
        let again = codec::encode_cbor(&event).expect("an event encodes");
        let back: Event = ciborium::from_reader(&again[4..]).expect("an event decodes again");
        assert_eq!(format!("{back:?}"), format!("{event:?}"), "an event round-trips");
    }
}

/// The contents of `records.cbor`: read back as the node does on start,
/// written and read again to the same records, and each verified as the
/// core does before it keeps one.
pub fn saved_records(data: &[u8]) {
    let Ok((values, providers)) = saved::parse(data) else {
        return;
    };
    let mut bytes = Vec::new();
    saved::encode(values.iter(), providers.iter(), &mut bytes).expect("loaded records encode again");
    let again = saved::parse(bytes.as_slice()).expect("re-encoded records parse");
    assert_eq!(again, (values.clone(), providers.clone()), "saved records round-trip");
    values.iter().for_each(check_value);
    providers.iter().for_each(check_provider);
}

/// The text of `known-peers` (the bytes as UTF-8, lossily): at most
/// `MAX_KNOWN_PEERS` addresses, each ending in `/p2p/PEER_ID`, which the
/// file's own format writes and reads back unchanged.
pub fn known_peers(data: &[u8]) {
    let source = Path::new(known::KNOWN_PEERS_FILE);
    let peers = known::parse(&String::from_utf8_lossy(data), source);
    assert!(peers.len() <= known::MAX_KNOWN_PEERS, "the list is bounded");
    assert!(
        peers.iter().all(|a| matches!(a.iter().last(), Some(Protocol::P2p(_)))),
        "every address names its peer"
    );
    let text: String = peers.iter().map(|a| format!("{a}\n")).collect();
    assert_eq!(known::parse(&text, source), peers, "known peers round-trip");
}

/// The text of `shoal.toml` (the bytes as UTF-8, lossily), and its quota
/// as `resolve` reads it.
pub fn settings(data: &[u8]) {
    let Ok(file) = settings::FileSettings::parse(&String::from_utf8_lossy(data)) else {
        return;
    };
    if let Some(quota) = file.quota {
        size(quota.as_bytes());
    }
}

/// A size such as `10G` (the bytes as UTF-8, lossily): a size that parses
/// prints as a number of bytes that parses to the same size.
pub fn size(data: &[u8]) {
    let Ok(bytes) = settings::parse_size(&String::from_utf8_lossy(data)) else {
        return;
    };
    assert_eq!(
        settings::parse_size(&bytes.to_string()),
        Ok(bytes),
        "a size round-trips"
    );
}

/// The text of a swarm key file (the bytes as UTF-8, lossily; `load`
/// refuses a file that is not UTF-8).
pub fn swarm_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(key) = SwarmKey::parse(&text) else {
        return;
    };
    let again = SwarmKey::parse(&text).expect("a key that parsed parses again");
    assert_eq!(key.fingerprint(), again.fingerprint(), "parsing is deterministic");
}

/// The admission handshake with `data` as everything the remote sends,
/// once as the listener and once as the dialer: without the swarm key no
/// bytes are admitted.
pub fn admission(data: &[u8]) {
    let key = SwarmKey::parse(FUZZ_SWARM_KEY).expect("the fuzzing swarm key parses");
    let (local, remote) = (peer_id(1), peer_id(2));
    for dialer in [false, true] {
        let admitted = futures::executor::block_on(crate::admission::exchange(
            &key,
            dialer,
            local,
            remote,
            Remote { sends: data },
        ));
        assert!(admitted.is_err(), "bytes made without the key were admitted");
    }
}

/// A hand-off offer read from a stream that holds `data`: an offer read
/// encodes again to the same id and size.
pub fn handoff_offer(data: &[u8]) {
    futures::executor::block_on(async {
        let Ok((id, size)) = handoff::read_offer(&mut futures::io::Cursor::new(data)).await else {
            return;
        };
        let bytes = handoff::encode_offer(id, size).expect("an offer read encodes again");
        let again = handoff::read_offer(&mut futures::io::Cursor::new(bytes)).await;
        assert_eq!(again.ok(), Some((id, size)), "an offer round-trips");
    });
}

/// The contents of `identity.key`: a keypair that loads encodes again to
/// the same identity.
pub fn identity(data: &[u8]) {
    let Some(keypair) = identity::parse(data) else {
        return;
    };
    let bytes = keypair.to_protobuf_encoding().expect("an ed25519 keypair encodes");
    let again = identity::parse(&bytes).expect("a re-encoded keypair loads");
    assert_eq!(again.public(), keypair.public(), "an identity round-trips");
}

/// The body of a blob request frame, as a provider reads it from a
/// downloader. (`files` has no public encoder of requests, so there is no
/// round trip to check.)
pub fn blob_request(data: &[u8]) {
    let _ = files::decode_request(data);
}

/// A whole blob response, as a downloader reads it from a provider: the
/// payload is no longer than what was sent, and framed again (in chunks of
/// `RESPONSE_CHUNK_BYTES`) it reads back the same.
pub fn blob_response(data: &[u8]) {
    futures::executor::block_on(async {
        let mut buffer = Vec::new();
        let Ok((status, size, len)) = files::read_response(&mut futures::io::Cursor::new(data), &mut buffer).await
        else {
            return;
        };
        assert!(len <= buffer.len() && len <= data.len(), "the payload is what was sent");
        let payload = &buffer[..len];
        let mut framed = vec![status];
        framed.extend_from_slice(&size.to_be_bytes());
        for chunk in payload.chunks(RESPONSE_CHUNK_BYTES) {
            framed.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            framed.extend_from_slice(chunk);
        }
        framed.extend_from_slice(&0u32.to_be_bytes());
        let mut again = Vec::new();
        let read = files::read_response(&mut futures::io::Cursor::new(framed), &mut again).await;
        assert_eq!(
            read.ok(),
            Some((status, size, len)),
            "a response re-framed reads the same"
        );
        assert_eq!(&again[..len], payload, "a response re-framed carries the same payload");
    });
}

/// Chunks of a re-framed blob response: one group, well under the largest
/// chunk a downloader accepts.
const RESPONSE_CHUNK_BYTES: usize = 16 * 1024;

/// The swarm key the admission target runs under.
const FUZZ_SWARM_KEY: &str = "/shoal/swarm-key/1\n0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";

/// A fixed ed25519 peer id.
fn peer_id(seed: u8) -> libp2p::PeerId {
    libp2p::identity::Keypair::ed25519_from_bytes([seed; 32])
        .expect("32 bytes are an ed25519 secret key")
        .public()
        .to_peer_id()
}

/// The checks the core makes of a value record; only that none panics.
fn check_value(record: &ValueRecord) {
    let _ = record.verify(identity::verifier(), Instant::ZERO, max_lifetime());
}

/// The checks the core makes of a provider record; only that none panics.
fn check_provider(record: &ProviderRecord<NodeAddr>) {
    let _ = record.verify(identity::verifier(), Instant::ZERO, max_lifetime());
}

/// Whether each peer's address carries its key; only that none panics.
fn check_peers(peers: &[PeerInfo<NodeAddr>]) {
    for peer in peers {
        let _ = peer.addr.matches_key(&peer.key);
    }
}

fn max_lifetime() -> std::time::Duration {
    Config::new(identity::verifier()).max_value_lifetime
}

/// The remote end of an admission stream: it sends `sends`, then closes,
/// and swallows whatever it is sent. Never pending, so a handshake on it
/// runs to its end under `block_on`.
struct Remote<'a> {
    sends: &'a [u8],
}

impl AsyncRead for Remote<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.sends.len());
        buf[..n].copy_from_slice(&self.sends[..n]);
        self.sends = &self.sends[n..];
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Remote<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A message of the quorum protocol (`/shoal/quorum/1`) as a peer sends
/// it, a member's reply, or a member's saved state file: each decoded as
/// the node decodes it and round-tripped; a request is also handled by a
/// member (its state in a scratch directory, the node's validators), which
/// answers without panicking, and a state file is read back as a member
/// reads its directory on start.
pub fn quorum_message(data: &[u8]) {
    use crate::quorum::{Entry, Kind, Quorum, Reply, Validator, Wire};
    use std::sync::OnceLock;
    static MEMBER: OnceLock<(libp2p::PeerId, Quorum)> = OnceLock::new();
    if let Ok(wire) = ciborium::from_reader::<Wire, _>(data) {
        let again = codec::encode_cbor(&wire).expect("a request encodes");
        let back: Wire = ciborium::from_reader(&again[4..]).expect("a request decodes again");
        assert_eq!(format!("{back:?}"), format!("{wire:?}"), "a request round-trips");
        let (local, member) = MEMBER.get_or_init(|| {
            let local = libp2p::identity::Keypair::ed25519_from_bytes([9; 32])
                .expect("a fixed seed makes a key")
                .public()
                .to_peer_id();
            // One scratch member for the whole run, emptied first.
            let dir = std::env::temp_dir().join("shoal-fuzz-quorum");
            let _ = std::fs::remove_dir_all(&dir);
            let validators = [(Kind::Job, crate::jobs::submission::validate as Validator)].into();
            (
                local,
                Quorum::open(local, &dir, validators).expect("a scratch member opens"),
            )
        });
        // From another peer, and from the member itself (its own asks).
        let other = libp2p::identity::Keypair::ed25519_from_bytes([8; 32])
            .expect("a fixed seed makes a key")
            .public()
            .to_peer_id();
        let _ = member.handle(&other, wire.clone());
        let _ = member.handle(local, wire);
    }
    if let Ok(reply) = ciborium::from_reader::<Reply, _>(data) {
        let again = codec::encode_cbor(&reply).expect("a reply encodes");
        let back: Reply = ciborium::from_reader(&again[4..]).expect("a reply decodes again");
        assert_eq!(back, reply, "a reply round-trips");
    }
    if ciborium::from_reader::<Entry, _>(data).is_ok() {
        let dir = std::env::temp_dir().join(format!(
            "shoal-fuzz-quorum-entry-{}-{}",
            std::process::id(),
            blake3::hash(data).to_hex()
        ));
        let state = dir.join("quorum");
        if std::fs::create_dir_all(&state).is_ok()
            && std::fs::write(state.join(shoal_overlay::Key::of_content(data).to_string()), data).is_ok()
        {
            let local = libp2p::PeerId::random();
            let validators = [(Kind::Job, crate::jobs::submission::validate as Validator)].into();
            let member = Quorum::open(local, &dir, validators).expect("a state file that decodes is read back");
            assert!(
                member.entry(&shoal_overlay::Key::of_content(data)).is_some(),
                "a state file that decodes is kept"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
