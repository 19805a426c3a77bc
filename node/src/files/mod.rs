//! Files over libp2p streams: serving verified ranges of blobs, and
//! downloading a blob from several providers at once.
//!
//! `/shoal/blob/1` is a stream protocol, not one request per chunk: the
//! downloader opens one stream per provider and sends requests on it one
//! after another; each names a run of 16 KiB groups and is answered with a
//! header and the bao encoding of that run (parent hashes and data), which
//! the downloader verifies group by group before writing it.
//!
//! The plan — which run to ask whom — is the sans-IO [`FetchPlan`](shoal_resources::FetchPlan) of
//! `shoal-resources`; this module only moves bytes.

//!
//! # Layout
//!
//! - [`protocol`]: the request and the response on the wire.
//! - `serve`: answering requests from the store.
//! - `fetch`: downloading from several providers, verified, resumable.
//! - this module: [`Files`], the handle `client.files()` returns — share
//!   (import and announce) and download (a blob, or a directory's files).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use libp2p::{Multiaddr, PeerId};
use shoal_overlay::Key;
use shoal_resources::store::{BlobStore, Import};
use shoal_resources::{BlobInfo, Failure, Ticket};

use crate::client::Client;
use crate::error::NodeError;

mod fetch;
pub mod protocol;
mod serve;

pub use crate::error::FetchError;
pub use fetch::STREAMS_PER_PROVIDER;
pub(crate) use fetch::{Fetched, fetch, prove_size};
pub use protocol::{BLOB_PROTOCOL, decode_request, read_response};
pub(crate) use serve::serve;

/// How a download is going; shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Blob size once known.
    pub size: AtomicU64,
    /// Bytes verified and written.
    pub verified: AtomicU64,
    /// Of those, bytes a saved partial download already held when this
    /// one started (it resumed from them).
    pub resumed: AtomicU64,
    /// Content bytes received from providers in answered runs, verified or
    /// not (a resumed download receives no more than the rest).
    pub fetched: AtomicU64,
    /// Providers still delivering.
    pub providers: AtomicUsize,
    /// Verified bytes each provider delivered, filled in at the end.
    pub delivered: Mutex<Vec<(PeerId, u64)>>,
    /// The providers dropped and why, filled in at the end.
    pub dropped: Mutex<Vec<(PeerId, Failure)>>,
}

/// Bytes of the regular files at or below `path` (0 if unreadable: the
/// import then says why).
fn tree_size(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// A listing (directory) blob larger than this is treated as a file.
const MAX_LISTING_BYTES: u64 = 64 * 1024 * 1024;

/// The files of a node: `client.files()`.
#[derive(Clone, Copy, Debug)]
pub struct Files<'a> {
    client: &'a Client,
}

impl Client {
    /// This node's files: share, download, the store.
    pub fn files(&self) -> Files<'_> {
        Files { client: self }
    }
}

impl<'a> Files<'a> {
    /// Blob bytes (data and hashes) this node has sent to other peers.
    pub fn served_bytes(&self) -> u64 {
        self.client.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The local blob store.
    pub fn store(&self) -> &'a BlobStore {
        &self.client.blobs
    }

    /// Imports the file at `path` into the blob store (or serves it in
    /// place) and announces this peer as its provider. Returns the blob and
    /// a ticket naming this peer's addresses.
    pub async fn share(self, path: std::path::PathBuf, how: Import) -> Result<(BlobInfo, Ticket), NodeError> {
        self.share_counted(path, how, Arc::default()).await
    }

    /// [`share`](Self::share), counting in `progress` the bytes to read
    /// (`size`) and read so far (`verified`).
    pub async fn share_counted(
        self,
        path: std::path::PathBuf,
        how: Import,
        progress: Arc<Progress>,
    ) -> Result<(BlobInfo, Ticket), NodeError> {
        let (info, ticket, _, _) = self.share_turn(path, how, progress, None, true).await?;
        Ok((info, ticket))
    }

    /// [`share_counted`](Self::share_counted), taking the files of a
    /// directory that `reuse` knows as they were (not hashed or copied
    /// again); returns `reuse` with this share's files, and leaves the
    /// announcement to the caller (a job's checkpoint is fetched from the
    /// executor by its home, which need not wait for the overlay).
    pub(crate) async fn share_unannounced(
        self,
        path: std::path::PathBuf,
        how: Import,
        progress: Arc<Progress>,
        reuse: Option<shoal_resources::store::Reuse>,
    ) -> Result<(BlobInfo, Ticket, Option<shoal_resources::store::Reuse>, Announce), NodeError> {
        self.share_turn(path, how, progress, reuse, false).await
    }

