//! Frames and bodies on QUIC streams, shared by clients and nodes.
//!
//! One request or response is a frame (see [`strata_proto::wire`]) followed by the streamed
//! bodies its frame declares, in order. Reading checks the header before the body, and each
//! declared body length against a limit before allocating; each body is read straight into
//! the one buffer that will hold it. Writing sends the frame, then each body's buffers as they
//! are (no copy), in chunks so that QUIC flow control paces large values.

use bytes::{Bytes, BytesMut};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_proto::wire::{self, ErrorCode, FrameHeader, HEADER_LEN, WireError};

/// The UDP receive and send buffers asked for on every client and node socket. A batch answer
/// arrives from several nodes at once, megabytes in a few milliseconds; the Linux default of
/// 208 KiB drops part of such a burst, and each drop costs QUIC a retransmission and a halved
/// congestion window. The kernel caps the size at `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to `addr` for a QUIC endpoint, with [`SOCKET_BUFFER_BYTES`] of receive
/// and send buffer (or what the kernel allows).
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let options = socket2::SockRef::from(&socket);
    options.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
    options.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
    Ok(socket)
}

/// Packets a receiver may take in before it must acknowledge them (asked of the peer through
/// QUIC's ACK frequency extension). QUIC's default acknowledges every other packet: a 4 MiB
/// batch answer then costs the client some 1,400 ACK packets to send and the node as many to
/// process.
pub const ACK_ELICITING_THRESHOLD: u32 = 9;

/// The ACK frequency both sides ask of each other: see [`ACK_ELICITING_THRESHOLD`].
pub fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut config = quinn::AckFrequencyConfig::default();
    config.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    config
}

/// Limits a reader enforces on what the other side declares.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Largest frame body.
    pub max_frame_bytes: u32,
    /// Largest single value body.
    pub max_value_bytes: u64,
    /// Largest sum of the bodies that follow one frame.
    pub max_total_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            max_value_bytes: wire::DEFAULT_MAX_VALUE_BYTES,
            max_total_bytes: 4 * wire::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// What can go wrong reading or writing a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent something that breaks the protocol or a limit.
    #[error(transparent)]
    Protocol(#[from] WireError),
    /// The stream ended before a whole frame or body arrived.
    #[error("stream ended early ({0} bytes short)")]
    Truncated(usize),
    /// The stream ended cleanly before any frame (the peer had nothing to send).
    #[error("stream closed")]
    Closed,
    /// The connection or stream failed.
    #[error("stream failed: {0}")]
    Transport(String),
}

impl StreamError {
    /// The error to report to the peer, if the failure was the peer's.
    pub fn wire_error(&self) -> Option<WireError> {
        match self {
            StreamError::Protocol(e) => Some(e.clone()),
            StreamError::Truncated(short) => Some(WireError::new(
                ErrorCode::Malformed,
                format!("truncated frame: stream ended {short} bytes early"),
            )),
            _ => None,
        }
    }
}

/// Maps a failed `read_exact` of `expected` bytes. Only a stream that ends cleanly before the
/// first byte of a frame header is [`StreamError::Closed`]; ending anywhere later (including
/// before a body that happens to be as long as a header) is truncation.
fn read_error(e: ReadExactError, expected: usize, at_frame_start: bool) -> StreamError {
    match e {
        ReadExactError::FinishedEarly(0) if at_frame_start => StreamError::Closed,
        ReadExactError::FinishedEarly(got) => StreamError::Truncated(expected - got),
        ReadExactError::ReadError(e) => StreamError::Transport(e.to_string()),
    }
}

/// Reads one frame and decodes its body.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    limits: &ReadLimits,
) -> Result<T, StreamError> {
    let header = read_header(recv, limits).await?;
    read_body(recv, &header).await
}

/// Reads and checks a frame header (magic, version, declared length), so the caller can
/// decide about the body before anything is allocated for it.
pub async fn read_header(
    recv: &mut RecvStream,
    limits: &ReadLimits,
) -> Result<FrameHeader, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| read_error(e, HEADER_LEN, true))?;
    Ok(FrameHeader::parse(&header, limits.max_frame_bytes)?)
}

/// Reads and decodes the body a checked header declares.
pub async fn read_body<T: DeserializeOwned>(
    recv: &mut RecvStream,
    header: &FrameHeader,
) -> Result<T, StreamError> {
    let len = header.len as usize;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| read_error(e, len, false))?;
    Ok(wire::decode_body(&body)?)
}

/// Checks declared body lengths against the limits, before anything is allocated.
pub fn check_lengths(lengths: &[u64], limits: &ReadLimits) -> Result<(), WireError> {
    let mut total: u64 = 0;
    for &len in lengths {
        if len > limits.max_value_bytes {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "value of {len} bytes exceeds the {}-byte limit",
                    limits.max_value_bytes
                ),
            ));
        }
        total = total.saturating_add(len);
    }
    if total > limits.max_total_bytes {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "{total} bytes of values in one request exceed the {}-byte limit",
                limits.max_total_bytes
            ),
        ));
    }
    Ok(())
}

/// Reads the bodies that follow a frame, after checking their declared lengths.
pub async fn read_bodies(
    recv: &mut RecvStream,
    lengths: &[u64],
    limits: &ReadLimits,
) -> Result<Vec<Bytes>, StreamError> {
    check_lengths(lengths, limits)?;
    let mut bodies = Vec::with_capacity(lengths.len());
    for &len in lengths {
        let len = usize::try_from(len)
            .map_err(|_| WireError::new(ErrorCode::TooLarge, "value too large for this machine"))?;
        // Reserve, then append what arrives: one pass over the bytes (no zeroing first), and
        // the buffer is freshly allocated, so tensor data after its 64-byte-aligned header is
        // aligned for zero-copy views. Never asks for more than this body, so the next one
        // stays on the stream.
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            match recv.read_chunk(len - buf.len(), true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(StreamError::Truncated(len - buf.len())),
                Err(e) => return Err(StreamError::Transport(e.to_string())),
            }
        }
        bodies.push(buf.freeze());
    }
    Ok(bodies)
}

/// Writes a frame followed by streamed bodies, in chunks of at most `chunk` bytes, handed
/// to QUIC together (one call, not one per body: a batch answer has thousands).
pub async fn write_message<T: Serialize>(
    send: &mut SendStream,
    message: &T,
    bodies: &[Bytes],
    chunk: usize,
) -> Result<(), StreamError> {
    let chunk = chunk.max(1);
    let mut pieces = Vec::with_capacity(1 + bodies.len());
    pieces.push(wire::encode_frame(message));
    for body in bodies {
        let mut offset = 0;
        while offset < body.len() {
            let end = (offset + chunk).min(body.len());
            pieces.push(body.slice(offset..end));
            offset = end;
        }
    }
    send.write_all_chunks(&mut pieces)
        .await
        .map_err(|e| StreamError::Transport(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_end_before_a_frame_is_closed() {
        let early = ReadExactError::FinishedEarly;
        assert!(matches!(
            read_error(early(0), HEADER_LEN, true),
            StreamError::Closed
        ));
        assert!(matches!(
            read_error(early(4), HEADER_LEN, true),
            StreamError::Truncated(6)
        ));
        // A body as long as a header, missing entirely, is truncation, not a clean close.
        assert!(matches!(
            read_error(early(0), HEADER_LEN, false),
            StreamError::Truncated(HEADER_LEN)
        ));
    }
}
