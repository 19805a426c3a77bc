//! Tenure at a quorum, on the wire and on disk: this peer as one member of
//! the member sets of keys (`shoal_resources::quorum::Acceptor`), and
//! asking every member of a set.
//!
//! A key's set is fixed when the key *joins*: whoever creates the key (a
//! job's submitter) sends `Join` with the members' peer ids, the timing and
//! a payload (a job's submission) to each member; each keeps them with its
//! acceptor state, in a file of its own under `DATA_DIR/quorum/`, written
//! and synced before any answer that changed what must survive a restart
//! (the grantee, the highest grant number, the newest save, the result).
//! After a restart every grantee counts as fresh for a whole period again
//! ([`Acceptor::restarted`]).
//!
//! `/shoal/quorum/1`: a stream carries one [`Wire`] request (one frame of
//! [`crate::codec`]) and one [`Reply`].
//!
//! The payload is the resource's business: the node checks it with the
//! validator the resource registered for its kind before joining (a job's
//! submission must name its key and come from its submitter).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::lease::{Kept, Line, LineAnswer, LineRequest};
use shoal_resources::quorum::{Acceptor, Answer, Grantee, Members, Request, Tenancy, Timing, View};
use shoal_resources::rehome::{Home, RehomeAnswer, RehomeRequest};

use crate::addr::key_of_peer;
use crate::client::{Client, WeakClient, now};

/// The stream protocol.
pub const QUORUM_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/quorum/1");

/// Keys this peer keeps state for, at most.
pub const MAX_KEYS: usize = 100_000;
/// How long a member keeps a key after it first holds its result (a job's
/// record, for `shoal job status` from any peer): then it is forgotten,
/// sooner if the member is full and a new key joins.
pub const KEEP_FINISHED: Duration = Duration::from_secs(24 * 3600);
/// Largest payload a key may carry, bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most members a set may have.
pub const MAX_MEMBERS: usize = 9;
/// Largest request or reply frame.
const MAX_FRAME: usize = MAX_PAYLOAD + 16 * 1024;
/// Streams served at once, at most.
const MAX_STREAMS: usize = 1024;

/// The kinds of keys, each with its payload's validator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A job: the payload is its submission.
    Job,
    /// A named lease: the payload is its name ([`crate::leases`]).
    Lease,
}

