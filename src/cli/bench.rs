//! `alignsam bench`: per-stage latency of the prompting loop, for a few step counts.
//!
//! Each frame runs exactly T steps (no early stop, no budget), so that step counts compare.
//! The decoder comparison replays the same prompts through the decoder as the loop runs it
//! (low-resolution outputs only) and through a standard decoder computing its full-size `masks`
//! output at every step, interleaved in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use image::RgbImage;
use serde::Serialize;

use super::EngineArgs;
use crate::agent::{Agent, LoopOptions, LoopResult};
use crate::bench::{Stats, peak_rss_bytes};
use crate::bundle::DecoderForm;
use crate::sam::{Decoder, FullResDecoder, preprocess};
use crate::source::{expand_inputs, load_rgb};
use crate::util::ms;

/// Arguments of `alignsam bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Step counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,5,15", value_parser = super::validate::count(0, crate::bundle::manifest::MAX_STEPS as u64))]
    pub steps: Vec<usize>,
    /// Measured frames per step count.
    #[arg(long, default_value_t = 10, value_parser = super::validate::count(1, 1_000_000))]
    pub frames: usize,
    /// Unmeasured frames before each step count.
    #[arg(long, default_value_t = 2, value_parser = super::validate::count(0, 1_000_000))]
    pub warmup: usize,
    /// Images to use as frames, cycled (default: a generated 640x480 test image).
    #[arg(long)]
    pub input: Vec<String>,
    /// Also time a standard-form decoder computing its full-size masks at every step (default:
    /// the bundle's decoder when it is of the standard form).
    #[arg(long)]
    pub standard_decoder: Option<PathBuf>,
    /// Skip the decoder comparison.
    #[arg(long)]
    pub no_decoder_comparison: bool,
    /// Measure several `backend:precision` candidates in one run instead (e.g.
    /// `tract:fp32,rten:fp32,rten:int8`), frames interleaved, each as a ratio of the first.
    /// Variants need a passing gate record (or --allow-ungated).
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<super::bench_compare::Candidate>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Latency of each stage for one step count.
#[derive(Debug, Serialize)]
pub struct StepCountReport {
    /// The step budget per frame.
    pub steps: usize,
    /// Steps run per frame on average (fewer than the budget when the agent stops).
    pub mean_steps: f64,
    /// Frames measured.
    pub frames: usize,
    /// Resize, normalise, pad.
    pub preprocess: Stats,
    /// The image encoder.
    pub encoder: Stats,
    /// One SRM run (start and every step).
    pub srm: Stats,
    /// One run of the agent's network (the paper's policy or the clicker).
    pub policy: Stats,
    /// One decoder run (start and every step), low-resolution outputs.
    pub decoder: Stats,
    /// Final upscaling and threshold.
    pub postprocess: Stats,
    /// The whole frame.
    pub frame: Stats,
    /// Frames per second (frames / total frame time).
    pub fps: f64,
    /// Median share of the frame spent in the encoder.
    pub encoder_share: f64,
}

/// Per-step decoder time of the two decoder uses, on the same prompts.
#[derive(Debug, Serialize)]
pub struct DecoderComparison {
    /// The decoder file as the loop runs it (low-res outputs; a standard file is pruned).
    pub loop_decoder: Stats,
    /// A standard decoder computing its full-size `masks` output.
    pub standard_full_size: Stats,
    /// Which files.
    pub loop_decoder_file: PathBuf,
    /// Which files.
    pub standard_file: PathBuf,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Bundle name.
    pub bundle: String,
    /// Backend name.
    pub backend: String,
    /// Precision of the encoder and decoder.
    pub precision: String,
    /// Threads per model run.
    pub threads: usize,
    /// Frame size (width, height) of the first frame.
    pub frame_size: (u32, u32),
    /// Model load time (all four models), milliseconds.
    pub load_ms: f64,
    /// One report per step count.
    pub runs: Vec<StepCountReport>,
    /// The decoder comparison, when run.
    pub decoder_comparison: Option<DecoderComparison>,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: Option<f64>,
}

