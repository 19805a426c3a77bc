//! Named leases on the node: this peer as an acquirer and holder of leases
//! (`shoal lease acquire | run | release | ls`), driving
//! [`shoal_resources::lease::Acquire`] against the lease's members over
//! `/shoal/quorum/1`; as a member it answers through [`crate::quorum`]
//! (kind [`Kind::Lease`]: the payload is the name).
//!
//! A lease's members are fixed at its first use: the acquirer finds the
//! [`HOME_SIZE`] peers nearest the name's key, asks them whether any
//! keeps the name already (then that set is the lease's, whoever sent
//! it), and otherwise has every one of them join — all, not a majority,
//! so that two peers creating the name at once with overlapping views of
//! its home cannot both succeed with different sets.
//!
//! The set moves with the name's home ([`homes`]: a member gone for good,
//! or the peers nearest the name changed); a session follows it, and
//! one that starts asks the home for the newest set.
//!
//! Each acquisition is a *session* here, numbered, run by a task of its
//! own until it is released, lost, or its caller stops asking: a session
//! held for a command (`lease run`) must be asked about at least every
//! [`KEEPALIVE`], or it is released (its CLI was killed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::lease::{Acquire, AcquireAction, LineAnswer, Standing, check_name, lease_key};
use shoal_resources::quorum::{Answer, Timing};
use tokio::sync::{mpsc, watch};

use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};
use crate::quorum::{Kind, Reply, Wire, ask_each, members_of};

pub(crate) mod homes;
pub use homes::GONE_AFTER;

/// Members of a lease's set, at most (the name's home).
pub const HOME_SIZE: usize = 5;
/// A session kept for a caller that must keep asking: released once it has
/// not been asked about for this long.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// How long one ask to a member may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Sessions one peer runs at once, at most.
pub const MAX_SESSIONS: usize = 1024;

/// Checks a lease's payload: its name, whose key the lease has.
pub(crate) fn validate(key: &Key, _from: &PeerId, payload: &[u8]) -> Result<Option<Key>, String> {
    let name = std::str::from_utf8(payload).map_err(|_| "a lease name is UTF-8".to_string())?;
    check_name(name)?;
    if lease_key(name) != *key {
        return Err(format!("{key} is not the key of lease {name:?}"));
    }
    Ok(None)
}

/// Where a session stands, for the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SessionState {
    /// Finding or creating the lease's member set.
    Joining,
    /// In line.
    Waiting {
        /// Waiters ahead of it.
        ahead: u64,
        /// The holder as last read: its peer id, if known.
        holder: Option<String>,
        /// The holder's token.
        holder_token: Option<u64>,
    },
    /// Held: `token` is the lease's fencing token.
    Held {
        /// The grant number.
        token: u64,
        /// How much longer it is confirmed (ms), by this peer's clock.
        confirmed_ms: u64,
    },
    /// It was held and lost: no majority confirmed a renewal in time.
    Lost {
        /// The token it had.
        token: u64,
    },
    /// Released, or it stopped waiting.
    Released,
    /// It could not go on.
    Failed {
        /// Why.
        error: String,
    },
}

impl SessionState {
    /// Whether nothing more will change.
    pub fn is_over(&self) -> bool {
        matches!(
            self,
            SessionState::Lost { .. } | SessionState::Released | SessionState::Failed { .. }
        )
    }
}

/// One acquisition, as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionView {
    /// Its number here.
    pub session: u64,
    /// The lease's name.
    pub name: String,
    /// How many times its state changed: ask again with `after` set to it
    /// to hear of the next change.
    pub version: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub state: SessionState,
}

/// A session's state and how many times it changed.
type Versioned = (u64, SessionState);

/// A lease this peer keeps as one of its members.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeptLeaseView {
    /// The lease's name.
    pub name: String,
    /// Its holder's peer id while the holder is fresh here.
    pub holder: Option<String>,
    /// The holder's token.
    pub token: Option<u64>,
    /// Waiters in line here.
    pub waiting: usize,
    /// The number of the member set this peer serves (0: the set the
    /// name was created with; each move of the set adds one).
    #[serde(default)]
    pub epoch: u64,
    /// How many members that set has.
    #[serde(default)]
    pub members: usize,
    /// Whether the set moved on without this peer (it then only sends
    /// askers on).
    #[serde(default)]
    pub moved_on: bool,
}

