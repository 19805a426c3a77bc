//! The control API's requests and answers: the daemon writes them, the
//! CLI reads them back as the same types ([`crate::cli_client::ask`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// File in the data directory with the API's address and token.
pub const CONTROL_FILE: &str = "control.json";

/// Where the API listens and the token it wants.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlInfo {
    /// The loopback address.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: String,
}

/// Most keys one `POST /v1/provide` may announce.
pub const MAX_PROVIDE_KEYS: usize = 100_000;

/// A peer as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    /// The libp2p peer id.
    pub peer_id: String,
    /// The overlay key.
    pub key: String,
    /// Known addresses.
    pub addrs: Vec<String>,
    /// In `GET /v1/peers`: the peer failed repeatedly and is left out of
    /// lookups until it answers again (probed now and then, dropped after
    /// about 80 minutes). Always false in lookup results.
    #[serde(default)]
    pub stale: bool,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The peer id.
    pub peer_id: String,
    /// The overlay key.
    pub key: String,
    /// Listen addresses, each ending in `/p2p/PEER_ID`.
    pub listening: Vec<String>,
    /// Peers in the routing table.
    pub peers: usize,
    /// Records held for others (values and providers).
    pub records: usize,
    /// The swarm key's fingerprint in a private swarm; none in an open one.
    pub swarm: Option<String>,
}

/// Body of `POST /v1/lookup` and `POST /v1/record/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRequest {
    /// 64 hex digits.
    pub key: String,
}

/// Body of `POST /v1/record/put`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutRequest {
    /// 64 hex digits.
    pub key: String,
    /// The value, as text.
    pub value: String,
}

/// `POST /v1/lookup`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LookupView {
    /// The closest peers that answered, closest first.
    pub peers: Vec<PeerView>,
    /// Hops to the closest (see BENCHMARKS.md).
    pub hops: u8,
    /// Requests sent.
    pub requests: u32,
    /// Milliseconds from start to result.
    pub duration_ms: f64,
}

/// `POST /v1/record/put`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutView {
    /// Home members that confirmed.
    pub stored: usize,
}

/// `POST /v1/record/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordView {
    /// Whether a record was found.
    pub found: bool,
    /// Its value as text (lossy for non-UTF-8 bytes).
    pub value: Option<String>,
    /// Its version.
    pub seq: Option<u64>,
}

/// Body of `POST /v1/provide`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProvideRequest {
    /// Keys, 64 hex digits each.
    pub keys: Vec<String>,
}

/// `POST /v1/provide`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProvideView {
    /// Keys announced.
    pub keys: usize,
    /// Keys every home member confirmed.
    pub stored_everywhere: usize,
    /// Keys no home member confirmed.
    pub unconfirmed: usize,
    /// Lookups it took.
    pub lookups: u32,
    /// Store messages sent.
    pub stores: u32,
    /// Milliseconds from start to the last answer.
    pub duration_ms: f64,
}

/// `GET /v1/shares/N`, and the answer to `POST /v1/share`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareJobView {
    /// The share's number.
    pub share: u64,
    /// The file or directory shared.
    pub path: String,
    /// Bytes to read in all.
    pub total: u64,
    /// Bytes read (and hashed) so far.
    pub read: u64,
    /// Whether it ended.
    pub done: bool,
    /// What it made, once done.
    pub result: Option<ShareView>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Body of `POST /v1/share`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareRequest {
    /// An absolute path to a file.
    pub path: String,
    /// Serve it from where it is instead of copying it into the store.
    #[serde(default)]
    pub in_place: bool,
}

/// `POST /v1/share`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareView {
    /// The content id (BLAKE3, as `b3sum` prints it).
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// A ticket: the id and this peer's addresses.
    pub ticket: String,
}

/// Body of `POST /v1/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GetRequest {
    /// A content id (64 hex digits) or a ticket.
    pub target: String,
    /// Where to write the file (absolute); none: keep it in the store only.
    pub out: Option<String>,
}

/// `GET /v1/downloads/N`, and the answer to `POST /v1/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DownloadView {
    /// The download's number.
    pub download: u64,
    /// The content id.
    pub id: String,
    /// Bytes in all (0 until known).
    pub size: u64,
    /// Bytes verified so far.
    pub verified: u64,
    /// Of those, bytes a saved partial download held when this one started.
    #[serde(default)]
    pub resumed: u64,
    /// Content bytes received from providers so far, verified or not.
    #[serde(default)]
    pub fetched: u64,
    /// Providers still delivering.
    pub providers: usize,
    /// Whether it ended.
    pub done: bool,
    /// Where the file was written, once done.
    pub out: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Body of `POST /v1/pin` and `POST /v1/unpin`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PinRequest {
    /// The content id.
    pub id: String,
    /// Copies the home keeps (pin only; default 3).
    pub replicas: Option<u8>,
}