/// A deterministic 640x480 frame with smooth structure (no file needed).
pub fn synthetic_frame() -> RgbImage {
    RgbImage::from_fn(640, 480, |x, y| {
        let (fx, fy) = (x as f32 / 640.0, y as f32 / 480.0);
        let disc = ((fx - 0.45).powi(2) + (fy - 0.5).powi(2)).sqrt() < 0.2;
        if disc {
            image::Rgb([200, 60 + (fy * 80.0) as u8, 40])
        } else {
            image::Rgb([(fx * 120.0) as u8 + 60, (fy * 150.0) as u8 + 50, 140])
        }
    })
}

pub(super) fn collect(steps: usize, results: &[LoopResult]) -> StepCountReport {
    let mut srm = vec![];
    let mut policy = vec![];
    let mut decoder = vec![];
    for r in results {
        srm.push(r.times.start_srm_ms);
        decoder.push(r.times.start_decoder_ms);
        for s in &r.times.steps {
            srm.push(s.srm_ms);
            policy.push(s.policy_ms);
            decoder.push(s.decoder_ms);
        }
    }
    let pick = |f: fn(&LoopResult) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let frame = pick(|r| r.times.total_ms);
    let shares: Vec<f64> = results
        .iter()
        .map(|r| r.times.encoder_ms / r.times.total_ms)
        .collect();
    StepCountReport {
        steps,
        mean_steps: results.iter().map(|r| r.steps as f64).sum::<f64>()
            / results.len().max(1) as f64,
        frames: results.len(),
        preprocess: Stats::of(&pick(|r| r.times.preprocess_ms)),
        encoder: Stats::of(&pick(|r| r.times.encoder_ms)),
        srm: Stats::of(&srm),
        policy: Stats::of(&policy),
        decoder: Stats::of(&decoder),
        postprocess: Stats::of(&pick(|r| r.times.postprocess_ms)),
        fps: results.len() as f64 / (frame.iter().sum::<f64>() / 1e3),
        frame: Stats::of(&frame),
        encoder_share: Stats::of(&shares).p50,
    }
}

