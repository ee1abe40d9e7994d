//! What a Strata client and a Strata node must agree on.
//!
//! Everything in this crate is a pure data type or a pure function: no I/O, no clocks, no
//! threads. The node, the store and the client library all build on it, so a value written by
//! one process is understood by every other one, on any platform.
//!
//! # Layout
//! - [`key`]: [`Namespace`], [`Key`] and [`EntryKey`], validated at construction so that a
//!   hostile name is rejected at the edge with a clear error.
//! - [`value`]: the tagged [`Value`] (raw bytes, [`Tensor`] embeddings, image [`Frame`]s,
//!   structured [`Record`]s) with zero-copy conversions to and from `ndarray`.
//! - [`version`]: [`Version`], a hybrid logical clock stamp plus node id, and the [`Hlc`]
//!   that issues them. Totally ordered; the newest version of a key wins.
//! - [`entry`]: [`Entry`], a value with its metadata, stamped with size and checksum.
//! - [`meta`]: [`EntryMeta`] (created/expiry times, size, format, version, checksum) and
//!   [`Timestamp`].
//! - [`codec`]: the payload codec that turns a value into the bytes kept on disk (raw bytes,
//!   `.npy` tensors, JPEG frames, JSON records) and back, with its checksum.
//! - [`ring`]: partitions, members, placement of partitions on members, and the [`Ring`]
//!   clients route by.
//! - [`wire`]: the client–node protocol: framing, requests, responses, wire errors.
//! - [`error`]: the [`Error`] enum for everything above.

pub mod codec;
pub mod entry;
pub mod error;
pub mod key;
pub mod meta;
pub mod ring;
pub mod value;
pub mod version;
pub mod wire;

pub use codec::{Payload, checksum, decode_payload, encode_payload};
pub use entry::Entry;
pub use error::{Error, Result};
pub use key::{EntryKey, Key, MAX_KEY_BYTES, MAX_NAMESPACE_LEN, Namespace};
pub use meta::{EntryMeta, Format, Timestamp};
pub use ring::{Member, MemberState, PartitionId, PartitionTable, Ring, RingParams};
pub use value::{DType, Element, Frame, FrameFormat, Record, Tensor, Value};
pub use version::{Hlc, NodeId, Version};
