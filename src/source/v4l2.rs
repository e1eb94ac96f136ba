//! V4L2 cameras (USB/UVC webcams, CSI cameras behind a V4L2 driver) through the `v4l` crate.
//!
//! Opening follows the kernel API's order: `open`, `VIDIOC_QUERYCAP` (the node must be a
//! single-planar video capture device with streaming I/O), `VIDIOC_ENUM_FMT` and `VIDIOC_S_FMT`
//! (pixel format and size; the driver may adjust the size, which is logged), `VIDIOC_S_PARM`
//! (frame rate, when asked), then memory-mapped streaming: `VIDIOC_REQBUFS`, `VIDIOC_QUERYBUF`
//! and `mmap` for each buffer (`MmapStream::with_buffers`), every buffer queued with
//! `VIDIOC_QBUF` before `VIDIOC_STREAMON`, and then `VIDIOC_DQBUF` / `VIDIOC_QBUF` for each frame.
//!
//! The queueing rule is the `v4l` crate's (0.14, `io/mmap/stream.rs`): on the first call to
//! `CaptureStream::next`, it queues all buffers of the arena and only then calls `start`
//! (`VIDIOC_STREAMON`); each later call re-queues the buffer it handed out before dequeuing the
//! next. So this module never calls `start` itself: that would turn the stream on with no
//! buffer queued.
//!
//! Each dequeued buffer is read up to its `bytesused` (compressed frames are shorter than the
//! buffer) and converted to RGB before it is queued again (see [`super::pixel`]). The frame's
//! timestamp is the driver's (`CLOCK_MONOTONIC`, converted to wall-clock time) when the buffer
//! says it is monotonic, and its index follows the driver's sequence number, so frames the
//! driver dropped show up as gaps.
//!
//! A camera that goes away (unplugged: `ENODEV`; a USB error: `EIO`; no frame for
//! [`V4l2Options::stall_timeout`]) is logged once, at error level, and reopened with
//! exponential back-off ([`Backoff`]): forever, or up to [`Backoff::max_attempts`]. Frames
//! start again when it is back, with indices that keep increasing. Open a camera by its
//! `/dev/v4l/by-id/...` link to get the same camera back if it returns under another number.
//!
//! Not tested here against a real camera (none on the build machines): the pure parts (path
//! and capability checks, format choice, back-off, `bytesused`, sequence numbers, timestamps)
//! are unit-tested, the rest follows the kernel's V4L2 documentation.

use std::collections::BTreeMap;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::format::{Colorspace, FieldOrder, Quantization};
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC, Fraction};

use super::pixel::{PixelFormat, Range, fourcc_str, parse_fourcc};
use super::{Frame, FrameSource, SourceError, SourceOptions};

/// How long to wait between attempts to reopen a camera that went away.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first attempt.
    pub initial: Duration,
    /// The delay doubles after each failed attempt up to this.
    pub max: Duration,
    /// Give up after this many failed attempts (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 0.5 s, doubling to 8 s, forever.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(8),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (from 0): `initial * 2^attempt`, at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How to open and stream a camera.
#[derive(Clone, Debug)]
pub struct V4l2Options {
    /// Frame width to ask for (`None`: the camera's current width).
    pub width: Option<u32>,
    /// Frame height to ask for.
    pub height: Option<u32>,
    /// Pixel format to ask for (`None`: the first of [`PixelFormat::PREFERENCE`] it offers).
    pub fourcc: Option<[u8; 4]>,
    /// Frame rate to ask for (`None`: the camera's current rate).
    pub fps: Option<f64>,
    /// Buffers to request from the driver (it may grant a different number).
    pub buffers: u32,
    /// Reconnection after the camera goes away.
    pub reconnect: Backoff,
    /// A camera that delivers no frame for this long is treated as gone and reopened.
    pub stall_timeout: Duration,
}

impl Default for V4l2Options {
    fn default() -> Self {
        V4l2Options {
            width: None,
            height: None,
            fourcc: None,
            fps: None,
            // Enough that the driver always has a buffer to fill while one is being converted
            // and one is waiting to be dequeued.
            buffers: 4,
            reconnect: Backoff::default(),
            stall_timeout: Duration::from_secs(5),
        }
    }
}

impl V4l2Options {
    /// The camera options of command-line [`SourceOptions`].
    pub fn from_source_options(o: &SourceOptions) -> Result<Self> {
        if let Some(fps) = o.fps
            && !(fps.is_finite() && fps > 0.0)
        {
            bail!("frame rate {fps} should be a positive number of frames per second");
        }
        Ok(V4l2Options {
            width: o.width,
            height: o.height,
            fourcc: o.pixel_format.as_deref().map(parse_fourcc).transpose()?,
            fps: o.fps,
            reconnect: Backoff {
                max_attempts: o.reconnect_attempts,
                ..Backoff::default()
            },
            ..V4l2Options::default()
        })
    }
}

/// The device path a command-line string names: a bare index `N` is `/dev/videoN`.
pub fn device_path(spec: &str) -> PathBuf {
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/dev/video{spec}"))
    } else {
        PathBuf::from(spec)
    }
}