struct Session {
    name: String,
    state: watch::Receiver<Versioned>,
    release: mpsc::UnboundedSender<()>,
    /// For a session that must be asked about: when it last was.
    asked: Option<Mutex<std::time::Instant>>,
}

/// The sessions of this peer.
#[derive(Default)]
pub(crate) struct Sessions {
    sessions: Mutex<BTreeMap<u64, Arc<Session>>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The named-lease handle of a node.
#[derive(Debug)]
pub struct Leases<'a> {
    client: &'a Client,
}

impl Client {
    /// Named leases.
    pub fn leases(&self) -> Leases<'_> {
        Leases { client: self }
    }
}

impl Leases<'_> {
    /// Starts acquiring lease `name`: a session that waits in line, holds
    /// the lease once its turn comes, and renews it until released (or,
    /// with `ttl`, until that much time has passed since it was taken).
    /// With `keepalive`, it is released once nobody asked about it for
    /// [`KEEPALIVE`]. Returns the session's number.
    pub fn acquire(&self, name: &str, ttl: Option<Duration>, keepalive: bool) -> Result<u64, String> {
        check_name(name)?;
        let sessions = &self.client.sessions;
        let mut held = lock(&sessions.sessions);
        held.retain(|_, s| !s.state.borrow().1.is_over());
        if held.len() >= MAX_SESSIONS {
            return Err(format!("this peer runs {MAX_SESSIONS} lease sessions already"));
        }
        let n = sessions.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (state_tx, state_rx) = watch::channel((0, SessionState::Joining));
        let (release_tx, release_rx) = mpsc::unbounded_channel();
        held.insert(
            n,
            Arc::new(Session {
                name: name.to_string(),
                state: state_rx,
                release: release_tx,
                asked: keepalive.then(|| Mutex::new(std::time::Instant::now())),
            }),
        );
        drop(held);
        let (client, name) = (self.client.downgrade(), name.to_string());
        tokio::spawn(async move {
            let state = state_tx.clone();
            if let Err(error) = run(client, name, ttl, state_tx, release_rx).await {
                state.send_modify(|(v, s)| {
                    *v += 1;
                    *s = SessionState::Failed { error };
                });
            }
        });
        Ok(n)
    }

    /// Session `n`, once its version is above `after` or `wait` passed;
    /// `None` if there is no such session. Counts as being asked about.
    pub async fn state(&self, n: u64, after: Option<u64>, wait: Duration) -> Option<SessionView> {
        let session = lock(&self.client.sessions.sessions).get(&n).cloned()?;
        if let Some(asked) = &session.asked {
            *lock(asked) = std::time::Instant::now();
        }
        let mut rx = session.state.clone();
        if let Some(after) = after {
            let _ = tokio::time::timeout(wait, rx.wait_for(|(v, _)| *v > after)).await;
        }
        let (version, state) = rx.borrow().clone();
        Some(SessionView {
            session: n,
            name: session.name.clone(),
            version,
            state,
        })
    }

    /// Releases session `n` (or stops its wait); whether it was there.
    pub fn release(&self, n: u64) -> bool {
        match lock(&self.client.sessions.sessions).get(&n) {
            Some(session) => session.release.send(()).is_ok(),
            None => false,
        }
    }

    /// Releases every session of lease `name` here; how many.
    pub fn release_name(&self, name: &str) -> usize {
        lock(&self.client.sessions.sessions)
            .values()
            .filter(|s| s.name == name && !s.state.borrow().1.is_over())
            .filter(|s| s.release.send(()).is_ok())
            .count()
    }

    /// This peer's sessions that are not over.
    pub fn sessions(&self) -> Vec<SessionView> {
        lock(&self.client.sessions.sessions)
            .iter()
            .filter(|(_, s)| !s.state.borrow().1.is_over())
            .map(|(n, s)| {
                let (version, state) = s.state.borrow().clone();
                SessionView {
                    session: *n,
                    name: s.name.clone(),
                    version,
                    state,
                }
            })
            .collect()
    }

    /// The leases this peer keeps as a member: name, holder while fresh
    /// here, and how many wait in line here.
    pub fn kept(&self) -> Vec<KeptLeaseView> {
        let at = now();
        self.client
            .quorum
            .entries_where(|_, e| e.kind == Kind::Lease)
            .into_iter()
            .map(|(_, e)| {
                let view = e.acceptor.view(at);
                let holder = view.grantee.filter(|_| !view.lapsed);
                KeptLeaseView {
                    name: String::from_utf8_lossy(&e.payload).into_owned(),
                    holder: holder.map(|g| {
                        e.peers
                            .iter()
                            .find(|p| key_of_peer(p) == Some(g.peer))
                            .map_or_else(|| g.peer.to_string(), ToString::to_string)
                    }),
                    token: holder.map(|g| g.n),
                    waiting: e.line.waiters(at).len(),
                    epoch: e.home.epoch(),
                    members: e.peers.len(),
                    moved_on: e.home.moved().is_some(),
                }
            })
            .collect()
    }
}

