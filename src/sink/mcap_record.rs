//! Recordings of a run as MCAP, the format of ROS 2 bags and of Foxglove, with Foxglove's
//! well-known schemas in their JSON form, so that Foxglove (and any MCAP reader) opens them:
//!
//! | topic | schema | what |
//! |---|---|---|
//! | `/alignsam/frame` | `foxglove.CompressedImage` | the frame as PNG (lossless: a replay sees the same pixels) |
//! | `/alignsam/mask` | `foxglove.CompressedImage` | the mask as a grey PNG (255 object, 0 background) |
//! | `/alignsam/annotations` | `foxglove.ImageAnnotations` | the kept points (green positive, red negative) and their step numbers |
//! | `/alignsam/record` | `alignsam.FrameRecord` | the frame's JSON line (steps, stop reason, stage times, latency) |
//!
//! Every message's log and publish time is the frame's capture time. Chunks of at most 10 frames
//! or about 1 MiB, zstd-compressed: after a crash (SIGKILL, power loss) what was written before
//! the last complete chunk stays readable; the chunk in progress (up to 10 frames) and the
//! summary (the index, which readers can do without) are lost. Ctrl-C and
//! SIGTERM finish the file properly. The encoding and writing run on their own thread, fed
//! through a short queue, so that recording adds little to a frame's time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use base64::Engine as _;
use image::{GrayImage, RgbImage};
use serde_json::json;

use crate::agent::PointRecord;
use crate::sam::PointLabel;

/// The topics of a recording (defined beside the reader, which the writer sits above).
pub use crate::source::mcap_replay::topics;

/// The frame id every image and annotation names (Foxglove pairs annotations with images by it).
pub const FRAME_ID: &str = "camera";
const CHUNK_BYTES: u64 = 1 << 20;
const QUEUE: usize = 4;
const FRAMES_PER_CHUNK: u64 = 10;

/// One processed frame, owned, for the recording thread.
pub struct RecordedFrame {
    /// When the frame was captured.
    pub captured: SystemTime,
    /// The frame.
    pub image: RgbImage,
    /// The mask, row-major over the frame.
    pub mask: Vec<bool>,
    /// The points the mask was made with.
    pub points: Vec<PointRecord>,
    /// The frame's JSON record.
    pub record: Vec<u8>,
}

/// What a finished recording holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingSummary {
    /// Frames written.
    pub frames: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// Whether the size limit stopped the recording before the run ended.
    pub truncated_by_limit: bool,
}

/// Writes a recording on its own thread.
pub struct Recorder {
    tx: Option<SyncSender<RecordedFrame>>,
    thread: Option<JoinHandle<Result<RecordingSummary>>>,
    path: PathBuf,
}

