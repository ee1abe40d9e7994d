//! Executes requests against the node's tiers.
//!
//! The service is where a decoded request meets the store. Keys and namespaces arrive as
//! plain strings and are validated here, so a bad one is answered with an error that says
//! what is wrong. Reads take the fast path first — the memory tier, answered on the
//! connection's own task — and only a miss goes to a blocking thread to read the filesystem
//! tier. Writes are stamped with the node's hybrid logical clock and go through the writer
//! shard of their key (see [`actors`](crate::actors)), which keeps writes to one key in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use strata_proto::wire::{
    self, Body, ErrorCode, Request, Response, WireEntry, WireError, WireValue,
};
use strata_proto::{Entry, EntryKey, EntryMeta, Hlc, Key, Namespace, NodeId, Value};
use strata_store::{Clock, Pattern, Tier, Tiered};

use crate::actors::{Writers, store_error};
use crate::writeback::Pending;

/// Limits the service enforces on requests.
#[derive(Clone, Debug)]
pub struct ServiceLimits {
    /// Largest value payload.
    pub max_value_bytes: u64,
    /// Payloads above this are streamed in responses.
    pub inline_limit: usize,
    /// Most keys in one batch request.
    pub max_batch_keys: usize,
    /// Inline payload bytes one answer frame may carry; further entries are streamed, so a
    /// batch answer never outgrows the frame limit.
    pub answer_inline_budget: usize,
}

/// The request service of one node.
pub struct Service {
    node: NodeId,
    store: Arc<Tiered>,
    writers: Writers,
    /// Writes acknowledged from memory and not yet on disk (`write_mode = "back"`).
    pending: Option<Arc<Pending>>,
    clock: Arc<dyn Clock>,
    hlc: Mutex<Hlc>,
    limits: ServiceLimits,
    started: Instant,
}

/// A response and the bodies that follow its frame.
pub type Answer = (Response, Vec<Bytes>);

type Outcome<T> = Result<T, WireError>;

impl Service {
    /// A service over `store`, writing through `writers`.
    pub fn new(
        node: NodeId,
        store: Arc<Tiered>,
        writers: Writers,
        pending: Option<Arc<Pending>>,
        clock: Arc<dyn Clock>,
        limits: ServiceLimits,
    ) -> Self {
        Self {
            node,
            store,
            writers,
            pending,
            clock,
            hlc: Mutex::new(Hlc::new(node)),
            limits,
            started: Instant::now(),
        }
    }

    /// Answers one request. `bodies` are the streamed payloads that followed its frame.
    pub async fn handle(&self, request: Request, bodies: Vec<Bytes>) -> Answer {
        match self.dispatch(request, bodies).await {
            Ok(answer) => answer,
            Err(e) => (Response::Error(e), Vec::new()),
        }
    }

