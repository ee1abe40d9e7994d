//! The payload codec: how a [`Value`] is laid out as the bytes of one file.
//!
//! Each kind is stored in a format a person (or another tool) can open directly:
//!
//! | kind   | file    | layout                                                        |
//! |--------|---------|---------------------------------------------------------------|
//! | bytes  | `.bin`  | the bytes as given                                            |
//! | tensor | `.npy`  | NumPy format 1.0: a 64-byte-aligned header, then the data     |
//! | frame  | `.jpg`, `.png`, `.rgb` | the encoded image as given             |
//! | record | `.json` | the JSON text                                                 |
//!
//! Tensors use `.npy` so that `numpy.load("frame.npy")` just works; the header is padded to 64
//! bytes, which keeps the data aligned for zero-copy views. `bf16` has no NumPy type and is
//! written with descriptor `|V2` (load it and `.view(ml_dtypes.bfloat16)`); the entry's
//! metadata records the real element type either way.
//!
//! Encoding never copies the value's data: a [`Payload`] is a small header plus the value's
//! own [`Bytes`]. Decoding slices the file's buffer, again without copying. The checksum is
//! CRC-32C over the whole payload (header and body).

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::meta::Format;
use crate::value::{DType, Frame, Record, Tensor, Value};

/// The bytes of one encoded value: a (possibly empty) header followed by the body.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    /// Format header (the `.npy` header for tensors, empty otherwise).
    pub header: Bytes,
    /// The value's data, shared with the value it came from.
    pub body: Bytes,
}

impl Payload {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.header.len() + self.body.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// CRC-32C of header and body.
    pub fn checksum(&self) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(&self.header), &self.body)
    }

    /// The payload as one contiguous buffer (copies only when there is a header).
    pub fn to_bytes(&self) -> Bytes {
        if self.header.is_empty() {
            return self.body.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
        out.freeze()
    }
}

/// CRC-32C of a buffer, as recorded in entry metadata.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Encodes a value into its stored form.
pub fn encode_payload(value: &Value) -> Payload {
    match value {
        Value::Bytes(b) => Payload {
            header: Bytes::new(),
            body: b.clone(),
        },
        Value::Tensor(t) => Payload {
            header: Bytes::from(npy_header(t.dtype(), t.shape().iter().map(|&d| d as u64))),
            body: t.data().clone(),
        },
        Value::Frame(f) => Payload {
            header: Bytes::new(),
            body: f.data().clone(),
        },
        Value::Record(r) => Payload {
            header: Bytes::new(),
            body: r.json().clone(),
        },
    }
}

/// Decodes a stored payload described by `format`, checking that the bytes are what the
/// format says. Never copies the data of tensors, frames or byte values.
pub fn decode_payload(format: &Format, bytes: Bytes) -> Result<Value> {
    match format {
        Format::Bytes => Ok(Value::Bytes(bytes)),
        Format::Record => Ok(Value::Record(Record::from_json(bytes)?)),
        Format::Frame {
            format,
            width,
            height,
        } => Frame::new(*format, *width, *height, bytes)
            .map(Value::Frame)
            .map_err(|e| Error::Corrupt(e.to_string())),
        Format::Tensor { dtype, shape } => {
            let header_len = npy_header_len(&bytes)?;
            let expected = npy_header(*dtype, shape.iter().copied());
            if bytes[..header_len] != expected[..] {
                return Err(Error::Corrupt(format!(
                    "npy header does not describe a {dtype} tensor of shape {shape:?}"
                )));
            }
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| Error::Corrupt("tensor shape does not fit this machine".into()))?;
            Tensor::new(*dtype, shape, bytes.slice(header_len..))
                .map(Value::Tensor)
                .map_err(|e| Error::Corrupt(e.to_string()))
        }
    }
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY\x01\x00";
/// Header alignment NumPy uses for format 1.0 files (so data can be memory-mapped).
const NPY_ALIGN: usize = 64;

fn npy_descr(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "<f2",
        DType::BF16 => "|V2",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
    }
}

/// The complete `.npy` format-1.0 header (magic, length, padded dictionary).
fn npy_header(dtype: DType, shape: impl ExactSizeIterator<Item = u64>) -> Vec<u8> {
    let rank = shape.len();
    let mut dict = String::with_capacity(96);
    dict.push_str("{'descr': '");
    dict.push_str(npy_descr(dtype));
    dict.push_str("', 'fortran_order': False, 'shape': (");
    for (i, d) in shape.enumerate() {
        if i > 0 {
            dict.push_str(", ");
        }
        let _ = write!(dict, "{d}");
    }
    if rank == 1 {
        dict.push(',');
    }
    dict.push_str("), }");
    // Pad with spaces and end with a newline so that magic + length + dict is aligned.
    let unpadded = NPY_MAGIC.len() + 2 + dict.len() + 1;
    let padding = (NPY_ALIGN - unpadded % NPY_ALIGN) % NPY_ALIGN;
    let dict_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(NPY_MAGIC.len() + 2 + dict_len);
    out.extend_from_slice(NPY_MAGIC);
    // A dictionary this short always fits the u16 length of format 1.0 (a shape of more than
    // ~3,000 dimensions would not, and no tensor has one).
    out.extend_from_slice(&u16::try_from(dict_len).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + padding, b' ');
    out.push(b'\n');
    out
}

