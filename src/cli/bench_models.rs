//! `alignsam bench-models`: load time and run time of the encoder and decoder on each backend,
//! measured together (runs interleaved, so that machine load affects every backend alike), with
//! the outputs' agreement between backends.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::EngineArgs;
use super::bench::synthetic_frame;
use crate::bench::Stats;
use crate::bundle::DecoderForm;
use crate::engine::{BackendKind, EngineOptions, Model, Tensor};
use crate::sam::{
    Decoder, Encoder, FullResDecoder, PointLabel, PromptPoint, decoder::PromptInputs, preprocess,
};
use crate::source::load_rgb;

/// Arguments of `alignsam bench-models`.
#[derive(Debug, Args)]
pub struct BenchModelsArgs {
    /// Bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Backends to compare (the first is the reference for output agreement).
    #[arg(long, value_delimiter = ',', default_value = "tract", value_parser = super::backend_parser())]
    pub backends: Vec<BackendKind>,
    /// Measured runs per model and backend (after one warm-up run).
    #[arg(long, default_value_t = 10, value_parser = super::validate::count(1, 100_000))]
    pub runs: usize,
    /// Point counts for the decoder.
    #[arg(long, value_delimiter = ',', default_value = "2,5", value_parser = super::validate::count(1, 10_000))]
    pub points: Vec<usize>,
    /// Image to encode (default: a generated 640x480 test image).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// One model on one backend.
#[derive(Debug, Serialize)]
pub struct Row {
    /// "encoder", "decoder N=2 (low-res outputs)", ...
    pub model: String,
    /// Backend name.
    pub backend: String,
    /// Parse + optimise (or session creation), milliseconds.
    pub load_ms: f64,
    /// Run times, milliseconds.
    pub run: Stats,
    /// Largest difference from the first backend's output, relative to its largest magnitude.
    pub max_rel_diff_vs_first: Option<f64>,
}

fn rel_diff(a: &[f32], reference: &[f32]) -> f64 {
    let scale = reference
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(f64::MIN_POSITIVE);
    a.iter()
        .zip(reference)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
        / scale
}

/// Deterministic prompt points spread over the image, alternating labels (benchmarks, profiles).
pub fn spread_points(n: usize, w: usize, h: usize) -> Vec<PromptPoint> {
    (0..n)
        .map(|i| {
            let f = (i as f64 + 0.5) / n as f64;
            PromptPoint {
                x: f * w as f64,
                y: (0.3 + 0.4 * f) * h as f64,
                label: if i % 2 == 0 {
                    PointLabel::Positive
                } else {
                    PointLabel::Negative
                },
            }
        })
        .collect()
}

struct Case {
    name: String,
    /// Per backend: the model and its inputs.
    models: Vec<(Box<dyn Model>, Vec<Tensor>)>,
    backends: Vec<String>,
    samples: Vec<Vec<f64>>,
    outputs: Vec<Vec<f32>>,
}

/// Runs `alignsam bench-models`.
pub fn run(args: BenchModelsArgs) -> Result<ExitCode> {
    if args.backends.is_empty() || args.runs == 0 {
        bail!("--backends and --runs must not be empty or zero");
    }
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let m = &bundle.manifest;
    let image = match &args.image {
        Some(p) => load_rgb(p)?,
        None => synthetic_frame(),
    };
    let options = EngineOptions {
        threads: args.engine.threads,
    };
    let backends: Vec<_> = args
        .backends
        .iter()
        .map(|b| b.create(&options))
        .collect::<Result<_>>()?;
    let names: Vec<String> = backends.iter().map(|b| b.name().to_string()).collect();

    let config = preprocess::PreprocessConfig {
        frame: m.image.size,
        pixel_mean: m.image.pixel_mean,
        pixel_std: m.image.pixel_std,
    };
    let (input, geometry) = preprocess::preprocess(&image, &config)?;
    let mut rows = vec![];
    let mut cases: Vec<Case> = vec![];

    // Encoder.
    let mut enc_case = Case {
        name: "encoder".into(),
        models: vec![],
        backends: names.clone(),
        samples: vec![],
        outputs: vec![],
    };
    for b in &backends {
        let model = b.load(&bundle.encoder_path(), &Encoder::spec(m))?;
        enc_case.models.push((model, vec![input.clone()]));
    }
    // The embedding every decoder case uses: the first backend's.
    let embedding = enc_case.models[0].0.run(&[input.view()])?.remove(0);
    cases.push(enc_case);

    let (h, w) = geometry.original;
    let low_res = m.embedding.low_res_size();
    let decoder_inputs = |n: usize| -> Result<Vec<Tensor>> {
        let p = PromptInputs::new(&spread_points(n, w, h), None, &geometry, low_res)?;
        Ok(vec![
            embedding.clone(),
            p.coords,
            p.labels,
            p.mask,
            p.has_mask,
            p.orig_size,
        ])
    };
    for &n in &args.points {
        let mut case = Case {
            name: format!("decoder, {n} points + padding, low-res outputs"),
            models: vec![],
            backends: names.clone(),
            samples: vec![],
            outputs: vec![],
        };
        for b in &backends {
            case.models.push((
                b.load(&bundle.decoder_path(), &Decoder::spec(m))?,
                decoder_inputs(n)?,
            ));
        }
        cases.push(case);
    }
    if m.models.decoder.form == DecoderForm::Standard {
        for &n in &args.points {
            let mut case = Case {
                name: format!("decoder, {n} points + padding, full-size masks"),
                models: vec![],
                backends: names.clone(),
                samples: vec![],
                outputs: vec![],
            };
            for b in &backends {
                // The standard decoder's own spec for this image size, as FullResDecoder uses it.
                let spec = FullResDecoder::spec_for(m, h, w);
                case.models
                    .push((b.load(&bundle.decoder_path(), &spec)?, decoder_inputs(n)?));
            }
            cases.push(case);
        }
    }

    for case in &mut cases {
        case.samples = vec![vec![]; case.models.len()];
        // One warm-up run per backend, keeping its output for the agreement check.
        for (model, inputs) in &case.models {
            let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
            let out = model.run(&views)?;
            case.outputs
                .push(out.iter().flat_map(|t| t.data().iter().copied()).collect());
        }
        for _ in 0..args.runs {
            for (i, (model, inputs)) in case.models.iter().enumerate() {
                let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
                let t = Instant::now();
                model.run(&views)?;
                case.samples[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        for (i, (model, _)) in case.models.iter().enumerate() {
            rows.push(Row {
                model: case.name.clone(),
                backend: case.backends[i].clone(),
                load_ms: model.load_timings().total().as_secs_f64() * 1e3,
                run: Stats::of(&case.samples[i]),
                max_rel_diff_vs_first: (i > 0)
                    .then(|| rel_diff(&case.outputs[i], &case.outputs[0])),
            });
        }
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "alignsam bench-models: bundle {}, {} threads, image {}x{}, {} runs after 1 warm-up, interleaved across backends",
        m.name,
        options.resolved_threads(),
        w,
        h,
        args.runs
    );
    println!(
        "  {:<46} {:<6} {:>9} {:>10} {:>10} {:>12}",
        "model", "backend", "load ms", "median ms", "p90 ms", "rel. diff"
    );
    for r in &rows {
        println!(
            "  {:<46} {:<6} {:>9.0} {:>10.1} {:>10.1} {:>12}",
            r.model,
            r.backend,
            r.load_ms,
            r.run.p50,
            r.run.p90,
            r.max_rel_diff_vs_first
                .map_or("-".into(), |d| format!("{d:.1e}"))
        );
    }
    Ok(ExitCode::SUCCESS)
}
