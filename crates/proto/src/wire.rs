//! The wire protocol between clients and nodes.
//!
//! # Streams
//! Every request travels on its own bidirectional QUIC stream, so one connection carries many
//! requests at once with no head-of-line blocking between them. The client writes one
//! [`RequestFrame`], then the bodies of any streamed values, and finishes its side; the node
//! answers with one [`ResponseFrame`], then the bodies of any streamed values, and finishes.
//! Request ids are echoed in responses, so a response can always be matched and logged.
//!
//! # Frames
//! A frame is a fixed 10-byte header followed by a postcard-encoded body:
//!
//! ```text
//! +------+---------+-------+-------------+------------------------+
//! | STRA | version | flags | length (LE) | postcard(RequestFrame) |
//! |  4 B |   1 B   |  1 B  |     4 B     |       length bytes     |
//! +------+---------+-------+-------------+------------------------+
//! ```
//!
//! The header is checked before the body is read: a wrong magic, an unknown version or a
//! declared length above the receiver's limit is refused with a clear [`WireError`] without
//! allocating anything.
//!
//! # Values
//! A value travels as its [`Format`] plus its payload in the stored form of
//! [`codec`](crate::codec) (so tensors arrive as `.npy` bytes with 64-byte-aligned data, ready
//! for zero-copy views). Small payloads are [`Body::Inline`] in the frame. Larger ones are
//! [`Body::Streamed`]: the frame declares the length and the raw bytes follow the frame on
//! the stream, in the order the bodies appear in the frame, sent in chunks under QUIC's flow
//! control. The receiver checks every declared length against its value limit before it
//! allocates, and reads each body straight into the buffer the value will keep, so no value
//! is ever held whole twice.
//!
//! Keys and namespaces are plain strings on the wire and are validated by the receiver, so a
//! bad one gets an error that says what is wrong with it rather than a decoding failure.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_payload, encode_payload};
use crate::meta::{EntryMeta, Format};
use crate::ring::{Member, PartitionId, Ring};
use crate::value::Value;
use crate::version::{NodeId, Version};

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"STRA";
/// The protocol version this build speaks.
///
/// 2: partition transfers compare versions first (`ScanPartitions` answers
/// `PartitionVersions`; `FetchPartitionEntries` fetches what the receiver lacks).
pub const PROTOCOL_VERSION: u8 = 2;
/// Length of the frame header.
pub const HEADER_LEN: usize = 10;
/// ALPN protocol name negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"strata/1";
/// Default largest frame body (16 MiB): bounds batch frames; large values are streamed
/// outside the frame.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;
/// Default payload size above which values are streamed rather than inlined (256 KiB).
pub const DEFAULT_CHUNK_BYTES: usize = 256 << 10;
/// Default largest value (256 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 256 << 20;

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version of the frame.
    pub version: u8,
    /// Reserved; zero.
    pub flags: u8,
    /// Length of the body that follows.
    pub len: u32,
}

impl FrameHeader {
    /// Parses and checks a header: magic, version, and `len <= max_len`.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_len: u32) -> Result<Self, WireError> {
        if bytes[..4] != MAGIC {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "not a Strata frame (bad magic)",
            ));
        }
        let version = bytes[4];
        if version != PROTOCOL_VERSION {
            return Err(WireError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION})"
                ),
            ));
        }
        let len = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        if len > max_len {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("frame of {len} bytes exceeds the {max_len}-byte limit"),
            ));
        }
        Ok(Self {
            version,
            flags: bytes[5],
            len,
        })
    }
}

/// Encodes a message as one frame (header and body).
///
/// The body is measured first and then written once into a buffer of exactly its size: a
/// frame that carries megabytes of inline values is copied once, not regrown and copied again.
pub fn encode_frame<T: Serialize>(message: &T) -> Bytes {
    // Encoding our own plain data types into memory cannot fail.
    let len = postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(0);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    match postcard::to_io(message, &mut out) {
        Ok(_) => Bytes::from(out),
        // Unreachable for our types (and writing to a `Vec` cannot fail); an empty body then
        // fails to decode on the other side with a clear error, as before.
        Err(_) => {
            out.truncate(HEADER_LEN - 4);
            out.extend_from_slice(&0u32.to_le_bytes());
            Bytes::from(out)
        }
    }
}