    async fn dispatch(&self, request: Request, bodies: Vec<Bytes>) -> Outcome<Answer> {
        let mut bodies = bodies.into_iter();
        Ok(match request {
            Request::Ping => (
                Response::Pong {
                    node: self.node,
                    protocol: wire::PROTOCOL_VERSION,
                },
                Vec::new(),
            ),
            Request::Get { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                let mut out = Vec::new();
                let mut budget = self.limits.answer_inline_budget;
                let entry = self
                    .get(key)
                    .await?
                    .map(|e| self.wire_entry(e, &mut out, &mut budget));
                (Response::Entry(entry), out)
            }
            Request::Set {
                namespace,
                key,
                ttl_ms,
                value,
            } => {
                let key = entry_key(&namespace, &key)?;
                let value = self.take_value(value, &mut bodies)?;
                self.write(key, value, ttl_ms).await?;
                (Response::Stored, Vec::new())
            }
            Request::Delete { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                (Response::Deleted(self.delete(key).await?), Vec::new())
            }
            Request::Exists { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                (
                    Response::Exists(self.metadata(key).await?.is_some()),
                    Vec::new(),
                )
            }
            Request::Metadata { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                (Response::Metadata(self.metadata(key).await?), Vec::new())
            }
            Request::Clear { namespace, pattern } => {
                let namespace = parse_namespace(&namespace)?;
                let pattern = parse_pattern(pattern.as_deref())?;
                (
                    Response::Cleared(self.clear(namespace, pattern).await?),
                    Vec::new(),
                )
            }
            Request::ListKeys {
                namespace,
                pattern,
                with_meta,
                after,
                limit,
            } => {
                let namespace = parse_namespace(&namespace)?;
                let pattern = parse_pattern(pattern.as_deref())?;
                let all = self.list_keys(namespace, pattern, with_meta).await?;
                let (keys, next) = page(all, after.as_deref(), limit);
                (Response::Keys { keys, next }, Vec::new())
            }
            Request::Stats => (Response::Stats(self.stats_json()), Vec::new()),
            Request::GetMany { namespace, keys } => {
                self.check_batch(keys.len())?;
                let namespace = parse_namespace(&namespace)?;
                let keys = keys
                    .iter()
                    .map(|k| parse_key(k).map(|k| EntryKey::new(namespace.clone(), k)))
                    .collect::<Outcome<Vec<_>>>()?;
                let found = self.get_many(keys).await?;
                let mut out = Vec::new();
                let mut budget = self.limits.answer_inline_budget;
                let entries = found
                    .into_iter()
                    .map(|e| e.map(|e| self.wire_entry(e, &mut out, &mut budget)))
                    .collect();
                (Response::Entries(entries), out)
            }
            Request::SetMany {
                namespace,
                ttl_ms,
                items,
            } => {
                self.check_batch(items.len())?;
                let namespace = parse_namespace(&namespace)?;
                // Decode everything first: a malformed item fails the request before anything is written.
                let mut writes = Vec::with_capacity(items.len());
                let mut outcomes: Vec<Option<WireError>> = Vec::with_capacity(items.len());
                for (key, value) in items {
                    let value = self.take_value(value, &mut bodies)?;
                    match parse_key(&key) {
                        Ok(key) => {
                            writes.push(Some((EntryKey::new(namespace.clone(), key), value)));
                            outcomes.push(None);
                        }
                        Err(e) => {
                            writes.push(None);
                            outcomes.push(Some(e));
                        }
                    }
                }
                let results = futures::future::join_all(writes.into_iter().map(|w| async move {
                    match w {
                        Some((key, value)) => self.write(key, value, ttl_ms).await.err(),
                        None => None,
                    }
                }))
                .await;
                for (slot, result) in outcomes.iter_mut().zip(results) {
                    if slot.is_none() {
                        *slot = result;
                    }
                }
                (Response::StoredMany(outcomes), Vec::new())
            }
            other => {
                return Err(WireError::new(
                    ErrorCode::Forbidden,
                    format!("{} is not served by this node", other.kind()),
                ));
            }
        })
    }

