//! Pins on a node: the handle `client.pins()` (pin, unpin, the pin records
//! held here with this node's duty for each) and the driver of the pin
//! duties: a task that runs
//! [`PinDuties`] — the decisions the
//! simulator runs too — against the real overlay and blob store.
//!
//! At each round it gathers what the machine reads (the live pin records
//! held here from the driver task, which copies are held and marked from
//! the store, off the async threads) and carries out what the machine
//! asks: lookups, pin reads and fetches each in a task of their own whose
//! answer comes back on a channel; marks, releases and declines at once.
//! Between rounds it also keeps the store's announcements honest: after a
//! start it announces every blob kept from earlier runs, and every few
//! rounds it stops announcing blobs served in place whose file changed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use shoal_overlay::Key;
use shoal_resources::pin::{Declined, FetchOutcome, Pin, PinAction, PinDuties, PinDutiesConfig, PinState, Round};
use shoal_resources::store::StoreError;
use tokio::sync::mpsc;

use crate::client::{Client, DriverCommand, WeakClient, now};
use crate::error::{NodeError, PinError};
use crate::files::FetchError;

/// Every this many rounds, blobs served in place are checked for a changed
/// file (which is then no longer announced).
const CHANGED_CHECK_ROUNDS: u64 = 10;

/// Lookups (membership checks and pin reads) one round may start.
const MAX_PIN_LOOKUPS: usize = 32;

/// The longest wait between two tries of a failing pin fetch, in rounds
/// (20 × 30 s = 10 minutes by default).
const MAX_RETRY_ROUNDS: u64 = 20;

/// A pin record this node holds, and whether it is among the pinned blob's
/// `replicas` closest peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinView {
    /// The blob.
    pub id: Key,
    /// What the pin says.
    pub pin: Pin,
    /// Whether this node must keep a copy.
    pub member: bool,
    /// The peers that declined the blob (no room), as far as the records
    /// held here say: they are left out of its home.
    pub declined: Vec<Key>,
    /// Whether this node declines it.
    pub declining: bool,
}

/// The pins of a node: `client.pins()`.
#[derive(Clone, Copy, Debug)]
pub struct Pins<'a> {
    client: &'a Client,
}

impl Client {
    /// Pinning: pin, unpin, the pin records held here.
    pub fn pins(&self) -> Pins<'_> {
        Pins { client: self }
    }
}

impl Pins<'_> {
    /// The pin records this node holds, with its duty for each: whether it
    /// is among each blob's `replicas` closest (by its routing table).
    pub async fn list(self) -> Result<Vec<PinView>, NodeError> {
        self.client
            .on_core(|core, now| {
                let mut out = Vec::new();
                for record in core.record_store().value_records() {
                    if record.expires <= now {
                        continue;
                    }
                    let Some(pin) = Pin::decode(&record.value) else {
                        continue;
                    };
                    out.push(PinView {
                        id: record.key,
                        pin,
                        member: core.is_member_of(&record.key, usize::from(pin.replicas)),
                        declined: core.decliners(&record.key),
                        declining: core.declining().any(|k| *k == record.key),
                    });
                }
                out
            })
            .await
    }

    /// Pins blob `id`: its home (the `replicas` closest peers) keeps a copy
    /// each and repairs the count when members leave or crash. Returns how
    /// many home members stored the pin record.
    pub async fn pin(self, id: Key, replicas: u8) -> Result<usize, NodeError> {
        if usize::from(replicas) > self.client.replication || replicas == 0 {
            return Err(PinError::ReplicasOutOfRange {
                max: self.client.replication,
            }
            .into());
        }
        let size = match self.client.blobs.size(&id)? {
            Some(size) => size,
            None => {
                // The pin record carries the size: a proved one.
                let providers: Vec<PeerId> = self
                    .client
                    .get_providers(id)
                    .await?
                    .into_iter()
                    .map(|p| p.addr.peer)
                    .collect();
                if providers.is_empty() {
                    return Err(crate::files::FetchError::NoProvider(id).into());
                }
                crate::files::prove_size(&self.client.streams, id, None, &providers).await?
            }
        };
        self.put_pin(id, Pin { replicas, size }).await
    }

    /// Unpins blob `id` (only the peer that pinned it can).
    pub async fn unpin(self, id: Key) -> Result<usize, NodeError> {
        self.put_pin(id, Pin { replicas: 0, size: 0 }).await
    }

    async fn put_pin(self, id: Key, pin: Pin) -> Result<usize, NodeError> {
        let put = self.client.ask(|reply| DriverCommand::PutValue {
            key: id,
            value: pin.encode(),
            lifetime: Some(shoal_resources::pin::PIN_LIFETIME),
            reply,
        });
        match put.await {
            Ok(0) => {
                // The home refuses a record at a key another publisher
                // holds: say whose it is rather than that nobody answered.
                if let Ok(Some(record)) = self.client.get_value(id).await {
                    let publisher = Key::of_public_key(&record.publisher);
                    if publisher != self.client.key {
                        return Err(PinError::PinnedByAnother { id, publisher }.into());
                    }
                }
                Err(PinError::NotStored(id).into())
            }
            Ok(stored) => Ok(stored),
            Err(e) => Err(e),
        }
    }
}

