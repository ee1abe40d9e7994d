//! The `.meta` sidecar: a small JSON file next to each data file, readable with `cat`.
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "namespace": "video_colpali_mv",
//!   "key": "video:abc123:keyframes:frame_42",
//!   "created_at": 1732492800.123,
//!   "expires_at": 1733097600.123,
//!   "ttl": 604800.0,
//!   "size_bytes": 15234,
//!   "format": "jpeg",
//!   "value": { "kind": "frame", "format": "jpeg", "width": 1280, "height": 720 },
//!   "version": "1732492800123.0@1",
//!   "checksum": "crc32c:1a2b3c4d"
//! }
//! ```
//!
//! Times are float seconds since the epoch (as in the reference), with millisecond precision.
//! `value` is the full format descriptor the payload is decoded by; `checksum` covers the data
//! file byte for byte. `format_version` lets a later release change this file and still read
//! old ones.

use serde::{Deserialize, Serialize};
use strata_proto::{EntryKey, EntryMeta, Format, Key, Namespace, Timestamp, Version};

/// The sidecar format this build writes and reads.
pub(crate) const SIDECAR_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(crate) struct Sidecar {
    format_version: u32,
    namespace: Namespace,
    key: Key,
    created_at: f64,
    expires_at: Option<f64>,
    ttl: Option<f64>,
    size_bytes: u64,
    format: String,
    value: Format,
    version: String,
    checksum: String,
}

impl Sidecar {
    pub(crate) fn new(key: &EntryKey, meta: &EntryMeta) -> Self {
        Self {
            format_version: SIDECAR_VERSION,
            namespace: key.namespace.clone(),
            key: key.key.clone(),
            created_at: meta.created_at.as_secs_f64(),
            expires_at: meta.expires_at.map(Timestamp::as_secs_f64),
            ttl: meta.ttl().map(|d| d.as_secs_f64()),
            size_bytes: meta.size_bytes,
            format: meta.format.name().to_owned(),
            value: meta.format.clone(),
            version: meta.version.to_string(),
            checksum: format!("crc32c:{:08x}", meta.checksum),
        }
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        // Serialising plain data into memory cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a sidecar, or says why it is not one.
    pub(crate) fn parse(bytes: &[u8]) -> Result<(EntryKey, EntryMeta), String> {
        let s: Sidecar = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.format_version != SIDECAR_VERSION {
            return Err(format!(
                "sidecar format_version {} is not {SIDECAR_VERSION}",
                s.format_version
            ));
        }
        let version: Version = s
            .version
            .parse()
            .map_err(|e: strata_proto::Error| e.to_string())?;
        let checksum = s
            .checksum
            .strip_prefix("crc32c:")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad checksum field {:?}", s.checksum))?;
        let meta = EntryMeta {
            created_at: Timestamp::from_secs_f64(s.created_at),
            expires_at: s.expires_at.map(Timestamp::from_secs_f64),
            size_bytes: s.size_bytes,
            format: s.value,
            version,
            checksum,
        };
        Ok((EntryKey::new(s.namespace, s.key), meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use strata_proto::{Entry, NodeId, Value};

    #[test]
    fn round_trips_and_reads_like_the_reference() {
        let key = EntryKey::new(
            Namespace::new("video_colpali_mv").unwrap(),
            Key::new("video:abc123:transcript").unwrap(),
        );
        let version = Version {
            physical_ms: 1_732_492_800_123,
            logical: 2,
            node: NodeId(3),
        };
        let entry = Entry::new(
            Value::from(b"hello".to_vec()),
            Timestamp(1_732_492_800_123),
            Some(Duration::from_secs(604_800)),
            version,
        );
        let json = Sidecar::new(&key, &entry.meta).to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        for field in [
            "\"key\": \"video:abc123:transcript\"",
            "\"ttl\": 604800.0",
            "\"size_bytes\": 5",
            "\"format\": \"bytes\"",
            "\"version\": \"1732492800123.2@3\"",
        ] {
            assert!(text.contains(field), "{field} missing from\n{text}");
        }
        let (k, meta) = Sidecar::parse(&json).unwrap();
        assert_eq!(k, key);
        assert_eq!(meta, entry.meta);
    }

    #[test]
    fn damaged_sidecars_are_rejected() {
        assert!(Sidecar::parse(b"{\"format_version\": 1").is_err());
        assert!(Sidecar::parse(b"").is_err());
        assert!(Sidecar::parse(b"{\"format_version\": 9}").is_err());
    }
}
