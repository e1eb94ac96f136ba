//! Argument groups several subcommands share, and the parsers that turn flag values into the
//! library's types: the engine (backend, threads, precision), the prompting loop, temporal
//! reuse, writing, and reports. Subcommands take these from here, never from each other.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::validate;
use crate::agent::{LoopOptions, StepLabels};
use crate::bundle::Bundle;
pub use crate::bundle::PrecisionChoice;
use crate::bundle::manifest::AgentSection;
use crate::engine::{Backend, BackendKind, EngineOptions, Precision};

/// What every command that writes files accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct WriteArgs {
    /// Replace existing files that no earlier run of this command wrote (never the run's
    /// inputs, devices, FIFOs or symbolic links)
    #[arg(long)]
    pub force: bool,
}

/// How a report command (bench, bench-models, bench-reuse, profile, gate) gives its report.
#[derive(Debug, Clone, Default, Args)]
pub struct ReportArgs {
    /// The report as JSON instead of a table: on stdout, or with `--json=FILE` in FILE (`-`:
    /// stdout), as `--json` means for every command.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

impl ReportArgs {
    /// Whether the report is to be JSON.
    pub fn is_json(&self) -> bool {
        self.json.is_some()
    }

    /// Writes `report` as JSON when asked to (on stdout, or into the file through the output
    /// guard) and says whether it did; `false` leaves the table to the caller.
    pub fn write_json<T: Serialize>(&self, kind: &str, report: &T) -> Result<bool> {
        let Some(path) = &self.json else {
            return Ok(false);
        };
        super::output::write_json_report(path, kind, report)?;
        Ok(true)
    }
}

/// Options shared by every command that runs models.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Inference backend.
    #[arg(long, default_value_t, env = "ALIGNSAM_BACKEND", value_parser = backend_parser())]
    pub backend: BackendKind,
    /// Threads per model run (0: all cores).
    #[arg(long, default_value_t = 0, env = "ALIGNSAM_THREADS", value_parser = validate::count(0, 1024))]
    pub threads: usize,
    /// Skip verifying the bundle's sha256 checksums (saves seconds on big encoders).
    #[arg(long)]
    pub no_verify: bool,
    /// Precision of the SAM encoder and decoder: fp32, int8 or int8-qdq (variant files named in
    /// bundle.toml), f16 (tract converts the fp32 files at load), or auto: the fastest variant
    /// that passed the accuracy gate on this backend and CPU architecture (fp32 when none did).
    #[arg(long, default_value = "auto", env = "ALIGNSAM_PRECISION", value_parser = precision_choice_parser())]
    pub precision: PrecisionChoice,
    /// Use a precision variant that has no passing accuracy-gate record (`alignsam gate`).
    #[arg(long)]
    pub allow_ungated: bool,
}

/// `auto` or a precision name.
pub fn precision_choice_parser() -> impl clap::builder::TypedValueParser<Value = PrecisionChoice> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = std::iter::once("auto")
        .chain(Precision::ALL.iter().map(|p| p.name()))
        .collect();
    clap::builder::PossibleValuesParser::new(names).map(|s| match s.as_str() {
        "auto" => PrecisionChoice::Auto,
        name => PrecisionChoice::Fixed(name.parse().expect("a possible value")),
    })
}

/// The precision names as clap's possible values, parsed into the library's [`Precision`].
pub fn precision_parser() -> impl clap::builder::TypedValueParser<Value = Precision> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = Precision::ALL.iter().map(|p| p.name()).collect();
    clap::builder::PossibleValuesParser::new(names)
        .map(|s| s.parse::<Precision>().expect("a possible value"))
}

/// The backend names as clap's possible values (listed in `--help`), parsed into the library's
/// [`BackendKind`]: the library knows nothing of clap.
pub fn backend_parser() -> impl clap::builder::TypedValueParser<Value = BackendKind> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = BackendKind::ALL.iter().map(|b| b.name()).collect();
    clap::builder::PossibleValuesParser::new(names)
        .map(|s| s.parse::<BackendKind>().expect("a possible value"))
}

