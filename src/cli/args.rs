//! Argument groups several subcommands share.

use clap::Args;

/// What every command that writes files accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct WriteArgs {
    /// Replace existing files that no earlier run of this command wrote (never the run's
    /// inputs, devices, FIFOs or symbolic links)
    #[arg(long)]
    pub force: bool,
}
