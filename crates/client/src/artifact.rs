//! [`ArtifactCache`]: the artifacts a video pipeline computes, for one pipeline profile.
//!
//! The profile is the [`Namespace`]; inside it every artifact of a video `v` has a key that
//! starts with `video:{v}:` and continues with the artifact type and its parameters, sorted by
//! name and written `name=value` — the reference's `_generate_artifact_key`, with Python's
//! `str()` of each value (`0.999`, `1.0`, `3000`), so keys agree with the reference's:
//!
//! | artifact           | key                                                                          | value          |
//! |--------------------|------------------------------------------------------------------------------|----------------|
//! | keyframes metadata | `video:v:keyframes:max_frames=3000:strategy=similarity:threshold=0.999`     | JSON record    |
//! | one keyframe       | `…keyframes:…:threshold=0.999:frame_42`                                      | JPEG frame     |
//! | transcript         | `video:v:transcript:lang=auto:model=base`                                    | JSON record    |
//! | frame descriptions | `video:v:descriptions:batch_size=500:model=Qwen/Qwen2-VL-2B-Instruct`        | JSON record    |
//! | segment metadata   | `video:v:segment_frames:end_time=6.0:max_frames=12:sampling_fps=2.0:segment_id=0:start_time=0.0` | JSON record |
//! | one segment frame  | `…segment_frames:…:start_time=0.0:frame_3`                                   | JPEG frame     |
//!
//! Frames go in as raw RGB arrays of shape `(height, width, 3)`, encoded to JPEG on the
//! client (on blocking threads, in parallel), or as JPEG bytes, stored as they are once they
//! have been decoded completely (see [`jpeg`]). Frames are written before the
//! metadata that lists them, so a reader that finds the metadata finds the frames (unless
//! they were evicted or expired since). [`ArtifactCache::invalidate_video`] deletes every key
//! under `video:{v}:` on every member in one cluster-wide clear.
//!
//! Video ids are checked: no path separators, `:`, NUL or control characters, not `.` or
//! `..` — they become a segment of the key and a directory name on the nodes' disks.
//!
//! Caveats: the reference's quirk `threshold or 0.999` (a threshold of 0 means the default) is
//! not copied: the parameters are used as given. Frames missing on load (evicted, expired)
//! are left out of the answer, as in the reference. No per-artifact statistics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ndarray::Array3;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strata_proto::{Frame, FrameFormat, Key, Namespace, Record, Value};

use crate::cache_error::CacheError;
use crate::client::Client;
use crate::jpeg;

/// TTL of artifacts unless configured otherwise: seven days, as in the reference.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest video id, in bytes: it becomes a directory name (255 bytes at most on common file
/// systems).
pub const MAX_VIDEO_ID_BYTES: usize = 200;

/// A validated video id: the part of every artifact key that names the video.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VideoId(String);

