//! The JPEG codec of the artifact cache: raw RGB frames in, JPEG bytes stored, RGB frames out.
//!
//! Encoding and decoding use libjpeg-turbo (through the `turbojpeg` crate, which builds the
//! library from the source it bundles, with its SIMD code: building needs `cmake` and `nasm`).
//! It is the library OpenCV writes and reads JPEG with, and the fastest measured here: about
//! 2.5 ms to encode and 3–4 ms to decode a 1280×720 frame with fine noise at quality 95 and
//! 4:2:0, against 11–13 ms (4:4:4) and 6–7 ms for the pure-Rust `jpeg-encoder` +
//! `zune-jpeg` pair used before (docs/benchmarks.md, "Typed caches"). Frames are `ndarray` arrays of shape
//! `(height, width, 3)`, the layout of a decoded video frame in numpy, so agents written in
//! either language see the same thing.
//!
//! Chroma is subsampled 4:2:0 by default ([`DEFAULT_SUBSAMPLING`]), as OpenCV's `imwrite`
//! does unless `IMWRITE_JPEG_SAMPLING_FACTOR` says otherwise; [`encode_with`] takes another.
//!
//! JPEG bytes are decoded strictly: a warning of the decoder (a truncated stream, corrupt
//! entropy-coded data) is an error, so a truncated or mislabelled payload is refused before
//! anything is stored.
//!
//! Caveats: JPEG is lossy; only 8-bit RGB is produced (greyscale images are converted to RGB
//! by libjpeg-turbo, CMYK and YCCK ones by `zune-jpeg`, which libjpeg-turbo cannot convert);
//! frames larger than 65 535 pixels on a side cannot be encoded, and JPEGs larger than
//! [`MAX_DECODED_SIDE`] on a side are not decoded.

use bytes::Bytes;
use ndarray::{Array3, ArrayView3};
use strata_proto::{Frame, FrameFormat};
use turbojpeg::{Colorspace, Compressor, Decompressor, Image, PixelFormat, Subsamp};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// JPEG quality used unless configured otherwise: the reference encodes with OpenCV, whose
/// default (and the value it sets for segment frames) is 95.
pub const DEFAULT_QUALITY: u8 = 95;

/// Chroma subsampling used unless configured otherwise: 4:2:0, OpenCV's default.
pub const DEFAULT_SUBSAMPLING: Subsampling = Subsampling::Yuv420;

/// Largest side JPEG can describe (its header holds 16-bit sizes).
pub const MAX_SIDE: usize = u16::MAX as usize;

/// Largest side of a JPEG this module decodes (the limit `zune-jpeg` applies by default): a
/// header can claim up to 65 535 × 65 535 pixels, 12 GiB of RGB, which must not be allocated
/// on the word of untrusted bytes.
pub const MAX_DECODED_SIDE: usize = 16_384;

/// How finely the colour (chroma) planes of an encoded frame are sampled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Subsampling {
    /// One chroma sample per 2×2 pixels: OpenCV's default, about 40 % smaller and 40 % faster
    /// to encode than [`Subsampling::Yuv444`]; sharp colour edges blur slightly.
    #[default]
    Yuv420,
    /// One chroma sample per 2×1 pixels (4:2:2).
    Yuv422,
    /// Full-resolution chroma (4:4:4, no subsampling).
    Yuv444,
}

