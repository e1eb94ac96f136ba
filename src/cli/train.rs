//! `alignsam train`: the learned clicker by imitation of the oracle (`--agent clicker`, see
//! [`crate::train::imitation`]), or the paper's agent, PPO for the policy and Dice + BCE for the
//! SRM (`--agent paper`, see [`crate::train`]); on cached embeddings, then an output bundle that
//! `segment`, `bench` and `eval` load as is.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::ProgressBar;

use super::args::EngineArgs;
use crate::agent::{AgentKind, StepLabels};
use crate::dataset::Dataset;
use crate::source::InputLimits;
use crate::train::imitation::{self, ClickerConfig, ClickerJob};
use crate::train::nets::ActorKind;
use crate::train::{
    self, Progress, Stage, TrainConfig, TrainJob, episode_log::tail_mean, ppo::PpoConfig,
};

/// Arguments of `alignsam train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The SAM bundle to train with: its encoder and decoder (and, for the clicker, its SRM,
    /// which gives the start points; its policy is kept in the output as the paper's agent).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Which agent to train: `clicker` (imitation of the oracle, DAgger) or `paper` (PPO for
    /// the policy, Dice + BCE for the SRM).
    #[arg(long, default_value = "paper")]
    pub agent: AgentKind,
    /// Dataset directory (images/, masks/, splits/SPLIT.txt). The clicker takes it more than
    /// once: one clicker for the union of the datasets.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// The split to train on.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Train on the first N images of the split (of each dataset; default: all of them).
    #[arg(long, value_parser = super::validate::count(1, 100_000_000))]
    pub images: Option<usize>,
    /// Output bundle directory: the networks, bundle.toml, train_log.csv, curves.png,
    /// train_config.json (created if missing; those files are overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Whether existing files may be replaced.
    #[command(flatten)]
    pub write: super::args::WriteArgs,
    /// Clicker: DAgger rounds after the teacher's.
    #[arg(long, default_value_t = 3, value_parser = super::validate::count(0, 1000))]
    pub rounds: usize,
    /// Clicker: epochs of the trunk (the object map), before the rounds.
    #[arg(long, default_value_t = 12, value_parser = super::validate::count(0, 10_000))]
    pub trunk_epochs: usize,
    /// Clicker: cross-fitting folds; the head learns on object maps from trunks that did not
    /// see the image (1: none).
    #[arg(long, default_value_t = 4, value_parser = super::validate::count(1, 100))]
    pub trunk_folds: usize,
    /// Clicker: epochs of the head after each round, over every state so far.
    #[arg(long, default_value_t = 2, value_parser = super::validate::count(1, 10_000))]
    pub head_epochs: usize,
    /// Clicker: share of the training images held out for model selection, the stop threshold
    /// and the held-out report.
    #[arg(long, default_value_t = 0.1, value_parser = super::validate::real(0.0, 0.9).f64())]
    pub holdout: f64,
    /// Seed of the weights, the image order, the start points and the sampled actions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Episodes, one image each (default: 8 passes over the images).
    #[arg(long, value_parser = super::validate::count(1, 100_000_000))]
    pub episodes: Option<usize>,
    /// Steps per episode (default: the bundle's max_steps, the paper's 15).
    #[arg(long, value_parser = super::validate::count(1, crate::bundle::manifest::MAX_STEPS as u64))]
    pub steps: Option<usize>,
    /// Label the chosen points with the ground truth instead of the SRM.
    #[arg(long)]
    pub teacher_labels: bool,
    /// Which SRM map labels the chosen points: `state`, its map on E * M (the paper), or
    /// `embedding`, its map on E alone from the episode's start. Written to the new bundle's
    /// `[agent] step_labels`, so that inference labels as training did.
    #[arg(long, default_value = "state", conflicts_with = "teacher_labels")]
    pub step_labels: StepLabels,
    /// Embedding cache directory (default: $XDG_CACHE_HOME/alignsam/embeddings).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Start each episode as inference does, from the SRM's most and least probable cells,
    /// instead of random ground-truth points on and off the object (the paper).
    #[arg(long)]
    pub srm_start: bool,
    /// The policy's Adam learning rate.
    #[arg(long, default_value_t = 1e-4, value_parser = super::validate::positive(0.0, 1.0).f64())]
    pub lr: f64,
    /// The SRM's Adam learning rate.
    #[arg(long, default_value_t = 1e-4, value_parser = super::validate::positive(0.0, 1.0).f64())]
    pub srm_lr: f64,
    /// PPO epochs K after each episode.
    #[arg(long, default_value_t = 20, value_parser = super::validate::count(1, 10_000))]
    pub epochs: usize,
    /// Discount.
    #[arg(long, default_value_t = 0.99, value_parser = super::validate::real(0.0, 1.0).f32())]
    pub gamma: f32,
    /// PPO ratio clipping.
    #[arg(long, default_value_t = 0.2, value_parser = super::validate::positive(0.0, 10.0).f32())]
    pub clip: f32,
    /// Weight of the critic's squared error.
    #[arg(long, default_value_t = 0.5, value_parser = super::validate::real(0.0, 1000.0).f32())]
    pub value_coef: f32,
    /// Weight of the entropy bonus.
    #[arg(long, default_value_t = 0.01, value_parser = super::validate::real(0.0, 1000.0).f32())]
    pub entropy_coef: f32,
    /// Clip the policy's gradient to this global norm (0: no clipping).
    #[arg(long, default_value_t = 0.5, value_parser = super::validate::positive(0.0, 1.0e6).f32())]
    pub max_grad_norm: f32,
    /// Use raw advantages (return - value) instead of dividing them by their running RMS.
    #[arg(long)]
    pub raw_advantages: bool,
    /// Subtract each episode's mean advantage (before the RMS scaling), as PPO implementations
    /// often do. Off by default: on Kvasir-SEG (200 episodes) it raised the sampled hit rate
    /// during training but not the greedy policy's on the eval split.
    #[arg(long)]
    pub centre_advantages: bool,
    /// SRM updates q per state.
    #[arg(long, default_value_t = 1, value_parser = super::validate::count(1, 10_000))]
    pub srm_updates: usize,
    /// Reward shaping: subtracted when a patch is chosen again in an episode (paper: 0).
    #[arg(long, default_value_t = 0.0, value_parser = super::validate::real(0.0, 1000.0).f32())]
    pub repeat_penalty: f32,
    /// Forbid a patch already chosen in the episode, in the rollouts and in PPO's
    /// probabilities (paper: repeats allowed); run the bundle with `--no-repeat` too.
    #[arg(long)]
    pub no_repeat: bool,
    /// Reward shaping: this times the step's gain in mask IoU is added (paper: 0).
    #[arg(long, default_value_t = 0.0, value_parser = super::validate::real(0.0, 1000.0).f32())]
    pub iou_bonus: f32,
    /// Average pooling of the state before the policy.
    #[arg(long, default_value_t = 8, value_parser = super::validate::count(1, 4096))]
    pub policy_pool: usize,
    /// Average pooling of the state before the SRM (its map has 64 / this cells per side).
    #[arg(long, default_value_t = 4, value_parser = super::validate::count(1, 4096))]
    pub srm_pool: usize,
    /// Channels of the networks' first layer.
    #[arg(long, default_value_t = 16, value_parser = super::validate::count(1, 65_536))]
    pub width: usize,
    /// Hidden units of the policy's and the critic's fully connected layer.
    #[arg(long, default_value_t = 64, value_parser = super::validate::count(1, 1_048_576))]
    pub hidden: usize,
    /// The actor: `dense` (a fully connected layer over the pooled state) or `conv`
    /// (convolutions shared by every cell, then a small map from cells to patches).
    #[arg(long, default_value = "dense")]
    pub actor: ActorKind,
    /// After training, measure hit rates and SRM IoU on this split through the exported bundle,
    /// beside random-patch, centre-patch and constant-map baselines.
    #[arg(long)]
    pub eval_split: Option<String>,
    /// Use the first N images of --eval-split (default: all).
    #[arg(long, value_parser = super::validate::count(1, 100_000_000))]
    pub eval_images: Option<usize>,
    /// Only fill the embedding cache (training images, and --eval-split's), then stop.
    #[arg(long)]
    pub fill_cache_only: bool,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The run's options from the command line.