/// Checks that `path` exists and is a character device, before any `open` or ioctl.
pub fn check_node(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow::anyhow!("{p}: no such device"),
        io::ErrorKind::PermissionDenied => anyhow::anyhow!("{p}: permission denied"),
        _ => anyhow::anyhow!("{p}: cannot look at the device: {e}"),
    })?;
    let t = meta.file_type();
    if t.is_char_device() {
        return Ok(());
    }
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a character device"
    };
    bail!("{p}: not a video device ({what})")
}

/// The error for a failed `open` of a device node, with what to do about it.
fn open_error(path: &Path, e: io::Error) -> anyhow::Error {
    let p = path.display();
    match e.raw_os_error() {
        Some(libc::ENOENT) => anyhow::anyhow!("{p}: no such device"),
        Some(libc::EACCES) | Some(libc::EPERM) => anyhow::anyhow!(
            "{p}: permission denied; add the user to the 'video' group (sudo usermod -aG video \
             $USER, then log in again)"
        ),
        Some(libc::EBUSY) => anyhow::anyhow!("{p}: device busy (another program is using it)"),
        Some(libc::ENODEV) | Some(libc::ENXIO) => {
            anyhow::anyhow!("{p}: no device behind this node (unplugged?)")
        }
        _ => anyhow::anyhow!("{p}: cannot open: {e}"),
    }
}

/// Checks a node's capabilities (`VIDIOC_QUERYCAP`'s `device_caps`): single-planar video
/// capture with streaming I/O. `card` names the device in messages.
pub fn check_capabilities(path: &Path, card: &str, caps: CapFlags) -> Result<()> {
    let p = path.display();
    if !caps.contains(CapFlags::VIDEO_CAPTURE) {
        if caps.contains(CapFlags::VIDEO_CAPTURE_MPLANE) {
            bail!("{p} ({card}): multi-planar capture devices are not supported");
        }
        if caps.contains(CapFlags::META_CAPTURE) {
            bail!(
                "{p} ({card}): not a capture device: this is the metadata node of a camera \
                 (UVC cameras have two nodes; `alignsam devices` shows which one captures)"
            );
        }
        bail!("{p} ({card}): not a video capture device (capabilities: {caps:?})");
    }
    if !caps.contains(CapFlags::STREAMING) {
        bail!("{p} ({card}): the driver does not support streaming I/O, which alignsam needs");
    }
    Ok(())
}

/// Opens a device node and checks that it is a capture device. Returns it with its card name.
pub fn open_capture_device(path: &Path) -> Result<(Device, String)> {
    check_node(path)?;
    let dev = Device::with_path(path).map_err(|e| open_error(path, e))?;
    let caps = dev.query_caps().map_err(|e| match e.raw_os_error() {
        // ENOSYS: what qemu-user answers for ioctls it does not know.
        Some(libc::ENOTTY | libc::EINVAL | libc::ENOSYS) => anyhow::anyhow!(
            "{}: not a V4L2 device (VIDIOC_QUERYCAP: {e})",
            path.display()
        ),
        _ => anyhow::anyhow!("{}: cannot query capabilities: {e}", path.display()),
    })?;
    check_capabilities(path, &caps.card, caps.capabilities)?;
    Ok((dev, caps.card))
}

