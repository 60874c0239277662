//! Length-prefixed frames: the protocol messages over a plain byte stream.
//!
//! QUIC (one bidirectional stream per request) and any stream transport a user writes (TCP, a
//! pipe) carry the same protobuf messages gRPC carries, each in one frame:
//!
//! ```text
//! +----------------+--------+-------------------------------+
//! | length: u32 BE |  kind  |  protobuf message             |
//! | (kind + body)  |  u8    |  (length - 1 bytes)           |
//! +----------------+--------+-------------------------------+
//! ```
//!
//! | kind | message |
//! |---:|---|
//! | 0x01 / 0x81 | `ProduceRequest` / `ProduceResponse` |
//! | 0x02 / 0x82 | `MetadataRequest` / `MetadataResponse` |
//! | 0x03 / 0x83 | `FetchRequest` / `FetchResponse` |
//! | 0x04 / 0x84 | `AdminRequest` / `AdminResponse` |
//! | 0x05 | `RequestHeaders`: the request's metadata, sent just before its frame (only when it has any) |
//! | 0xFF | error: UTF-8 text, the server could not handle the request |
//!
//! The length is checked against the reader's limit *before* anything is allocated, so a
//! 2 GiB length prefix costs nothing; a frame that ends early is [`FrameError::Truncated`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use streamhouse::transport::frame::{read_request, write_request, MAX_FRAME};
//! use streamhouse::transport::{Request, RequestMessage};
//! use streamhouse::proto::v1::MetadataRequest;
//!
//! let (mut client, mut server) = tokio::io::duplex(1024);
//! let mut request = Request::new(RequestMessage::Metadata(MetadataRequest { topics: vec!["t".into()] }));
//! request.metadata.insert("authorization", "Bearer s3cret").unwrap();
//! write_request(&mut client, &request, MAX_FRAME).await.unwrap();
//! let (metadata, message) = read_request(&mut server, MAX_FRAME).await.unwrap().unwrap();
//! assert_eq!((metadata, message), (request.metadata, request.message));
//! # }
//! ```

use super::{Metadata, Request, RequestMessage, Response, TransportError};
use crate::serve::{RequestBudget, RequestLease};
use streamhouse_proto::prost::Message;
use streamhouse_proto::v1::{
    AdminRequest, AdminResponse, FetchRequest, FetchResponse, Header, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeaders,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default largest frame (kind + body): 16 MiB, as gRPC's default message limit here.
pub const MAX_FRAME: usize = 16 << 20;

const PRODUCE: u8 = 0x01;
const METADATA: u8 = 0x02;
const FETCH: u8 = 0x03;
const ADMIN: u8 = 0x04;
/// Kind of a frame of request metadata (`RequestHeaders`), which precedes its request's frame.
pub const HEADERS: u8 = 0x05;
const RESPONSE: u8 = 0x80;
/// Kind of an error frame.
pub const ERROR: u8 = 0xFF;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds the limit (checked before allocating).
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The kind byte is not one this side understands.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The body is not a valid message of its kind.
    #[error("malformed {kind} message")]
    Malformed {
        /// Which message.
        kind: &'static str,
        /// The decoder's error.
        #[source]
        source: streamhouse_proto::prost::DecodeError,
    },
    /// The peer answered with an error frame.
    #[error("peer error: {0}")]
    Remote(String),
    /// The underlying stream failed.
    #[error("stream failed")]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for TransportError {
    fn from(e: FrameError) -> TransportError {
        match e {
            FrameError::TooLarge { size, limit } => TransportError::FrameTooLarge { size, limit },
            FrameError::Truncated | FrameError::Io(_) => TransportError::connection_lost(e),
            FrameError::Remote(_) => TransportError::Unavailable(Some(Box::new(e))),
            FrameError::UnknownKind(_) | FrameError::Malformed { .. } => {
                TransportError::Protocol(e.to_string())
            }
        }
    }
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it began.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
    let Some((kind, wanted)) = read_head(reader, limit).await? else {
        return Ok(None);
    };
    // Grown as the bytes arrive, never allocated at the declared size up front: a peer that
    // declares 16 MiB and sends ten bytes holds at most one step of ours.
    let mut body = Vec::with_capacity(wanted.min(LEASE_STEP));
    let read = (&mut *reader)
        .take(wanted as u64)
        .read_to_end(&mut body)
        .await?;
    if read < wanted {
        return Err(FrameError::Truncated);
    }
    Ok(Some((kind, body)))
}