fn config(args: &TrainArgs, episodes: usize, bundle_steps: usize) -> TrainConfig {
    let mut config = TrainConfig::new(args.seed, episodes);
    config.steps = args.steps.unwrap_or(bundle_steps);
    config.teacher_labels = args.teacher_labels;
    config.step_labels = args.step_labels;
    config.srm_start = args.srm_start;
    config.lr = args.lr;
    config.srm_lr = args.srm_lr;
    config.srm_updates = args.srm_updates;
    config.ppo = PpoConfig {
        gamma: args.gamma,
        clip: args.clip,
        epochs: args.epochs,
        value_coef: args.value_coef,
        entropy_coef: args.entropy_coef,
        max_grad_norm: args.max_grad_norm,
        scale_advantages: !args.raw_advantages,
        centre_advantages: args.centre_advantages,
    };
    config.repeat_penalty = args.repeat_penalty;
    config.forbid_repeats = args.no_repeat;
    config.iou_bonus = args.iou_bonus;
    config.policy_pool = args.policy_pool;
    config.srm_pool = args.srm_pool;
    config.width = args.width;
    config.hidden = args.hidden;
    config.actor = args.actor;
    config
}

/// A progress bar per stage, and the notes between them.
fn progress_printer(hidden: bool) -> impl FnMut(Progress) {
    let mut current = ProgressBar::hidden();
    move |p: Progress| match p {
        Progress::Start(stage, n) => {
            let what = match stage {
                Stage::Cache => "images encoded",
                Stage::Prepare => "images prepared",
                Stage::Trunk => "trunk epochs",
                Stage::Rollouts => "rollouts",
                Stage::Fit => "head epochs",
                Stage::Train => "episodes",
                Stage::HoldoutCache => "held-out images encoded",
                Stage::Holdout => "held-out images",
            };
            current = super::output::progress(n, hidden, what);
        }
        Progress::Advance(_, i) => current.set_position(i as u64),
        Progress::Episode(records) => {
            let hit = tail_mean(records, 50, |r| r.hit_rate);
            let srm = tail_mean(records, 50, |r| r.srm_iou);
            let reward = tail_mean(records, 50, |r| r.reward);
            current.set_message(format!(
                "last 50: hit {hit:.3}, reward {reward:.2}, SRM IoU {srm:.3}"
            ));
        }
        Progress::Done(_) => current.finish_and_clear(),
        Progress::Note(line) => current.suspend(|| eprintln!("{line}")),
    }
}