    fn check_batch(&self, n: usize) -> Outcome<()> {
        if n > self.limits.max_batch_keys {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "{n} keys in one batch exceed the limit of {}",
                    self.limits.max_batch_keys
                ),
            ));
        }
        Ok(())
    }

    /// Rebuilds a value from its wire form, taking its payload from the frame or the stream.
    fn take_value(
        &self,
        value: WireValue,
        bodies: &mut impl Iterator<Item = Bytes>,
    ) -> Outcome<Value> {
        let payload = match value.body {
            Body::Inline(bytes) => bytes,
            Body::Streamed(_) => bodies.next().ok_or_else(|| {
                WireError::new(ErrorCode::Malformed, "a streamed value's body is missing")
            })?,
        };
        if payload.len() as u64 > self.limits.max_value_bytes {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "value of {} bytes exceeds the {}-byte limit",
                    payload.len(),
                    self.limits.max_value_bytes
                ),
            ));
        }
        wire::join_value(&value.format, payload)
    }

    /// Stamps a value with this node's clock: creation time, expiry and version.
    fn stamp(&self, value: Value, ttl_ms: Option<u64>) -> Entry {
        let now = self.clock.now();
        let version = self.hlc.lock().tick(now.as_millis());
        Entry::new(value, now, ttl_ms.map(Duration::from_millis), version)
    }

    /// The wire form of an entry: inline while the answer's inline budget lasts, streamed
    /// (its buffers appended to `out`) otherwise.
    fn wire_entry(&self, entry: Entry, out: &mut Vec<Bytes>, budget: &mut usize) -> WireEntry {
        let size = usize::try_from(entry.meta.size_bytes).unwrap_or(usize::MAX);
        let inline_limit = if size <= *budget {
            self.limits.inline_limit
        } else {
            0
        };
        let (wire, streamed) = wire::split_value(&entry.value, inline_limit);
        if matches!(wire.body, Body::Inline(_)) {
            *budget -= size;
        }
        if let Some(parts) = streamed {
            out.extend(parts);
        }
        WireEntry {
            meta: entry.meta,
            body: wire.body,
        }
    }

    /// Stores a value: in write-back mode once it is in memory and pending (the writer of its
    /// key flushes it), otherwise once the writer has put it in every tier.
    async fn write(&self, key: EntryKey, value: Value, ttl_ms: Option<u64>) -> Outcome<()> {
        let Some(pending) = &self.pending else {
            return self.writers.put(key, self.stamp(value, ttl_ms)).await;
        };
        pending.wait_for_room(value.payload_len() as u64).await;
        let newly_pending = {
            // The version is assigned under the key's lock, so versions of one key reach
            // memory and the pending map in order.
            let mut shard = pending.lock(&key);
            let entry = self.stamp(value, ttl_ms);
            self.store
                .put_fast(&key, entry.clone())
                .map_err(store_error)?;
            pending.insert(&mut shard, key.clone(), entry)
        };
        if newly_pending {
            self.writers.flush(key);
        }
        Ok(())
    }

    async fn delete(&self, key: EntryKey) -> Outcome<bool> {
        let was_pending = match &self.pending {
            Some(pending) => pending.remove(&mut pending.lock(&key), &key),
            None => false,
        };
        // Through the key's writer: after any flush of it already queued.
        Ok(self.writers.delete(key).await? || was_pending)
    }

    async fn clear(&self, namespace: Namespace, pattern: Option<Pattern>) -> Outcome<u64> {
        let mut only_pending = BTreeSet::new();
        if let Some(pending) = &self.pending {
            only_pending.extend(
                pending
                    .matching(&namespace, pattern.as_ref())
                    .into_iter()
                    .map(|(k, _)| k),
            );
            pending.remove_matching(&namespace, pattern.as_ref());
            // Let flushes already under way finish, so none lands after the clear.
            self.writers.barrier().await;
        }
        let (listed, removed) = self
            .blocking(move |store| {
                let listed = store.list_keys(&namespace, pattern.as_ref(), false)?;
                Ok((listed, store.clear(&namespace, pattern.as_ref())?))
            })
            .await?;
        for (key, _) in listed {
            only_pending.remove(&key);
        }
        Ok(removed + only_pending.len() as u64)
    }

    async fn list_keys(
        &self,
        namespace: Namespace,
        pattern: Option<Pattern>,
        with_meta: bool,
    ) -> Outcome<Vec<(Key, Option<EntryMeta>)>> {
        let pending = self
            .pending
            .as_ref()
            .map(|p| p.matching(&namespace, pattern.as_ref()))
            .unwrap_or_default();
        let stored = self
            .blocking(move |store| store.list_keys(&namespace, pattern.as_ref(), with_meta))
            .await?;
        let mut merged: BTreeMap<Key, Option<EntryMeta>> = stored.into_iter().collect();
        for (key, meta) in pending {
            merged.insert(key, with_meta.then_some(meta));
        }
        Ok(merged.into_iter().collect())
    }

    /// A write acknowledged but not yet on disk.
    fn pending_entry(&self, key: &EntryKey) -> Option<Entry> {
        let entry = self.pending.as_ref()?.get(key)?;
        (!entry.is_expired(self.clock.now())).then_some(entry)
    }

    async fn get(&self, key: EntryKey) -> Outcome<Option<Entry>> {
        // A memory hit is answered here, with no thread or mailbox hop.
        if let Some(entry) = self.store.get_fast(&key).map_err(store_error)? {
            return Ok(Some(entry));
        }
        if let Some(entry) = self.pending_entry(&key) {
            return Ok(Some(entry));
        }
        self.blocking(move |store| store.get_slow(&key)).await
    }

    async fn get_many(&self, keys: Vec<EntryKey>) -> Outcome<Vec<Option<Entry>>> {
        let mut found = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            match self
                .store
                .get_fast(&key)
                .map_err(store_error)?
                .or_else(|| self.pending_entry(&key))
            {
                Some(entry) => found.push(Some(entry)),
                None => {
                    found.push(None);
                    misses.push((i, key));
                }
            }
        }
        if !misses.is_empty() {
            let slow = self
                .blocking(move |store| {
                    misses
                        .into_iter()
                        .map(|(i, key)| store.get_slow(&key).map(|e| (i, e)))
                        .collect::<strata_store::Result<Vec<_>>>()
                })
                .await?;
            for (i, entry) in slow {
                found[i] = entry;
            }
        }
        Ok(found)
    }

    async fn metadata(&self, key: EntryKey) -> Outcome<Option<EntryMeta>> {
        if let Some(first) = self.store.tiers().first()
            && let Some(meta) = first.metadata(&key).map_err(store_error)?
        {
            return Ok(Some(meta));
        }
        if let Some(entry) = self.pending_entry(&key) {
            return Ok(Some(entry.meta));
        }
        self.blocking(move |store| store.metadata(&key)).await
    }

    /// Runs store work that may touch the disk on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Tiered) -> strata_store::Result<T> + Send + 'static,
    ) -> Outcome<T> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(result) => result.map_err(store_error),
            Err(e) => Err(WireError::new(
                ErrorCode::Internal,
                format!("storage task failed: {e}"),
            )),
        }
    }

    /// Node identity and the reference's statistics shape, as JSON.
    pub fn stats_json(&self) -> String {
        let stats = self.store.tiered_stats();
        serde_json::json!({
            "node": {
                "id": self.node.0,
                "protocol": wire::PROTOCOL_VERSION,
                "uptime_secs": self.started.elapsed().as_secs(),
            },
            "manager": stats.manager,
            "tiers": stats.tiers,
            "write_back": {
                "enabled": self.pending.is_some(),
                "pending_keys": self.pending.as_ref().map_or(0, |p| p.len()),
                "pending_bytes": self.pending.as_ref().map_or(0, |p| p.bytes()),
            },
        })
        .to_string()
    }
}

