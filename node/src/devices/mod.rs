//! Devices on the node: sharing the devices this machine has (the
//! provider's side: [`DeviceLeases`] per device, the adapter), and using
//! another's (a session that takes the lease, renews it, and forwards a
//! local port to the device).
//!
//! `/shoal/device/1`: a stream carries one [`Wire`] request (a frame of
//! [`crate::codec`]) and its [`Reply`]. After [`Wire::Open`] is answered
//! [`Reply::Opened`], the stream carries the device's bytes both ways in
//! data frames (a length, then at most [`CHUNK`] bytes); the provider
//! checks the token on every frame, each way, and once a second when
//! idle, and ends a stream whose lease has moved on with a closing frame
//! ([`CLOSING`], then the reason).
//!
//! A provider publishes each device it shares as a provider of the
//! device's key, of its class's key, and of [`index_key`] (so that `shoal
//! device ls` finds every provider); the details come from the provider
//! ([`Wire::List`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::device::{DeviceAnswer, DeviceLeases, DeviceRequest, TERM, check_name, class_key, device_key};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub mod using;

use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};

/// The stream protocol.
pub const DEVICE_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/device/1");
/// Largest request or reply frame.
const MAX_FRAME: usize = 256 * 1024;
/// Largest data frame, bytes.
pub const CHUNK: usize = 64 * 1024;
/// A data frame's length that says the stream ends, a reason following.
pub const CLOSING: u32 = u32::MAX;
/// Devices one peer shares, at most.
pub const MAX_DEVICES: usize = 256;
/// Streams to the devices served at once, at most.
const MAX_STREAMS: usize = 256;
/// How long an ask to a provider may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The key every provider of a device provides: `shoal device ls` finds
/// them all there.
pub fn index_key() -> Key {
    Key::of_name("device index", b"all")
}

/// How a device is reached on its provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// A local service: `HOST:PORT`.
    Tcp(String),
    /// A command whose stdin and stdout are the device (run by `sh -c`,
    /// once per connection).
    Cmd(String),
    /// A character device or FIFO, read and written as a stream.
    Path(PathBuf),
}

impl Adapter {
    /// Its kind, as listed.
    pub fn kind(&self) -> &'static str {
        match self {
            Adapter::Tcp(_) => "tcp",
            Adapter::Cmd(_) => "cmd",
            Adapter::Path(_) => "path",
        }
    }
}

/// A holder, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderView {
    /// The holder's peer id (or its overlay key, if not known here).
    pub peer: String,
    /// Its token.
    pub token: u64,
    /// Whether it shares the device.
    pub shared: bool,
}

/// A device, as its provider lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device's name.
    pub name: String,
    /// Its class.
    pub class: String,
    /// The adapter's kind: `tcp`, `cmd` or `path`.
    pub adapter: String,
    /// The provider's peer id.
    pub provider: String,
    /// Who holds it.
    pub holders: Vec<HolderView>,
    /// How many wait in line.
    pub waiting: usize,
}

/// A request on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// The devices this peer shares.
    List,
    /// About the lease of device `name`.
    Lease { name: String, request: DeviceRequest },
    /// Open a stream to device `name` as the holder of `token`.
    Open { name: String, token: u64 },
}

/// A reply on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    List(Vec<DeviceView>),
    Answer(DeviceAnswer),
    /// The stream is the device's now.
    Opened,
    Refused(String),
}

struct Shared {
    class: String,
    adapter: Adapter,
    leases: DeviceLeases,
}

/// The devices this peer shares.
pub(crate) struct Provided {
    dir: PathBuf,
    devices: Mutex<BTreeMap<String, Shared>>,
    /// The peer ids of the peers that asked for a lease, by overlay key
    /// (for the listing; at most [`MAX_NAMES`]).
    names: Mutex<BTreeMap<Key, PeerId>>,
    /// The providers of devices this peer used lately, and when they were
    /// looked up ([`using`]: at most [`MAX_NAMES`]).
    pub(crate) found: Mutex<BTreeMap<String, (Vec<PeerId>, std::time::Instant)>>,
}

