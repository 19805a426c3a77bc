//! Using a device: a session that finds the device (by name, or a free one
//! of a class), takes its lease from the provider (waiting in its line,
//! keeping its place), renews it, and forwards a local TCP port to it —
//! every connection to the port is a stream to the device carrying the
//! lease's token. With a class, a provider that stops answering (or says
//! the lease is lost) is left for another device of the class, and new
//! connections to the port go there.
//!
//! A session held for a caller that must keep asking (`shoal device use`)
//! is let go once the caller stops (after [`super::super::leases::KEEPALIVE`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_resources::device::{DeviceAnswer, DeviceRequest, TERM, check_name, device_key};
use tokio::sync::{mpsc, watch};

use super::{DeviceView, HolderView, Reply, Wire, ask, connect, pipe};
use crate::client::{Client, WeakClient};

/// Sessions one peer runs at once, at most.
pub const MAX_USES: usize = 256;
/// A session whose caller stopped asking is let go after this long.
const KEEPALIVE: Duration = crate::leases::KEEPALIVE;

/// Which device a session wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// This device.
    Name(String),
    /// Any device of this class (another one if its provider fails).
    Class(String),
}

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum UseState {
    /// Finding the device.
    Finding,
    /// In the provider's line.
    Waiting {
        /// The device.
        device: String,
        /// Waiters ahead.
        ahead: u64,
        /// Who holds it.
        holders: Vec<HolderView>,
    },
    /// Held: connections to `listen` reach the device.
    Held {
        /// The device.
        device: String,
        /// Its provider's peer id.
        provider: String,
        /// The lease's token.
        token: u64,
        /// The last connection that could not reach the device, and why
        /// (the provider's words: an adapter that cannot be reached).
        #[serde(default)]
        problem: Option<String>,
    },
    /// The lease was lost, and why.
    Lost {
        /// Why.
        reason: String,
    },
    /// Let go.
    Released,
    /// It could not go on.
    Failed {
        /// Why.
        error: String,
    },
}

impl UseState {
    /// Whether nothing more will change.
    pub fn is_over(&self) -> bool {
        matches!(
            self,
            UseState::Lost { .. } | UseState::Released | UseState::Failed { .. }
        )
    }
}

/// A session, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UseView {
    /// Its number here.
    pub session: u64,
    /// What it wants.
    pub target: Target,
    /// The local address that reaches the device while it is held.
    pub listen: String,
    /// How many times its state changed.
    pub version: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub state: UseState,
}

struct UseSession {
    target: Target,
    listen: SocketAddr,
    state: watch::Receiver<(u64, UseState)>,
    release: mpsc::UnboundedSender<()>,
    asked: Option<Mutex<std::time::Instant>>,
}

