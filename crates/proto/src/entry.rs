//! [`Entry`]: a value together with its metadata, as tiers store it and nodes ship it.

use std::time::Duration;

use crate::codec::encode_payload;
use crate::meta::{EntryMeta, Timestamp};
use crate::value::Value;
use crate::version::Version;

/// A stored value and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Times, size, format, version and checksum.
    pub meta: EntryMeta,
    /// The value itself.
    pub value: Value,
}

impl Entry {
    /// Stamps `value` as written at `created_at` with `version`, expiring `ttl` later (never,
    /// if `ttl` is `None`). Size and checksum are those of the encoded payload, so any tier or
    /// replica can verify the bytes it holds against them.
    pub fn new(
        value: Value,
        created_at: Timestamp,
        ttl: Option<Duration>,
        version: Version,
    ) -> Self {
        let payload = encode_payload(&value);
        let meta = EntryMeta {
            created_at,
            expires_at: ttl.map(|ttl| created_at.saturating_add(ttl)),
            size_bytes: payload.len() as u64,
            format: value.format(),
            version,
            checksum: payload.checksum(),
        };
        Self { meta, value }
    }

    /// Whether the entry has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.meta.is_expired(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{checksum, encode_payload};

    #[test]
    fn meta_describes_the_payload() {
        let value = Value::from(b"hello".to_vec());
        let e = Entry::new(
            value.clone(),
            Timestamp(1_000),
            Some(Duration::from_secs(2)),
            Version::ZERO,
        );
        assert_eq!(e.meta.size_bytes, 5);
        assert_eq!(e.meta.expires_at, Some(Timestamp(3_000)));
        assert_eq!(
            e.meta.checksum,
            checksum(&encode_payload(&value).to_bytes())
        );
        assert!(!e.is_expired(Timestamp(2_999)));
        assert!(e.is_expired(Timestamp(3_000)));
        let forever = Entry::new(value, Timestamp(1_000), None, Version::ZERO);
        assert!(!forever.is_expired(Timestamp(u64::MAX)));
    }
}