    /// A share in one of the node's import turns; with `announce`, this
    /// peer is announced as the provider before the turn ends (the
    /// returned [`Announce`] is then empty).
    async fn share_turn(
        self,
        path: std::path::PathBuf,
        how: Import,
        progress: Arc<Progress>,
        mut reuse: Option<shoal_resources::store::Reuse>,
        announce: bool,
    ) -> Result<(BlobInfo, Ticket, Option<shoal_resources::store::Reuse>, Announce), NodeError> {
        let _turn = self
            .client
            .imports
            .acquire()
            .await
            .map_err(|e| NodeError::Task(e.to_string()))?;
        let store = self.client.blobs.clone();
        let quota = self.client.quota;
        let (imported, evicted, reuse) = tokio::task::spawn_blocking(move || {
            use shoal_resources::store::{Room, StoreError};
            let now = std::time::SystemTime::now();
            let quota = quota.filter(|_| how == Import::Copy);
            let mut room = quota.map(|quota| Room::new(quota, now));
            let imported = (|| {
                let total = tree_size(&path);
                progress.size.store(total, std::sync::atomic::Ordering::Relaxed);
                if let Some(quota) = quota {
                    // What is larger than the whole quota is refused before
                    // a byte is copied. The rest is decided import by
                    // import once the id is known (a file the store holds
                    // already needs no room, whatever else is pinned).
                    let need = shoal_resources::store::room_for(total);
                    if need > quota {
                        let used = store.kept_bytes(now)?;
                        return Err(StoreError::QuotaExceeded { need, used, quota });
                    }
                }
                if path.is_dir() {
                    store.import_dir(&path, how, room.as_mut(), &progress.verified, reuse.as_mut())
                } else {
                    Ok((
                        store.import_within(&path, how, room.as_mut(), &progress.verified)?,
                        Vec::new(),
                    ))
                }
            })();
            // What was dropped is gone even if a later file of a directory
            // did not fit: it is no longer announced either way.
            let evicted = room.map(|r| r.dropped().to_vec()).unwrap_or_default();
            (imported, evicted, reuse)
        })
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?;
        self.client.forget_provided(&evicted, "dropped to make room").await?;
        let (info, files) = imported?;
        let mut provided: Vec<Key> = files.iter().map(|f| f.id).collect();
        provided.push(info.id);
        let addrs = self.client.listening().await?.iter().map(ToString::to_string).collect();
        let mut later = Announce {
            provided,
            evicted: Vec::new(),
        };
        if announce {
            self.client.provide(std::mem::take(&mut later.provided)).await?;
        }
        Ok((info, Ticket { blob: info, addrs }, reuse, later))
    }

    /// Downloads blob `id` (size and a first provider may come from a
    /// ticket) from every provider the overlay knows, several at once, into
    /// the blob store — or to `out`, which the store then serves in place —
    /// and provides it too.
    pub async fn download(
        self,
        id: Key,
        ticket: Option<Ticket>,
        progress: Arc<Progress>,
        out: Option<std::path::PathBuf>,
    ) -> Result<BlobInfo, NodeError> {
        let client = self.client;
        let (info, announce) = self
            .download_unannounced(id, ticket, progress, out, Sources::All)
            .await?;
        announce.run(client).await?;
        Ok(info)
    }