/// Peer ids a provider remembers for its listing, at most.
const MAX_NAMES: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Provided {
    /// Nothing shared yet; tokens are kept under `data_dir/devices`.
    pub(crate) fn new(data_dir: &std::path::Path) -> Self {
        Provided {
            dir: data_dir.join("devices"),
            devices: Mutex::new(BTreeMap::new()),
            names: Mutex::new(BTreeMap::new()),
            found: Mutex::new(BTreeMap::new()),
        }
    }

    fn token_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.token", device_key(name)))
    }

    /// Keeps `token` for device `name`, synced, before a grant is answered.
    fn save_token(&self, name: &str, token: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.token_file(name);
        let tmp = path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, token.to_string().as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }

    fn answer(&self, name: &str, peer: Key, request: DeviceRequest) -> Reply {
        let mut devices = lock(&self.devices);
        let Some(shared) = devices.get_mut(name) else {
            return Reply::Refused(format!("no device {name:?} here"));
        };
        let before = shared.leases.clone();
        let answer = shared.leases.handle(now(), peer, request);
        let token = shared.leases.durable();
        if token != before.durable()
            && let Err(e) = self.save_token(name, token)
        {
            // Not on disk: not granted.
            shared.leases = before;
            return Reply::Refused(format!("cannot keep the lease's token: {e}"));
        }
        Reply::Answer(answer)
    }

    fn admits(&self, name: &str, token: u64) -> bool {
        lock(&self.devices)
            .get_mut(name)
            .is_some_and(|d| d.leases.admits(now(), token))
    }

    fn list(&self, provider: &PeerId) -> Vec<DeviceView> {
        let at = now();
        let names = lock(&self.names).clone();
        lock(&self.devices)
            .iter_mut()
            .map(|(name, d)| DeviceView {
                name: name.clone(),
                class: d.class.clone(),
                adapter: d.adapter.kind().to_string(),
                provider: provider.to_string(),
                holders: d
                    .leases
                    .holders(at)
                    .into_iter()
                    .map(|h| HolderView {
                        peer: names
                            .get(&h.peer)
                            .map_or_else(|| h.peer.to_string(), ToString::to_string),
                        token: h.token,
                        shared: h.shared,
                    })
                    .collect(),
                waiting: d.leases.waiting(at),
            })
            .collect()
    }
}

/// The device handle of a node.
#[derive(Debug)]
pub struct Devices<'a> {
    client: &'a Client,
}

impl Client {
    /// Devices: share this machine's, use others'.
    pub fn devices(&self) -> Devices<'_> {
        Devices { client: self }
    }
}

