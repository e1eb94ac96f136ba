//! `alignsam eval`: the prompting loop on a dataset split, the bundle's policy beside the
//! baselines (random patches, the centre patch, the SRM alone) and the ground-truth oracle, on
//! the same cached embeddings. Writes a table (stdout and `report.md`), `per_image.csv`,
//! `oracle_curve.csv` (when the oracle runs) and `montage.png`.
//!
//! The evaluation itself is the library's ([`crate::eval::driver::run`]); this file reads the
//! flags, checks the outputs, shows progress and writes `report.md` with the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::ProgressBar;

use super::output::{check_dataset_outputs, progress};

use super::args::{EngineArgs, LoopArgs};
use crate::agent::{Agent, LoopOptions};
use crate::bundle::manifest::AgentSection;
use crate::cache::{EmbeddingCache, default_dir};
use crate::dataset::Dataset;
use crate::eval::report::{RunInfo, markdown, text_table};
use crate::eval::{EvalJob, EvalProgress, Method, default_methods};
use crate::exit::EXIT_PARTIAL;
use crate::source::InputLimits;

/// `LoopArgs`'s default `--stop-iou`, to tell whether one was given (eval ignores it without
/// `--early-stop`, and says so rather than dropping it silently). A test keeps the two equal.
const LOOP_ARGS_DEFAULT_STOP_IOU: f32 = 0.99;

