//! `alignsam profile`: where a model's time goes.
//!
//! On tract, node by node in its optimised graph: each node is timed through tract's
//! plan-evaluation hook (the mechanism tract's own profiler uses); times are the median over
//! several runs, grouped by operator. On rten, whose API exposes no node times, rten's own report
//! (time per operator and per input shape) of one run after the warm-up runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::args::EngineArgs;
use crate::bench::{percentile, spread_points, synthetic_frame};
use crate::bundle::DecoderForm;
use crate::engine::{BackendKind, Model, Tensor, TensorView};
use crate::sam::{Decoder, Encoder, FullResDecoder, decoder::PromptInputs, preprocess};
use crate::source::InputLimits;

/// Which model to profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The image encoder.
    Encoder,
    /// The decoder as the loop runs it (low-resolution outputs only).
    Decoder,
    /// A standard-form decoder with its full-size `masks` output.
    DecoderFull,
}

/// Arguments of `alignsam profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The model to profile.
    #[arg(long, value_enum, default_value = "encoder")]
    pub model: Which,
    /// Prompt points for the decoder.
    #[arg(long, default_value_t = 2, value_parser = super::validate::count(1, 10_000))]
    pub points: usize,
    /// Profiled runs (after one warm-up run); node times are medians over them.
    #[arg(long, default_value_t = 5, value_parser = super::validate::count(1, 100_000))]
    pub runs: usize,
    /// How many of the slowest nodes to list.
    #[arg(long, default_value_t = 15, value_parser = super::validate::count(1, 1_000_000))]
    pub top: usize,
    /// Image to use (default: a generated 640x480 test image).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The report as JSON instead of a table.
    #[command(flatten)]
    pub report: super::args::ReportArgs,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Median time of one operator type.
#[derive(Debug, Serialize)]
pub struct OpShare {
    /// Operator name in tract's optimised graph.
    pub op: String,
    /// Nodes of this type.
    pub nodes: usize,
    /// Sum over those nodes of their median time, ms.
    pub ms: f64,
    /// Share of the whole run.
    pub share: f64,
}

/// Runs `alignsam profile`.
pub fn run(args: ProfileArgs, limits: InputLimits) -> Result<ExitCode> {
    if args.engine.backend == BackendKind::Ort {
        bail!(
            "profile runs on tract (node by node) and rten (its own report); for ONNX Runtime use \
             its profiler (SessionOptions::enable_profiling)"
        );
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let m = &bundle.manifest;
    let backend = args.engine.backend()?;
    let image = match &args.image {
        Some(p) => limits.load_rgb(p)?,
        None => synthetic_frame(),
    };
    let config = preprocess::PreprocessConfig {
        frame: m.image.size,
        pixel_mean: m.image.pixel_mean,
        pixel_std: m.image.pixel_std,
    };
    let (input, geometry) = preprocess::preprocess(&image, &config)?;
    let encoder = backend.load(&bundle.encoder_path(), &Encoder::spec(m))?;
    let (model, inputs): (Box<dyn Model>, Vec<Tensor>) = match args.model {
        Which::Encoder => (encoder, vec![input]),
        Which::Decoder | Which::DecoderFull => {
            let embedding = encoder.run(&[input.view()])?.remove(0);
            let (h, w) = geometry.original;
            let prompt = PromptInputs::new(
                &spread_points(args.points, w, h),
                None,
                &geometry,
                m.embedding.low_res_size(),
            )?;
            let spec = if args.model == Which::Decoder {
                Decoder::spec(m)
            } else {
                if m.models.decoder.form != DecoderForm::Standard {
                    bail!(
                        "{}: decoder-full needs a standard-form decoder",
                        bundle.decoder_path().display()
                    );
                }
                FullResDecoder::spec_for(m, h, w)
            };
            let model = backend.load(&bundle.decoder_path(), &spec)?;
            let inputs = vec![
                embedding,
                prompt.coords,
                prompt.labels,
                prompt.mask,
                prompt.has_mask,
                prompt.orig_size,
            ];
            (model, inputs)
        }
    };
    let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
    model.run(&views)?;
    if args.engine.backend == BackendKind::Rten {
        return print_rten_report(&args, model.as_ref(), &views);
    }
    let mut per_node: Vec<(String, String, Vec<f64>)> = vec![];
    let mut totals = vec![];
    for _ in 0..args.runs {
        let Some(times) = model.profile(&views)? else {
            bail!("this backend cannot profile")
        };
        if per_node.is_empty() {
            per_node = times
                .iter()
                .map(|t| (t.name.clone(), t.op.clone(), vec![]))
                .collect();
        }
        totals.push(
            times
                .iter()
                .map(|t| t.time.as_secs_f64() * 1e3)
                .sum::<f64>(),
        );
        for (slot, t) in per_node.iter_mut().zip(&times) {
            slot.2.push(t.time.as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        crate::util::sort_floats(v);
        percentile(v, 50.0)
    };
    let mut nodes: Vec<(String, String, f64)> = per_node
        .into_iter()
        .map(|(n, o, mut v)| (n, o, median(&mut v)))
        .collect();
    let total: f64 = nodes.iter().map(|n| n.2).sum();
    let mut by_op: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (_, op, ms) in &nodes {
        let e = by_op.entry(op.clone()).or_default();
        e.0 += 1;
        e.1 += ms;
    }
    let mut shares: Vec<OpShare> = by_op
        .into_iter()
        .map(|(op, (n, ms))| OpShare {
            op,
            nodes: n,
            ms,
            share: ms / total,
        })
        .collect();
    shares.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    nodes.sort_by(|a, b| b.2.total_cmp(&a.2));

    if args.report.is_json() {
        let top: Vec<_> = nodes
            .iter()
            .take(args.top)
            .map(|(n, o, ms)| serde_json::json!({"node": n, "op": o, "ms": ms}))
            .collect();
        let report = serde_json::json!({"model": format!("{:?}", args.model), "total_ms": total, "by_op": shares, "top_nodes": top});
        args.report.write_json("profile", &report)?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::util::sort_floats(&mut totals);
    outln!(
        "alignsam profile: {:?} of {} ({}), {} nodes, median over {} runs: {:.1} ms (sum of node medians {:.1} ms)",
        args.model,
        m.name,
        model.path().display(),
        nodes.len(),
        args.runs,
        percentile(&totals, 50.0),
        total
    );
    outln!(
        "  {:<28} {:>6} {:>10} {:>7}",
        "operator",
        "nodes",
        "ms",
        "share"
    );
    for s in &shares {
        outln!(
            "  {:<28} {:>6} {:>10.2} {:>6.1}%",
            s.op,
            s.nodes,
            s.ms,
            s.share * 100.0
        );
    }
    outln!("  slowest nodes:");
    for (name, op, ms) in nodes.iter().take(args.top) {
        outln!("  {ms:>9.2} ms  {op:<24} {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// rten: `--runs` warm-up runs, then one run with rten's report (it prints it to stdout).
fn print_rten_report(
    args: &ProfileArgs,
    model: &dyn Model,
    views: &[TensorView<'_>],
) -> Result<ExitCode> {
    if args.report.is_json() {
        bail!("--json needs --backend tract: rten prints its report as text");
    }
    for _ in 0..args.runs {
        model.run(views)?;
    }
    outln!(
        "alignsam profile: {:?} ({}) on rten, one run after {} warm-up runs; rten's report:",
        args.model,
        model.path().display(),
        args.runs + 1
    );
    if !model.print_engine_timing(views)? {
        bail!("this backend cannot profile");
    }
    Ok(ExitCode::SUCCESS)
}