/// The member set of lease `name` and its number: the one its home keeps
/// (the newest set the first member to answer knows: an older one sends
/// the session on), or a new one every peer of the home joined.
async fn members(client: &Client, name: &str, key: Key) -> Result<(u64, Vec<PeerId>), String> {
    let home = crate::jobs::home::nearest_peers(client, key, HOME_SIZE)
        .await
        .map_err(|e| format!("cannot find the home of lease {name:?}: {e}"))?;
    let mut replies = ask_each(client, &home, &Wire::Describe { key }, ASK_TIMEOUT);
    while let Some((_, reply)) = replies.next().await {
        if let Ok(Reply::Entry { peers, epoch, .. }) = reply
            && !peers.is_empty()
        {
            return Ok((epoch, peers));
        }
    }
    let join = Wire::Join {
        kind: Kind::Lease,
        key,
        peers: home.clone(),
        timing: Timing::DEFAULT,
        payload: name.as_bytes().to_vec(),
    };
    let mut replies = ask_each(client, &home, &join, ASK_TIMEOUT);
    let mut missing = Vec::new();
    while let Some((peer, reply)) = replies.next().await {
        match reply {
            Ok(Reply::Joined) => {}
            Ok(Reply::Refused(why)) => missing.push(format!("{peer}: {why}")),
            Ok(other) => missing.push(format!("{peer}: {other:?}")),
            Err(e) => missing.push(format!("{peer}: {e}")),
        }
    }
    if !missing.is_empty() {
        // Another peer may have created it meanwhile, with its own view.
        let mut replies = ask_each(client, &home, &Wire::Describe { key }, ASK_TIMEOUT);
        while let Some((_, reply)) = replies.next().await {
            if let Ok(Reply::Entry { peers, epoch, .. }) = reply
                && !peers.is_empty()
                && peers != home
            {
                return Ok((epoch, peers));
            }
        }
        return Err(format!(
            "lease {name:?} is new, and every peer of its home must keep it; {} did not: {}",
            missing.len(),
            missing.join("; ")
        ));
    }
    Ok((0, home))
}

/// What comes back to a session's task: an answer to one of its asks.
enum Heard {
    Line(u64, Key, LineAnswer),
    Answer(u64, Key, Answer),
    Silent,
}