/// An answer to an action the machine asked for.
enum Answer {
    NearestPeers {
        id: Key,
        found: Option<Vec<Key>>,
        declined: Vec<Key>,
    },
    Pin {
        id: Key,
        pin: Result<Option<Pin>, ()>,
    },
    Fetched {
        id: Key,
        outcome: FetchOutcome,
    },
}

/// Runs the pin duties of `node` every `every` until the node ends.
pub(crate) async fn run(node: WeakClient, every: Duration) {
    let Some(client) = node.upgrade() else { return };
    let config = PinDutiesConfig {
        every,
        max_lookups: MAX_PIN_LOOKUPS,
        max_retry_rounds: MAX_RETRY_ROUNDS,
        handoff_grace: client.handoff_deadline,
    };
    let mut duties = PinDuties::new(client.key(), config, now(), Duration::ZERO);
    drop(client);
    // Answers come from tasks this one started, at most one per lookup and
    // fetch under way, so the channel needs no bound of its own.
    let (answers, mut answered) = mpsc::unbounded_channel();
    let mut rounds = 0u64;
    loop {
        let wait = duties.poll_timeout().saturating_since(now());
        tokio::select! {
            () = tokio::time::sleep(wait) => {
                let Some(client) = node.upgrade() else { return };
                if rounds.is_multiple_of(CHANGED_CHECK_ROUNDS) {
                    keep_announcements_honest(&client, rounds == 0).await;
                }
                rounds += 1;
                let handed: Vec<(Key, Key)> =
                    client.handed_over.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
                for (id, from) in handed {
                    duties.handle_handoff(now(), id, from);
                }
                match gather(&client).await {
                    Some(round) => duties.handle_round(now(), round),
                    // Nothing is decided, but the next round waits its
                    // period (not a tight loop on an unreadable store).
                    None => duties.skip_round(now()),
                }
            }
            Some(answer) = answered.recv() => match answer {
                Answer::NearestPeers { id, found, declined } => duties.handle_lookup(now(), id, found, &declined),
                Answer::Pin { id, pin } => duties.handle_pin_record(now(), id, pin),
                Answer::Fetched { id, outcome } => duties.handle_fetch(now(), id, outcome),
            },
        }
        let Some(client) = node.upgrade() else { return };
        while let Some(action) = duties.poll_action() {
            act(&client, action, &answers).await;
        }
    }
}

/// What the machine reads for a round; `None` if the node is ending or the
/// store could not be read (nothing is decided this round).
async fn gather(client: &Client) -> Option<Round> {
    let pins = client.pins().list().await.ok()?;
    let declining = client.declining().await.ok()?;
    let (store, quota) = (client.blob_store().clone(), client.quota());
    // Whether each copy is there and servable reads its metadata (and stats
    // a file served in place), and a fit reads every blob's: off the async
    // threads.
    let round = tokio::task::spawn_blocking(move || {
        let pinned: BTreeSet<Key> = store.pinned().ok()?.into_iter().collect();
        let states: Vec<PinState> = pins
            .iter()
            .map(|p| PinState {
                id: p.id,
                pin: p.pin,
                member: p.member,
                held: store.contains(&p.id),
                marked: pinned.contains(&p.id),
                arriving: false,
            })
            .collect();
        let with_record: BTreeSet<Key> = pins.iter().map(|p| p.id).collect();
        let orphans = pinned.iter().filter(|id| !with_record.contains(id)).copied().collect();
        let declined = declining
            .into_iter()
            .map(|id| {
                let size = pins.iter().find(|p| p.id == id).map(|p| p.pin.size);
                let fits = match (size, quota) {
                    (Some(size), Some(quota)) => store
                        .could_fit(size, quota, std::time::SystemTime::now())
                        .unwrap_or(false),
                    _ => true,
                };
                Declined { id, fits }
            })
            .collect();
        Some(Round {
            pins: states,
            orphans,
            declined,
        })
    })
    .await;
    match round {
        Ok(Some(round)) => Some(round),
        Ok(None) => {
            tracing::warn!("cannot list the blobs kept for homes; pin duties skip a round");
            None
        }
        Err(e) => {
            tracing::warn!("pin duties skip a round: {e}");
            None
        }
    }
}

