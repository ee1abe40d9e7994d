//! Benchmarks of the artifact cache's JPEG codec ([`strata_client::jpeg`]) on a 1280×720
//! RGB frame: a smooth gradient with a little noise, which compresses like a video frame.
//!
//! - `jpeg/encode_1280x720`: [`jpeg::encode`] at [`jpeg::DEFAULT_QUALITY`] and
//!   [`jpeg::DEFAULT_SUBSAMPLING`] (what `set_keyframes` and `set_segment_frames` do with each
//!   raw frame).
//! - `jpeg/encode_444_1280x720`: the same without chroma subsampling (4:4:4).
//! - `jpeg/decode_1280x720`: [`jpeg::decode`] of that JPEG back to an RGB array (what
//!   `get_keyframes` and `get_segment_frames` do with each stored frame).
//! - `jpeg/validate_1280x720`: [`jpeg::validate`], the header check a given JPEG gets.
//!
//! ```text
//! cargo bench -p strata-client --bench jpeg
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented public function.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array3;
use strata_client::jpeg;

const WIDTH: usize = 1280;
const HEIGHT: usize = 720;

/// Smooth gradients with deterministic low-amplitude noise (the 3 high bits of a hash per
/// pixel, XORed in), like a frame of real video.
fn frame() -> Array3<u8> {
    Array3::from_shape_fn((HEIGHT, WIDTH, 3), |(y, x, c)| {
        let noise = (x as u32)
            .wrapping_mul(2_654_435_761)
            .wrapping_add((y as u32).wrapping_mul(40_503))
            >> 29;
        ((x / 5 + y / 3 + 60 * c) % 256) as u8 ^ noise as u8
    })
}

fn bench_jpeg(c: &mut Criterion) {
    let frame = frame();
    let encoded = match jpeg::encode(frame.view(), jpeg::DEFAULT_QUALITY) {
        Ok(encoded) => encoded,
        Err(e) => panic!("encoding the test frame failed: {e}"),
    };
    eprintln!(
        "1280x720 RGB frame, quality {}: {} bytes as JPEG",
        jpeg::DEFAULT_QUALITY,
        encoded.data().len()
    );
    let mut group = c.benchmark_group("jpeg");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_1280x720", |b| {
        b.iter(|| jpeg::encode(black_box(frame.view()), jpeg::DEFAULT_QUALITY))
    });
    group.bench_function("encode_444_1280x720", |b| {
        b.iter(|| {
            jpeg::encode_with(
                black_box(frame.view()),
                jpeg::DEFAULT_QUALITY,
                jpeg::Subsampling::Yuv444,
            )
        })
    });
    group.bench_function("decode_1280x720", |b| {
        b.iter(|| jpeg::decode(black_box(encoded.data())))
    });
    group.bench_function("validate_1280x720", |b| {
        b.iter(|| jpeg::validate(black_box(encoded.data().clone())))
    });
    group.finish();
}

criterion_group!(benches, bench_jpeg);
criterion_main!(benches);
