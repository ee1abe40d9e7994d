//! Where an entry lives on disk: the key → path mapping of the filesystem tier.
//!
//! Paths are meant to be read by people, in the reference's layout. For a namespace (pipeline
//! profile) `video_colpali_mv`:
//!
//! | key                                                                   | path under the namespace                              |
//! |-----------------------------------------------------------------------|-------------------------------------------------------|
//! | `video:abc123:keyframes`                                              | `keyframes/abc123/metadata.json`                      |
//! | `video:abc123:keyframes:frame_42`                                     | `keyframes/abc123/frame_42.jpg`                       |
//! | `video:abc123:keyframes:strategy=similarity:threshold=0.999:frame_42` | `keyframes/abc123/strategy=similarity,threshold=0.999/frame_42.jpg` |
//! | `video:abc123:transcript`                                             | `transcripts/abc123.json`                             |
//! | `video:abc123:transcript:lang=auto:model=base`                        | `transcripts/abc123/lang=auto,model=base.json`        |
//! | `video:abc123:descriptions:model=qwen`                                | `descriptions/abc123/model=qwen.json`                 |
//! | `video:abc123:segment_frames:segment_id=0:start_time=0.0:end_time=6.0:frame_1` | `segments/abc123/segment_0_start_0.0_end_6.0/frame_1.jpg` |
//! | `video:abc123:segment_frames:end_time=6.0:max_frames=12:sampling_fps=2.0:segment_id=0:start_time=0.0:frame_1` | `segments/abc123/segment_0_start_0.0_end_6.0/max_frames=12,sampling_fps=2.0/frame_1.jpg` |
//! | `embedding:colpali:a3f2e9d8c7b6a5f4` (any other key)                  | `embedding/colpali/a3f2e9d8c7b6a5f4.npy`              |
//! | a key too long for a path                                             | `_hashed/3f/3f9c….bin`                                |
//!
//! The extension is the value's ([`Format::extension`](strata_proto::Format::extension)):
//! `.jpg` for JPEG frames, `.npy` for tensors, `.json` for records, `.bin` for bytes. Next to
//! each data file sits its `.meta` sidecar (`frame_42.jpg.meta`).
//!
//! A segment's directory is named after its `segment_id`, `start_time` and `end_time`
//! parameters, found by name in any order; other parameters get a directory of their own
//! below it (see `segment_dirs` for how a parameter order other than the reference's or the
//! sorted one is kept).
//!
//! Unlike the reference, the mapping keeps every part of the key — including artifact
//! parameters — so that it is **injective**: two keys never share a file. It is also
//! **confined**: every component is escaped so that none is empty, `.`, `..`, hidden, or
//! contains a separator, so no key can reach outside the tier's directory. Both properties are
//! proved by property tests against a decoder that recovers the key from the path.
//!
//! Escaping: bytes outside `[A-Za-z0-9_.=-]`, and a leading `.`, become `%XX`; an empty
//! segment becomes a lone `%`. Directory names never end in a data extension (that dot is
//! escaped), so a directory can never be mistaken for, or collide with, a data file. Generic
//! keys whose first segment would be one of the structured top-level directories have its
//! first character escaped. Components longer than [`MAX_COMPONENT`] bytes, or paths longer
//! than [`MAX_RELATIVE_PATH`], fall back to a SHA-256 name under `_hashed/`; the key stored in
//! the sidecar is checked on every read, so even a hash collision could not serve the wrong
//! value.

use std::fmt::Write as _;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use strata_proto::{Format, Key, Namespace};

/// Longest path component the layout produces, in bytes. File systems allow 255; the
/// extension, `.meta` and the `.pending` marker of an in-flight write need the rest.
pub const MAX_COMPONENT: usize = 200;

/// Longest path the layout produces below the tier's base directory, in bytes. Keeps paths
/// well inside `PATH_MAX` (4096) whatever the base directory.
pub const MAX_RELATIVE_PATH: usize = 1024;

/// Top-level directories of the structured layout; generic keys never produce them.
const RESERVED: [&str; 5] = [
    "keyframes",
    "transcripts",
    "descriptions",
    "segments",
    HASHED,
];
const HASHED: &str = "_hashed";