/// Carries out one action of the machine.
async fn act(client: &Client, action: PinAction, answers: &mpsc::UnboundedSender<Answer>) {
    let store = client.blob_store();
    match action {
        PinAction::Keep(id) => {
            if let Err(e) = store.set_pinned(&id, true) {
                tracing::warn!("cannot mark {id} pinned: {e}");
            }
        }
        PinAction::Release(id) => {
            tracing::info!("no longer keeping {id} for its home");
            if let Err(e) = store.set_pinned(&id, false) {
                tracing::warn!("cannot unmark {id}: {e}");
            }
        }
        PinAction::Decline(id) => {
            // Homes go by key; a full peer steps aside so that the next one
            // out keeps the copy.
            tracing::warn!("not keeping pinned {id}: no room under the quota; stepping aside from its home");
            if let Err(e) = client.decline(id).await {
                tracing::warn!("cannot decline {id}: {e}");
            }
        }
        PinAction::StopDeclining(id) => {
            if let Err(e) = client.stop_providing(id).await {
                tracing::warn!("cannot stop declining {id}: {e}");
            }
        }
        PinAction::LookUp(id) => {
            let (client, answers) = (client.clone(), answers.clone());
            tokio::spawn(async move {
                let found = client
                    .find_node(id)
                    .await
                    .ok()
                    .map(|lookup| lookup.peers.iter().map(|p| p.key).collect());
                let declined = client.decliners(id).await.unwrap_or_default();
                let _ = answers.send(Answer::NearestPeers { id, found, declined });
            });
        }
        PinAction::ReadPin(id) => {
            let (client, answers) = (client.clone(), answers.clone());
            tokio::spawn(async move {
                let pin = match client.get_value(id).await {
                    Ok(record) => Ok(record.and_then(|r| Pin::decode(&r.value))),
                    Err(_) => Err(()),
                };
                let _ = answers.send(Answer::Pin { id, pin });
            });
        }
        PinAction::Fetch { id, .. } => {
            tracing::info!("fetching {id} for its home: this peer is a member and holds no servable copy");
            let (client, answers) = (client.clone(), answers.clone());
            tokio::spawn(async move {
                let progress = Arc::new(crate::files::Progress::default());
                let outcome = match client.files().download(id, None, progress, None).await {
                    Ok(_) => FetchOutcome::Fetched,
                    Err(NodeError::Fetch(FetchError::Store(StoreError::QuotaExceeded { .. }))) => FetchOutcome::NoRoom,
                    Err(e) => {
                        tracing::warn!("cannot fetch pinned {id}: {e}");
                        FetchOutcome::Failed
                    }
                };
                let _ = answers.send(Answer::Fetched { id, outcome });
            });
        }
    }
}

/// Blobs served in place whose file changed cannot be served: no longer
/// announced (a `get` or a pin duty fetches them again). After a start
/// (`first`), announces every blob kept from earlier runs (the overlay
/// re-announces them hourly from then on).
async fn keep_announcements_honest(client: &Client, first: bool) {
    let store = client.blob_store().clone();
    let listed = tokio::task::spawn_blocking(move || {
        store.list().map(|held| {
            held.into_iter()
                .map(|e| {
                    let changed = e.in_place.is_some() && store.changed_source(&e.info.id).is_some();
                    (e.info.id, changed)
                })
                .collect::<Vec<_>>()
        })
    })
    .await;
    let held = match listed {
        Ok(Ok(held)) => held,
        Ok(Err(e)) => return tracing::warn!("cannot list the blobs held: {e}"),
        Err(e) => return tracing::warn!("cannot list the blobs held: {e}"),
    };
    let providing: BTreeSet<Key> = client.providing().await.unwrap_or_default().into_iter().collect();
    let changed: Vec<Key> = held
        .iter()
        .filter(|(id, changed)| *changed && providing.contains(id))
        .map(|(id, _)| *id)
        .collect();
    if let Err(e) = client
        .forget_provided(&changed, "its file changed since it was shared")
        .await
    {
        tracing::warn!("cannot stop announcing changed blobs: {e}");
    }
    if first {
        let ids: Vec<Key> = held.iter().filter(|(_, changed)| !changed).map(|(id, _)| *id).collect();
        if !ids.is_empty()
            && let Err(e) = client.provide(ids).await
        {
            tracing::warn!("cannot announce the blobs held: {e}");
        }
    }
}
