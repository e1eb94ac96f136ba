//! `alignsam bench-models`: load time and run time of the encoder and decoder on each backend and
//! precision, measured together (runs interleaved, so that machine load affects every candidate
//! alike), with each output's distance from the first candidate's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::args::EngineArgs;
use crate::bench::{Stats, spread_points, synthetic_frame};
use crate::bundle::Bundle;
use crate::bundle::DecoderForm;
use crate::engine::{Backend, BackendKind, EngineOptions, Model, ModelSpec, Precision, Tensor};
use crate::sam::{Decoder, Encoder, FullResDecoder, decoder::PromptInputs, preprocess};
use crate::source::InputLimits;

/// Arguments of `alignsam bench-models`.
#[derive(Debug, Args)]
pub struct BenchModelsArgs {
    /// Bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Backends to compare (the first backend at the first precision is the reference for
    /// output agreement).
    #[arg(long, value_delimiter = ',', default_values_t = [BackendKind::default()], value_parser = super::args::backend_parser())]
    pub backends: Vec<BackendKind>,
    /// Precisions to compare on every backend (variants need no passing gate record here; the
    /// table says whether each has one).
    #[arg(long, value_delimiter = ',', default_value = "fp32", value_parser = super::args::precision_parser())]
    pub precisions: Vec<Precision>,
    /// Measured runs per model and backend (after one warm-up run).
    #[arg(long, default_value_t = 10, value_parser = super::validate::count(1, 100_000))]
    pub runs: usize,
    /// Point counts for the decoder.
    #[arg(long, value_delimiter = ',', default_value = "2,5", value_parser = super::validate::count(1, 10_000))]
    pub points: Vec<usize>,
    /// Image to encode (default: a generated 640x480 test image).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The report as JSON instead of a table.
    #[command(flatten)]
    pub report: super::args::ReportArgs,
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
    /// Precision name.
    pub precision: String,
    /// The file that ran (a precision without a variant of this model runs the fp32 file).
    pub file: String,
    /// The accuracy-gate record of this precision on this backend: "pass", "refused", "none"
    /// ("-" for fp32).
    pub gate: String,
    /// Parse + optimise (or session creation), milliseconds.
    pub load_ms: Option<f64>,
    /// Run times, milliseconds.
    pub run: Option<Stats>,
    /// Largest difference from the first candidate's output, relative to its largest magnitude.
    pub max_rel_diff_vs_first: Option<f64>,
    /// Why the candidate could not load or run this model.
    pub error: Option<String>,
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

/// A backend at a precision.
struct Candidate {
    backend: Box<dyn Backend>,
    bundle: Bundle,
    gate: String,
}

impl Candidate {
    fn path(&self, which: Which) -> std::path::PathBuf {
        match which {
            Which::Encoder => self.bundle.encoder_path(),
            Which::Decoder => self.bundle.decoder_path(),
        }
    }

    fn load(&self, which: Which, spec: &ModelSpec) -> Result<Box<dyn Model>> {
        let path = self.path(which);
        self.backend
            .load(&path, &spec.clone().at_precision(self.bundle.precision))
    }
}

#[derive(Clone, Copy)]
enum Which {
    Encoder,
    Decoder,
}

/// What the gate records of a bundle say of a precision on a backend.
fn gate_status(bundle: &Bundle, backend: &str) -> String {
    if bundle.precision == Precision::Fp32 {
        return "-".into();
    }
    let records = bundle.gate_records(backend);
    if records.is_empty() {
        "none".into()
    } else if records.iter().all(|g| g.passed()) {
        "pass".into()
    } else {
        "refused".into()
    }
}

/// A loaded model and the inputs it is timed on.
type Loaded = (Box<dyn Model>, Vec<Tensor>);

/// One model measured on every candidate.
struct Case {
    name: String,
    which: Which,
    /// Per candidate: the model and its inputs, or why it could not load.
    models: Vec<Result<Loaded>>,
}

impl Case {
    fn new(
        name: String,
        candidates: &[Candidate],
        which: Which,
        spec: &ModelSpec,
        inputs: impl Fn() -> Result<Vec<Tensor>>,
    ) -> Case {
        let models = candidates
            .iter()
            .map(|c| Ok((c.load(which, spec)?, inputs()?)))
            .collect();
        Case {
            name,
            which,
            models,
        }
    }