/// Decodes a frame body.
pub fn decode_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    postcard::from_bytes(body).map_err(|e| {
        WireError::new(
            ErrorCode::Malformed,
            format!("frame body does not decode: {e}"),
        )
    })
}

/// A request with its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// The ring epoch the client routed by (0 when it has none).
    pub epoch: u64,
    /// The operation.
    pub request: Request,
}

/// A response with the id of its request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's id.
    pub id: u64,
    /// The outcome.
    pub response: Response,
}

/// How a value's payload travels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// In the frame.
    Inline(Bytes),
    /// After the frame, this many bytes.
    Streamed(u64),
}

impl Body {
    /// Length of the payload.
    pub fn len(&self) -> u64 {
        match self {
            Body::Inline(b) => b.len() as u64,
            Body::Streamed(n) => *n,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A value on the wire: its format and how its payload travels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireValue {
    /// How to decode the payload.
    pub format: Format,
    /// The payload, or its length if it follows the frame.
    pub body: Body,
}

/// An entry on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Its metadata.
    pub meta: EntryMeta,
    /// Its payload, or its length if it follows the frame.
    pub body: Body,
}

/// Splits a value into its wire form and the payload bytes that must follow the frame (if the
/// payload is larger than `inline_limit`). The streamed parts are the payload's own buffers.
pub fn split_value(value: &Value, inline_limit: usize) -> (WireValue, Option<[Bytes; 2]>) {
    let payload = encode_payload(value);
    let format = value.format();
    if payload.len() <= inline_limit {
        let body = Body::Inline(payload.to_bytes());
        (WireValue { format, body }, None)
    } else {
        let body = Body::Streamed(payload.len() as u64);
        (
            WireValue { format, body },
            Some([payload.header, payload.body]),
        )
    }
}

/// Rebuilds a value from its format and complete payload.
pub fn join_value(format: &Format, payload: Bytes) -> Result<Value, WireError> {
    decode_payload(format, payload)
        .map_err(|e| WireError::new(ErrorCode::InvalidValue, e.to_string()))
}

/// Operations a client can ask of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness and identity.
    Ping,
    /// Read one entry.
    Get {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// Write one entry.
    Set {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Time to live in milliseconds; none means no expiry.
        ttl_ms: Option<u64>,
        /// The value.
        value: WireValue,
    },
    /// Delete one entry.
    Delete {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// Whether an entry exists.
    Exists {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// An entry's metadata.
    Metadata {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// Delete every entry matching a glob pattern (all, if none).
    Clear {
        /// Namespace.
        namespace: String,
        /// Glob pattern over keys.
        pattern: Option<String>,
    },
    /// List keys matching a pattern, a page at a time.
    ListKeys {
        /// Namespace.
        namespace: String,
        /// Glob pattern over keys.
        pattern: Option<String>,
        /// Include each key's metadata.
        with_meta: bool,
        /// Continue after this key (from the previous page's `next`).
        after: Option<String>,
        /// Most keys in this page.
        limit: u32,
    },
    /// Counters and sizes of the node's tiers, as JSON.
    Stats,
    /// Read many entries.
    GetMany {
        /// Namespace.
        namespace: String,
        /// Keys.
        keys: Vec<String>,
    },
    /// Write many entries.
    SetMany {
        /// Namespace.
        namespace: String,
        /// Time to live in milliseconds for all of them.
        ttl_ms: Option<u64>,
        /// Keys and values.
        items: Vec<(String, WireValue)>,
    },
    /// The ring the node routes by: members, epoch, partition table.
    Ring,
    /// Add a member to the cluster (forwarded to the Raft leader). Idempotent.
    Join {
        /// The member, as it should be dialled.
        member: Member,
    },
    /// Hand a member's partitions off and remove it (forwarded to the Raft leader).
    Leave {
        /// The member that leaves.
        node: NodeId,
    },
    /// A Raft RPC between nodes; the payload is the postcard-encoded openraft request.
    Raft {
        /// Which RPC.
        rpc: RaftRpc,
        /// The encoded request.
        payload: Bytes,
    },
    /// A cluster-metadata command for the Raft leader (postcard-encoded), from a node that is
    /// not the leader.
    Propose(Bytes),
    /// Apply an entry written on another node (replication, hand-off), if it is newer than
    /// what is held. Peers only.
    Replicate {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// The entry's metadata, with its version.
        meta: EntryMeta,
        /// Its payload.
        body: Body,
    },
    /// Apply a delete issued on another node, unless a newer write is held. Peers only.
    ReplicateDelete {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// The delete's version.
        version: Version,
    },
    /// List the versions of the entries of some partitions for a new holder, a page at a
    /// time ([`Response::PartitionVersions`]); the node also forwards later writes to those
    /// partitions to the asking member until the hand-off completes. The first page opens a
    /// transfer session: its key listing is what later pages and
    /// [`Request::FetchPartitionEntries`] serve. Peers only.
    ScanPartitions {
        /// The member that asks (and receives forwarded writes).
        receiver: NodeId,
        /// The partitions.
        partitions: Vec<PartitionId>,
        /// Continue after this (namespace, key).
        after: Option<(String, String)>,
        /// Most entries in this page.
        limit: u32,
    },
    /// The entries of `keys`, listed by [`Request::ScanPartitions`] in the same session,
    /// that the receiver lacks or holds in an older version ([`Response::PartitionEntries`]).
    /// Peers only.
    FetchPartitionEntries {
        /// The member that asks: its transfer session must be open.
        receiver: NodeId,
        /// The partitions of the session.
        partitions: Vec<PartitionId>,
        /// (namespace, key) of each entry wanted, every one in `partitions`.
        keys: Vec<(String, String)>,
    },
    /// Ask the Raft leader for an ownership lease (every heartbeat). Peers only.
    Lease {
        /// The member that asks.
        node: NodeId,
    },
    /// A read (`Get`, `GetMany`, `Exists` or `Metadata`) sent to a replica of the key
    /// because its owner could not be reached. The replica answers only when it cannot be
    /// stale (every acknowledged write is on every replica, and it holds a valid lease at
    /// the current epoch); otherwise it answers with an error or a redirect.
    ReplicaRead(Box<Request>),
    /// Get-or-compute with cluster-wide single flight, sent to the key's owner: the live
    /// value if there is one ([`Response::Entry`], or [`Response::ComputeWaited`] if it
    /// arrived while the request waited); otherwise a compute lease for this caller
    /// if nobody holds one ([`Response::ComputeLease`]); otherwise the node waits up to
    /// `wait_ms` for the holder's value (or for its lease to end, and then grants the lease to
    /// this caller) and answers [`Response::ComputePending`] if neither happened. A `Set` of
    /// the key ends the lease and wakes the waiters. See the node's `flight` module.
    Compute {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// How long a lease granted to this caller lasts unless renewed (the node clamps it
        /// to its bounds).
        lease_ms: u64,
        /// How long to wait for another caller's computation before answering
        /// [`Response::ComputePending`] (the node caps it).
        wait_ms: u64,
    },
    /// Extends a compute lease; answered [`Response::ComputeRenewed`].
    ComputeRenew {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// The lease's token, from [`Response::ComputeLease`].
        token: u64,
        /// The new lease length from now (clamped like [`Request::Compute`]'s).
        lease_ms: u64,
    },
    /// Gives a compute lease up (the computation failed), so that one waiter takes over at
    /// once; answered [`Response::ComputeReleased`].
    ComputeRelease {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// The lease's token.
        token: u64,
    },
    /// A request sent from inside a traced operation: the receiver handles `request` as a
    /// child of the caller's span. Only sent when the caller records traces, so untraced
    /// requests cost nothing extra on the wire.
    Traced {
        /// The caller's span.
        trace: TraceContext,
        /// The request itself (never another `Traced`).
        request: Box<Request>,
    },
}

/// W3C trace context of the span a request was sent from (the `traceparent` header's
/// fields), so the receiver's spans join the caller's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// The trace id (all zero is invalid).
    pub trace_id: [u8; 16],
    /// The caller's span id (all zero is invalid).
    pub span_id: [u8; 8],
    /// Trace flags; bit 0: sampled.
    pub flags: u8,
}

impl Request {
    /// Whether only members of the cluster may send this request (a node certificate is
    /// required): Raft, leases, replication, partition transfers and joining. The node
    /// refuses them from clients with [`ErrorCode::Forbidden`].
    pub fn members_only(&self) -> bool {
        match self {
            Request::Raft { .. }
            | Request::Propose(_)
            | Request::Join { .. }
            | Request::Replicate { .. }
            | Request::ReplicateDelete { .. }
            | Request::ScanPartitions { .. }
            | Request::FetchPartitionEntries { .. }
            | Request::Lease { .. } => true,
            Request::Traced { request, .. } => request.members_only(),
            _ => false,
        }
    }

    /// Splits off the trace context of a [`Request::Traced`]; other requests carry none.
    pub fn untraced(self) -> (Request, Option<TraceContext>) {
        match self {
            Request::Traced { trace, request } => (*request, Some(trace)),
            other => (other, None),
        }
    }
}

/// The Raft RPCs carried by [`Request::Raft`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    /// AppendEntries.
    AppendEntries,
    /// RequestVote.
    Vote,
    /// InstallSnapshot (one chunk).
    InstallSnapshot,
}

impl Request {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Get { .. } => "get",
            Request::Set { .. } => "set",
            Request::Delete { .. } => "delete",
            Request::Exists { .. } => "exists",
            Request::Metadata { .. } => "metadata",
            Request::Clear { .. } => "clear",
            Request::ListKeys { .. } => "list_keys",
            Request::Stats => "stats",
            Request::GetMany { .. } => "get_many",
            Request::SetMany { .. } => "set_many",
            Request::Ring => "ring",
            Request::Join { .. } => "join",
            Request::Leave { .. } => "leave",
            Request::Raft { .. } => "raft",
            Request::Propose(_) => "propose",
            Request::Replicate { .. } => "replicate",
            Request::ReplicateDelete { .. } => "replicate_delete",
            Request::ScanPartitions { .. } => "scan_partitions",
            Request::FetchPartitionEntries { .. } => "fetch_partition_entries",
            Request::Lease { .. } => "lease",
            Request::ReplicaRead(inner) => inner.kind(),
            Request::Compute { .. } => "compute",
            Request::ComputeRenew { .. } => "compute_renew",
            Request::ComputeRelease { .. } => "compute_release",
            Request::Traced { request, .. } => request.kind(),
        }
    }

    /// The (namespace, key) this request is about, when it is about one key: such requests
    /// are answered only by the key's owner.
    pub fn single_key(&self) -> Option<(&str, &str)> {
        match self {
            Request::Get { namespace, key }
            | Request::Set { namespace, key, .. }
            | Request::Delete { namespace, key }
            | Request::Exists { namespace, key }
            | Request::Metadata { namespace, key }
            | Request::Compute { namespace, key, .. }
            | Request::ComputeRenew { namespace, key, .. }
            | Request::ComputeRelease { namespace, key, .. } => Some((namespace, key)),
            _ => None,
        }
    }

    /// The bodies that follow this request's frame, in order.
    pub fn streamed_lengths(&self) -> Vec<u64> {
        let bodies: Vec<&Body> = match self {
            Request::Set { value, .. } => vec![&value.body],
            Request::SetMany { items, .. } => items.iter().map(|(_, v)| &v.body).collect(),
            Request::Replicate { body, .. } => vec![body],
            Request::Traced { request, .. } => return request.streamed_lengths(),
            _ => Vec::new(),
        };
        streamed(bodies)
    }
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong {
        /// The node's id.
        node: NodeId,
        /// The node's protocol version.
        protocol: u8,
    },
    /// Answer to [`Request::Get`] (and to [`Request::Compute`] for a cached value); `None` is
    /// a miss.
    Entry(Option<WireEntry>),
    /// A write succeeded.
    Stored,
    /// Answer to [`Request::Delete`]: whether the key existed.
    Deleted(bool),
    /// Answer to [`Request::Exists`].
    Exists(bool),
    /// Answer to [`Request::Metadata`].
    Metadata(Option<EntryMeta>),
    /// Answer to [`Request::Clear`]: how many entries were removed.
    Cleared(u64),
    /// A page of keys, and where the next one starts (none at the end).
    Keys {
        /// Keys with optional metadata.
        keys: Vec<(String, Option<EntryMeta>)>,
        /// Pass as `after` for the next page.
        next: Option<String>,
    },
    /// Node statistics as JSON text.
    Stats(String),
    /// Answer to [`Request::GetMany`], in request order.
    Entries(Vec<Option<WireEntry>>),
    /// Answer to [`Request::SetMany`]: one outcome per item, in request order.
    StoredMany(Vec<Option<WireError>>),
    /// The node's ring (answer to [`Request::Ring`], [`Request::Join`], [`Request::Leave`]).
    Ring(Box<Ring>),
    /// The node does not own the key at its epoch: route by this ring instead. Nothing was
    /// read or written.
    Redirect(Box<Ring>),
    /// Answer to [`Request::Raft`] and [`Request::Propose`]: the postcard-encoded openraft
    /// response.
    Raft(Bytes),
    /// Answer to [`Request::Replicate`] and [`Request::ReplicateDelete`]: whether it was
    /// applied (false if something newer was held).
    Applied(bool),
    /// A page of [`Request::ScanPartitions`]: the version of each live entry.
    PartitionVersions {
        /// Namespace, key and version, in (namespace, key) order.
        versions: Vec<(String, String, Version)>,
        /// Pass as `after` for the next page; none at the end.
        next: Option<(String, String)>,
        /// On the first page: the tombstones (deletes within the grace period) of the
        /// partitions, as namespace, key and the delete's version.
        tombstones: Vec<(String, String, Version)>,
    },
    /// Answer to [`Request::FetchPartitionEntries`]: the entries still held and live, in the
    /// order asked (a key deleted or expired since it was listed is left out).
    PartitionEntries {
        /// Namespace, key and entry.
        entries: Vec<(String, String, WireEntry)>,
    },
    /// Answer to [`Request::Lease`].
    Lease {
        /// The leader's Raft term.
        term: u64,
        /// The ring epoch the leader has applied: the lease is valid only once the member has
        /// applied it too.
        epoch: u64,
        /// How long the lease lasts, counted from when the member sent the request; 0 when the
        /// leader cannot grant one (it has no majority, or does not know the member).
        granted_ms: u64,
    },
    /// The request failed.
    Error(WireError),
    /// Answer to [`Request::Compute`]: nobody holds a live value or lease; this caller now
    /// holds the lease and should compute the value and `Set` it (which ends the lease), renew
    /// the lease while computing, and release it if the computation fails.
    ComputeLease {
        /// Names this lease in renewals and releases.
        token: u64,
        /// How long the lease lasts unless renewed, as granted (after clamping).
        lease_ms: u64,
    },
    /// Answer to [`Request::Compute`]: another caller still computes under a live lease; ask
    /// again.
    ComputePending {
        /// How long that lease lasts unless renewed.
        lease_left_ms: u64,
    },
    /// Answer to [`Request::ComputeRenew`]: whether the lease was still held by this token
    /// (false: it expired or was taken over; the value may still be `Set`).
    ComputeRenewed(bool),
    /// Answer to [`Request::ComputeRelease`]: whether the lease was still held by this token.
    ComputeReleased(bool),
    /// Answer to [`Request::Compute`]: the value another caller computed and stored while this
    /// request waited for it (a value that was already there is [`Response::Entry`]).
    ComputeWaited(WireEntry),
}

fn streamed(bodies: Vec<&Body>) -> Vec<u64> {
    bodies
        .into_iter()
        .filter_map(|b| match b {
            Body::Streamed(n) => Some(*n),
            Body::Inline(_) => None,
        })
        .collect()
}

impl Response {
    /// The variant's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Pong { .. } => "Pong",
            Response::Entry(_) => "Entry",
            Response::Stored => "Stored",
            Response::Deleted(_) => "Deleted",
            Response::Exists(_) => "Exists",
            Response::Metadata(_) => "Metadata",
            Response::Cleared(_) => "Cleared",
            Response::Keys { .. } => "Keys",
            Response::Stats(_) => "Stats",
            Response::Entries(_) => "Entries",
            Response::StoredMany(_) => "StoredMany",
            Response::Ring(_) => "Ring",
            Response::Redirect(_) => "Redirect",
            Response::Raft(_) => "Raft",
            Response::Applied(_) => "Applied",
            Response::PartitionVersions { .. } => "PartitionVersions",
            Response::PartitionEntries { .. } => "PartitionEntries",
            Response::Lease { .. } => "Lease",
            Response::Error(_) => "Error",
            Response::ComputeLease { .. } => "ComputeLease",
            Response::ComputePending { .. } => "ComputePending",
            Response::ComputeRenewed(_) => "ComputeRenewed",
            Response::ComputeReleased(_) => "ComputeReleased",
            Response::ComputeWaited(_) => "ComputeWaited",
        }
    }

    /// The bodies that follow this response's frame, in order.
    pub fn streamed_lengths(&self) -> Vec<u64> {
        let bodies: Vec<&Body> = match self {
            Response::Entry(Some(e)) | Response::ComputeWaited(e) => vec![&e.body],
            Response::Entries(es) => es.iter().flatten().map(|e| &e.body).collect(),
            Response::PartitionEntries { entries } => {
                entries.iter().map(|(_, _, e)| &e.body).collect()
            }
            _ => Vec::new(),
        };
        streamed(bodies)
    }
}

