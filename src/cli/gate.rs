//! `alignsam gate`: precision variants (and backends, and CPUs) against the fp32 reference, on
//! real images, after the whole prompting loop. See [`crate::gate`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::args::{backend_parser, precision_parser};
use crate::bundle::{Bundle, OpenOptions};
use crate::dataset::Dataset;
use crate::engine::{BackendKind, EngineOptions, Precision};
use crate::exit::{EXIT_OK, EXIT_PARTIAL};
use crate::gate::{GATE_MIN_MASK_IOU, GateResult, Reference};
use crate::source::InputLimits;

/// Arguments of `alignsam gate`. Exit status 0 when every candidate passed (or does not apply:
/// f16 off tract), 2 when one was refused or could not run.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Bundle directory (its fp32 files are the reference; its variants are the candidates).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Dataset folder (images/, masks/, splits/) whose images the gate runs on.
    #[arg(long)]
    pub data: PathBuf,
    /// Split of the dataset.
    #[arg(long, default_value = "eval")]
    pub split: String,
    /// Images: the split's first N.
    #[arg(long, default_value_t = 8, value_parser = super::validate::count(1, 100_000))]
    pub images: usize,
    /// Steps of the reference loop (default: the bundle's max_steps, the gate proper). Fewer make a
    /// quicker check, e.g. on an emulated CPU; records say how many were run.
    #[arg(long, conflicts_with = "reference", value_parser = super::validate::count(1, crate::bundle::manifest::MAX_STEPS as u64))]
    pub steps: Option<usize>,
    /// Precisions to check (fp32 checks a backend or a CPU against the reference).
    #[arg(long, value_delimiter = ',', default_value = "int8,int8-qdq,f16", value_parser = precision_parser())]
    pub precisions: Vec<Precision>,
    /// Backends to check each precision on (default: the build's default backend).
    #[arg(long, value_delimiter = ',', default_values_t = [BackendKind::default()], value_parser = backend_parser())]
    pub backends: Vec<BackendKind>,
    /// Backend of the fp32 reference.
    #[arg(long, default_value = "tract", value_parser = backend_parser())]
    pub reference_backend: BackendKind,
    /// Read the reference from this file (written by --save-reference, possibly on another
    /// machine) instead of computing it.
    #[arg(long, conflicts_with = "save_reference")]
    pub reference: Option<PathBuf>,
    /// Write the reference to this file.
    #[arg(long)]
    pub save_reference: Option<PathBuf>,
    /// Whether existing files may be replaced.
    #[command(flatten)]
    pub write: super::args::WriteArgs,
    /// Write each result into the bundle's bundle.toml as a [[gate]] record (replacing one of the
    /// same precision, backend and CPU architecture): the runtime uses a variant only with a
    /// passing record.
    #[arg(long)]
    pub record: bool,
    /// Threads per model run (0: all cores).
    #[arg(long, default_value_t = 0, env = "ALIGNSAM_THREADS", value_parser = super::validate::count(0, 1024))]
    pub threads: usize,
    /// Skip verifying the bundle's checksums.
    #[arg(long)]
    pub no_verify: bool,
    /// The report as JSON instead of a table.
    #[command(flatten)]
    pub report: super::args::ReportArgs,
}

/// One candidate's outcome.
#[derive(Debug, Serialize)]
struct Row {
    precision: String,
    backend: String,
    /// The comparison, when the candidate could run.
    result: Option<GateResult>,
    /// Why it could not run (no variant file, an operator the engine lacks, ...).
    error: Option<String>,
    /// The combination does not exist (f16 off tract): neither a pass nor a failure.
    not_applicable: bool,
}

