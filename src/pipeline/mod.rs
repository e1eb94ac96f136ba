//! The frame pipeline: capture -> bounded queue -> processing -> sink, with bounded latency.
//!
//! Capture runs on its own thread: it reads frames from a [`FrameSource`] (blocking in the
//! driver, decoding MJPEG, reading a pipe) and pushes them into a [`FrameQueue`]. Processing
//! and the sink run on the calling thread, one frame at a time. When the source is live (a
//! camera) and processing is slower than it, the queue drops its oldest frame, so capture never
//! waits for processing and the frame processed next is always a recent one; with a file,
//! capture waits instead and every frame is processed ([`PipelineOptions::for_source`]).
//!
//! # Stopping
//!
//! The run ends at the end of the stream (the frames still queued are processed first), when
//! the source fails (likewise: the whole frames read before the failure are processed), when
//! the sink fails, or when the [`StopFlag`] is raised: by the Ctrl-C / SIGTERM handler of
//! [`install_ctrlc`], or by the caller (a frame limit). A stop from the flag takes effect after
//! the frame being processed; the frames still queued then are not processed and count as
//! dropped. The [`Summary`] says which it was and maps it to an exit code.
//!
//! # Counting
//!
//! `frames_read` counts the frames the capture thread put into the queue, `frames_processed`
//! those that went through processing, `frames_dropped` those that left the queue any other way
//! (pushed out by newer frames, or discarded at a stop). So `frames_processed + frames_dropped
//! == frames_read`, always. Frames that never became frames are counted apart: `frames_bad`
//! (the source could not decode them: a [`SourceError`] of kind `FrameLost`) and `frames_skipped` (gaps in the
//! source's indices: frames a camera driver dropped before we could read them).
//!
//! # Exit codes
//!
//! [`Summary::exit_code`] maps the way a run ended to one of [`crate::exit`]'s codes.

pub mod queue;
pub mod stats;

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use serde::Serialize;

pub use queue::{FrameQueue, Overflow, Popped, Pushed, QueueCounts};
pub use stats::LatencyStats;

use crate::source::{Frame, FrameSource, SourceError};
use crate::util::ms;

pub use crate::exit::{EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_SOURCE_FAILED};

/// Why a stop was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The program asked (a frame limit, an error it handles).
    Requested,
    /// A signal (Ctrl-C, SIGTERM, SIGHUP).
    Signal,
}

/// A flag that stops a [`Pipeline`] after the frame being processed. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicU8>);

const RUNNING: u8 = 0;
const REQUESTED: u8 = 1;
const SIGNALLED: u8 = 2;

impl StopFlag {
    /// A lowered flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the pipeline to stop (the run ends as [`RunEnd::Requested`]).
    pub fn request_stop(&self) {
        self.0.fetch_max(REQUESTED, Ordering::SeqCst);
    }

    /// Records a termination signal (the run ends as [`RunEnd::Interrupted`]).
    pub fn signal(&self) {
        self.0.fetch_max(SIGNALLED, Ordering::SeqCst);
    }

    /// Whether a stop was asked for, and why.
    pub fn cause(&self) -> Option<StopCause> {
        match self.0.load(Ordering::SeqCst) {
            RUNNING => None,
            REQUESTED => Some(StopCause::Requested),
            _ => Some(StopCause::Signal),
        }
    }

    /// Whether a stop was asked for.
    pub fn is_raised(&self) -> bool {
        self.cause().is_some()
    }
}