/// Where one entry lives: a directory (relative to the base directory) and a file stem; the
/// data file is `stem.<ext>` and its sidecar `stem.<ext>.meta`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryPath {
    /// Components below the base directory, the namespace first.
    pub dirs: Vec<String>,
    /// The file name without extension.
    pub stem: String,
}

impl EntryPath {
    /// The directory, relative to the base directory.
    pub fn dir(&self) -> PathBuf {
        self.dirs.iter().collect()
    }

    /// The data file name for an extension (`frame_42.jpg`).
    pub fn file_name(&self, ext: &str) -> String {
        format!("{}.{ext}", self.stem)
    }

    /// The data file for `format`, relative to the base directory.
    pub fn data_file(&self, format: &Format) -> PathBuf {
        self.dir().join(self.file_name(format.extension()))
    }

    /// Whether this entry is stored under the hashed fallback.
    pub fn is_hashed(&self) -> bool {
        self.dirs.get(1).is_some_and(|d| d == HASHED)
    }
}

/// The path of `key` in `namespace`.
pub fn entry_path(namespace: &Namespace, key: &Key) -> EntryPath {
    let (mut dirs, stem) = structured(key.as_str()).unwrap_or_else(|| generic(key.as_str()));
    let total: usize = dirs.iter().map(|d| d.len() + 1).sum::<usize>() + stem.len();
    let too_long = total > MAX_RELATIVE_PATH
        || stem.len() > MAX_COMPONENT
        || dirs.iter().any(|d| d.len() > MAX_COMPONENT);
    if too_long {
        return hashed(namespace, key);
    }
    dirs.insert(0, namespace.as_str().to_owned());
    EntryPath { dirs, stem }
}

fn hashed(namespace: &Namespace, key: &Key) -> EntryPath {
    let digest = Sha256::digest(key.as_str().as_bytes());
    let name = hex::encode(digest);
    EntryPath {
        dirs: vec![
            namespace.as_str().to_owned(),
            HASHED.to_owned(),
            name[..2].to_owned(),
        ],
        stem: name,
    }
}

/// Any key: one directory per `:`-separated segment, the last segment the file.
fn generic(key: &str) -> (Vec<String>, String) {
    let mut segments: Vec<&str> = key.split(':').collect();
    let last = segments.pop().unwrap_or_default();
    let mut dirs: Vec<String> = segments.into_iter().map(escape_dir).collect();
    if let Some(first) = dirs.first_mut()
        && RESERVED.contains(&first.as_str())
    {
        // Keep the structured top-level directories for structured keys.
        let mut escaped = String::new();
        push_escaped_byte(&mut escaped, first.as_bytes()[0]);
        escaped.push_str(&first[1..]);
        *first = escaped;
    }
    (dirs, escape(last))
}

/// Keys of the reference's pipeline artifacts:
/// `video:{video}:{artifact}[:{name}={value}]*[:frame_{n}]`.
fn structured(key: &str) -> Option<(Vec<String>, String)> {
    let segments: Vec<&str> = key.split(':').collect();
    let [kind, video, artifact, rest @ ..] = segments.as_slice() else {
        return None;
    };
    if *kind != "video" || !is_plain(video) {
        return None;
    }
    let param_count = rest.iter().take_while(|s| is_param(s)).count();
    let (params, item) = rest.split_at(param_count);
    let item = match item {
        [] => None,
        [frame] if is_frame(frame) => Some(*frame),
        _ => return None,
    };
    let video_dir = escape_dir(video);
    match *artifact {
        "keyframes" => {
            let mut dirs = vec!["keyframes".to_owned(), video_dir];
            if !params.is_empty() {
                dirs.push(protect_dir(join_params(params)));
            }
            Some((dirs, item.unwrap_or("metadata").to_owned()))
        }
        "transcript" | "descriptions" if item.is_none() => {
            let top = if *artifact == "transcript" {
                "transcripts"
            } else {
                "descriptions"
            };
            if params.is_empty() {
                Some((vec![top.to_owned()], escape(video)))
            } else {
                Some((vec![top.to_owned(), video_dir], join_params(params)))
            }
        }
        "segment_frames" => {
            let (segment, extra) = segment_dirs(params)?;
            let mut dirs = vec!["segments".to_owned(), video_dir, segment];
            if let Some(extra) = extra {
                dirs.push(extra);
            }
            Some((dirs, item.unwrap_or("metadata").to_owned()))
        }
        _ => None,
    }
}