/// Arguments of `alignsam eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Bundle directory (SAM encoder and decoder, policy, SRM).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Dataset directory: images/ID.jpg, masks/ID.png, splits/SPLIT.txt.
    #[arg(long)]
    pub data: PathBuf,
    /// The split to evaluate.
    #[arg(long, default_value = "eval")]
    pub split: String,
    /// Evaluate only the first N images of the split (split-file order).
    #[arg(long, value_parser = super::validate::count(1, 100_000_000))]
    pub images: Option<usize>,
    /// Output directory for report.md, per_image.csv and montage.png.
    #[arg(long, short = 'o', default_value = "out/eval")]
    pub out: PathBuf,
    /// Whether existing files may be replaced.
    #[command(flatten)]
    pub write: super::args::WriteArgs,
    /// Embedding cache directory (default: $XDG_CACHE_HOME/alignsam/embeddings).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Methods to run, comma-separated, in report order: clicker, clicker-no-stop, policy,
    /// policy-sample (the policy's patches drawn from its softmax, seeded per image), random,
    /// centre, best-patch, srm-only, srm-error, teacher (the oracle's click at each step of the
    /// loop), oracle (clicks from the ground truth from scratch; `--methods oracle` checks any
    /// bundle's decoder). Default: the agents the bundle has, every baseline it allows, and the
    /// oracle.
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<Method>>,
    /// Where the points' labels come from: `own` (each method's: the clicker's and the teacher's
    /// own, the SRM's for the others), `srm` (the SRM's for every step, whatever the method
    /// says) or `truth` (every point, start points too, from the ground truth). `srm` and
    /// `truth` together tell how much of a gap is *where* a method clicks and how much *which
    /// label*.
    #[arg(long, default_value = "own", value_parser = ["own", "srm", "truth"])]
    pub labels: String,
    /// Seed of the random-patch baseline and of policy-sample (mixed with each image id, so runs
    /// repeat).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images in the montage, one row each (0: no montage).
    #[arg(long, default_value_t = 6, value_parser = super::validate::count(0, 10_000))]
    pub montage: usize,
    /// Stop a loop when successive masks converge (at --stop-iou). Off by default in eval, so
    /// that every method gets the same number of points and hit rates compare per point.
    #[arg(long, conflicts_with = "no_early_stop")]
    pub early_stop: bool,
    /// The prompting loop's bounds and switches.
    #[command(flatten)]
    pub loop_args: LoopArgs,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Hide the progress bars (also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

impl EvalArgs {
    /// The loop options of every method: the bundle's step limit and step labels unless
    /// `--steps` and `--step-labels`, and no early stop unless `--early-stop`.
    fn options(&self, agent: &AgentSection) -> Result<LoopOptions> {
        if !self.early_stop && self.loop_args.stop_iou != LOOP_ARGS_DEFAULT_STOP_IOU {
            bail!(
                "--stop-iou needs --early-stop in eval (early stop is off by default, so that every method gets the same number of points)"
            );
        }
        let mut options = self.loop_args.options(agent)?;
        if !self.early_stop {
            options.stop_iou = None;
        }
        options.srm_labels = self.labels == "srm";
        options.trace = true;
        Ok(options)
    }
}

/// The command line, quoted for a POSIX shell, with the program called `alignsam`.
fn command_line() -> String {
    let quote = |a: String| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::iter::once("alignsam".to_string())
        .chain(std::env::args().skip(1).map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The methods in the order given, each once; an error for none or a repeat.
fn distinct_methods(methods: &[Method]) -> Result<Vec<Method>> {
    if methods.is_empty() {
        bail!("--methods lists no method");
    }
    let mut out: Vec<Method> = vec![];
    for &m in methods {
        if out.contains(&m) {
            bail!("--methods lists {m} twice");
        }
        out.push(m);
    }
    Ok(out)
}

/// A progress bar per pass, errors printed above it, notes between passes.
fn progress_printer(hidden: bool) -> impl FnMut(EvalProgress) {
    let mut bar = ProgressBar::hidden();
    move |p: EvalProgress| match p {
        EvalProgress::Start(what, n) => bar = progress(n, hidden, what),
        EvalProgress::Item(id) => bar.set_message(id.to_string()),
        EvalProgress::Advance => bar.inc(1),
        EvalProgress::Error(msg) => bar.suspend(|| eprintln!("error: {msg}")),
        EvalProgress::Done => bar.finish_and_clear(),
        EvalProgress::Note(line) => bar.suspend(|| eprintln!("{line}")),
    }
}

/// Runs `alignsam eval`.
pub fn run(args: EvalArgs, limits: InputLimits) -> Result<ExitCode> {
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let options = args.options(&bundle.manifest.agent)?;
    // The whole split too: the report says how much of it was evaluated. --images is at least 1
    // (its parser says so).
    let full = Dataset::open_with_limits(&args.data, &args.split, limits)?;
    let dataset = full.take(args.images.unwrap_or(full.len()));
    dataset.validate()?;

    let backend = args.engine.backend()?;
    let agent = Agent::load(&bundle, backend.as_ref())?;
    let methods = match &args.methods {
        Some(m) => distinct_methods(m)?,
        None => default_methods(&agent),
    };
    if agent.srm.needs_semantic() {
        bail!(
            "{}: the SRM is the explicit branch (needs a text-image similarity map per image); eval supports the implicit branch only",
            bundle.dir.display()
        );
    }
    check_dataset_outputs(&args.data, &args.out)?;
    let cache_root = args.cache.clone().unwrap_or_else(default_dir);
    let _lock = crate::sink::OutputPlan::new("eval", args.write.force)
        .input_dir(&args.data)
        .input_dir(&bundle.dir)
        .dir(&args.out, crate::eval::OUTPUT_NAMES)
        .shared_dir(&cache_root)
        .check()?;
    let cache = EmbeddingCache::new(&cache_root, &bundle.manifest, bundle.precision, limits)?;

    let samples = dataset.items();
    let job = EvalJob {
        agent: &agent,
        options: &options,
        methods: &methods,
        samples,
        cache: &cache,
        out: &args.out,
        seed: args.seed,
        truth_labels: args.labels == "truth",
        montage: args.montage,
    };
    let outcome = crate::eval::driver::run(&job, &mut progress_printer(args.no_progress))?;
    let failed = outcome.failed;
    let summary = outcome.summary;
    outln!("{}", text_table(&summary).trim_end_matches('\n'));
    let info = RunInfo {
        command: command_line(),
        dataset: args.data.display().to_string(),
        split: args.split.clone(),
        split_images: full.len(),
        requested: samples.len(),
        failed: failed.clone(),
        bundle: args.bundle.display().to_string(),
        bundle_name: bundle.manifest.name.clone(),
        bundle_description: bundle.manifest.description.clone(),
        grid: agent.grid.size,
        options,
        seed: args.seed,
        labels: args.labels.clone(),
        cache_hits: outcome.cache_hits,
        cache_computed: outcome.cache_computed,
        cache_seconds: outcome.cache_seconds,
        engine: match args.engine.threads {
            0 => format!(
                "{:?}, all cores ({} available)",
                args.engine.backend,
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            n => format!("{:?}, {n} threads", args.engine.backend),
        },
    };
    let report_path = args.out.join("report.md");
    crate::sink::write_bytes_atomic(&report_path, markdown(&info, &summary).as_bytes())?;
    let written: Vec<PathBuf> = std::iter::once(report_path)
        .chain(outcome.written)
        .collect();
    eprintln!(
        "wrote {}",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !failed.is_empty() {
        eprintln!(
            "error: {} of {} images failed (see the errors above; they are left out of every figure)",
            failed.len(),
            samples.len()
        );
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::agent::StepLabels;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn parse(extra: &[&str]) -> Result<EvalArgs, clap::Error> {
        let base = ["alignsam", "--bundle", "b", "--data", "d"];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.eval)
    }

    #[test]
    fn early_stop_is_off_unless_asked() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            a.loop_args.stop_iou, LOOP_ARGS_DEFAULT_STOP_IOU,
            "LoopArgs's default --stop-iou changed"
        );
        let paper = AgentSection::default();
        assert_eq!(a.options(&paper).unwrap().stop_iou, None);
        assert_eq!(a.options(&paper).unwrap().max_steps, 15);
        let a = parse(&["--early-stop", "--stop-iou", "0.9", "--steps", "4"]).unwrap();
        assert_eq!(a.options(&paper).unwrap().stop_iou, Some(0.9));
        assert_eq!(a.options(&paper).unwrap().max_steps, 4);
        assert!(
            parse(&["--stop-iou", "0.9"])
                .unwrap()
                .options(&paper)
                .is_err()
        );
        assert!(parse(&["--early-stop", "--no-early-stop"]).is_err());
    }

    #[test]
    fn step_labels_follow_the_bundle_unless_given() {
        let trained = AgentSection {
            step_labels: StepLabels::Embedding,
            ..AgentSection::default()
        };
        let bundle_says = parse(&[]).unwrap().options(&trained).unwrap();
        assert_eq!(bundle_says.step_labels, StepLabels::Embedding);
        let given = parse(&["--step-labels", "state"]).unwrap();
        assert_eq!(
            given.options(&trained).unwrap().step_labels,
            StepLabels::State
        );
        let err = parse(&["--step-labels", "mask"]).unwrap_err().to_string();
        assert!(err.contains("state, embedding"), "{err}");
    }
}
