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

use super::args::EngineArgs;
use crate::agent::Agent;
use crate::bench::{
    DecoderComparison, FrameCounts, Stats, StepCountReport, peak_rss_bytes, synthetic_frame,
};
use crate::bundle::DecoderForm;
use crate::source::{InputLimits, expand_inputs};
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
    pub compare: Vec<crate::bench::Candidate>,
    /// The report as JSON instead of a table.
    #[command(flatten)]
    pub report: super::args::ReportArgs,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
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

/// Runs `alignsam bench`.
pub fn run(args: BenchArgs, limits: InputLimits) -> Result<ExitCode> {
    if args.steps.is_empty() || args.frames == 0 {
        bail!("--steps and --frames must not be empty or zero");
    }
    let frames: Vec<RgbImage> = if args.input.is_empty() {
        vec![synthetic_frame()]
    } else {
        expand_inputs(&args.input)?
            .iter()
            .map(|p| limits.load_rgb(p))
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
        if !args.report.write_json("bench", &reports)? {
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

    let counts = FrameCounts {
        warmup: args.warmup,
        measured: args.frames,
    };
    let mut runs = vec![];
    let mut last_results = vec![];
    for &steps in &args.steps {
        let (report, results) = crate::bench::measure_loop(&agent, &frames, steps, counts)?;
        runs.push(report);
        last_results = results;
    }

    let standard = match (&args.standard_decoder, bundle.manifest.models.decoder.form) {
        _ if args.no_decoder_comparison => None,
        (Some(p), _) => Some(p.clone()),
        (None, DecoderForm::Standard) => Some(bundle.decoder_path()),
        (None, DecoderForm::LowRes) => None,
    };
    // The measured frames, in the order the loop saw them.
    let measured: Vec<&RgbImage> = (0..last_results.len())
        .map(|i| &frames[(args.warmup + i) % frames.len()])
        .collect();
    let decoder_comparison = standard
        .map(|path| {
            crate::bench::compare_decoders(
                &agent,
                backend.as_ref(),
                &bundle,
                path,
                &measured,
                &last_results,
            )
        })
        .transpose()?;

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
    if !args.report.write_json("bench", &report)? {
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
