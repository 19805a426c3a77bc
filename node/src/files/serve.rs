//! Serving blob ranges: one task per incoming stream answers its requests
//! one after another, encoding each run (parent hashes and data) on a
//! blocking thread that hands the encoding over in chunks as it goes, so
//! reading and encoding overlap sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use shoal_overlay::Key;
use shoal_resources::fetch::MAX_SPAN;
use shoal_resources::store::{BlobStore, StoreError};

use super::protocol::{
    BAD_REQUEST, CHUNK_BYTES, CHUNK_FAILED, FAILED, FRAME_HEADER, MAX_REQUEST_BYTES, NOT_FOUND, OK, decode_request,
};

/// Blobs found unservable while serving, waiting to be un-announced, at
/// most (more are caught by the pin duties' periodic check).
const CHANGED_QUEUE: usize = 64;

/// Serves blob ranges from `store` to whoever opens a stream. A blob served
/// in place whose file no longer matches what was shared is marked changed
/// by the store and no longer announced.
pub(crate) async fn serve(
    node: crate::client::WeakClient,
    store: BlobStore,
    served: Arc<AtomicU64>,
    mut incoming: crate::streams::IncomingStreams,
) {
    let (changed, mut found) = tokio::sync::mpsc::channel::<Key>(CHANGED_QUEUE);
    tokio::spawn(async move {
        while let Some(id) = found.recv().await {
            let Some(client) = node.upgrade() else { return };
            if let Err(e) = client
                .forget_provided(&[id], "its in-place file no longer matches what was shared")
                .await
            {
                tracing::warn!("cannot stop announcing {id}: {e}");
            }
        }
    });
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(serve_stream(
            store.clone(),
            changed.clone(),
            served.clone(),
            peer,
            stream,
        ));
    }
}

async fn serve_stream(
    store: BlobStore,
    changed: tokio::sync::mpsc::Sender<Key>,
    served: Arc<AtomicU64>,
    peer: PeerId,
    mut stream: Stream,
) {
    loop {
        let frame = match crate::codec::read_capped(&mut stream, MAX_REQUEST_BYTES).await {
            Ok(frame) => frame,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::debug!("blob request from {peer} refused: {e}");
                return;
            }
            Err(_) => return, // the downloader is done
        };
        let request = decode_request(&frame);
        let bad = request.is_none();
        // The encoder runs on a blocking thread and hands over the encoding
        // in chunks as it goes, so reading and encoding overlap sending.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(4);
        match request {
            Some((id, groups)) => drop(tokio::task::spawn_blocking({
                let (store, changed) = (store.clone(), changed.clone());
                move || answer(&store, id, groups, &tx, &changed)
            })),
            None => {
                let _ = tx.try_send(Piece::Head(BAD_REQUEST, 0));
                let _ = tx.try_send(Piece::Done);
                drop(tx);
            }
        }
        while let Some(piece) = rx.recv().await {
            let written = match &piece {
                Piece::Head(status, size) => {
                    let mut head = [0u8; 9];
                    head[0] = *status;
                    head[1..].copy_from_slice(&size.to_be_bytes());
                    stream.write_all(&head).await
                }
                // Framed by the encoder: the chunk goes out as it is, with
                // no copy into a send buffer.
                Piece::Chunk(framed) => {
                    let sent = stream.write_all(framed).await;
                    served.fetch_add((framed.len() - FRAME_HEADER) as u64, Ordering::Relaxed);
                    sent
                }
                Piece::Done => stream.write_all(&0u32.to_be_bytes()).await,
                Piece::Failed => stream.write_all(&CHUNK_FAILED.to_be_bytes()).await,
            };
            if written.is_err() {
                return;
            }
        }
        // The encoder is done: it ended with an empty chunk or a failure
        // mark.
        if stream.flush().await.is_err() || bad {
            return;
        }
    }
}

enum Piece {
    /// The response's status and the blob's size.
    Head(u8, u64),
    /// A chunk of the encoding, framed: its length, then its bytes.
    Chunk(Vec<u8>),
    /// The empty chunk that ends a response.
    Done,
    /// The mark of a response that failed after it started.
    Failed,
}

/// A `Write` that hands the encoding over in framed chunks: the room for
/// a chunk's length comes first and is filled in when the chunk is full.
struct ChunkWriter<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Piece>,
    chunk: Vec<u8>,
}

fn new_chunk() -> Vec<u8> {
    let mut chunk = Vec::with_capacity(FRAME_HEADER + CHUNK_BYTES);
    chunk.extend_from_slice(&[0; FRAME_HEADER]);
    chunk
}

impl std::io::Write for ChunkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = FRAME_HEADER + CHUNK_BYTES - self.chunk.len();
        let n = buf.len().min(room);
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == FRAME_HEADER + CHUNK_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.chunk.len() > FRAME_HEADER {
            let mut chunk = std::mem::replace(&mut self.chunk, new_chunk());
            // At most CHUNK_BYTES: fits, and never reads as CHUNK_FAILED.
            let len = (chunk.len() - FRAME_HEADER) as u32;
            chunk[..FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
            self.tx
                .blocking_send(Piece::Chunk(chunk))
                .map_err(|_| std::io::Error::other("the stream closed"))?;
        }
        Ok(())
    }
}

/// Answers one request on a blocking thread: the header, the encoding in
/// chunks, then an empty chunk (done) or a failure mark. A blob served in
/// place whose file changed is not found; one found changed while it is
/// encoded goes on `changed`, to be un-announced.
fn answer(
    store: &BlobStore,
    id: Key,
    groups: std::ops::Range<u64>,
    tx: &tokio::sync::mpsc::Sender<Piece>,
    changed: &tokio::sync::mpsc::Sender<Key>,
) {
    let head = |status, size| {
        let _ = tx.blocking_send(Piece::Head(status, size));
        let _ = tx.blocking_send(Piece::Done);
    };
    let size = match store.size(&id) {
        Ok(Some(size)) => size,
        Ok(None) => return head(NOT_FOUND, 0),
        Err(_) => return head(FAILED, 0),
    };
    if store.changed_source(&id).is_some() {
        return head(NOT_FOUND, 0);
    }
    if groups.is_empty() {
        return head(OK, size);
    }
    if groups.end > shoal_resources::blob::group_count(size) || groups.end - groups.start > MAX_SPAN {
        return head(BAD_REQUEST, size);
    }
    if tx.blocking_send(Piece::Head(OK, size)).is_err() {
        return;
    }
    let mut writer = ChunkWriter { tx, chunk: new_chunk() };
    match store
        .encode(&id, &groups, &mut writer)
        .and_then(|()| Ok(std::io::Write::flush(&mut writer)?))
    {
        Ok(()) => {
            store.touch(&id, std::time::SystemTime::now());
            let _ = tx.blocking_send(Piece::Done);
        }
        Err(e) => {
            if let StoreError::SourceChanged { path, .. } = &e {
                tracing::warn!(
                    "{id}: {} no longer matches what was shared (its bytes were edited): no longer serving or announcing it",
                    path.display()
                );
                let _ = changed.try_send(id);
            } else {
                tracing::warn!("cannot serve {id}: {e}");
            }
            // A chunk of length CHUNK_FAILED: the receiver drops this run.
            let _ = tx.blocking_send(Piece::Failed);
        }
    }
}
