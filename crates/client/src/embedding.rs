//! [`EmbeddingCache`]: embeddings of texts, keyed by model and text, shared by a fleet.
//!
//! An embedding of `text` by `model` is stored under the key
//! `embedding:{model}:{h}`, where `h` is the first 16 hex digits of
//! `sha256("{model}:{text}")` — the reference's key, so an agent of the reference and a Strata
//! agent find each other's entries by the same name. The value is a [`Tensor`] (element
//! type, shape and little-endian bytes), so the dtype and shape of the array come back
//! exactly as they went in (`f16`, `bf16`, `f32`, `f64`, `i8`, `u8`, and the wider
//! integers). On disk it is an `.npy` file numpy opens.
//!
//! Moving data: an owned array in standard (row-major) layout is handed to the client without
//! copying ([`EmbeddingCache::set_embedding_owned`]); a borrowed contiguous array is copied
//! once with a byte copy ([`EmbeddingCache::set_embedding`]); nothing is converted element by
//! element on little-endian machines. Reading copies the bytes once into a new array (network
//! buffers are not aligned for every element type); [`EmbeddingCache::get_tensor`] hands out
//! the stored tensor itself, whose [`view`](strata_proto::Tensor::view) is zero-copy when the
//! alignment allows.
//!
//! Batches go through [`Client::get_many`] and [`Client::set_many`], which group the keys by
//! owning node and run the groups in parallel.
//!
//! Caveats: unlike the reference, no text preview, model name or timestamp is stored beside
//! the array (the entry's metadata has its creation time). The hit/miss counters are this
//! cache object's, not the cluster's.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ndarray::{Array, ArrayBase, ArrayD, Data, Dimension};
use sha2::{Digest, Sha256};
use strata_proto::{DType, Element, Key, Namespace, Tensor, Value};

use crate::cache_error::CacheError;
use crate::client::Client;
use crate::flight::{ComputeError, ComputeOptions, Origin};

/// Hex digits of the SHA-256 digest kept in the key, as in the reference.
pub const KEY_HASH_HEX_DIGITS: usize = 16;

/// Namespace an [`EmbeddingCache`] uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "embeddings";

/// The key of the embedding of `text` by `model`:
/// `embedding:{model}:{first 16 hex digits of sha256("{model}:{text}")}`.
pub fn embedding_key(model: &str, text: &str) -> String {
    let digest = Sha256::digest(format!("{model}:{text}").as_bytes());
    let hex = hex::encode(digest);
    format!("embedding:{model}:{}", &hex[..KEY_HASH_HEX_DIGITS])
}

/// Parses a dtype name: the Strata names (`f32`, `bf16`, ...) or the numpy ones (`float32`,
/// `bfloat16`, `uint8`, ...).
pub fn parse_dtype(name: &str) -> Result<DType, CacheError> {
    Ok(match name {
        "f16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        "f32" | "float32" | "float" => DType::F32,
        "f64" | "float64" | "double" => DType::F64,
        "i8" | "int8" => DType::I8,
        "u8" | "uint8" => DType::U8,
        "i16" | "int16" => DType::I16,
        "i32" | "int32" => DType::I32,
        "i64" | "int64" => DType::I64,
        other => return Err(CacheError::UnknownDType(other.to_owned())),
    })
}

/// Makes a tensor from raw parts, as another language hands them over: a dtype name, a shape,
/// and the little-endian element bytes. Fails with [`CacheError::UnknownDType`] or
/// [`CacheError::ShapeMismatch`].
pub fn tensor_from_raw(dtype: &str, shape: Vec<usize>, data: Bytes) -> Result<Tensor, CacheError> {
    let dtype = parse_dtype(dtype)?;
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX);
    if data.len() != expected {
        return Err(CacheError::ShapeMismatch {
            dtype,
            shape,
            expected,
            actual: data.len(),
        });
    }
    Tensor::new(dtype, shape, data).map_err(|e| CacheError::InvalidInput(e.to_string()))
}

/// Hit and miss counts of an [`EmbeddingCache`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmbeddingStats {
    /// Lookups that found an embedding.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// `hits + misses`.
    pub total_requests: u64,
    /// `hits / total_requests`, 0 before the first lookup.
    pub hit_rate: f64,
}

/// Builds an [`EmbeddingCache`]: namespace and TTL.
#[derive(Debug)]
pub struct EmbeddingCacheBuilder {
    client: Client,
    namespace: Namespace,
    ttl: Option<Duration>,
}

impl EmbeddingCacheBuilder {
    /// Stores the embeddings in `namespace` (default [`DEFAULT_NAMESPACE`]).
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    /// Lets every embedding this cache stores expire after `ttl` (default: never — an
    /// embedding of a text by a model does not go stale; the cluster's eviction bounds the
    /// space).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The cache.
    pub fn build(self) -> EmbeddingCache {
        EmbeddingCache {
            client: self.client,
            namespace: self.namespace,
            ttl: self.ttl,
            counters: Arc::default(),
        }
    }
}

