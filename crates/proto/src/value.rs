//! The tagged values Strata stores.
//!
//! A [`Value`] is one of four kinds, and the kind travels with it (on the wire, in the `.meta`
//! sidecar, in the file extension on disk):
//! - raw bytes, for anything opaque;
//! - a [`Tensor`]: an embedding or any dense array, with its element type ([`DType`]), shape,
//!   and little-endian data, convertible to and from `ndarray` without copying where the memory
//!   allows;
//! - a [`Frame`]: an encoded image (JPEG or PNG) or raw RGB pixels, with its size;
//! - a [`Record`]: structured data as JSON, so the file on disk is `cat`-able.
//!
//! Payloads are [`Bytes`], so cloning a value (to promote it into a faster tier, or to answer
//! several readers) never copies its data.

use std::fmt;

use bytes::Bytes;
use ndarray::{Array, ArrayBase, ArrayD, ArrayViewD, Data, Dimension, IxDyn};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::meta::Format;

/// A stored value, tagged with its kind.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Opaque bytes.
    Bytes(Bytes),
    /// A dense array such as an embedding.
    Tensor(Tensor),
    /// An image frame.
    Frame(Frame),
    /// Structured data, kept as JSON.
    Record(Record),
}

impl Value {
    /// The format descriptor recorded in the entry metadata.
    pub fn format(&self) -> Format {
        match self {
            Value::Bytes(_) => Format::Bytes,
            Value::Tensor(t) => Format::Tensor {
                dtype: t.dtype,
                shape: t.shape.iter().map(|&d| d as u64).collect(),
            },
            Value::Frame(f) => Format::Frame {
                format: f.format,
                width: f.width,
                height: f.height,
            },
            Value::Record(_) => Format::Record,
        }
    }

    /// Length of the payload in bytes (the data, not any header).
    pub fn payload_len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::Tensor(t) => t.data.len(),
            Value::Frame(f) => f.data.len(),
            Value::Record(r) => r.json.len(),
        }
    }

    /// The raw bytes, if this is a [`Value::Bytes`].
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

impl fmt::Debug for Value {
    // Payloads can be megabytes: print their kind and size, never their content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Value::Tensor(t) => write!(f, "Tensor({} {:?})", t.dtype, t.shape),
            Value::Frame(fr) => write!(
                f,
                "Frame({:?} {}x{}, {} bytes)",
                fr.format,
                fr.width,
                fr.height,
                fr.data.len()
            ),
            Value::Record(r) => write!(f, "Record({} bytes of JSON)", r.json.len()),
        }
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Self {
        Value::Bytes(b)
    }
}
impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(Bytes::from(b))
    }
}
impl From<&'static [u8]> for Value {
    fn from(b: &'static [u8]) -> Self {
        Value::Bytes(Bytes::from_static(b))
    }
}
impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Tensor(t)
    }
}
impl From<Frame> for Value {
    fn from(f: Frame) -> Self {
        Value::Frame(f)
    }
}
impl From<Record> for Value {
    fn from(r: Record) -> Self {
        Value::Record(r)
    }
}