/// Installs the handler for Ctrl-C (SIGINT), SIGTERM and SIGHUP: the first raises `flag`, so
/// that the run finishes its frame and writes its summary; the second exits at once with
/// [`EXIT_INTERRUPTED`]. Once per process.
pub fn install_ctrlc(flag: StopFlag) -> Result<()> {
    ctrlc::set_handler(move || {
        if flag.cause() == Some(StopCause::Signal) {
            eprintln!("alignsam: interrupted again, exiting now");
            std::process::exit(EXIT_INTERRUPTED as i32);
        }
        flag.signal();
        log::warn!(
            "interrupted: finishing the current frame, then the summary (interrupt again to \
             quit at once)"
        );
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C/SIGTERM handler: {e}"))
}

/// How the pipeline queues frames.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Frames the queue holds between capture and processing (at least 1).
    pub capacity: usize,
    /// What a full queue does.
    pub overflow: Overflow,
    /// After a stop, how long to wait for the capture thread to notice before leaving it
    /// behind (it may be blocked in the source: a camera that stalls, a pipe with no data).
    pub join_timeout: Duration,
    /// The most bytes of decoded frames the queue holds: large frames get fewer slots than
    /// `capacity` (at least one), so memory stays bounded whatever the frame size.
    pub max_queued_bytes: usize,
}

/// [`PipelineOptions::max_queued_bytes`] by default: 256 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 256 << 20;

impl PipelineOptions {
    /// For a live source (a camera, a paced file): one frame of room, dropping the oldest, so
    /// that processing always gets the newest frame and latency stays at one frame of waiting.
    /// For a file: room for a few frames read ahead, and capture waits, so nothing is lost.
    pub fn for_source(source: &dyn FrameSource) -> Self {
        if source.is_live() {
            PipelineOptions {
                capacity: 1,
                overflow: Overflow::DropOldest,
                join_timeout: Duration::from_secs(1),
                max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            }
        } else {
            PipelineOptions {
                capacity: 4,
                overflow: Overflow::Block,
                join_timeout: Duration::from_secs(1),
                max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            }
        }
    }
}

/// What the sink gets for each processed frame.
#[derive(Clone, Debug)]
pub struct FrameReport<R> {
    /// The frame's index in the source.
    pub index: u64,
    /// When the frame was captured.
    pub captured: SystemTime,
    /// What processing returned.
    pub result: R,
    /// Time in the queue, from the capture thread's read to the start of processing.
    pub queue_wait: Duration,
    /// Time in processing.
    pub processing: Duration,
    /// From capture (the driver's timestamp when there is one) to the end of processing.
    pub latency: Duration,
    /// Frames read so far (including this one).
    pub frames_read: u64,
    /// Frames dropped so far.
    pub frames_dropped: u64,
}

impl<R> FrameReport<R> {
    /// The capture time in seconds since the Unix epoch (for JSON).
    pub fn captured_unix(&self) -> f64 {
        unix_seconds(self.captured)
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    /// The source ended.
    EndOfStream,
    /// The program raised the stop flag.
    Requested,
    /// A signal raised the stop flag.
    Interrupted,
    /// The source failed ([`Summary::source_error`]).
    SourceFailed,
    /// The sink failed ([`Summary::sink_error`]).
    SinkFailed,
}

impl RunEnd {
    fn from_cause(cause: StopCause) -> RunEnd {
        match cause {
            StopCause::Signal => RunEnd::Interrupted,
            StopCause::Requested => RunEnd::Requested,
        }
    }
}

impl fmt::Display for RunEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunEnd::EndOfStream => "end of stream",
            RunEnd::Requested => "stopped",
            RunEnd::Interrupted => "interrupted",
            RunEnd::SourceFailed => "source failed",
            RunEnd::SinkFailed => "output failed",
        })
    }
}

