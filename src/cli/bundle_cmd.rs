//! `alignsam bundle MODELS_DIR`: write a manifest for a directory of ONNX models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

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
    /// Bundle name (default: the models directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Encoder file name inside the models directory.
    #[arg(long)]
    pub encoder: Option<String>,
    /// Decoder file name inside the models directory (standard or low-res form).
    #[arg(long)]
    pub decoder: Option<String>,
    /// Policy file name inside the models directory.
    #[arg(long)]
    pub policy: Option<String>,
    /// SRM file name inside the models directory.
    #[arg(long)]
    pub srm: Option<String>,
    /// Side of the agent's patch grid.
    #[arg(long, default_value_t = 10)]
    pub grid: usize,
    /// Step limit of the prompting loop.
    #[arg(long, default_value_t = 15)]
    pub max_steps: usize,
}

/// Runs `alignsam bundle`.
pub fn run(args: BundleArgs) -> Result<ExitCode> {
    let out = args.out.clone().unwrap_or_else(|| args.models.clone());
    let options = InferOptions {
        name: args.name,
        encoder: args.encoder,
        decoder: args.decoder,
        policy: args.policy,
        srm: args.srm,
        agent: AgentSection {
            grid: args.grid,
            max_steps: args.max_steps,
        },
        ..Default::default()
    };
    let path = write_bundle(&args.models, &out, &options)?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}
