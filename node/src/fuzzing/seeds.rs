//! Seed inputs for the fuzz targets: real encodings made by the node's own
//! encoders (signed records, tickets, listings, files as the node writes
//! them), so the fuzzer starts from inputs that pass every check and
//! mutates from there. `node/tests/fuzz_corpus.rs` writes them into
//! `fuzz/corpus/` when asked (`cargo test -p shoal-node --test fuzz_corpus
//! -- --ignored write_seeds`).

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use shoal_overlay::wire::{self, MAX_MESSAGE_BYTES};
use shoal_overlay::{Instant, Key, Mode, PeerInfo, ProviderRecord, RecordError, Request, Response, ValueRecord};
use shoal_resources::blob::BlobInfo;
use shoal_resources::collection::{self, Entry};
use shoal_resources::pin::Pin;
use shoal_resources::ticket::Ticket;

use super::FUZZ_SWARM_KEY;
use crate::NodeAddr;
use crate::identity::NodeSigner;
use crate::{admission, handoff, saved};

/// An hour from the start of time: within every record's allowed lifetime
/// when the fuzz targets verify at [`Instant::ZERO`].
const EXPIRES: Instant = Instant::from_micros(3_600_000_000);

/// The seeds of the target named `target` (a name in [`super::TARGETS`]);
/// empty for a name that is not a target.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "wire_request" => requests().iter().map(|(mode, r)| encode_request(*mode, r)).collect(),
        "wire_response" => responses().iter().map(encode_response).collect(),
        "frame" => frames(),
        "ticket" => tickets().into_iter().map(|t| t.to_text().into_bytes()).collect(),
        "collection" => listings(),
        "pin" => [
            Pin {
                replicas: 3,
                size: 1 << 40,
            },
            Pin { replicas: 0, size: 0 },
        ]
        .iter()
        .map(Pin::encode)
        .collect(),
        "slot_offer" => slot_offers(),
        "job_record" => job_records(),
        "jobs_message" => jobs_messages(),
        "saved_records" => saved_files(),
        "known_peers" => vec![known_peers_text().into_bytes(), Vec::new()],
        "settings" => settings_texts().into_iter().map(|t| t.as_bytes().to_vec()).collect(),
        "size" => ["123", "10G", "500MiB", "2 TB", "7k", "0"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect(),
        "swarm_key" => vec![
            FUZZ_SWARM_KEY.as_bytes().to_vec(),
            FUZZ_SWARM_KEY.replace('\n', "\r\n").into_bytes(),
        ],
        "admission" => admission_messages(),
        "handoff_offer" => offers(),
        "identity" => (1..=2u8)
            .filter_map(|n| keypair(n).to_protobuf_encoding().ok())
            .collect(),
        "blob_request" => blob_requests(),
        "blob_response" => blob_responses(),
        "quorum_message" => quorum_messages(),
        _ => Vec::new(),
    }
}

/// A peer of the seeds: its keypair, from a fixed secret.
fn keypair(n: u8) -> Keypair {
    Keypair::ed25519_from_bytes([n; 32]).expect("32 bytes are an ed25519 secret key")
}

fn signer(n: u8) -> NodeSigner {
    NodeSigner::new(&keypair(n)).expect("an ed25519 keypair signs")
}

fn peer(n: u8) -> PeerId {
    keypair(n).public().to_peer_id()
}

fn addrs(n: u8) -> Vec<Multiaddr> {
    [
        format!("/ip4/192.168.1.{n}/tcp/4001"),
        format!("/ip4/192.168.1.{n}/udp/4001/quic-v1"),
        "/ip6/::1/tcp/4001".to_string(),
    ]
    .iter()
    .filter_map(|a| a.parse().ok())
    .collect()
}

fn peer_info(n: u8) -> PeerInfo<NodeAddr> {
    PeerInfo::new(
        signer(n).key(),
        NodeAddr {
            peer: peer(n),
            addrs: addrs(n),
        },
    )
}

