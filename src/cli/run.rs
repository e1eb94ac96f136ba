//! `alignsam run`: the prompting loop over a live or recorded stream (V4L2 camera, Y4M file or
//! stdin, image sequence), one JSON line per frame, a summary at the end.
//!
//! Capture, the drop-oldest queue and the counting are [`crate::pipeline`]'s; this file turns
//! each frame into a loop result, writes it, and optionally warm-starts each frame from the
//! previous one (temporal reuse).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::args::{EngineArgs, LoopArgs, ReuseArgs};
use super::output::{
    JsonLines, MaskFiles, StdoutMode, check_source_outputs, human_line, is_stdout, print_line,
};
use crate::agent::{Agent, LoopResult, PointRecord, StageTimes, StopReason, StreamSegmenter};
use crate::pipeline::{self, FrameReport, Pipeline, PipelineOptions, StopFlag};
use crate::sink::record::escaped_opt_path;
use crate::sink::{OutputPlan, write_bytes_atomic};
use crate::source::{Frame, InputLimits, SourceOptions, open_source};

/// Arguments of `alignsam run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The source: `/dev/videoN` or N (V4L2 camera), a .y4m file, `-` (Y4M on stdin, e.g.
    /// `ffmpeg -i clip.mp4 -f yuv4mpegpipe - | alignsam run --input -`), or a directory or glob
    /// of images (natural order).
    #[arg(long)]
    pub input: String,
    /// Frame rate: what to ask a camera for; files and sequences are paced to it (default: as
    /// fast as processing goes, every frame processed).
    #[arg(long, value_parser = super::validate::positive(0.0, 1000.0).f64())]
    pub fps: Option<f64>,
    /// Camera frame width and height to ask for, e.g. 640x480.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// Camera pixel format to ask for (YUYV, MJPG, RGB3, GREY).
    #[arg(long)]
    pub pixel_format: Option<String>,
    /// Start a file or image sequence over at its end.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Give up after this many reconnection attempts when a camera disappears (default: never).
    #[arg(long, value_parser = super::validate::count32(0, 1_000_000))]
    pub reconnect_attempts: Option<u32>,
    /// Stop after this many processed frames.
    #[arg(long, value_parser = super::validate::count64(1, 1_000_000_000_000))]
    pub max_frames: Option<u64>,
    /// Directory for mask and overlay PNGs and summary.json.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Write mask and overlay PNGs every k-th processed frame (needs --out; 0: never).
    #[arg(long, default_value_t = 0, value_parser = super::validate::count64(0, 1_000_000_000_000))]
    pub save_every: u64,
    /// Write the JSON lines to this file instead of stdout (`-`: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Serve a live view of the run (the frame with its mask and points, the record, fps,
    /// drops, latency) at this address, `127.0.0.1:8080` when none is given; `/status` is the
    /// record as JSON.
    #[cfg(feature = "serve")]
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    pub serve: Option<String>,
    /// Record the run as MCAP (Foxglove's schemas: the frame, the mask, the points, the
    /// per-frame record), finished on Ctrl-C and SIGTERM; replay it with `--input FILE.mcap`.
    #[cfg(feature = "mcap")]
    #[arg(long, value_name = "FILE.mcap")]
    pub record: Option<PathBuf>,
    /// Stop the recording (finished and readable) when the file reaches this size; the run goes
    /// on.
    #[cfg(feature = "mcap")]
    #[arg(long, requires = "record", value_parser = super::validate::count64(1, 100_000_000))]
    pub record_max_mb: Option<u64>,
    /// Whether existing files may be replaced.
    #[command(flatten)]
    pub write: super::args::WriteArgs,
    /// Temporal reuse.
    #[command(flatten)]
    pub reuse: ReuseArgs,
    /// The prompting loop's bounds and switches.
    #[command(flatten)]
    pub loop_args: LoopArgs,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size '{s}' should be WIDTHxHEIGHT"))?;
    let num = |v: &str| match v.trim().parse::<u32>() {
        Ok(n) if (1..=16384).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} in size '{s}' is not between 1 and 16384")),
        Err(_) => Err(format!("'{v}' in size '{s}' is not a number")),
    };
    Ok((num(w)?, num(h)?))
}

