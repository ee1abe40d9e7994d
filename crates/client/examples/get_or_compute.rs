//! `get_or_compute` with single flight: 20 concurrent callers miss the same key, one of them
//! computes it (slowly), the others wait for its value; a second round finds it cached.
//! Start several copies at once to see the single flight hold across processes too.
//!
//! ```text
//! strata up                       # in another shell, same directory
//! cargo run -p strata-client --example get_or_compute
//! ```

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use strata_client::{ComputeOptions, Origin};
use strata_proto::{Key, Namespace, Value};

use common::check;

const CALLERS: usize = 20;

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let ns = Namespace::new("examples")?;
    let key = Key::new("video:abc123:transcript:single-flight")?;
    // Start from a miss, whatever an earlier run left.
    client.delete(&ns, &key).await?;

    let runs = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (client, ns, key, runs) = (client.clone(), ns.clone(), key.clone(), runs.clone());
            tokio::spawn(async move {
                client
                    .get_or_compute_with(
                        &ns,
                        &key,
                        Some(Duration::from_secs(3600)),
                        &ComputeOptions::default(),
                        || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            println!("caller {i} computes the transcript (1 s)...");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Ok::<_, std::io::Error>(Value::from(
                                format!("transcript computed by caller {i}").into_bytes(),
                            ))
                        },
                    )
                    .await
            })
        })
        .collect();
    let mut values = Vec::new();
    let mut origins = Vec::new();
    for caller in callers {
        let computed = caller.await??;
        origins.push(computed.origin);
        values.push(computed.value);
    }
    let count = |o: Origin| origins.iter().filter(|x| **x == o).count();
    println!(
        "{CALLERS} callers in {:.1?}: {} computed, {} waited, {} found it cached",
        start.elapsed(),
        count(Origin::Computed),
        count(Origin::Waited),
        count(Origin::Cached)
    );
    check(
        runs.load(Ordering::SeqCst) <= 1,
        "computed at most once in this process",
    )?;
    check(
        values.windows(2).all(|w| w[0] == w[1]),
        "every caller got the same value",
    )?;

    let again = client
        .get_or_compute(&ns, &key, None, || async {
            Err::<Value, _>("not called: the value is cached")
        })
        .await?;
    check(
        again == values[0],
        "the second round reads the stored value",
    )?;
    Ok(())
}