    /// One warm-up run per candidate (its output kept for the agreement check), then `runs`
    /// interleaved timed runs.
    fn measure(&mut self, candidates: &[Candidate], runs: usize) -> Vec<Row> {
        let mut outputs: Vec<Option<Vec<f32>>> = vec![];
        for m in &mut self.models {
            let out = match m {
                Ok((model, inputs)) => run_once(model.as_ref(), inputs),
                Err(_) => Ok(vec![]),
            };
            match out {
                Ok(o) => outputs.push(Some(o)),
                Err(e) => {
                    *m = Err(e);
                    outputs.push(None);
                }
            }
        }
        let mut samples = vec![vec![]; self.models.len()];
        for _ in 0..runs {
            for (i, m) in self.models.iter_mut().enumerate() {
                let Ok((model, inputs)) = m else { continue };
                let t = Instant::now();
                if let Err(e) = run_once(model.as_ref(), inputs) {
                    *m = Err(e);
                    continue;
                }
                samples[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let reference = outputs.first().cloned().flatten();
        self.models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let c = &candidates[i];
                let mut row = Row {
                    model: self.name.clone(),
                    backend: c.backend.name().into(),
                    precision: c.bundle.precision.name().into(),
                    file: c
                        .path(self.which)
                        .file_name()
                        .map_or(String::new(), |f| f.to_string_lossy().into_owned()),
                    gate: c.gate.clone(),
                    load_ms: None,
                    run: None,
                    max_rel_diff_vs_first: None,
                    error: None,
                };
                match m {
                    Ok((model, _)) => {
                        row.load_ms = Some(model.load_timings().total().as_secs_f64() * 1e3);
                        row.run = Some(Stats::of(&samples[i]));
                        if let (true, Some(r), Some(Some(o))) = (i > 0, &reference, outputs.get(i))
                        {
                            row.max_rel_diff_vs_first = Some(rel_diff(o, r));
                        }
                    }
                    Err(e) => row.error = Some(format!("{e:#}")),
                }
                row
            })
            .collect()
    }
}

fn run_once(model: &dyn Model, inputs: &[Tensor]) -> Result<Vec<f32>> {
    let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
    let out = model.run(&views)?;
    Ok(out.iter().flat_map(|t| t.data().iter().copied()).collect())
}

/// Runs `alignsam bench-models`.
pub fn run(args: BenchModelsArgs, limits: InputLimits) -> Result<ExitCode> {
    if args.backends.is_empty() || args.precisions.is_empty() || args.runs == 0 {
        bail!("--backends, --precisions and --runs must not be empty or zero");
    }
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let m = &bundle.manifest;
    let image = match &args.image {
        Some(p) => limits.load_rgb(p)?,
        None => synthetic_frame(),
    };
    let options = EngineOptions {
        threads: args.engine.threads,
    };
    let mut candidates = vec![];
    for kind in &args.backends {
        for &precision in &args.precisions {
            let backend = kind.create(&options)?;
            let variant = bundle.clone();
            let variant = Bundle {
                allow_ungated: true,
                ..variant
            }
            .with_precision(precision)?;
            candidates.push(Candidate {
                gate: gate_status(&variant, backend.name()),
                backend,
                bundle: variant,
            });
        }
    }

    let config = preprocess::PreprocessConfig {
        frame: m.image.size,
        pixel_mean: m.image.pixel_mean,
        pixel_std: m.image.pixel_std,
    };
    let (input, geometry) = preprocess::preprocess(&image, &config)?;
    // The embedding every decoder case uses: the fp32 encoder's on the first backend.
    let embedding = {
        let backend = args.backends[0].create(&options)?;
        let encoder = backend.load(&bundle.encoder_path_at(Precision::Fp32), &Encoder::spec(m))?;
        encoder.run(&[input.view()])?.remove(0)
    };

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
    let mut cases = vec![Case::new(
        "encoder".into(),
        &candidates,
        Which::Encoder,
        &Encoder::spec(m),
        || Ok(vec![input.clone()]),
    )];
    for &n in &args.points {
        cases.push(Case::new(
            format!("decoder, {n} points + padding, low-res outputs"),
            &candidates,
            Which::Decoder,
            &Decoder::spec(m),
            || decoder_inputs(n),
        ));
    }
    if m.models.decoder.form == DecoderForm::Standard {
        for &n in &args.points {
            // The standard decoder's own spec for this image size, as FullResDecoder uses it.
            cases.push(Case::new(
                format!("decoder, {n} points + padding, full-size masks"),
                &candidates,
                Which::Decoder,
                &FullResDecoder::spec_for(m, h, w),
                || decoder_inputs(n),
            ));
        }
    }
    let rows: Vec<Row> = cases
        .iter_mut()
        .flat_map(|case| case.measure(&candidates, args.runs))
        .collect();

    if args.report.write_json("bench-models", &rows)? {
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "alignsam bench-models: bundle {}, {} threads, image {}x{}, {} runs after 1 warm-up, interleaved across candidates",
        m.name,
        options.resolved_threads(),
        w,
        h,
        args.runs
    );
    outln!(
        "  {:<46} {:<6} {:<9} {:<26} {:<7} {:>9} {:>10} {:>10} {:>12}",
        "model",
        "backend",
        "precision",
        "file",
        "gate",
        "load ms",
        "median ms",
        "p90 ms",
        "rel. diff"
    );
    for r in &rows {
        let lead = format!(
            "  {:<46} {:<6} {:<9} {:<26} {:<7}",
            r.model, r.backend, r.precision, r.file, r.gate
        );
        match (&r.run, r.load_ms) {
            (Some(run), Some(load)) => outln!(
                "{lead} {:>9.0} {:>10.1} {:>10.1} {:>12}",
                load,
                run.p50,
                run.p90,
                r.max_rel_diff_vs_first
                    .map_or("-".into(), |d| format!("{d:.1e}"))
            ),
            _ => outln!("{lead} cannot run: {}", r.error.as_deref().unwrap_or("")),
        }
    }
    Ok(ExitCode::SUCCESS)
}
