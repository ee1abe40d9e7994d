//! Reference usage example 2, "Embedding cache with binary serialization": look a batch of
//! query embeddings up, compute and store the missing ones in one batch, read them back
//! exactly, and show the hit/miss statistics and what binary storage saves over JSON.
//!
//! ```text
//! strata up                       # in another shell, same directory
//! cargo run -p strata-client --example embeddings
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use anyhow::Result;
use ndarray::{Array1, ArrayD};
use strata_client::EmbeddingCache;
use strata_client::embedding::embedding_key;
use strata_proto::Key;

use common::check;

/// Stands in for an encoder: a deterministic 128-d f32 vector per query.
fn encode(query: &str) -> Array1<f32> {
    let seed = query
        .bytes()
        .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    Array1::from_shape_fn(128, |i| {
        ((seed.wrapping_add(i as u32 * 7919) % 2000) as f32 - 1000.0) / 1000.0
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let cache = EmbeddingCache::builder(client.clone())
        .ttl(Duration::from_secs(86_400))
        .build();
    let queries = [
        "Marie Curie radioactivity discovery",
        "Albert Einstein theory of relativity",
        "Isaac Newton laws of motion",
    ];
    let model = "colpali";
    // Start from misses, whatever an earlier run left.
    for q in queries {
        client
            .delete(cache.namespace(), &Key::new(embedding_key(model, q))?)
            .await?;
    }

    let cached: Vec<Option<ArrayD<f32>>> = cache.get_embeddings(&queries, model).await?;
    for (q, e) in queries.iter().zip(&cached) {
        match e {
            Some(e) => println!("✓ cached: {q} → {:?}", e.shape()),
            None => println!("✗ not cached: {q}"),
        }
    }
    check(
        cached.iter().all(Option::is_none),
        "nothing cached at first",
    )?;

    let to_compute: Vec<&str> = queries
        .iter()
        .zip(&cached)
        .filter(|(_, e)| e.is_none())
        .map(|(q, _)| *q)
        .collect();
    println!("computing {} embeddings...", to_compute.len());
    let results = cache
        .set_embeddings(model, to_compute.iter().map(|q| (*q, encode(q))).collect())
        .await?;
    for (q, r) in to_compute.iter().zip(&results) {
        println!(
            "{} stored: {q} ({})",
            if r.is_ok() { "✓" } else { "✗" },
            embedding_key(model, q)
        );
    }
    check(results.iter().all(Result::is_ok), "every embedding stored")?;

    let again: Vec<Option<ArrayD<f32>>> = cache.get_embeddings(&queries, model).await?;
    for (q, e) in queries.iter().zip(&again) {
        let same = e
            .as_ref()
            .is_some_and(|e| e.shape() == [128] && e.iter().eq(encode(q).iter()));
        check(same, format!("{q}: 128-d f32, bit for bit"))?;
    }

    let stats = cache.stats();
    println!("\nembedding cache stats:");
    println!("  hits: {}", stats.hits);
    println!("  misses: {}", stats.misses);
    println!("  hit rate: {:.2}%", stats.hit_rate * 100.0);
    check(
        stats.hits == 3 && stats.misses == 3,
        "3 misses, then 3 hits",
    )?;

    let embedding = encode("storage");
    let binary = embedding.len() * std::mem::size_of::<f32>();
    let json = serde_json::to_string(&embedding.to_vec())?.len();
    println!("\nstorage efficiency:");
    println!("  binary: {binary} bytes (stored as .npy: 128 header bytes more)");
    println!("  JSON: {json} bytes");
    println!(
        "  savings: {:.1}%",
        (1.0 - binary as f64 / json as f64) * 100.0
    );
    Ok(())
}
