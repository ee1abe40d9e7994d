//! Entry metadata: what is known about a stored value besides its bytes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::value::{DType, FrameFormat};
use crate::version::Version;

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current system time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Seconds since the epoch, with millisecond precision (the reference's float seconds).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// From float seconds since the epoch, rounded to the millisecond. Negative and
    /// non-finite inputs clamp to the epoch.
    pub fn from_secs_f64(secs: f64) -> Self {
        if secs.is_finite() && secs > 0.0 {
            Self((secs * 1000.0).round() as u64)
        } else {
            Self(0)
        }
    }

    /// This time plus `d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self(ms)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.as_secs_f64())
    }
}

/// What kind of value an entry holds and how its payload is laid out. Recorded in the
/// metadata, so a payload can be decoded (and checked) without guessing.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Opaque bytes; stored as `.bin`.
    Bytes,
    /// A tensor; stored as a NumPy `.npy` file.
    Tensor {
        /// Element type.
        dtype: DType,
        /// Shape, row-major.
        shape: Vec<u64>,
    },
    /// An image frame; stored as `.jpg`, `.png` or `.rgb`.
    Frame {
        /// Pixel encoding.
        format: FrameFormat,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A JSON record; stored as `.json`.
    Record,
}

impl Format {
    /// Every extension a payload file can have, for code that must find a file without
    /// knowing its format.
    pub const EXTENSIONS: [&'static str; 6] = ["bin", "npy", "jpg", "png", "rgb", "json"];

    /// The file extension of a payload of this format.
    pub fn extension(&self) -> &'static str {
        match self {
            Format::Bytes => "bin",
            Format::Tensor { .. } => "npy",
            Format::Frame {
                format: FrameFormat::Jpeg,
                ..
            } => "jpg",
            Format::Frame {
                format: FrameFormat::Png,
                ..
            } => "png",
            Format::Frame {
                format: FrameFormat::Rgb8,
                ..
            } => "rgb",
            Format::Record => "json",
        }
    }

    /// A short name for humans and metrics (`bytes`, `tensor`, `jpeg`, `png`, `rgb8`,
    /// `record`).
    pub fn name(&self) -> &'static str {
        match self {
            Format::Bytes => "bytes",
            Format::Tensor { .. } => "tensor",
            Format::Frame {
                format: FrameFormat::Jpeg,
                ..
            } => "jpeg",
            Format::Frame {
                format: FrameFormat::Png,
                ..
            } => "png",
            Format::Frame {
                format: FrameFormat::Rgb8,
                ..
            } => "rgb8",
            Format::Record => "record",
        }
    }
}

/// Everything known about a stored entry except its payload.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EntryMeta {
    /// When the value was written (by the node that assigned its version).
    pub created_at: Timestamp,
    /// When the value stops being served; `None` means never.
    pub expires_at: Option<Timestamp>,
    /// Size of the stored payload in bytes (for tensors, including the `.npy` header).
    pub size_bytes: u64,
    /// How the payload is laid out.
    pub format: Format,
    /// The write's version; the newest version of a key wins.
    pub version: Version,
    /// CRC-32C of the stored payload bytes.
    pub checksum: u32,
}

impl EntryMeta {
    /// Whether the entry has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The time to live the entry was written with, if any.
    pub fn ttl(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_since(self.created_at))
    }

    /// Time left before expiry at `now`; `None` if the entry never expires.
    pub fn remaining_ttl(&self, now: Timestamp) -> Option<Duration> {
        self.expires_at.map(|at| at.saturating_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let meta = EntryMeta {
            created_at: Timestamp(1_000),
            expires_at: Some(Timestamp(4_000)),
            size_bytes: 1,
            format: Format::Bytes,
            version: Version::ZERO,
            checksum: 0,
        };
        assert!(!meta.is_expired(Timestamp(3_999)));
        assert!(meta.is_expired(Timestamp(4_000)));
        assert_eq!(meta.ttl(), Some(Duration::from_secs(3)));
        assert_eq!(
            meta.remaining_ttl(Timestamp(3_000)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn seconds_round_trip() {
        let t = Timestamp(1_696_723_200_123);
        assert_eq!(Timestamp::from_secs_f64(t.as_secs_f64()), t);
        assert_eq!(Timestamp::from_secs_f64(f64::NAN), Timestamp(0));
        assert_eq!(Timestamp::from_secs_f64(-5.0), Timestamp(0));
    }

    #[test]
    fn extensions_follow_the_kind() {
        assert_eq!(Format::Bytes.extension(), "bin");
        assert_eq!(Format::Record.extension(), "json");
        let jpeg = Format::Frame {
            format: FrameFormat::Jpeg,
            width: 1,
            height: 1,
        };
        assert_eq!(jpeg.extension(), "jpg");
        for f in [Format::Bytes, Format::Record, jpeg] {
            assert!(Format::EXTENSIONS.contains(&f.extension()));
        }
    }
}