/// [`read_frame`] for a server: each step of the body (at most [`LEASE_STEP`]) is leased from
/// `budget` and only then allocated and read, so while the budget is spent the bytes stay with
/// the peer (held back by flow control) instead of in memory, and a frame that declares much
/// and sends little holds at most one step more than arrived. The lease comes back with the
/// frame; drop it once the message is decoded.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
    budget: &RequestBudget,
) -> Result<Option<(u8, Vec<u8>, RequestLease)>, FrameError> {
    let Some((kind, wanted)) = read_head(reader, limit).await? else {
        return Ok(None);
    };
    let mut lease = budget.lease();
    let mut body = Vec::new();
    while body.len() < wanted {
        let chunk = (wanted - body.len()).min(LEASE_STEP);
        budget.grow(&mut lease, chunk).await;
        // The first step is allocated exactly (a frame of one step is never copied), later
        // ones grow the buffer geometrically.
        body.reserve(chunk);
        let read = (&mut *reader)
            .take(chunk as u64)
            .read_to_end(&mut body)
            .await?;
        if read < chunk {
            return Err(FrameError::Truncated);
        }
    }
    Ok(Some((kind, body, lease)))
}

/// A frame's length prefix and kind: the kind and the body length, checked against `limit`.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<(u8, usize)>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        match reader.read(&mut prefix[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => filled += n,
        }
    }
    let size = u32::from_be_bytes(prefix) as usize;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    if size == 0 {
        return Err(FrameError::Truncated);
    }
    let mut kind = [0u8; 1];
    read_exact(reader, &mut kind).await?;
    Ok(Some((kind[0], size - 1)))
}

/// The most of a frame's body [`read_frame_within`] leases and allocates ahead of the bytes:
/// a producer's whole default request (1 MiB), so the usual frame is read into one buffer of
/// its exact size, while a frame that declares 16 MiB and stops holds one step.
pub const LEASE_STEP: usize = 1 << 20;

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Encodes one frame of `kind` around `message`, refusing it if it exceeds `limit`.
pub fn encode(kind: u8, message: &impl Message, limit: usize) -> Result<Vec<u8>, FrameError> {
    let size = message.encoded_len() + 1;
    if size > limit || u32::try_from(size).is_err() {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut frame = Vec::with_capacity(4 + size);
    frame.extend_from_slice(&(size as u32).to_be_bytes());
    frame.push(kind);
    message
        .encode(&mut frame)
        .map_err(|_| FrameError::TooLarge { size, limit })?;
    Ok(frame)
}

/// Size of a request's frame (kind + body, without the length prefix): what a frame limit is
/// compared with.
pub fn request_len(request: &RequestMessage) -> usize {
    1 + match request {
        RequestMessage::Produce(m) => m.encoded_len(),
        RequestMessage::Metadata(m) => m.encoded_len(),
        RequestMessage::Fetch(m) => m.encoded_len(),
        RequestMessage::Admin(m) => m.encoded_len(),
    }
}

/// The frame of a request.
pub fn encode_request(request: &RequestMessage, limit: usize) -> Result<Vec<u8>, FrameError> {
    match request {
        RequestMessage::Produce(m) => encode(PRODUCE, m, limit),
        RequestMessage::Metadata(m) => encode(METADATA, m, limit),
        RequestMessage::Fetch(m) => encode(FETCH, m, limit),
        RequestMessage::Admin(m) => encode(ADMIN, m, limit),
    }
}

/// The frames of a whole request: its metadata's frame when it has any, then the message's.
/// Each is checked against `limit` on its own.
pub fn encode_request_frames(request: &Request, limit: usize) -> Result<Vec<u8>, FrameError> {
    if request.metadata.is_empty() {
        return encode_request(&request.message, limit);
    }
    let headers = RequestHeaders {
        headers: request
            .metadata
            .iter()
            .map(|(key, value)| Header {
                key: key.to_owned(),
                value: value.to_owned(),
            })
            .collect(),
    };
    let mut frames = encode(HEADERS, &headers, limit)?;
    frames.extend_from_slice(&encode_request(&request.message, limit)?);
    Ok(frames)
}

/// Decodes a [`HEADERS`] frame's body into the metadata a server hands its agent (pairs no
/// client could have sent are dropped, see [`Metadata::received`]).
pub fn decode_headers(body: &[u8]) -> Result<Metadata, FrameError> {
    let headers = decode::<RequestHeaders>("RequestHeaders", body)?;
    Ok(Metadata::received(
        headers.headers.into_iter().map(|h| (h.key, h.value)),
    ))
}

/// Reads a whole request — its optional metadata frame, then its message's frame — for a
/// simple server; `Ok(None)` if the stream ended cleanly before it began.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<(Metadata, RequestMessage)>, FrameError> {
    let Some((mut kind, mut body)) = read_frame(reader, limit).await? else {
        return Ok(None);
    };
    let mut metadata = Metadata::new();
    if kind == HEADERS {
        metadata = decode_headers(&body)?;
        (kind, body) = read_frame(reader, limit)
            .await?
            .ok_or(FrameError::Truncated)?;
    }
    Ok(Some((metadata, decode_request(kind, &body)?)))
}