/// A request on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// Become a member for `key`.
    Join {
        kind: Kind,
        key: Key,
        #[serde(with = "peer_ids")]
        peers: Vec<PeerId>,
        timing: Timing,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A request about `key`, for its member set `epoch` (a named lease's
    /// set may move: [`shoal_resources::rehome`]; a job's is epoch 0).
    Ask {
        key: Key,
        request: Request,
        #[serde(default)]
        epoch: u64,
    },
    /// What this member keeps for `key`: the member set and its view.
    Describe { key: Key },
    /// Which of `keys` this member keeps, and the epoch of the newest set
    /// it knows for each (its own, or the one its set moved to): the lease
    /// duty's one ping to a member for every lease they share, at most
    /// [`MAX_BATCH`] keys.
    Epochs { keys: Vec<Key> },
    /// Several, answered in order (an executor's renewals of the jobs it
    /// holds, batched per member): at most [`MAX_BATCH`].
    Many(Vec<(Key, Request)>),
    /// About the waiting line of a named lease at `key`, for its member
    /// set `epoch`.
    Line {
        key: Key,
        request: LineRequest,
        #[serde(default)]
        epoch: u64,
    },
    /// About moving the member set of the named lease at `key`, from a
    /// member of the set; its timing and payload (the name) for a peer of
    /// the next set that does not keep it yet.
    Rehome {
        key: Key,
        request: RehomeRequest,
        timing: Timing,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
}

/// A reply on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Joined (or was a member already, with the same set).
    Joined,
    /// The member's answer.
    Answer(Answer),
    /// This peer keeps nothing for the key.
    Unknown,
    /// Refused, and why.
    Refused(String),
    /// The replies to [`Wire::Many`], in order.
    Many(Vec<Reply>),
    /// The answer to [`Wire::Line`].
    Line(LineAnswer),
    /// The answer to [`Wire::Rehome`].
    Rehome(RehomeAnswer),
    /// The answer to [`Wire::Epochs`], in order (none: not kept here).
    Epochs(Vec<Option<u64>>),
    /// The answer to [`Wire::Describe`].
    Entry {
        #[serde(with = "peer_ids")]
        peers: Vec<PeerId>,
        view: View,
        /// The grants this member made (absent from older peers).
        #[serde(default)]
        history: Vec<Tenancy>,
        /// The member set's number (`peers` is the newest set this member
        /// knows: its own, or the one its set moved to).
        #[serde(default)]
        epoch: u64,
    },
}

/// Requests in one [`Wire::Many`], at most.
pub const MAX_BATCH: usize = 256;

/// Peer ids as their bytes.
mod peer_ids {
    use libp2p::PeerId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(peers: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(peers.iter().map(|p| serde_bytes::ByteBuf::from(p.to_bytes())))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        let raw = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        raw.into_iter()
            .map(|b| PeerId::from_bytes(&b).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// What this member keeps for one key (on disk, as CBOR).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    #[serde(with = "peer_ids")]
    pub(crate) peers: Vec<PeerId>,
    pub(crate) timing: Timing,
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
    pub(crate) acceptor: Acceptor,
    /// Whose key it is (a job's submitter), as its validator says: it may
    /// change the grantee, as the members may. (Absent in entries saved
    /// before it was kept: then only the members and the grantee may.)
    #[serde(default)]
    pub(crate) owner: Option<Key>,
    /// Whose join (or install) brought the key here: a job's submitter, a
    /// lease's first user or mover. No one peer fills more than half of a
    /// member's room with keys that never finish ([`Quorum::room_for`]).
    /// (Absent in entries saved before it was kept.)
    #[serde(default)]
    pub(crate) by: Option<Key>,
    /// When this member first held a result for the key (by its clock).
    #[serde(default)]
    pub(crate) finished: Option<shoal_overlay::Instant>,
    /// A named lease's waiting line (not kept on disk: waiters register
    /// again within a third of a term).
    #[serde(skip)]
    pub(crate) line: Line,
    /// Which member set this member serves, and its moves (a named
    /// lease's; a job's set never moves).
    #[serde(default)]
    pub(crate) home: Home,
}

impl Entry {
    /// Whether `from` may give the key's tenure to another grantee: a
    /// member (its supervisors), the key's owner (a job's first
    /// placement), or the grantee itself (moving its job elsewhere). A
    /// stranger could otherwise make itself the grantee of a job whose
    /// executor lapsed, and commit a result of its own.
    fn may_change(&self, from: &PeerId) -> bool {
        let key = key_of_peer(from);
        self.peers.contains(from)
            || (key.is_some() && key == self.owner)
            || self.acceptor.view(now()).grantee.is_some_and(|g| Some(g.peer) == key)
    }
}

/// Peer ids as the opaque addresses of a moved set
/// ([`shoal_resources::rehome::Next::addrs`]).
pub(crate) fn addrs_of(peers: &[PeerId]) -> Vec<u8> {
    let raw: Vec<serde_bytes::ByteBuf> = peers.iter().map(|p| serde_bytes::ByteBuf::from(p.to_bytes())).collect();
    let mut bytes = Vec::new();
    ciborium::into_writer(&raw, &mut bytes).expect("peer ids encode");
    bytes
}

/// The peer ids a moved set's addresses name: at most [`MAX_MEMBERS`],
/// each with an overlay key, and exactly `members`.
pub(crate) fn peers_of(addrs: &[u8], members: &Members) -> Result<Vec<PeerId>, String> {
    if addrs.len() > MAX_MEMBERS * 64 {
        return Err("a member set's addresses are too long".into());
    }
    let raw: Vec<serde_bytes::ByteBuf> =
        ciborium::from_reader(addrs).map_err(|e| format!("a member set's addresses do not decode: {e}"))?;
    let peers = raw
        .iter()
        .map(|b| PeerId::from_bytes(b).map_err(|e| format!("not a peer id: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if peers.is_empty() || peers.len() > MAX_MEMBERS || members_of(&peers) != *members || peers.len() != members.len() {
        return Err("a member set's addresses do not name its members".into());
    }
    Ok(peers)
}

/// The member set of `peers` (peer ids without an overlay key are left
/// out: they cannot be members).
pub(crate) fn members_of(peers: &[PeerId]) -> Members {
    Members::new(peers.iter().filter_map(key_of_peer))
}

/// Checks a payload of one kind: whether `from` may join `key` with it,
/// and whose key it is (see [`Entry::owner`]).
pub(crate) type Validator = fn(key: &Key, from: &PeerId, payload: &[u8]) -> Result<Option<Key>, String>;

/// The keys this peer is a member for.
pub(crate) struct Quorum {
    local: PeerId,
    dir: PathBuf,
    entries: Mutex<BTreeMap<Key, Entry>>,
    /// Keys kept at most ([`MAX_KEYS`]).
    max_keys: usize,
    validators: BTreeMap<Kind, Validator>,
    /// Woken when a key joins, so that its duties start at once.
    pub(crate) joined: tokio::sync::Notify,
    /// Keys that joined since [`Quorum::take_joined`] last took them (at
    /// most [`MAX_KEYS`]; past that the duties' periodic look finds them).
    fresh: Mutex<Vec<Key>>,
    /// Asks waiting to go to each member together (see [`ask_each`]).
    waiting: Mutex<std::collections::HashMap<PeerId, Vec<Waiting>>>,
    /// Unfinished keys per peer that brought them ([`Entry::by`]), counted
    /// while this member is at least half full, at most every
    /// `recount_every` (a count walks every entry), and raised by each key
    /// taken in between ([`Quorum::room_for`]).
    shares: Mutex<Option<(std::time::Instant, BTreeMap<Key, usize>)>>,
    recount_every: Duration,
}

/// An ask about one key waiting for its member's next batch.
type Waiting = (Key, Request, tokio::sync::oneshot::Sender<std::io::Result<Reply>>);

impl std::fmt::Debug for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quorum").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Quorum {
    /// The keys kept under `data_dir/quorum`, read back (each grantee
    /// fresh for a whole period from now); a file that does not decode is
    /// set aside with a warning.
    pub(crate) fn open(
        local: PeerId,
        data_dir: &std::path::Path,
        validators: BTreeMap<Kind, Validator>,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("quorum");
        std::fs::create_dir_all(&dir)?;
        let mut entries = BTreeMap::new();
        let at = now();
        for file in std::fs::read_dir(&dir)? {
            let path = file?.path();
            let Some(key) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<Key>().ok())
            else {
                continue;
            };
            let bytes = std::fs::read(&path)?;
            match ciborium::from_reader::<Entry, _>(bytes.as_slice()) {
                Ok(mut entry) => {
                    entry.acceptor.restarted(at, entry.timing);
                    if entry.finished.is_none() && entry.acceptor.view(at).result.is_some() {
                        // Saved before the time was kept: counts from now.
                        entry.finished = Some(at);
                    }
                    entries.insert(key, entry);
                }
                Err(e) => {
                    tracing::warn!("{} does not decode ({e}): set aside", path.display());
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        Ok(Quorum {
            local,
            dir,
            entries: Mutex::new(entries),
            max_keys: MAX_KEYS,
            validators,
            joined: tokio::sync::Notify::new(),
            fresh: Mutex::default(),
            waiting: Mutex::default(),
            shares: Mutex::default(),
            recount_every: Duration::from_secs(1),
        })
    }

    /// The entries `keep` picks (it sees every entry under the lock;
    /// only the picked ones are copied).
    pub(crate) fn entries_where(&self, mut keep: impl FnMut(&Key, &Entry) -> bool) -> Vec<(Key, Entry)> {
        lock(&self.entries)
            .iter()
            .filter(|(k, e)| keep(k, e))
            .map(|(k, e)| (*k, e.clone()))
            .collect()
    }

    /// Forgets the keys whose result this member has held since before
    /// `before` (their files too); how many.
    pub(crate) fn forget_finished(&self, before: shoal_overlay::Instant) -> usize {
        let gone: Vec<Key> = {
            let mut entries = lock(&self.entries);
            let gone: Vec<Key> = entries
                .iter()
                .filter(|(_, e)| e.finished.is_some_and(|at| at < before))
                .map(|(k, _)| *k)
                .collect();
            for key in &gone {
                entries.remove(key);
            }
            gone
        };
        for key in &gone {
            if let Err(e) = std::fs::remove_file(self.dir.join(key.to_string()))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove the state of {key}: {e}");
            }
        }
        gone.len()
    }

    /// The keys that joined since the last call.
    pub(crate) fn take_joined(&self) -> Vec<Key> {
        std::mem::take(&mut *lock(&self.fresh))
    }

    /// The entry of `key`, if this peer keeps one.
    pub(crate) fn entry(&self, key: &Key) -> Option<Entry> {
        lock(&self.entries).get(key).cloned()
    }

    /// What this member holds of `key` at `now`, if it keeps it.
    pub(crate) fn view(&self, key: &Key, now: shoal_overlay::Instant) -> Option<View> {
        lock(&self.entries).get(key).map(|e| e.acceptor.view(now))
    }

    /// Handles one request from `from`.
    pub(crate) fn handle(&self, from: &PeerId, wire: Wire) -> Reply {
        match wire {
            Wire::Join {
                kind,
                key,
                peers,
                timing,
                payload,
            } => self.join(from, kind, key, peers, timing, payload),
            Wire::Ask { key, request, epoch } => self.ask(from, key, request, epoch),
            Wire::Describe { key } => match lock(&self.entries).get(&key) {
                Some(entry) => {
                    // The newest set it knows: where its own moved, if it did.
                    let moved = entry
                        .home
                        .moved()
                        .and_then(|n| Some((n.epoch, peers_of(&n.addrs, &n.members).ok()?)));
                    let (epoch, peers) = moved.unwrap_or_else(|| (entry.home.epoch(), entry.peers.clone()));
                    Reply::Entry {
                        peers,
                        view: entry.acceptor.view(now()),
                        history: entry.acceptor.history().cloned().collect(),
                        epoch,
                    }
                }
                None => Reply::Unknown,
            },
            Wire::Epochs { keys } if keys.len() <= MAX_BATCH => {
                let entries = lock(&self.entries);
                Reply::Epochs(
                    keys.iter()
                        .map(|k| {
                            let e = entries.get(k)?;
                            Some(e.home.moved().map_or(e.home.epoch(), |n| n.epoch))
                        })
                        .collect(),
                )
            }
            Wire::Epochs { .. } => Reply::Refused(format!("more than {MAX_BATCH} keys in one batch")),
            Wire::Rehome {
                key,
                request,
                timing,
                payload,
            } => self.rehome(from, key, request, timing, payload),
            Wire::Many(items) if items.len() <= MAX_BATCH => Reply::Many(
                items
                    .into_iter()
                    .map(|(key, request)| self.ask(from, key, request, 0))
                    .collect(),
            ),
            Wire::Many(_) => Reply::Refused(format!("more than {MAX_BATCH} requests in one batch")),
            // A peer stands in line, or leaves it, only as itself.
            Wire::Line {
                request: LineRequest::Wait { peer, .. } | LineRequest::Leave { peer },
                ..
            } if key_of_peer(from) != Some(peer) => {
                Reply::Refused("a peer waits in line, or leaves it, only as itself".into())
            }
            Wire::Line { key, request, epoch } => match lock(&self.entries).get_mut(&key) {
                Some(entry) if entry.kind == Kind::Lease => Reply::Line(shoal_resources::lease::line_answer(
                    Kept {
                        acceptor: &mut entry.acceptor,
                        line: &mut entry.line,
                        home: &entry.home,
                    },
                    now(),
                    entry.timing,
                    epoch,
                    request,
                )),
                Some(_) => Reply::Refused(format!("{key} is not a named lease")),
                None => Reply::Unknown,
            },
        }
    }

    fn ask(&self, from: &PeerId, key: Key, request: Request, epoch: u64) -> Reply {
        if let Some(by) = acting_as(&request)
            && key_of_peer(from) != Some(by.peer)
        {
            return Reply::Refused("only the grantee itself renews, saves, commits or lets go".into());
        }
        let mut entries = lock(&self.entries);
        let Some(entry) = entries.get_mut(&key) else {
            return Reply::Unknown;
        };
        if matches!(request, Request::Change(_)) && entry.kind != Kind::Lease && !entry.may_change(from) {
            return Reply::Refused(
                "only the key's members, its owner (a job's submitter) or its grantee change its grantee".into(),
            );
        }
        let (before, finished) = (entry.acceptor.clone(), entry.finished);
        let at = now();
        let answer = match (entry.kind, key_of_peer(from)) {
            // A lease is taken by the peer itself, in its turn.
            (Kind::Lease, Some(asker)) => shoal_resources::lease::answer(
                Kept {
                    acceptor: &mut entry.acceptor,
                    line: &mut entry.line,
                    home: &entry.home,
                },
                at,
                entry.timing,
                asker,
                epoch,
                request,
            ),
            (Kind::Lease, None) => return Reply::Refused("a peer without an overlay key takes no lease".into()),
            (Kind::Job, _) => entry.acceptor.handle(at, entry.timing, request),
        };
        if entry.finished.is_none() && entry.acceptor.view(at).result.is_some() {
            entry.finished = Some(at);
        }
        if !entry.acceptor.same_durable(&before)
            && let Err(e) = save(&self.dir, &key, entry)
        {
            // Not on disk: not done.
            entry.acceptor = before;
            entry.finished = finished;
            return Reply::Refused(format!("cannot save the state of {key}: {e}"));
        }
        Reply::Answer(answer)
    }

    fn join(&self, from: &PeerId, kind: Kind, key: Key, peers: Vec<PeerId>, timing: Timing, payload: Vec<u8>) -> Reply {
        if peers.is_empty() || peers.len() > MAX_MEMBERS {
            return Reply::Refused(format!("a member set has 1 to {MAX_MEMBERS} peers"));
        }
        if !peers.contains(&self.local) {
            return Reply::Refused("this peer is not among the members".into());
        }
        if payload.len() > MAX_PAYLOAD {
            return Reply::Refused(format!("the payload is over {MAX_PAYLOAD} bytes"));
        }
        if timing.term.is_zero() || timing.margin >= timing.term || timing.term > Duration::from_secs(3600) {
            return Reply::Refused("the term must be positive, at most an hour, and above the margin".into());
        }
        let Some(validate) = self.validators.get(&kind) else {
            return Reply::Refused(format!("this peer keeps no keys of kind {kind:?}"));
        };
        let owner = match validate(&key, from, &payload) {
            Ok(owner) => owner,
            Err(why) => return Reply::Refused(why),
        };
        let mut entries = lock(&self.entries);
        if let Some(held) = entries.get(&key) {
            return if held.peers == peers && held.payload == payload {
                Reply::Joined
            } else {
                Reply::Refused(format!("{key} has joined already, with another set or payload"))
            };
        }
        let by = owner.or_else(|| key_of_peer(from));
        if let Err(why) = self.room_for(&entries, by) {
            return Reply::Refused(why);
        }
        if entries.len() >= self.max_keys {
            // Full: the key that finished longest ago makes room.
            let oldest = entries
                .iter()
                .filter_map(|(k, e)| e.finished.map(|at| (at, *k)))
                .min()
                .map(|(_, k)| k);
            let Some(oldest) = oldest else {
                return Reply::Refused(format!("this peer keeps {} unfinished keys already", self.max_keys));
            };
            entries.remove(&oldest);
            let _ = std::fs::remove_file(self.dir.join(oldest.to_string()));
        }
        let entry = Entry {
            kind,
            peers,
            timing,
            payload,
            acceptor: Acceptor::new(),
            owner,
            by,
            finished: None,
            line: Line::default(),
            home: Home::default(),
        };
        if let Err(e) = save(&self.dir, &key, &entry) {
            return Reply::Refused(format!("cannot save the state of {key}: {e}"));
        }
        entries.insert(key, entry);
        drop(entries);
        let mut fresh = lock(&self.fresh);
        if fresh.len() < MAX_KEYS {
            fresh.push(key);
        }
        drop(fresh);
        self.joined.notify_one();
        Reply::Joined
    }
}

impl Quorum {
    /// Whether `by` may bring one more key here: while the member is less
    /// than half full anyone may; past that, a peer whose keys that have
    /// not finished fill half of its room already may not (a hostile or
    /// runaway peer — a submitter of 100,000 jobs, a user of as many
    /// lease names, which never finish — could otherwise fill it and
    /// have every other peer's keys refused).
    ///
    /// The count is at most `recount_every` old: keys that finished since
    /// count until the next recount, keys taken since are added as taken.
    fn room_for(&self, entries: &BTreeMap<Key, Entry>, by: Option<Key>) -> Result<(), String> {
        let half = (self.max_keys / 2).max(1);
        let Some(by) = by.filter(|_| entries.len() >= half) else {
            return Ok(());
        };
        let mut shares = lock(&self.shares);
        if shares.as_ref().is_none_or(|(at, _)| at.elapsed() >= self.recount_every) {
            let mut counts = BTreeMap::new();
            for e in entries.values().filter(|e| e.finished.is_none()) {
                if let Some(by) = e.by {
                    *counts.entry(by).or_insert(0usize) += 1;
                }
            }
            *shares = Some((std::time::Instant::now(), counts));
        }
        let Some((_, counted)) = shares.as_mut() else {
            return Ok(());
        };
        let theirs = counted.get(&by).copied().unwrap_or(0);
        if theirs >= half {
            return Err(format!(
                "the peer with key {by} brought {theirs} unfinished keys here already: one peer fills at most half of the {} this peer keeps",
                self.max_keys
            ));
        }
        // Taken (the caller inserts it next).
        *counted.entry(by).or_insert(0) += 1;
        Ok(())
    }

    /// A request about moving a named lease's member set
    /// ([`shoal_resources::rehome`]): from a member of the set this peer
    /// serves for it, or, to install the next set here, from any peer
    /// with a valid name (this peer must be among the set's members).
    fn rehome(&self, from: &PeerId, key: Key, request: RehomeRequest, timing: Timing, payload: Vec<u8>) -> Reply {
        let at = now();
        let mut entries = lock(&self.entries);
        let install = match &request {
            RehomeRequest::Install(next) => {
                let peers = match peers_of(&next.addrs, &next.members) {
                    Ok(peers) => peers,
                    Err(why) => return Reply::Refused(why),
                };
                if !peers.contains(&self.local) {
                    return Reply::Refused("this peer is not among the next set's members".into());
                }
                if next.epoch == 0 {
                    return Reply::Refused("the set after another is numbered above 0".into());
                }
                Some(peers)
            }
            // A set proposed or chosen must name at most MAX_MEMBERS peers
            // this peer could reach, or it could never be installed.
            RehomeRequest::Propose { next, .. } | RehomeRequest::Chosen(next) => {
                if let Err(why) = peers_of(&next.addrs, &next.members) {
                    return Reply::Refused(why);
                }
                None
            }
            RehomeRequest::Seal { .. } => None,
        };
        if install.is_some() && !entries.contains_key(&key) {
            // A peer of the next set that does not keep the lease yet.
            if payload.len() > MAX_PAYLOAD
                || timing.term.is_zero()
                || timing.margin >= timing.term
                || timing.term > Duration::from_secs(3600)
            {
                return Reply::Refused("a lease's name or timing is out of bounds".into());
            }
            let Some(validate) = self.validators.get(&Kind::Lease) else {
                return Reply::Refused("this peer keeps no named leases".into());
            };
            if let Err(why) = validate(&key, from, &payload) {
                return Reply::Refused(why);
            }
            if entries.len() >= self.max_keys {
                return Reply::Refused(format!("this peer keeps {} keys already", self.max_keys));
            }
            if let Err(why) = self.room_for(&entries, key_of_peer(from)) {
                return Reply::Refused(why);
            }
            entries.insert(
                key,
                Entry {
                    kind: Kind::Lease,
                    peers: Vec::new(),
                    timing,
                    payload,
                    acceptor: Acceptor::new(),
                    owner: None,
                    by: key_of_peer(from),
                    finished: None,
                    line: Line::default(),
                    home: Home::default(),
                },
            );
        }
        let Some(entry) = entries.get_mut(&key) else {
            return Reply::Unknown;
        };
        if entry.kind != Kind::Lease {
            return Reply::Refused(format!("{key} is not a named lease: its set does not move"));
        }
        // Only a member of the set this peer serves moves it — or, to
        // install a set here, a member of the set this peer accepted or
        // knows it moved to (a straggler sent its own set again). A key new
        // here is installed from anyone (as a key joins).
        let sender = key_of_peer(from);
        let named = |next: Option<&shoal_resources::rehome::Next>| {
            next.zip(sender).is_some_and(|(n, k)| n.members.contains(&k))
        };
        let known = !entry.peers.is_empty();
        if known
            && !entry.peers.contains(from)
            && !(install.is_some() && (named(entry.home.accepted()) || named(entry.home.moved())))
        {
            return Reply::Refused("only a member of the lease's set moves it".into());
        }
        let before = entry.clone();
        let answer = entry.home.handle(&mut entry.acceptor, at, entry.timing, request);
        // A set that moved on without this peer is kept here only to send
        // askers on, and forgotten like a finished key.
        if entry.home.moved().is_some() && before.home.moved().is_none() {
            entry.finished.get_or_insert(at);
        }
        if let Some(peers) = install
            && entry.home.epoch() != before.home.epoch()
        {
            entry.peers = peers;
            entry.line = Line::default();
        }
        let changed = entry.home != before.home || !entry.acceptor.same_durable(&before.acceptor);
        if changed && let Err(e) = save(&self.dir, &key, entry) {
            if before.peers.is_empty() {
                entries.remove(&key);
            } else {
                *entry = before;
            }
            return Reply::Refused(format!("cannot save the state of {key}: {e}"));
        }
        Reply::Rehome(answer)
    }
}

/// The grantee a request acts as, if it acts as one: only that peer may
/// send it (the stream's authenticated peer), or anyone could renew a job
/// it does not run, or commit a result of its own.
fn acting_as(request: &Request) -> Option<Grantee> {
    match request {
        Request::Renew(by) | Request::Release { by, .. } => Some(*by),
        Request::Save(save) => Some(save.by),
        Request::Commit { by, .. } => Some(*by),
        Request::Read | Request::Change(_) => None,
    }
}

/// Writes an entry durably: a temporary file, synced, renamed over.
fn save(dir: &std::path::Path, key: &Key, entry: &Entry) -> std::io::Result<()> {
    let path = dir.join(key.to_string());
    let tmp = path.with_extension("tmp");
    let mut bytes = Vec::new();
    ciborium::into_writer(entry, &mut bytes).map_err(std::io::Error::other)?;
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)
}

/// Serves `/shoal/quorum/1` until the node stops.
pub(crate) async fn serve(node: WeakClient, mut incoming: crate::streams::IncomingStreams) {
    let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = streams.clone().try_acquire_owned() else {
            tracing::debug!("quorum stream from {peer} refused: {MAX_STREAMS} open");
            continue;
        };
        let Some(client) = node.upgrade() else { break };
        tokio::spawn(async move {
            if let Err(e) = serve_one(&client, peer, stream).await {
                tracing::debug!("quorum stream from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn serve_one(client: &Client, peer: PeerId, mut stream: Stream) -> std::io::Result<()> {
    let wire: Wire = crate::codec::read_cbor(&mut stream, MAX_FRAME).await?;
    // What a save names is kept here before the save is taken: a save a
    // majority took is then one a majority can give back.
    let items: Vec<(Key, &Request)> = match &wire {
        Wire::Ask { key, request, .. } => vec![(*key, request)],
        Wire::Many(items) if items.len() <= MAX_BATCH => items.iter().map(|(k, r)| (*k, r)).collect(),
        _ => Vec::new(),
    };
    let mut unkept = std::collections::HashMap::new();
    for (i, (key, request)) in items.into_iter().enumerate() {
        if let Request::Save(save) = request
            && key_of_peer(&peer) == Some(save.by.peer)
            && let Some(entry) = client.quorum.entry(&key)
            && entry.acceptor.view(now()).grantee == Some(save.by)
            && let Err(why) = keep(client, peer, entry.kind, &save.state).await
        {
            unkept.insert(i, why);
        }
    }
    let quorum = client.quorum.clone();
    let reply = tokio::task::spawn_blocking(move || match wire {
        Wire::Ask { .. } if !unkept.is_empty() => Reply::Refused(unkept.into_values().next().unwrap_or_default()),
        Wire::Many(items) if !unkept.is_empty() => Reply::Many(
            items
                .into_iter()
                .enumerate()
                .map(|(i, (key, request))| match unkept.remove(&i) {
                    Some(why) => Reply::Refused(why),
                    None => quorum.handle(&peer, Wire::Ask { key, request, epoch: 0 }),
                })
                .collect(),
        ),
        wire => quorum.handle(&peer, wire),
    })
    .await
    .map_err(std::io::Error::other)?;
    stream.write_all(&crate::codec::encode_cbor(&reply)?).await?;
    stream.close().await
}

/// Keeps here what a save of a key of `kind` names, fetching it from `from`
/// (who saved it) or any provider: for a job, the blob of its checkpoint.
async fn keep(client: &Client, from: PeerId, kind: Kind, state: &[u8]) -> Result<(), String> {
    match kind {
        // A lease saves nothing.
        Kind::Lease => Ok(()),
        Kind::Job => {
            let id = Key::from_bytes(<[u8; 32]>::try_from(state).map_err(|_| "a checkpoint names a blob")?);
            if client.blob_store().contains(&id) {
                return Ok(());
            }
            // From the saver first (a lookup per page would cost more than
            // the page); the save is answered without waiting for the
            // overlay to hear that this peer keeps it.
            client
                .files()
                .fetch_from_first(id, &[from])
                .await
                .map_err(|e| format!("cannot keep checkpoint {id}: {}", crate::error::error_chain(&e)))
        }
    }
}

/// Sends `wire` to one member and reads its reply; this peer's own
/// member state is asked directly.
pub(crate) async fn ask(client: &Client, peer: PeerId, wire: Wire, within: Duration) -> std::io::Result<Reply> {
    if peer == client.peer_id() {
        let quorum = client.quorum.clone();
        let local = client.peer_id();
        return tokio::task::spawn_blocking(move || quorum.handle(&local, wire))
            .await
            .map_err(std::io::Error::other);
    }
    let exchange = async {
        let _turn = client.stream_permit(peer).await;
        let mut stream = client
            .stream_control()
            .open_stream(peer, QUORUM_PROTOCOL)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        stream.write_all(&crate::codec::encode_cbor(&wire)?).await?;
        stream.flush().await?;
        crate::codec::read_cbor::<Reply, _>(&mut stream, MAX_FRAME).await
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))?
}

/// Asks `peer` about `key`. While an ask to `peer` is on its way, later
/// ones wait and go together in the next batch: one alone goes at once,
/// and a node supervising thousands of jobs sends each member a few
/// batches a round, not thousands of streams.
async fn ask_batched(
    client: &Client,
    peer: PeerId,
    key: Key,
    request: Request,
    within: Duration,
) -> std::io::Result<Reply> {
    let (tell, told) = tokio::sync::oneshot::channel();
    let idle = {
        let mut waiting = lock(&client.quorum.waiting);
        match waiting.get_mut(&peer) {
            // A batch is on its way: wait for the next.
            Some(queue) => {
                queue.push((key, request, tell));
                None
            }
            None => {
                waiting.insert(peer, Vec::new());
                Some((key, request, tell))
            }
        }
    };
    if let Some(first) = idle {
        let client = client.clone();
        tokio::spawn(async move {
            let mut batch = vec![first];
            loop {
                send_batch(&client, peer, batch, within).await;
                let mut waiting = lock(&client.quorum.waiting);
                let Some(queue) = waiting.get_mut(&peer) else { return };
                if queue.is_empty() {
                    waiting.remove(&peer);
                    return;
                }
                let rest = queue.len().saturating_sub(MAX_BATCH);
                batch = queue.drain(..queue.len() - rest).collect();
            }
        });
    }
    told.await.map_err(|_| std::io::Error::other("the batch was dropped"))?
}

/// Asks `peer` (this peer's own state directly) about `key`, in `peer`'s
/// next batch.
pub(crate) async fn ask_one(
    client: &Client,
    peer: PeerId,
    key: Key,
    request: Request,
    within: Duration,
) -> std::io::Result<Reply> {
    if peer == client.peer_id() {
        return ask(client, peer, Wire::Ask { key, request, epoch: 0 }, within).await;
    }
    ask_batched(client, peer, key, request, within).await
}

/// Sends one batch of asks to `peer` and hands each its reply.
async fn send_batch(client: &Client, peer: PeerId, batch: Vec<Waiting>, within: Duration) {
    let wire = Wire::Many(batch.iter().map(|(k, r, _)| (*k, r.clone())).collect());
    match ask(client, peer, wire, within).await {
        Ok(Reply::Many(replies)) if replies.len() == batch.len() => {
            for ((_, _, tell), reply) in batch.into_iter().zip(replies) {
                let _ = tell.send(Ok(reply));
            }
        }
        Ok(other) => {
            for (_, _, tell) in batch {
                let _ = tell.send(Ok(other.clone()));
            }
        }
        Err(e) => {
            for (_, _, tell) in batch {
                let _ = tell.send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
        }
    }
}

/// Sends `wire` to every one of `peers` at once; the replies as they come
/// (a member that fails to answer within `within` gives an error). Asks
/// about one key go in batches per member ([`ask_batched`]).
pub(crate) fn ask_each(
    client: &Client,
    peers: &[PeerId],
    wire: &Wire,
    within: Duration,
) -> FuturesUnordered<impl std::future::Future<Output = (PeerId, std::io::Result<Reply>)> + 'static> {
    peers
        .iter()
        .map(|peer| {
            let (client, peer, wire) = (client.clone(), *peer, wire.clone());
            async move {
                let reply = match wire {
                    // Only a job's asks are batched (a lease's carry its set).
                    Wire::Ask { key, request, epoch: 0 } => ask_one(&client, peer, key, request, within).await,
                    wire => ask(&client, peer, wire, within).await,
                };
                (peer, reply)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_resources::quorum::Grantee;
    use shoal_resources::rehome::Next;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    /// Any payload; the peer that joins the key owns it.
    fn accept_all(_: &Key, from: &PeerId, _: &[u8]) -> Result<Option<Key>, String> {
        Ok(key_of_peer(from))
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-quorum-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn quorum(local: PeerId, dir: &std::path::Path) -> Quorum {
        Quorum::open(local, dir, [(Kind::Job, accept_all as Validator)].into()).unwrap()
    }

    #[test]
    fn a_member_says_in_one_answer_which_leases_it_keeps_and_at_which_epoch() {
        let (me, asker) = (peer(), peer());
        let dir = dir("epochs");
        let q = Quorum::open(me, &dir, [(Kind::Lease, accept_all as Validator)].into()).unwrap();
        let (kept, other) = (Key::of_content(b"kept"), Key::of_content(b"other"));
        let join = Wire::Join {
            kind: Kind::Lease,
            key: kept,
            peers: vec![me],
            timing: Timing::DEFAULT,
            payload: b"kept".to_vec(),
        };
        assert_eq!(q.handle(&asker, join), Reply::Joined);
        let epochs = Wire::Epochs {
            keys: vec![other, kept],
        };
        assert_eq!(q.handle(&asker, epochs), Reply::Epochs(vec![None, Some(0)]));
        let too_many = Wire::Epochs {
            keys: vec![kept; MAX_BATCH + 1],
        };
        assert!(matches!(q.handle(&asker, too_many), Reply::Refused(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_peer_stands_in_a_leases_line_only_as_itself() {
        let (me, asker, other) = (peer(), peer(), peer());
        let dir = dir("line");
        let q = Quorum::open(me, &dir, [(Kind::Lease, accept_all as Validator)].into()).unwrap();
        let key = Key::of_content(b"lease");
        let join = Wire::Join {
            kind: Kind::Lease,
            key,
            peers: vec![me],
            timing: Timing::DEFAULT,
            payload: b"name".to_vec(),
        };
        assert_eq!(q.handle(&asker, join), Reply::Joined);
        let as_other = Wire::Line {
            epoch: 0,
            key,
            request: LineRequest::Wait {
                peer: key_of_peer(&other).unwrap(),
                ticket: 0,
            },
        };
        assert!(matches!(q.handle(&asker, as_other), Reply::Refused(_)));
        let leave_other = Wire::Line {
            epoch: 0,
            key,
            request: LineRequest::Leave {
                peer: key_of_peer(&other).unwrap(),
            },
        };
        assert!(matches!(q.handle(&asker, leave_other), Reply::Refused(_)));
        let as_itself = Wire::Line {
            epoch: 0,
            key,
            request: LineRequest::Wait {
                peer: key_of_peer(&asker).unwrap(),
                ticket: 1,
            },
        };
        assert!(matches!(
            q.handle(&asker, as_itself),
            Reply::Line(LineAnswer::Place { ahead: 0, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_leases_set_is_moved_only_by_its_members_and_a_set_moved_on_is_forgotten_after_a_day() {
        use shoal_resources::rehome::{Ballot, Next, RehomeAnswer, RehomeRequest};
        let (me, m2, m3, stranger) = (peer(), peer(), peer(), peer());
        let dir = dir("rehome");
        let q = Quorum::open(me, &dir, [(Kind::Lease, accept_all as Validator)].into()).unwrap();
        let key = Key::of_content(b"moving lease");
        let join = Wire::Join {
            kind: Kind::Lease,
            key,
            peers: vec![me, m2, m3],
            timing: Timing::DEFAULT,
            payload: b"name".to_vec(),
        };
        assert_eq!(q.handle(&m2, join), Reply::Joined);
        let rehome = |request| Wire::Rehome {
            key,
            request,
            timing: Timing::DEFAULT,
            payload: b"name".to_vec(),
        };
        let ballot = Ballot {
            round: 1,
            by: key_of_peer(&m2).unwrap(),
        };
        let seal = RehomeRequest::Seal { epoch: 0, ballot };
        assert!(matches!(q.handle(&stranger, rehome(seal.clone())), Reply::Refused(_)));
        assert!(matches!(
            q.handle(&m2, rehome(seal)),
            Reply::Rehome(RehomeAnswer::Promise { .. })
        ));
        // The next set leaves this peer out.
        let next_peers = vec![m2, m3, stranger];
        let next = Next {
            epoch: 1,
            members: members_of(&next_peers),
            addrs: addrs_of(&next_peers),
            grantee: None,
            fresh_for: Duration::ZERO,
            max_n: 0,
        };
        // A stranger may not install a set over the one kept here.
        let install = RehomeRequest::Install(Next {
            members: members_of(&[me, stranger]),
            addrs: addrs_of(&[me, stranger]),
            ..next.clone()
        });
        assert!(matches!(q.handle(&stranger, rehome(install)), Reply::Refused(_)));
        let propose = RehomeRequest::Propose {
            epoch: 0,
            ballot,
            next: next.clone(),
        };
        let unreachable = RehomeRequest::Propose {
            epoch: 0,
            ballot,
            next: Next {
                addrs: Vec::new(),
                ..next.clone()
            },
        };
        assert!(matches!(q.handle(&m2, rehome(unreachable)), Reply::Refused(_)));
        assert_eq!(q.handle(&m2, rehome(propose)), Reply::Rehome(RehomeAnswer::Done));
        assert!(matches!(
            q.handle(&m2, rehome(RehomeRequest::Chosen(next.clone()))),
            Reply::Rehome(RehomeAnswer::Moved(_))
        ));
        // Askers of the old set are sent on; a day later it is forgotten.
        let read = Wire::Ask {
            key,
            request: Request::Read,
            epoch: 0,
        };
        assert!(matches!(
            q.handle(&m2, read),
            Reply::Answer(Answer::Refused(shoal_resources::quorum::Refusal::Moved(_)))
        ));
        assert_eq!(q.forget_finished(now() - KEEP_FINISHED), 0);
        assert_eq!(q.forget_finished(now() + Duration::from_secs(1)), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_members_state_survives_a_restart_and_its_grantee_is_fresh_again() {
        let (me, other, from) = (peer(), peer(), peer());
        let dir = dir("restart");
        let key = Key::of_content(b"job");
        let timing = Timing::DEFAULT;
        let join = Wire::Join {
            kind: Kind::Job,
            key,
            peers: vec![me, other],
            timing,
            payload: b"spec".to_vec(),
        };
        let q = quorum(me, &dir);
        assert_eq!(q.handle(&from, join.clone()), Reply::Joined);
        assert_eq!(q.handle(&from, join), Reply::Joined, "joining twice is joining");
        let grantee = Grantee {
            peer: Key::of_content(b"executor"),
            n: 1,
        };
        let change = Wire::Ask {
            epoch: 0,
            key,
            request: Request::Change(grantee),
        };
        assert_eq!(q.handle(&from, change), Reply::Answer(Answer::Ok));
        drop(q);
        let again = quorum(me, &dir);
        let entry = again.entry(&key).expect("kept on disk");
        assert_eq!(entry.payload, b"spec");
        let view = entry.acceptor.view(now());
        assert_eq!(view.grantee, Some(grantee));
        assert!(!view.lapsed, "fresh again after the restart");
        assert!(view.fresh_for > Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_grantee_itself_renews_saves_or_commits() {
        let (me, from) = (peer(), peer());
        let executor = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        let dir = dir("forged");
        let q = quorum(me, &dir);
        let key = Key::of_content(b"job");
        let join = Wire::Join {
            kind: Kind::Job,
            key,
            peers: vec![me],
            timing: Timing::DEFAULT,
            payload: vec![],
        };
        assert_eq!(q.handle(&from, join), Reply::Joined);
        let grantee = Grantee {
            peer: key_of_peer(&executor).unwrap(),
            n: 1,
        };
        let change = Wire::Ask {
            epoch: 0,
            key,
            request: Request::Change(grantee),
        };
        assert_eq!(q.handle(&from, change), Reply::Answer(Answer::Ok));
        let commit = Wire::Ask {
            epoch: 0,
            key,
            request: Request::Commit {
                by: grantee,
                result: b"forged".to_vec(),
            },
        };
        assert!(
            matches!(q.handle(&from, commit.clone()), Reply::Refused(_)),
            "another peer"
        );
        assert_eq!(q.entry(&key).unwrap().acceptor.view(now()).result, None);
        assert_eq!(
            q.handle(&executor, commit),
            Reply::Answer(Answer::Ok),
            "the grantee itself"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_members_the_owner_or_the_grantee_change_the_grantee() {
        let (me, member, owner, executor, stranger) = (peer(), peer(), peer(), peer(), peer());
        let dir = dir("change");
        let q = quorum(me, &dir);
        let key = Key::of_content(b"job");
        let join = Wire::Join {
            kind: Kind::Job,
            key,
            peers: vec![me, member],
            timing: Timing::DEFAULT,
            payload: vec![],
        };
        assert_eq!(q.handle(&owner, join), Reply::Joined);
        let grantee = |to: &PeerId, n| Grantee {
            peer: key_of_peer(to).unwrap(),
            n,
        };
        let change = |to: &PeerId, n| Wire::Ask {
            epoch: 0,
            key,
            request: Request::Change(grantee(to, n)),
        };
        let release = |by: &PeerId, n| Wire::Ask {
            epoch: 0,
            key,
            request: Request::Release {
                by: grantee(by, n),
                why: shoal_resources::quorum::LetGo::Moved,
                newer: None,
            },
        };
        let refused = |r: Reply| matches!(r, Reply::Refused(_));
        // A stranger would make itself the grantee (and could then commit
        // a result of its own).
        assert!(refused(q.handle(&stranger, change(&stranger, 1))));
        assert_eq!(q.entry(&key).unwrap().acceptor.view(now()).grantee, None);
        // A member (a supervisor) places the job.
        assert_eq!(q.handle(&member, change(&executor, 1)), Reply::Answer(Answer::Ok));
        // Its executor lets go and moves it to another peer.
        assert_eq!(q.handle(&executor, release(&executor, 1)), Reply::Answer(Answer::Ok));
        assert!(refused(q.handle(&stranger, change(&stranger, 2))));
        assert_eq!(q.handle(&executor, change(&member, 2)), Reply::Answer(Answer::Ok));
        // The owner (its submitter) places it after that one let go.
        assert_eq!(q.handle(&member, release(&member, 2)), Reply::Answer(Answer::Ok));
        assert!(refused(q.handle(&stranger, change(&stranger, 3))));
        assert_eq!(q.handle(&owner, change(&executor, 3)), Reply::Answer(Answer::Ok));
        assert_eq!(
            q.entry(&key).unwrap().acceptor.view(now()).grantee,
            Some(grantee(&executor, 3))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A job joined by `owner` under `name`; [`finish`] commits its result.
    fn job_join(me: PeerId, name: &[u8]) -> Wire {
        Wire::Join {
            kind: Kind::Job,
            key: Key::of_content(name),
            peers: vec![me],
            timing: Timing::DEFAULT,
            payload: vec![],
        }
    }

    /// Places the job `name` (as its `owner`) on `executor` and commits
    /// its result.
    fn finish(q: &Quorum, owner: &PeerId, executor: &PeerId, name: &[u8]) {
        let (key, by) = (
            Key::of_content(name),
            Grantee {
                peer: key_of_peer(executor).unwrap(),
                n: 1,
            },
        );
        let change = Wire::Ask {
            epoch: 0,
            key,
            request: Request::Change(by),
        };
        assert_eq!(q.handle(owner, change), Reply::Answer(Answer::Ok));
        let commit = Wire::Ask {
            epoch: 0,
            key,
            request: Request::Commit {
                by,
                result: b"done".to_vec(),
            },
        };
        assert_eq!(q.handle(executor, commit), Reply::Answer(Answer::Ok));
    }

    #[test]
    fn a_finished_key_makes_room_when_full_and_is_forgotten_after_a_day() {
        let (me, owner, other, executor) = (peer(), peer(), peer(), peer());
        let dir = dir("forget");
        let mut q = quorum(me, &dir);
        q.max_keys = 2;
        q.recount_every = Duration::ZERO;
        let file = |name: &[u8]| dir.join("quorum").join(Key::of_content(name).to_string());
        assert_eq!(q.handle(&owner, job_join(me, b"a")), Reply::Joined);
        assert_eq!(q.handle(&other, job_join(me, b"b")), Reply::Joined);
        finish(&q, &owner, &executor, b"a");
        // Full: the finished key makes room for a new one.
        assert_eq!(q.handle(&owner, job_join(me, b"c")), Reply::Joined);
        assert!(q.entry(&Key::of_content(b"a")).is_none() && !file(b"a").exists());
        // Full of unfinished keys: refused.
        assert!(matches!(q.handle(&executor, job_join(me, b"d")), Reply::Refused(_)));
        // A finished key is kept for a day, then forgotten.
        finish(&q, &other, &executor, b"b");
        assert_eq!(q.forget_finished(now() - KEEP_FINISHED), 0);
        assert_eq!(q.forget_finished(now() + Duration::from_secs(1)), 1);
        assert!(q.entry(&Key::of_content(b"b")).is_none() && !file(b"b").exists());
        assert!(q.entry(&Key::of_content(b"c")).is_some() && file(b"c").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_peer_fills_at_most_half_of_a_members_room_with_unfinished_keys() {
        let (me, greedy, other, executor) = (peer(), peer(), peer(), peer());
        let dir = dir("share");
        let mut q = quorum(me, &dir);
        q.max_keys = 4;
        q.recount_every = Duration::ZERO;
        assert_eq!(q.handle(&greedy, job_join(me, b"1")), Reply::Joined);
        assert_eq!(q.handle(&greedy, job_join(me, b"2")), Reply::Joined);
        // Half the room is its own unfinished keys: refused, and said why.
        match q.handle(&greedy, job_join(me, b"3")) {
            Reply::Refused(why) => assert!(why.contains("at most half"), "{why}"),
            other => panic!("joined a third: {other:?}"),
        }
        // Another peer still finds room.
        assert_eq!(q.handle(&other, job_join(me, b"4")), Reply::Joined);
        // A key it brought already joins again.
        assert_eq!(q.handle(&greedy, job_join(me, b"2")), Reply::Joined);
        // One of its keys finished: it may bring another.
        finish(&q, &greedy, &executor, b"1");
        assert_eq!(q.handle(&greedy, job_join(me, b"3")), Reply::Joined);
        // Between two counts, each key taken counts at once.
        let dir2 = dir.join("cached");
        let mut q = quorum(me, &dir2);
        q.max_keys = 12;
        q.recount_every = Duration::from_secs(3600);
        for name in [b"o1", b"o2", b"o3"] {
            assert_eq!(q.handle(&other, job_join(me, name)), Reply::Joined);
        }
        // Counted once at the fourth (half full), then kept up by each.
        for name in [b"g1", b"g2", b"g3", b"g4", b"g5", b"g6"] {
            assert_eq!(q.handle(&greedy, job_join(me, name)), Reply::Joined);
        }
        assert!(matches!(q.handle(&greedy, job_join(me, b"g7")), Reply::Refused(_)));
        // The same holds for named leases, which never finish, and for a
        // set installed here by a mover.
        let leases = dir.join("leases");
        let mut q = Quorum::open(me, &leases, [(Kind::Lease, accept_all as Validator)].into()).unwrap();
        q.max_keys = 4;
        q.recount_every = Duration::ZERO;
        let lease = |name: &str| Wire::Join {
            kind: Kind::Lease,
            key: Key::of_content(name.as_bytes()),
            peers: vec![me],
            timing: Timing::DEFAULT,
            payload: name.as_bytes().to_vec(),
        };
        assert_eq!(q.handle(&greedy, lease("a")), Reply::Joined);
        assert_eq!(q.handle(&greedy, lease("b")), Reply::Joined);
        assert!(matches!(q.handle(&greedy, lease("c")), Reply::Refused(_)));
        let next = Next {
            epoch: 1,
            members: members_of(&[me]),
            addrs: addrs_of(&[me]),
            grantee: None,
            fresh_for: Duration::ZERO,
            max_n: 0,
        };
        let install = Wire::Rehome {
            key: Key::of_content(b"c"),
            request: RehomeRequest::Install(next),
            timing: Timing::DEFAULT,
            payload: b"c".to_vec(),
        };
        assert!(matches!(q.handle(&greedy, install.clone()), Reply::Refused(_)));
        assert!(!matches!(q.handle(&other, install), Reply::Refused(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_join_is_refused_unless_this_peer_is_a_member_and_the_set_and_payload_are_sane() {
        let (me, other, from) = (peer(), peer(), peer());
        let dir = dir("refuse");
        let q = quorum(me, &dir);
        let key = Key::of_content(b"job");
        let join = |peers: Vec<PeerId>, payload: Vec<u8>, timing| Wire::Join {
            kind: Kind::Job,
            key,
            peers,
            timing,
            payload,
        };
        let refused = |r: Reply| matches!(r, Reply::Refused(_));
        assert!(refused(q.handle(&from, join(vec![other], vec![], Timing::DEFAULT))));
        assert!(refused(q.handle(&from, join(vec![me; 10], vec![], Timing::DEFAULT))));
        assert!(refused(
            q.handle(&from, join(vec![me], vec![0; MAX_PAYLOAD + 1], Timing::DEFAULT))
        ));
        let backwards = Timing {
            term: Duration::from_secs(1),
            margin: Duration::from_secs(2),
        };
        assert!(refused(q.handle(&from, join(vec![me], vec![], backwards))));
        assert_eq!(q.handle(&from, join(vec![me], vec![1], Timing::DEFAULT)), Reply::Joined);
        assert!(
            refused(q.handle(&from, join(vec![me], vec![2], Timing::DEFAULT))),
            "another payload for a key that joined"
        );
        assert_eq!(
            q.handle(
                &from,
                Wire::Ask {
                    epoch: 0,
                    key: Key::of_content(b"other"),
                    request: Request::Read
                }
            ),
            Reply::Unknown
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
