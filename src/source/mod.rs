//! Frame sources: where images come from. Still images from files ([`load_rgb`]), and video as
//! [`FrameSource`]s: V4L2 cameras ([`v4l2`], Linux with the `v4l2` feature), Y4M streams from
//! a file or stdin ([`y4m`]) and image sequences ([`image_seq`]). [`open_source`] picks one
//! from a command-line string; [`pixel`] converts what they deliver to RGB.

pub mod image_file;
pub mod image_seq;
#[cfg(feature = "mcap")]
pub mod mcap_replay;
pub mod pace;
pub mod paths;
pub mod pixel;
#[cfg(all(target_os = "linux", feature = "v4l2"))]
pub mod v4l2;
pub mod y4m;

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Result, bail};
use image::RgbImage;

pub use crate::safe_read::InputLimits;
pub use image_file::load_rgb;
pub use image_seq::ImageSequence;
pub use paths::expand_inputs;
pub use y4m::Y4mSource;

/// One picture from a source.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Position in the source, from 0, counting frames that were lost (a file that did not
    /// decode, a frame the camera driver dropped): gaps say something was missed.
    pub index: u64,
    /// When the picture was taken: the driver's timestamp for V4L2 cameras when it gives one,
    /// else the moment the frame was read (for paced file sources, the moment it was due).
    pub captured: SystemTime,
    /// The picture.
    pub image: RgbImage,
}

/// Why a [`FrameSource`] could not deliver a frame: either one frame is lost and the stream goes
/// on, or the source is gone. The caller branches on [`SourceError::kind`] (or
/// [`SourceError::is_frame_lost`]); the compiler checks that every source says which.
///
/// The rule for every source: after [`SourceErrorKind::FrameLost`] the source has already moved
/// past the bad frame, so the caller logs it and calls `next_frame` again (one corrupt file
/// must not end a run over thousands); after [`SourceErrorKind::Gone`] the stream is over.
#[derive(Debug)]
pub struct SourceError {
    kind: SourceErrorKind,
    message: String,
}

/// The kinds of [`SourceError`]. Non-exhaustive: match with a wildcard arm, which should treat
/// an unknown kind as the end of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceErrorKind {
    /// Frame `index` could not be read (a corrupt image file in a sequence, a corrupt MJPEG
    /// frame from a camera); the next good frame has a larger index.
    FrameLost {
        /// The lost frame's index.
        index: u64,
    },
    /// The source failed for good: a truncated or malformed stream, a camera that did not come
    /// back, a sequence none of whose files decodes.
    Gone,
}

impl SourceError {
    /// One frame lost; `message` names the file or device and what is wrong.
    pub fn frame_lost(index: u64, message: impl Into<String>) -> Self {
        SourceError {
            kind: SourceErrorKind::FrameLost { index },
            message: message.into(),
        }
    }

    /// The source is gone; `message` names the file or device and what is wrong.
    pub fn gone(message: impl Into<String>) -> Self {
        SourceError {
            kind: SourceErrorKind::Gone,
            message: message.into(),
        }
    }

    /// Which kind of failure.
    pub fn kind(&self) -> SourceErrorKind {
        self.kind
    }

    /// Whether only one frame was lost (the stream goes on).
    pub fn is_frame_lost(&self) -> bool {
        matches!(self.kind, SourceErrorKind::FrameLost { .. })
    }