/// The frame of a response.
pub fn encode_response(response: &Response, limit: usize) -> Result<Vec<u8>, FrameError> {
    match response {
        Response::Produce(m) => encode(PRODUCE | RESPONSE, m, limit),
        Response::Metadata(m) => encode(METADATA | RESPONSE, m, limit),
        Response::Fetch(m) => encode(FETCH | RESPONSE, m, limit),
        Response::Admin(m) => encode(ADMIN | RESPONSE, m, limit),
    }
}

/// An error frame carrying `message`.
pub fn encode_error(message: &str) -> Vec<u8> {
    let body = message.as_bytes();
    let body = &body[..body.len().min(1024)];
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
    frame.push(ERROR);
    frame.extend_from_slice(body);
    frame
}

fn decode<M: Message + Default>(kind: &'static str, body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(|source| FrameError::Malformed { kind, source })
}

/// Decodes a request frame's body.
pub fn decode_request(kind: u8, body: &[u8]) -> Result<RequestMessage, FrameError> {
    Ok(match kind {
        PRODUCE => RequestMessage::Produce(decode::<ProduceRequest>("ProduceRequest", body)?),
        METADATA => RequestMessage::Metadata(decode::<MetadataRequest>("MetadataRequest", body)?),
        FETCH => RequestMessage::Fetch(decode::<FetchRequest>("FetchRequest", body)?),
        ADMIN => RequestMessage::Admin(decode::<AdminRequest>("AdminRequest", body)?),
        other => return Err(FrameError::UnknownKind(other)),
    })
}

/// Decodes a response frame's body (an error frame becomes [`FrameError::Remote`]).
pub fn decode_response(kind: u8, body: &[u8]) -> Result<Response, FrameError> {
    Ok(match kind {
        k if k == PRODUCE | RESPONSE => {
            Response::Produce(decode::<ProduceResponse>("ProduceResponse", body)?)
        }
        k if k == METADATA | RESPONSE => {
            Response::Metadata(decode::<MetadataResponse>("MetadataResponse", body)?)
        }
        k if k == FETCH | RESPONSE => {
            Response::Fetch(decode::<FetchResponse>("FetchResponse", body)?)
        }
        k if k == ADMIN | RESPONSE => {
            Response::Admin(decode::<AdminResponse>("AdminResponse", body)?)
        }
        ERROR => {
            return Err(FrameError::Remote(
                String::from_utf8_lossy(body).into_owned(),
            ));
        }
        other => return Err(FrameError::UnknownKind(other)),
    })
}