#[derive(Default, Debug)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Embeddings of texts by models, stored in a Strata cluster. Cheap to clone; clones share
/// the statistics.
#[derive(Clone, Debug)]
pub struct EmbeddingCache {
    client: Client,
    namespace: Namespace,
    ttl: Option<Duration>,
    counters: Arc<Counters>,
}

impl EmbeddingCache {
    /// A builder over `client`.
    pub fn builder(client: Client) -> EmbeddingCacheBuilder {
        EmbeddingCacheBuilder {
            client,
            // The constant is a valid namespace; fall back to the default one regardless.
            namespace: Namespace::new(DEFAULT_NAMESPACE)
                .unwrap_or_else(|_| Namespace::default_namespace()),
            ttl: None,
        }
    }

    /// A cache over `client` with the default namespace and no TTL.
    pub fn new(client: Client) -> Self {
        Self::builder(client).build()
    }

    /// The namespace the embeddings live in.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The TTL of the embeddings this cache stores.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Hits, misses and hit rate of the lookups made through this cache (and its clones).
    pub fn stats(&self) -> EmbeddingStats {
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        let total_requests = hits + misses;
        let hit_rate = if total_requests == 0 {
            0.0
        } else {
            hits as f64 / total_requests as f64
        };
        EmbeddingStats {
            hits,
            misses,
            total_requests,
            hit_rate,
        }
    }

    /// The embedding of `text` by `model` as an array of `A`, or `None` if none is cached.
    /// Fails with [`CacheError::DTypeMismatch`] if it was stored with another element type
    /// (use [`EmbeddingCache::get_tensor`] when the type is not known).
    pub async fn get_embedding<A: Element>(
        &self,
        text: &str,
        model: &str,
    ) -> Result<Option<ArrayD<A>>, CacheError> {
        let key = key_for(model, text)?;
        let tensor = self.get_tensor_at(&key).await?;
        tensor.map(|t| to_array::<A>(&key, &t)).transpose()
    }

    /// The stored tensor of `text` by `model` (dtype, shape, bytes), or `None`.
    pub async fn get_tensor(&self, text: &str, model: &str) -> Result<Option<Tensor>, CacheError> {
        let key = key_for(model, text)?;
        self.get_tensor_at(&key).await
    }

    async fn get_tensor_at(&self, key: &Key) -> Result<Option<Tensor>, CacheError> {
        let entry = self.client.get(&self.namespace, key).await?;
        let tensor = entry.map(|e| tensor_of(key, e.value)).transpose()?;
        self.count(tensor.is_some());
        Ok(tensor)
    }

    /// Stores the embedding of `text` by `model`, copying a contiguous array with one byte
    /// copy (a non-contiguous one element by element, in logical order).
    pub async fn set_embedding<A, S, D>(
        &self,
        text: &str,
        model: &str,
        embedding: &ArrayBase<S, D>,
    ) -> Result<(), CacheError>
    where
        A: Element,
        S: Data<Elem = A>,
        D: Dimension,
    {
        self.set_tensor(text, model, Tensor::from_array(embedding))
            .await
    }

    /// Stores the embedding of `text` by `model`, handing an array in standard layout over
    /// without copying it.
    pub async fn set_embedding_owned<A: Element, D: Dimension>(
        &self,
        text: &str,
        model: &str,
        embedding: Array<A, D>,
    ) -> Result<(), CacheError> {
        self.set_tensor(text, model, Tensor::from_owned_array(embedding))
            .await
    }

    /// Stores a tensor as the embedding of `text` by `model` (see [`tensor_from_raw`] to make
    /// one from a dtype name, a shape and bytes).
    pub async fn set_tensor(
        &self,
        text: &str,
        model: &str,
        tensor: Tensor,
    ) -> Result<(), CacheError> {
        let key = key_for(model, text)?;
        self.client
            .set(&self.namespace, &key, Value::Tensor(tensor), self.ttl)
            .await?;
        Ok(())
    }

    /// The embeddings of `texts` by `model` as arrays of `A`, in the order of `texts` (`None`
    /// for each miss). One batch call: the keys are grouped by owning node and the groups
    /// fetched in parallel. Fails if any text is empty (nothing is fetched), if the batch
    /// fails, or if an embedding has another element type.
    pub async fn get_embeddings<A: Element>(
        &self,
        texts: &[&str],
        model: &str,
    ) -> Result<Vec<Option<ArrayD<A>>>, CacheError> {
        let keys = keys_for(model, texts)?;
        let tensors = self.get_tensors_at(&keys).await?;
        keys.iter()
            .zip(tensors)
            .map(|(key, t)| t.map(|t| to_array::<A>(key, &t)).transpose())
            .collect()
    }

