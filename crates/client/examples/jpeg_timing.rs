//! Times the artifact cache's JPEG codec on a 1280×720 frame.
//!
//! ```text
//! cargo run --release -p strata-client --example jpeg_timing
//! ```

use std::time::Instant;

use ndarray::Array3;
use strata_client::jpeg;

/// Frames per measurement.
const ROUNDS: u32 = 50;

fn main() -> Result<(), jpeg::JpegError> {
    // Smooth gradients: compress like most video frames.
    let smooth = Array3::from_shape_fn((720, 1280, 3), |(y, x, c)| {
        ((x / 5 + y / 3 + 60 * c) % 256) as u8
    });
    // Fine texture everywhere: the worst case for JPEG's entropy coding.
    let textured = Array3::from_shape_fn((720, 1280, 3), |(y, x, c)| {
        let texture = ((x * 7 + y * 13) % 17) as u8;
        ((x / 5 + y / 3 + 60 * c) as u8).wrapping_add(texture)
    });
    for (name, frame) in [("smooth", smooth), ("textured", textured)] {
        time(name, &frame)?;
    }
    Ok(())
}

fn time(name: &str, frame: &Array3<u8>) -> Result<(), jpeg::JpegError> {
    let mut encoded = jpeg::encode(frame.view(), jpeg::DEFAULT_QUALITY)?;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        encoded = jpeg::encode(frame.view(), jpeg::DEFAULT_QUALITY)?;
    }
    let encode = start.elapsed() / ROUNDS;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        jpeg::decode(encoded.data())?;
    }
    let decode = start.elapsed() / ROUNDS;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        jpeg::validate(encoded.data().clone())?;
    }
    let validate = start.elapsed() / ROUNDS;
    println!(
        "{name} 1280x720 RGB, quality {}: {} bytes; encode {encode:?}, decode {decode:?}, validate {validate:?} (mean of {ROUNDS})",
        jpeg::DEFAULT_QUALITY,
        encoded.data().len()
    );
    Ok(())
}
