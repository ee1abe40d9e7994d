//! Namespaces and keys, validated at construction.
//!
//! Every entry lives in a [`Namespace`] (a tenant or pipeline profile such as
//! `video_colpali_mv`) under a [`Key`] (`video:abc123:keyframes:frame_42`). Both are checked
//! once, when they are made, so the rest of the system can rely on them: a namespace is a safe
//! directory name, a key is printable UTF-8 of bounded length. Both wrap an `Arc<str>` so that
//! cloning one (as every cache lookup does) is a reference-count bump, not an allocation.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result, printable};

/// Longest namespace, in characters. Namespaces become directory names, so they stay short.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Longest key, in bytes of UTF-8. Long enough for keys built from many parameters, short
/// enough that a key always fits in one request frame and one file path (with a hashed
/// fallback on disk).
pub const MAX_KEY_BYTES: usize = 1024;

/// A validated namespace: 1–64 characters of `[A-Za-z0-9_.-]`, not starting with a dot (so it
/// is never `.`, `..` or a hidden directory).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// The namespace used when a client names none.
    pub const DEFAULT: &'static str = "default";

    /// Validates `name` and makes a namespace of it.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        let invalid = |reason| Error::InvalidNamespace {
            namespace: printable(name),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if name.chars().count() > MAX_NAMESPACE_LEN {
            return Err(invalid("longer than 64 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(invalid("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"));
        }
        if name.starts_with('.') {
            return Err(invalid("must not start with '.'"));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The `default` namespace.
    pub fn default_namespace() -> Self {
        Self(Arc::from(Self::DEFAULT))
    }

    /// The namespace as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated key: 1–1024 bytes of UTF-8 with no NUL and no control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Validates `key` and makes a key of it.
    pub fn new(key: impl AsRef<str>) -> Result<Self> {
        let key = key.as_ref();
        let invalid = |reason: String| Error::InvalidKey {
            key: printable(key),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("must not be empty".into()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid(format!(
                "{} bytes is longer than the {MAX_KEY_BYTES}-byte limit",
                key.len()
            )));
        }
        if let Some((at, c)) = key.char_indices().find(|(_, c)| c.is_control()) {
            return Err(invalid(format!(
                "control character U+{:04X} at byte {at}",
                c as u32
            )));
        }
        Ok(Self(Arc::from(key)))
    }

    /// Validates a key given as raw bytes (as read from a wire or a file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let key = std::str::from_utf8(bytes).map_err(|e| Error::InvalidKey {
            key: printable(&String::from_utf8_lossy(bytes)),
            reason: format!("not UTF-8 ({e})"),
        })?;
        Self::new(key)
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A namespace and a key together: the full identity of an entry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct EntryKey {
    /// The namespace the entry lives in.
    pub namespace: Namespace,
    /// The key within the namespace.
    pub key: Key,
}

impl EntryKey {
    /// Pairs a namespace and a key.
    pub fn new(namespace: Namespace, key: Key) -> Self {
        Self { namespace, key }
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.key)
    }
}

macro_rules! string_newtype {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        // Deserialising validates: a key from the network or a file is never trusted.
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_newtype!(Namespace);
string_newtype!(Key);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        for ok in [
            "default",
            "video_colpali_mv",
            "a",
            "A-b.c_9",
            &"x".repeat(64),
        ] {
            assert!(Namespace::new(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ns:1",
            "é",
            &"x".repeat(65),
        ] {
            assert!(Namespace::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn key_rules() {
        for ok in [
            "video:abc123:keyframes:frame_42",
            "../../etc/passwd",
            "日本語:キー",
            &"k".repeat(1024),
        ] {
            assert!(Key::new(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "a\0b",
            "tab\there",
            "nl\n",
            "del\u{7f}",
            "c1\u{85}",
            &"k".repeat(1025),
        ] {
            assert!(Key::new(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Key::from_bytes(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = Key::new("a\0b").unwrap_err().to_string();
        assert!(err.contains("U+0000"), "{err}");
        let err = Namespace::new("a/b").unwrap_err().to_string();
        assert!(err.contains("only A-Z"), "{err}");
    }

    #[test]
    fn deserialising_validates() {
        let bad: std::result::Result<Key, _> = serde_json::from_str("\"a\\u0000b\"");
        assert!(bad.is_err());
        let good: Key = serde_json::from_str("\"video:x\"").unwrap();
        assert_eq!(good.as_str(), "video:x");
    }
}