/// Writes a whole request (its metadata's frame when it has any, then its message's) and
/// flushes.
pub async fn write_request<W: AsyncWrite + Unpin>(
    writer: &mut W,
    request: &Request,
    limit: usize,
) -> Result<(), FrameError> {
    let frame = encode_request_frames(request, limit)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use streamhouse_proto::v1::PartitionBatch;

    async fn read(bytes: &[u8], limit: usize) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        let mut reader = bytes;
        read_frame(&mut reader, limit).await
    }

    #[tokio::test]
    async fn round_trips_every_kind() {
        let produce = RequestMessage::Produce(ProduceRequest {
            acks: 2,
            timeout_ms: 10,
            batches: vec![PartitionBatch {
                topic: "t".into(),
                partition: 3,
                batch: Bytes::from_static(b"batch bytes"),
            }],
        });
        for request in [
            produce,
            RequestMessage::Metadata(MetadataRequest::default()),
            RequestMessage::Fetch(FetchRequest::default()),
        ] {
            let frame = encode_request(&request, MAX_FRAME).unwrap();
            let (kind, body) = read(&frame, MAX_FRAME).await.unwrap().unwrap();
            assert_eq!(decode_request(kind, &body).unwrap(), request);
            assert!(
                decode_response(kind, &body).is_err(),
                "a request is not a response"
            );
        }
        let response = Response::Metadata(MetadataResponse::default());
        let frame = encode_response(&response, MAX_FRAME).unwrap();
        let (kind, body) = read(&frame, MAX_FRAME).await.unwrap().unwrap();
        assert_eq!(decode_response(kind, &body).unwrap(), response);
        let (kind, body) = read(&encode_error("agent stopping"), 64)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(decode_response(kind, &body), Err(FrameError::Remote(m)) if m == "agent stopping")
        );
    }

    #[tokio::test]
    async fn metadata_travels_in_a_headers_frame_before_its_request() {
        let mut request = Request::from(MetadataRequest::default());
        let plain = encode_request_frames(&request, MAX_FRAME).unwrap();
        assert_eq!(plain, encode_request(&request.message, MAX_FRAME).unwrap());
        request
            .metadata
            .insert("authorization", "Bearer t")
            .unwrap();
        request.metadata.insert("x-b", "2").unwrap();
        let frames = encode_request_frames(&request, MAX_FRAME).unwrap();
        assert_eq!(frames[4], HEADERS);
        let mut reader = &frames[..];
        let (metadata, message) = read_request(&mut reader, MAX_FRAME).await.unwrap().unwrap();
        assert_eq!(metadata, request.metadata);
        assert_eq!(message, request.message);
        // A headers frame with nothing after it is a truncated request.
        let headers_only = &frames[..frames.len() - plain.len()];
        let mut reader = headers_only;
        assert!(matches!(
            read_request(&mut reader, MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
        // Hand-made headers no client could send are dropped, not refused.
        let odd = RequestHeaders {
            headers: vec![
                Header {
                    key: "GRPC-X".into(),
                    value: "1".into(),
                },
                Header {
                    key: "ok".into(),
                    value: "yes".into(),
                },
            ],
        };
        let metadata = decode_headers(&odd.encode_to_vec()).unwrap();
        assert_eq!(metadata.iter().collect::<Vec<_>>(), vec![("ok", "yes")]);
    }

    #[tokio::test]
    async fn hostile_prefixes_are_refused_before_allocation() {
        // 2 GiB declared: refused from the prefix alone.
        let huge = [0x80, 0, 0, 0, PRODUCE];
        assert!(
            matches!(read(&huge, MAX_FRAME).await, Err(FrameError::TooLarge { size, .. }) if size == 1 << 31)
        );
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n", MAX_FRAME).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read(&[0, 0, 0, 10, PRODUCE, 1, 2], MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read(&[0, 0], MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read(&[0, 0, 0, 0], MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
        assert!(read(&[], MAX_FRAME).await.unwrap().is_none());
        let (kind, body) = read(&[0, 0, 0, 3, 0x42, 1, 2], MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            decode_request(kind, &body),
            Err(FrameError::UnknownKind(0x42))
        ));
        // A produce request whose body is a truncated varint.
        assert!(matches!(
            decode_request(PRODUCE, &[0x1a, 0xff]),
            Err(FrameError::Malformed { .. })
        ));
        let big = RequestMessage::Metadata(MetadataRequest {
            topics: vec!["x".repeat(100)],
        });
        assert!(matches!(
            encode_request(&big, 50),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