impl VideoId {
    /// Checks `id`: 1–200 bytes, not `.` or `..`, no `/`, `\`, `:`, NUL or other control
    /// characters.
    pub fn new(id: impl Into<String>) -> Result<Self, CacheError> {
        let id = id.into();
        let invalid = |reason| CacheError::InvalidVideoId {
            video: id.chars().take(80).collect(),
            reason,
        };
        if id.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if id.len() > MAX_VIDEO_ID_BYTES {
            return Err(invalid("longer than 200 bytes"));
        }
        if id == "." || id == ".." {
            return Err(invalid("must not be '.' or '..'"));
        }
        if id.contains(['/', '\\']) {
            return Err(invalid("must not contain a path separator ('/' or '\\')"));
        }
        if id.contains(':') {
            return Err(invalid(
                "must not contain ':', which separates key segments",
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(invalid("must not contain NUL or other control characters"));
        }
        Ok(Self(id))
    }

    /// The id of the video file at `path`: its file name without the extension, as the
    /// reference derives it (`/data/robot_soccer.mp4` → `robot_soccer`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, CacheError> {
        let path = path.as_ref();
        let stem = path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| {
            CacheError::InvalidVideoId {
                video: path.display().to_string().chars().take(80).collect(),
                reason: "the path has no UTF-8 file name",
            }
        })?;
        Self::new(stem)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VideoId {
    type Error = CacheError;
    fn try_from(id: String) -> Result<Self, CacheError> {
        Self::new(id)
    }
}

impl From<VideoId> for String {
    fn from(id: VideoId) -> String {
        id.0
    }
}

impl std::fmt::Display for VideoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A float as Python's `str()`/`repr()` writes it (`1.0`, `0.999`, `1e-05`, `1e+16`), so that
/// keys built from float parameters agree with the reference's.
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` is the shortest representation that round-trips, like Python's repr.
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if x != 0.0 && !(-4..16).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs());
    }
    let positional = format!("{x}");
    if positional.contains('.') {
        positional
    } else {
        format!("{positional}.0")
    }
}

/// The key of an artifact: `video:{video}:{artifact}` followed by `:{name}={value}` for each
/// parameter, sorted by name (the reference's `_generate_artifact_key`).
pub fn artifact_key(video: &VideoId, artifact: &str, params: &[(&str, String)]) -> String {
    let mut key = format!("video:{}:{artifact}", video.as_str());
    let mut sorted: Vec<&(&str, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in sorted {
        key.push(':');
        key.push_str(name);
        key.push('=');
        key.push_str(value);
    }
    key
}

/// The key of frame `n` of the artifact under `artifact_key`: `{artifact_key}:frame_{n}`.
pub fn frame_key(artifact_key: &str, n: u64) -> String {
    format!("{artifact_key}:frame_{n}")
}

/// The glob that matches every artifact key of `video`: `video:{video}:*`, with the glob
/// characters of the id matched literally.
pub fn video_pattern(video: &VideoId) -> String {
    let mut pattern = String::from("video:");
    for c in video.as_str().chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}') {
            pattern.push('[');
            pattern.push(c);
            pattern.push(']');
        } else {
            pattern.push(c);
        }
    }
    pattern.push_str(":*");
    pattern
}

fn check_finite(name: &str, x: f64) -> Result<String, CacheError> {
    if x.is_finite() {
        Ok(python_float(x))
    } else {
        Err(CacheError::InvalidInput(format!(
            "{name} must be a finite number, got {x}"
        )))
    }
}

/// How keyframes were extracted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyframeStrategy {
    /// A new keyframe when similarity to the last one drops below `threshold`.
    Similarity {
        /// Similarity threshold (the reference's default is 0.999).
        threshold: f64,
    },
    /// Keyframes at a fixed rate.
    Fps {
        /// Keyframes per second (the reference's default is 1.0).
        fps: f64,
    },
}

/// The parameters keyframes are cached under.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyframeParams {
    /// The extraction strategy.
    pub strategy: KeyframeStrategy,
    /// At most this many keyframes.
    pub max_frames: u32,
}

impl Default for KeyframeParams {
    /// The reference's defaults: similarity with threshold 0.999, at most 3000 frames.
    fn default() -> Self {
        Self {
            strategy: KeyframeStrategy::Similarity { threshold: 0.999 },
            max_frames: 3000,
        }
    }
}

impl KeyframeParams {
    /// The key of the keyframes metadata of `video`.
    pub fn key(&self, video: &VideoId) -> Result<String, CacheError> {
        let mut params = vec![("max_frames", self.max_frames.to_string())];
        match self.strategy {
            KeyframeStrategy::Similarity { threshold } => {
                params.push(("strategy", "similarity".into()));
                params.push(("threshold", check_finite("threshold", threshold)?));
            }
            KeyframeStrategy::Fps { fps } => {
                params.push(("strategy", "fps".into()));
                params.push(("fps", check_finite("fps", fps)?));
            }
        }
        Ok(artifact_key(video, "keyframes", &params))
    }
}

/// The parameters a transcript is cached under.
#[derive(Clone, Debug, PartialEq)]
pub struct TranscriptParams {
    /// Whisper model size (`base`, `small`, ...).
    pub model_size: String,
    /// Language code; `None` is written `auto`.
    pub language: Option<String>,
}

impl Default for TranscriptParams {
    /// The reference's defaults: model `base`, language `auto`.
    fn default() -> Self {
        Self {
            model_size: "base".into(),
            language: None,
        }
    }
}

impl TranscriptParams {
    /// The key of the transcript of `video`.
    pub fn key(&self, video: &VideoId) -> String {
        let lang = self.language.as_deref().unwrap_or("auto").to_owned();
        artifact_key(
            video,
            "transcript",
            &[("model", self.model_size.clone()), ("lang", lang)],
        )
    }
}

/// The parameters frame descriptions are cached under.
#[derive(Clone, Debug, PartialEq)]
pub struct DescriptionParams {
    /// The vision-language model (`Qwen/Qwen2-VL-2B-Instruct`).
    pub model_name: String,
    /// Batch size used to generate them (the reference's default is 500).
    pub batch_size: u32,
}

impl DescriptionParams {
    /// Descriptions by `model_name` with the reference's default batch size, 500.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            batch_size: 500,
        }
    }

    /// The key of the descriptions of `video`.
    pub fn key(&self, video: &VideoId) -> String {
        artifact_key(
            video,
            "descriptions",
            &[
                ("model", self.model_name.clone()),
                ("batch_size", self.batch_size.to_string()),
            ],
        )
    }
}

/// The parameters the frames of one temporal segment are cached under.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentParams {
    /// Segment number.
    pub segment_id: u64,
    /// Start, in seconds.
    pub start_time: f64,
    /// End, in seconds.
    pub end_time: f64,
    /// Sampling rate (the reference's default is 2.0).
    pub sampling_fps: f64,
    /// At most this many frames (the reference's default is 12).
    pub max_frames: u32,
}

impl SegmentParams {
    /// Segment `segment_id` from `start_time` to `end_time` with the reference's defaults
    /// (2 frames per second, at most 12).
    pub fn new(segment_id: u64, start_time: f64, end_time: f64) -> Self {
        Self {
            segment_id,
            start_time,
            end_time,
            sampling_fps: 2.0,
            max_frames: 12,
        }
    }

    /// The key of the segment's metadata in `video`.
    pub fn key(&self, video: &VideoId) -> Result<String, CacheError> {
        Ok(artifact_key(
            video,
            "segment_frames",
            &[
                ("segment_id", self.segment_id.to_string()),
                ("start_time", check_finite("start_time", self.start_time)?),
                ("end_time", check_finite("end_time", self.end_time)?),
                (
                    "sampling_fps",
                    check_finite("sampling_fps", self.sampling_fps)?,
                ),
                ("max_frames", self.max_frames.to_string()),
            ],
        ))
    }
}

/// One keyframe as the metadata lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyframeInfo {
    /// Frame number in the video; the image is stored under `…:frame_{frame_id}`.
    pub frame_id: u64,
    /// Time in the video, in seconds.
    pub timestamp: f64,
    /// Any other fields (`filename`, scores, ...), kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The keyframes metadata of a video.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyframesMetadata {
    /// The keyframes.
    pub keyframes: Vec<KeyframeInfo>,
    /// Any other fields (`video_id`, `num_keyframes`, ...), kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Keyframes read back: the metadata and, if asked for, the decoded images by frame id.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedKeyframes {
    /// The metadata.
    pub metadata: KeyframesMetadata,
    /// RGB images of shape `(height, width, 3)` by frame id; empty unless images were asked
    /// for, and without frames that are no longer cached.
    pub images: BTreeMap<u64, Array3<u8>>,
}

/// The metadata stored with the frames of a segment (the reference's fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentMetadata {
    /// Segment number.
    pub segment_id: u64,
    /// Start, in seconds.
    pub start_time: f64,
    /// End, in seconds.
    pub end_time: f64,
    /// Time of each frame, in seconds; frame `i` is stored under `…:frame_{i}`.
    pub timestamps: Vec<f64>,
    /// Number of frames.
    pub num_frames: usize,
    /// Sampling rate.
    pub sampling_fps: f64,
    /// Frame limit.
    pub max_frames: u32,
    /// When it was cached, in seconds since the Unix epoch.
    pub cached_at: f64,
}

/// Segment frames read back.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedSegment {
    /// The metadata.
    pub metadata: SegmentMetadata,
    /// RGB frames of shape `(height, width, 3)`, in order; empty unless frames were asked
    /// for, and without frames that are no longer cached.
    pub frames: Vec<Array3<u8>>,
}

/// A frame handed to the cache.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameImage {
    /// Raw RGB pixels of shape `(height, width, 3)`, encoded to JPEG before storing.
    Rgb(Array3<u8>),
    /// An encoded JPEG image, stored as it is after checking that it decodes.
    Jpeg(Bytes),
}

/// Keyframe strategy names of a [`PipelineConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    /// [`KeyframeStrategy::Similarity`].
    Similarity,
    /// [`KeyframeStrategy::Fps`].
    Fps,
}

/// Which artifacts a pipeline produces, and with which parameters: the reference's
/// `pipeline_config` keys, with its defaults (it deserialises from the same JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    /// Whether keyframes are extracted.
    pub extract_keyframes: bool,
    /// How (default `similarity`).
    pub keyframe_strategy: StrategyName,
    /// Similarity threshold (default 0.999).
    pub keyframe_threshold: f64,
    /// Keyframes per second for the `fps` strategy (default 1.0).
    pub keyframe_fps: f64,
    /// Keyframe limit (default 3000).
    pub max_frames_per_video: u32,
    /// Whether audio is transcribed.
    pub transcribe_audio: bool,
    /// Whisper model size (default `base`).
    pub whisper_model: String,
    /// Whether frame descriptions are generated.
    pub generate_descriptions: bool,
    /// The vision-language model (default `Qwen/Qwen2-VL-2B-Instruct`).
    pub vlm_model: String,
    /// Its batch size (default 500).
    pub vlm_batch_size: u32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            extract_keyframes: false,
            keyframe_strategy: StrategyName::Similarity,
            keyframe_threshold: 0.999,
            keyframe_fps: 1.0,
            max_frames_per_video: 3000,
            transcribe_audio: false,
            whisper_model: "base".into(),
            generate_descriptions: false,
            vlm_model: "Qwen/Qwen2-VL-2B-Instruct".into(),
            vlm_batch_size: 500,
        }
    }
}