/// Runs `alignsam bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.steps.is_empty() || args.frames == 0 {
        bail!("--steps and --frames must not be empty or zero");
    }
    let frames: Vec<RgbImage> = if args.input.is_empty() {
        vec![synthetic_frame()]
    } else {
        expand_inputs(&args.input)?
            .iter()
            .map(|p| load_rgb(p))
            .collect::<Result<_>>()?
    };
    if !args.compare.is_empty() {
        let reports = super::bench_compare::run(
            &args.compare,
            &args.bundle,
            &args.engine,
            &frames,
            &args.steps,
            (args.warmup, args.frames),
        )?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            let threads = crate::engine::EngineOptions {
                threads: args.engine.threads,
            }
            .resolved_threads();
            super::bench_compare::print_table(&reports, threads, args.frames, args.warmup)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let backend = args.engine.backend()?;
    let t = Instant::now();
    let agent = Agent::load(&bundle, backend.as_ref())?;
    let load_ms = ms(t.elapsed());

    let mut runs = vec![];
    let mut last_results = vec![];
    for &steps in &args.steps {
        let options = LoopOptions::fixed_steps(steps);
        let mut results = vec![];
        for i in 0..args.warmup + args.frames {
            let frame = &frames[i % frames.len()];
            let r = agent.segment(frame, &options)?;
            if i >= args.warmup {
                results.push(r);
            }
        }
        runs.push(collect(steps, &results));
        last_results = results;
    }

    let standard = match (&args.standard_decoder, bundle.manifest.models.decoder.form) {
        _ if args.no_decoder_comparison => None,
        (Some(p), _) => Some(p.clone()),
        (None, DecoderForm::Standard) => Some(bundle.decoder_path()),
        (None, DecoderForm::LowRes) => None,
    };
    let decoder_comparison = match standard {
        None => None,
        Some(path) => {
            let mut manifest = bundle.manifest.clone();
            manifest.models.decoder.form = DecoderForm::Standard;
            let full = FullResDecoder::new(backend.as_ref(), &path, &manifest);
            // Check the file is a standard decoder before timing it.
            Decoder::load(backend.as_ref(), &path, &manifest)?;
            let (mut a, mut b) = (vec![], vec![]);
            for (i, r) in last_results.iter().enumerate() {
                let image = &frames[(args.warmup + i) % frames.len()];
                let (input, geometry) = preprocess::preprocess(image, &agent.sam.preprocess)?;
                let embedding = agent.sam.encoder.encode(&input)?;
                full.prepare(&geometry)?;
                let prompt = r.prompt();
                // Replay every prefix the loop decoded: the two start points, then one more per step.
                for n in 2..=prompt.len() {
                    let t = Instant::now();
                    agent
                        .sam
                        .decoder
                        .decode(&embedding, &prompt[..n], None, &geometry)?;
                    a.push(ms(t.elapsed()));
                    let t = Instant::now();
                    full.decode(&embedding, &prompt[..n], None, &geometry)?;
                    b.push(ms(t.elapsed()));
                }
            }
            Some(DecoderComparison {
                loop_decoder: Stats::of(&a),
                standard_full_size: Stats::of(&b),
                loop_decoder_file: bundle.decoder_path(),
                standard_file: path,
            })
        }
    };

    let report = BenchReport {
        bundle: bundle.manifest.name.clone(),
        backend: backend.name().into(),
        precision: bundle.precision.name().into(),
        threads: crate::engine::EngineOptions {
            threads: args.engine.threads,
        }
        .resolved_threads(),
        frame_size: frames[0].dimensions(),
        load_ms,
        runs,
        decoder_comparison,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, args.warmup)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &BenchReport, warmup: usize) -> Result<()> {
    outln!(
        "alignsam bench: bundle {}, backend {}, precision {}, {} threads, frames {}x{}, models loaded in {:.0} ms",
        r.bundle,
        r.backend,
        r.precision,
        r.threads,
        r.frame_size.0,
        r.frame_size.1,
        r.load_ms
    );
    for run in &r.runs {
        outln!();
        outln!(
            "T = {} steps ({:.1} run on average: the agent may stop), {} frames (+{warmup} warm-up): frame p50 {:.1} ms, {:.2} fps, encoder {:.0}% of the frame",
            run.steps,
            run.mean_steps,
            run.frames,
            run.frame.p50,
            run.fps,
            run.encoder_share * 100.0
        );
        outln!(
            "  {:<12} {:>8} {:>10} {:>10} {:>10}",
            "stage",
            "calls",
            "p50 ms",
            "p90 ms",
            "p99 ms"
        );
        let rows: [(&str, &Stats); 7] = [
            ("preprocess", &run.preprocess),
            ("encoder", &run.encoder),
            ("srm", &run.srm),
            ("agent", &run.policy),
            ("decoder", &run.decoder),
            ("postprocess", &run.postprocess),
            ("frame", &run.frame),
        ];
        for (name, s) in rows {
            outln!(
                "  {:<12} {:>8} {:>10.2} {:>10.2} {:>10.2}",
                name,
                s.n,
                s.p50,
                s.p90,
                s.p99
            );
        }
    }
    if let Some(c) = &r.decoder_comparison {
        outln!();
        outln!(
            "decoder per step, same prompts, interleaved ({} runs each):",
            c.loop_decoder.n
        );
        outln!(
            "  as the loop runs it (low-res outputs)   p50 {:>8.2} ms  ({})",
            c.loop_decoder.p50,
            c.loop_decoder_file.display()
        );
        outln!(
            "  standard, full-size masks every step    p50 {:>8.2} ms  ({}), {:.2}x",
            c.standard_full_size.p50,
            c.standard_file.display(),
            c.standard_full_size.p50 / c.loop_decoder.p50
        );
    }
    if let Some(mb) = r.peak_rss_mb {
        outln!();
        outln!("peak resident memory {mb:.0} MB");
    }
    Ok(())
}
