//! The one framing of shoal's streams: a 4-byte big-endian length, then
//! that many bytes (a CBOR encoding). Every reader names its cap, and a
//! length above it is refused before anything more is read.
//!
//! Overlay messages travel in these frames on a request-response stream
//! ([`FrameCodec`], capped at the overlay's `MAX_MESSAGE_BYTES`); blob
//! requests ([`crate::files`]) and hand-off offers ([`crate::handoff`]) use
//! the same frames with caps of their own.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use shoal_overlay::wire::MAX_MESSAGE_BYTES;

/// The protocol overlay messages travel under.
pub const OVERLAY_PROTOCOL: StreamProtocol = StreamProtocol::new(shoal_overlay::wire::PROTOCOL);

/// Length-prefixed frames of at most `MAX_MESSAGE_BYTES`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

/// Reads one overlay frame: its length, checked against the overlay's
/// cap, then its bytes.
pub(crate) async fn read_frame<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Vec<u8>> {
    read_capped(io, MAX_MESSAGE_BYTES).await
}

/// Reads one frame of at most `cap` bytes.
pub(crate) async fn read_capped<T: AsyncRead + Unpin>(io: &mut T, cap: usize) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {cap}-byte cap"),
        ));
    }
    let mut frame = vec![0u8; len];
    io.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Reads one frame of at most `cap` bytes and decodes its CBOR.
pub(crate) async fn read_cbor<V: serde::de::DeserializeOwned, T: AsyncRead + Unpin>(
    io: &mut T,
    cap: usize,
) -> io::Result<V> {
    let frame = read_capped(io, cap).await?;
    ciborium::from_reader(frame.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// `value` as one frame: its CBOR, length first.
pub(crate) fn encode_cbor<V: serde::Serialize>(value: &V) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; 4];
    ciborium::into_writer(value, &mut out).map_err(io::Error::other)?;
    let len = u32::try_from(out.len() - 4).map_err(|_| io::Error::other("a frame over 4 GiB"))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Writes one frame and closes the stream's sending side.
pub(crate) async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, frame: Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .ok()
        .filter(|len| *len as usize <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame exceeds the message cap"))?;
    // One write: the header and the frame go out in one muxer frame.
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&frame);
    io.write_all(&out).await?;
    io.close().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, request).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_lengths_are_refused() {
        futures::executor::block_on(async {
            let mut buffer = futures::io::Cursor::new(Vec::new());
            write_frame(&mut buffer, b"hello".to_vec()).await.unwrap();
            let mut reader = futures::io::Cursor::new(buffer.into_inner());
            assert_eq!(read_frame(&mut reader).await.unwrap(), b"hello");
            let mut huge = futures::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
            assert_eq!(
                read_frame(&mut huge).await.unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
            let mut short = futures::io::Cursor::new(vec![0, 0, 0, 9, 1, 2]);
            assert!(read_frame(&mut short).await.is_err());
        });
    }

    #[test]
    fn cbor_frames_round_trip_within_their_cap_only() {
        futures::executor::block_on(async {
            let value = (7u64, "seven".to_string());
            let bytes = encode_cbor(&value).unwrap();
            let len = bytes.len() - 4;
            assert_eq!(bytes[..4], (len as u32).to_be_bytes());
            let read: (u64, String) = read_cbor(&mut futures::io::Cursor::new(&bytes), len).await.unwrap();
            assert_eq!(read, value);
            let over = read_cbor::<(u64, String), _>(&mut futures::io::Cursor::new(&bytes), len - 1).await;
            assert_eq!(over.unwrap_err().kind(), io::ErrorKind::InvalidData);
            // A frame whose bytes are not the CBOR asked for.
            let mut other = futures::io::Cursor::new(encode_cbor(&"text").unwrap());
            let wrong = read_cbor::<(u64, String), _>(&mut other, 100).await;
            assert_eq!(wrong.unwrap_err().kind(), io::ErrorKind::InvalidData);
        });
    }
}