/// Element type of a [`Tensor`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (brain floating point).
    BF16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Signed 8-bit integer (quantised embeddings).
    I8,
    /// Unsigned 8-bit integer (quantised embeddings, pixels).
    U8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The lower-case name used in metadata (`f32`, `bf16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust element type that a [`Tensor`] can hold.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The tensor element type this Rust type stands for.
    const DTYPE: DType;
}

macro_rules! element {
    ($($ty:ty => $dtype:ident),* $(,)?) => {
        $(impl Element for $ty { const DTYPE: DType = DType::$dtype; })*
    };
}
element!(
    half::f16 => F16,
    half::bf16 => BF16,
    f32 => F32,
    f64 => F64,
    i8 => I8,
    u8 => U8,
    i16 => I16,
    i32 => I32,
    i64 => I64,
);

/// A dense n-dimensional array in row-major order with little-endian elements.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TensorParts")]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Bytes,
}

/// The unchecked form a tensor is deserialised through, so that a tensor from the wire is
/// always validated.
#[derive(Deserialize)]
struct TensorParts {
    dtype: DType,
    shape: Vec<usize>,
    data: Bytes,
}

impl TryFrom<TensorParts> for Tensor {
    type Error = Error;
    fn try_from(p: TensorParts) -> Result<Self> {
        Tensor::new(p.dtype, p.shape, p.data)
    }
}

/// Owns a `Vec<A>` and shows it as bytes, so an owned array can become [`Bytes`] without a
/// copy.
struct PodVec<A>(Vec<A>);

impl<A: bytemuck::Pod> AsRef<[u8]> for PodVec<A> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl Tensor {
    /// Makes a tensor from its parts, checking that `data` holds exactly
    /// `product(shape) * dtype.size()` bytes.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Bytes) -> Result<Self> {
        let elements = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::InvalidValue(format!("tensor shape {shape:?} overflows")))?;
        let expected = elements
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::InvalidValue(format!("tensor shape {shape:?} overflows")))?;
        if data.len() != expected {
            return Err(Error::InvalidValue(format!(
                "tensor {dtype} {shape:?} needs {expected} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self { dtype, shape, data })
    }

    /// Copies an array (any layout) into a new tensor.
    pub fn from_array<A, S, D>(array: &ArrayBase<S, D>) -> Self
    where
        A: Element,
        S: Data<Elem = A>,
        D: Dimension,
    {
        let shape = array.shape().to_vec();
        let data = match array.as_slice() {
            Some(slice) => Bytes::copy_from_slice(bytemuck::cast_slice(slice)),
            None => {
                let owned: Vec<A> = array.iter().copied().collect();
                Bytes::from_owner(PodVec(owned))
            }
        };
        Self::assemble::<A>(shape, data)
    }

    /// Turns an owned array into a tensor. An array in standard (row-major) layout hands its
    /// buffer over without copying.
    pub fn from_owned_array<A: Element, D: Dimension>(array: Array<A, D>) -> Self {
        if !array.is_standard_layout() {
            return Self::from_array(&array);
        }
        let shape = array.shape().to_vec();
        let (vec, offset) = array.into_raw_vec_and_offset();
        let data = Bytes::from_owner(PodVec(vec));
        let start = offset.unwrap_or(0) * std::mem::size_of::<A>();
        let len = shape.iter().product::<usize>() * std::mem::size_of::<A>();
        Self::assemble::<A>(shape, data.slice(start..start + len))
    }

    /// Builds a tensor from a flat slice and a shape (copies the slice).
    pub fn from_slice<A: Element>(shape: Vec<usize>, values: &[A]) -> Result<Self> {
        Self::new(
            A::DTYPE,
            shape,
            Bytes::copy_from_slice(bytemuck::cast_slice(values)),
        )
    }

    fn assemble<A: Element>(shape: Vec<usize>, data: Bytes) -> Self {
        // Our in-memory data is native-endian; the wire and disk format is little-endian.
        #[cfg(target_endian = "big")]
        let data = swap_to_little_endian(A::DTYPE.size(), &data);
        Self {
            dtype: A::DTYPE,
            shape,
            data,
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape (row-major).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The little-endian element bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn check<A: Element>(&self) -> Result<()> {
        if A::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch {
                expected: A::DTYPE,
                found: self.dtype,
            });
        }
        Ok(())
    }

    /// The elements as a slice, without copying. Fails if the element type differs, if the
    /// bytes are not aligned for `A` (possible for data sliced out of a network buffer), or on
    /// a big-endian machine.
    pub fn as_slice<A: Element>(&self) -> Result<&[A]> {
        self.check::<A>()?;
        if cfg!(target_endian = "big") {
            return Err(Error::Misaligned(self.dtype));
        }
        bytemuck::try_cast_slice(&self.data).map_err(|_| Error::Misaligned(self.dtype))
    }

    /// A zero-copy `ndarray` view of the tensor (see [`Tensor::as_slice`] for when it fails).
    pub fn view<A: Element>(&self) -> Result<ArrayViewD<'_, A>> {
        let slice = self.as_slice::<A>()?;
        ArrayViewD::from_shape(IxDyn(&self.shape), slice)
            .map_err(|e| Error::InvalidValue(format!("tensor shape: {e}")))
    }

    /// An owned `ndarray` copy of the tensor; works for any alignment and endianness.
    pub fn to_array<A: Element>(&self) -> Result<ArrayD<A>> {
        self.check::<A>()?;
        let values: Vec<A> = match self.as_slice::<A>() {
            // Aligned little-endian data (the usual case): one copy, no zeroing first.
            Ok(slice) => slice.to_vec(),
            Err(_) => {
                let mut values = vec![A::zeroed(); self.len()];
                bytemuck::cast_slice_mut::<A, u8>(&mut values).copy_from_slice(&self.data);
                #[cfg(target_endian = "big")]
                for v in bytemuck::cast_slice_mut::<A, u8>(&mut values).chunks_mut(A::DTYPE.size())
                {
                    v.reverse();
                }
                values
            }
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), values)
            .map_err(|e| Error::InvalidValue(format!("tensor shape: {e}")))
    }
}

#[cfg(target_endian = "big")]
fn swap_to_little_endian(size: usize, data: &[u8]) -> Bytes {
    let mut out = data.to_vec();
    for chunk in out.chunks_mut(size) {
        chunk.reverse();
    }
    Bytes::from(out)
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {:?})", self.dtype, self.shape)
    }
}

/// How the pixels of a [`Frame`] are encoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameFormat {
    /// JPEG (stored as a `.jpg` file any image viewer opens).
    Jpeg,
    /// PNG (stored as `.png`).
    Png,
    /// Raw 8-bit RGB pixels, row-major, `width * height * 3` bytes (stored as `.rgb`).
    Rgb8,
}

/// An image frame: encoded bytes plus the size of the picture.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FrameParts")]
pub struct Frame {
    format: FrameFormat,
    width: u32,
    height: u32,
    data: Bytes,
}

#[derive(Deserialize)]
struct FrameParts {
    format: FrameFormat,
    width: u32,
    height: u32,
    data: Bytes,
}

impl TryFrom<FrameParts> for Frame {
    type Error = Error;
    fn try_from(p: FrameParts) -> Result<Self> {
        Frame::new(p.format, p.width, p.height, p.data)
    }
}

impl Frame {
    /// Makes a frame, checking what can be checked cheaply: raw RGB data must be exactly
    /// `width * height * 3` bytes; JPEG and PNG data must start with their signatures.
    pub fn new(format: FrameFormat, width: u32, height: u32, data: Bytes) -> Result<Self> {
        match format {
            FrameFormat::Rgb8 => {
                let expected = u64::from(width) * u64::from(height) * 3;
                if data.len() as u64 != expected {
                    return Err(Error::InvalidValue(format!(
                        "RGB frame {width}x{height} needs {expected} bytes, got {}",
                        data.len()
                    )));
                }
            }
            FrameFormat::Jpeg if !data.starts_with(&[0xFF, 0xD8, 0xFF]) => {
                return Err(Error::InvalidValue(
                    "JPEG data must start with FF D8 FF".into(),
                ));
            }
            FrameFormat::Png if !data.starts_with(b"\x89PNG\r\n\x1a\n") => {
                return Err(Error::InvalidValue(
                    "PNG data must start with the PNG signature".into(),
                ));
            }
            _ => {}
        }
        Ok(Self {
            format,
            width,
            height,
            data,
        })
    }

    /// The pixel encoding.
    pub fn format(&self) -> FrameFormat {
        self.format
    }
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }
    /// The encoded bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Frame({:?} {}x{}, {} bytes)",
            self.format,
            self.width,
            self.height,
            self.data.len()
        )
    }
}

/// Structured data kept as JSON text.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RecordParts")]
pub struct Record {
    json: Bytes,
}

#[derive(Deserialize)]
struct RecordParts {
    json: Bytes,
}

impl TryFrom<RecordParts> for Record {
    type Error = Error;
    fn try_from(p: RecordParts) -> Result<Self> {
        Record::from_json(p.json)
    }
}

impl Record {
    /// Serialises any serde value into a record.
    pub fn from_serde<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let json = serde_json::to_vec(value)
            .map_err(|e| Error::InvalidValue(format!("record does not serialise: {e}")))?;
        Ok(Self {
            json: Bytes::from(json),
        })
    }

    /// Wraps JSON text, checking that it parses.
    pub fn from_json(json: Bytes) -> Result<Self> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&json)
            .map_err(|e| Error::InvalidValue(format!("record is not valid JSON: {e}")))?;
        Ok(Self { json })
    }

    /// Deserialises the record into `T`.
    pub fn to_serde<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.json)
            .map_err(|e| Error::InvalidValue(format!("record does not match the type: {e}")))
    }

    /// The JSON text.
    pub fn json(&self) -> &Bytes {
        &self.json
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Record({} bytes of JSON)", self.json.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn tensor_round_trips_through_ndarray_for_every_dtype() {
        fn round_trip<A: Element + PartialEq + std::fmt::Debug>(values: Vec<A>) {
            let array = Array2::from_shape_vec((2, values.len() / 2), values).unwrap();
            let tensor = Tensor::from_owned_array(array.clone());
            assert_eq!(tensor.dtype(), A::DTYPE);
            assert_eq!(tensor.shape(), &[2, array.ncols()]);
            assert_eq!(tensor.to_array::<A>().unwrap(), array.clone().into_dyn());
            assert_eq!(tensor.view::<A>().unwrap(), array.view().into_dyn());
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
    fn owned_standard_array_is_not_copied() {
        let array = Array2::<f32>::from_elem((4, 256), 0.5);
        let ptr = array.as_ptr() as *const u8;
        let tensor = Tensor::from_owned_array(array);
        assert_eq!(tensor.data().as_ptr(), ptr, "buffer should be handed over");
        let view = tensor.view::<f32>().unwrap();
        assert_eq!(view.as_ptr() as *const u8, ptr, "view should not copy");
    }

    #[test]
    fn non_standard_layouts_are_copied_in_logical_order() {
        let a = array![[1.0f32, 2.0], [3.0, 4.0]];
        let t = Tensor::from_array(&a.t());
        assert_eq!(t.as_slice::<f32>().unwrap(), &[1.0, 3.0, 2.0, 4.0]);
    }

    #[test]
    fn tensor_data_is_little_endian() {
        let t = Tensor::from_slice(vec![1], &[1.0f32]).unwrap();
        assert_eq!(&t.data()[..], &1.0f32.to_le_bytes());
    }

    #[test]
    fn wrong_dtype_and_bad_lengths_are_rejected() {
        let t = Tensor::from_slice(vec![2], &[1.0f32, 2.0]).unwrap();
        assert!(matches!(t.view::<f64>(), Err(Error::DTypeMismatch { .. })));
        assert!(Tensor::new(DType::F32, vec![3], Bytes::from_static(&[0; 8])).is_err());
        assert!(Tensor::new(DType::F32, vec![usize::MAX, 2], Bytes::new()).is_err());
    }

    #[test]
    fn misaligned_data_still_copies_out() {
        let raw = Bytes::from(vec![0u8; 9]).slice(1..9);
        let t = Tensor::new(DType::F32, vec![2], raw).unwrap();
        if !(t.data().as_ptr() as usize).is_multiple_of(4) {
            assert!(matches!(t.view::<f32>(), Err(Error::Misaligned(_))));
        }
        assert_eq!(t.to_array::<f32>().unwrap().len(), 2);
    }

    #[test]
    fn frames_check_their_data() {
        assert!(Frame::new(FrameFormat::Rgb8, 2, 2, Bytes::from(vec![0; 12])).is_ok());
        assert!(Frame::new(FrameFormat::Rgb8, 2, 2, Bytes::from(vec![0; 11])).is_err());
        assert!(Frame::new(FrameFormat::Jpeg, 1, 1, Bytes::from_static(b"nope")).is_err());
    }

    #[test]
    fn records_round_trip_and_reject_bad_json() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Keyframes {
            video_id: String,
            num_keyframes: u32,
        }
        let k = Keyframes {
            video_id: "abc".into(),
            num_keyframes: 2,
        };
        let r = Record::from_serde(&k).unwrap();
        assert_eq!(r.to_serde::<Keyframes>().unwrap(), k);
        assert!(Record::from_json(Bytes::from_static(b"{nope")).is_err());
    }

    #[test]
    fn wire_deserialisation_validates() {
        let t = Tensor::from_slice(vec![2], &[1.0f32, 2.0]).unwrap();
        let mut wire = postcard::to_allocvec(&Value::Tensor(t.clone())).unwrap();
        let back: Value = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, Value::Tensor(t));
        // Claim a larger shape than the data holds.
        // Layout: variant, dtype, shape length, shape[0], data length, data.
        assert_eq!(&wire[..5], &[1, 2, 1, 2, 8]);
        wire[3] = 3;
        assert!(postcard::from_bytes::<Value>(&wire).is_err());
    }
}