/// The sessions of this peer.
#[derive(Default)]
pub(crate) struct Uses {
    sessions: Mutex<BTreeMap<u64, Arc<UseSession>>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl super::Devices<'_> {
    /// Starts using a device: binds `listen` (port 0: any free one), then
    /// takes the lease (`shared`, or exclusive; waiting at most `wait`, or
    /// failing at once if 0) and forwards the port while it holds it.
    pub async fn start_use(
        &self,
        target: Target,
        shared: bool,
        wait: Option<Duration>,
        listen: SocketAddr,
        keepalive: bool,
    ) -> Result<UseView, String> {
        match &target {
            Target::Name(name) => check_name("device", name)?,
            Target::Class(class) => check_name("class", class)?,
        }
        if !listen.ip().is_loopback() {
            return Err(format!("--listen {listen}: only a loopback address is served"));
        }
        let uses = &self.client.uses;
        {
            let mut held = lock(&uses.sessions);
            held.retain(|_, s| !s.state.borrow().1.is_over());
            if held.len() >= MAX_USES {
                return Err(format!("this peer runs {MAX_USES} device sessions already"));
            }
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let listen = listener.local_addr().map_err(|e| e.to_string())?;
        let n = uses.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (state_tx, state_rx) = watch::channel((0, UseState::Finding));
        let (release_tx, release_rx) = mpsc::unbounded_channel();
        let session = Arc::new(UseSession {
            target: target.clone(),
            listen,
            state: state_rx,
            release: release_tx,
            asked: keepalive.then(|| Mutex::new(std::time::Instant::now())),
        });
        lock(&uses.sessions).insert(n, session.clone());
        let (to_tx, to_rx) = watch::channel(None::<(PeerId, String, u64)>);
        let (trouble_tx, trouble_rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(self.client.downgrade(), listener, to_rx, trouble_tx));
        let node = self.client.downgrade();
        tokio::spawn(async move {
            let state = state_tx.clone();
            let channels = Channels {
                state: state_tx,
                release: release_rx,
                to: to_tx,
                trouble: trouble_rx,
            };
            let outcome = hold(node, session, target, shared, wait, channels).await;
            if let Err(error) = outcome {
                state.send_modify(|(v, s)| {
                    *v += 1;
                    *s = UseState::Failed { error };
                });
            }
        });
        Ok(self.use_view(n).expect("just started"))
    }

    fn use_view(&self, n: u64) -> Option<UseView> {
        let s = lock(&self.client.uses.sessions).get(&n).cloned()?;
        let (version, state) = s.state.borrow().clone();
        Some(UseView {
            session: n,
            target: s.target.clone(),
            listen: s.listen.to_string(),
            version,
            state,
        })
    }

    /// Session `n` once its version is above `after` or `wait` passed.
    /// Counts as being asked about.
    pub async fn use_state(&self, n: u64, after: Option<u64>, wait: Duration) -> Option<UseView> {
        let s = lock(&self.client.uses.sessions).get(&n).cloned()?;
        if let Some(asked) = &s.asked {
            *lock(asked) = std::time::Instant::now();
        }
        let mut rx = s.state.clone();
        if let Some(after) = after {
            let _ = tokio::time::timeout(wait, rx.wait_for(|(v, _)| *v > after)).await;
        }
        self.use_view(n)
    }

    /// Lets go of session `n`; whether it was there.
    pub fn stop_use(&self, n: u64) -> bool {
        lock(&self.client.uses.sessions)
            .get(&n)
            .is_some_and(|s| s.release.send(()).is_ok())
    }

    /// This peer's sessions that are not over.
    pub fn uses(&self) -> Vec<UseView> {
        let ids: Vec<u64> = lock(&self.client.uses.sessions).keys().copied().collect();
        ids.into_iter()
            .filter_map(|n| self.use_view(n))
            .filter(|v| !v.state.is_over())
            .collect()
    }
}

/// Forwards every connection to `listener` to the device `to` names (none:
/// not held, the connection is closed).
async fn forward(
    node: WeakClient,
    listener: tokio::net::TcpListener,
    mut to: watch::Receiver<Option<(PeerId, String, u64)>>,
    trouble: mpsc::UnboundedSender<String>,
) {
    loop {
        let local = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((local, _)) => local,
                Err(_) => break,
            },
            changed = to.changed() => {
                // The session is over: so is the port.
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        let Some(client) = node.upgrade() else { break };
        let target = to.borrow().clone();
        let trouble = trouble.clone();
        tokio::spawn(async move {
            let Some((provider, name, token)) = target else {
                tracing::info!("device connection closed: the lease is not held now");
                return;
            };
            let _ = local.set_nodelay(true);
            match connect(&client, provider, &name, token).await {
                Ok(stream) => {
                    let (r, w) = local.into_split();
                    let _ = pipe(stream, Box::new(r), Box::new(w), None).await;
                }
                Err(why) => {
                    let why = format!("device {name:?}: {why}");
                    tracing::warn!("{why}");
                    // The holder renews at once: a provider that is gone
                    // is found out now, not at the next renewal.
                    let _ = trouble.send(why);
                }
            }
        });
    }
}

/// The devices that might serve `target`, best first: a named device's
/// providers; a class's devices, free ones first, leaving out `avoid`.
/// How long the providers of a device found by name are used again
/// without a lookup (a provider that does not answer, or no longer shares
/// it, sends the session to a fresh lookup).
const FOUND_FOR: Duration = Duration::from_secs(30);

/// The devices to try for `target`, and whether they came from this
/// peer's recent lookups rather than the overlay.
async fn candidates(
    client: &Client,
    target: &Target,
    avoid: &[PeerId],
) -> Result<(Vec<(PeerId, String)>, bool), String> {
    match target {
        Target::Name(name) => {
            let found = lock(&client.provided.found)
                .get(name)
                .filter(|(_, at)| at.elapsed() < FOUND_FOR)
                .map(|(providers, _)| providers.clone());
            if let Some(providers) = found.filter(|p| !p.is_empty()) {
                return Ok((providers.into_iter().map(|p| (p, name.clone())).collect(), true));
            }
            let mut providers: Vec<PeerId> = client
                .get_providers(device_key(name))
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|p| p.addr.peer)
                .collect();
            if lock(&client.provided.devices).contains_key(name) {
                providers.insert(0, client.peer_id());
            }
            providers.dedup();
            if !providers.is_empty() {
                let mut found = lock(&client.provided.found);
                if found.len() >= super::MAX_NAMES
                    && let Some(oldest) = found.iter().min_by_key(|(_, (_, at))| *at).map(|(n, _)| n.clone())
                {
                    found.remove(&oldest);
                }
                found.insert(name.clone(), (providers.clone(), std::time::Instant::now()));
            }
            Ok((providers.into_iter().map(|p| (p, name.clone())).collect(), false))
        }
        Target::Class(class) => {
            let mut devices: Vec<DeviceView> = client.devices().list(Some(class)).await?;
            devices.sort_by_key(|d| !d.holders.is_empty());
            Ok((
                devices
                    .into_iter()
                    .filter_map(|d| d.provider.parse::<PeerId>().ok().map(|p| (p, d.name)))
                    .filter(|(p, _)| !avoid.contains(p))
                    .collect(),
                false,
            ))
        }
    }
}