/// The parameters a segment's directory is named after, in the reference's order.
const SEGMENT_PARAMS: [&str; 3] = ["segment_id", "start_time", "end_time"];

/// The directories of a segment key's parameters: `segment_{id}_start_{start}_end_{end}`,
/// with `segment_id`, `start_time` and `end_time` picked by name wherever they are, then —
/// if needed — one directory with the other parameters (`max_frames=12,sampling_fps=2.0`).
///
/// Two parameter orders need nothing more: the reference's (`segment_id`, `start_time`,
/// `end_time` alone, in that order) and, when there are other parameters, the order sorted
/// by name that clients write. Any other order is kept in the second directory, which then
/// lists every parameter in key order, the three named ones as their bare names
/// (`segment_id,start_time,end_time,max_frames=12`), so no two keys share a path. `None`
/// (the generic layout) if a named parameter is missing, repeated or not a number.
fn segment_dirs(params: &[&str]) -> Option<(String, Option<String>)> {
    let mut values: [Option<&str>; 3] = [None; 3];
    let mut extra: Vec<&str> = Vec::new();
    let mut order: Vec<String> = Vec::with_capacity(params.len());
    for param in params {
        let (name, value) = param.split_once('=')?;
        match SEGMENT_PARAMS.iter().position(|n| *n == name) {
            Some(i) => {
                if values[i].is_some() || !is_number(value) {
                    return None;
                }
                values[i] = Some(value);
                order.push(name.to_owned());
            }
            None => {
                extra.push(param);
                order.push(escape(param));
            }
        }
    }
    let [Some(id), Some(start), Some(end)] = values else {
        return None;
    };
    let segment = format!("segment_{id}_start_{start}_end_{end}");
    let names: Vec<&str> = params
        .iter()
        .map(|p| p.split_once('=').map_or(*p, |(name, _)| name))
        .collect();
    let reference_order = extra.is_empty() && names == SEGMENT_PARAMS;
    let sorted_by_name = !extra.is_empty() && names.windows(2).all(|w| w[0] < w[1]);
    let extra_dir = if reference_order {
        None
    } else if sorted_by_name {
        Some(protect_dir(join_params(&extra)))
    } else {
        Some(protect_dir(order.join(",")))
    };
    Some((segment, extra_dir))
}

/// A video id that can be a directory name as it is: safe characters, no `=`, no leading dot.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `name=value` with a lower-case identifier name.
fn is_param(s: &str) -> bool {
    s.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// `frame_{digits}`.
fn is_frame(s: &str) -> bool {
    s.strip_prefix("frame_")
        .is_some_and(|n| !n.is_empty() && n.len() <= 12 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A segment id or time: digits, `.`, `-`, `+`, `e` (no `_`, which separates them).
fn is_number(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
}

fn join_params(params: &[&str]) -> String {
    let mut out = String::new();
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&escape(p));
    }
    out
}

fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'=')
}

fn push_escaped_byte(out: &mut String, b: u8) {
    let _ = write!(out, "%{b:02X}");
}

/// Escapes one key segment into a file-name-safe string (see the module docs).
fn escape(segment: &str) -> String {
    if segment.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(segment.len());
    for (i, b) in segment.bytes().enumerate() {
        if is_safe(b) && !(i == 0 && b == b'.') {
            out.push(char::from(b));
        } else {
            push_escaped_byte(&mut out, b);
        }
    }
    out
}

/// Escapes a segment used as a directory name.
fn escape_dir(segment: &str) -> String {
    protect_dir(escape(segment))
}