    /// The lost frame's index, for [`SourceErrorKind::FrameLost`].
    pub fn frame_index(&self) -> Option<u64> {
        match self.kind {
            SourceErrorKind::FrameLost { index } => Some(index),
            _ => None,
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            SourceErrorKind::FrameLost { index } => write!(f, "frame {index}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SourceError {}

/// Any other error inside a source (I/O, a malformed stream) ends the stream: `?` on an
/// `anyhow::Result` inside `next_frame` means "gone", with the whole chain of causes.
impl From<anyhow::Error> for SourceError {
    fn from(e: anyhow::Error) -> Self {
        SourceError::gone(format!("{e:#}"))
    }
}

/// A stream of frames.
pub trait FrameSource: Send {
    /// The next frame, blocking until it is there; `Ok(None)` at the end of the stream. A
    /// [`SourceError`] says whether only this frame was lost or the stream is over.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;

    /// One line saying what this source is, for logs ("V4L2 /dev/video0 (...)").
    fn describe(&self) -> String;

    /// Whether frames arrive in real time whether or not anyone reads them (a camera, a paced
    /// file): the pipeline then drops the oldest frames when processing falls behind, instead
    /// of making the source wait. False by default: a file waits for its reader.
    fn is_live(&self) -> bool {
        false
    }

    /// How many times the source lost its device and got it back (cameras).
    fn reconnects(&self) -> u64 {
        0
    }
}

/// How to open a source; each field applies to the sources it names and is ignored by others.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Image sequences and Y4M: release frames at this rate (`None`: as fast as they are
    /// read). V4L2: the frame rate to ask the camera for (`None`: the camera's current one).
    pub fps: Option<f64>,
    /// V4L2: the frame width to ask for (`None`: the camera's current one).
    pub width: Option<u32>,
    /// V4L2: the frame height to ask for.
    pub height: Option<u32>,
    /// V4L2: the pixel format to ask for, as a four-character code (`YUYV`, `MJPG`, ...);
    /// `None` picks the first the camera offers in [`pixel::PixelFormat::PREFERENCE`].
    pub pixel_format: Option<String>,
    /// Image sequences and Y4M files: start over at the end (not possible for stdin).
    pub looping: bool,
    /// V4L2: how many reconnection attempts to make after the camera disappears before giving
    /// up (`None`: keep trying).
    pub reconnect_attempts: Option<u32>,
    /// Files, Y4M streams and recordings: the largest file and frame read.
    pub limits: InputLimits,
}

/// File extensions of video containers that are not read directly (ffmpeg converts them).
const VIDEO_EXTENSIONS: &[&str] = &["mp4", "mkv", "avi", "mov", "webm", "m4v", "mpg", "ts"];

/// What kind of source a command-line string names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// `-` or `/dev/stdin`: a Y4M stream on stdin.
    Stdin,
    /// A `.y4m` file (or a file that starts with the Y4M signature).
    Y4mFile,
    /// A V4L2 device: `/dev/videoN` or another device path, or a bare index `N`.
    Camera,
    /// A directory, glob pattern or image file.
    ImageSequence,
    /// An MCAP recording (`.mcap`) made by `alignsam run --record`: its frames.
    Mcap,
}

/// Decides what `spec` names, by its form and what is on disk. Errors for video containers
/// (with the ffmpeg command that converts them) and for paths that do not exist.
pub fn classify(spec: &str) -> Result<SourceKind> {
    if spec == "-" || spec == "/dev/stdin" {
        return Ok(SourceKind::Stdin);
    }
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SourceKind::Camera);
    }
    let path = Path::new(spec);
    if spec.starts_with("/dev/") || is_char_device(path) {
        return Ok(SourceKind::Camera);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if ext == "y4m" {
        return Ok(SourceKind::Y4mFile);
    }
    if ext == "mcap" {
        return Ok(SourceKind::Mcap);
    }
    if path.is_file() && starts_with_y4m_magic(path) {
        return Ok(SourceKind::Y4mFile);
    }
    if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
        bail!(
            "{spec}: video files are not decoded directly; pipe them through ffmpeg: \
             ffmpeg -i {spec} -f yuv4mpegpipe -pix_fmt yuv420p - | alignsam run --input - ..."
        );
    }
    Ok(SourceKind::ImageSequence)
}

fn is_char_device(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

fn starts_with_y4m_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| magic == y4m::MAGIC)
}

/// Opens the source that `spec` names:
///
/// - `-` (or `/dev/stdin`): a Y4M stream on stdin (`ffmpeg ... -f yuv4mpegpipe - | alignsam run
///   --input -`);
/// - a `.y4m` file;
/// - `/dev/videoN`, another V4L2 device path (a `/dev/v4l/by-id/...` link survives
///   re-plugging), or a bare index `N` for `/dev/videoN`: a camera (feature `v4l2`, Linux);
/// - a directory, a glob pattern (quoted) or an image file: an image sequence in natural order.
///
/// The first frame is not read yet; errors here are about opening (missing file, not a
/// capture device, malformed Y4M header, unsupported format).
pub fn open_source(spec: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    let kind = classify(spec)?;
    if options.looping && kind == SourceKind::Mcap {
        bail!("{spec}: recordings are replayed once (only image sequences and Y4M files loop)");
    }
    if options.looping && matches!(kind, SourceKind::Stdin | SourceKind::Camera) {
        bail!("{spec}: only files and image sequences can loop");
    }
    Ok(match kind {
        SourceKind::Stdin => Box::new(Y4mSource::stdin(options)?),
        SourceKind::Y4mFile => Box::new(Y4mSource::open_file(Path::new(spec), options)?),
        SourceKind::ImageSequence => Box::new(ImageSequence::open(spec, options)?),
        SourceKind::Camera => open_camera(spec, options)?,
        SourceKind::Mcap => open_recording(Path::new(spec), &options.limits)?,
    })
}