    /// [`download`](Self::download) without waiting for this peer to be
    /// announced as a provider of what it fetched: the caller runs the
    /// returned [`Announce`] (a job's executor does so after it started
    /// the job it fetched a checkpoint for). `sources` says whether the
    /// overlay is asked for more providers at once or only when the
    /// ticket's fail.
    pub(crate) async fn download_unannounced(
        self,
        id: Key,
        ticket: Option<Ticket>,
        progress: Arc<Progress>,
        out: Option<std::path::PathBuf>,
        sources: Sources,
    ) -> Result<(BlobInfo, Announce), NodeError> {
        // Until it is filed where it goes (see `Turns`).
        let _turn = self.client.fetching.turn(id).await;
        let mut providers: Vec<PeerId> = Vec::new();
        if let Some(ticket) = &ticket {
            let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
            for text in &ticket.addrs {
                if let Ok(addr) = text.parse::<Multiaddr>()
                    && let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last()
                {
                    by_peer.entry(peer).or_default().push(addr);
                }
            }
            for (peer, addrs) in by_peer {
                self.client.add_addresses(peer, addrs).await?;
                providers.push(peer);
            }
        }
        providers.retain(|p| *p != self.client.peer_id);
        // A ticket's size is a claim: the fetch proves the size first.
        let claimed = ticket.map(|t| t.blob.size).filter(|size| *size > 0);
        progress
            .size
            .store(claimed.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        let Fetched {
            info,
            mut evicted,
            downloaded,
        } = self
            .fetch_from(id, claimed, &providers, sources, progress.clone(), None)
            .await?;
        let mut provided = vec![info.id];
        // A directory's id names its listing: fetch every file it lists.
        let listing = if info.size <= MAX_LISTING_BYTES {
            let store = self.client.blobs.clone();
            let bytes = tokio::task::spawn_blocking(move || store.read_small(&id, MAX_LISTING_BYTES))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??;
            // A file that only looks like a listing (or a listing that does
            // not decode) is what its id names: those bytes, as a file.
            shoal_resources::collection::decode(&bytes).ok()
        } else {
            None
        };
        match (listing, out) {
            (None, None) => {}
            (None, Some(out)) => {
                let store = self.client.blobs.clone();
                // A copy held before this download (kept for a home, shared
                // here) stays the store's own: `-o` gets a copy of it.
                tokio::task::spawn_blocking(move || {
                    if downloaded {
                        store.move_out(&id, &out)
                    } else {
                        store.export(&id, &out)
                    }
                })
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??;
            }
            (Some(entries), out) => {
                use futures::StreamExt;
                // Sizes from the sharer's listing: summed without overflow;
                // each file's fetch checks its own against the disk.
                let total = entries.iter().fold(0u64, |sum, e| sum.saturating_add(e.blob.size));
                progress.size.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
                if let Some(out) = &out {
                    std::fs::create_dir_all(out).map_err(|e| NodeError::Store(e.into()))?;
                }
                // Several files at once: a snapshot's changed pages arrive
                // together, not one round trip after another.
                let mut files = futures::stream::iter(entries.into_iter().map(|entry| {
                    let (providers, progress) = (&providers, progress.clone());
                    let target = out.as_ref().map(|o| o.join(&entry.path));
                    async move {
                        // (A listing cannot name itself: its id hashes its entries.)
                        let _entry_turn = self.client.fetching.turn(entry.blob.id).await;
                        if let Some(parent) = target.as_ref().and_then(|t| t.parent()) {
                            std::fs::create_dir_all(parent).map_err(|e| NodeError::Store(e.into()))?;
                        }
                        self.fetch_from(
                            entry.blob.id,
                            Some(entry.blob.size),
                            providers,
                            sources,
                            progress,
                            target,
                        )
                        .await
                    }
                }))
                .buffer_unordered(FILES_AT_ONCE);
                while let Some(got) = files.next().await {
                    let got = got?;
                    provided.push(got.info.id);
                    evicted.extend(got.evicted);
                }
            }
        }
        Ok((info, Announce { provided, evicted }))
    }

    /// Fetches one blob from `first` and, as `sources` says, from the
    /// providers the overlay knows. A blob held here already needs no
    /// providers: its fetch only checks and files it.
    async fn fetch_from(
        self,
        id: Key,
        claimed: Option<u64>,
        first: &[PeerId],
        sources: Sources,
        progress: Arc<Progress>,
        target: Option<std::path::PathBuf>,
    ) -> Result<Fetched, NodeError> {
        let attempt = |providers: Vec<PeerId>, target: Option<std::path::PathBuf>| {
            fetch(
                self.client.blobs.clone(),
                self.client.streams.clone(),
                id,
                claimed,
                providers,
                progress.clone(),
                target,
                self.client.quota,
            )
        };
        let held = self.client.blobs.contains(&id);
        if held || (sources == Sources::TicketFirst && !first.is_empty()) {
            match attempt(first.to_vec(), target.clone()).await {
                Ok(fetched) => return Ok(fetched),
                Err(e) if held => return Err(e.into()),
                Err(e) => tracing::debug!("{id}: not from the ticket's providers ({e}); asking the overlay"),
            }
        }
        let mut from = first.to_vec();
        // The overlay may not be reachable; a ticket alone is enough.
        if let Ok(found) = self.client.get_providers(id).await {
            for p in found {
                if p.addr.peer != self.client.peer_id && !from.contains(&p.addr.peer) {
                    self.client.add_addresses(p.addr.peer, p.addr.addrs.clone()).await?;
                    from.push(p.addr.peer);
                }
            }
        }
        Ok(attempt(from, target).await?)
    }
}

impl Files<'_> {
    /// Fetches blob `id` from `sources` first (the overlay is asked only
    /// if they cannot send it) and announces this peer as its provider in
    /// the background: a checkpoint fetched from the peer that saved it,
    /// where waiting for the overlay would cost more than the transfer.
    pub(crate) async fn fetch_from_first(self, id: Key, sources: &[PeerId]) -> Result<(), NodeError> {
        let ticket = Ticket {
            blob: BlobInfo { id, size: 0 },
            addrs: sources.iter().map(|p| format!("/p2p/{p}")).collect(),
        };
        let (_, announce) = self
            .download_unannounced(id, Some(ticket), Arc::default(), None, Sources::TicketFirst)
            .await?;
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = announce.run(&client).await {
                tracing::debug!("{id} is held here but not announced: {e}");
            }
        });
        Ok(())
    }
}

/// Where a download looks for providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sources {
    /// The ticket's and every one the overlay knows, together (several
    /// providers at once are faster for a large file).
    All,
    /// The ticket's alone, the overlay asked only if they fail: a
    /// checkpoint fetched from the peer that just saved it, where a
    /// lookup per file costs more than the file.
    TicketFirst,
}

/// Files of a directory fetched at once.
const FILES_AT_ONCE: usize = 8;

/// What a download leaves to announce: the blobs this peer now provides
/// and those it dropped to make room.
#[must_use = "a download's blobs are provided once it is announced"]
pub(crate) struct Announce {
    provided: Vec<Key>,
    evicted: Vec<Key>,
}

impl Announce {
    /// Announces it.
    pub(crate) async fn run(self, client: &crate::client::Client) -> Result<(), NodeError> {
        client.forget_provided(&self.evicted, "dropped to make room").await?;
        client.provide(self.provided).await?;
        Ok(())
    }
}