impl Subsampling {
    fn turbo(self) -> Subsamp {
        match self {
            Self::Yuv420 => Subsamp::Sub2x2,
            Self::Yuv422 => Subsamp::Sub2x1,
            Self::Yuv444 => Subsamp::None,
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JpegError(String);

/// Encodes an RGB frame of shape `(height, width, 3)` (any memory layout) as JPEG at
/// `quality` (1–100) with [`DEFAULT_SUBSAMPLING`].
pub fn encode(image: ArrayView3<'_, u8>, quality: u8) -> Result<Frame, JpegError> {
    encode_with(image, quality, DEFAULT_SUBSAMPLING)
}

/// Encodes an RGB frame of shape `(height, width, 3)` (any memory layout) as JPEG at
/// `quality` (1–100) with chroma `subsampling`.
pub fn encode_with(
    image: ArrayView3<'_, u8>,
    quality: u8,
    subsampling: Subsampling,
) -> Result<Frame, JpegError> {
    let (height, width, channels) = image.dim();
    if channels != 3 {
        return Err(JpegError(format!(
            "a frame must have shape (height, width, 3), got ({height}, {width}, {channels})"
        )));
    }
    let standard = image.as_standard_layout();
    let pixels = standard
        .as_slice()
        .ok_or_else(|| JpegError("frame pixels are not contiguous".into()))?;
    encode_rgb_with(pixels, width, height, quality, subsampling)
}

/// Encodes `width * height` row-major RGB pixels as JPEG at `quality` (1–100) with
/// [`DEFAULT_SUBSAMPLING`].
pub fn encode_rgb(
    pixels: &[u8],
    width: usize,
    height: usize,
    quality: u8,
) -> Result<Frame, JpegError> {
    encode_rgb_with(pixels, width, height, quality, DEFAULT_SUBSAMPLING)
}

/// Encodes `width * height` row-major RGB pixels as JPEG at `quality` (1–100) with chroma
/// `subsampling` (baseline JPEG, standard Huffman tables, as OpenCV writes by default).
pub fn encode_rgb_with(
    pixels: &[u8],
    width: usize,
    height: usize,
    quality: u8,
    subsampling: Subsampling,
) -> Result<Frame, JpegError> {
    if width == 0 || height == 0 {
        return Err(JpegError(format!("a frame of {width}x{height} is empty")));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(JpegError(format!(
            "a {width}x{height} frame is larger than JPEG allows ({MAX_SIDE} per side)"
        )));
    }
    let expected = width * height * 3;
    if pixels.len() != expected {
        return Err(JpegError(format!(
            "a {width}x{height} RGB frame needs {expected} bytes, got {}",
            pixels.len()
        )));
    }
    let failed = |e: turbojpeg::Error| JpegError(format!("encoding failed: {e}"));
    let mut compressor = Compressor::new().map_err(failed)?;
    compressor
        .set_quality(i32::from(quality.clamp(1, 100)))
        .map_err(failed)?;
    compressor
        .set_subsamp(subsampling.turbo())
        .map_err(failed)?;
    // The sizes were checked above, so the image is valid and `compress` does not panic.
    let image = Image {
        pixels,
        width,
        pitch: width * 3,
        height,
        format: PixelFormat::RGB,
    };
    let out = compressor.compress_to_vec(image).map_err(failed)?;
    // Both sides fit in 16 bits (checked against MAX_SIDE above).
    Frame::new(
        FrameFormat::Jpeg,
        width as u32,
        height as u32,
        Bytes::from(out),
    )
    .map_err(|e| JpegError(e.to_string()))
}

/// Checks that `data` is a complete JPEG image by decoding it, and wraps it, unchanged, as a
/// frame with its size.
pub fn validate(data: Bytes) -> Result<Frame, JpegError> {
    let (_, width, height) = decode_raw(&data)?;
    Frame::new(FrameFormat::Jpeg, width as u32, height as u32, data)
        .map_err(|e| JpegError(e.to_string()))
}

/// Decodes JPEG bytes into an RGB frame of shape `(height, width, 3)`.
pub fn decode(data: &[u8]) -> Result<Array3<u8>, JpegError> {
    let (pixels, width, height) = decode_raw(data)?;
    Array3::from_shape_vec((height, width, 3), pixels).map_err(|e| JpegError(e.to_string()))
}

/// Decodes to RGB pixels, width and height.
fn decode_raw(data: &[u8]) -> Result<(Vec<u8>, usize, usize), JpegError> {
    if !data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(JpegError(
            "data does not start with the JPEG signature FF D8 FF".into(),
        ));
    }
    let failed = |e: turbojpeg::Error| JpegError(format!("does not decode: {e}"));
    let mut decompressor = Decompressor::new().map_err(failed)?;
    let header = decompressor.read_header(data).map_err(failed)?;
    let (width, height) = (header.width, header.height);
    if width == 0 || height == 0 || width > MAX_DECODED_SIDE || height > MAX_DECODED_SIDE {
        return Err(JpegError(format!(
            "a {width}x{height} JPEG is empty or larger than decoded here \
             ({MAX_DECODED_SIDE} per side)"
        )));
    }
    if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
        return decode_cmyk(data);
    }
    let mut pixels = vec![0; width * height * 3];
    // The buffer holds exactly `pitch * height` bytes, so `decompress` does not panic. A
    // warning (truncated or corrupt data) makes it fail: TurboJPEG reports warnings as
    // errors unless told otherwise.
    let image = Image {
        pixels: &mut pixels[..],
        width,
        pitch: width * 3,
        height,
        format: PixelFormat::RGB,
    };
    decompressor.decompress(data, image).map_err(failed)?;
    Ok((pixels, width, height))
}

/// Decodes a CMYK or YCCK JPEG (which libjpeg-turbo cannot convert to RGB) to RGB with
/// `zune-jpeg` in strict mode.
fn decode_cmyk(data: &[u8]) -> Result<(Vec<u8>, usize, usize), JpegError> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    let pixels = decoder
        .decode()
        .map_err(|e| JpegError(format!("does not decode: {e:?}")))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| JpegError("no image size after decoding".into()))?;
    if width == 0 || height == 0 || pixels.len() != width * height * 3 {
        return Err(JpegError(format!(
            "decoded {} bytes for a {width}x{height} RGB image",
            pixels.len()
        )));
    }
    Ok((pixels, width, height))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A smooth gradient: JPEG keeps it within a few levels.
    fn gradient(width: usize, height: usize) -> Array3<u8> {
        Array3::from_shape_fn((height, width, 3), |(y, x, c)| match c {
            0 => (x * 255 / width) as u8,
            1 => (y * 255 / height) as u8,
            _ => 128,
        })
    }

    #[test]
    fn round_trip_keeps_size_and_pixels_close() {
        let image = gradient(64, 48);
        let frame = encode(image.view(), DEFAULT_QUALITY).unwrap();
        assert_eq!((frame.width(), frame.height()), (64, 48));
        assert_eq!(frame.format(), FrameFormat::Jpeg);
        let back = decode(frame.data()).unwrap();
        assert_eq!(back.dim(), (48, 64, 3));
        let worst = image
            .iter()
            .zip(back.iter())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 12, "largest pixel error {worst}");
    }

    #[test]
    fn non_standard_layouts_encode_in_logical_order() {
        let image = gradient(16, 8);
        let transposed = image.clone().permuted_axes([1, 0, 2]); // (16, 8, 3), not contiguous
        let frame = encode(transposed.view(), DEFAULT_QUALITY).unwrap();
        assert_eq!((frame.width(), frame.height()), (8, 16));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(encode(Array3::<u8>::zeros((4, 4, 4)).view(), 90).is_err());
        assert!(encode(Array3::<u8>::zeros((0, 4, 3)).view(), 90).is_err());
        assert!(encode_rgb(&[0; 11], 2, 2, 90).is_err());
        assert!(encode_rgb(&[], MAX_SIDE + 1, 1, 90).is_err());
    }

    #[test]
    fn only_complete_jpegs_validate() {
        let frame = encode(gradient(32, 32).view(), 90).unwrap();
        let valid = validate(frame.data().clone()).unwrap();
        assert_eq!(valid.data(), frame.data(), "stored as given");
        assert_eq!((valid.width(), valid.height()), (32, 32));
        assert!(validate(Bytes::from_static(b"\x89PNG\r\n\x1a\nnot a jpeg")).is_err());
        assert!(validate(Bytes::from_static(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0])).is_err());
        let truncated = frame.data().slice(..frame.data().len() / 2);
        assert!(validate(truncated).is_err());
    }

    #[test]
    fn subsampling_is_configurable_and_420_by_default() {
        let image = gradient(64, 48);
        let default = encode(image.view(), DEFAULT_QUALITY).unwrap();
        let full = encode_with(image.view(), DEFAULT_QUALITY, Subsampling::Yuv444).unwrap();
        let header = |frame: &Frame| turbojpeg::read_header(frame.data()).unwrap().subsamp;
        assert_eq!(header(&default), Subsamp::Sub2x2);
        assert_eq!(header(&full), Subsamp::None);
        let back = decode(full.data()).unwrap();
        assert_eq!(back.dim(), (48, 64, 3));
    }

    #[test]
    fn corrupt_and_oversized_jpegs_are_refused() {
        let frame = encode(gradient(64, 64).view(), 90).unwrap();
        let mut corrupt = frame.data().to_vec();
        let middle = corrupt.len() / 2;
        for byte in &mut corrupt[middle..middle + 40] {
            *byte ^= 0x5A;
        }
        assert!(decode(&corrupt).is_err());
        // The SOF0 header claims 20 000 x 20 000 pixels (1.1 GiB of RGB): refused before
        // allocating.
        let mut huge = frame.data().to_vec();
        let sof = huge.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        huge[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]);
        let error = decode(&huge).unwrap_err();
        assert!(error.to_string().contains("larger than decoded"), "{error}");
    }
}
