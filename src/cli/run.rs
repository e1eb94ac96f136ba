//! `alignsam run`: the prompting loop over a live or recorded stream (V4L2 camera, Y4M file or
//! stdin, image sequence), one JSON line per frame, a summary at the end.
//!
//! Capture, the drop-oldest queue and the counting are [`crate::pipeline`]'s; this file turns
//! each frame into a loop result, writes it, and optionally warm-starts each frame from the
//! previous one (temporal reuse).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::EngineArgs;
use super::segment::LoopArgs;
use crate::agent::{
    Agent, LoopOptions, LoopResult, PointRecord, PolicyChooser, StageTimes, StopReason, WarmStart,
};
use crate::pipeline::{self, FrameReport, Pipeline, PipelineOptions, StopFlag};
use crate::sink::{overlay, write_mask_png};
use crate::source::{Frame, SourceOptions, open_source};

/// Temporal reuse options, shared with `bench-reuse`.
#[derive(Debug, Clone, Args)]
pub struct ReuseArgs {
    /// Warm-start each frame from the previous one: its last points (relabelled by the SRM) as
    /// the start points and its final logits as the first mask input (beyond the paper).
    #[arg(long)]
    pub reuse: bool,
    /// With --reuse, how many of the previous frame's points to carry over (the most recent).
    #[arg(long, default_value_t = 6)]
    pub reuse_points: usize,
}

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
    #[arg(long)]
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
    #[arg(long)]
    pub reconnect_attempts: Option<u32>,
    /// Stop after this many processed frames.
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Directory for mask and overlay PNGs and summary.json.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Write mask and overlay PNGs every k-th processed frame (needs --out; 0: never).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Write the JSON lines to this file instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub reuse: ReuseArgs,
    #[command(flatten)]
    pub loop_args: LoopArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size '{s}' should be WIDTHxHEIGHT"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("'{v}' in size '{s}' is not a number"))
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
    #[serde(skip_serializing_if = "Option::is_none")]
    mask: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    overlay: Option<PathBuf>,
}

/// The JSON line of a frame whose processing failed.
#[derive(Serialize)]
struct ErrorLine<'a> {
    frame: u64,
    captured_unix_s: f64,
    error: &'a str,
}

/// The loop applied to frames of a stream, carrying the warm start from frame to frame.
pub struct StreamSegmenter<'a> {
    agent: &'a Agent,
    options: LoopOptions,
    reuse: Option<usize>,
    previous: Option<(WarmStart, (u32, u32))>,
}

impl<'a> StreamSegmenter<'a> {
    /// A segmenter; `reuse` is the number of points to carry over, or `None` for cold starts.
    pub fn new(agent: &'a Agent, options: LoopOptions, reuse: Option<usize>) -> Self {
        StreamSegmenter {
            agent,
            options,
            reuse,
            previous: None,
        }
    }

    /// Segments one frame; returns the result and whether it was warm-started. A frame of
    /// another size than the previous one starts cold.
    pub fn segment(&mut self, image: &image::RgbImage) -> Result<(LoopResult, bool)> {
        let policy = self
            .agent
            .policy
            .as_ref()
            .expect("Agent::load requires a policy");
        let warm = match &self.previous {
            Some((w, dims)) if *dims == image.dimensions() => Some(w),
            _ => None,
        };
        let warm_start = warm.is_some();
        let result = self.agent.segment_with(
            image,
            &self.options,
            None,
            warm,
            &mut PolicyChooser(policy),
        )?;
        if let Some(k) = self.reuse {
            self.previous = Some((WarmStart::from_result(&result, k), image.dimensions()));
        }
        Ok((result, warm_start))
    }
}

/// Runs `alignsam run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    if args.save_every > 0 && args.out.is_none() {
        bail!("--save-every needs --out DIR");
    }
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let options = args.loop_args.options(bundle.manifest.agent.max_steps)?;
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
    };
    let source = open_source(&args.input, &source_options)?;
    log::info!("reading {}", source.describe());
    if let Some(dir) = &args.out {
        for sub in ["masks", "overlays"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
        }
    }
    let mut json: Box<dyn Write> = match &args.json {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
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
                    serde_json::to_writer(&mut json, &line)?;
                    json.write_all(b"\n")?;
                    return Ok(());
                }
            };
            let (h, w) = result.geometry.original;
            let (mut mask, mut over) = (None, None);
            if let Some(dir) = &args.out
                && args.save_every > 0
                && (processed - 1).is_multiple_of(args.save_every)
            {
                let m = dir
                    .join("masks")
                    .join(format!("frame{:06}.png", report.index));
                write_mask_png(&m, &result.mask, w, h)?;
                let o = dir
                    .join("overlays")
                    .join(format!("frame{:06}.png", report.index));
                overlay(image, &result.mask, &result.points)
                    .save(&o)
                    .map_err(|e| anyhow::anyhow!("{}: cannot write overlay: {e}", o.display()))?;
                (mask, over) = (Some(m), Some(o));
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
            serde_json::to_writer(&mut json, &line)?;
            json.write_all(b"\n")?;
            // Flush per frame: a supervisor tailing the output sees each frame as it is done,
            // and a crash loses nothing already reported.
            json.flush()?;
            Ok(())
        },
    );
    json.flush()?;
    eprintln!("{summary}");
    if failed > 0 {
        eprintln!("error: {failed} frames could not be segmented (see above)");
    }
    if let Some(dir) = &args.out {
        let p = dir.join("summary.json");
        std::fs::write(&p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    let code = summary.exit_code();
    if code == pipeline::EXIT_OK && failed > 0 {
        return Ok(ExitCode::from(super::EXIT_PARTIAL));
    }
    Ok(ExitCode::from(code))
}
