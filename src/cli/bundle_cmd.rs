//! `alignsam bundle MODELS_DIR`: write a manifest for a directory of ONNX models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::bundle::manifest::{AgentKind, StepLabels};
use crate::bundle::{AgentSection, InferOptions, write_bundle};

/// Arguments of `alignsam bundle`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Directory holding encoder.onnx and decoder.onnx (and optionally policy.onnx, srm.onnx).
    pub models: PathBuf,
    /// Where to write bundle.toml (default: the models directory). File paths in the manifest are
    /// relative to it, so a bundle can point at a read-only model directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Whether existing files may be replaced.
    #[command(flatten)]
    pub write: super::args::WriteArgs,
    /// Bundle name (default: the models directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// A line on where the weights came from, shown by `alignsam info`.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Encoder file (default: MODELS/encoder.onnx).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Decoder file, standard or low-res form (default: MODELS/decoder_lowres.onnx if present,
    /// else MODELS/decoder.onnx).
    #[arg(long)]
    pub decoder: Option<PathBuf>,
    /// Policy file (default: MODELS/policy.onnx if present).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// SRM file (default: MODELS/srm.onnx if present).
    #[arg(long)]
    pub srm: Option<PathBuf>,
    /// Learned clicker file (default: MODELS/clicker.onnx if present).
    #[arg(long)]
    pub clicker: Option<PathBuf>,
    /// Which agent the bundle runs: `paper` (the policy) or `clicker` (default: clicker when
    /// the bundle has one and no policy, else paper).
    #[arg(long)]
    pub kind: Option<AgentKind>,
    /// Side of the agent's patch grid.
    #[arg(long, default_value_t = 10, value_parser = super::validate::count(1, 4096))]
    pub grid: usize,
    /// Step limit of the prompting loop.
    #[arg(long, default_value_t = 15, value_parser = super::validate::count(0, crate::bundle::manifest::MAX_STEPS as u64))]
    pub max_steps: usize,
    /// Which SRM map labels a step's point, as the policy was trained: `state` (the paper) or
    /// `embedding`.
    #[arg(long, default_value = "state")]
    pub step_labels: StepLabels,
}

/// Runs `alignsam bundle`.
pub fn run(args: BundleArgs) -> Result<ExitCode> {
    let out = args.out.clone().unwrap_or_else(|| args.models.clone());
    let _lock = crate::sink::OutputPlan::new("bundle", args.write.force)
        .dir(&out, &["bundle.toml"])
        .check()?;
    let options = InferOptions {
        name: args.name,
        description: args.description,
        encoder: args.encoder,
        decoder: args.decoder,
        agent: AgentSection {
            grid: args.grid,
            max_steps: args.max_steps,
            step_labels: args.step_labels,
            kind: args.kind.unwrap_or_else(|| {
                let has = |given: &Option<PathBuf>, name: &str| {
                    given.is_some() || args.models.join(name).is_file()
                };
                if has(&args.clicker, "clicker.onnx") && !has(&args.policy, "policy.onnx") {
                    AgentKind::Clicker
                } else {
                    AgentKind::Paper
                }
            }),
            best_patch: None,
        },
        policy: args.policy,
        srm: args.srm,
        clicker: args.clicker,
        ..Default::default()
    };
    let path = write_bundle(&args.models, &out, &options)?;
    outln!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}