impl Recorder {
    /// Creates `path` (the caller checked it with the output guard) and starts the writing
    /// thread; `max_bytes` stops the recording, finished and readable, once the file reaches it.
    pub fn create(path: &Path, max_bytes: Option<u64>) -> Result<Self> {
        let file = super::create_streamed(path)?;
        let writer = McapFile::new(file, path, max_bytes)?;
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("mcap-recorder".into())
            .spawn(move || writer.run(rx))
            .context("cannot start the recording thread")?;
        Ok(Recorder {
            tx: Some(tx),
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    /// Queues a frame (waits when the writer is 4 frames behind: a recording never skips a
    /// frame). An error means the writer stopped; its cause comes from [`Recorder::finish`].
    pub fn record(&mut self, frame: RecordedFrame) -> Result<()> {
        let tx = self.tx.as_ref().context("the recording is finished")?;
        tx.send(frame)
            .map_err(|_| anyhow!("{}: the recording stopped", self.path.display()))
    }

    /// Writes what is queued, the summary and the footer, and closes the file.
    pub fn finish(mut self) -> Result<RecordingSummary> {
        self.tx.take();
        let thread = self.thread.take().context("the recording is finished")?;
        thread
            .join()
            .map_err(|_| anyhow!("{}: the recording thread panicked", self.path.display()))?
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // An error path that never reached finish(): still close the file properly.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file that says how far it was written, for the size limit (the writer owns the file; the
/// limit check reads the shared counter).
struct Counted {
    file: BufWriter<File>,
    end: Arc<AtomicU64>,
    position: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.position += n as u64;
        self.end.fetch_max(self.position, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Counted {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.position = self.file.seek(pos)?;
        Ok(self.position)
    }
}

struct Channels {
    frame: u16,
    mask: u16,
    annotations: u16,
    record: u16,
}

struct McapFile {
    writer: mcap::Writer<Counted>,
    channels: Channels,
    written: Arc<AtomicU64>,
    path: PathBuf,
    max_bytes: Option<u64>,
    frames: u64,
    sequence: u32,
}

impl McapFile {
    fn new(file: File, path: &Path, max_bytes: Option<u64>) -> Result<Self> {
        let err =
            |e: mcap::McapError| anyhow!("{}: cannot write the recording: {e}", path.display());
        let written = Arc::new(AtomicU64::new(0));
        let mut writer = mcap::WriteOptions::new()
            .compression(Some(mcap::Compression::Zstd))
            // zstd on this thread: the crate's default starts a worker per physical core, which
            // competes with the loop's engine threads for the cores (measured: frame p50 +11%
            // on 2 cores; docs/performance.md).
            .compression_threads(0)
            .chunk_size(Some(CHUNK_BYTES))
            .profile("")
            .library(concat!("alignsam ", env!("CARGO_PKG_VERSION")))
            .create(Counted {
                file: BufWriter::new(file),
                end: written.clone(),
                position: 0,
            })
            .map_err(err)?;
        let none = BTreeMap::new();
        let image = writer
            .add_schema(
                "foxglove.CompressedImage",
                "jsonschema",
                COMPRESSED_IMAGE.as_bytes(),
            )
            .map_err(err)?;
        let annotations = writer
            .add_schema(
                "foxglove.ImageAnnotations",
                "jsonschema",
                IMAGE_ANNOTATIONS.as_bytes(),
            )
            .map_err(err)?;
        let record = writer
            .add_schema(
                "alignsam.FrameRecord",
                "jsonschema",
                FRAME_RECORD.as_bytes(),
            )
            .map_err(err)?;
        let channels = Channels {
            frame: writer
                .add_channel(image, topics::FRAME, "json", &none)
                .map_err(err)?,
            mask: writer
                .add_channel(image, topics::MASK, "json", &none)
                .map_err(err)?,
            annotations: writer
                .add_channel(annotations, topics::ANNOTATIONS, "json", &none)
                .map_err(err)?,
            record: writer
                .add_channel(record, topics::RECORD, "json", &none)
                .map_err(err)?,
        };
        Ok(McapFile {
            writer,
            channels,
            written,
            path: path.to_path_buf(),
            max_bytes,
            frames: 0,
            sequence: 0,
        })
    }

    /// Writes frames until the queue closes or the size limit is reached, then finishes.
    fn run(mut self, rx: Receiver<RecordedFrame>) -> Result<RecordingSummary> {
        let mut truncated = false;
        for frame in rx.iter() {
            // Counted sees the closed chunks: the file may pass the limit by up to a chunk.
            let written = self.written.load(Ordering::Relaxed);
            if self.max_bytes.is_some_and(|m| written >= m) {
                log::warn!(
                    "{}: the recording reached its size limit after {} frames; it is finished there (the run goes on)",
                    self.path.display(),
                    self.frames
                );
                truncated = true;
                break;
            }
            self.write_frame(&frame)?;
            // Close the chunk every few frames: a crash loses at most these (or a chunk's size).
            if self.frames.is_multiple_of(FRAMES_PER_CHUNK) {
                self.writer.flush().map_err(|e| {
                    anyhow!("{}: cannot write the recording: {e}", self.path.display())
                })?;
            }
        }
        // Frames still queued after the limit are not recorded; the sender must not block.
        drop(rx);
        self.writer
            .finish()
            .map_err(|e| anyhow!("{}: cannot finish the recording: {e}", self.path.display()))?;
        let mut inner = self.writer.into_inner();
        inner
            .flush()
            .map_err(|e| anyhow!("{}: cannot write: {e}", self.path.display()))?;
        Ok(RecordingSummary {
            frames: self.frames,
            bytes: self.written.load(Ordering::Relaxed).max(inner.position),
            truncated_by_limit: truncated,
        })
    }

    fn write_frame(&mut self, f: &RecordedFrame) -> Result<()> {
        let t = f.captured.duration_since(UNIX_EPOCH).unwrap_or_default();
        let stamp = json!({"sec": t.as_secs(), "nsec": t.subsec_nanos()});
        let ns = t.as_nanos().min(u64::MAX as u128) as u64;
        let (w, h) = f.image.dimensions();
        let frame = png(f.image.as_raw(), w, h, image::ExtendedColorType::Rgb8)?;
        let mask_image = GrayImage::from_fn(w, h, |x, y| {
            image::Luma([if f.mask[(y * w + x) as usize] { 255 } else { 0 }])
        });
        let mask = png(mask_image.as_raw(), w, h, image::ExtendedColorType::L8)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let messages = [
            (
                self.channels.frame,
                json!({"timestamp": stamp, "frame_id": FRAME_ID, "format": "png", "data": b64.encode(frame)}),
            ),
            (
                self.channels.mask,
                json!({"timestamp": stamp, "frame_id": FRAME_ID, "format": "png", "data": b64.encode(mask)}),
            ),
            (self.channels.annotations, annotations(&stamp, &f.points)),
        ];
        for (channel, value) in messages {
            self.put(channel, ns, &serde_json::to_vec(&value)?)?;
        }
        self.put(self.channels.record, ns, &f.record)?;
        self.frames += 1;
        Ok(())
    }

    fn put(&mut self, channel_id: u16, ns: u64, data: &[u8]) -> Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let header = mcap::records::MessageHeader {
            channel_id,
            sequence: self.sequence,
            log_time: ns,
            publish_time: ns,
        };
        self.writer
            .write_to_known_channel(&header, data)
            .map_err(|e| anyhow!("{}: cannot write the recording: {e}", self.path.display()))
    }
}

use image::ImageEncoder as _;

/// Lossless PNG with fast compression (the recording thread's main cost).
fn png(raw: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut buf,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(raw, w, h, color)
    .map_err(|e| anyhow!("cannot encode a PNG for the recording: {e}"))?;
    Ok(buf)
}

/// Foxglove image annotations: a filled circle per point (green positive, red negative) and
/// its step number beside it (S for the start points).
fn annotations(stamp: &serde_json::Value, points: &[PointRecord]) -> serde_json::Value {
    let color = |p: &PointRecord| match p.label {
        PointLabel::Positive => json!({"r": 0.1, "g": 0.8, "b": 0.2, "a": 1.0}),
        _ => json!({"r": 0.9, "g": 0.1, "b": 0.1, "a": 1.0}),
    };
    let white = json!({"r": 1.0, "g": 1.0, "b": 1.0, "a": 1.0});
    let circles: Vec<_> = points
        .iter()
        .map(|p| {
            json!({"timestamp": stamp, "position": {"x": p.x, "y": p.y}, "diameter": 12.0,
                   "thickness": 2.0, "fill_color": color(p), "outline_color": white})
        })
        .collect();
    let texts: Vec<_> = points
        .iter()
        .map(|p| {
            let text = if p.step == 0 {
                "S".to_string()
            } else {
                p.step.to_string()
            };
            json!({"timestamp": stamp, "position": {"x": p.x + 9.0, "y": p.y - 9.0}, "text": text,
                   "font_size": 14.0, "text_color": white,
                   "background_color": {"r": 0.0, "g": 0.0, "b": 0.0, "a": 0.6}})
        })
        .collect();
    json!({"circles": circles, "points": [], "texts": texts})
}

/// Foxglove's `foxglove.CompressedImage` in its JSON-schema form.
const COMPRESSED_IMAGE: &str = r#"{"title":"foxglove.CompressedImage","description":"A compressed image","$comment":"Generated by https://github.com/foxglove/foxglove-sdk","type":"object","properties":{"timestamp":{"type":"object","title":"time","properties":{"sec":{"type":"integer","minimum":0},"nsec":{"type":"integer","minimum":0,"maximum":999999999}},"description":"Timestamp of image"},"frame_id":{"type":"string","description":"Frame of reference for the image."},"data":{"type":"string","contentEncoding":"base64","description":"Compressed image data"},"format":{"type":"string","description":"Image format: jpeg, png or webp"}}}"#;

/// Foxglove's `foxglove.ImageAnnotations` in its JSON-schema form (circles, points, texts).
const IMAGE_ANNOTATIONS: &str = r##"{"title":"foxglove.ImageAnnotations","description":"Array of annotations for a 2D image","type":"object","$defs":{"time":{"type":"object","properties":{"sec":{"type":"integer","minimum":0},"nsec":{"type":"integer","minimum":0,"maximum":999999999}}},"point2":{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"}}},"color":{"type":"object","properties":{"r":{"type":"number"},"g":{"type":"number"},"b":{"type":"number"},"a":{"type":"number"}}}},"properties":{"circles":{"type":"array","items":{"type":"object","title":"foxglove.CircleAnnotation","properties":{"timestamp":{"$ref":"#/$defs/time"},"position":{"$ref":"#/$defs/point2"},"diameter":{"type":"number"},"thickness":{"type":"number"},"fill_color":{"$ref":"#/$defs/color"},"outline_color":{"$ref":"#/$defs/color"}}}},"points":{"type":"array","items":{"type":"object","title":"foxglove.PointsAnnotation","properties":{"timestamp":{"$ref":"#/$defs/time"},"type":{"type":"integer"},"points":{"type":"array","items":{"$ref":"#/$defs/point2"}},"outline_color":{"$ref":"#/$defs/color"},"outline_colors":{"type":"array","items":{"$ref":"#/$defs/color"}},"fill_color":{"$ref":"#/$defs/color"},"thickness":{"type":"number"}}}},"texts":{"type":"array","items":{"type":"object","title":"foxglove.TextAnnotation","properties":{"timestamp":{"$ref":"#/$defs/time"},"position":{"$ref":"#/$defs/point2"},"text":{"type":"string"},"font_size":{"type":"number"},"text_color":{"$ref":"#/$defs/color"},"background_color":{"$ref":"#/$defs/color"}}}}}}"##;

/// The schema of `/alignsam/record`: the JSON line `alignsam run` prints per frame.
const FRAME_RECORD: &str = r#"{"title":"alignsam.FrameRecord","description":"One processed frame, as alignsam run's JSON line","type":"object","properties":{"frame":{"type":"integer","description":"frame index in the source"},"captured_unix_s":{"type":"number"},"width":{"type":"integer"},"height":{"type":"integer"},"steps":{"type":"integer","description":"agent steps run"},"stop_reason":{"type":"string"},"warm_start":{"type":"boolean"},"points":{"type":"array","items":{"type":"object"}},"iou_prediction":{"type":"number"},"ms":{"type":"object","description":"stage times in milliseconds"},"queue_wait_ms":{"type":"number"},"latency_ms":{"type":"number","description":"capture to result"},"frames_read":{"type":"integer"},"dropped_so_far":{"type":"integer"}},"required":["frame","steps","stop_reason"]}"#;
