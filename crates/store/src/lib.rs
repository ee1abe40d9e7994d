//! Strata's local storage: the tiers one node keeps its entries in.
//!
//! A node holds hot entries in memory over a filesystem tier. This crate is that stack and
//! nothing else — no network, no actors, no cluster — so it can be tested, benchmarked and
//! reasoned about on its own. The node crate drives it from writer actors and a janitor; a
//! single-process program can use it directly.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use strata_proto::{EntryKey, Key, Namespace, Value};
//! use strata_store::{FsConfig, FsTier, MemoryConfig, MemoryTier, SetPolicy, Tier, Tiered, system_clock};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let clock = system_clock();
//! let memory = MemoryTier::new(MemoryConfig::default(), clock.clone());
//! let disk = FsTier::open(FsConfig::new(dir.path()), clock.clone())?;
//! let store = Tiered::new(vec![Arc::new(memory), Arc::new(disk)], SetPolicy::All, clock)?;
//!
//! let key = EntryKey::new(Namespace::new("video_colpali_mv")?, Key::new("video:abc123:transcript")?);
//! store.set(&key, Value::from(b"hello".to_vec()), Some(Duration::from_secs(3600)))?;
//! assert!(store.get(&key)?.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`tier`]: the [`Tier`] trait every level implements, glob [`Pattern`]s, [`TierStats`].
//! - [`memory`]: [`MemoryTier`], byte-bounded LRU with per-entry TTL on moka.
//! - [`fs`]: [`FsTier`], the human-readable, crash-safe filesystem tier, and its
//!   [`layout`](fs::layout) (key → path).
//! - [`tiered`]: [`Tiered`], tiers stacked fastest first with promotion on hit.
//! - [`registry`]: [`TierRegistry`], building tiers by kind name from configuration.
//! - [`janitor`]: background expiry cleanup.
//! - [`clock`]: the injectable [`Clock`] (tests move a [`ManualClock`] instead of sleeping).
//! - [`error`]: the store's [`Error`].

pub mod clock;
pub mod error;
pub mod fs;
pub mod janitor;
pub mod memory;
pub mod registry;
pub mod tier;
pub mod tiered;

pub use clock::{Clock, ManualClock, SystemClock, system_clock};
pub use error::{Error, Result};
pub use fs::{FsConfig, FsTier, FsyncPolicy};
pub use janitor::Janitor;
pub use memory::{MemoryConfig, MemoryTier};
pub use registry::{TierContext, TierFactory, TierRegistry, TierSpec, TieredConfig};
pub use tier::{Pattern, Tier, TierStats};
pub use tiered::{ManagerStats, SetPolicy, Tiered, TieredStats};