fn parse_namespace(namespace: &str) -> Outcome<Namespace> {
    Namespace::new(namespace).map_err(WireError::from)
}

fn parse_key(key: &str) -> Outcome<Key> {
    Key::new(key).map_err(WireError::from)
}

fn entry_key(namespace: &str, key: &str) -> Outcome<EntryKey> {
    Ok(EntryKey::new(parse_namespace(namespace)?, parse_key(key)?))
}

fn parse_pattern(pattern: Option<&str>) -> Outcome<Option<Pattern>> {
    pattern
        .map(|p| {
            Pattern::new(p).map_err(|e| WireError::new(ErrorCode::InvalidPattern, e.to_string()))
        })
        .transpose()
}

/// One page of a sorted key listing: the keys after `after`, at most `limit` of them.
fn page(
    all: Vec<(Key, Option<EntryMeta>)>,
    after: Option<&str>,
    limit: u32,
) -> (Vec<(String, Option<EntryMeta>)>, Option<String>) {
    let limit = limit.clamp(1, 10_000) as usize;
    let start = after.map_or(0, |a| all.partition_point(|(k, _)| k.as_str() <= a));
    let rest = &all[start..];
    let keys: Vec<_> = rest
        .iter()
        .take(limit)
        .map(|(k, m)| (k.as_str().to_owned(), m.clone()))
        .collect();
    let next = (rest.len() > limit)
        .then(|| keys.last().map(|(k, _)| k.clone()))
        .flatten();
    (keys, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(Key, Option<EntryMeta>)> {
        (0..n)
            .map(|i| (Key::new(format!("k{i:03}")).unwrap(), None))
            .collect()
    }

    #[test]
    fn pages_cover_every_key_once() {
        let all = keys(25);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = page(all.clone(), after.as_deref(), 10);
            seen.extend(page.into_iter().map(|(k, _)| k));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert_eq!(seen.first().map(String::as_str), Some("k000"));
        assert_eq!(seen.last().map(String::as_str), Some("k024"));
        let (empty, next) = page(all, Some("k024"), 10);
        assert!(empty.is_empty() && next.is_none());
    }
}
