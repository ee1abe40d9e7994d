//! Building tiers by name from configuration.
//!
//! A [`TierSpec`] names a tier kind and carries that kind's settings:
//!
//! ```toml
//! [[store.tiers]]
//! kind = "memory"
//! max_bytes = 268435456
//!
//! [[store.tiers]]
//! kind = "filesystem"
//! path = "/var/lib/strata/cache"
//! fsync = "periodic"
//! ```
//!
//! The [`TierRegistry`] maps kinds to factories. `memory` and `filesystem` are built in; a new
//! kind (a remote object store, say) is one [`TierRegistry::register`] call and needs no change
//! to [`Tiered`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fs::{FsConfig, FsTier};
use crate::memory::{MemoryConfig, MemoryTier};
use crate::tier::Tier;
use crate::tiered::{SetPolicy, Tiered};

/// One tier in a configuration: its kind, its place in the order, and its own settings.
#[derive(Clone, Debug, Deserialize)]
pub struct TierSpec {
    /// The registered kind (`memory`, `filesystem`, ...).
    pub kind: String,
    /// Lower is faster and is asked first; tiers without one keep their listed order after
    /// those with one. The reference's `priority`.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Whether the tier is used. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The kind's own settings.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

fn default_true() -> bool {
    true
}

/// A stack of tiers and its write policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TieredConfig {
    /// The tiers.
    pub tiers: Vec<TierSpec>,
    /// How many tiers a write must reach. Default `all`.
    #[serde(default)]
    pub set_policy: SetPolicy,
}

/// What a factory may need besides the tier's own settings.
#[derive(Clone, Debug)]
pub struct TierContext {
    /// The clock tiers judge expiry by.
    pub clock: Arc<dyn Clock>,
    /// Relative paths in tier settings are resolved against this directory.
    pub data_dir: PathBuf,
}

/// Builds one tier from its settings.
pub type TierFactory = Arc<dyn Fn(&TierSpec, &TierContext) -> Result<Arc<dyn Tier>> + Send + Sync>;

/// Tier kinds by name.
#[derive(Clone)]
pub struct TierRegistry {
    factories: BTreeMap<String, TierFactory>,
}

impl std::fmt::Debug for TierRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierRegistry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

/// Deserialises a kind's settings, naming the kind in any error.
pub fn parse_options<T: serde::de::DeserializeOwned>(spec: &TierSpec) -> Result<T> {
    serde_json::from_value(serde_json::Value::Object(spec.options.clone()))
        .map_err(|e| Error::Config(format!("tier `{}`: {e}", spec.kind)))
}

impl Default for TierRegistry {
    fn default() -> Self {
        let mut registry = Self {
            factories: BTreeMap::new(),
        };
        registry.register("memory", |spec, ctx| {
            let config: MemoryConfig = parse_options(spec)?;
            Ok(Arc::new(MemoryTier::new(config, Arc::clone(&ctx.clock))))
        });
        registry.register("filesystem", |spec, ctx| {
            let mut options = spec.options.clone();
            options
                .entry("path")
                .or_insert_with(|| serde_json::Value::String("cache".into()));
            let mut config: FsConfig = parse_options(&TierSpec {
                options,
                ..spec.clone()
            })?;
            if config.path.is_relative() {
                config.path = ctx.data_dir.join(&config.path);
            }
            Ok(Arc::new(FsTier::open(config, Arc::clone(&ctx.clock))?))
        });
        registry
    }
}

impl TierRegistry {
    /// A registry with the built-in kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a kind.
    pub fn register(
        &mut self,
        kind: &str,
        factory: impl Fn(&TierSpec, &TierContext) -> Result<Arc<dyn Tier>> + Send + Sync + 'static,
    ) {
        self.factories.insert(kind.to_owned(), Arc::new(factory));
    }

    /// The registered kinds.
    pub fn kinds(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// Builds one tier.
    pub fn build(&self, spec: &TierSpec, ctx: &TierContext) -> Result<Arc<dyn Tier>> {
        let factory = self.factories.get(&spec.kind).ok_or_else(|| {
            Error::Config(format!(
                "unknown tier kind `{}` (known: {})",
                spec.kind,
                self.kinds().join(", ")
            ))
        })?;
        factory(spec, ctx)
    }

    /// Builds every enabled tier of `config`, ordered by priority, into a [`Tiered`] store.
    pub fn build_tiered(&self, config: &TieredConfig, ctx: &TierContext) -> Result<Tiered> {
        let mut specs: Vec<(usize, &TierSpec)> = config
            .tiers
            .iter()
            .filter(|s| s.enabled)
            .enumerate()
            .collect();
        specs.sort_by_key(|(i, s)| (s.priority.unwrap_or(i32::MAX), *i));
        let tiers = specs
            .into_iter()
            .map(|(_, spec)| self.build(spec, ctx))
            .collect::<Result<Vec<_>>>()?;
        Tiered::new(tiers, config.set_policy, Arc::clone(&ctx.clock))
    }
}