/// The JSON line of one frame.
#[derive(Serialize)]
struct FrameLine<'a> {
    frame: u64,
    captured_unix_s: f64,
    width: usize,
    height: usize,
    steps: usize,
    stop_reason: StopReason,
    warm_start: bool,
    points: &'a [PointRecord],
    iou_prediction: f32,
    ms: &'a StageTimes,
    queue_wait_ms: f64,
    latency_ms: f64,
    frames_read: u64,
    dropped_so_far: u64,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "escaped_opt_path"
    )]
    mask: Option<PathBuf>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "escaped_opt_path"
    )]
    overlay: Option<PathBuf>,
}

/// The JSON line of a frame whose processing failed.
#[derive(Serialize)]
struct ErrorLine<'a> {
    frame: u64,
    captured_unix_s: f64,
    error: &'a str,
}

/// Runs `alignsam run`.
pub fn run(args: RunArgs, limits: InputLimits) -> Result<ExitCode> {
    if args.save_every > 0 && args.out.is_none() {
        bail!("--save-every needs --out DIR");
    }
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let options = args.loop_args.options(&bundle.manifest.agent)?;
    let backend = args.engine.backend()?;
    let agent = Agent::load(&bundle, backend.as_ref())?;
    if agent.srm.needs_semantic() {
        bail!(
            "{}: the SRM is the explicit branch, which `run` does not feed yet",
            bundle.dir.display()
        );
    }
    let source_options = SourceOptions {
        fps: args.fps,
        width: args.size.map(|s| s.0),
        height: args.size.map(|s| s.1),
        pixel_format: args.pixel_format.clone(),
        looping: args.looping,
        reconnect_attempts: args.reconnect_attempts,
        limits,
    };
    let out_dirs: Vec<PathBuf> = args
        .out
        .iter()
        .flat_map(|d| [d.join("masks"), d.join("overlays")])
        .collect();
    let summary = args.out.as_ref().map(|d| d.join("summary.json"));
    let json_file = args.json.as_deref().filter(|p| !is_stdout(p));
    let out_files: Vec<PathBuf> = json_file
        .map(Path::to_path_buf)
        .iter()
        .chain(&summary)
        .cloned()
        .collect();
    check_source_outputs(&args.input, &out_files, &out_dirs)?;
    let mut plan = OutputPlan::new("run", args.write.force).input_dir(&args.bundle);
    let source_path = Path::new(&args.input);
    if source_path.is_dir() {
        plan = plan.input_dir(source_path);
    } else if source_path.is_file() {
        plan = plan.input(source_path);
    }
    if let Some(d) = &args.out {
        let mut names = MaskFiles::names(true);
        names.push("summary.json");
        plan = plan.dir(d, &names);
    }
    if let Some(p) = json_file {
        plan = plan.file(p);
    }
    #[cfg(feature = "mcap")]
    if let Some(p) = &args.record {
        plan = plan.file(p);
    }
    let _lock = plan.check()?;
    let source = open_source(&args.input, &source_options)?;
    log::info!("reading {}", source.describe());
    let files = match &args.out {
        Some(dir) => Some(MaskFiles::create(dir, true)?),
        None => None,
    };
    let human = StdoutMode::detect() == StdoutMode::Human;
    let mut json = match (&args.json, human) {
        (Some(p), _) => JsonLines::open(Some(p))?,
        (None, false) => JsonLines::stdout(),
        (None, true) => JsonLines::none(),
    };
    let mut human_out = human;
    #[cfg(feature = "serve")]
    let live = match &args.serve {
        Some(addr) => {
            let server =
                crate::sink::live::LiveServer::start(addr).map_err(|e| e.context("--serve"))?;
            eprintln!("live view at http://{}/", server.addr());
            Some(server)
        }
        None => None,
    };
    #[cfg(feature = "mcap")]
    let mut recorder = match &args.record {
        Some(p) => Some(crate::sink::mcap_record::Recorder::create(
            p,
            args.record_max_mb.map(|mb| mb << 20),
        )?),
        None => None,
    };

    let stop = StopFlag::new();
    pipeline::install_ctrlc(stop.clone())?;
    let pipe = Pipeline::with_stop_flag(PipelineOptions::for_source(source.as_ref()), stop.clone());
    let mut segmenter = StreamSegmenter::new(
        &agent,
        options,
        args.reuse.reuse.then_some(args.reuse.reuse_points),
    );
    let mut processed = 0u64;
    let mut failed = 0u64;
    let summary = pipe.run(
        source,
        |frame: Frame| {
            let out = segmenter.segment(&frame.image);
            (frame.image, out)
        },
        // The consumer: JSON line, files, recording.
        |report: FrameReport<(image::RgbImage, Result<(LoopResult, bool)>)>| {
            processed += 1;
            if args.max_frames.is_some_and(|m| processed >= m) {
                stop.request_stop();
            }
            let (image, outcome) = &report.result;
            let (result, warm_start) = match outcome {
                Ok(r) => r,
                Err(e) => {
                    failed += 1;
                    let msg = format!("{e:#}");
                    eprintln!("error: frame {}: {msg}", report.index);
                    let line = ErrorLine {
                        frame: report.index,
                        captured_unix_s: report.captured_unix(),
                        error: &msg,
                    };
                    json.write(&line)?;
                    return Ok(());
                }
            };
            let (h, w) = result.geometry.original;
            let (mut mask, mut over) = (None, None);
            if let Some(files) = &files
                && args.save_every > 0
                && (processed - 1).is_multiple_of(args.save_every)
            {
                let (m, o) = files.write(&format!("frame{:06}", report.index), image, result)?;
                (mask, over) = (Some(m), o);
            }
            let line = FrameLine {
                frame: report.index,
                captured_unix_s: report.captured_unix(),
                width: w,
                height: h,
                steps: result.steps,
                stop_reason: result.stop,
                warm_start: *warm_start,
                points: &result.points,
                iou_prediction: result.iou_prediction,
                ms: &result.times,
                queue_wait_ms: report.queue_wait.as_secs_f64() * 1e3,
                latency_ms: report.latency.as_secs_f64() * 1e3,
                frames_read: report.frames_read,
                dropped_so_far: report.frames_dropped,
                mask,
                overlay: over,
            };
            json.write(&line)?;
            #[cfg(feature = "serve")]
            if let Some(server) = &live {
                server.publish(
                    std::sync::Arc::new(image.clone()),
                    result.mask.clone(),
                    result.kept_points().to_vec(),
                    serde_json::to_value(&line)?,
                );
            }
            #[cfg(feature = "mcap")]
            if let Some(r) = recorder.as_mut() {
                r.record(crate::sink::mcap_record::RecordedFrame {
                    captured: report.captured,
                    image: image.clone(),
                    mask: result.mask.clone(),
                    points: result.kept_points().to_vec(),
                    record: serde_json::to_vec(&line)?,
                })?;
            }
            if human_out {
                human_out = print_line(&human_line(&format!("frame {}", report.index), result));
            }
            if json.is_closed() || (human && !human_out) {
                // The reader of stdout went away (`| head -1`): stop cleanly; the summary is
                // still written.
                stop.request_stop();
            }
            Ok(())
        },
    );
    eprintln!("{summary}");
    #[cfg(feature = "serve")]
    if let Some(server) = live {
        server.stop();
    }
    #[cfg(feature = "mcap")]
    if let (Some(r), Some(p)) = (recorder, &args.record) {
        let rec = r.finish()?;
        eprintln!(
            "recorded {} frames in {} ({:.1} MB{})",
            rec.frames,
            p.display(),
            rec.bytes as f64 / 1e6,
            if rec.truncated_by_limit {
                ", stopped at the size limit"
            } else {
                ""
            }
        );
    }
    if failed > 0 {
        eprintln!("error: {failed} frames could not be segmented (see above)");
    }
    if let Some(dir) = &args.out {
        let p = dir.join("summary.json");
        write_bytes_atomic(&p, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    }
    let code = summary.exit_code();
    if code == pipeline::EXIT_OK && failed > 0 {
        return Ok(ExitCode::from(crate::exit::EXIT_PARTIAL));
    }
    Ok(ExitCode::from(code))
}
