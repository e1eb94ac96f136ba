//! `alignsam bench-reuse`: what temporal reuse buys on video. Every frame is encoded once and
//! then segmented twice in the same run, cold (SRM start points, as on a still image) and
//! warm-started from the previous frame's warm result, so that both see the same embedding and
//! the same machine load. Reports steps per frame, frame time and how closely the warm mask
//! agrees with the cold one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::args::{EngineArgs, LoopArgs, ReuseArgs};
use crate::agent::ground_truth::mask_iou;
use crate::agent::{Agent, StreamSegmenter};
use crate::bench::Stats;
use crate::source::{InputLimits, paths};
use crate::util::ms;

/// Arguments of `alignsam bench-reuse`.
#[derive(Debug, Args)]
pub struct BenchReuseArgs {
    /// Bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Sequences: directories of frames, or a directory whose subdirectories are sequences
    /// (e.g. ../shared/data/video/DAVIS2016-train/images).
    #[arg(required = true)]
    pub sequences: Vec<PathBuf>,
    /// At most this many frames per sequence (from the start).
    #[arg(long, value_parser = super::validate::count(1, 100_000_000))]
    pub max_frames: Option<usize>,
    /// The report as JSON instead of a table.
    #[command(flatten)]
    pub report: super::args::ReportArgs,
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

/// Cold and warm figures for one sequence (or all of them).
#[derive(Debug, Serialize)]
pub struct ReuseRow {
    /// Sequence name ("all" for the total).
    pub sequence: String,
    /// Frames.
    pub frames: usize,
    /// Mean steps per frame, cold.
    pub cold_steps: f64,
    /// Mean steps per frame, warm-started.
    pub warm_steps: f64,
    /// Frame time (preprocess + encoder + loop + postprocess), cold, ms.
    pub cold_frame_ms: Stats,
    /// The same, warm-started.
    pub warm_frame_ms: Stats,
    /// Mean IoU between the warm and the cold final mask.
    pub agreement_iou: f64,
}

/// Each given directory as a sequence, or its subdirectories when it has no images itself.
fn sequences(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for dir in inputs {
        if !dir.is_dir() {
            bail!("{}: not a directory of frames", dir.display());
        }
        if !paths::list_dir(dir)?.is_empty() {
            out.push(dir.clone());
            continue;
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot read directory: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        paths::sort_natural(&mut subs);
        if subs.is_empty() {
            bail!("{}: no frames and no sequence directories", dir.display());
        }
        out.extend(subs);
    }
    Ok(out)
}

struct Samples {
    cold_steps: Vec<f64>,
    warm_steps: Vec<f64>,
    cold_ms: Vec<f64>,
    warm_ms: Vec<f64>,
    iou: Vec<f64>,
}

impl Samples {
    fn new() -> Self {
        Samples {
            cold_steps: vec![],
            warm_steps: vec![],
            cold_ms: vec![],
            warm_ms: vec![],
            iou: vec![],
        }
    }

    fn row(&self, name: &str) -> ReuseRow {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        ReuseRow {
            sequence: name.into(),
            frames: self.iou.len(),
            cold_steps: mean(&self.cold_steps),
            warm_steps: mean(&self.warm_steps),
            cold_frame_ms: Stats::of(&self.cold_ms),
            warm_frame_ms: Stats::of(&self.warm_ms),
            agreement_iou: mean(&self.iou),
        }
    }

    fn extend(&mut self, other: &Samples) {
        self.cold_steps.extend(&other.cold_steps);
        self.warm_steps.extend(&other.warm_steps);
        self.cold_ms.extend(&other.cold_ms);
        self.warm_ms.extend(&other.warm_ms);
        self.iou.extend(&other.iou);
    }
}

fn run_sequence(
    agent: &Agent,
    dir: &Path,
    args: &BenchReuseArgs,
    options: &crate::agent::LoopOptions,
    limits: &InputLimits,
) -> Result<Samples> {
    let mut frames = paths::list_dir(dir)?;
    if let Some(m) = args.max_frames {
        frames.truncate(m);
    }
    let mut s = Samples::new();
    let mut cold_stream = StreamSegmenter::new(agent, options.clone(), None);
    let mut warm_stream =
        StreamSegmenter::new(agent, options.clone(), Some(args.reuse.reuse_points));
    for path in &frames {
        let image = limits.load_rgb(path)?;
        let t = Instant::now();
        let (embedding, geometry) = agent.sam.embed(&image)?;
        let embed_ms = ms(t.elapsed());

        let mut chooser = agent.default_chooser()?;
        let (cold, _) = cold_stream.segment_embedding(&embedding, &geometry, chooser.as_mut())?;
        let (warm, _) = warm_stream.segment_embedding(&embedding, &geometry, chooser.as_mut())?;
        s.cold_steps.push(cold.steps as f64);
        s.warm_steps.push(warm.steps as f64);
        // Each loop's clock started after the shared encoding: add it to both.
        s.cold_ms.push(embed_ms + cold.times.total_ms);
        s.warm_ms.push(embed_ms + warm.times.total_ms);
        s.iou.push(mask_iou(&warm.mask, &cold.mask));
    }
    Ok(s)
}

/// Runs `alignsam bench-reuse`.
pub fn run(args: BenchReuseArgs, limits: InputLimits) -> Result<ExitCode> {
    let seqs = sequences(&args.sequences)?;
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let options = args.loop_args.options(&bundle.manifest.agent)?;
    let backend = args.engine.backend()?;
    let agent = Agent::load(&bundle, backend.as_ref())?;
    let mut rows = vec![];
    let mut all = Samples::new();
    for dir in &seqs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let s = run_sequence(&agent, dir, &args, &options, &limits)?;
        let row = s.row(&name);
        if !args.report.is_json() {
            eprintln!(
                "{name}: {} frames, steps {:.2} cold / {:.2} warm, agreement IoU {:.3}",
                row.frames, row.cold_steps, row.warm_steps, row.agreement_iou
            );
        }
        rows.push(row);
        all.extend(&s);
    }
    rows.push(all.row("all"));
    if args.report.write_json("bench-reuse", &rows)? {
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "alignsam bench-reuse: bundle {}, {} sequences; stop-iou {}, at most {} steps, {} points carried over",
        bundle.manifest.name,
        seqs.len(),
        options.stop_iou.map_or("off".into(), |v| v.to_string()),
        options.max_steps,
        args.reuse.reuse_points
    );
    outln!(
        "  {:<20} {:>6} {:>11} {:>11} {:>14} {:>14} {:>10}",
        "sequence",
        "frames",
        "steps cold",
        "steps warm",
        "frame ms cold",
        "frame ms warm",
        "agreement"
    );
    for r in &rows {
        outln!(
            "  {:<20} {:>6} {:>11.2} {:>11.2} {:>14.1} {:>14.1} {:>10.3}",
            r.sequence,
            r.frames,
            r.cold_steps,
            r.warm_steps,
            r.cold_frame_ms.mean,
            r.warm_frame_ms.mean,
            r.agreement_iou
        );
    }
    outln!("  (frame ms: mean; agreement: mean IoU of the warm-started mask with the cold one)");
    Ok(ExitCode::SUCCESS)
}