impl PipelineConfig {
    /// The keyframe parameters this configuration asks for.
    pub fn keyframe_params(&self) -> KeyframeParams {
        let strategy = match self.keyframe_strategy {
            StrategyName::Similarity => KeyframeStrategy::Similarity {
                threshold: self.keyframe_threshold,
            },
            StrategyName::Fps => KeyframeStrategy::Fps {
                fps: self.keyframe_fps,
            },
        };
        KeyframeParams {
            strategy,
            max_frames: self.max_frames_per_video,
        }
    }
}

/// The cached artifacts of one video that a [`PipelineConfig`] asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoArtifacts {
    /// The video.
    pub video_id: VideoId,
    /// Keyframes metadata, if asked for and cached.
    pub keyframes: Option<KeyframesMetadata>,
    /// Transcript, if asked for and cached.
    pub audio_transcript: Option<serde_json::Value>,
    /// Frame descriptions, if asked for and cached.
    pub frame_descriptions: Option<serde_json::Value>,
}

impl VideoArtifacts {
    /// Whether every artifact `config` asks for is present.
    pub fn is_complete(&self, config: &PipelineConfig) -> bool {
        (!config.extract_keyframes || self.keyframes.is_some())
            && (!config.transcribe_audio || self.audio_transcript.is_some())
            && (!config.generate_descriptions || self.frame_descriptions.is_some())
    }
}