/// What a training run reads (the source bundle, the datasets) and writes (the output bundle):
/// the output may not be the source bundle, nor lie in it or in a dataset.
fn output_plan(args: &TrainArgs) -> crate::sink::OutputPlan {
    let mut plan = crate::sink::OutputPlan::new("train", args.write.force)
        .input_dir(&args.bundle)
        .dir(&args.out, crate::train::OUTPUT_NAMES)
        .shared_dir(&args.cache.clone().unwrap_or_else(crate::cache::default_dir));
    for d in &args.data {
        plan = plan.input_dir(d);
    }
    plan
}

/// Runs `alignsam train --agent clicker`.
fn run_clicker(args: TrainArgs, limits: InputLimits) -> Result<ExitCode> {
    for d in &args.data {
        super::output::check_dataset_outputs(d, &args.out)?;
    }
    let _lock = output_plan(&args).check()?;
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let datasets = args
        .data
        .iter()
        .map(|d| Dataset::open_first(d, &args.split, args.images, limits))
        .collect::<Result<Vec<_>>>()?;
    let mut config = ClickerConfig::new(args.seed);
    config.steps = args.steps.unwrap_or(bundle.manifest.agent.max_steps);
    config.rounds = args.rounds;
    config.trunk_epochs = args.trunk_epochs;
    config.trunk_folds = args.trunk_folds;
    config.head_epochs = args.head_epochs;
    config.holdout = args.holdout;
    let backend = args.engine.backend()?;
    let job = ClickerJob {
        bundle: &bundle,
        backend: backend.as_ref(),
        datasets: &datasets,
        cache_root: args.cache.clone().unwrap_or_else(crate::cache::default_dir),
        limits,
        out_dir: args.out.clone(),
        config,
        threads: args.engine.threads,
    };
    let mut on_progress = progress_printer(args.no_progress);
    let r = imitation::run(&job, &mut on_progress)?;
    let t = &r.seconds;
    outln!(
        "trained a clicker into {} in {:.1} min on {}: cache fill {:.0} s, preparation {:.0} s, trunk {:.0} s, rollouts {:.0} s, head fits {:.0} s, export and checks {:.0} s",
        args.out.display(),
        t.total / 60.0,
        r.cpu,
        t.cache_fill,
        t.prepare,
        t.trunk,
        t.rollouts,
        t.fits,
        t.export
    );
    outln!(
        "kept round {} of {}; best patch {}; stop threshold {}; export check (candle vs {}): max |difference| {:.2e}",
        r.kept_round,
        r.rounds.len() - 1,
        r.best_patch,
        r.stop
            .as_ref()
            .map_or("0.5 (no held-out images)".into(), |s| s
                .threshold
                .to_string()),
        backend.name(),
        r.export_check
    );
    if let Some(h) = &r.holdout {
        let parts: Vec<String> = h
            .methods
            .iter()
            .map(|(m, iou, steps)| format!("{m} {iou:.3} ({steps:.1} steps)"))
            .collect();
        outln!(
            "held out ({} training images, the exported bundle's loop): mIoU {}",
            h.images,
            parts.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `alignsam train`.
pub fn run(args: TrainArgs, limits: InputLimits) -> Result<ExitCode> {
    // candle runs single-threaded unless RAYON_NUM_THREADS says otherwise: its operations here
    // are small (15 states of a few thousand values), and on 2 busy cores its spinning worker
    // pool made PPO updates 2-3x slower than one thread. --threads is for the SAM decoder.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no thread that reads the environment has started yet: this runs before any
        // model is loaded and before any candle operation.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    if args.agent == AgentKind::Clicker {
        return run_clicker(args, limits);
    }
    let [data] = args.data.as_slice() else {
        bail!(
            "the paper's agent trains on one dataset (--data given {} times)",
            args.data.len()
        );
    };
    super::output::check_dataset_outputs(data, &args.out)?;
    let _lock = output_plan(&args).check()?;
    let bundle = args.engine.open_bundle(&args.bundle)?;
    // --images and --eval-images are at least 1 (their parsers say so).
    let dataset = Dataset::open_first(data, &args.split, args.images, limits)?;
    let holdout = match &args.eval_split {
        Some(split) => Some(Dataset::open_first(data, split, args.eval_images, limits)?),
        None => None,
    };
    if args.episodes == Some(0) {
        bail!("--episodes must be at least 1");
    }
    let episodes = args
        .episodes
        .unwrap_or(train::DEFAULT_PASSES * dataset.len());
    let config = config(&args, episodes, bundle.manifest.agent.max_steps);

    let backend = args.engine.backend()?;
    let job = TrainJob {
        bundle: &bundle,
        backend: backend.as_ref(),
        dataset: &dataset,
        cache_root: args.cache.clone().unwrap_or_else(crate::cache::default_dir),
        limits,
        out_dir: args.out.clone(),
        config,
        holdout: holdout.as_ref(),
        threads: args.engine.threads,
    };
    let mut on_progress = progress_printer(args.no_progress);
    if args.fill_cache_only {
        let (computed, seconds) = train::fill_only(&job, &mut on_progress)?;
        outln!("embedding cache filled: {computed} computed in {seconds:.1} s");
        return Ok(ExitCode::SUCCESS);
    }
    let report = train::run(&job, &mut on_progress)?;

    let t = &report.timing;
    let (first, last) = (&report.first_episodes, &report.last_episodes);
    outln!("trained {} into {}", report.source_name, args.out.display());
    outln!(
        "time: cache fill {:.1} s ({} computed), training {:.1} s ({} episodes, {:.2} s each), preparation {:.1} s, export and checks {:.1} s",
        t.cache_fill_s,
        t.cache_computed,
        t.training_s,
        report.config.episodes,
        t.episode_s,
        t.prepare_s,
        t.export_s
    );
    let ph = &t.phases;
    outln!(
        "training time by part: decoder {:.1} s, PPO updates {:.1} s, SRM {:.1} s, policy rollouts {:.1} s, states {:.1} s, cache reads {:.1} s",
        ph.decoder_s,
        ph.ppo_s,
        ph.srm_s,
        ph.policy_s,
        ph.state_s,
        ph.cache_s
    );
    outln!(
        "first {} episodes: hit rate {:.3}, reward {:.2}, SRM IoU {:.3}, label accuracy {:.3}",
        first.episodes,
        first.hit_rate,
        first.reward,
        first.srm_iou,
        first.label_accuracy
    );
    outln!(
        "last {} episodes:  hit rate {:.3}, reward {:.2}, SRM IoU {:.3}, label accuracy {:.3}",
        last.episodes,
        last.hit_rate,
        last.reward,
        last.srm_iou,
        last.label_accuracy
    );
    outln!(
        "export check (candle vs {}): max |difference| {:.2e}",
        backend.name(),
        report.export_check.max()
    );
    if let Some(h) = &report.holdout {
        outln!(
            "held out ({} images, {} steps, {:.1} s): hit rate policy {:.3}, random {:.3}, centre {:.3}; SRM IoU {:.3}, constant map {:.3}{}",
            h.images,
            h.steps,
            h.seconds,
            h.policy.hit_rate,
            h.random.hit_rate,
            h.centre.hit_rate,
            h.srm_iou,
            h.constant_iou,
            h.prior_iou
                .map(|p| format!(", training mean map {p:.3}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TrainArgs,
    }

    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        let w = Wrapper::parse_from(["train", "--bundle", "b", "--data", "d", "--out", "o"]);
        assert_eq!(config(&w.args, 400, 15), TrainConfig::new(0, 400));
    }
}
