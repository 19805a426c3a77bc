//! Hand-off: a home member that leaves gracefully first makes sure the
//! home it leaves behind holds its pinned copies.
//!
//! Before the leaving node hands its records on and stops, it looks up each
//! blob it keeps for a home, finds the members that will make up the home
//! without it, and offers the blob to every one of them that does not
//! provide it yet, over `/shoal/handoff/1`: the offer is a length-prefixed
//! CBOR `{id, size}`; the receiver checks that a pin of that size exists
//! (a `get_value` at the blob's home), fetches the blob the usual way
//! (verified, from every provider, the leaving node among them), marks it
//! pinned, and answers one status byte. The leaving node waits for the
//! answers, bounded by a deadline, then leaves.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::pin::{self, Pin};

use crate::client::{Client, WeakClient};

/// The hand-off protocol.
pub const HANDOFF_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/handoff/1");

/// The receiver holds the blob now.
const TAKEN: u8 = 0;
/// No pin of that size exists: nothing to take.
const NO_PIN: u8 = 1;
/// The fetch failed.
const FAILED: u8 = 2;
/// Too many hand-offs are being received at once.
const BUSY: u8 = 3;

/// Largest offer frame.
const MAX_OFFER_BYTES: usize = 256;
/// Offers received and fetched at once.
const MAX_RECEIVING: usize = 4;

#[derive(Serialize, Deserialize)]
struct Offer {
    #[serde(with = "serde_bytes")]
    id: Vec<u8>,
    size: u64,
}

/// What a hand-off achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandedOff {
    /// Copies a new home member took.
    pub taken: usize,
    /// Offers refused, failed or unanswered before the deadline.
    pub failed: usize,
}

/// Offers every pinned copy this node keeps as a home member to the members
/// of the home it leaves behind that lack it; waits at most `deadline`.
pub(crate) async fn hand_off(client: &Client, deadline: Duration) -> HandedOff {
    let work = async {
        let mut done = HandedOff::default();
        let Ok(pins) = client.pins().list().await else {
            return done;
        };
        for view in pins {
            let kept = client.blob_store().is_pinned(&view.id) && client.blob_store().contains(&view.id);
            if !kept || !view.member || view.pin.replicas == 0 {
                continue;
            }
            let Ok(lookup) = client.find_node(view.id).await else {
                done.failed += 1;
                continue;
            };
            let home: Vec<PeerId> = lookup
                .peers
                .iter()
                .map(|p| p.addr.peer)
                .filter(|p| *p != client.peer_id())
                .take(usize::from(view.pin.replicas))
                .collect();
            let providers: Vec<PeerId> = match client.get_providers(view.id).await {
                Ok(found) => found.into_iter().map(|p| p.addr.peer).collect(),
                Err(_) => Vec::new(),
            };
            let targets = pin::handoff_targets(&home, |p| providers.contains(&p));
            let offers = targets.into_iter().map(|peer| offer(client, peer, view.id, view.pin));
            for status in futures::future::join_all(offers).await {
                match status {
                    Ok(TAKEN) => done.taken += 1,
                    _ => done.failed += 1,
                }
            }
        }
        done
    };
    tokio::time::timeout(deadline, work).await.unwrap_or_else(|_| {
        tracing::warn!("handing pinned copies on took over {deadline:?}; leaving anyway");
        HandedOff::default()
    })
}

async fn offer(client: &Client, peer: PeerId, id: Key, pin: Pin) -> std::io::Result<u8> {
    let control = client.stream_control();
    let mut stream = control
        .open_stream(peer, HANDOFF_PROTOCOL)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&encode_offer(id, pin.size)?).await?;
    stream.flush().await?;
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).await?;
    tracing::info!("offered {id} to {peer}: {}", describe(status[0]));
    Ok(status[0])
}

fn describe(status: u8) -> &'static str {
    match status {
        TAKEN => "taken",
        NO_PIN => "refused (no such pin)",
        FAILED => "its fetch failed",
        BUSY => "busy",
        _ => "unknown answer",
    }
}

/// Receives hand-offs for as long as the node runs.
pub(crate) async fn accept(node: WeakClient, mut incoming: crate::streams::IncomingStreams) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_RECEIVING));
    while let Some((peer, stream)) = incoming.next().await {
        let Some(client) = node.upgrade() else { return };
        let permit = slots.clone().try_acquire_owned().ok();
        tokio::spawn(async move {
            let free = permit.is_some();
            let _permit = permit; // held until the offer is answered
            if let Err(e) = receive(&client, peer, stream, free).await {
                tracing::debug!("hand-off from {peer}: {e}");
            }
        });
    }
}

/// An offer as it goes on the wire: one frame ([`crate::codec`]).
pub(crate) fn encode_offer(id: Key, size: u64) -> std::io::Result<Vec<u8>> {
    crate::codec::encode_cbor(&Offer {
        id: id.to_bytes().to_vec(),
        size,
    })
}

/// Reads one offer from `stream`: the blob's id and size.
pub(crate) async fn read_offer<R: AsyncRead + Unpin>(stream: &mut R) -> std::io::Result<(Key, u64)> {
    let offer: Offer = crate::codec::read_cbor(stream, MAX_OFFER_BYTES).await?;
    let id: [u8; 32] = offer
        .id
        .as_slice()
        .try_into()
        .map_err(|_| std::io::Error::other("an offer with a malformed id"))?;
    Ok((Key::from_bytes(id), offer.size))
}

async fn receive(client: &Client, peer: PeerId, mut stream: Stream, free: bool) -> std::io::Result<()> {
    let (id, size) = read_offer(&mut stream).await?;
    let status = if !free {
        BUSY
    } else {
        take(client, peer, id, size).await
    };
    stream.write_all(&[status]).await?;
    stream.close().await
}

/// Checks the pin an offer names and fetches the blob.
async fn take(client: &Client, peer: PeerId, id: Key, size: u64) -> u8 {
    let status = fetch_offered(client, peer, id, size).await;
    if status == TAKEN
        && let Some(from) = crate::addr::key_of_peer(&peer)
    {
        // The pin duties leave `peer` out of this blob's home for a while:
        // it answers lookups until its other hand-offs end.
        let mut handed = client.handed_over.lock().unwrap_or_else(|p| p.into_inner());
        if handed.len() >= crate::client::MAX_HANDED_OVER {
            handed.pop_front();
        }
        handed.push_back((id, from));
    }
    status
}

/// Fetches the blob an offer names, if a pin of that size exists.
async fn fetch_offered(client: &Client, peer: PeerId, id: Key, size: u64) -> u8 {
    let store = client.blob_store();
    if store.contains(&id) {
        return match store.set_pinned(&id, true) {
            Ok(()) => TAKEN,
            Err(_) => FAILED,
        };
    }
    let pin = match client.get_value(id).await {
        Ok(Some(record)) => Pin::decode(&record.value),
        _ => None,
    };
    if !pin.is_some_and(|p| p.replicas > 0 && p.size == size) {
        tracing::info!("{peer} offered {id}, which is not pinned at that size: refused");
        return NO_PIN;
    }
    tracing::info!("{peer} hands {id} on to this peer before it leaves");
    let progress = Arc::new(crate::files::Progress::default());
    match client.files().download(id, None, progress, None).await {
        Ok(_) if store.set_pinned(&id, true).is_ok() => TAKEN,
        Ok(_) => FAILED,
        Err(e) => {
            tracing::warn!("cannot take {id} from {peer}: {e}");
            FAILED
        }
    }
}