/// The artifacts of one pipeline profile, stored in a Strata cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    client: Client,
    profile: Namespace,
    ttl: Option<Duration>,
    quality: u8,
    subsampling: jpeg::Subsampling,
}

impl ArtifactCache {
    /// The artifacts of `profile`, expiring after [`DEFAULT_TTL`], frames encoded at
    /// [`jpeg::DEFAULT_QUALITY`] with [`jpeg::DEFAULT_SUBSAMPLING`].
    pub fn new(client: Client, profile: Namespace) -> Self {
        Self {
            client,
            profile,
            ttl: Some(DEFAULT_TTL),
            quality: jpeg::DEFAULT_QUALITY,
            subsampling: jpeg::DEFAULT_SUBSAMPLING,
        }
    }

    /// Lets artifacts expire after `ttl` (`None`: never).
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Encodes raw frames at JPEG `quality` (1–100).
    pub fn with_jpeg_quality(mut self, quality: u8) -> Self {
        self.quality = quality.clamp(1, 100);
        self
    }

    /// Encodes raw frames with chroma `subsampling` ([`jpeg::Subsampling::Yuv444`] keeps
    /// full colour resolution, at about 1.6× the encode time and size of the 4:2:0 default).
    pub fn with_jpeg_subsampling(mut self, subsampling: jpeg::Subsampling) -> Self {
        self.subsampling = subsampling;
        self
    }

    /// The profile (namespace).
    pub fn profile(&self) -> &Namespace {
        &self.profile
    }

    /// Stores keyframes: each image in `images` (by frame id, each listed in the metadata)
    /// as a JPEG frame, then the metadata. Nothing is stored if any image is invalid or not
    /// listed; if storing a frame fails, the metadata is not stored.
    pub async fn set_keyframes(
        &self,
        video: &VideoId,
        params: &KeyframeParams,
        metadata: &KeyframesMetadata,
        images: BTreeMap<u64, FrameImage>,
    ) -> Result<(), CacheError> {
        let key = params.key(video)?;
        let listed: BTreeSet<u64> = metadata.keyframes.iter().map(|k| k.frame_id).collect();
        if let Some(id) = images.keys().find(|id| !listed.contains(id)) {
            return Err(CacheError::InvalidInput(format!(
                "an image for frame {id}, which the keyframes metadata does not list"
            )));
        }
        let record = to_record(metadata)?;
        let metadata_key = make_key(&key)?;
        let frame_keys = images
            .keys()
            .map(|&id| make_key(&frame_key(&key, id)))
            .collect::<Result<Vec<_>, _>>()?;
        let frames = encode_all(
            images.into_values().collect(),
            self.quality,
            self.subsampling,
        )
        .await?;
        self.store_frames_then(frame_keys, frames, metadata_key, record)
            .await
    }

    /// The keyframes metadata of `video` under `params`, and the decoded images if
    /// `load_images`; `None` if the metadata is not cached.
    pub async fn get_keyframes(
        &self,
        video: &VideoId,
        params: &KeyframeParams,
        load_images: bool,
    ) -> Result<Option<CachedKeyframes>, CacheError> {
        let key = params.key(video)?;
        let Some(metadata) = self.get_record::<KeyframesMetadata>(&key).await? else {
            return Ok(None);
        };
        let mut images = BTreeMap::new();
        if load_images {
            let ids: Vec<u64> = metadata.keyframes.iter().map(|k| k.frame_id).collect();
            let decoded = self.load_frames(&key, &ids).await?;
            images = ids
                .into_iter()
                .zip(decoded)
                .filter_map(|(id, image)| image.map(|image| (id, image)))
                .collect();
        }
        Ok(Some(CachedKeyframes { metadata, images }))
    }