fn value_record(n: u8, value: Vec<u8>) -> ValueRecord {
    ValueRecord::sign(Key::of_content(&[n]), value, u64::from(n), EXPIRES, &signer(n))
}

fn provider_record(n: u8, declined: bool) -> ProviderRecord<NodeAddr> {
    let issued = Instant::from_micros(if declined { 5 } else { 0 });
    ProviderRecord::sign_as(
        Key::of_content(b"blob"),
        peer_info(n),
        issued,
        EXPIRES,
        declined,
        &signer(n),
    )
}

fn requests() -> Vec<(Mode, Request<NodeAddr>)> {
    let key = Key::of_content(b"blob");
    let pin = Pin { replicas: 3, size: 5 }.encode();
    let requests = vec![
        Request::Ping,
        Request::FindNode { target: key },
        Request::GetValue { key },
        Request::GetProviders { key },
        Request::PutValue {
            record: value_record(1, b"hello".to_vec()),
        },
        Request::PutValue {
            record: value_record(2, pin),
        },
        Request::AddProvider {
            record: provider_record(1, false),
        },
        Request::AddProvider {
            record: provider_record(2, true),
        },
        Request::AddProviders {
            records: (1..=3).map(|n| provider_record(n, false)).collect(),
        },
    ];
    let clients = requests.iter().take(2).map(|r| (Mode::Client, r.clone()));
    requests
        .iter()
        .map(|r| (Mode::Server, r.clone()))
        .chain(clients)
        .collect()
}

fn responses() -> Vec<Response<NodeAddr>> {
    let key = Key::of_content(b"blob");
    let closer: Vec<_> = (1..=3).map(peer_info).collect();
    vec![
        Response::Pong,
        Response::Nodes { closer: closer.clone() },
        Response::Value {
            record: Some(value_record(1, b"hello".to_vec())),
            closer: closer.clone(),
        },
        Response::Value {
            record: None,
            closer: Vec::new(),
        },
        Response::Providers {
            providers: vec![provider_record(1, false), provider_record(2, true)],
            closer,
        },
        Response::Stored,
        Response::Rejected(RecordError::BadSignature { key }),
        Response::Rejected(RecordError::Stale {
            key,
            seq: 1,
            current: 2,
        }),
        Response::StoredBatch { refused: vec![0, 2] },
    ]
}

fn encode_request(mode: Mode, request: &Request<NodeAddr>) -> Vec<u8> {
    wire::encode_request(mode, request).expect("a seed request encodes")
}

fn encode_response(response: &Response<NodeAddr>) -> Vec<u8> {
    wire::encode_response(response).expect("a seed response encodes")
}