/// What a run did. Serialises to one JSON object.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The source's description.
    pub source: String,
    /// Why the run ended.
    pub stop: RunEnd,
    /// Frames put into the queue by capture.
    pub frames_read: u64,
    /// Frames processed.
    pub frames_processed: u64,
    /// Frames dropped: pushed out of the queue by newer ones, or left in it at a stop.
    pub frames_dropped: u64,
    /// Frames the source could not decode (not part of `frames_read`).
    pub frames_bad: u64,
    /// Frames the source skipped before they could be read (gaps in its indices).
    pub frames_skipped: u64,
    /// Times the source lost its device and got it back.
    pub reconnects: u64,
    /// The error that ended the source, if it failed.
    pub source_error: Option<String>,
    /// The error that ended the sink, if it failed.
    pub sink_error: Option<String>,
    /// Median latency from capture to the end of processing, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile latency, in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// Mean latency, in milliseconds.
    pub latency_mean_ms: Option<f64>,
    /// Largest latency, in milliseconds.
    pub latency_max_ms: Option<f64>,
    /// Whether the source is live (a camera, a paced file). For a file read as fast as possible
    /// the latency above includes the wait behind frames read ahead, which says nothing about
    /// the runtime: the processing times below are the figures to look at.
    pub live: bool,
    /// Median processing time per frame (queue wait excluded), in milliseconds.
    pub processing_p50_ms: Option<f64>,
    /// 99th percentile processing time per frame, in milliseconds.
    pub processing_p99_ms: Option<f64>,
    /// Frames processed per second of wall time.
    pub fps: f64,
    /// Wall time of the run, in seconds.
    pub wall_s: f64,
}

impl Summary {
    /// Whether processed + dropped == read (always true of a finished run).
    pub fn counts_add_up(&self) -> bool {
        self.frames_processed + self.frames_dropped == self.frames_read
    }

    /// The process exit code for this run (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self.stop {
            RunEnd::Interrupted => EXIT_INTERRUPTED,
            RunEnd::SourceFailed => EXIT_SOURCE_FAILED,
            RunEnd::SinkFailed => EXIT_ERROR,
            RunEnd::EndOfStream | RunEnd::Requested if self.frames_bad > 0 => EXIT_PARTIAL,
            RunEnd::EndOfStream | RunEnd::Requested => EXIT_OK,
        }
    }
}

impl fmt::Display for Summary {
    /// One line (two with an error): counts, latency, rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} frames read, {} processed, {} dropped",
            self.stop, self.frames_read, self.frames_processed, self.frames_dropped
        )?;
        if self.frames_bad > 0 {
            write!(f, ", {} unreadable", self.frames_bad)?;
        }
        if self.frames_skipped > 0 {
            write!(f, ", {} skipped by the source", self.frames_skipped)?;
        }
        if self.reconnects > 0 {
            write!(f, ", {} reconnections", self.reconnects)?;
        }
        if let (Some(p50), Some(p99), Some(max)) = (
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms,
        ) && self.live
        {
            write!(
                f,
                "; latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
            )?;
        }
        if let (Some(p50), Some(p99)) = (self.processing_p50_ms, self.processing_p99_ms) {
            write!(f, "; frame time p50 {p50:.1} ms, p99 {p99:.1} ms")?;
        }
        write!(f, "; {:.2} fps over {:.1} s", self.fps, self.wall_s)?;
        if let Some(e) = &self.source_error {
            write!(f, "\n  source: {e}")?;
        }
        if let Some(e) = &self.sink_error {
            write!(f, "\n  output: {e}")?;
        }
        Ok(())
    }
}

/// A frame in the queue, with when the capture thread got it.
struct Captured {
    frame: Frame,
    read_at: Instant,
    /// How old the frame was when read (driver timestamp to read), for latency.
    age_at_read: Duration,
}

