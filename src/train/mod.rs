//! Training (`alignsam train`): the policy with PPO and the SRM with Dice + BCE, on cached
//! embeddings, on a CPU, with candle for the networks and gradients.
//!
//! ```text
//! Dataset::open + validate -> EmbeddingCache::fill (encoder once per image)
//!   -> masks and SRM targets -> input statistics -> episodes (trainer: decoder at every step,
//!      SRM update per state, PPO after each episode)
//!   -> export ONNX (export) -> bundle.toml -> open the bundle and load an Agent from it
//!   -> candle-vs-tract check -> [held-out check through the inference loop (holdout)]
//!   -> train_log.csv (log), curves.png (plot), train_config.json
//! ```
//!
//! Modules: [`data`] (images, masks, targets, start points), [`nets`] (the candle networks),
//! [`ppo`] and [`srm_loss`] (the objectives), [`trainer`] (environment and loop), [`export`]
//! (ONNX files), [`log`] and [`plot`] (outputs), [`holdout`] (held-out numbers).
//!
//! Defaults and why (the paper gives the algorithm, not the networks or every constant):
//! - The paper's: the environment and reward, T = 15, PPO's clip 0.2, gamma 0.99, K = 20 epochs
//!   after each episode, Adam at 1e-4 (policy and SRM), q = 1 SRM update per state.
//! - PPO implementation details the paper does not state, all standard: value coefficient 0.5,
//!   entropy bonus 0.01, gradient norm clipped at 0.5, and advantages divided by their running
//!   RMS ([`ppo::AdvantageScale`]). Without the last two, the policy collapsed onto one patch
//!   (entropy 0.001), and one image where that patch missed then undid it in a single update
//!   (entropy back to 4.3 of ln 100 = 4.6): returns grow to tens once bootstrapped, so the
//!   entropy bonus was a thousand times too weak and Adam's steps too large after quiet spells.
//! - Networks ([`nets`]): average pools first (8x8 for the policy, 4x4 for the SRM), first layers
//!   16 wide, the policy's hidden layer 64: an episode's PPO update (20 epochs) costs about 50 ms
//!   and the 50 images of a run do not suffice for more parameters (a larger SRM overfits: its
//!   held-out IoU falls while its training IoU climbs).
//! - candle single-threaded (the CLI sets RAYON_NUM_THREADS=1 unless set): its operations here
//!   are small, and its worker pool slowed them 2-3x on a busy 2-core machine.
//! - Episodes: 8 passes over the images by default (400 for `--images 50`), 10-12 minutes on
//!   2 cores with MobileSAM's decoder, which takes 90% of the time (16 calls an episode).

pub mod clicker_net;
pub mod data;
pub mod episode_log;
pub mod export;
pub mod holdout;
pub mod im2col;
pub mod imitation;
pub mod nets;
pub mod plot;
pub mod ppo;
pub mod srm_loss;
pub mod trainer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::agent::Agent;
use crate::agent::state::{mask_probability, state};
use crate::bundle::manifest::{AgentKind, AgentSection, VariantFile};
use crate::bundle::{Bundle, InferOptions, OpenOptions, write_bundle};
use crate::cache::EmbeddingCache;
use crate::dataset::Dataset;
use crate::engine::{Backend, Precision};
use crate::sam::Decoder;
use crate::source::InputLimits;
pub use episode_log::EpisodeRecord;
pub use holdout::HoldoutReport;
pub use trainer::{TrainConfig, Trainer};

/// Default passes over the training images when no episode count is given.
pub const DEFAULT_PASSES: usize = 8;

/// Largest acceptable difference between candle and the exported files run by tract.
pub const EXPORT_TOLERANCE: f32 = 1e-4;