fn frames() -> Vec<Vec<u8>> {
    let bodies = [
        encode_request(Mode::Server, &Request::Ping),
        encode_response(&responses()[2]),
        Vec::new(),
    ];
    let mut frames: Vec<Vec<u8>> = bodies
        .iter()
        .map(|body| [(body.len() as u32).to_be_bytes().as_slice(), body].concat())
        .collect();
    frames.push((MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes().to_vec());
    frames
}

fn tickets() -> Vec<Ticket> {
    let blob = BlobInfo {
        id: Key::of_content(b"hello"),
        size: 5,
    };
    let with_peer = |a: &Multiaddr| format!("{a}/p2p/{}", peer(1));
    vec![
        Ticket {
            blob,
            addrs: Vec::new(),
        },
        Ticket {
            blob: BlobInfo { size: 1 << 40, ..blob },
            addrs: addrs(1).iter().map(with_peer).collect(),
        },
    ]
}

fn listings() -> Vec<Vec<u8>> {
    let entry = |path: &str, size: u64| Entry {
        path: path.into(),
        blob: BlobInfo {
            id: Key::of_content(path.as_bytes()),
            size,
        },
    };
    [
        vec![],
        vec![entry("a.txt", 3)],
        vec![entry("a.txt", 3), entry("b/c.txt", 0), entry("b/d e/f.bin", 1 << 33)],
    ]
    .iter()
    .map(|entries| collection::encode(entries).expect("seed paths are valid"))
    .collect()
}

fn saved_files() -> Vec<Vec<u8>> {
    let values = [value_record(1, b"hello".to_vec()), value_record(2, Vec::new())];
    let providers = [provider_record(1, false), provider_record(2, true)];
    let mut files = vec![Vec::new(), Vec::new()];
    saved::encode([].iter(), [].iter(), &mut files[0]).expect("writing into a Vec cannot fail");
    saved::encode(values.iter(), providers.iter(), &mut files[1]).expect("writing into a Vec cannot fail");
    files
}

fn known_peers_text() -> String {
    let mut text = String::new();
    for n in 1..=3 {
        for a in addrs(n) {
            text.push_str(&format!("{a}/p2p/{}\n", peer(n)));
        }
    }
    text.push_str("not an address\n/ip4/1.2.3.4/tcp/1\n");
    text
}

fn settings_texts() -> Vec<String> {
    vec![
        format!(
            "listen = [\"/ip4/0.0.0.0/tcp/4001\", \"/ip4/0.0.0.0/udp/4001/quic-v1\"]\n\
             bootstrap = [\"/ip4/192.168.1.20/tcp/4001/p2p/{}\"]\n\
             mdns = false\n\
             swarm_key = \"swarm.key\"   # relative to the data directory\n\
             quota = \"100G\"\n",
            peer(1)
        ),
        "quota = \"500 MiB\"\n".to_string(),
        String::new(),
    ]
}

fn admission_messages() -> Vec<Vec<u8>> {
    let hello = [admission::MAGIC.as_slice(), &[7; 32]].concat();
    vec![[hello.as_slice(), &[9; 32]].concat(), hello, vec![1; 64]]
}

fn offers() -> Vec<Vec<u8>> {
    [(Key::of_content(b"blob"), 1 << 20), (Key::of_content(b""), 0)]
        .iter()
        .map(|(id, size)| handoff::encode_offer(*id, *size).expect("writing into a Vec cannot fail"))
        .collect()
}

/// Blob request bodies as `files` documents them (it has no public
/// encoder): `{id: bytes(32), start: u64, end: u64}`.
fn blob_requests() -> Vec<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct BlobRequest {
        #[serde(with = "serde_bytes")]
        id: Vec<u8>,
        start: u64,
        end: u64,
    }
    [(0, 0), (0, 64), (1 << 20, (1 << 20) + 1024)]
        .iter()
        .map(|&(start, end)| {
            let request = BlobRequest {
                id: Key::of_content(b"blob").to_bytes().to_vec(),
                start,
                end,
            };
            let mut bytes = Vec::new();
            ciborium::into_writer(&request, &mut bytes).expect("writing into a Vec cannot fail");
            bytes
        })
        .collect()
}

/// Blob responses as `files` documents them: status, size, chunks, then an
/// empty chunk (or the failure mark).
fn blob_responses() -> Vec<Vec<u8>> {
    let response = |status: u8, size: u64, chunks: &[&[u8]], end: u32| {
        let mut bytes = vec![status];
        bytes.extend_from_slice(&size.to_be_bytes());
        for chunk in chunks {
            bytes.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            bytes.extend_from_slice(chunk);
        }
        bytes.extend_from_slice(&end.to_be_bytes());
        bytes
    };
    vec![
        response(0, 5, &[b"hello"], 0),
        response(0, 1 << 20, &[&[7; 100], &[9; 30]], 0),
        response(1, 0, &[], 0),
        response(0, 64, &[&[1; 10]], u32::MAX),
    ]
}