    /// The stored tensors of `texts` by `model`, in order; see
    /// [`EmbeddingCache::get_embeddings`].
    pub async fn get_tensors(
        &self,
        texts: &[&str],
        model: &str,
    ) -> Result<Vec<Option<Tensor>>, CacheError> {
        let keys = keys_for(model, texts)?;
        self.get_tensors_at(&keys).await
    }

    async fn get_tensors_at(&self, keys: &[Key]) -> Result<Vec<Option<Tensor>>, CacheError> {
        let entries = self.client.get_many(&self.namespace, keys).await?;
        let tensors = keys
            .iter()
            .zip(entries)
            .map(|(key, e)| e.map(|e| tensor_of(key, e.value)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        for t in &tensors {
            self.count(t.is_some());
        }
        Ok(tensors)
    }

    /// Stores many embeddings by `model` in one batch call, owned arrays handed over without
    /// copying; one outcome per item, in order. Input is checked first: if any text is empty,
    /// nothing is stored and the call fails.
    pub async fn set_embeddings<A: Element, D: Dimension>(
        &self,
        model: &str,
        embeddings: Vec<(&str, Array<A, D>)>,
    ) -> Result<Vec<Result<(), CacheError>>, CacheError> {
        let tensors = embeddings
            .into_iter()
            .map(|(text, array)| (text, Tensor::from_owned_array(array)))
            .collect();
        self.set_tensors(model, tensors).await
    }

    /// Stores many tensors by `model` in one batch call; see
    /// [`EmbeddingCache::set_embeddings`].
    pub async fn set_tensors(
        &self,
        model: &str,
        tensors: Vec<(&str, Tensor)>,
    ) -> Result<Vec<Result<(), CacheError>>, CacheError> {
        let items = tensors
            .into_iter()
            .map(|(text, tensor)| Ok((key_for(model, text)?, Value::Tensor(tensor))))
            .collect::<Result<Vec<_>, CacheError>>()?;
        let outcomes = self.client.set_many(&self.namespace, items, self.ttl).await;
        Ok(outcomes
            .into_iter()
            .map(|r| r.map_err(CacheError::from))
            .collect())
    }

    /// The stored tensor of `text` by `model`; on a miss, computed by `compute` and stored
    /// with the cache's TTL — once across the fleet, with concurrent callers anywhere waiting
    /// for the first caller's tensor (see [`Client::get_or_compute`]). Counted as a hit when
    /// the tensor was cached, as a miss otherwise.
    pub async fn get_or_compute_tensor<F, Fut, E>(
        &self,
        text: &str,
        model: &str,
        compute: F,
    ) -> Result<Tensor, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Tensor, E>>,
    {
        let key = key_for(model, text).map_err(ComputeError::Typed)?;
        let computed = self
            .client
            .get_or_compute_with(
                &self.namespace,
                &key,
                self.ttl,
                &ComputeOptions::default(),
                || async move { compute().await.map(Value::Tensor) },
            )
            .await?;
        self.count(computed.origin == Origin::Cached);
        tensor_of(&key, computed.value).map_err(ComputeError::Typed)
    }

    fn count(&self, hit: bool) {
        let counter = if hit {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The validated key of `text` by `model`.
fn key_for(model: &str, text: &str) -> Result<Key, CacheError> {
    if text.is_empty() {
        return Err(CacheError::EmptyText);
    }
    if model.is_empty() {
        return Err(CacheError::EmptyModel);
    }
    Key::new(embedding_key(model, text)).map_err(|e| CacheError::InvalidInput(e.to_string()))
}

fn keys_for(model: &str, texts: &[&str]) -> Result<Vec<Key>, CacheError> {
    texts.iter().map(|text| key_for(model, text)).collect()
}

fn tensor_of(key: &Key, value: Value) -> Result<Tensor, CacheError> {
    match value {
        Value::Tensor(t) => Ok(t),
        other => Err(CacheError::WrongKind {
            key: key.to_string(),
            expected: "a tensor",
            found: format!("{other:?}"),
        }),
    }
}

fn to_array<A: Element>(key: &Key, tensor: &Tensor) -> Result<ArrayD<A>, CacheError> {
    if tensor.dtype() != A::DTYPE {
        return Err(CacheError::DTypeMismatch {
            requested: A::DTYPE,
            stored: tensor.dtype(),
        });
    }
    tensor.to_array::<A>().map_err(|e| CacheError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array3, IxDyn};

    /// Keys computed with the reference's algorithm in Python:
    /// `f"embedding:{m}:{hashlib.sha256(f'{m}:{t}'.encode()).hexdigest()[:16]}"`.
    #[test]
    fn keys_match_the_reference() {
        let golden = [
            (
                "colpali",
                "Marie Curie radioactivity",
                "embedding:colpali:eac565824833adc7",
            ),
            (
                "colpali",
                "Marie Curie radioactivity discovery",
                "embedding:colpali:d864b5a8a94e837f",
            ),
            (
                "videoprism",
                "Albert Einstein theory of relativity",
                "embedding:videoprism:3f1d75229cba3dc8",
            ),
            ("model", "test", "embedding:model:1028c57ce94e4924"),
            (
                "colpali",
                "héllo wörld ✓",
                "embedding:colpali:16f728c48f989ce2",
            ),
            ("m:x", "a:b", "embedding:m:x:c8f2303590ef924c"),
        ];
        for (model, text, key) in golden {
            assert_eq!(embedding_key(model, text), key, "{model} / {text}");
        }
    }

    #[test]
    fn empty_text_or_model_is_refused() {
        assert_eq!(key_for("colpali", ""), Err(CacheError::EmptyText));
        assert_eq!(key_for("", "text"), Err(CacheError::EmptyModel));
        assert!(matches!(
            keys_for("colpali", &["a", ""]),
            Err(CacheError::EmptyText)
        ));
        let long_model = "m".repeat(2000);
        assert!(matches!(
            key_for(&long_model, "t"),
            Err(CacheError::InvalidInput(_))
        ));
    }

    #[test]
    fn raw_parts_are_checked() {
        let ok = tensor_from_raw("float32", vec![2, 2], Bytes::from(vec![0u8; 16])).unwrap();
        assert_eq!((ok.dtype(), ok.shape()), (DType::F32, &[2usize, 2][..]));
        assert_eq!(
            tensor_from_raw("float8", vec![2], Bytes::from(vec![0u8; 2])),
            Err(CacheError::UnknownDType("float8".into()))
        );
        assert_eq!(
            tensor_from_raw("f32", vec![3], Bytes::from(vec![0u8; 8])),
            Err(CacheError::ShapeMismatch {
                dtype: DType::F32,
                shape: vec![3],
                expected: 12,
                actual: 8
            })
        );
        assert!(matches!(
            tensor_from_raw("f64", vec![usize::MAX, 4], Bytes::new()),
            Err(CacheError::ShapeMismatch {
                expected: usize::MAX,
                ..
            })
        ));
        for name in ["f16", "bf16", "f64", "i8", "u8", "i16", "i32", "i64"] {
            assert_eq!(parse_dtype(name).unwrap().name(), name);
        }
    }

    /// The tensor a value is stored as, and the array read back, for every supported dtype
    /// and a few shapes.
    #[test]
    fn dtype_and_shape_round_trip() {
        fn round_trip<A: Element + PartialEq + std::fmt::Debug>(values: Vec<A>) {
            let n = values.len();
            let key = Key::new("k").unwrap();
            for shape in [vec![n], vec![2, n / 2], vec![1, 2, n / 2]] {
                let array = ArrayD::from_shape_vec(IxDyn(&shape), values.clone()).unwrap();
                let tensor = Tensor::from_owned_array(array.clone());
                assert_eq!(tensor.dtype(), A::DTYPE);
                let value = Value::Tensor(tensor);
                let back = to_array::<A>(&key, &tensor_of(&key, value).unwrap()).unwrap();
                assert_eq!(back, array);
            }
        }
        round_trip(vec![1.5f32, -2.0, 3.25, 4.0]);
        round_trip(vec![1.5f64, -2.0, 3.25, 4.0]);
        round_trip(vec![half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]);
        round_trip(vec![half::bf16::from_f32(1.5), half::bf16::from_f32(-2.0)]);
        round_trip(vec![-1i8, 2, -3, 4]);
        round_trip(vec![1u8, 2, 3, 255]);
        round_trip(vec![-1i16, 2, i16::MIN, i16::MAX]);
        round_trip(vec![-1i32, 2, i32::MIN, i32::MAX]);
        round_trip(vec![-1i64, 2, i64::MIN, i64::MAX]);
    }

    #[test]
    fn reading_as_another_dtype_or_kind_fails_clearly() {
        let key = Key::new("k").unwrap();
        let t = Tensor::from_owned_array(Array1::from(vec![1.0f32, 2.0]));
        assert_eq!(
            to_array::<f64>(&key, &t),
            Err(CacheError::DTypeMismatch {
                requested: DType::F64,
                stored: DType::F32
            })
        );
        assert!(matches!(
            tensor_of(&key, Value::from(b"x".to_vec())),
            Err(CacheError::WrongKind { .. })
        ));
    }

    #[test]
    fn owned_arrays_are_not_copied() {
        let array = Array3::<f32>::from_elem((2, 3, 4), 0.25);
        let ptr = array.as_ptr() as *const u8;
        let tensor = Tensor::from_owned_array(array);
        assert_eq!(tensor.data().as_ptr(), ptr);
    }
}