/// Picks the pixel format: the requested one if the camera offers it and we convert it, else
/// the first of [`PixelFormat::PREFERENCE`] that the camera offers.
pub fn choose_format(offered: &[[u8; 4]], requested: Option<[u8; 4]>) -> Result<PixelFormat> {
    let list = || {
        offered
            .iter()
            .map(|&c| fourcc_str(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let supported = || {
        PixelFormat::PREFERENCE
            .iter()
            .map(|f| fourcc_str(f.fourcc()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(code) = requested {
        let Some(format) = PixelFormat::from_fourcc(code) else {
            bail!(
                "pixel format {} is not one alignsam converts ({})",
                fourcc_str(code),
                supported()
            );
        };
        if !offered.contains(&code) {
            bail!(
                "the camera does not offer pixel format {}; it offers {}",
                fourcc_str(code),
                list()
            );
        }
        return Ok(format);
    }
    PixelFormat::PREFERENCE
        .into_iter()
        .find(|f| offered.contains(&f.fourcc()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the camera offers {}, none of which alignsam converts ({})",
                list(),
                supported()
            )
        })
}

/// The YUV range of a negotiated format: what the driver says, and when it says "default",
/// V4L2's rule for YUV (full range for the JPEG colourspace, limited otherwise).
fn yuv_range(quantization: Quantization, colorspace: Colorspace) -> Range {
    match quantization {
        Quantization::FullRange => Range::Full,
        Quantization::LimitedRange => Range::Limited,
        Quantization::Default if matches!(colorspace, Colorspace::JPEG) => Range::Full,
        Quantization::Default => Range::Limited,
    }
}

/// The frame interval (seconds per frame) for a rate, as V4L2 wants it: an exact fraction
/// for rates with up to three decimals (30 -> 1/30, 29.97 -> 100/2997).
pub fn fps_to_interval(fps: f64) -> (u32, u32) {
    let (mut num, mut den) = (1000u64, (fps * 1000.0).round().max(1.0) as u64);
    let g = gcd(num, den);
    num /= g;
    den /= g;
    (num as u32, den.min(u32::MAX as u64) as u32)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Frames per second of an interval, if it is a valid one.
pub fn interval_to_fps(numerator: u32, denominator: u32) -> Option<f64> {
    (numerator > 0 && denominator > 0).then(|| denominator as f64 / numerator as f64)
}

/// The bytes of a dequeued buffer that hold the frame: the first `bytesused` (a compressed
/// frame is shorter than its buffer). An empty buffer is an error; a `bytesused` past the
/// buffer (a driver bug) is clamped to it.
pub fn payload(buffer: &[u8], bytesused: u32) -> std::result::Result<&[u8], String> {
    match bytesused as usize {
        0 => Err("the driver returned an empty buffer".into()),
        n => Ok(&buffer[..n.min(buffer.len())]),
    }
}

/// Frame indices from the driver's sequence numbers: consecutive numbers give consecutive
/// indices, gaps (frames the driver dropped) give gaps, and the index keeps increasing across
/// reconnections and drivers that do not count.
#[derive(Clone, Debug, Default)]
pub struct SequenceIndex {
    /// Index of the first frame of the current stream.
    base: u64,
    /// Sequence number of the first frame of the current stream.
    first: Option<u32>,
    last: Option<u64>,
}

impl SequenceIndex {
    /// The index of the frame with sequence number `sequence`.
    pub fn index(&mut self, sequence: u32) -> u64 {
        let first = *self.first.get_or_insert(sequence);
        let mut index = self.base + sequence.wrapping_sub(first) as u64;
        if let Some(last) = self.last
            && index <= last
        {
            index = last + 1;
        }
        self.last = Some(index);
        index
    }

    /// A new stream starts (after a reconnection): its sequence numbers start over.
    pub fn restart(&mut self) {
        self.base = self.last.map_or(0, |l| l + 1);
        self.first = None;
    }
}

/// The wall-clock time a frame was captured: the driver's monotonic timestamp moved onto the
/// wall clock when the buffer has one (`read_wall` and `mono_now` are the two clocks read
/// together, when the buffer was dequeued), else `read_wall`. Timestamps that are zero, in
/// the future or more than 10 s old are not trusted.
pub fn capture_time(
    flags: BufferFlags,
    timestamp: Duration,
    read_wall: SystemTime,
    mono_now: Duration,
) -> SystemTime {
    let monotonic = (flags & BufferFlags::TIMESTAMP_MASK) == BufferFlags::TIMESTAMP_MONOTONIC;
    if !monotonic || timestamp.is_zero() || timestamp > mono_now {
        return read_wall;
    }
    let age = mono_now - timestamp;
    if age > Duration::from_secs(10) {
        return read_wall;
    }
    read_wall.checked_sub(age).unwrap_or(read_wall)
}

fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec through a valid pointer; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What a failed read means for the stream.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The device went away or stopped delivering: reopen it, with back-off.
    Lost,
    /// The stream's state is unknown (interrupted mid-ioctl): reopen at once.
    Restart,
    /// Anything else: the stream ends.
    Fatal,
}

fn classify(e: &io::Error) -> Failure {
    if e.kind() == io::ErrorKind::TimedOut {
        return Failure::Lost;
    }
    match e.raw_os_error() {
        Some(libc::ENODEV | libc::EIO | libc::ENXIO | libc::EPIPE | libc::ESHUTDOWN) => {
            Failure::Lost
        }
        // The crate re-queues the previous buffer before dequeuing, so after an interrupted
        // dequeue a plain retry would queue that buffer twice; reopening resets everything.
        Some(libc::EINTR) => Failure::Restart,
        // Ready by poll but nothing to dequeue: the driver is in a state it should not be in.
        Some(libc::EAGAIN) => Failure::Lost,
        _ => Failure::Fatal,
    }
}

/// One frame read from the driver.
struct RawFrame {
    image: image::RgbImage,
    captured: SystemTime,
    sequence: u32,
}

enum ReadError {
    /// This frame is lost; the stream goes on.
    Corrupt { sequence: u32, message: String },
    /// The ioctl failed.
    Io(io::Error),
}

/// An open, negotiated camera with its buffers.
struct Streaming {
    // Declared before the device so that it is dropped first: STREAMOFF, munmap and freeing
    // the buffers happen while the file descriptor is open (the stream holds it too).
    stream: MmapStream<'static>,
    _device: Device,
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
    range: Range,
    fps: Option<f64>,
    card: String,
}

impl Streaming {
    fn open(path: &Path, o: &V4l2Options) -> Result<Streaming> {
        // The v4l crate panics on values it does not know (a new colourspace code, non-UTF-8
        // names); make that an error for this device rather than the end of the program.
        match catch_unwind(AssertUnwindSafe(|| Self::open_inner(path, o))) {
            Ok(r) => r,
            Err(panic) => bail!(
                "{}: the v4l crate failed on this device: {}",
                path.display(),
                crate::util::panic_message(&*panic)
            ),
        }
    }

    fn open_inner(path: &Path, o: &V4l2Options) -> Result<Streaming> {
        let (dev, card) = open_capture_device(path)?;
        let p = path.display();
        let offered: Vec<[u8; 4]> = dev
            .enum_formats()
            .with_context(|| format!("{p} ({card}): cannot list pixel formats"))?
            .iter()
            .map(|d| d.fourcc.repr)
            .collect();
        if offered.is_empty() {
            bail!("{p} ({card}): the device offers no capture formats");
        }
        let format = choose_format(&offered, o.fourcc).with_context(|| format!("{p} ({card})"))?;
        let current = dev
            .format()
            .with_context(|| format!("{p} ({card}): cannot read the current format"))?;
        let mut want = Format::new(
            o.width.unwrap_or(current.width),
            o.height.unwrap_or(current.height),
            FourCC::new(&format.fourcc()),
        );
        want.field_order = FieldOrder::Progressive;
        let got = dev.set_format(&want).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => {
                anyhow::anyhow!("{p} ({card}): device busy: another program is streaming from it")
            }
            _ => anyhow::anyhow!(
                "{p} ({card}): cannot set format {} {}x{}: {e}",
                fourcc_str(format.fourcc()),
                want.width,
                want.height
            ),
        })?;
        let Some(got_format) = PixelFormat::from_fourcc(got.fourcc.repr) else {
            bail!(
                "{p} ({card}): asked for {}, the driver chose {}, which alignsam does not convert",
                fourcc_str(format.fourcc()),
                fourcc_str(got.fourcc.repr)
            );
        };
        if got_format != format {
            log::warn!(
                "{p}: asked for {}, the driver chose {}",
                fourcc_str(format.fourcc()),
                fourcc_str(got.fourcc.repr)
            );
        }
        if (o.width.is_some() || o.height.is_some())
            && (got.width, got.height) != (want.width, want.height)
        {
            log::warn!(
                "{p}: asked for {}x{}, the camera gives {}x{}",
                want.width,
                want.height,
                got.width,
                got.height
            );
        }
        match got.field_order {
            FieldOrder::Alternate | FieldOrder::SequentialTB | FieldOrder::SequentialBT => bail!(
                "{p} ({card}): the driver delivers separate interlaced fields ({:?}), which \
                 alignsam does not assemble",
                got.field_order
            ),
            FieldOrder::Interlaced | FieldOrder::InterlacedTB | FieldOrder::InterlacedBT => {
                log::warn!("{p}: frames are interlaced; moving objects will show combing")
            }
            _ => {}
        }
        if let Some(fps) = o.fps {
            let (n, d) = fps_to_interval(fps);
            match dev.set_params(&Parameters::new(Fraction::new(n, d))) {
                Ok(params) => {
                    let actual =
                        interval_to_fps(params.interval.numerator, params.interval.denominator);
                    if actual.is_none_or(|a| (a - fps).abs() > 0.01 * fps) {
                        log::warn!(
                            "{p}: asked for {fps} fps, the camera runs at {}",
                            actual.map_or("an unknown rate".into(), |a| format!("{a:.2} fps"))
                        );
                    }
                }
                Err(e) => log::warn!("{p}: cannot set the frame rate to {fps} fps: {e}"),
            }
        }
        let fps = dev
            .params()
            .ok()
            .and_then(|p| interval_to_fps(p.interval.numerator, p.interval.denominator));
        // REQBUFS, then QUERYBUF and mmap for every buffer the driver granted. The buffers are
        // queued and the stream started on the first `next` (see the module documentation).
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, o.buffers.max(2))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => anyhow::anyhow!(
                    "{p} ({card}): device busy: another program is streaming from it"
                ),
                _ => anyhow::anyhow!("{p} ({card}): cannot set up memory-mapped buffers: {e}"),
            })?;
        stream.set_timeout(o.stall_timeout);
        Ok(Streaming {
            stream,
            _device: dev,
            format: got_format,
            width: got.width,
            height: got.height,
            stride: got.stride as usize,
            range: yuv_range(got.quantization, got.colorspace),
            fps,
            card,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}: {} {}x{}{}",
            self.card,
            fourcc_str(self.format.fourcc()),
            self.width,
            self.height,
            self.fps.map_or(String::new(), |f| format!(" @ {f:.2} fps"))
        )
    }

    fn read(&mut self) -> std::result::Result<RawFrame, ReadError> {
        let (buffer, meta) = CaptureStream::next(&mut self.stream).map_err(ReadError::Io)?;
        let read_wall = SystemTime::now();
        let mono_now = monotonic_now();
        let sequence = meta.sequence;
        let corrupt = |message: String| ReadError::Corrupt { sequence, message };
        if meta.flags.contains(BufferFlags::ERROR) {
            return Err(corrupt("the driver marked the frame as corrupt".into()));
        }
        let data = payload(buffer, meta.bytesused).map_err(corrupt)?;
        let image = self
            .format
            .to_rgb(data, self.width, self.height, self.stride, self.range)
            .map_err(|e| corrupt(format!("{e:#}")))?;
        let ts = Duration::new(
            meta.timestamp.sec.max(0) as u64,
            (meta.timestamp.usec.clamp(0, 999_999) * 1000) as u32,
        );
        Ok(RawFrame {
            image,
            captured: capture_time(meta.flags, ts, read_wall, mono_now),
            sequence,
        })
    }
}