impl Devices<'_> {
    /// Shares device `name` of `class` through `adapter`, and announces it.
    pub async fn share(&self, name: &str, class: &str, adapter: Adapter) -> Result<(), String> {
        check_name("device", name)?;
        check_name("class", class)?;
        match &adapter {
            Adapter::Tcp(addr) if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') => {
                return Err(format!("--tcp {addr}: not HOST:PORT"));
            }
            Adapter::Cmd(cmd) if cmd.trim().is_empty() => return Err("--cmd: an empty command".into()),
            Adapter::Path(path) if !path.exists() => {
                return Err(format!("--path {}: no such file", path.display()));
            }
            _ => {}
        }
        let provided = &self.client.provided;
        let token = std::fs::read_to_string(provided.token_file(name))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let added: Result<(), String> = {
            let mut devices = lock(&provided.devices);
            match devices.get(name) {
                // The same again: announced again.
                Some(d) if d.class == class && d.adapter == adapter => Ok(()),
                Some(_) => Err(format!(
                    "device {name:?} is shared here already, otherwise; unshare it first"
                )),
                None if devices.len() >= MAX_DEVICES => Err(format!("this peer shares {MAX_DEVICES} devices already")),
                None => {
                    devices.insert(
                        name.to_string(),
                        Shared {
                            class: class.to_string(),
                            adapter,
                            leases: DeviceLeases::new(token, TERM),
                        },
                    );
                    Ok(())
                }
            }
        };
        added?;
        self.announce(name, class).await
    }

    async fn announce(&self, name: &str, class: &str) -> Result<(), String> {
        self.client
            .provide(vec![device_key(name), class_key(class), index_key()])
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot announce device {name:?}: {e}"))
    }

    /// Stops sharing device `name`: its holders lose it at once.
    pub async fn unshare(&self, name: &str) -> Result<(), String> {
        let removed = lock(&self.client.provided.devices).remove(name);
        let Some(removed) = removed else {
            return Err(format!("no device {name:?} is shared here"));
        };
        let _ = self.client.stop_providing(device_key(name)).await;
        let class_left = lock(&self.client.provided.devices)
            .values()
            .any(|d| d.class == removed.class);
        if !class_left {
            let _ = self.client.stop_providing(class_key(&removed.class)).await;
        }
        if lock(&self.client.provided.devices).is_empty() {
            let _ = self.client.stop_providing(index_key()).await;
        }
        Ok(())
    }

    /// Every device in the swarm (of `class`, if given), as their providers
    /// list them; providers that do not answer are left out.
    pub async fn list(&self, class: Option<&str>) -> Result<Vec<DeviceView>, String> {
        let key = class.map_or_else(index_key, class_key);
        let mut providers: Vec<PeerId> = self
            .client
            .get_providers(key)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|p| p.addr.peer)
            .collect();
        if !lock(&self.client.provided.devices).is_empty() && !providers.contains(&self.client.peer_id()) {
            providers.push(self.client.peer_id());
        }
        let asks = providers.into_iter().map(|peer| {
            let client = self.client.clone();
            async move { ask(&client, peer, &Wire::List).await.ok() }
        });
        let mut out: Vec<DeviceView> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .flat_map(|reply| match reply {
                Reply::List(devices) => devices,
                _ => Vec::new(),
            })
            .filter(|d| class.is_none_or(|c| d.class == c))
            .collect();
        out.sort_by(|a, b| (&a.name, &a.provider).cmp(&(&b.name, &b.provider)));
        out.dedup();
        Ok(out)
    }
}