fn set(state: &watch::Sender<(u64, UseState)>, to: UseState) {
    state.send_if_modified(|(v, s)| {
        if *s == to {
            return false;
        }
        *v += 1;
        *s = to;
        true
    });
}

fn abandoned(session: &UseSession) -> bool {
    session.asked.as_ref().is_some_and(|a| lock(a).elapsed() >= KEEPALIVE)
}

async fn lease(client: &Client, provider: PeerId, name: &str, request: DeviceRequest) -> Result<DeviceAnswer, String> {
    match ask(
        client,
        provider,
        &Wire::Lease {
            name: name.to_string(),
            request,
        },
    )
    .await
    {
        Ok(Reply::Answer(answer)) => Ok(answer),
        Ok(Reply::Refused(why)) => Err(why),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(format!("the provider does not answer: {e}")),
    }
}

/// Holders by their peer ids (found through the overlay; a key that is
/// not found stays as it is).
async fn named(client: &Client, holders: &[shoal_resources::device::Holding]) -> Vec<HolderView> {
    let mut out = Vec::with_capacity(holders.len());
    for h in holders {
        let peer = crate::jobs::home::peer_of(client, h.peer)
            .await
            .map_or_else(|| h.peer.to_string(), |p| p.to_string());
        out.push(HolderView {
            peer,
            token: h.token,
            shared: h.shared,
        });
    }
    out
}