/// A [`FrameSource`] over a V4L2 camera, reconnecting when it goes away.
pub struct V4l2Source {
    path: PathBuf,
    options: V4l2Options,
    streaming: Option<Streaming>,
    sequence: SequenceIndex,
    reconnects: u64,
    description: String,
    /// When the stream was last restarted at once, so that restarts cannot loop without pause.
    last_restart: Option<Instant>,
}

impl V4l2Source {
    /// Opens and negotiates the camera that `spec` names (`/dev/videoN`, a by-id link, or
    /// `N`). Fails at once, without retrying, if it is missing or not a capture device.
    pub fn open(spec: &str, options: V4l2Options) -> Result<Self> {
        let path = device_path(spec);
        let streaming = Streaming::open(&path, &options)?;
        let description = streaming.describe();
        log::info!("{}: {description}", path.display());
        Ok(V4l2Source {
            path,
            options,
            streaming: Some(streaming),
            sequence: SequenceIndex::default(),
            reconnects: 0,
            description,
            last_restart: None,
        })
    }

    /// Releases the stream and device. The v4l crate panics when releasing fails with anything
    /// but ENODEV; a camera that misbehaves must not end the program, so that is caught.
    fn teardown(&mut self) {
        if let Some(s) = self.streaming.take()
            && let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(s)))
        {
            log::warn!(
                "{}: releasing the old stream failed ({}); going on",
                self.path.display(),
                crate::util::panic_message(&*panic)
            );
        }
        self.sequence.restart();
    }

    /// Reopens the camera, waiting [`Backoff::delay`] before each attempt (none before the
    /// first when `at_once`). Fails after [`Backoff::max_attempts`] failed attempts.
    fn reconnect(&mut self, at_once: bool) -> Result<()> {
        let p = self.path.display().to_string();
        let lost_at = Instant::now();
        let backoff = &self.options.reconnect;
        let mut attempt = 0u32;
        loop {
            if attempt > 0 || !at_once {
                std::thread::sleep(backoff.delay(attempt.saturating_sub(at_once as u32)));
            }
            match Streaming::open(&self.path, &self.options) {
                Ok(s) => {
                    let description = s.describe();
                    if description != self.description {
                        log::warn!("{p}: camera is back with different settings: {description}");
                    }
                    log::warn!(
                        "{p}: camera is back after {:.1} s; streaming again",
                        lost_at.elapsed().as_secs_f64()
                    );
                    self.description = description;
                    self.streaming = Some(s);
                    self.reconnects += 1;
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    if backoff.max_attempts.is_some_and(|max| attempt >= max) {
                        bail!(
                            "{p}: camera did not come back after {attempt} attempts over {:.1} s \
                             (last error: {e:#})",
                            lost_at.elapsed().as_secs_f64()
                        );
                    }
                    // One line per attempt at first, then only when the delay has reached its
                    // ceiling every minute or so, so that a long outage does not flood the log.
                    let delay = backoff.delay(attempt);
                    if attempt <= 3 || attempt.is_multiple_of(8) {
                        log::info!(
                            "{p}: reconnection attempt {attempt} failed ({e:#}); next in {:.1} s",
                            delay.as_secs_f64()
                        );
                    }
                }
            }
        }
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let mut at_once = false;
        loop {
            if self.streaming.is_none() {
                self.reconnect(at_once)?;
            }
            let streaming = self.streaming.as_mut().expect("reconnected");
            match streaming.read() {
                Ok(raw) => {
                    return Ok(Some(Frame {
                        index: self.sequence.index(raw.sequence),
                        captured: raw.captured,
                        image: raw.image,
                    }));
                }
                Err(ReadError::Corrupt { sequence, message }) => {
                    return Err(SourceError::frame_lost(
                        self.sequence.index(sequence),
                        format!("{}: {message}", self.path.display()),
                    ));
                }
                Err(ReadError::Io(e)) => {
                    let p = self.path.display();
                    match classify(&e) {
                        Failure::Lost => {
                            let b = &self.options.reconnect;
                            log::error!(
                                "{p}: camera lost ({}); reconnecting every {:.1} s, backing off \
                                 to {:.0} s{}",
                                if e.kind() == io::ErrorKind::TimedOut {
                                    format!(
                                        "no frame for {:.1} s",
                                        self.options.stall_timeout.as_secs_f64()
                                    )
                                } else {
                                    e.to_string()
                                },
                                b.initial.as_secs_f64(),
                                b.max.as_secs_f64(),
                                b.max_attempts
                                    .map_or(String::new(), |n| format!(", {n} attempts at most"))
                            );
                            at_once = false;
                        }
                        Failure::Restart => {
                            log::warn!("{p}: capture interrupted ({e}); restarting the stream");
                            // At once, unless that was just tried: then with back-off.
                            at_once = self
                                .last_restart
                                .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
                            self.last_restart = Some(Instant::now());
                        }
                        Failure::Fatal => {
                            return Err(SourceError::gone(format!("{p}: capture failed: {e}")));
                        }
                    }
                    self.teardown();
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("V4L2 {} ({})", self.path.display(), self.description)
    }

    fn is_live(&self) -> bool {
        true
    }

    fn reconnects(&self) -> u64 {
        self.reconnects
    }
}

/// One frame size of a format, with the frame rates the camera offers for it.
#[derive(Clone, Debug, Serialize)]
pub struct SizeInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Discrete frame rates, fastest first.
    pub fps: Vec<f64>,
    /// A continuous range of rates (slowest, fastest), for cameras that give one.
    pub fps_range: Option<(f64, f64)>,
}

/// A continuous or stepped range of frame sizes.
#[derive(Clone, Debug, Serialize)]
pub struct SizeRange {
    /// Smallest width, largest width, step.
    pub width: (u32, u32, u32),
    /// Smallest height, largest height, step.
    pub height: (u32, u32, u32),
}

/// One pixel format a camera offers.
#[derive(Clone, Debug, Serialize)]
pub struct FormatInfo {
    /// Four-character code (`YUYV`).
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// Whether frames are compressed.
    pub compressed: bool,
    /// Whether the driver converts in software (emulated).
    pub emulated: bool,
    /// Whether alignsam converts this format.
    pub supported: bool,
    /// Discrete frame sizes.
    pub sizes: Vec<SizeInfo>,
    /// Or a range of sizes.
    pub size_range: Option<SizeRange>,
}

/// A V4L2 device node and what it offers.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    /// The node (`/dev/video0`).
    pub path: String,
    /// Stable links to it (`/dev/v4l/by-id/...`, `/dev/v4l/by-path/...`).
    pub links: Vec<String>,
    /// Driver name (`uvcvideo`).
    pub driver: String,
    /// Device name (`HD Pro Webcam C920`).
    pub card: String,
    /// Bus location (`usb-0000:00:14.0-1`).
    pub bus: String,
    /// Whether alignsam can capture from it; if not, `error` says why.
    pub capture: bool,
    /// Why the device cannot be used or listed, if so.
    pub error: Option<String>,
    /// Capture formats.
    pub formats: Vec<FormatInfo>,
}