/// Runs one session until it is over.
async fn run(
    node: WeakClient,
    name: String,
    ttl: Option<Duration>,
    state: watch::Sender<Versioned>,
    mut release: mpsc::UnboundedReceiver<()>,
) -> Result<(), String> {
    let key = lease_key(&name);
    let client = node.upgrade().ok_or("the node stopped")?;
    let (mut epoch, mut peers) = members(&client, &name, key).await?;
    let mut names: BTreeMap<Key, String> = peers
        .iter()
        .filter_map(|p| key_of_peer(p).map(|k| (k, p.to_string())))
        .collect();
    drop(client);
    let me = node.upgrade().ok_or("the node stopped")?.key();
    let mut acquire = Acquire::new(now(), me, epoch, members_of(&peers), Timing::DEFAULT);
    let (heard_tx, mut heard) = mpsc::unbounded_channel::<Heard>();
    let mut held_since: Option<std::time::Instant> = None;
    let mut released = false;
    loop {
        let client = node.upgrade().ok_or("the node stopped")?;
        // The lease's member set moved: asks go to the new one.
        if let (e, Some(next)) = acquire.epoch()
            && e != epoch
        {
            match crate::quorum::peers_of(&next.addrs, &next.members) {
                Ok(moved) => {
                    tracing::info!("lease {name:?}: its member set moved (epoch {e})");
                    epoch = e;
                    peers = moved;
                    for p in &peers {
                        if let Some(k) = key_of_peer(p) {
                            names.insert(k, p.to_string());
                        }
                    }
                }
                Err(why) => return Err(format!("lease {name:?} moved to a set this peer cannot reach: {why}")),
            }
        }
        while let Some(action) = acquire.poll_action(now()) {
            send(&client, &peers, key, action, heard_tx.clone());
        }
        let at = now();
        let standing = acquire.standing(at);
        if let Standing::Waiting { holder: Some(g), .. } = &standing
            && !names.contains_key(&g.peer)
        {
            // The holder by its peer id (found once; its key if not found).
            let found = crate::jobs::home::peer_of(&client, g.peer).await;
            names.insert(g.peer, found.map_or_else(|| g.peer.to_string(), |p| p.to_string()));
        }
        let shown = match &standing {
            Standing::Waiting { ahead, holder } => SessionState::Waiting {
                ahead: *ahead,
                holder: holder.and_then(|g| names.get(&g.peer)).cloned(),
                holder_token: holder.map(|g| g.n),
            },
            Standing::Held(g) => {
                held_since.get_or_insert_with(std::time::Instant::now);
                SessionState::Held {
                    token: g.n,
                    confirmed_ms: acquire
                        .holds_until()
                        .map_or(0, |u| u.saturating_since(at).as_millis() as u64),
                }
            }
            Standing::Lost(g) => SessionState::Lost { token: g.n },
            Standing::Released => SessionState::Released,
        };
        let over = shown.is_over();
        // Renewals do not count as changes: a held lease's confirmed time
        // is updated in place.
        state.send_if_modified(|(v, s)| {
            let changed = match (&*s, &shown) {
                (SessionState::Held { token: a, .. }, SessionState::Held { token: b, .. }) => a != b,
                (a, b) => a != b,
            };
            if changed {
                *v += 1;
            }
            *s = shown.clone();
            changed
        });
        if over {
            if matches!(standing, Standing::Lost(_)) {
                tracing::warn!("lease {name:?}: lost (no majority of its members confirmed a renewal in time)");
            }
            // Let the release and the leave reach the members.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(());
        }
        let ttl_over = ttl.zip(held_since).is_some_and(|(ttl, since)| since.elapsed() >= ttl);
        if ttl_over || (!released && abandoned(&client, &state)) {
            acquire.release(now());
            released = true;
            continue;
        }
        drop(client);
        let wake = acquire
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.saturating_since(now()))
            .min(Duration::from_secs(1));
        tokio::select! {
            got = heard.recv() => {
                let at = now();
                match got {
                    Some(Heard::Line(ask, member, answer)) => acquire.handle_line(at, ask, member, &answer),
                    Some(Heard::Answer(ask, member, answer)) => acquire.handle_answer(at, ask, member, &answer),
                    Some(Heard::Silent) | None => {}
                }
            }
            asked = release.recv(), if !released => {
                let _ = asked;
                acquire.release(now());
                released = true;
            }
            () = tokio::time::sleep(wake) => acquire.handle_timeout(now()),
        }
    }
}

/// Whether the session whose state `state` sends must be asked about and
/// was not for [`KEEPALIVE`].
fn abandoned(client: &Client, state: &watch::Sender<Versioned>) -> bool {
    lock(&client.sessions.sessions).values().any(|s| {
        s.state.same_channel(&state.subscribe())
            && s.asked.as_ref().is_some_and(|asked| lock(asked).elapsed() >= KEEPALIVE)
    })
}

/// Sends one action to every member; each answer comes back on `heard`.
fn send(client: &Client, peers: &[PeerId], key: Key, action: AcquireAction, heard: mpsc::UnboundedSender<Heard>) {
    let (ask, wire) = match action {
        AcquireAction::Line { ask, epoch, request } => (ask, Wire::Line { key, request, epoch }),
        AcquireAction::Ask { ask, epoch, request } => (ask, Wire::Ask { key, request, epoch }),
    };
    let mut replies = ask_each(client, peers, &wire, ASK_TIMEOUT);
    tokio::spawn(async move {
        while let Some((peer, reply)) = replies.next().await {
            let Some(member) = key_of_peer(&peer) else { continue };
            let heard_one = match reply {
                Ok(Reply::Line(answer)) => Heard::Line(ask, member, answer),
                Ok(Reply::Answer(answer)) => Heard::Answer(ask, member, answer),
                _ => Heard::Silent,
            };
            if heard.send(heard_one).is_err() {
                return;
            }
        }
    });
}