/// Shares `devices` (from `shoal.toml`) once this peer has met another
/// (or after 30 s alone), so that their announcements reach their homes.
pub(crate) async fn share_at_start(node: WeakClient, devices: Vec<(String, String, Adapter)>) {
    if devices.is_empty() {
        return;
    }
    for _ in 0..60 {
        let Some(client) = node.upgrade() else { return };
        if client.peers().await.is_ok_and(|p| !p.is_empty()) {
            break;
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(client) = node.upgrade() else { return };
    for (name, class, adapter) in devices {
        match client.devices().share(&name, &class, adapter).await {
            Ok(()) => tracing::info!("sharing device {name:?} (class {class:?}) from shoal.toml"),
            Err(e) => tracing::warn!("device {name:?} from shoal.toml is not shared: {e}"),
        }
    }
}

/// Sends `wire` to `peer` (this peer's own devices are answered directly)
/// and reads the reply.
pub(crate) async fn ask(client: &Client, peer: PeerId, wire: &Wire) -> std::io::Result<Reply> {
    if peer == client.peer_id() {
        return Ok(answer_local(client, client.peer_id(), wire.clone()));
    }
    let exchange = async {
        let mut stream = client
            .stream_control()
            .open_stream(peer, DEVICE_PROTOCOL)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        stream.write_all(&crate::codec::encode_cbor(wire)?).await?;
        stream.flush().await?;
        crate::codec::read_cbor::<Reply, _>(&mut stream, MAX_FRAME).await
    };
    tokio::time::timeout(ASK_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))?
}

fn answer_local(client: &Client, from: PeerId, wire: Wire) -> Reply {
    match wire {
        Wire::List => Reply::List(client.provided.list(&client.peer_id())),
        Wire::Lease { name, request } => match key_of_peer(&from) {
            Some(peer) => {
                let mut names = lock(&client.provided.names);
                if names.len() >= MAX_NAMES {
                    names.clear();
                }
                names.insert(peer, from);
                drop(names);
                client.provided.answer(&name, peer, request)
            }
            None => Reply::Refused("a peer without an overlay key holds no device".into()),
        },
        Wire::Open { .. } => Reply::Refused("a device is opened on a stream of its own".into()),
    }
}

/// Serves `/shoal/device/1` until the node stops.
pub(crate) async fn serve(node: WeakClient, mut incoming: crate::streams::IncomingStreams) {
    let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = streams.clone().try_acquire_owned() else {
            tracing::debug!("device stream from {peer} refused: {MAX_STREAMS} open");
            continue;
        };
        let Some(client) = node.upgrade() else { break };
        tokio::spawn(async move {
            if let Err(e) = serve_one(&client, peer, stream).await {
                tracing::debug!("device stream from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn serve_one(client: &Client, peer: PeerId, mut stream: Stream) -> std::io::Result<()> {
    let wire: Wire = crate::codec::read_cbor(&mut stream, MAX_FRAME).await?;
    let Wire::Open { name, token } = wire else {
        let reply = answer_local(client, peer, wire);
        stream.write_all(&crate::codec::encode_cbor(&reply)?).await?;
        return stream.close().await;
    };
    if !client.provided.admits(&name, token) {
        let why = format!("token {token} does not hold device {name:?} (stale, released or unknown)");
        tracing::info!("device {name:?}: {peer} refused: {why}");
        stream
            .write_all(&crate::codec::encode_cbor(&Reply::Refused(why))?)
            .await?;
        return stream.close().await;
    }
    let adapter = lock(&client.provided.devices).get(&name).map(|d| d.adapter.clone());
    let Some(adapter) = adapter else {
        stream
            .write_all(&crate::codec::encode_cbor(&Reply::Refused(format!(
                "no device {name:?} here"
            )))?)
            .await?;
        return stream.close().await;
    };
    let (reader, writer, child) = match open(&adapter).await {
        Ok(opened) => opened,
        Err(e) => {
            let why = format!("device {name:?}: its {} adapter cannot be reached: {e}", adapter.kind());
            tracing::warn!("{why}");
            stream
                .write_all(&crate::codec::encode_cbor(&Reply::Refused(why))?)
                .await?;
            return stream.close().await;
        }
    };
    stream.write_all(&crate::codec::encode_cbor(&Reply::Opened)?).await?;
    stream.flush().await?;
    let provided = client.provided.clone();
    let admits = move || provided.admits(&name, token);
    let result = pipe(stream, reader, writer, Some(Box::new(admits))).await;
    if let Some(mut child) = child {
        let _ = child.kill().await;
    }
    result
}

type DeviceReader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type DeviceWriter = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Opens the device behind `adapter`: its two directions, and the command
/// to stop afterwards for a `cmd` adapter.
async fn open(adapter: &Adapter) -> std::io::Result<(DeviceReader, DeviceWriter, Option<tokio::process::Child>)> {
    match adapter {
        Adapter::Tcp(addr) => {
            let tcp = tokio::time::timeout(ASK_TIMEOUT, tokio::net::TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| std::io::Error::other("no answer in time"))??;
            let _ = tcp.set_nodelay(true);
            let (r, w) = tcp.into_split();
            Ok((Box::new(r), Box::new(w), None))
        }
        Adapter::Cmd(cmd) => {
            let mut child = tokio::process::Command::new("sh")
                .args(["-c", cmd])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
            match (stdin, stdout) {
                (Some(w), Some(r)) => Ok((Box::new(r), Box::new(w), Some(child))),
                _ => Err(std::io::Error::other("the command has no stdin or stdout")),
            }
        }
        Adapter::Path(path) => {
            // Two handles: a tokio file does one operation at a time, and a
            // read that waits for the device would hold up every write.
            // Read-write both, so that opening a FIFO does not wait for
            // its other end.
            let mut options = tokio::fs::OpenOptions::new();
            options.read(true).write(true);
            let (r, w) = (options.open(path).await?, options.open(path).await?);
            Ok((Box::new(r), Box::new(w), None))
        }
    }
}

/// Whether a stream may go on (the provider's token check).
type Admits = Box<dyn Fn() -> bool + Send + Sync>;

/// Carries bytes between a device stream (data frames) and a local
/// reader/writer until either side ends. With `admits` (the provider's
/// side), every frame each way, and every idle second, is checked first:
/// once it says no, the stream ends with a closing frame.
pub(crate) async fn pipe(
    stream: Stream,
    mut reader: DeviceReader,
    mut writer: DeviceWriter,
    admits: Option<Admits>,
) -> std::io::Result<()> {
    let admits: Arc<dyn Fn() -> bool + Send + Sync> = match admits {
        Some(f) => Arc::from(f),
        None => Arc::new(|| true),
    };
    let (mut from_net, mut to_net) = stream.split();
    let (refuse_tx, mut refuse_rx) = tokio::sync::mpsc::channel::<String>(1);
    let check = admits.clone();
    // The network into the device (or the local end).
    let inbound = tokio::spawn(async move {
        loop {
            let mut header = [0u8; 4];
            if from_net.read_exact(&mut header).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes(header);
            if len == CLOSING {
                let why = crate::codec::read_capped(&mut from_net, 4096)
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let _ = refuse_tx.send(format!("closed by the provider: {why}")).await;
                break;
            }
            if len as usize > CHUNK {
                break;
            }
            let mut chunk = vec![0u8; len as usize];
            if from_net.read_exact(&mut chunk).await.is_err() {
                break;
            }
            if !check() {
                let _ = refuse_tx.send("the lease moved on: its token is refused".into()).await;
                break;
            }
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            let _ = writer.flush().await;
        }
        let _ = writer.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK];
    let mut idle = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        tokio::select! {
            read = reader.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                if !admits() {
                    break Some("the lease moved on: its token is refused".to_string());
                }
                let mut frame = Vec::with_capacity(4 + n);
                frame.extend_from_slice(&(n as u32).to_be_bytes());
                frame.extend_from_slice(&buf[..n]);
                if to_net.write_all(&frame).await.is_err() {
                    break None;
                }
                let _ = to_net.flush().await;
            }
            refused = refuse_rx.recv() => break refused,
            _ = idle.tick() => {
                if !admits() {
                    break Some("the lease moved on: its token is refused".to_string());
                }
            }
        }
    };
    if let Some(why) = &why {
        let mut frame = CLOSING.to_be_bytes().to_vec();
        frame.extend_from_slice(&(why.len() as u32).to_be_bytes());
        frame.extend_from_slice(why.as_bytes());
        let _ = to_net.write_all(&frame).await;
        tracing::info!("device stream closed: {why}");
    }
    let _ = to_net.close().await;
    inbound.abort();
    Ok(())
}

/// Opens a stream to device `name` on `provider` as the holder of `token`.
pub(crate) async fn connect(client: &Client, provider: PeerId, name: &str, token: u64) -> Result<Stream, String> {
    let mut stream = tokio::time::timeout(
        ASK_TIMEOUT,
        client.stream_control().open_stream(provider, DEVICE_PROTOCOL),
    )
    .await
    .map_err(|_| "the provider does not answer".to_string())?
    .map_err(|e| format!("cannot reach the provider: {e}"))?;
    let open = Wire::Open {
        name: name.to_string(),
        token,
    };
    let exchange = async {
        stream.write_all(&crate::codec::encode_cbor(&open)?).await?;
        stream.flush().await?;
        crate::codec::read_cbor::<Reply, _>(&mut stream, MAX_FRAME).await
    };
    match tokio::time::timeout(ASK_TIMEOUT, exchange).await {
        Ok(Ok(Reply::Opened)) => Ok(stream),
        Ok(Ok(Reply::Refused(why))) => Err(why),
        Ok(Ok(other)) => Err(format!("unexpected reply {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the provider does not answer".into()),
    }
}