/// What the capture thread reports besides the frames.
#[derive(Default)]
struct CaptureShared {
    bad: AtomicU64,
    skipped: AtomicU64,
    reconnects: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Closes the queue when the capture thread ends, however it ends (a panic included), so that
/// processing never waits for frames that will not come.
struct CloseOnDrop(Arc<FrameQueue<Captured>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Capture keeps the termination signals away from its thread: they would interrupt a blocking
/// V4L2 poll with EINTR. The signal handler runs on another thread either way.
#[cfg(unix)]
fn block_termination_signals() {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask changes only
    // the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(not(unix))]
fn block_termination_signals() {}

/// Logs the first bad frames, then one in a hundred, so that a broken camera cannot flood the
/// log at its frame rate.
fn log_bad_frame(e: &SourceError, bad_so_far: u64) {
    if bad_so_far <= 10 || bad_so_far.is_multiple_of(100) {
        log::warn!("{e} (unreadable frames so far: {bad_so_far})");
    }
}

fn capture_loop(
    mut source: Box<dyn FrameSource>,
    queue: Arc<FrameQueue<Captured>>,
    stop: StopFlag,
    shared: Arc<CaptureShared>,
    max_queued_bytes: usize,
) {
    let _close = CloseOnDrop(queue.clone());
    block_termination_signals();
    let mut expected: Option<u64> = None;
    let mut note_index = |index: u64| {
        if let Some(e) = expected
            && index > e
        {
            shared.skipped.fetch_add(index - e, Ordering::Relaxed);
        }
        expected = Some(index + 1);
    };
    while !stop.is_raised() && !queue.is_closed() {
        let next = source.next_frame();
        shared
            .reconnects
            .store(source.reconnects(), Ordering::Relaxed);
        match next {
            Ok(Some(frame)) => {
                let read_at = Instant::now();
                let age_at_read = SystemTime::now()
                    .duration_since(frame.captured)
                    .unwrap_or_default();
                note_index(frame.index);
                let item = Captured {
                    frame,
                    read_at,
                    age_at_read,
                };
                // Large frames get fewer slots: the read-ahead is bounded in bytes.
                let bytes = item.frame.image.as_raw().len().max(1);
                if let Pushed::Closed(_) = queue.push_within(item, max_queued_bytes / bytes) {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => match e.frame_index() {
                Some(index) => {
                    note_index(index);
                    let bad = shared.bad.fetch_add(1, Ordering::Relaxed) + 1;
                    log_bad_frame(&e, bad);
                }
                None => {
                    let message = e.to_string();
                    log::error!("{message}");
                    *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                    break;
                }
            },
        }
    }
}

/// Runs frames from a source through processing and a sink (see the module documentation).
pub struct Pipeline {
    options: PipelineOptions,
    stop: StopFlag,
}

impl Pipeline {
    /// A pipeline with its own stop flag ([`Pipeline::stop_flag`]).
    pub fn new(options: PipelineOptions) -> Self {
        Pipeline {
            options,
            stop: StopFlag::new(),
        }
    }

    /// A pipeline that stops when `stop` is raised (e.g. the flag given to [`install_ctrlc`]).
    pub fn with_stop_flag(options: PipelineOptions, stop: StopFlag) -> Self {
        Pipeline { options, stop }
    }

    /// The flag that stops this pipeline; raise it from anywhere.
    pub fn stop_flag(&self) -> StopFlag {
        self.stop.clone()
    }

    /// Runs until the stream ends, the source or sink fails, or the stop flag is raised.
    /// `process` turns each frame into a result (on this thread); `sink` receives it with the
    /// frame's timings and counts, and an error from it ends the run. Returns the summary;
    /// errors are reported in it, not returned.
    pub fn run<R>(
        &self,
        source: Box<dyn FrameSource>,
        mut process: impl FnMut(Frame) -> R,
        mut sink: impl FnMut(FrameReport<R>) -> Result<()>,
    ) -> Summary {
        let description = source.describe();
        let live = source.is_live();
        let queue = Arc::new(FrameQueue::new(
            self.options.capacity,
            self.options.overflow,
        ));
        let shared = Arc::new(CaptureShared::default());
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let start = Instant::now();
        let capture = {
            let (queue, shared, stop) = (queue.clone(), shared.clone(), self.stop.clone());
            let max_bytes = self.options.max_queued_bytes;
            std::thread::Builder::new()
                .name("alignsam-capture".into())
                .spawn(move || {
                    // Dropped when the thread ends, panicking or not: that is the signal.
                    let _done = done_tx;
                    capture_loop(source, queue, stop, shared, max_bytes);
                })
                .expect("cannot start the capture thread")
        };

        let mut latency = LatencyStats::default();
        let mut processing = LatencyStats::default();
        let mut sink_error = None;
        // How often processing looks at the stop flag while waiting for a frame.
        const POLL: Duration = Duration::from_millis(20);
        let mut stop = loop {
            if let Some(cause) = self.stop.cause() {
                break RunEnd::from_cause(cause);
            }
            let item = match queue.pop_timeout(POLL) {
                Popped::Item(item) => item,
                Popped::TimedOut => continue,
                // Capture also stops on the flag and closes the queue: a stop raised since the
                // check above is the reason, not the end of the stream.
                Popped::Closed => {
                    break self
                        .stop
                        .cause()
                        .map_or(RunEnd::EndOfStream, RunEnd::from_cause);
                }
            };
            let started = Instant::now();
            let Captured {
                frame,
                read_at,
                age_at_read,
            } = item;
            let (index, captured) = (frame.index, frame.captured);
            let result = process(frame);
            let done = Instant::now();
            let frame_latency = age_at_read + (done - read_at);
            latency.record(frame_latency);
            processing.record(done - started);
            let counts = queue.counts();
            let report = FrameReport {
                index,
                captured,
                result,
                queue_wait: started - read_at,
                processing: done - started,
                latency: frame_latency,
                frames_read: counts.pushed,
                frames_dropped: counts.dropped,
            };
            if let Err(e) = sink(report) {
                let message = format!("{e:#}");
                log::error!("{message}");
                sink_error = Some(message);
                break RunEnd::SinkFailed;
            }
        };
        let wall = start.elapsed();

        // Frames still queued at a stop are not processed: they count as dropped. (At the end
        // of the stream the queue is already closed and empty.)
        queue.close_and_discard();
        let mut source_error = shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match done_rx.recv_timeout(self.options.join_timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::debug!("the capture thread is still waiting on the source; leaving it");
            }
            _ => {
                if let Err(panic) = capture.join() {
                    source_error = Some(format!(
                        "the capture thread panicked: {}",
                        crate::util::panic_message(&*panic)
                    ));
                }
            }
        }
        if source_error.is_some() && stop == RunEnd::EndOfStream {
            stop = RunEnd::SourceFailed;
        }
        let counts = queue.counts();
        debug_assert_eq!(counts.pushed, counts.popped + counts.dropped, "{counts:?}");
        Summary {
            source: description,
            stop,
            frames_read: counts.pushed,
            frames_processed: counts.popped,
            frames_dropped: counts.dropped,
            frames_bad: shared.bad.load(Ordering::Relaxed),
            frames_skipped: shared.skipped.load(Ordering::Relaxed),
            reconnects: shared.reconnects.load(Ordering::Relaxed),
            source_error,
            sink_error,
            latency_p50_ms: latency.quantile(0.5).map(ms),
            latency_p99_ms: latency.quantile(0.99).map(ms),
            latency_mean_ms: latency.mean().map(ms),
            latency_max_ms: latency.max().map(ms),
            live,
            processing_p50_ms: processing.quantile(0.5).map(ms),
            processing_p99_ms: processing.quantile(0.99).map(ms),
            fps: counts.popped as f64 / wall.as_secs_f64().max(1e-9),
            wall_s: wall.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames made up on the spot: `total` of them, `interval` apart, optionally with a bad
    /// frame, a fatal error, a panic or a hang at given indices.
    #[derive(Default)]
    struct Synthetic {
        next: u64,
        total: u64,
        interval: Duration,
        live: bool,
        bad_at: Option<u64>,
        fail_at: Option<u64>,
        panic_at: Option<u64>,
        hang_at: Option<u64>,
        skip_at: Option<u64>,
    }

    impl FrameSource for Synthetic {
        fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
            if self.next == self.total {
                return Ok(None);
            }
            let index = self.next;
            self.next += 1;
            std::thread::sleep(self.interval);
            if self.hang_at == Some(index) {
                std::thread::sleep(Duration::from_secs(30));
            }
            if self.panic_at == Some(index) {
                panic!("synthetic panic");
            }
            if self.fail_at == Some(index) {
                return Err(SourceError::gone(format!(
                    "synthetic.y4m: stream truncated in frame {index}"
                )));
            }
            if self.bad_at == Some(index) {
                return Err(SourceError::frame_lost(index, "f.png: corrupt"));
            }
            if self.skip_at == Some(index) {
                self.next += 2;
            }
            Ok(Some(Frame {
                index,
                captured: SystemTime::now(),
                image: image::RgbImage::new(2, 2),
            }))
        }

        fn describe(&self) -> String {
            "synthetic".into()
        }

        fn is_live(&self) -> bool {
            self.live
        }
    }

    fn run(
        source: Synthetic,
        work: Duration,
        mut on_frame: impl FnMut(&FrameReport<u64>, &StopFlag) -> Result<()>,
    ) -> (Summary, Vec<u64>) {
        let options = PipelineOptions::for_source(&source);
        let pipeline = Pipeline::new(options);
        let flag = pipeline.stop_flag();
        let mut seen = vec![];
        let summary = pipeline.run(
            Box::new(source),
            |frame| {
                std::thread::sleep(work);
                frame.index
            },
            |report| {
                assert_eq!(report.index, report.result);
                seen.push(report.index);
                on_frame(&report, &flag)
            },
        );
        assert!(summary.counts_add_up(), "{summary:?}");
        assert_eq!(summary.frames_processed, seen.len() as u64);
        (summary, seen)
    }

    #[test]
    fn slow_processing_drops_the_oldest_frames() {
        let source = Synthetic {
            total: 60,
            interval: Duration::from_millis(1),
            live: true,
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::from_millis(8), |r, _| {
            assert!(r.frames_dropped <= r.frames_read);
            assert!(r.latency >= r.processing);
            Ok(())
        });
        assert_eq!(s.stop, RunEnd::EndOfStream);
        assert_eq!(s.frames_read, 60);
        assert!(s.frames_dropped > 0, "{s:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&59), "the last frame is processed");
        assert_eq!(s.exit_code(), EXIT_OK);
        // Latency is at least the processing time, and bounded by a couple of frames of it.
        let p50 = s.latency_p50_ms.unwrap();
        assert!((8.0..200.0).contains(&p50), "{s}");
        assert!(s.latency_p99_ms.unwrap() >= p50);
        assert!(s.fps > 0.0 && s.wall_s > 0.0);
        let line = s.to_string();
        assert!(line.starts_with("end of stream: 60 frames read,"), "{line}");
        assert!(line.contains("; latency p50 "), "{line}");
        assert!(s.live);
    }

    #[test]
    fn files_lose_nothing() {
        let source = Synthetic {
            total: 30,
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::from_millis(2), |_, _| Ok(()));
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
        assert_eq!((s.frames_read, s.frames_dropped), (30, 0));
        // Read ahead, frames wait behind each other: the summary's line gives the frame time,
        // not a latency that only measures the read-ahead.
        assert!(!s.live);
        let (latency, frame) = (s.latency_p50_ms.unwrap(), s.processing_p50_ms.unwrap());
        assert!(frame >= 2.0 && latency > frame, "{s:?}");
        let line = s.to_string();
        assert!(!line.contains("latency"), "{line}");
        assert!(line.contains("; frame time p50 "), "{line}");
    }

    #[test]
    fn a_bad_frame_is_counted_and_the_stream_goes_on() {
        let source = Synthetic {
            total: 10,
            bad_at: Some(4),
            skip_at: Some(6),
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::ZERO, |_, _| Ok(()));
        assert_eq!(seen, [0, 1, 2, 3, 5, 6, 9]);
        assert_eq!((s.frames_bad, s.frames_skipped), (1, 2));
        assert_eq!(s.stop, RunEnd::EndOfStream);
        assert_eq!(s.exit_code(), EXIT_PARTIAL);
    }

    #[test]
    fn a_failing_source_ends_after_its_whole_frames() {
        let source = Synthetic {
            total: 10,
            fail_at: Some(5),
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::from_millis(3), |_, _| Ok(()));
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(s.stop, RunEnd::SourceFailed);
        assert!(
            s.source_error
                .as_deref()
                .unwrap()
                .contains("truncated in frame 5")
        );
        assert_eq!(s.exit_code(), EXIT_SOURCE_FAILED);
        assert!(s.to_string().contains("\n  source: synthetic.y4m"), "{s}");

        let source = Synthetic {
            total: 10,
            panic_at: Some(2),
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::ZERO, |_, _| Ok(()));
        assert_eq!(seen, [0, 1]);
        assert_eq!(s.stop, RunEnd::SourceFailed);
        assert!(s.source_error.unwrap().contains("synthetic panic"));
    }

    #[test]
    fn a_signal_stops_after_the_current_frame_and_counts_add_up() {
        let source = Synthetic {
            total: 1_000_000,
            interval: Duration::from_micros(200),
            live: true,
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::from_millis(2), |r, flag| {
            if r.index >= 20 {
                flag.signal();
            }
            Ok(())
        });
        assert_eq!(s.stop, RunEnd::Interrupted);
        assert_eq!(s.exit_code(), EXIT_INTERRUPTED);
        assert!(*seen.last().unwrap() >= 20);
        assert!(s.frames_read < 1_000_000);

        // A requested stop (a frame limit) is a clean end.
        let source = Synthetic {
            total: 100,
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::ZERO, |r, flag| {
            if r.index == 9 {
                flag.request_stop();
            }
            Ok(())
        });
        assert_eq!(seen.len(), 10);
        assert_eq!(s.stop, RunEnd::Requested);
        assert_eq!(s.exit_code(), EXIT_OK);
    }

    #[test]
    fn a_stop_does_not_wait_for_a_source_that_hangs() {
        let source = Synthetic {
            total: 10,
            hang_at: Some(3),
            live: true,
            ..Default::default()
        };
        let t = Instant::now();
        let (s, seen) = run(source, Duration::ZERO, |r, flag| {
            if r.index == 2 {
                // Raised from elsewhere later, as a signal handler would.
                let flag = flag.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    flag.signal();
                });
            }
            Ok(())
        });
        // Frames 0 and 1 may have been replaced by 2 in the one-frame queue.
        assert_eq!(seen.last(), Some(&2));
        assert_eq!(s.stop, RunEnd::Interrupted);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn a_failing_sink_ends_the_run() {
        let source = Synthetic {
            total: 10,
            ..Default::default()
        };
        let (s, seen) = run(source, Duration::ZERO, |r, _| {
            if r.index == 3 {
                anyhow::bail!("out/frames.jsonl: No space left on device");
            }
            Ok(())
        });
        assert_eq!(seen.len(), 4);
        assert_eq!(s.stop, RunEnd::SinkFailed);
        assert_eq!(s.exit_code(), EXIT_ERROR);
        assert!(s.sink_error.unwrap().contains("No space left"));
    }

    #[test]
    fn summary_serialises_to_json() {
        let source = Synthetic {
            total: 3,
            ..Default::default()
        };
        let (s, _) = run(source, Duration::ZERO, |_, _| Ok(()));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["stop"], "end_of_stream");
        assert_eq!(json["frames_read"], 3);
        assert!(json["latency_p99_ms"].is_number());
        assert!(unix_seconds(SystemTime::now()) > 1.6e9);
    }
}
