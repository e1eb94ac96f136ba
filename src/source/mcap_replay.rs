//! A recording as a source: the frames of an MCAP file's `/alignsam/frame` topic (written by
//! `alignsam run --record`), with their recorded capture times, so that a new bundle can be run
//! over what a robot saw. Read as a stream (bounded memory, records longer than the input size
//! limit refused); a frame that does not decode is one lost frame, a damaged file ends the stream
//! after the last readable frame.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use base64::Engine as _;

use super::{Frame, FrameSource, SourceError};
use crate::safe_read::{InputLimits, regular_file};

/// The topics of a recording.
pub mod topics {
    /// The frame (PNG).
    pub const FRAME: &str = "/alignsam/frame";
    /// The mask (grey PNG).
    pub const MASK: &str = "/alignsam/mask";
    /// The points and their step numbers.
    pub const ANNOTATIONS: &str = "/alignsam/annotations";
    /// The per-frame JSON record.
    pub const RECORD: &str = "/alignsam/record";
}

/// Frames from an MCAP recording.
pub struct McapSource {
    reader: mcap::io::MessageReader<BufReader<File>>,
    path: PathBuf,
    limits: InputLimits,
    index: u64,
    frames: u64,
}

impl McapSource {
    /// Opens `path`, refusing records longer than `limits.max_file_bytes` and frames larger than
    /// `limits.max_pixels`; errors name it.
    pub fn open(path: &Path, limits: &InputLimits) -> Result<Self> {
        regular_file(path, "recording")?;
        let file = File::open(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
        let max = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
        let options = mcap::sans_io::linear_reader::LinearReaderOptions::default()
            .with_record_length_limit(max);
        Ok(McapSource {
            reader: mcap::io::MessageReader::new_with_options(BufReader::new(file), options),
            path: path.to_path_buf(),
            limits: *limits,
            index: 0,
            frames: 0,
        })
    }

    fn decode(&self, data: &[u8]) -> Result<image::RgbImage> {
        let v: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| anyhow!("not a JSON CompressedImage: {e}"))?;
        let b64 = v["data"]
            .as_str()
            .ok_or_else(|| anyhow!("a CompressedImage without data"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| anyhow!("the image data is not base64: {e}"))?;
        Ok(self
            .limits
            .decode_image(bytes, &self.path, "recorded frame")?
            .to_rgb8())
    }
}

impl FrameSource for McapSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            let message = match self.reader.next() {
                None => {
                    if self.frames == 0 {
                        return Err(SourceError::gone(format!(
                            "{}: no frames on {} (a recording of alignsam run --record?)",
                            self.path.display(),
                            topics::FRAME
                        )));
                    }
                    return Ok(None);
                }
                Some(Err(e)) if self.frames > 0 => {
                    // A recording cut off by a crash: everything before is good.
                    log::warn!(
                        "{}: the recording ends damaged after {} frames ({e}); stopping there",
                        self.path.display(),
                        self.frames
                    );
                    return Ok(None);
                }
                Some(Err(e)) => {
                    return Err(SourceError::gone(format!(
                        "{}: not a readable MCAP recording: {e}",
                        self.path.display()
                    )));
                }
                Some(Ok(m)) => m,
            };
            if message.channel.topic != topics::FRAME {
                continue;
            }
            let index = self.index;
            self.index += 1;
            let captured = UNIX_EPOCH + Duration::from_nanos(message.log_time);
            return match self.decode(&message.data) {
                Ok(image) => {
                    self.frames += 1;
                    Ok(Some(Frame {
                        index,
                        captured,
                        image,
                    }))
                }
                Err(e) => Err(SourceError::frame_lost(
                    index,
                    format!("{}: {e:#}", self.path.display()),
                )),
            };
        }
    }

    fn describe(&self) -> String {
        format!("MCAP recording {}", self.path.display())
    }
}

/// Whether `path` names an MCAP file (by extension, or by its magic bytes).
pub fn is_mcap(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mcap"))
    {
        return true;
    }
    use std::io::Read;
    let mut magic = [0u8; 8];
    path.is_file()
        && File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"\x89MCAP0\r\n"
}