fn holders_text(holders: &[HolderView]) -> String {
    holders
        .iter()
        .map(|h| format!("{} (token {})", h.peer, h.token))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a session's task talks through.
struct Channels {
    /// Where it stands.
    state: watch::Sender<(u64, UseState)>,
    /// The caller lets go.
    release: mpsc::UnboundedReceiver<()>,
    /// Where the local port's connections go.
    to: watch::Sender<Option<(PeerId, String, u64)>>,
    /// A connection could not reach the provider.
    trouble: mpsc::UnboundedReceiver<String>,
}

/// Runs one session until it is over.
async fn hold(
    node: WeakClient,
    session: Arc<UseSession>,
    target: Target,
    shared: bool,
    wait: Option<Duration>,
    channels: Channels,
) -> Result<(), String> {
    let Channels {
        state,
        mut release,
        to,
        mut trouble,
    } = channels;
    let started = std::time::Instant::now();
    let mut avoid: Vec<PeerId> = Vec::new();
    loop {
        let client = node.upgrade().ok_or("the node stopped")?;
        set(&state, UseState::Finding);
        let (found, from_cache) = candidates(&client, &target, &avoid).await?;
        let Some((provider, name)) = found.first().cloned() else {
            let what = match &target {
                Target::Name(name) => format!("unknown device {name:?}: no peer shares it"),
                Target::Class(class) if avoid.is_empty() => format!("no device of class {class:?} is shared"),
                Target::Class(class) => format!("no other device of class {class:?} answers"),
            };
            return Err(what);
        };
        // Take it, or wait in line for it.
        let token = loop {
            if release.try_recv().is_ok() || abandoned(&session) {
                let _ = lease(&client, provider, &name, DeviceRequest::Release { token: 0 }).await;
                set(&state, UseState::Released);
                return Ok(());
            }
            let now_wait = wait != Some(Duration::ZERO);
            match lease(&client, provider, &name, DeviceRequest::Take { shared, wait: now_wait }).await {
                Ok(DeviceAnswer::Granted { token, .. }) => break token,
                Ok(DeviceAnswer::Queued { ahead, holders }) => {
                    let holders = named(&client, &holders).await;
                    if wait.is_some_and(|w| started.elapsed() >= w) {
                        let _ = lease(&client, provider, &name, DeviceRequest::Release { token: 0 }).await;
                        return Err(format!(
                            "device {name:?} was not free within {:?}: held by {}",
                            wait.unwrap_or_default(),
                            holders_text(&holders)
                        ));
                    }
                    set(
                        &state,
                        UseState::Waiting {
                            device: name.clone(),
                            ahead,
                            holders,
                        },
                    );
                }
                Ok(DeviceAnswer::Busy { holders }) => {
                    let holders = named(&client, &holders).await;
                    return Err(format!("device {name:?} is busy: held by {}", holders_text(&holders)));
                }
                Ok(DeviceAnswer::Full) => return Err(format!("device {name:?}: its line is full")),
                Ok(other) => return Err(format!("device {name:?}: unexpected answer {other:?}")),
                Err(why) => {
                    if from_cache {
                        // Found a while ago: look it up afresh.
                        lock(&client.provided.found).remove(&name);
                        break 0;
                    }
                    if matches!(target, Target::Class(_)) {
                        tracing::info!("device {name:?} on {provider}: {why}; trying another of its class");
                        avoid.push(provider);
                        break 0;
                    }
                    if wait.is_some_and(|w| started.elapsed() >= w) || wait == Some(Duration::ZERO) {
                        return Err(format!("device {name:?}: {why}"));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = release.recv() => {
                    let _ = lease(&client, provider, &name, DeviceRequest::Release { token: 0 }).await;
                    set(&state, UseState::Released);
                    return Ok(());
                }
            }
        };
        if token == 0 {
            continue;
        }
        // Held: renew every third of a term; by this peer's clock it holds
        // the device only until a term after the last renewal it sent that
        // the provider confirmed.
        let _ = to.send(Some((provider, name.clone(), token)));
        set(
            &state,
            UseState::Held {
                device: name.clone(),
                provider: provider.to_string(),
                token,
                problem: None,
            },
        );
        tracing::info!("device {name:?} on {provider}: held, token {token}");
        let mut confirmed = std::time::Instant::now();
        while trouble.try_recv().is_ok() {}
        let lost = loop {
            tokio::select! {
                _ = tokio::time::sleep(TERM / 3) => {}
                problem = trouble.recv() => {
                    if let Some(problem) = problem {
                        state.send_modify(|(v, s)| {
                            if let UseState::Held { problem: shown, .. } = s {
                                *v += 1;
                                *shown = Some(problem);
                            }
                        });
                    }
                }
                _ = release.recv() => {
                    let _ = to.send(None);
                    let _ = lease(&client, provider, &name, DeviceRequest::Release { token }).await;
                    set(&state, UseState::Released);
                    return Ok(());
                }
            }
            if abandoned(&session) {
                let _ = to.send(None);
                let _ = lease(&client, provider, &name, DeviceRequest::Release { token }).await;
                set(&state, UseState::Released);
                return Ok(());
            }
            let sent = std::time::Instant::now();
            match lease(&client, provider, &name, DeviceRequest::Renew { token }).await {
                Ok(DeviceAnswer::Ok) => confirmed = sent,
                Ok(DeviceAnswer::Lost) => break "the provider says the lease ran out".to_string(),
                Ok(other) => break format!("unexpected answer {other:?}"),
                Err(why) if confirmed.elapsed() >= TERM => break why,
                // Another device of the class does not need this one's
                // lease to lapse first: go at once.
                Err(why) if matches!(target, Target::Class(_)) => break why,
                Err(_) => {}
            }
        };
        let _ = to.send(None);
        tracing::warn!("device {name:?} on {provider}: lease lost: {lost}");
        match &target {
            Target::Class(_) => {
                // Another device of the class, if there is one.
                avoid.push(provider);
            }
            Target::Name(_) => {
                set(
                    &state,
                    UseState::Lost {
                        reason: format!("device {name:?}: {lost}"),
                    },
                );
                return Ok(());
            }
        }
    }
}