/// Output file names inside the output bundle.
pub mod files {
    /// The policy.
    pub const POLICY: &str = "policy.onnx";
    /// The SRM.
    pub const SRM: &str = "srm.onnx";
    /// The training log (one line per episode; the clicker's: per DAgger round).
    pub const LOG: &str = "train_log.csv";
    /// Learning curves.
    pub const CURVES: &str = "curves.png";
    /// Options, data, timings and results.
    pub const CONFIG: &str = "train_config.json";
}

/// Every name either kind of training writes into its output folder (the guard refuses an
/// output folder where one of them is not its own earlier output).
pub const OUTPUT_NAMES: &[&str] = &[
    files::POLICY,
    files::SRM,
    files::LOG,
    files::CURVES,
    files::CONFIG,
    imitation::files::CLICKER,
    imitation::files::TRUNK_LOG,
    "bundle.toml",
];

/// What a trained bundle takes from its source: SAM's encoder and decoder with their precision
/// variants and preprocessing, the agent's settings; the trainer names its own networks.
fn source_sam(source: &Bundle) -> InferOptions {
    let m = &source.manifest;
    let variant_paths = |variants: &std::collections::BTreeMap<String, VariantFile>| {
        variants
            .iter()
            .map(|(name, v)| (name.clone(), source.path(&v.file)))
            .collect()
    };
    InferOptions {
        encoder: Some(source.path(&m.models.encoder.file)),
        decoder: Some(source.path(&m.models.decoder.file)),
        encoder_variants: variant_paths(&m.models.encoder.variants),
        decoder_variants: variant_paths(&m.models.decoder.variants),
        agent: m.agent.clone(),
        pixel_mean: m.image.pixel_mean,
        pixel_std: m.image.pixel_std,
        ..InferOptions::default()
    }
}

/// Opens a trained output bundle (checksums) and loads its agent (model contracts), as `segment`
/// will; at the precision the job trained on, so that the held-out figures measure what was
/// trained (the source's gate record allowed it; the output has none of its own yet).
fn load_trained(out: &Path, precision: Precision, backend: &dyn Backend) -> Result<Agent> {
    let open = OpenOptions {
        precision,
        allow_ungated: true,
        ..OpenOptions::default()
    };
    let bundle = Bundle::open(out, open)?;
    Agent::load(&bundle, backend)
        .with_context(|| format!("{}: the trained bundle does not load", out.display()))
}

/// A training run: what to train on and where to write.
pub struct TrainJob<'a> {
    /// The source bundle (encoder and decoder).
    pub bundle: &'a Bundle,
    /// The backend for SAM and for checking the exports.
    pub backend: &'a dyn Backend,
    /// The training images (already cut to the number asked for).
    pub dataset: &'a Dataset,
    /// The embedding cache's root directory.
    pub cache_root: PathBuf,
    /// What reading an image may cost (the cache reads them to key and encode them).
    pub limits: InputLimits,
    /// The output bundle directory.
    pub out_dir: PathBuf,
    /// Options.
    pub config: TrainConfig,
    /// A held-out split to measure after training.
    pub holdout: Option<&'a Dataset>,
    /// Threads (recorded only).
    pub threads: usize,
}

/// The stages a run reports progress for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Encoding training images into the cache.
    Cache,
    /// Reading masks and building what each image needs (the clicker).
    Prepare,
    /// The clicker's trunk, by epoch.
    Trunk,
    /// The clicker's rollouts of one DAgger round, by image.
    Rollouts,
    /// The clicker's head after a round, by epoch.
    Fit,
    /// Training episodes.
    Train,
    /// Encoding held-out images into the cache.
    HoldoutCache,
    /// The held-out check.
    Holdout,
}

/// A progress event.
#[derive(Clone, Debug)]
pub enum Progress<'r> {
    /// A stage starts with this many items.
    Start(Stage, usize),
    /// Items done so far (and whether the last one was a cache hit, for cache stages).
    Advance(Stage, usize),
    /// An episode finished (all records so far, the last one just done).
    Episode(&'r [EpisodeRecord]),
    /// A stage ended.
    Done(Stage),
    /// A line of information (cache hits, timings).
    Note(String),
}