/// Why a request failed, as sent to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
}

impl WireError {
    /// An error of `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

/// Kinds of failure a node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame or its body could not be decoded.
    Malformed,
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion,
    /// A declared length exceeds a limit.
    TooLarge,
    /// The namespace breaks the naming rules.
    InvalidNamespace,
    /// The key breaks the key rules.
    InvalidKey,
    /// The value is malformed (bad tensor shape, wrong image signature, ...).
    InvalidValue,
    /// The glob pattern does not parse.
    InvalidPattern,
    /// The node's disk is full; nothing was changed.
    NoSpace,
    /// The node is shutting down or overloaded; try again (elsewhere).
    Unavailable,
    /// The request took longer than the node allows.
    Timeout,
    /// Anything else on the node's side.
    Internal,
    /// The request is for nodes of the cluster only, or the caller is not allowed it.
    Forbidden,
    /// The cluster cannot do this now (no Raft leader, a member unknown, a change already
    /// under way); try again later.
    NotReady,
}

impl ErrorCode {
    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::NotReady
        )
    }
}

impl From<crate::Error> for WireError {
    fn from(e: crate::Error) -> Self {
        let code = match &e {
            crate::Error::InvalidNamespace { .. } => ErrorCode::InvalidNamespace,
            crate::Error::InvalidKey { .. } => ErrorCode::InvalidKey,
            crate::Error::Corrupt(_) => ErrorCode::Internal,
            _ => ErrorCode::InvalidValue,
        };
        WireError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Tensor;

    fn header(frame: &Bytes) -> [u8; HEADER_LEN] {
        frame[..HEADER_LEN].try_into().unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let req = RequestFrame {
            id: 7,
            epoch: 3,
            request: Request::Get {
                namespace: "default".into(),
                key: "video:abc123:keyframes".into(),
            },
        };
        let frame = encode_frame(&req);
        let h = FrameHeader::parse(&header(&frame), DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(h.len as usize, frame.len() - HEADER_LEN);
        let back: RequestFrame = decode_body(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn bad_headers_are_refused_before_reading_the_body() {
        let frame = encode_frame(&RequestFrame {
            id: 1,
            epoch: 0,
            request: Request::Ping,
        });
        let mut h = header(&frame);
        h[0] = b'X';
        assert_eq!(
            FrameHeader::parse(&h, 1024).unwrap_err().code,
            ErrorCode::Malformed
        );
        let mut h = header(&frame);
        h[4] = 9;
        let err = FrameHeader::parse(&h, 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert!(err.message.contains("version 9"));
        let mut h = header(&frame);
        h[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            FrameHeader::parse(&h, 1024).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn truncated_or_garbage_bodies_are_malformed() {
        let frame = encode_frame(&RequestFrame {
            id: 1,
            epoch: 0,
            request: Request::Stats,
        });
        assert!(decode_body::<RequestFrame>(&frame[HEADER_LEN..frame.len() - 1]).is_err());
        assert_eq!(
            decode_body::<RequestFrame>(&[0xff; 12]).unwrap_err().code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn large_values_are_streamed_from_their_own_buffers() {
        let tensor = Tensor::from_slice(vec![100_000], &vec![1.0f32; 100_000]).unwrap();
        let value = Value::Tensor(tensor.clone());
        let (wire, streamed) = split_value(&value, DEFAULT_CHUNK_BYTES);
        let [header, body] = streamed.expect("400 KB is streamed");
        assert_eq!(body.as_ptr(), tensor.data().as_ptr(), "no copy of the data");
        assert_eq!(
            wire.body,
            Body::Streamed((header.len() + body.len()) as u64)
        );
        let mut payload = bytes::BytesMut::new();
        payload.extend_from_slice(&header);
        payload.extend_from_slice(&body);
        assert_eq!(join_value(&wire.format, payload.freeze()).unwrap(), value);

        let small = Value::from(b"tiny".to_vec());
        let (wire, streamed) = split_value(&small, DEFAULT_CHUNK_BYTES);
        assert!(streamed.is_none());
        let Body::Inline(bytes) = &wire.body else {
            panic!("inline")
        };
        assert_eq!(join_value(&wire.format, bytes.clone()).unwrap(), small);
    }

    #[test]
    fn traced_requests_keep_their_inner_request() {
        let inner = Request::Replicate {
            namespace: "default".into(),
            key: "k".into(),
            meta: crate::entry::Entry::new(
                Value::from(b"v".to_vec()),
                crate::meta::Timestamp(1),
                None,
                Version::ZERO,
            )
            .meta,
            body: Body::Streamed(7),
        };
        let trace = TraceContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: 1,
        };
        let traced = Request::Traced {
            trace,
            request: Box::new(inner.clone()),
        };
        assert_eq!(traced.kind(), "replicate");
        assert_eq!(traced.streamed_lengths(), vec![7]);
        let frame = encode_frame(&RequestFrame {
            id: 3,
            epoch: 1,
            request: traced,
        });
        let back: RequestFrame = decode_body(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(back.request.untraced(), (inner.clone(), Some(trace)));
        assert_eq!(inner.clone().untraced(), (inner, None));
    }

    #[test]
    fn streamed_lengths_follow_frame_order() {
        let items = vec![
            (
                "a".to_owned(),
                WireValue {
                    format: Format::Bytes,
                    body: Body::Streamed(5),
                },
            ),
            (
                "b".to_owned(),
                WireValue {
                    format: Format::Bytes,
                    body: Body::Inline(Bytes::from_static(b"x")),
                },
            ),
            (
                "c".to_owned(),
                WireValue {
                    format: Format::Bytes,
                    body: Body::Streamed(9),
                },
            ),
        ];
        let req = Request::SetMany {
            namespace: "default".into(),
            ttl_ms: None,
            items,
        };
        assert_eq!(req.streamed_lengths(), vec![5, 9]);
    }
}

#[cfg(test)]
mod entry_tests {
    use super::*;
    use crate::entry::Entry;
    use crate::meta::Timestamp;
    use crate::value::Tensor;
    use crate::version::Version;

    #[test]
    fn entries_with_metadata_round_trip_through_postcard() {
        let value = Value::Tensor(Tensor::from_slice(vec![2, 2], &[1.0f32; 4]).unwrap());
        let entry = Entry::new(value.clone(), Timestamp(5), None, Version::ZERO);
        let (wire, _) = split_value(&value, DEFAULT_CHUNK_BYTES);
        let frame = ResponseFrame {
            id: 9,
            response: Response::Entry(Some(WireEntry {
                meta: entry.meta.clone(),
                body: wire.body,
            })),
        };
        let bytes = encode_frame(&frame);
        let back: ResponseFrame = decode_body(&bytes[HEADER_LEN..]).unwrap();
        assert_eq!(back, frame);
    }
}

#[cfg(test)]
mod flight_tests {
    use super::*;
    use crate::meta::{EntryMeta, Timestamp};
    use crate::version::Version;

    #[test]
    fn compute_requests_route_by_their_key_and_round_trip() {
        let requests = [
            Request::Compute {
                namespace: "default".into(),
                key: "video:1".into(),
                lease_ms: 5000,
                wait_ms: 2000,
            },
            Request::ComputeRenew {
                namespace: "default".into(),
                key: "video:1".into(),
                token: 7,
                lease_ms: 5000,
            },
            Request::ComputeRelease {
                namespace: "default".into(),
                key: "video:1".into(),
                token: 7,
            },
        ];
        for request in requests {
            assert_eq!(request.single_key(), Some(("default", "video:1")));
            let frame = RequestFrame {
                id: 3,
                epoch: 9,
                request,
            };
            let bytes = encode_frame(&frame);
            let back: RequestFrame = decode_body(&bytes[HEADER_LEN..]).unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn a_waited_for_value_streams_like_an_entry() {
        let value = Value::from(vec![7u8; 64]);
        let entry = crate::entry::Entry::new(value, Timestamp(1), None, Version::ZERO);
        let meta: EntryMeta = entry.meta;
        let response = Response::ComputeWaited(WireEntry {
            meta,
            body: Body::Streamed(64),
        });
        assert_eq!(response.streamed_lengths(), vec![64]);
        assert_eq!(response.kind(), "ComputeWaited");
    }
}