/// One blob in `GET /v1/blobs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobView {
    /// The content id.
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// The file it is served from in place, if so.
    pub in_place: Option<String>,
    /// Served in place, and that file changed or went away since: it can no
    /// longer be served, and `get` or a pin duty fetches it again.
    #[serde(default)]
    pub changed: bool,
    /// Kept for its home (exempt from garbage collection).
    pub pinned: bool,
    /// A download in progress or interrupted (`get` again resumes it): it
    /// takes its whole size from the quota already.
    pub partial: bool,
}

/// `POST /v1/down`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopping {
    /// Always true: the daemon stops.
    pub stopping: bool,
}

pub use crate::jobs::{JobView, OutputChunk, OutputView, SlotView};

/// Body of `POST /v1/jobs`: a job to place.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRequest {
    /// A native command (`args[0]` is the command) rather than a module.
    #[serde(default)]
    pub native: bool,
    /// The module: an absolute path (shared first) or a content id.
    pub module: Option<String>,
    /// The arguments (a native job's command first).
    #[serde(default)]
    pub args: Vec<String>,
    /// The environment the job gets (nothing else).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Inputs: an absolute path (shared first) or a content id, and the
    /// name it has under `/in`.
    #[serde(default)]
    pub inputs: Vec<(String, String)>,
    /// Memory, bytes (0: the slot's).
    #[serde(default)]
    pub memory: u64,
    /// Time limit, milliseconds (0: the executor's default).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Labels the slot must carry (`--where K=V`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Leave the job to its home once placed (`--detach`): the daemon does
    /// not mirror its output.
    #[serde(default)]
    pub detach: bool,
    /// Copies of the output its home keeps (`--replicas`; 0: none).
    #[serde(default)]
    pub replicas: u8,
}

/// Body of `POST /v1/jobs/{id}/move`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The peer id to move the job to; any other fitting peer if absent.
    #[serde(default)]
    pub to: Option<String>,
}

/// One job `POST /v1/drain` moved, or could not.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Drained {
    /// The job.
    pub job_id: String,
    /// Where it went.
    pub peer: Option<String>,
    /// Its new grant there.
    pub token: Option<u64>,
    /// Why it did not move.
    pub error: Option<String>,
}

/// Body of `POST /v1/jobs/many`: `repeat` jobs of one spec.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ManyRequest {
    /// The job.
    pub job: RunRequest,
    /// How many.
    pub repeat: u32,
}

/// `POST /v1/leases`: acquire a named lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcquireRequest {
    /// The lease's name.
    pub name: String,
    /// Hold it at most this long once taken (ms); absent: until released.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// Release it once the caller has not asked about it for a few seconds
    /// (`shoal lease run`: a killed CLI lets it go).
    #[serde(default)]
    pub keepalive: bool,
}

/// A lease session and where it stands (`POST /v1/leases`, `GET
/// /v1/leases/session/{n}`).
pub use crate::leases::{KeptLeaseView, SessionState, SessionView};

/// `GET /v1/leases`: this peer's sessions and the leases it keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseList {
    /// Leases this peer waits for or holds.
    pub sessions: Vec<SessionView>,
    /// Leases this peer keeps as a member of their home.
    pub kept: Vec<KeptLeaseView>,
}

/// `POST /v1/leases/release`: release lease `name` where this peer holds
/// or waits for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The lease's name.
    pub name: String,
}

/// How many sessions were released.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleasedView {
    /// Sessions released.
    pub released: usize,
}

/// `POST /v1/devices`: share a device of this machine (one adapter).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShareDeviceRequest {
    /// The device's name.
    pub name: String,
    /// Its class.
    pub class: String,
    /// A local service, `HOST:PORT`.
    #[serde(default)]
    pub tcp: Option<String>,
    /// A command whose stdin and stdout are the device.
    #[serde(default)]
    pub cmd: Option<String>,
    /// A character device or FIFO.
    #[serde(default)]
    pub path: Option<String>,
}

/// `POST /v1/devices/unshare`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnshareRequest {
    /// The device's name.
    pub name: String,
}

/// `POST /v1/devices/use`: take a device and forward a local port to it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UseRequest {
    /// This device ...
    #[serde(default)]
    pub name: Option<String>,
    /// ... or any device of this class.
    #[serde(default)]
    pub class: Option<String>,
    /// Shared with other shared holders.
    #[serde(default)]
    pub shared: bool,
    /// Wait at most this long (ms; 0: fail at once if busy).
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// The local address to listen on (default: 127.0.0.1, any port).
    #[serde(default)]
    pub listen: Option<String>,
}

pub use crate::devices::using::{Target, UseState, UseView};
pub use crate::devices::{DeviceView, HolderView};