/// Escapes the last dot of a directory name that ends like a data or sidecar file, so that a
/// directory and a file can never have the same name.
fn protect_dir(mut name: String) -> String {
    if let Some(dot) = name.rfind('.') {
        let suffix = &name[dot + 1..];
        if suffix == "meta" || Format::EXTENSIONS.contains(&suffix) {
            name.replace_range(dot..=dot, "%2E");
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    fn unescape(component: &str) -> Option<String> {
        if component == "%" {
            return Some(String::new());
        }
        let bytes = component.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = component.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    fn split_params(joined: &str) -> Option<Vec<String>> {
        joined.split(',').map(unescape).collect()
    }

    /// Recovers the key from a non-hashed path: the left inverse that proves injectivity.
    fn decode(path: &EntryPath) -> Option<String> {
        let dirs: Vec<&str> = path.dirs.iter().skip(1).map(String::as_str).collect();
        let stem = path.stem.as_str();
        let item = |stem: &str| -> Option<Option<String>> {
            if stem == "metadata" {
                Some(None)
            } else if is_frame(stem) {
                Some(Some(stem.to_owned()))
            } else {
                None
            }
        };
        let mut segments: Vec<String> = Vec::new();
        match dirs.as_slice() {
            ["keyframes", video, params @ ..] if params.len() <= 1 => {
                segments.extend(["video".into(), unescape(video)?, "keyframes".into()]);
                if let [p] = params {
                    segments.extend(split_params(p)?);
                }
                segments.extend(item(stem)?);
            }
            [top @ ("transcripts" | "descriptions")] => {
                let artifact = if *top == "transcripts" {
                    "transcript"
                } else {
                    "descriptions"
                };
                segments.extend(["video".into(), unescape(stem)?, artifact.into()]);
            }
            [top @ ("transcripts" | "descriptions"), video] => {
                let artifact = if *top == "transcripts" {
                    "transcript"
                } else {
                    "descriptions"
                };
                segments.extend(["video".into(), unescape(video)?, artifact.into()]);
                segments.extend(split_params(stem)?);
            }
            ["segments", video, segment, params @ ..] if params.len() <= 1 => {
                let rest = segment.strip_prefix("segment_")?;
                let (id, rest) = rest.split_once("_start_")?;
                let (start, end) = rest.split_once("_end_")?;
                segments.extend(["video".into(), unescape(video)?, "segment_frames".into()]);
                let named = [
                    format!("segment_id={id}"),
                    format!("start_time={start}"),
                    format!("end_time={end}"),
                ];
                let listed = match params {
                    [] => Vec::new(),
                    [p] => split_params(p)?,
                    _ => return None,
                };
                let by_name = |name: &str| {
                    SEGMENT_PARAMS
                        .iter()
                        .position(|n| *n == name)
                        .map(|i| named[i].clone())
                };
                if listed.is_empty() {
                    // The reference's order.
                    segments.extend(named.iter().cloned());
                } else if listed.iter().any(|p| !p.contains('=')) {
                    // An explicit order: the named parameters by their bare names.
                    for p in listed {
                        segments.push(if p.contains('=') { p } else { by_name(&p)? });
                    }
                } else {
                    // Sorted by name.
                    let mut all: Vec<String> = listed.into_iter().chain(named).collect();
                    all.sort_by(|a, b| {
                        a.split_once('=')
                            .map(|x| x.0)
                            .cmp(&b.split_once('=').map(|x| x.0))
                    });
                    segments.extend(all);
                }
                segments.extend(item(stem)?);
            }
            [first, ..] if RESERVED.contains(first) => return None,
            _ => {
                for d in &dirs {
                    segments.push(unescape(d)?);
                }
                segments.push(unescape(stem)?);
            }
        }
        Some(segments.join(":"))
    }

    fn ns() -> Namespace {
        Namespace::new("video_colpali_mv").unwrap()
    }

    fn path_of(key: &str) -> String {
        let p = entry_path(&ns(), &Key::new(key).unwrap());
        let mut parts = p.dirs[1..].to_vec();
        parts.push(p.stem);
        parts.join("/")
    }

    #[test]
    fn reference_layout() {
        let cases = [
            ("video:abc123:keyframes", "keyframes/abc123/metadata"),
            (
                "video:abc123:keyframes:frame_42",
                "keyframes/abc123/frame_42",
            ),
            (
                "video:robot_soccer:keyframes:max_frames=3000:strategy=similarity:threshold=0.999:frame_7",
                "keyframes/robot_soccer/max_frames=3000,strategy=similarity,threshold=0.999/frame_7",
            ),
            ("video:abc123:transcript", "transcripts/abc123"),
            (
                "video:abc123:transcript:lang=auto:model=base",
                "transcripts/abc123/lang=auto,model=base",
            ),
            (
                "video:abc123:descriptions:batch_size=500:model_name=Qwen/Qwen2-VL-2B-Instruct",
                "descriptions/abc123/batch_size=500,model_name=Qwen%2FQwen2-VL-2B-Instruct",
            ),
            (
                "video:abc123:segment_frames:segment_id=0:start_time=0.0:end_time=6.0:frame_1",
                "segments/abc123/segment_0_start_0.0_end_6.0/frame_1",
            ),
            (
                "video:abc123:segment_frames:segment_id=0:start_time=0.0:end_time=6.0",
                "segments/abc123/segment_0_start_0.0_end_6.0/metadata",
            ),
            // The order clients write: parameters sorted by name.
            (
                "video:abc123:segment_frames:end_time=6.0:max_frames=12:sampling_fps=2.0:segment_id=0:start_time=0.0:frame_3",
                "segments/abc123/segment_0_start_0.0_end_6.0/max_frames=12,sampling_fps=2.0/frame_3",
            ),
            (
                "video:long_video:segment_frames:end_time=120.5:max_frames=60:sampling_fps=0.25:segment_id=3:start_time=90.0",
                "segments/long_video/segment_3_start_90.0_end_120.5/max_frames=60,sampling_fps=0.25/metadata",
            ),
            // Any other order is spelled out, so that it gets a path of its own.
            (
                "video:abc123:segment_frames:end_time=6.0:segment_id=0:start_time=0.0:frame_1",
                "segments/abc123/segment_0_start_0.0_end_6.0/end_time,segment_id,start_time/frame_1",
            ),
            (
                "video:abc123:segment_frames:segment_id=0:start_time=0.0:end_time=6.0:max_frames=12:frame_1",
                "segments/abc123/segment_0_start_0.0_end_6.0/segment_id,start_time,end_time,max_frames=12/frame_1",
            ),
            // A named parameter missing, repeated or not a number: the generic layout.
            (
                "video:abc123:segment_frames:segment_id=0:start_time=0.0:frame_1",
                "video/abc123/segment_frames/segment_id=0/start_time=0.0/frame_1",
            ),
            (
                "video:abc123:segment_frames:segment_id=0:segment_id=0:start_time=0.0:end_time=6.0",
                "video/abc123/segment_frames/segment_id=0/segment_id=0/start_time=0.0/end_time=6.0",
            ),
            (
                "video:abc123:segment_frames:segment_id=a_b:start_time=0.0:end_time=6.0",
                "video/abc123/segment_frames/segment_id=a_b/start_time=0.0/end_time=6.0",
            ),
            (
                "embedding:colpali:a3f2e9d8c7b6a5f4",
                "embedding/colpali/a3f2e9d8c7b6a5f4",
            ),
            ("plain", "plain"),
            ("keyframes:x", "%6Beyframes/x"),
            ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
            ("a::b", "a/%/b"),
            ("report.json:x", "report%2Ejson/x"),
            (
                "video:abc123:thumbnails:frame_1",
                "video/abc123/thumbnails/frame_1",
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(path_of(key), expected, "key {key}");
        }
    }

    #[test]
    fn long_keys_fall_back_to_a_hash() {
        let key = Key::new("x".repeat(MAX_COMPONENT + 1)).unwrap();
        let p = entry_path(&ns(), &key);
        assert!(p.is_hashed());
        assert_eq!(p.dirs, vec!["video_colpali_mv", "_hashed", &p.stem[..2]]);
        assert_eq!(p.stem.len(), 64);
        let unicode = Key::new("日本".repeat(100)).unwrap(); // 600 bytes, 1800 escaped
        assert!(entry_path(&ns(), &unicode).is_hashed());
    }

    fn component_is_confined(c: &str) -> bool {
        !c.is_empty()
            && c != "."
            && c != ".."
            && !c.starts_with('.')
            && !c.contains('/')
            && !c.contains('\0')
            && c.len() <= MAX_COMPONENT
            && matches!(Path::new(c).components().next(), Some(Component::Normal(_)))
    }

    fn arb_key() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            "[a-z0-9_]{1,8}",
            "[a-z_]{1,6}=[a-zA-Z0-9./,=-]{0,8}",
            "frame_[0-9]{1,3}",
            "(keyframes|transcript|descriptions|segment_frames|video|metadata)",
            "segment_id=[0-9]{1,2}",
            "(start|end)_time=[0-9]{1,2}\\.[0-9]",
            "(max_frames|sampling_fps)=[0-9]{1,2}",
            "(segment_id|start_time|end_time)",
            "\\.{1,2}",
            "[a-z]{1,4}\\.(json|jpg|npy|bin|meta)",
            "",
            "[^\\x00-\\x1f\\x7f-\\x9f:]{1,6}",
        ];
        proptest::collection::vec(segment, 1..8)
            .prop_map(|s| s.join(":"))
            .prop_filter("valid key", |k| Key::new(k).is_ok())
    }

    /// Segment keys: the named parameters in any order among others, maybe repeated.
    fn arb_segment_key() -> impl Strategy<Value = String> {
        let extra = proptest::collection::vec(
            prop_oneof![
                "(max_frames|sampling_fps)=[0-9]{1,2}",
                "(segment_id|start_time|end_time)=[0-9]\\.[0-9]",
                "[a-z_]{1,6}=[a-z0-9.,]{0,4}",
            ],
            0..3,
        );
        (
            extra,
            "[0-9]{1,2}",
            "[0-9]\\.[0-9]",
            "[0-9]{1,2}\\.5",
            proptest::option::of("frame_[0-9]{1,2}"),
        )
            .prop_flat_map(|(extra, id, start, end, frame)| {
                let mut params = extra;
                params.extend([
                    format!("segment_id={id}"),
                    format!("start_time={start}"),
                    format!("end_time={end}"),
                ]);
                (Just(params).prop_shuffle(), Just(frame))
            })
            .prop_map(|(params, frame)| {
                let mut key = format!("video:abc123:segment_frames:{}", params.join(":"));
                if let Some(frame) = frame {
                    key.push(':');
                    key.push_str(&frame);
                }
                key
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Segment keys in any parameter order decode back to themselves.
        #[test]
        fn segment_mapping_is_injective(key in arb_segment_key()) {
            let p = entry_path(&ns(), &Key::new(&key).unwrap());
            prop_assert_eq!(decode(&p), Some(key));
        }

        /// Pairs of segment keys that differ only in order never share a path.
        #[test]
        fn segment_orders_get_distinct_paths(a in arb_segment_key(), b in arb_segment_key()) {
            prop_assume!(a != b);
            let pa = entry_path(&ns(), &Key::new(&a).unwrap());
            let pb = entry_path(&ns(), &Key::new(&b).unwrap());
            prop_assert_ne!(pa, pb);
        }

        /// Decoding the path gives back the key, so no two keys share a path.
        #[test]
        fn mapping_is_injective(key in arb_key()) {
            let p = entry_path(&ns(), &Key::new(&key).unwrap());
            if !p.is_hashed() {
                prop_assert_eq!(decode(&p), Some(key));
            }
        }

        /// Every component is a plain name: the path cannot leave the base directory.
        #[test]
        fn mapping_is_confined(key in prop_oneof![arb_key(), "[^\\x00-\\x1f\\x7f-\\x9f]{1,300}"]) {
            let Ok(k) = Key::new(&key) else { return Ok(()) };
            let p = entry_path(&ns(), &k);
            for c in p.dirs.iter().chain(std::iter::once(&p.stem)) {
                prop_assert!(component_is_confined(c), "{c:?} from {key:?}");
            }
            for ext in Format::EXTENSIONS {
                let rel = p.dir().join(p.file_name(ext));
                prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }

        /// No directory of one key is a data or sidecar file of another.
        #[test]
        fn directories_never_look_like_files(key in arb_key()) {
            let p = entry_path(&ns(), &Key::new(&key).unwrap());
            for d in &p.dirs {
                let ext = d.rsplit_once('.').map(|(_, e)| e);
                prop_assert!(ext.is_none_or(|e| e != "meta" && !Format::EXTENSIONS.contains(&e)), "{d}");
            }
        }

        /// Pairs of distinct keys never share a path, hashed or not.
        #[test]
        fn distinct_keys_distinct_paths(a in arb_key(), b in arb_key()) {
            prop_assume!(a != b);
            let pa = entry_path(&ns(), &Key::new(&a).unwrap());
            let pb = entry_path(&ns(), &Key::new(&b).unwrap());
            prop_assert_ne!(pa, pb);
        }
    }
}