/// Length of the `.npy` header at the start of `bytes`, after checking the magic.
fn npy_header_len(bytes: &[u8]) -> Result<usize> {
    let fixed = NPY_MAGIC.len() + 2;
    if bytes.len() < fixed || &bytes[..NPY_MAGIC.len()] != NPY_MAGIC {
        return Err(Error::Corrupt("not an .npy version 1.0 payload".into()));
    }
    let dict_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let total = fixed + dict_len;
    if bytes.len() < total {
        return Err(Error::Corrupt("truncated .npy header".into()));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::FrameFormat;
    use ndarray::Array1;

    #[test]
    fn npy_header_matches_numpy() {
        // What numpy.save writes for np.zeros(3, dtype='<f4').
        let header = npy_header(DType::F32, [3u64].into_iter());
        assert!(header.len().is_multiple_of(64));
        let text = std::str::from_utf8(&header[10..]).unwrap();
        assert_eq!(
            text.trim_end(),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"
        );
        assert!(text.ends_with('\n'));
        let two_d = npy_header(DType::U8, [2u64, 5].into_iter());
        assert!(
            std::str::from_utf8(&two_d[10..])
                .unwrap()
                .contains("'shape': (2, 5), }")
        );
        let scalar = npy_header(DType::F64, std::iter::empty());
        assert!(
            std::str::from_utf8(&scalar[10..])
                .unwrap()
                .contains("'shape': (), }")
        );
    }

    #[test]
    fn every_kind_round_trips() {
        let tensor = Tensor::from_owned_array(Array1::from_vec(vec![0.25f32; 1024]));
        let values = [
            Value::Bytes(Bytes::from_static(b"hello")),
            Value::Tensor(tensor),
            Value::Frame(
                Frame::new(
                    FrameFormat::Jpeg,
                    1,
                    1,
                    Bytes::from_static(b"\xFF\xD8\xFF\xE0"),
                )
                .unwrap(),
            ),
            Value::Record(Record::from_json(Bytes::from_static(b"{\"a\":1}")).unwrap()),
        ];
        for value in values {
            let payload = encode_payload(&value);
            let decoded = decode_payload(&value.format(), payload.to_bytes()).unwrap();
            assert_eq!(decoded, value);
        }
    }

    #[test]
    fn decoded_tensor_is_aligned_and_not_copied() {
        let tensor = Tensor::from_slice(vec![4, 8], &[1.0f32; 32]).unwrap();
        let file = encode_payload(&Value::Tensor(tensor.clone())).to_bytes();
        let Value::Tensor(back) =
            decode_payload(&Value::Tensor(tensor).format(), file.clone()).unwrap()
        else {
            panic!("not a tensor");
        };
        let header_len = file.len() - 32 * 4;
        assert!(header_len.is_multiple_of(64));
        assert_eq!(back.data().as_ptr(), file[header_len..].as_ptr());
        assert_eq!(back.view::<f32>().unwrap().shape(), &[4, 8]);
    }

    #[test]
    fn mismatched_or_truncated_payloads_are_corrupt() {
        let tensor = Tensor::from_slice(vec![4], &[1.0f32; 4]).unwrap();
        let format = Value::Tensor(tensor.clone()).format();
        let file = encode_payload(&Value::Tensor(tensor)).to_bytes();
        assert!(matches!(
            decode_payload(&format, file.slice(..file.len() - 1)),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_payload(&format, file.slice(..5)),
            Err(Error::Corrupt(_))
        ));
        let wrong = Format::Tensor {
            dtype: DType::I32,
            shape: vec![4],
        };
        assert!(matches!(
            decode_payload(&wrong, file),
            Err(Error::Corrupt(_))
        ));
        assert!(decode_payload(&Format::Record, Bytes::from_static(b"{")).is_err());
    }

    #[test]
    fn checksum_covers_header_and_body() {
        let p = encode_payload(&Value::Tensor(
            Tensor::from_slice(vec![2], &[1u8, 2]).unwrap(),
        ));
        assert_eq!(p.checksum(), checksum(&p.to_bytes()));
    }
}