/// Wall time of each part of a run, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timing {
    /// Filling the embedding cache for the training images (encoder).
    pub cache_fill_s: f64,
    /// Embeddings computed (the rest were cache hits).
    pub cache_computed: usize,
    /// Masks, targets, input statistics, decoder load.
    pub prepare_s: f64,
    /// The episodes.
    pub training_s: f64,
    /// Mean seconds per episode.
    pub episode_s: f64,
    /// Where the training time went.
    pub phases: trainer::PhaseTimes,
    /// ONNX export, bundle, checks, log and plot.
    pub export_s: f64,
    /// Filling the cache for the held-out images.
    pub holdout_cache_fill_s: f64,
}

/// Means over the last episodes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FinalStats {
    /// Episodes averaged.
    pub episodes: usize,
    /// Mean episode reward.
    pub reward: f32,
    /// Mean hit rate.
    pub hit_rate: f32,
    /// Mean SRM loss.
    pub srm_loss: f32,
    /// Mean SRM map IoU.
    pub srm_iou: f32,
    /// Mean label accuracy.
    pub label_accuracy: f32,
    /// Mean final-mask IoU.
    pub mask_iou: f32,
}

impl FinalStats {
    /// Means over the last `n` records.
    pub fn of(records: &[EpisodeRecord], n: usize) -> Self {
        let m = |f: fn(&EpisodeRecord) -> f32| episode_log::tail_mean(records, n, f);
        FinalStats {
            episodes: n.min(records.len()),
            reward: m(|r| r.reward),
            hit_rate: m(|r| r.hit_rate),
            srm_loss: m(|r| r.srm_loss),
            srm_iou: m(|r| r.srm_iou),
            label_accuracy: m(|r| r.label_accuracy),
            mask_iou: m(|r| r.mask_iou),
        }
    }
}

/// Everything about a run (`train_config.json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainReport {
    /// This build's version.
    pub alignsam_version: String,
    /// The source bundle's directory and name.
    pub source_bundle: String,
    /// Its manifest name.
    pub source_name: String,
    /// The dataset directory.
    pub dataset: String,
    /// The split.
    pub split: String,
    /// Image ids, in split order.
    pub image_ids: Vec<String>,
    /// Every option.
    pub config: TrainConfig,
    /// The networks' sizes.
    pub arch: nets::Arch,
    /// The cache directory used.
    pub cache_dir: String,
    /// Threads per model run (0: all cores).
    pub threads: usize,
    /// Wall times.
    pub timing: Timing,
    /// Means over the last episodes (the last 10%, at least one).
    pub last_episodes: FinalStats,
    /// Means over the first episodes (as many), for comparison.
    pub first_episodes: FinalStats,
    /// candle vs the exported files run by the backend.
    pub export_check: export::ExportCheck,
    /// The held-out check, if asked for.
    pub holdout: Option<HoldoutReport>,
}

/// Only fills the embedding cache for the job's images (and the held-out ones): the first stage
/// of [`run`], for preparing a run ahead of time. Returns (computed, seconds).
pub fn fill_only(job: &TrainJob, progress: &mut dyn FnMut(Progress)) -> Result<(usize, f64)> {
    let cache = EmbeddingCache::new(
        &job.cache_root,
        &job.bundle.manifest,
        job.bundle.precision,
        job.limits,
    )?;
    let t = Instant::now();
    let mut computed = 0;
    for (stage, d) in [
        (Stage::Cache, Some(job.dataset)),
        (Stage::HoldoutCache, job.holdout),
    ] {
        let Some(d) = d else { continue };
        d.validate()?;
        progress(Progress::Start(stage, d.len()));
        computed += data::fill_cache(&cache, d, job.bundle, job.backend, |i, _| {
            progress(Progress::Advance(stage, i))
        })?;
        progress(Progress::Done(stage));
    }
    Ok((computed, t.elapsed().as_secs_f64()))
}