/// Messages of the jobs protocol as peers send them: each request, and each
/// event.
fn jobs_messages() -> Vec<Vec<u8>> {
    use crate::jobs::protocol::{Event, Request, WireNeeds};
    use shoal_resources::compute::engine::Stream;
    use shoal_resources::compute::{JobKind, JobSpec};
    let spec = JobSpec {
        kind: Some(JobKind::Wasm),
        module: Some(Key::of_content(b"a module")),
        args: vec!["--n".into(), "3".into()],
        env: [("K".to_string(), "V".to_string())].into(),
        inputs: vec![(Key::of_content(b"an input"), "data".into())],
        memory: 64 << 20,
        timeout_ms: 30_000,
        labels: Default::default(),
        replicas: 0,
    };
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes([7; 32]).expect("a fixed seed makes a key");
    let (job, submission) =
        crate::jobs::submission::Submission::sign(&keypair, spec, 7).expect("an ed25519 key signs a submission");
    let requests = [
        Request::Probe(WireNeeds {
            kind: Some(JobKind::Native),
            memory: 1 << 30,
            labels: [("gpu".to_string(), "a100".to_string())].into(),
        }),
        Request::Grant {
            job,
            submission: submission.encode(),
            n: 3,
            members: vec![serde_bytes::ByteBuf::from(keypair.public().to_peer_id().to_bytes())],
            timing: shoal_resources::quorum::Timing::DEFAULT,
            from: None,
            newer: None,
        },
        Request::Go { job, n: 3 },
        Request::Drop { job, n: 3 },
        Request::Cancel { job },
        Request::Watch { job, from: 10 },
    ];
    let events = [
        Event::Started { at: 1 },
        Event::Output {
            stream: Stream::Stdout,
            offset: 0,
            bytes: b"hello\n".to_vec(),
        },
        Event::Ended {
            exit_code: 3,
            error: Some("the job trapped".into()),
            output: Some(Key::of_content(b"out")),
            at: 2,
        },
        Event::Unknown,
    ];
    let body = |frame: Vec<u8>| frame[4..].to_vec();
    requests
        .iter()
        .map(|r| body(crate::codec::encode_cbor(r).expect("a request encodes")))
        .chain(
            events
                .iter()
                .map(|e| body(crate::codec::encode_cbor(e).expect("an event encodes"))),
        )
        .collect()
}

/// Slot offers as a peer publishes them: a plain one and a labelled one.
fn slot_offers() -> Vec<Vec<u8>> {
    use shoal_resources::compute::{JobKind, SlotOffer};
    [
        SlotOffer {
            kinds: vec![JobKind::Wasm],
            slots: 4,
            slot_memory: 512 << 20,
            labels: Default::default(),
        },
        SlotOffer {
            kinds: vec![JobKind::Wasm, JobKind::Native],
            slots: 64,
            slot_memory: 1 << 34,
            labels: [
                ("gpu".to_string(), "a100".to_string()),
                ("arch".to_string(), "x86_64".to_string()),
            ]
            .into(),
        },
    ]
    .iter()
    .map(SlotOffer::encode)
    .collect()
}

/// Job records in each state a home keeps.
fn job_records() -> Vec<Vec<u8>> {
    use shoal_overlay::Instant;
    use shoal_resources::compute::{JobRecord, Placed};
    let by = Placed {
        peer: Key::of_content(b"executor"),
        token: 7,
    };
    let at = Instant::from_micros;
    let queued = JobRecord::new(Key::of_content(b"submitter"), at(1));
    let mut running = queued.clone();
    let _ = running.place(at(2), by);
    let _ = running.start(at(3), by);
    let mut ended = running.clone();
    let _ = ended.end(at(4), by, 3, Some(Key::of_content(b"output")));
    [queued, running, ended].iter().map(JobRecord::encode).collect()
}