impl EngineArgs {
    /// Creates the backend these options ask for.
    /// The backend, with at most as many threads as the machine has cores (more only wait on
    /// each other: 1024 threads on 2 cores made one image take minutes); a warning says so.
    pub fn backend(&self) -> Result<Box<dyn Backend>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if self.threads > cores {
            log::warn!(
                "--threads {} is more than the {cores} cores here: using {cores}",
                self.threads
            );
            cores
        } else {
            self.threads
        };
        self.backend.create(&EngineOptions { threads })
    }

    /// Opens a bundle with these options, resolving `--precision auto` for this backend.
    pub fn open_bundle(&self, dir: &std::path::Path) -> Result<Bundle> {
        Bundle::open_choosing(
            dir,
            !self.no_verify,
            self.precision,
            self.allow_ungated,
            self.backend.name(),
        )
    }
}

/// Options of the prompting loop, shared by `segment`, `bench` and `run`.
#[derive(Debug, Clone, Args)]
pub struct LoopArgs {
    /// Steps after the two start points (default: the bundle's max_steps).
    #[arg(long, value_parser = validate::count(0, crate::bundle::manifest::MAX_STEPS as u64))]
    pub steps: Option<usize>,
    /// Time budget per frame in milliseconds (encoder included): the loop does not start a step
    /// that its running mean step time says would overrun.
    #[arg(long, value_parser = validate::positive(0.0, 86_400_000.0).f64())]
    pub budget_ms: Option<f64>,
    /// Stop early when the IoU between successive masks reaches this value.
    #[arg(long, default_value_t = 0.99, conflicts_with = "no_early_stop", value_parser = validate::real(0.0, 1.0).f32())]
    pub stop_iou: f32,
    /// Never stop early on convergence (run until the step limit or the budget).
    #[arg(long)]
    pub no_early_stop: bool,
    /// Do not feed the previous low-resolution logits back as the decoder's mask input.
    #[arg(long)]
    pub no_mask_input: bool,
    /// Allow a click on a patch with the label it already had there (the paper; by default the
    /// loop forbids it, and a chooser that leaves the label to the SRM gets no patch twice).
    #[arg(long)]
    pub allow_repeats: bool,
    /// Return the last mask (the paper) instead of the one with the best estimated IoU among
    /// those the loop made (the clicker's quality estimate, or the decoder's IoU prediction).
    #[arg(long)]
    pub keep_last: bool,
    /// Which SRM map labels a step's point: `state`, the SRM on the step's state E * M (the
    /// paper), or `embedding`, its map on E alone, the one that placed the start points
    /// (default: the bundle's `[agent] step_labels`, the one its policy was trained with).
    #[arg(long)]
    pub step_labels: Option<StepLabels>,
}

impl LoopArgs {
    /// The loop options, with the bundle's step limit and step labels as the defaults.
    pub fn options(&self, agent: &AgentSection) -> Result<LoopOptions> {
        if let Some(b) = self.budget_ms
            && !(b > 0.0 && b.is_finite())
        {
            bail!("--budget-ms must be a positive number of milliseconds, got {b}");
        }
        if !(0.0..=1.0).contains(&self.stop_iou) {
            bail!("--stop-iou must be between 0 and 1, got {}", self.stop_iou);
        }
        Ok(LoopOptions {
            max_steps: self.steps.unwrap_or(agent.max_steps),
            budget: self.budget_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)),
            stop_iou: (!self.no_early_stop).then_some(self.stop_iou),
            feed_mask: !self.no_mask_input,
            forbid_repeats: !self.allow_repeats,
            keep_best: !self.keep_last,
            step_labels: self.step_labels.unwrap_or(agent.step_labels),
            srm_labels: false,
            trace: false,
        })
    }
}

/// Temporal reuse options, shared with `bench-reuse`.
#[derive(Debug, Clone, Args)]
pub struct ReuseArgs {
    /// Warm-start each frame from the previous one: its last points (relabelled by the SRM) as
    /// the start points and its final logits as the first mask input (beyond the paper).
    #[arg(long)]
    pub reuse: bool,
    /// With --reuse, how many of the previous frame's points to carry over (the most recent).
    #[arg(long, default_value_t = 6, value_parser = validate::count(1, 10_000))]
    pub reuse_points: usize,
}