/// Runs a whole training job: cache, episodes, export, checks and outputs.
pub fn run(job: &TrainJob, progress: &mut dyn FnMut(Progress)) -> Result<TrainReport> {
    let manifest = &job.bundle.manifest;
    let config = job.config.clone();
    if config.episodes == 0 {
        bail!("the number of episodes must be at least 1");
    }
    let arch = config.arch(manifest.embedding.shape, manifest.agent.grid)?;
    // Bad data fails here, before minutes of encoding.
    job.dataset.validate()?;
    if let Some(h) = job.holdout {
        h.validate()?;
    }
    let mut timing = Timing::default();

    let cache = EmbeddingCache::new(&job.cache_root, manifest, job.bundle.precision, job.limits)?;
    let t = Instant::now();
    progress(Progress::Start(Stage::Cache, job.dataset.len()));
    timing.cache_computed =
        data::fill_cache(&cache, job.dataset, job.bundle, job.backend, |i, _| {
            progress(Progress::Advance(Stage::Cache, i))
        })?;
    progress(Progress::Done(Stage::Cache));
    timing.cache_fill_s = t.elapsed().as_secs_f64();
    progress(Progress::Note(format!(
        "embedding cache {}: {} computed, {} cached, {:.1} s",
        cache.dir().display(),
        timing.cache_computed,
        job.dataset.len() - timing.cache_computed,
        timing.cache_fill_s
    )));

    let t = Instant::now();
    let images = data::load_images(job.dataset, &cache, arch.srm_side(), |_| {})?;
    let norms = trainer::measure_norms(&images, &cache, &arch)?;
    let decoder = Decoder::load(job.backend, &job.bundle.decoder_path(), manifest)?;
    timing.prepare_s = t.elapsed().as_secs_f64();

    let out = &job.out_dir;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output directory", out.display()))?;
    // The log grows episode by episode, so that a long run can be watched (and an interrupted
    // one still leaves its curve).
    let mut csv = episode_log::CsvLog::create(&out.join(files::LOG))?;

    let t = Instant::now();
    let mut trainer = Trainer::new(config.clone(), arch, norms, &decoder, &cache, &images)?;
    let mut records: Vec<EpisodeRecord> = Vec::with_capacity(config.episodes);
    progress(Progress::Start(Stage::Train, config.episodes));
    for e in 0..config.episodes {
        let record = trainer.run_episode(e)?;
        csv.append(&record)?;
        records.push(record);
        progress(Progress::Episode(&records));
        progress(Progress::Advance(Stage::Train, e + 1));
    }
    progress(Progress::Done(Stage::Train));
    timing.training_s = t.elapsed().as_secs_f64();
    timing.episode_s = timing.training_s / config.episodes as f64;
    timing.phases = trainer.times().clone();

    let t = Instant::now();
    let policy_path = out.join(files::POLICY);
    let srm_path = out.join(files::SRM);
    export::save_policy(&trainer.policy, &policy_path)?;
    export::save_srm(&trainer.srm, &srm_path)?;
    write_output_manifest(job, &records)?;
    let agent = load_trained(out, job.bundle.precision, job.backend)?;

    // candle and the exported files on real states: s_0 and a gated state of the first image.
    let first = &images[0];
    let e = first.embedding(&cache)?;
    let half = crate::sam::Map {
        height: 4 * arch.side,
        width: 4 * arch.side,
        data: vec![0.0; 16 * arch.side * arch.side],
    };
    let states = [
        state(&e, None),
        state(&e, Some(&mask_probability(&half, arch.side, arch.side))),
    ];
    let export_check = export::compare(
        job.backend,
        &trainer.policy,
        &trainer.srm,
        &policy_path,
        &srm_path,
        &states,
    )?;
    if export_check.max() > EXPORT_TOLERANCE {
        log::warn!(
            "the exported networks differ from candle's by up to {:.2e} (tolerance {EXPORT_TOLERANCE:.0e}): {export_check:?}",
            export_check.max()
        );
    }
    let window = (config.episodes / 20).clamp(1, 50);
    let title = format!(
        "{} on {} ({}), seed {}",
        manifest.name,
        dataset_name(job.dataset.dir()),
        job.dataset.split(),
        config.seed
    );
    plot::draw_curves(&out.join(files::CURVES), &records, window, &title)?;
    timing.export_s = t.elapsed().as_secs_f64();

    let holdout = match job.holdout {
        None => None,
        Some(h) => {
            let t = Instant::now();
            progress(Progress::Start(Stage::HoldoutCache, h.len()));
            data::fill_cache(&cache, h, job.bundle, job.backend, |i, _| {
                progress(Progress::Advance(Stage::HoldoutCache, i))
            })?;
            progress(Progress::Done(Stage::HoldoutCache));
            timing.holdout_cache_fill_s = t.elapsed().as_secs_f64();
            let held = data::load_images(h, &cache, arch.srm_side(), |_| {})?;
            let prior = data::mean_target(&images);
            progress(Progress::Start(Stage::Holdout, held.len()));
            let report = holdout::evaluate(
                &agent,
                &held,
                &cache,
                &config.loop_options(),
                config.seed,
                prior.as_ref(),
                |i| progress(Progress::Advance(Stage::Holdout, i)),
            )?;
            progress(Progress::Done(Stage::Holdout));
            Some(report)
        }
    };

    let tail = (records.len() / 10).max(1);
    let report = TrainReport {
        alignsam_version: env!("CARGO_PKG_VERSION").into(),
        source_bundle: job.bundle.dir.display().to_string(),
        source_name: manifest.name.clone(),
        dataset: job.dataset.dir().display().to_string(),
        split: job.dataset.split().into(),
        image_ids: images.iter().map(|i| i.id.clone()).collect(),
        config,
        arch,
        cache_dir: cache.dir().display().to_string(),
        threads: job.threads,
        timing,
        last_episodes: FinalStats::of(&records, tail),
        first_episodes: FinalStats::of(&records[..tail.min(records.len())], tail),
        export_check,
        holdout,
    };
    let config_path = out.join(files::CONFIG);
    crate::sink::write_bytes_atomic(
        &config_path,
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )?;
    Ok(report)
}

