//! On-disk building blocks shared by the log store and the state machine store: checksummed
//! frames, atomically replaced files, postcard encoding with clear errors.
//!
//! A frame is `len: u32 LE | crc: u32 LE | payload[len]`, where `crc` is CRC-32C over the
//! four length bytes followed by the payload (so an all-zero header never checks out).
//! Every file starts with an 8-byte magic naming its kind and format version.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Length of a frame header.
pub(crate) const HEADER: usize = 8;
/// Length of a file magic.
pub(crate) const MAGIC_LEN: usize = 8;
/// Largest payload a frame may carry (a sanity bound against garbage lengths).
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

/// The checksum of a frame with this length field and payload.
pub(crate) fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// Appends one frame carrying `payload` to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "record of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                payload.len()
            ),
        ));
    }
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?
        .to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&frame_crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// What is found at an offset of a file of frames.
pub(crate) enum Frame<'a> {
    /// A frame whose checksum matches: its payload, and the offset after it.
    Ok(&'a [u8], usize),
    /// The end of the data, exactly at a frame boundary.
    End,
    /// A frame that is cut short or does not check out (the reason is given).
    Bad(String),
}

/// Reads the frame at `pos` of `data`.
pub(crate) fn read_frame(data: &[u8], pos: usize) -> Frame<'_> {
    let Some(rest) = data.get(pos..) else {
        return Frame::Bad(format!("offset {pos} is past the end"));
    };
    if rest.is_empty() {
        return Frame::End;
    }
    let Some((header, body)) = rest.split_first_chunk::<HEADER>() else {
        return Frame::Bad(format!("short frame header at offset {pos}"));
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len_bytes = [l0, l1, l2, l3];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len > MAX_PAYLOAD {
        return Frame::Bad(format!("implausible frame length {len} at offset {pos}"));
    }
    let Some(payload) = body.get(..len) else {
        return Frame::Bad(format!(
            "frame at offset {pos} is cut short ({} of {len} bytes)",
            body.len()
        ));
    };
    if frame_crc(len_bytes, payload) != crc {
        return Frame::Bad(format!("checksum mismatch in frame at offset {pos}"));
    }
    Frame::Ok(payload, pos + HEADER + len)
}

/// An `InvalidData` error naming the file.
pub(crate) fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Checks the magic at the start of `data`.
pub(crate) fn check_magic(path: &Path, data: &[u8], magic: &[u8; MAGIC_LEN]) -> io::Result<()> {
    match data.get(..MAGIC_LEN) {
        Some(m) if m == magic => Ok(()),
        _ => Err(corrupt(
            path,
            format!(
                "not a {} file (bad magic or unsupported version)",
                String::from_utf8_lossy(magic)
            ),
        )),
    }
}

/// Encodes with postcard.
pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(io::Error::other)
}

/// Decodes with postcard; a failure is an `InvalidData` error naming `path`.
pub(crate) fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(path, format!("undecodable record: {e}")))
}

/// Makes the directory entries of `dir` (creations, renames) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `dir/name` atomically with `magic` followed by `frames` (already framed):
/// write `name.tmp`, fsync, rename over `name`, fsync the directory.
pub(crate) fn replace(
    dir: &Path,
    name: &str,
    magic: &[u8; MAGIC_LEN],
    frames: &[u8],
) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(magic)?;
        f.write_all(frames)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Replaces `dir/name` atomically with a file holding one frame carrying `payload`.
pub(crate) fn write_single(
    dir: &Path,
    name: &str,
    magic: &[u8; MAGIC_LEN],
    payload: &[u8],
) -> io::Result<()> {
    let mut frames = Vec::with_capacity(payload.len() + HEADER);
    push_frame(&mut frames, payload)?;
    replace(dir, name, magic, &frames)
}

/// Reads a file written by [`write_single`]: `None` if it does not exist, its payload if it
/// is intact, an `InvalidData` error otherwise (such files are replaced atomically, so any
/// damage is corruption, never a torn write).
pub(crate) fn read_single(
    dir: &Path,
    name: &str,
    magic: &[u8; MAGIC_LEN],
) -> io::Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    check_magic(&path, &data, magic)?;
    match read_frame(&data, MAGIC_LEN) {
        Frame::Ok(payload, end) if end == data.len() => Ok(Some(payload.to_vec())),
        Frame::Ok(..) => Err(corrupt(&path, "trailing bytes after the record")),
        Frame::End => Err(corrupt(&path, "no record")),
        Frame::Bad(why) => Err(corrupt(&path, why)),
    }
}

/// Runs blocking file I/O on tokio's blocking pool and waits for it.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

/// Removes a leftover `name.tmp` of an interrupted [`replace`].
pub(crate) fn remove_tmp(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(format!("{name}.tmp"))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MAGIC: &[u8; 8] = b"TESTMAG1";

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"hello").unwrap();
        push_frame(&mut buf, b"").unwrap();
        let Frame::Ok(p, next) = read_frame(&buf, 0) else {
            panic!("first frame")
        };
        assert_eq!(p, b"hello");
        let Frame::Ok(p, end) = read_frame(&buf, next) else {
            panic!("second frame")
        };
        assert!(p.is_empty());
        assert!(matches!(read_frame(&buf, end), Frame::End));
        // Cut short, flipped bit, zero header.
        assert!(matches!(read_frame(&buf[..next - 1], 0), Frame::Bad(_)));
        let mut flipped = buf.clone();
        flipped[HEADER + 1] ^= 1;
        assert!(matches!(read_frame(&flipped, 0), Frame::Bad(_)));
        assert!(matches!(read_frame(&[0u8; 16], 0), Frame::Bad(_)));
    }

    #[test]
    fn single_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_single(dir.path(), "x", MAGIC).unwrap(), None);
        write_single(dir.path(), "x", MAGIC, b"one").unwrap();
        write_single(dir.path(), "x", MAGIC, b"two").unwrap();
        assert_eq!(
            read_single(dir.path(), "x", MAGIC).unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert!(read_single(dir.path(), "x", b"OTHERMG1").is_err());
        let path = dir.path().join("x");
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let err = read_single(dir.path(), "x", MAGIC).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