    /// Stores the transcript of `video` (any serde value, kept as JSON).
    pub async fn set_transcript<T: Serialize + ?Sized>(
        &self,
        video: &VideoId,
        params: &TranscriptParams,
        transcript: &T,
    ) -> Result<(), CacheError> {
        self.set_record(&params.key(video), transcript).await
    }

    /// The transcript of `video`, or `None`.
    pub async fn get_transcript<T: DeserializeOwned>(
        &self,
        video: &VideoId,
        params: &TranscriptParams,
    ) -> Result<Option<T>, CacheError> {
        self.get_record(&params.key(video)).await
    }

    /// Stores the frame descriptions of `video` (any serde value, kept as JSON).
    pub async fn set_descriptions<T: Serialize + ?Sized>(
        &self,
        video: &VideoId,
        params: &DescriptionParams,
        descriptions: &T,
    ) -> Result<(), CacheError> {
        self.set_record(&params.key(video), descriptions).await
    }

    /// The frame descriptions of `video`, or `None`.
    pub async fn get_descriptions<T: DeserializeOwned>(
        &self,
        video: &VideoId,
        params: &DescriptionParams,
    ) -> Result<Option<T>, CacheError> {
        self.get_record(&params.key(video)).await
    }

    /// Stores the frames of one segment with their timestamps (one per frame), then the
    /// segment's metadata. Nothing is stored if the counts differ or a frame is invalid.
    pub async fn set_segment_frames(
        &self,
        video: &VideoId,
        params: &SegmentParams,
        frames: Vec<FrameImage>,
        timestamps: Vec<f64>,
    ) -> Result<(), CacheError> {
        let key = params.key(video)?;
        if frames.len() != timestamps.len() {
            return Err(CacheError::InvalidInput(format!(
                "{} frames but {} timestamps",
                frames.len(),
                timestamps.len()
            )));
        }
        let metadata = SegmentMetadata {
            segment_id: params.segment_id,
            start_time: params.start_time,
            end_time: params.end_time,
            num_frames: frames.len(),
            timestamps,
            sampling_fps: params.sampling_fps,
            max_frames: params.max_frames,
            cached_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        let record = to_record(&metadata)?;
        let metadata_key = make_key(&key)?;
        let frame_keys = (0..frames.len() as u64)
            .map(|i| make_key(&frame_key(&key, i)))
            .collect::<Result<Vec<_>, _>>()?;
        let frames = encode_all(frames, self.quality, self.subsampling).await?;
        self.store_frames_then(frame_keys, frames, metadata_key, record)
            .await
    }

    /// The metadata of one segment and, if `load_images`, its decoded frames; `None` if the
    /// metadata is not cached.
    pub async fn get_segment_frames(
        &self,
        video: &VideoId,
        params: &SegmentParams,
        load_images: bool,
    ) -> Result<Option<CachedSegment>, CacheError> {
        let key = params.key(video)?;
        let Some(metadata) = self.get_record::<SegmentMetadata>(&key).await? else {
            return Ok(None);
        };
        let mut frames = Vec::new();
        if load_images {
            let ids: Vec<u64> = (0..metadata.timestamps.len() as u64).collect();
            frames = self
                .load_frames(&key, &ids)
                .await?
                .into_iter()
                .flatten()
                .collect();
        }
        Ok(Some(CachedSegment { metadata, frames }))
    }

    /// Every artifact of `video` that `config` asks for (keyframes metadata, transcript,
    /// descriptions), fetched in one batch call.
    pub async fn get_all_artifacts(
        &self,
        video: &VideoId,
        config: &PipelineConfig,
    ) -> Result<VideoArtifacts, CacheError> {
        let mut keys = Vec::new();
        if config.extract_keyframes {
            keys.push(make_key(&config.keyframe_params().key(video)?)?);
        }
        if config.transcribe_audio {
            let params = TranscriptParams {
                model_size: config.whisper_model.clone(),
                language: None,
            };
            keys.push(make_key(&params.key(video))?);
        }
        if config.generate_descriptions {
            let params = DescriptionParams {
                model_name: config.vlm_model.clone(),
                batch_size: config.vlm_batch_size,
            };
            keys.push(make_key(&params.key(video))?);
        }
        let mut entries = self
            .client
            .get_many(&self.profile, &keys)
            .await?
            .into_iter()
            .zip(keys.iter());
        let mut next = |wanted: bool| -> Result<Option<serde_json::Value>, CacheError> {
            if !wanted {
                return Ok(None);
            }
            match entries.next() {
                Some((Some(entry), key)) => record_of(key, entry.value).map(Some),
                _ => Ok(None),
            }
        };
        let keyframes = next(config.extract_keyframes)?
            .map(|json| {
                serde_json::from_value::<KeyframesMetadata>(json).map_err(|e| CacheError::Corrupt {
                    key: keys.first().map(ToString::to_string).unwrap_or_default(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let audio_transcript = next(config.transcribe_audio)?;
        let frame_descriptions = next(config.generate_descriptions)?;
        Ok(VideoArtifacts {
            video_id: video.clone(),
            keyframes,
            audio_transcript,
            frame_descriptions,
        })
    }

    /// Deletes every artifact of `video` (every key under `video:{video}:`) on every member;
    /// how many entries were removed.
    pub async fn invalidate_video(&self, video: &VideoId) -> Result<u64, CacheError> {
        Ok(self
            .client
            .clear(&self.profile, Some(&video_pattern(video)))
            .await?)
    }

    async fn set_record<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), CacheError> {
        let record = to_record(value)?;
        let key = make_key(key)?;
        self.client
            .set(&self.profile, &key, Value::Record(record), self.ttl)
            .await?;
        Ok(())
    }

    async fn get_record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CacheError> {
        let key = make_key(key)?;
        let Some(entry) = self.client.get(&self.profile, &key).await? else {
            return Ok(None);
        };
        let json = record_of(&key, entry.value)?;
        serde_json::from_value(json)
            .map(Some)
            .map_err(|e| CacheError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// Stores the frames in one batch, then (only if they all were stored) the metadata.
    async fn store_frames_then(
        &self,
        frame_keys: Vec<Key>,
        frames: Vec<Frame>,
        metadata_key: Key,
        metadata: Record,
    ) -> Result<(), CacheError> {
        let items = frame_keys
            .into_iter()
            .zip(frames.into_iter().map(Value::Frame))
            .collect();
        for outcome in self.client.set_many(&self.profile, items, self.ttl).await {
            outcome?;
        }
        self.client
            .set(
                &self.profile,
                &metadata_key,
                Value::Record(metadata),
                self.ttl,
            )
            .await?;
        Ok(())
    }

    /// Fetches frames `ids` of the artifact under `key` in one batch and decodes them; `None`
    /// for frames not cached.
    async fn load_frames(
        &self,
        key: &str,
        ids: &[u64],
    ) -> Result<Vec<Option<Array3<u8>>>, CacheError> {
        let keys = ids
            .iter()
            .map(|&id| make_key(&frame_key(key, id)))
            .collect::<Result<Vec<_>, _>>()?;
        let entries = self.client.get_many(&self.profile, &keys).await?;
        let values: Vec<Option<(Key, Value)>> = keys
            .into_iter()
            .zip(entries)
            .map(|(k, e)| e.map(|e| (k, e.value)))
            .collect();
        tokio::task::spawn_blocking(move || parallel_map(values, decode_stored))
            .await
            .map_err(|e| CacheError::Task(e.to_string()))?
            .into_iter()
            .collect()
    }
}

fn make_key(key: &str) -> Result<Key, CacheError> {
    Key::new(key).map_err(|e| CacheError::InvalidInput(e.to_string()))
}

fn to_record<T: Serialize + ?Sized>(value: &T) -> Result<Record, CacheError> {
    Record::from_serde(value).map_err(|e| CacheError::InvalidInput(e.to_string()))
}

fn record_of(key: &Key, value: Value) -> Result<serde_json::Value, CacheError> {
    match value {
        Value::Record(record) => record.to_serde().map_err(|e| CacheError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        }),
        other => Err(CacheError::WrongKind {
            key: key.to_string(),
            expected: "a JSON record",
            found: format!("{other:?}"),
        }),
    }
}

/// Decodes one stored frame (JPEG frame, raw RGB frame, or JPEG bytes stored as plain
/// bytes by another writer).
fn decode_stored(stored: Option<(Key, Value)>) -> Result<Option<Array3<u8>>, CacheError> {
    let Some((key, value)) = stored else {
        return Ok(None);
    };
    let corrupt = |reason: String| CacheError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let image = match &value {
        Value::Frame(frame) if frame.format() == FrameFormat::Jpeg => {
            jpeg::decode(frame.data()).map_err(|e| corrupt(e.to_string()))?
        }
        Value::Frame(frame) if frame.format() == FrameFormat::Rgb8 => Array3::from_shape_vec(
            (frame.height() as usize, frame.width() as usize, 3),
            frame.data().to_vec(),
        )
        .map_err(|e| corrupt(e.to_string()))?,
        Value::Bytes(bytes) => jpeg::decode(bytes).map_err(|e| corrupt(e.to_string()))?,
        other => {
            return Err(CacheError::WrongKind {
                key: key.to_string(),
                expected: "a JPEG frame",
                found: format!("{other:?}"),
            });
        }
    };
    Ok(Some(image))
}

/// Encodes or validates every frame, in parallel on blocking threads.
async fn encode_all(
    frames: Vec<FrameImage>,
    quality: u8,
    subsampling: jpeg::Subsampling,
) -> Result<Vec<Frame>, CacheError> {
    let indexed: Vec<(usize, FrameImage)> = frames.into_iter().enumerate().collect();
    tokio::task::spawn_blocking(move || {
        parallel_map(indexed, |(i, image)| {
            encode_one(i, image, quality, subsampling)
        })
    })
    .await
    .map_err(|e| CacheError::Task(e.to_string()))?
    .into_iter()
    .collect()
}

fn encode_one(
    i: usize,
    image: FrameImage,
    quality: u8,
    subsampling: jpeg::Subsampling,
) -> Result<Frame, CacheError> {
    match image {
        FrameImage::Rgb(pixels) => jpeg::encode_with(pixels.view(), quality, subsampling)
            .map_err(|e| CacheError::InvalidFrame(format!("frame #{i}: {e}"))),
        FrameImage::Jpeg(bytes) => {
            jpeg::validate(bytes).map_err(|e| CacheError::NotJpeg(format!("frame #{i}: {e}")))
        }
    }
}

/// Applies `f` to every item on up to `available_parallelism` scoped threads, keeping the
/// order.
fn parallel_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if workers <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per_worker = items.len().div_ceil(workers);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(workers);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(per_worker).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(results) => results,
                // A panic in a codec is a bug; let it surface as the task's panic.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn video(id: &str) -> VideoId {
        VideoId::new(id).unwrap()
    }

    /// Keys computed in Python with the reference's `_generate_artifact_key`
    /// (`":".join(f"{k}={v}" for k, v in sorted(kwargs.items()))`).
    #[test]
    fn keys_match_the_reference() {
        let v = video("robot_soccer");
        assert_eq!(
            KeyframeParams::default().key(&v).unwrap(),
            "video:robot_soccer:keyframes:max_frames=3000:strategy=similarity:threshold=0.999"
        );
        let fps = |fps| KeyframeParams {
            strategy: KeyframeStrategy::Fps { fps },
            max_frames: 100,
        };
        assert_eq!(
            fps(1.0).key(&v).unwrap(),
            "video:robot_soccer:keyframes:fps=1.0:max_frames=100:strategy=fps"
        );
        assert_eq!(
            fps(0.5).key(&v).unwrap(),
            "video:robot_soccer:keyframes:fps=0.5:max_frames=100:strategy=fps"
        );
        assert_eq!(
            TranscriptParams::default().key(&v),
            "video:robot_soccer:transcript:lang=auto:model=base"
        );
        let large = TranscriptParams {
            model_size: "large".into(),
            language: Some("en".into()),
        };
        assert_eq!(
            large.key(&v),
            "video:robot_soccer:transcript:lang=en:model=large"
        );
        assert_eq!(
            DescriptionParams::new("Qwen/Qwen2-VL-2B-Instruct").key(&v),
            "video:robot_soccer:descriptions:batch_size=500:model=Qwen/Qwen2-VL-2B-Instruct"
        );
        assert_eq!(
            SegmentParams::new(0, 0.0, 6.0).key(&v).unwrap(),
            "video:robot_soccer:segment_frames:end_time=6.0:max_frames=12:sampling_fps=2.0:segment_id=0:start_time=0.0"
        );
        let long = SegmentParams {
            segment_id: 3,
            start_time: 90.0,
            end_time: 120.5,
            sampling_fps: 0.25,
            max_frames: 60,
        };
        assert_eq!(
            long.key(&video("long_video")).unwrap(),
            "video:long_video:segment_frames:end_time=120.5:max_frames=60:sampling_fps=0.25:segment_id=3:start_time=90.0"
        );
        assert_eq!(
            frame_key("video:v:keyframes", 42),
            "video:v:keyframes:frame_42"
        );
    }

    /// Python's `repr()` of the same floats.
    #[test]
    fn floats_are_written_as_python_writes_them() {
        let cases = [
            (0.999, "0.999"),
            (1.0, "1.0"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (123456789.0, "123456789.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (2.5e-4, "0.00025"),
            (1e22, "1e+22"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
            (0.0, "0.0"),
        ];
        for (x, python) in cases {
            assert_eq!(python_float(x), python, "{x:?}");
        }
        let nan = SegmentParams::new(0, f64::NAN, 1.0);
        assert!(matches!(
            nan.key(&video("v")),
            Err(CacheError::InvalidInput(_))
        ));
    }

    #[test]
    fn hostile_video_ids_are_refused() {
        for bad in [
            "", ".", "..", "../etc", "a/b", "/abs", "a\\b", "a\0b", "a:b", "a\nb",
        ] {
            assert!(
                matches!(VideoId::new(bad), Err(CacheError::InvalidVideoId { .. })),
                "{bad:?}"
            );
        }
        assert!(VideoId::new("x".repeat(201)).is_err());
        for good in ["robot_soccer", "clip [1080p] (2)", "..hidden", "ünïcode"] {
            assert_eq!(VideoId::new(good).unwrap().as_str(), good);
        }
        assert_eq!(
            VideoId::from_path("/path/to/robot_soccer.mp4").unwrap(),
            video("robot_soccer")
        );
        assert!(VideoId::from_path("/").is_err());
        assert!(serde_json::from_str::<VideoId>("\"../x\"").is_err());
    }

    #[test]
    fn the_invalidation_pattern_matches_the_id_literally() {
        assert_eq!(video_pattern(&video("abc")), "video:abc:*");
        assert_eq!(video_pattern(&video("a*b[1]?")), "video:a[*]b[[]1[]][?]:*");
    }

    #[test]
    fn pipeline_config_reads_the_reference_json() {
        let config: PipelineConfig = serde_json::from_str(
            r#"{"extract_keyframes": true, "keyframe_strategy": "fps", "keyframe_fps": 0.5,
                "transcribe_audio": true}"#,
        )
        .unwrap();
        assert_eq!(
            config.keyframe_params(),
            KeyframeParams {
                strategy: KeyframeStrategy::Fps { fps: 0.5 },
                max_frames: 3000
            }
        );
        assert_eq!(config.whisper_model, "base");
        assert!(!config.generate_descriptions);
    }

    #[test]
    fn metadata_keeps_unknown_fields() {
        let json = serde_json::json!({
            "video_id": "robot_soccer",
            "num_keyframes": 1,
            "keyframes": [{"frame_id": 42, "timestamp": 1.4, "filename": "frame_42.jpg"}]
        });
        let metadata: KeyframesMetadata = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(metadata.keyframes[0].frame_id, 42);
        assert_eq!(serde_json::to_value(&metadata).unwrap(), json);
    }

    #[tokio::test]
    async fn frames_are_encoded_in_order_and_bad_ones_refused() {
        let frames: Vec<FrameImage> = (1..=5)
            .map(|w| FrameImage::Rgb(Array3::from_elem((4, w * 4, 3), 100)))
            .collect();
        let encoded = encode_all(frames, 90, jpeg::DEFAULT_SUBSAMPLING)
            .await
            .unwrap();
        let widths: Vec<u32> = encoded.iter().map(Frame::width).collect();
        assert_eq!(widths, vec![4, 8, 12, 16, 20]);
        let jpeg = encoded[0].data().clone();
        assert_eq!(
            encode_all(
                vec![FrameImage::Jpeg(jpeg.clone())],
                90,
                jpeg::Subsampling::Yuv444
            )
            .await
            .unwrap()[0]
                .data(),
            &jpeg
        );
        let not_jpeg = encode_all(
            vec![
                FrameImage::Jpeg(jpeg),
                FrameImage::Jpeg(Bytes::from_static(b"GIF89a....")),
            ],
            90,
            jpeg::DEFAULT_SUBSAMPLING,
        )
        .await;
        assert!(matches!(not_jpeg, Err(CacheError::NotJpeg(m)) if m.contains("#1")));
        let bad_shape = encode_all(
            vec![FrameImage::Rgb(Array3::zeros((4, 4, 1)))],
            90,
            jpeg::DEFAULT_SUBSAMPLING,
        )
        .await;
        assert!(matches!(bad_shape, Err(CacheError::InvalidFrame(_))));
    }

    #[test]
    fn stored_frames_decode_or_fail_clearly() {
        let key = Key::new("video:v:keyframes:frame_1").unwrap();
        let frame = jpeg::encode(Array3::from_elem((8, 8, 3), 50u8).view(), 90).unwrap();
        let image = decode_stored(Some((key.clone(), Value::Frame(frame.clone()))))
            .unwrap()
            .unwrap();
        assert_eq!(image.dim(), (8, 8, 3));
        let as_bytes = decode_stored(Some((key.clone(), Value::Bytes(frame.data().clone()))));
        assert!(as_bytes.unwrap().is_some());
        assert!(matches!(
            decode_stored(Some((key.clone(), Value::from(b"nope".to_vec())))),
            Err(CacheError::Corrupt { .. })
        ));
        let record = Record::from_serde(&1).unwrap();
        assert!(matches!(
            decode_stored(Some((key, Value::Record(record)))),
            Err(CacheError::WrongKind { .. })
        ));
        assert_eq!(decode_stored(None), Ok(None));
    }
}