/// A dataset's name: its directory's last component.
pub(crate) fn dataset_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// `bundle.toml` for the output: the source's encoder and decoder with their precision variants
/// (paths relative to the output directory; the fp32 files as the models, whatever precision
/// trained, so that the output never passes a quantised file off as fp32), its grid, step limit
/// and pixel statistics, and the new policy and SRM. The source's gate records stay behind: they
/// measured its own policy and SRM.
fn write_output_manifest(job: &TrainJob, records: &[EpisodeRecord]) -> Result<()> {
    let source = job.bundle;
    let m = &source.manifest;
    let options = InferOptions {
        name: Some(format!("{}-trained", m.name)),
        description: format!(
            "policy (PPO) and SRM (Dice + BCE) trained by alignsam train on {} split {} ({} images, {} episodes, seed {}, {} embeddings); SAM encoder and decoder from {}",
            dataset_name(job.dataset.dir()),
            job.dataset.split(),
            job.dataset.len(),
            records.len(),
            job.config.seed,
            source.precision.name(),
            source.dir.display()
        ),
        policy: Some(job.out_dir.join(files::POLICY)),
        srm: Some(job.out_dir.join(files::SRM)),
        clicker: None,
        stop_threshold: 0.5,
        // The source bundle's agent may be the clicker (the committed small SAM's is): what this
        // writes is the paper's agent, whatever the source ran.
        agent: AgentSection {
            kind: AgentKind::Paper,
            step_labels: job.config.step_labels,
            ..m.agent.clone()
        },
        ..source_sam(source)
    };
    write_bundle(&job.out_dir, &job.out_dir, &options)?;
    Ok(())
}
