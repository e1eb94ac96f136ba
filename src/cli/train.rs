//! `alignsam train`: PPO for the policy and Dice + BCE for the SRM on cached embeddings.
//! (Being written; see issue "Training and evaluation".)

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

/// Arguments of `alignsam train`.
#[derive(Debug, Args)]
pub struct TrainArgs {}

/// Runs `alignsam train`.
pub fn run(_args: TrainArgs) -> Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
