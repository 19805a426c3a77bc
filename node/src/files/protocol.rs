//! `/shoal/blob/1` on the wire: the request a downloader sends and the
//! response a provider streams back.
//!
//! ```text
//! request  : u32 length | CBOR {id: bytes(32), start: u64, end: u64}    (start = end = 0: size only)
//! response : u8 status | u64 size | (u32 n | n bytes)* | u32 0          (u32 0xffffffff: failed half way)
//! ```
//!
//! The request is one frame of [`crate::codec`]; the response's chunks are
//! framed the same way (a length, then bytes), ended by an empty chunk.

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::blob::GROUP_BYTES;
use shoal_resources::fetch::MAX_SPAN;

/// The stream protocol for blob ranges.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/blob/1");
/// Largest request frame accepted.
pub(crate) const MAX_REQUEST_BYTES: usize = 256;
/// Largest payload accepted: a full run plus its parent hashes (64 bytes
/// per group is far more than the tree needs).
pub(crate) const MAX_PAYLOAD_BYTES: u64 = MAX_SPAN * (GROUP_BYTES + 64) + 4096;
/// Bytes per chunk of a response.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;
/// Marks a response that failed after it started.
pub(crate) const CHUNK_FAILED: u32 = u32::MAX;

/// Length of a chunk's frame header: its length, 4 bytes big-endian.
pub(crate) const FRAME_HEADER: usize = 4;

pub(crate) const OK: u8 = 0;
pub(crate) const NOT_FOUND: u8 = 1;
pub(crate) const BAD_REQUEST: u8 = 2;
pub(crate) const FAILED: u8 = 3;

#[derive(Serialize, Deserialize)]
pub(crate) struct BlobRequest {
    #[serde(with = "serde_bytes")]
    pub(crate) id: Vec<u8>,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Decodes a blob request frame: the blob and the run of groups asked for
/// (an empty run asks for the size only). `None` for anything else.
pub fn decode_request(frame: &[u8]) -> Option<(Key, std::ops::Range<u64>)> {
    let request: BlobRequest = ciborium::from_reader(frame).ok()?;
    let id = <[u8; 32]>::try_from(request.id.as_slice()).ok()?;
    Some((Key::from_bytes(id), request.start..request.end))
}

/// Sends one request and reads its answer into `buffer` (reused across
/// runs); returns status, size and payload length.
pub(crate) async fn ask(
    stream: &mut Stream,
    id: &Key,
    groups: std::ops::Range<u64>,
    buffer: &mut Vec<u8>,
) -> std::io::Result<(u8, u64, usize)> {
    let request = BlobRequest {
        id: id.to_bytes().to_vec(),
        start: groups.start,
        end: groups.end,
    };
    stream.write_all(&crate::codec::encode_cbor(&request)?).await?;
    stream.flush().await?;
    read_response(stream, buffer).await
}

/// Reads one response to a blob request: status, the blob's size, and the
/// payload (into `buffer`, grown as needed and never past the cap); returns
/// status, size and payload length. Every length is checked before it is
/// trusted.
pub async fn read_response<R: futures::AsyncRead + Unpin>(
    stream: &mut R,
    buffer: &mut Vec<u8>,
) -> std::io::Result<(u8, u64, usize)> {
    let mut len = 0usize;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await?;
    let status = header[0];
    let size = u64::from_be_bytes(header[1..9].try_into().unwrap_or_default());
    loop {
        let mut chunk = [0u8; 4];
        stream.read_exact(&mut chunk).await?;
        let n = u32::from_be_bytes(chunk);
        if n == 0 {
            return Ok((status, size, len));
        }
        if n == CHUNK_FAILED {
            return Err(std::io::Error::other("the provider failed half way"));
        }
        let n = n as usize;
        if n > CHUNK_BYTES || (len + n) as u64 > MAX_PAYLOAD_BYTES {
            return Err(std::io::Error::other("the response is over the cap"));
        }
        if buffer.len() < len + n {
            buffer.resize(len + n, 0);
        }
        stream.read_exact(&mut buffer[len..len + n]).await?;
        len += n;
    }
}
