//! `alignsam eval`: the prompting loop on a dataset split, with metrics beside baselines.
//! (Being written; see issue "Training and evaluation".)

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

/// Arguments of `alignsam eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {}

/// Runs `alignsam eval`.
pub fn run(_args: EvalArgs) -> Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