/// Runs `alignsam gate`.
pub fn run(args: GateArgs, limits: InputLimits) -> Result<ExitCode> {
    // The reference is never written over the bundle's models or the dataset's masks, a device
    // or a file an earlier gate run did not write.
    let _lock = match &args.save_reference {
        Some(path) => Some(
            crate::sink::OutputPlan::new("gate", args.write.force)
                .input_dir(&args.bundle)
                .input_dir(&args.data)
                .inputs(&args.reference)
                .file(path)
                .check()?,
        ),
        None => None,
    };
    let options = EngineOptions {
        threads: args.threads,
    };
    let open = |precision| {
        Bundle::open(
            &args.bundle,
            OpenOptions {
                verify_checksums: !args.no_verify,
                precision,
                allow_ungated: true,
            },
        )
    };
    let fp32 = open(Precision::Fp32)?;
    let data = Dataset::open_with_limits(&args.data, &args.split, limits)?;
    let reference = match &args.reference {
        Some(path) => {
            let r = Reference::load(path, &limits)?;
            r.check_fits(&fp32)
                .with_context(|| format!("{}", path.display()))?;
            r
        }
        None => {
            let backend = args.reference_backend.create(&options)?;
            let steps = args.steps.unwrap_or(fp32.manifest.agent.max_steps);
            Reference::compute(&fp32, backend.as_ref(), &data, args.images, steps)?
        }
    };
    if let Some(path) = &args.save_reference {
        reference.save(path)?;
        eprintln!("wrote the fp32 reference to {}", path.display());
    }

    let mut rows = vec![];
    // fp32 runs on every backend as well: the baseline of the speed-ups the records keep.
    let mut precisions = args.precisions.clone();
    if args.record && !precisions.contains(&Precision::Fp32) {
        precisions.insert(0, Precision::Fp32);
    }
    for kind in &args.backends {
        let backend = match kind.create(&options) {
            Ok(b) => b,
            Err(e) => {
                for p in &precisions {
                    rows.push(Row::failed(*p, *kind, &e));
                }
                continue;
            }
        };
        for &p in &precisions {
            if p == Precision::F16 && *kind != BackendKind::Tract {
                // Not a failure: only tract has an f16 path (ModelSpec::half).
                rows.push(Row {
                    precision: p.name().into(),
                    backend: kind.name().into(),
                    result: None,
                    error: Some(format!("not applicable: {kind} has no f16 path")),
                    not_applicable: true,
                });
                continue;
            }
            let outcome = open(p).and_then(|b| reference.compare(&b, backend.as_ref(), &data));
            rows.push(match outcome {
                Ok(result) => Row {
                    precision: p.name().into(),
                    backend: kind.name().into(),
                    result: Some(result),
                    error: None,
                    not_applicable: false,
                },
                Err(e) => Row::failed(p, *kind, &e),
            });
        }
    }

    if args.record {
        record(&fp32, &reference, &rows)?;
    }
    if !args.report.write_json("gate", &rows)? {
        print_table(&reference, &rows)?;
    }
    let all_passed = rows.iter().all(|r| match &r.result {
        Some(result) => result.passed(),
        None => r.not_applicable,
    });
    Ok(ExitCode::from(if all_passed {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    }))
}

impl Row {
    fn failed(p: Precision, kind: BackendKind, e: &anyhow::Error) -> Row {
        Row {
            precision: p.name().into(),
            backend: kind.name().into(),
            result: None,
            error: Some(format!("{e:#}")),
            not_applicable: false,
        }
    }
}

/// Writes the results into bundle.toml's [[gate]] records.
fn record(bundle: &Bundle, reference: &Reference, rows: &[Row]) -> Result<()> {
    let results: Vec<&GateResult> = rows.iter().filter_map(|r| r.result.as_ref()).collect();
    let path = crate::gate::record_results(&bundle.dir, reference, &results)?;
    eprintln!("recorded the results in {}", path.display());
    Ok(())
}

fn print_table(reference: &Reference, rows: &[Row]) -> Result<()> {
    outln!(
        "alignsam gate: bundle {}, fp32 reference on {} ({}), {} images ({}), {} CPU ({}); pass: mean mask IoU >= {GATE_MIN_MASK_IOU}",
        reference.bundle,
        reference.backend,
        reference.arch,
        reference.items.len(),
        reference.images,
        std::env::consts::ARCH,
        crate::bundle::cpu_class()
    );
    outln!(
        "  {:<9} {:<7} {:>10} {:>10} {:>9} {:>9} {:>9}  verdict",
        "precision",
        "backend",
        "emb. cos",
        "logit MAE",
        "mask IoU",
        "min IoU",
        "seconds"
    );
    for row in rows {
        match (&row.result, &row.error) {
            (Some(r), _) => outln!(
                "  {:<9} {:<7} {:>10.5} {:>10.4} {:>9.4} {:>9.4} {:>9.2}  {}  kernels: {}",
                row.precision,
                row.backend,
                r.embedding_cosine,
                r.logit_mae,
                r.mask_iou,
                r.min_mask_iou,
                r.seconds,
                if r.passed() { "pass" } else { "REFUSED" },
                r.kernels.join("; ")
            ),
            (None, Some(e)) if row.not_applicable => {
                outln!("  {:<9} {:<7} {e}", row.precision, row.backend)
            }
            (None, e) => outln!(
                "  {:<9} {:<7} cannot run: {}",
                row.precision,
                row.backend,
                e.as_deref().unwrap_or("")
            ),
        }
    }
    Ok(())
}