/// The `/dev/videoN` nodes, in natural order.
fn video_nodes() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return vec![];
    };
    let mut nodes: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("video"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    super::paths::sort_natural(&mut nodes);
    nodes
}

/// The `/dev/v4l/by-*` links, by the node they point to.
fn stable_links() -> BTreeMap<PathBuf, Vec<String>> {
    let mut links: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for dir in ["/dev/v4l/by-id", "/dev/v4l/by-path"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            if let Ok(target) = std::fs::canonicalize(e.path()) {
                links
                    .entry(target)
                    .or_default()
                    .push(e.path().display().to_string());
            }
        }
    }
    for v in links.values_mut() {
        v.sort();
    }
    links
}

/// Lists every `/dev/videoN` node with its capabilities and, for capture devices, formats,
/// sizes and frame rates. A node that cannot be opened is listed with the reason.
pub fn list_devices() -> Vec<DeviceInfo> {
    let links = stable_links();
    video_nodes()
        .into_iter()
        .map(|path| {
            let mut info = probe(&path);
            info.links = links.get(&path).cloned().unwrap_or_default();
            info
        })
        .collect()
}

/// One device, for `alignsam devices /dev/video0`: errors if the node is missing or not a
/// V4L2 device at all; a V4L2 node that cannot capture is described with the reason.
pub fn describe_device(spec: &str) -> Result<DeviceInfo> {
    let path = device_path(spec);
    check_node(&path)?;
    let dev = Device::with_path(&path).map_err(|e| open_error(&path, e))?;
    if let Err(e) = dev.query_caps() {
        bail!(
            "{}: not a V4L2 device (VIDIOC_QUERYCAP: {e})",
            path.display()
        );
    }
    drop(dev);
    let mut info = probe(&path);
    let canonical = std::fs::canonicalize(&path).unwrap_or(path);
    info.links = stable_links().remove(&canonical).unwrap_or_default();
    Ok(info)
}