/// Messages of the quorum protocol: a join carrying a signed job, each
/// kind of ask alone and batched, a describe; replies; a member's state
/// file.
fn quorum_messages() -> Vec<Vec<u8>> {
    use crate::quorum::{Entry, Kind, Reply, Wire};
    use shoal_resources::compute::{JobKind, JobSpec};
    use shoal_resources::quorum::{Acceptor, Answer, Grantee, Request as Ask, Saved, Timing};
    let spec = JobSpec {
        kind: Some(JobKind::Native),
        args: vec!["/bin/true".into()],
        ..JobSpec::default()
    };
    let keypair = Keypair::ed25519_from_bytes([7; 32]).expect("a fixed seed makes a key");
    let submitter = keypair.public().to_peer_id();
    let (job, submission) =
        crate::jobs::submission::Submission::sign(&keypair, spec, 7).expect("an ed25519 key signs a submission");
    let member = Keypair::ed25519_from_bytes([9; 32])
        .expect("a fixed seed makes a key")
        .public()
        .to_peer_id();
    let by = Grantee {
        peer: crate::addr::key_of_peer(&submitter).expect("an ed25519 peer id names its key"),
        n: 2,
    };
    let saved = Saved {
        by,
        seq: 1,
        state: Key::of_content(b"a checkpoint").to_bytes().to_vec(),
    };
    let next = shoal_resources::rehome::Next {
        epoch: 1,
        members: shoal_resources::quorum::Members::new([job]),
        addrs: crate::quorum::addrs_of(&[member]),
        grantee: Some(by),
        fresh_for: std::time::Duration::from_secs(3),
        max_n: 7,
    };
    let wires = [
        Wire::Join {
            kind: Kind::Job,
            key: job,
            peers: vec![member, submitter],
            timing: Timing::DEFAULT,
            payload: submission.encode(),
        },
        Wire::Ask {
            key: job,
            request: Ask::Read,
            epoch: 0,
        },
        Wire::Ask {
            key: job,
            request: Ask::Change(by),
            epoch: 2,
        },
        Wire::Many(vec![
            (job, Ask::Renew(by)),
            (job, Ask::Save(saved.clone())),
            (
                job,
                Ask::Commit {
                    by,
                    result: b"a result".to_vec(),
                },
            ),
            (
                job,
                Ask::Release {
                    by,
                    why: shoal_resources::quorum::LetGo::Drained,
                    newer: Some(shoal_resources::quorum::Saved {
                        by,
                        seq: 2,
                        state: vec![9; 32],
                    }),
                },
            ),
        ]),
        Wire::Describe { key: job },
        Wire::Epochs {
            keys: vec![job, by.peer],
        },
        Wire::Line {
            key: job,
            request: shoal_resources::lease::LineRequest::Wait { peer: job, ticket: 3 },
            epoch: 1,
        },
        Wire::Rehome {
            key: job,
            request: shoal_resources::rehome::RehomeRequest::Seal {
                epoch: 0,
                ballot: shoal_resources::rehome::Ballot { round: 1, by: job },
            },
            timing: Timing::DEFAULT,
            payload: b"a name".to_vec(),
        },
        Wire::Rehome {
            key: job,
            request: shoal_resources::rehome::RehomeRequest::Install(next.clone()),
            timing: Timing::DEFAULT,
            payload: b"a name".to_vec(),
        },
    ];
    let replies = [
        Reply::Joined,
        Reply::Line(shoal_resources::lease::LineAnswer::Place {
            ahead: 1,
            first: Some(job),
            floor: 4,
        }),
        Reply::Unknown,
        Reply::Epochs(vec![Some(2), None]),
        Reply::Refused("no".into()),
        Reply::Many(vec![Reply::Answer(Answer::Ok), Reply::Unknown]),
        Reply::Rehome(shoal_resources::rehome::RehomeAnswer::Moved(next)),
    ];
    let entry = Entry {
        kind: Kind::Job,
        peers: vec![member, submitter],
        timing: Timing::DEFAULT,
        payload: submission.encode(),
        acceptor: Acceptor::new(),
        owner: None,
        by: None,
        finished: Some(Instant::from_micros(1_700_000_000_000_000)),
        line: Default::default(),
        home: Default::default(),
    };
    let mut out: Vec<Vec<u8>> = wires.iter().map(cbor).collect();
    out.extend(replies.iter().map(cbor));
    out.push(cbor(&entry));
    out
}

/// `value` as CBOR.
fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).expect("a seed encodes");
    bytes
}