#[cfg(feature = "mcap")]
fn open_recording(path: &Path, limits: &InputLimits) -> Result<Box<dyn FrameSource>> {
    Ok(Box::new(mcap_replay::McapSource::open(path, limits)?))
}

#[cfg(not(feature = "mcap"))]
fn open_recording(path: &Path, _limits: &InputLimits) -> Result<Box<dyn FrameSource>> {
    bail!(
        "{}: this alignsam was built without MCAP support; rebuild with `--features mcap`",
        path.display()
    )
}

#[cfg(all(target_os = "linux", feature = "v4l2"))]
fn open_camera(spec: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    let opts = v4l2::V4l2Options::from_source_options(options)?;
    Ok(Box::new(v4l2::V4l2Source::open(spec, opts)?))
}

#[cfg(not(all(target_os = "linux", feature = "v4l2")))]
fn open_camera(spec: &str, _options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    if cfg!(target_os = "linux") {
        bail!(
            "{spec}: this alignsam was built without V4L2 camera support; rebuild with \
             `cargo build --release --features v4l2`"
        )
    } else {
        bail!("{spec}: V4L2 cameras are only supported on Linux")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_specs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert_eq!(classify("-").unwrap(), SourceKind::Stdin);
        assert_eq!(classify("/dev/stdin").unwrap(), SourceKind::Stdin);
        assert_eq!(classify("0").unwrap(), SourceKind::Camera);
        assert_eq!(classify("/dev/video7").unwrap(), SourceKind::Camera);
        assert_eq!(classify("clip.Y4M").unwrap(), SourceKind::Y4mFile);
        let sniffed = d.join("clip.yuv");
        std::fs::write(&sniffed, b"YUV4MPEG2 W2 H2\n").unwrap();
        assert_eq!(
            classify(&sniffed.to_string_lossy()).unwrap(),
            SourceKind::Y4mFile
        );
        assert_eq!(
            classify(&d.to_string_lossy()).unwrap(),
            SourceKind::ImageSequence
        );
        assert_eq!(classify("frames/*.jpg").unwrap(), SourceKind::ImageSequence);
        let e = classify("talk.MP4").unwrap_err().to_string();
        assert!(e.contains("ffmpeg -i talk.MP4 -f yuv4mpegpipe"), "{e}");
        #[cfg(unix)]
        assert_eq!(classify("/dev/null").unwrap(), SourceKind::Camera);
    }

    #[test]
    fn open_errors_name_the_input() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("none.y4m");
        let e = format!(
            "{:#}",
            open_source(&missing.to_string_lossy(), &SourceOptions::default())
                .err()
                .unwrap()
        );
        assert!(e.ends_with("none.y4m: no such file"), "{e}");
        let e = format!(
            "{:#}",
            open_source(
                &tmp.path().join("nothing").to_string_lossy(),
                &SourceOptions::default()
            )
            .err()
            .unwrap()
        );
        assert!(e.contains("no such file or directory"), "{e}");
        let looping = SourceOptions {
            looping: true,
            ..Default::default()
        };
        let e = open_source("-", &looping).err().unwrap().to_string();
        assert!(e.contains("only files and image sequences can loop"), "{e}");
        let e = format!(
            "{:#}",
            open_source("/dev/video-does-not-exist", &SourceOptions::default())
                .err()
                .unwrap()
        );
        if cfg!(all(target_os = "linux", feature = "v4l2")) {
            assert!(
                e.contains("/dev/video-does-not-exist: no such device"),
                "{e}"
            );
        } else {
            assert!(
                e.contains("without V4L2") || e.contains("only supported on Linux"),
                "{e}"
            );
        }
    }

    #[test]
    fn source_errors_say_lost_frame_or_gone() {
        let e = SourceError::frame_lost(3, "a.png: corrupt");
        assert!(e.is_frame_lost());
        assert_eq!(e.kind(), SourceErrorKind::FrameLost { index: 3 });
        assert_eq!(e.frame_index(), Some(3));
        assert_eq!(e.to_string(), "frame 3: a.png: corrupt");
        // Any other error inside a source ends the stream, with its causes.
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof");
        let e: SourceError = anyhow::Error::new(io).context("clip.y4m: frame 7").into();
        assert_eq!(e.kind(), SourceErrorKind::Gone);
        assert_eq!(e.frame_index(), None);
        assert_eq!(e.to_string(), "clip.y4m: frame 7: early eof");
    }
}