fn probe(path: &Path) -> DeviceInfo {
    let mut info = DeviceInfo {
        path: path.display().to_string(),
        links: vec![],
        driver: String::new(),
        card: String::new(),
        bus: String::new(),
        capture: false,
        error: None,
        formats: vec![],
    };
    let result = catch_unwind(AssertUnwindSafe(|| probe_into(path, &mut info)));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => info.error = Some(format!("{e:#}")),
        Err(panic) => {
            info.error = Some(format!(
                "the v4l crate failed on this device: {}",
                crate::util::panic_message(&*panic)
            ))
        }
    }
    info
}

fn probe_into(path: &Path, info: &mut DeviceInfo) -> Result<()> {
    let dev = Device::with_path(path).map_err(|e| open_error(path, e))?;
    let caps = dev
        .query_caps()
        .map_err(|e| anyhow::anyhow!("{}: not a V4L2 device ({e})", path.display()))?;
    info.driver = caps.driver.clone();
    info.card = caps.card.clone();
    info.bus = caps.bus.clone();
    check_capabilities(path, &caps.card, caps.capabilities)?;
    info.capture = true;
    for desc in dev.enum_formats()? {
        let code = desc.fourcc;
        let mut format = FormatInfo {
            fourcc: fourcc_str(code.repr),
            description: desc.description.clone(),
            compressed: desc
                .flags
                .contains(v4l::format::description::Flags::COMPRESSED),
            emulated: desc
                .flags
                .contains(v4l::format::description::Flags::EMULATED),
            supported: PixelFormat::from_fourcc(code.repr).is_some(),
            sizes: vec![],
            size_range: None,
        };
        // Drivers without VIDIOC_ENUM_FRAMESIZES just list no sizes.
        for size in dev.enum_framesizes(code).unwrap_or_default() {
            match size.size {
                FrameSizeEnum::Discrete(d) => {
                    let mut s = SizeInfo {
                        width: d.width,
                        height: d.height,
                        fps: vec![],
                        fps_range: None,
                    };
                    for iv in dev
                        .enum_frameintervals(code, d.width, d.height)
                        .unwrap_or_default()
                    {
                        match iv.interval {
                            FrameIntervalEnum::Discrete(f) => {
                                s.fps.extend(interval_to_fps(f.numerator, f.denominator))
                            }
                            FrameIntervalEnum::Stepwise(st) => {
                                s.fps_range = interval_to_fps(st.max.numerator, st.max.denominator)
                                    .zip(interval_to_fps(st.min.numerator, st.min.denominator));
                            }
                        }
                    }
                    s.fps.sort_by(|a, b| b.total_cmp(a));
                    s.fps.dedup();
                    format.sizes.push(s);
                }
                FrameSizeEnum::Stepwise(st) => {
                    format.size_range = Some(SizeRange {
                        width: (st.min_width, st.max_width, st.step_width),
                        height: (st.min_height, st.max_height, st.step_height),
                    });
                }
            }
        }
        info.formats.push(format);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl Sized>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn missing_paths_and_indices_are_no_such_device() {
        assert_eq!(device_path("7"), PathBuf::from("/dev/video7"));
        assert_eq!(
            device_path("/dev/v4l/by-id/x"),
            PathBuf::from("/dev/v4l/by-id/x")
        );
        // A number no machine has.
        let e = err(V4l2Source::open("987654", V4l2Options::default()));
        assert_eq!(e, "/dev/video987654: no such device");
        let e = err(V4l2Source::open("/dev/video-none", V4l2Options::default()));
        assert_eq!(e, "/dev/video-none: no such device");
    }

    #[test]
    fn files_directories_and_other_devices_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("video0");
        std::fs::write(&file, b"not a camera").unwrap();
        let e = err(V4l2Source::open(
            &file.to_string_lossy(),
            V4l2Options::default(),
        ));
        assert!(
            e.ends_with("video0: not a video device (a regular file)"),
            "{e}"
        );
        let e = err(V4l2Source::open(
            &tmp.path().to_string_lossy(),
            V4l2Options::default(),
        ));
        assert!(e.ends_with(": not a video device (a directory)"), "{e}");
        // /dev/null is a character device, but VIDIOC_QUERYCAP fails on it.
        let e = err(V4l2Source::open("/dev/null", V4l2Options::default()));
        assert!(
            e.starts_with("/dev/null: not a V4L2 device (VIDIOC_QUERYCAP:"),
            "{e}"
        );
        let e = err(describe_device("/dev/null"));
        assert!(e.starts_with("/dev/null: not a V4L2 device"), "{e}");
    }

    #[test]
    fn capabilities_must_be_capture_and_streaming() {
        let p = Path::new("/dev/video1");
        let ok = CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING;
        assert!(check_capabilities(p, "Cam", ok).is_ok());
        let e = err(check_capabilities(
            p,
            "Cam",
            CapFlags::META_CAPTURE | CapFlags::STREAMING,
        ));
        assert!(e.contains("/dev/video1 (Cam): not a capture device: this is the metadata node"));
        let e = err(check_capabilities(p, "Cam", CapFlags::VIDEO_OUTPUT));
        assert!(e.contains("not a video capture device"), "{e}");
        let e = err(check_capabilities(
            p,
            "ISP",
            CapFlags::VIDEO_CAPTURE_MPLANE | CapFlags::STREAMING,
        ));
        assert!(e.contains("multi-planar"), "{e}");
        let e = err(check_capabilities(
            p,
            "Cam",
            CapFlags::VIDEO_CAPTURE | CapFlags::READ_WRITE,
        ));
        assert!(e.contains("does not support streaming I/O"), "{e}");
    }

    #[test]
    fn format_preference() {
        let offered = [*b"MJPG", *b"YUYV", *b"H264"];
        assert_eq!(choose_format(&offered, None).unwrap(), PixelFormat::Yuyv);
        assert_eq!(
            choose_format(&offered, Some(*b"MJPG")).unwrap(),
            PixelFormat::Mjpeg
        );
        assert_eq!(
            choose_format(&[*b"GREY", *b"RGB3"], None).unwrap(),
            PixelFormat::Rgb24
        );
        assert_eq!(
            choose_format(&[*b"GREY", *b"H264"], None).unwrap(),
            PixelFormat::Grey
        );
        assert_eq!(
            choose_format(&[*b"GREY", *b"NV12"], None).unwrap(),
            PixelFormat::Nv12
        );
        let e = err(choose_format(&offered, Some(*b"RGB3")));
        assert!(
            e.contains("does not offer pixel format RGB3; it offers MJPG, YUYV, H264"),
            "{e}"
        );
        let e = err(choose_format(&offered, Some(*b"H264")));
        assert!(e.contains("H264 is not one alignsam converts"), "{e}");
        let e = err(choose_format(&[*b"H264"], None));
        assert!(
            e.contains("offers H264, none of which alignsam converts"),
            "{e}"
        );
    }

    #[test]
    fn backoff_doubles_to_its_ceiling() {
        let b = Backoff::default();
        let secs: Vec<f64> = (0..8).map(|a| b.delay(a).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]);
        assert_eq!(b.delay(1000), Duration::from_secs(8));
        let opts = V4l2Options::from_source_options(&SourceOptions {
            reconnect_attempts: Some(3),
            pixel_format: Some("mjpg".into()),
            fps: Some(15.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(opts.reconnect.max_attempts, Some(3));
        assert_eq!(opts.fourcc, Some(*b"MJPG"));
        assert!(
            V4l2Options::from_source_options(&SourceOptions {
                fps: Some(0.0),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn bytesused_limits_the_payload() {
        let buffer = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(payload(&buffer, 4).unwrap(), &[1, 2, 3, 4]);
        assert_eq!(payload(&buffer, 6).unwrap(), &buffer);
        assert_eq!(payload(&buffer, 600).unwrap(), &buffer);
        assert!(payload(&buffer, 0).unwrap_err().contains("empty buffer"));
        // An MJPEG frame followed by stale bytes of a previous, larger frame decodes from its
        // own bytes only.
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 200, 30]));
        let mut jpeg = vec![];
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&img)
            .unwrap();
        let used = jpeg.len() as u32;
        jpeg.extend(std::iter::repeat_n(0xFF, 4096));
        let frame = payload(&jpeg, used).unwrap();
        let out = PixelFormat::Mjpeg
            .to_rgb(frame, 8, 8, 0, Range::Full)
            .unwrap();
        assert_eq!(out.dimensions(), (8, 8));
    }

    #[test]
    fn sequence_numbers_become_monotonic_indices() {
        let mut s = SequenceIndex::default();
        let got: Vec<u64> = [100, 101, 104, 105].iter().map(|&q| s.index(q)).collect();
        // Frames 102 and 103 were dropped by the driver: a gap.
        assert_eq!(got, [0, 1, 4, 5]);
        // Reconnected: the driver counts from 0 again; indices go on.
        s.restart();
        assert_eq!(s.index(0), 6);
        assert_eq!(s.index(1), 7);
        // A driver that does not count (always 0) still gives increasing indices.
        assert_eq!(s.index(1), 8);
        assert_eq!(s.index(0), 9);
        // Wrapping sequence numbers.
        let mut s = SequenceIndex::default();
        assert_eq!(s.index(u32::MAX), 0);
        assert_eq!(s.index(0), 1);
    }

    #[test]
    fn driver_timestamps_move_to_the_wall_clock() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mono = Duration::from_secs(5000);
        let mono_flag = BufferFlags::TIMESTAMP_MONOTONIC;
        let ts = mono - Duration::from_millis(40);
        assert_eq!(
            capture_time(mono_flag, ts, wall, mono),
            wall - Duration::from_millis(40)
        );
        // Not monotonic, zero, in the future, or stale: the read time.
        assert_eq!(
            capture_time(BufferFlags::TIMESTAMP_COPY, ts, wall, mono),
            wall
        );
        assert_eq!(capture_time(mono_flag, Duration::ZERO, wall, mono), wall);
        assert_eq!(
            capture_time(mono_flag, mono + Duration::from_secs(1), wall, mono),
            wall
        );
        assert_eq!(
            capture_time(mono_flag, mono - Duration::from_secs(60), wall, mono),
            wall
        );
        assert!(monotonic_now() > Duration::ZERO);
    }

    #[test]
    fn frame_rates_as_intervals() {
        assert_eq!(fps_to_interval(30.0), (1, 30));
        assert_eq!(fps_to_interval(7.5), (2, 15));
        assert_eq!(fps_to_interval(29.97), (100, 2997));
        assert_eq!(interval_to_fps(1, 30), Some(30.0));
        assert_eq!(interval_to_fps(0, 30), None);
    }

    #[test]
    fn errors_that_mean_the_camera_is_gone() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(libc::ENODEV)), Failure::Lost);
        assert_eq!(classify(&os(libc::EIO)), Failure::Lost);
        assert_eq!(
            classify(&io::Error::new(io::ErrorKind::TimedOut, "VIDIOC_DQBUF")),
            Failure::Lost
        );
        assert_eq!(classify(&os(libc::EINTR)), Failure::Restart);
        assert_eq!(classify(&os(libc::EAGAIN)), Failure::Lost);
        assert_eq!(classify(&os(libc::EINVAL)), Failure::Fatal);
        assert_eq!(
            yuv_range(Quantization::Default, Colorspace::JPEG),
            Range::Full
        );
        assert_eq!(
            yuv_range(Quantization::Default, Colorspace::SMPTE170M),
            Range::Limited
        );
        assert_eq!(
            yuv_range(Quantization::FullRange, Colorspace::Rec709),
            Range::Full
        );
    }

    #[test]
    fn listing_without_cameras_is_empty_not_an_error() {
        // The build machines have no /dev/video*; on a machine with cameras this lists them.
        for d in list_devices() {
            assert!(d.path.starts_with("/dev/video"));
            assert!(d.capture || d.error.is_some());
        }
    }
}
