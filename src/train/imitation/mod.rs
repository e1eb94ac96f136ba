//! Training the learned clicker (`alignsam train --agent clicker`) by imitation of the
//! ground-truth oracle on its own rollouts (DAgger), on cached embeddings, on a CPU.
//!
//! ```text
//! datasets -> EmbeddingCache::fill -> per image: truth at low resolution, SRM map on E, pooled E
//!   -> trunk: BCE + Dice of the object logits against the object (fit images), then frozen
//!   -> round 0: the teacher's rollouts; rounds 1..=R: the clicker's own (greedy, some random
//!      actions); every state labelled by the teacher (dense depth targets, its action, stop
//!      and quality targets), all rounds' states kept; the head fitted after each round
//!   -> the best round's head on the held-out training images (the loop as inference runs it)
//!   -> the stop threshold chosen on them -> clicker.onnx, bundle.toml -> the bundle loaded
//!   -> candle-vs-backend check -> the held-out images through the real loop: clicker, clicker
//!      without stop, the centre patch, the srm-error rule
//!   -> train_log.csv, trunk_log.csv, curves.png, train_config.json
//! ```
//!
//! Why imitation and not the paper's PPO: the paper's reward (+1 on the object) is maximised by
//! the single most-likely-object patch, and eight rounds of PPO changes here tied the centre
//! patch (README, docs/experiments.md). Every learned clicker that works supervises its clicks
//! with a simulated user and lets the agent pick the label (../shared/notes/learned-clickers.md).
//! DAgger, because a clicker trained only on the teacher's states never learns to recover from
//! its own mistakes.

pub mod fit;
pub mod rollout;
pub mod samples;
pub mod teacher;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use self::fit::{FitConfig, HeadLosses};
use self::rollout::{Driver, Env, Trajectory};
use self::samples::{ImageData, Sample};
use self::teacher::{LowResTruth, low_res_pixel};
use super::clicker_net::{ClickerArch, ClickerNet};
use super::nets::InputNorm;
use super::{Progress, Stage, dataset_name};
use crate::agent::ground_truth::{frame_target, hit};
use crate::agent::state::state;
use crate::agent::{Agent, FrameMap, LoopOptions, PatchGrid, Srm};
use crate::bundle::manifest::{AgentKind, AgentSection};
use crate::bundle::{Bundle, InferOptions, write_bundle};
use crate::cache::EmbeddingCache;
use crate::dataset::Dataset;
use crate::engine::Backend;
use crate::sam::Decoder;
use crate::source::InputLimits;

/// Output file names inside the output bundle: the log (one line per DAgger round), curves and
/// configuration are named as the paper agent's training names them.
pub mod files {
    pub use crate::train::files::{CONFIG, CURVES, LOG};
    /// The clicker.
    pub const CLICKER: &str = "clicker.onnx";
    /// One line per trunk epoch.
    pub const TRUNK_LOG: &str = "trunk_log.csv";
}

/// Every option of a clicker training run (written to `train_config.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClickerConfig {
    /// Seed of every random draw (weights, splits, orders, exploration).
    pub seed: u64,
    /// Steps per rollout (the loop's budget).
    pub steps: usize,
    /// DAgger rounds after the teacher's.
    pub rounds: usize,
    /// Epochs of the trunk.
    pub trunk_epochs: usize,
    /// Cross-fitting: the fit images are split into this many folds, and each fold's object
    /// maps (what the head reads) come from a trunk trained on the other folds (1: no
    /// cross-fitting, the final trunk's own maps).
    pub trunk_folds: usize,
    /// Epochs of the head after each round, over every state gathered so far.
    pub head_epochs: usize,
    /// Chance of a random free action in the clicker's rollouts.
    pub explore: f64,
    /// A state's stop target is true when no later click of its rollout raises the best IoU
    /// so far by this much.
    pub stop_gain: f32,
    /// Share of the training images held out (model selection, the stop threshold, the
    /// held-out report).
    pub holdout: f64,
    /// The trunk's optimiser.
    pub trunk: FitConfig,
    /// The head's optimiser and loss weights.
    pub head: FitConfig,
    /// Trunk width.
    pub width: usize,
    /// Head width.
    pub head_width: usize,
}

impl ClickerConfig {
    /// The defaults (`alignsam train --agent clicker`).
    pub fn new(seed: u64) -> Self {
        ClickerConfig {
            seed,
            steps: 15,
            rounds: 3,
            trunk_epochs: 12,
            trunk_folds: 4,
            head_epochs: 2,
            explore: 0.1,
            stop_gain: 0.01,
            holdout: 0.1,
            trunk: FitConfig {
                lr: 1e-3,
                batch: 16,
                teacher_weight: 0.0,
                dense_weight: 0.0,
                stop_weight: 0.0,
                quality_weight: 0.0,
                weight_decay: 1e-4,
            },
            head: FitConfig {
                lr: 1e-3,
                batch: 16,
                teacher_weight: 1.0,
                dense_weight: 0.1,
                stop_weight: 0.5,
                quality_weight: 0.5,
                weight_decay: 1e-4,
            },
            width: 32,
            head_width: 24,
        }
    }

    /// The network's sizes for an embedding shape.
    pub fn arch(&self, embedding: [usize; 3]) -> Result<ClickerArch> {
        let [c, h, w] = embedding;
        if h != w {
            bail!("the clicker needs a square embedding, the bundle's is {c}x{h}x{w}");
        }
        let arch = ClickerArch {
            width: self.width,
            head_width: self.head_width,
            ..ClickerArch::new(c, h)
        };
        arch.validate()?;
        Ok(arch)
    }
}

/// A clicker training run.
pub struct ClickerJob<'a> {
    /// The source bundle: its encoder, decoder and SRM (the start points); its policy, if any,
    /// is kept in the output as the paper's agent.
    pub bundle: &'a Bundle,
    /// The backend for SAM and for checking the export.
    pub backend: &'a dyn Backend,
    /// The training images: one dataset, or several (one clicker for every task).
    pub datasets: &'a [Dataset],
    /// The embedding cache's root directory.
    pub cache_root: PathBuf,
    /// What reading an image may cost (the cache reads them to key and encode them).
    pub limits: InputLimits,
    /// The output bundle directory.
    pub out_dir: PathBuf,
    /// Options.
    pub config: ClickerConfig,
    /// Threads (recorded only).
    pub threads: usize,
}

/// One trunk epoch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrunkEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean BCE + Dice.
    pub loss: f32,
    /// Mean IoU of the object map on the held-out images.
    pub holdout_object_iou: f32,
    /// Seconds.
    pub seconds: f64,
}

/// One DAgger round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RoundRecord {
    /// 0: the teacher's rollouts.
    pub round: usize,
    /// States gathered this round and in all.
    pub states: usize,
    /// All states so far.
    pub total_states: usize,
    /// Mean IoU of the rollouts' masks after 0, 1, 5 and all steps (the driver's).
    pub rollout_iou: Vec<f32>,
    /// Share of states where the clicker chose the teacher's action (rounds > 0).
    pub agreement: f32,
    /// The head's losses in its last epoch.
    pub losses: HeadLosses,
    /// The held-out images after this round's fit: mean IoU with budgets 0, 1, 3, 5, 10 and
    /// all steps, the clicker greedy, no stop, its best estimated mask kept.
    pub holdout_iou: Vec<f32>,
    /// The same with the last mask kept (what the clicks alone do).
    pub holdout_last: Vec<f32>,
    /// The same with the truly best mask kept (what a perfect quality estimate would give).
    pub holdout_best: Vec<f32>,
    /// The same with the mask that agrees best with the object map kept.
    pub holdout_soft: Vec<f32>,
    /// Seconds of rollouts and of fitting.
    pub seconds: [f64; 2],
}

/// The stop may cost at most this much held-out IoU against never stopping: a stop saves time,
/// and the latency target leaves room for more steps than the held-out images need.
pub const STOP_TOLERANCE: f32 = 0.002;

/// The budgets of the held-out curve.
pub const CURVE_BUDGETS: [usize; 6] = [0, 1, 3, 5, 10, 15];

/// The stop threshold's choice on the held-out images.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StopChoice {
    /// `(threshold, mean steps, mean IoU)` per candidate (above 1: never stop).
    pub candidates: Vec<(f32, f32, f32)>,
    /// The chosen threshold.
    pub threshold: f32,
}

/// The real inference loop on the held-out images through the exported bundle.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Holdout {
    /// Images.
    pub images: usize,
    /// Mean IoU per method, with the mean steps: clicker, clicker without stop, centre,
    /// srm-error.
    pub methods: Vec<(String, f64, f64)>,
}

/// Everything about a run (`train_config.json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClickerReport {
    /// This build's version.
    pub alignsam_version: String,
    /// The source bundle's directory.
    pub source_bundle: String,
    /// The datasets, as `DIR (SPLIT, N images)`.
    pub datasets: Vec<String>,
    /// Images fitted on, and held out.
    pub images: (usize, usize),
    /// Every option.
    pub config: ClickerConfig,
    /// The network's sizes.
    pub arch: ClickerArch,
    /// The patch most often on the object over the training images.
    pub best_patch: usize,
    /// The trunk's epochs.
    pub trunk: Vec<TrunkEpoch>,
    /// The rounds.
    pub rounds: Vec<RoundRecord>,
    /// The round whose head was kept (best held-out IoU with the full budget).
    pub kept_round: usize,
    /// The stop threshold's choice.
    pub stop: Option<StopChoice>,
    /// Largest |difference| between candle and the exported file run by the backend.
    pub export_check: f32,
    /// The held-out images through the real loop.
    pub holdout: Option<Holdout>,
    /// Seconds: cache fill, preparation, trunk, rounds, export and checks, total.
    pub seconds: Timing,
    /// The CPU, for the timings.
    pub cpu: String,
}

/// Wall time of each part, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timing {
    /// Filling the embedding cache.
    pub cache_fill: f64,
    /// Truth, SRM maps and pooled embeddings.
    pub prepare: f64,
    /// The trunk.
    pub trunk: f64,
    /// Rollouts (all rounds).
    pub rollouts: f64,
    /// Head fits (all rounds).
    pub fits: f64,
    /// Export, bundle, checks and the held-out loop.
    pub export: f64,
    /// Everything.
    pub total: f64,
}

/// Runs a clicker training job.
pub fn run(job: &ClickerJob, progress: &mut dyn FnMut(Progress)) -> Result<ClickerReport> {
    let started = Instant::now();
    let manifest = &job.bundle.manifest;
    let config = job.config.clone();
    let arch = config.arch(manifest.embedding.shape)?;
    if job.datasets.is_empty() {
        bail!("no training dataset");
    }
    let Some(srm_entry) = &manifest.models.srm else {
        bail!(
            "{}: the bundle has no [models.srm]; the clicker starts from the SRM's start points",
            job.bundle.dir.display()
        );
    };
    for d in job.datasets {
        d.validate()?;
    }
    let mut timing = Timing::default();
    let cache = EmbeddingCache::new(&job.cache_root, manifest, job.bundle.precision, job.limits)?;
    let t = Instant::now();
    for d in job.datasets {
        progress(Progress::Start(Stage::Cache, d.len()));
        super::data::fill_cache(&cache, d, job.bundle, job.backend, |i, _| {
            progress(Progress::Advance(Stage::Cache, i))
        })?;
        progress(Progress::Done(Stage::Cache));
    }
    timing.cache_fill = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let srm = Srm::load(job.backend, &job.bundle.path(&srm_entry.file), manifest)?;
    let grid = PatchGrid::new(manifest.agent.grid);
    let mut images = prepare_images(job.datasets, &cache, &srm, &arch, grid, progress)?;
    let decoder = Decoder::load(job.backend, &job.bundle.decoder_path(), manifest)?;
    timing.prepare = t.elapsed().as_secs_f64();

    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(5).wrapping_add(1));
    let (fit_idx, held_idx) = split(images.len(), config.holdout, &mut rng);
    progress(Progress::Note(format!(
        "{} training images: {} to fit, {} held out",
        images.len(),
        fit_idx.len(),
        held_idx.len()
    )));
    let norm = measure_norm(&images, &fit_idx, &arch)?;
    let net = ClickerNet::new(arch, norm, config.seed.wrapping_mul(5).wrapping_add(2))?;

    let t = Instant::now();
    // Cross-fitting: each fit image's object map from a trunk that did not see it, so that the
    // head learns how far such a map can be trusted.
    let mut oof = 0f32;
    let folds = folds(&fit_idx, config.trunk_folds);
    for (k, fold) in folds.iter().enumerate() {
        let others: Vec<usize> = fit_idx
            .iter()
            .filter(|i| !fold.contains(i))
            .copied()
            .collect();
        let seed = config.seed.wrapping_mul(5).wrapping_add(10 + k as u64);
        let fold_net = ClickerNet::new(arch, net.norm.clone(), seed)?;
        let what = format!("trunk of fold {} of {}", k + 1, folds.len());
        train_trunk(
            &fold_net,
            &images,
            &others,
            &[],
            &config,
            &mut rng,
            &what,
            progress,
        )?;
        fit::cache_object_maps(&fold_net, &mut images, fold)?;
        oof += fit::object_iou(&fold_net, &images, fold)? * fold.len() as f32;
    }
    let trunk = train_trunk(
        &net,
        &images,
        &fit_idx,
        &held_idx,
        &config,
        &mut rng,
        "final trunk",
        progress,
    )?;
    if folds.is_empty() {
        fit::cache_object_maps(&net, &mut images, &fit_idx)?;
    } else {
        progress(Progress::Note(format!(
            "object maps of the fit images from trunks that did not see them: IoU {:.3}",
            oof / fit_idx.len().max(1) as f32
        )));
    }
    fit::cache_object_maps(&net, &mut images, &held_idx)?;
    timing.trunk = t.elapsed().as_secs_f64();

    let env = Env {
        decoder: &decoder,
        cache: &cache,
        grid,
        srm_cells: srm.frame_map(),
        arch,
        steps: config.steps,
        stop_gain: config.stop_gain,
    };
    let out = &job.out_dir;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output directory", out.display()))?;
    let mut log = RoundLog::create(&out.join(files::LOG))?;
    let mut samples: Vec<Sample> = vec![];
    let mut rounds = vec![];
    let mut opt = fit::head_optimiser(&net, &config.head)?;
    let mut best: Option<(usize, f32, Vec<Vec<f32>>)> = None;
    if !held_idx.is_empty() {
        // The rules alone (the head untrained): where the clicker starts.
        let held = holdout_rollouts(&env, &images, &held_idx, &net, &mut rng)?;
        progress(Progress::Note(format!(
            "before imitation (the rules on the trunk's object map): held out {}",
            describe_curves(&held)
        )));
    }
    for round in 0..=config.rounds {
        let t = Instant::now();
        let driver = if round == 0 {
            Driver::Teacher
        } else {
            Driver::Learner {
                net: &net,
                explore: config.explore,
            }
        };
        progress(Progress::Start(Stage::Rollouts, fit_idx.len()));
        let mut trajectories = Vec::with_capacity(fit_idx.len());
        for (k, &i) in fit_idx.iter().enumerate() {
            trajectories.push(env.rollout(&images, i, &driver, &mut rng)?);
            progress(Progress::Advance(Stage::Rollouts, k + 1));
        }
        progress(Progress::Done(Stage::Rollouts));
        let gathered: usize = trajectories.iter().map(|t| t.samples.len()).sum();
        let rollout_iou = curve_of(&trajectories, &[0, 1, 5, config.steps], Keep::Last);
        let agreement = {
            let (a, n) = trajectories
                .iter()
                .fold((0, 0), |(a, n), t| (a + t.agreed.0, n + t.agreed.1));
            a as f32 / n.max(1) as f32
        };
        samples.extend(trajectories.into_iter().flat_map(|t| t.samples));
        let rollout_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        progress(Progress::Start(Stage::Fit, config.head_epochs));
        let mut losses = HeadLosses::default();
        for e in 0..config.head_epochs {
            losses = fit::head_epoch(&net, &mut opt, &images, &samples, &config.head, &mut rng)?;
            progress(Progress::Advance(Stage::Fit, e + 1));
        }
        progress(Progress::Done(Stage::Fit));
        let held = holdout_rollouts(&env, &images, &held_idx, &net, &mut rng)?;
        let holdout_iou = curve_of(&held, &CURVE_BUDGETS, Keep::Estimated);
        {
            let train_states: Vec<&Sample> = samples
                .iter()
                .step_by((samples.len() / 1500).max(1))
                .collect();
            let held_states: Vec<&Sample> = held.iter().flat_map(|t| &t.samples).collect();
            let (a, b, c) = choice_depths(&net, &images, &train_states)?;
            let (d, e, f) = choice_depths(&net, &images, &held_states)?;
            let w = net.head.rules.values()?;
            progress(Progress::Note(format!(
                "DIAG depth of the chosen click (px): training states learner {a:.2} rule {b:.2} teacher {c:.2}; held-out states learner {d:.2} rule {e:.2} teacher {f:.2}; rule weights {w:?}"
            )));
        }
        let record = RoundRecord {
            holdout_last: curve_of(&held, &CURVE_BUDGETS, Keep::Last),
            holdout_best: curve_of(&held, &CURVE_BUDGETS, Keep::TrulyBest),
            holdout_soft: curve_of(&held, &CURVE_BUDGETS, Keep::SoftIou),
            round,
            states: gathered,
            total_states: samples.len(),
            rollout_iou,
            agreement,
            losses,
            holdout_iou: holdout_iou.clone(),
            seconds: [rollout_s, t.elapsed().as_secs_f64()],
        };
        timing.rollouts += rollout_s;
        timing.fits += record.seconds[1];
        progress(Progress::Note(describe_round(&record)));
        log.append(&record)?;
        let score = holdout_iou.last().copied().unwrap_or(f32::NAN);
        if best
            .as_ref()
            .is_none_or(|(_, b, _)| score > *b || b.is_nan())
        {
            best = Some((round, score, snapshot(&net)?));
        }
        rounds.push(record);
    }
    let (kept_round, _, weights) = best.expect("at least one round");
    restore(&net, &weights)?;

    let t = Instant::now();
    let stop = if held_idx.is_empty() {
        None
    } else {
        let held = holdout_rollouts(&env, &images, &held_idx, &net, &mut rng)?;
        Some(choose_stop(&held))
    };
    let threshold = stop.as_ref().map_or(0.5, |s| s.threshold);
    let best_patch = best_patch(&images, grid);
    super::export::save_clicker(&net, &out.join(files::CLICKER))?;
    write_output_manifest(job, best_patch, threshold)?;
    let agent = super::load_trained(out, job.bundle.precision, job.backend)?;
    let export_check = super::export::compare_clicker(
        job.backend,
        &net,
        &out.join(files::CLICKER),
        &images[fit_idx[0]],
        &cache,
        &decoder,
        &srm,
    )?;
    if export_check > super::EXPORT_TOLERANCE {
        log::warn!(
            "the exported clicker differs from candle's by up to {export_check:.2e} (tolerance {:.0e})",
            super::EXPORT_TOLERANCE
        );
    }
    let holdout = (!held_idx.is_empty())
        .then(|| holdout_loop(&agent, &images, &held_idx, &cache, config.steps, progress))
        .transpose()?;
    draw_clicker_curves(&out.join(files::CURVES), &trunk, &rounds)?;
    write_trunk_log(&out.join(files::TRUNK_LOG), &trunk)?;
    timing.export = t.elapsed().as_secs_f64();
    timing.total = started.elapsed().as_secs_f64();

    let report = ClickerReport {
        alignsam_version: env!("CARGO_PKG_VERSION").into(),
        source_bundle: job.bundle.dir.display().to_string(),
        datasets: job
            .datasets
            .iter()
            .map(|d| format!("{} ({}, {} images)", d.dir().display(), d.split(), d.len()))
            .collect(),
        images: (fit_idx.len(), held_idx.len()),
        config,
        arch,
        best_patch,
        trunk,
        rounds,
        kept_round,
        stop,
        export_check,
        holdout,
        seconds: timing,
        cpu: crate::bundle::manifest::cpu_description(),
    };
    let path = out.join(files::CONFIG);
    crate::sink::write_bytes_atomic(
        &path,
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )?;
    Ok(report)
}

/// Every image of the datasets, ready: truth at low resolution, the SRM's map on E, the pooled
/// embedding, the patch centres' cells.
pub fn prepare_images(
    datasets: &[Dataset],
    cache: &EmbeddingCache,
    srm: &Srm,
    arch: &ClickerArch,
    grid: PatchGrid,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<ImageData>> {
    let total = datasets.iter().map(Dataset::len).sum();
    progress(Progress::Start(Stage::Prepare, total));
    let mut out = Vec::with_capacity(total);
    let cells = FrameMap {
        size: arch.map_side(),
    };
    let low_res = arch.mask_side();
    for d in datasets {
        let name = dataset_name(d.dir());
        for s in d.items() {
            let gt = s.load_mask()?;
            let Some((e, geometry)) = cache.get(&s.image_path)? else {
                bail!("{}: no cached embedding", s.image_path.display());
            };
            let (h, w) = geometry.original;
            if (gt.height, gt.width) != (h, w) {
                bail!(
                    "{} is {}x{} but {} is {w}x{h}",
                    s.mask_path.display(),
                    gt.width,
                    gt.height,
                    s.image_path.display()
                );
            }
            let srm_map = srm.predict(&state(&e, None), None)?;
            let truth = LowResTruth::new(&gt, &geometry, low_res);
            let k = low_res / arch.map_side();
            let mut valid = vec![false; arch.map_side() * arch.map_side()];
            for (i, &v) in truth.valid.iter().enumerate() {
                let (y, x) = (i / low_res, i % low_res);
                valid[(y / k) * arch.map_side() + x / k] |= v;
            }
            let centres: Vec<(f64, f64)> = (0..grid.len()).map(|p| grid.centre(p, h, w)).collect();
            out.push(ImageData {
                id: format!("{name}/{}", s.id),
                image_path: s.image_path.clone(),
                object: frame_target(&gt, &geometry, arch.trunk_side()),
                centre_cells: centres
                    .iter()
                    .map(|&(x, y)| cells.cell_at(x, y, &geometry))
                    .collect(),
                centre_pixels: centres
                    .iter()
                    .map(|&(x, y)| low_res_pixel(x, y, &geometry, low_res))
                    .collect(),
                valid,
                pooled: pool_embedding(&e.0, arch.pool),
                srm_map,
                truth,
                gt,
                geometry,
                object_map: None,
            });
            progress(Progress::Advance(Stage::Prepare, out.len()));
        }
    }
    progress(Progress::Done(Stage::Prepare));
    Ok(out)
}

/// `[1, C, H, W]` average-pooled by `k`: `[C, H/k, W/k]`, row-major.
fn pool_embedding(e: &crate::engine::Tensor, k: usize) -> Vec<f32> {
    let (c, h, w) = (e.shape()[1], e.shape()[2], e.shape()[3]);
    let (ph, pw) = (h / k, w / k);
    let mut out = vec![0f32; c * ph * pw];
    let norm = 1.0 / (k * k) as f32;
    for (i, v) in e.data().iter().enumerate() {
        let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
        out[(ch * ph + y / k) * pw + x / k] += v * norm;
    }
    out
}

/// Fit and held-out indices: `share` of the images (at least one when there are two or more)
/// held out, drawn by the seeded generator.
pub fn split(n: usize, share: f64, rng: &mut StdRng) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let held = if n < 2 || share <= 0.0 {
        0
    } else {
        ((n as f64 * share).round() as usize).clamp(1, n - 1)
    };
    let fit = idx.split_off(held);
    (fit, idx)
}

/// The standardisation of the pooled embeddings of the fit images.
pub fn measure_norm(images: &[ImageData], fit: &[usize], arch: &ClickerArch) -> Result<InputNorm> {
    let t = arch.trunk_side();
    let pooled = fit
        .iter()
        .map(|&i| {
            candle_core::Tensor::from_slice(
                &images[i].pooled,
                (1, arch.channels, t, t),
                &candle_core::Device::Cpu,
            )
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(InputNorm::measure(&pooled)?)
}

/// Mean true depth (low-resolution pixels) of the click the learner, the untrained rule and the
/// teacher choose, over states.
fn choice_depths(
    net: &ClickerNet,
    images: &[ImageData],
    states: &[&Sample],
) -> Result<(f32, f32, f32)> {
    let (mut l, mut r, mut t, mut n) = (0f32, 0f32, 0f32, 0usize);
    for x in states {
        let img = &images[x.image as usize];
        let scored = samples::score(net, img, x)?;
        let depth = |a: Option<usize>| a.map_or(0.0, |a| x.depths[a] as f32 / 4.0);
        l += depth(samples::best_action(&scored, img, &x.used));
        let o = img.object_map.as_ref().expect("maps");
        let mut rule = scored.scores.clone();
        for c in 0..o.len() {
            rule[c * 2] = 2.0 * (x.mask[c] - o[c]);
            rule[c * 2 + 1] = 2.0 * (o[c] - x.mask[c]);
        }
        let ruled = samples::Scored {
            scores: rule,
            stop: 0.0,
            quality: 0.0,
        };
        r += depth(samples::best_action(&ruled, img, &x.used));
        t += x
            .depths
            .iter()
            .enumerate()
            .filter(|(a, _)| !x.used.contains(&(*a as u16)))
            .map(|(_, &d)| d as f32 / 4.0)
            .fold(0.0, f32::max);
        n += 1;
    }
    let n = n.max(1) as f32;
    Ok((l / n, r / n, t / n))
}

/// The fit images in `k` folds (none for `k` below 2), round robin over their (shuffled) order.
fn folds(fit: &[usize], k: usize) -> Vec<Vec<usize>> {
    if k < 2 {
        return vec![];
    }
    let mut out = vec![vec![]; k.min(fit.len())];
    let n = out.len();
    for (j, &i) in fit.iter().enumerate() {
        out[j % n].push(i);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn train_trunk(
    net: &ClickerNet,
    images: &[ImageData],
    fit_idx: &[usize],
    held_idx: &[usize],
    config: &ClickerConfig,
    rng: &mut StdRng,
    what: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<TrunkEpoch>> {
    let mut opt = fit::trunk_optimiser(net, &config.trunk)?;
    let mut out = vec![];
    progress(Progress::Start(Stage::Trunk, config.trunk_epochs));
    for epoch in 1..=config.trunk_epochs {
        let t = Instant::now();
        let loss = fit::trunk_epoch(net, &mut opt, images, fit_idx, config.trunk.batch, rng)?;
        let iou = fit::object_iou(net, images, held_idx)?;
        out.push(TrunkEpoch {
            epoch,
            loss,
            holdout_object_iou: iou,
            seconds: t.elapsed().as_secs_f64(),
        });
        progress(Progress::Advance(Stage::Trunk, epoch));
    }
    progress(Progress::Done(Stage::Trunk));
    if let Some(last) = out.last() {
        // A fold's trunk has no held-out images of its own (the held-out set is the final
        // trunk's): its line says the loss only.
        let held = if last.holdout_object_iou.is_finite() {
            format!(", held-out object map IoU {:.3}", last.holdout_object_iou)
        } else {
            String::new()
        };
        progress(Progress::Note(format!(
            "{what}: loss {:.3}{held} after {} epochs",
            last.loss, last.epoch
        )));
    }
    Ok(out)
}

/// The clicker's greedy rollouts (no exploration) on the held-out images.
fn holdout_rollouts(
    env: &Env,
    images: &[ImageData],
    held: &[usize],
    net: &ClickerNet,
    rng: &mut StdRng,
) -> Result<Vec<Trajectory>> {
    let driver = Driver::Learner { net, explore: 0.0 };
    held.iter()
        .map(|&i| env.rollout(images, i, &driver, rng))
        .collect()
}

/// Which of a rollout's masks a budget returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// The last one.
    Last,
    /// The best estimated one (the clicker's quality head): what the loop does.
    Estimated,
    /// The truly best one: the bound of any quality estimate.
    TrulyBest,
    /// The one that agrees best with the object map (soft IoU).
    SoftIou,
}

/// The state a budget of `b` steps returns among the first `b + 1`.
fn kept(t: &Trajectory, b: usize, keep: Keep) -> usize {
    let last = b.min(t.ious.len() - 1);
    let by = |v: &[f32]| (0..=last).fold(0, |best, i| if v[i] > v[best] { i } else { best });
    match keep {
        Keep::Last => last,
        Keep::Estimated => by(&t.qualities),
        Keep::TrulyBest => by(&t.ious),
        Keep::SoftIou => by(&t.soft_ious),
    }
}

/// Mean IoU over trajectories of the mask each budget returns.
fn curve_of(ts: &[Trajectory], budgets: &[usize], keep: Keep) -> Vec<f32> {
    budgets
        .iter()
        .map(|&b| {
            let sum: f32 = ts.iter().map(|t| t.ious[kept(t, b, keep)]).sum();
            sum / ts.len().max(1) as f32
        })
        .collect()
}

/// The threshold with the fewest mean steps whose held-out IoU (best estimated mask kept up to
/// the stop) stays within [`STOP_TOLERANCE`] of never stopping.
fn choose_stop(ts: &[Trajectory]) -> StopChoice {
    let outcome = |threshold: f32| {
        let (mut steps, mut iou) = (0f32, 0f32);
        for t in ts {
            let last = t.ious.len() - 1;
            let stop = (0..last).find(|&i| t.stops[i] >= threshold).unwrap_or(last);
            steps += stop as f32;
            iou += t.ious[kept(t, stop, Keep::Estimated)];
        }
        let n = ts.len().max(1) as f32;
        (threshold, steps / n, iou / n)
    };
    let candidates: Vec<(f32, f32, f32)> = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.01]
        .into_iter()
        .map(outcome)
        .collect();
    let never = candidates.last().expect("candidates").2;
    // Among the fewest steps, the highest threshold: it stops only when surer.
    let threshold = candidates
        .iter()
        .filter(|c| c.2 >= never - STOP_TOLERANCE)
        .min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.total_cmp(&a.0)))
        .map_or(1.01, |c| c.0);
    StopChoice {
        candidates,
        threshold,
    }
}

/// The patch whose centre is most often on the object over the images.
fn best_patch(images: &[ImageData], grid: PatchGrid) -> usize {
    let mut counts = vec![0usize; grid.len()];
    for img in images {
        let (h, w) = img.geometry.original;
        for (p, c) in counts.iter_mut().enumerate() {
            let (x, y) = grid.centre(p, h, w);
            *c += hit(&img.gt, x, y) as usize;
        }
    }
    // The first of the most frequent.
    (0..grid.len())
        .max_by_key(|&p| (counts[p], std::cmp::Reverse(p)))
        .unwrap_or(0)
}

/// The held-out images through the exported bundle's real loop.
fn holdout_loop(
    agent: &Agent,
    images: &[ImageData],
    held: &[usize],
    cache: &EmbeddingCache,
    steps: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Holdout> {
    use crate::eval::{Method, MethodRunner};
    let methods = [
        Method::Clicker,
        Method::ClickerNoStop,
        Method::Centre,
        Method::SrmError,
    ];
    let options = LoopOptions::fixed_steps(steps);
    let runner = MethodRunner {
        agent,
        options: &options,
        methods: &methods,
        seed: 0,
        truth_labels: false,
    };
    let mut sums = vec![(0f64, 0f64); methods.len()];
    progress(Progress::Start(Stage::Holdout, held.len()));
    for (k, &i) in held.iter().enumerate() {
        let img = &images[i];
        let Some((e, g)) = cache.get(&img.image_path)? else {
            bail!("{}: no cached embedding", img.image_path.display());
        };
        let r = runner.run(&img.id, &e, &g, &img.gt)?;
        for (s, (_, result)) in sums.iter_mut().zip(&r.results) {
            s.0 += crate::agent::ground_truth::mask_iou(&result.mask, &img.gt.data);
            s.1 += result.steps as f64;
        }
        progress(Progress::Advance(Stage::Holdout, k + 1));
    }
    progress(Progress::Done(Stage::Holdout));
    let n = held.len().max(1) as f64;
    Ok(Holdout {
        images: held.len(),
        methods: methods
            .iter()
            .zip(sums)
            .map(|(m, (iou, steps))| (m.name().to_string(), iou / n, steps / n))
            .collect(),
    })
}

/// The head's weights, to keep the best round's.
fn snapshot(net: &ClickerNet) -> Result<Vec<Vec<f32>>> {
    net.head_params().iter().map(|p| Ok(p.values()?)).collect()
}

fn restore(net: &ClickerNet, weights: &[Vec<f32>]) -> Result<()> {
    for (p, w) in net.head_params().iter().zip(weights) {
        let t = candle_core::Tensor::from_slice(w, p.shape(), &candle_core::Device::Cpu)?;
        p.var.set(&t)?;
    }
    Ok(())
}

fn describe_curve(values: &[f32]) -> String {
    let curve: Vec<String> = CURVE_BUDGETS
        .iter()
        .zip(values)
        .map(|(b, v)| format!("T{b} {v:.3}"))
        .collect();
    curve.join(" ")
}

fn describe_curves(ts: &[Trajectory]) -> String {
    format!(
        "{} (last mask: {}; truly best: {}; best soft IoU with the object map: {})",
        describe_curve(&curve_of(ts, &CURVE_BUDGETS, Keep::Estimated)),
        describe_curve(&curve_of(ts, &CURVE_BUDGETS, Keep::Last)),
        describe_curve(&curve_of(ts, &CURVE_BUDGETS, Keep::TrulyBest)),
        describe_curve(&curve_of(ts, &CURVE_BUDGETS, Keep::SoftIou))
    )
}

fn describe_round(r: &RoundRecord) -> String {
    let curve = [
        describe_curve(&r.holdout_iou),
        format!(
            "(last mask: {}; truly best: {}; best soft IoU with the object map: {})",
            describe_curve(&r.holdout_last),
            describe_curve(&r.holdout_best),
            describe_curve(&r.holdout_soft)
        ),
    ];
    format!(
        "round {}: {} states ({} in all), rollouts T0/T1/T5/T{} {:.3}/{:.3}/{:.3}/{:.3}, agreement with the teacher {:.2}; losses dense {:.3} teacher {:.3} stop {:.3} quality {:.3}; held out {}; {:.0} s + {:.0} s",
        r.round,
        r.states,
        r.total_states,
        CURVE_BUDGETS[CURVE_BUDGETS.len() - 1],
        r.rollout_iou[0],
        r.rollout_iou[1],
        r.rollout_iou[2],
        r.rollout_iou[3],
        r.agreement,
        r.losses.dense,
        r.losses.teacher,
        r.losses.stop,
        r.losses.quality,
        curve.join(" "),
        r.seconds[0],
        r.seconds[1]
    )
}

/// `train_log.csv`, one line per round, written as the rounds end.
struct RoundLog {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl RoundLog {
    fn create(path: &std::path::Path) -> Result<Self> {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(crate::sink::create_streamed(path)?);
        let curve: Vec<String> = CURVE_BUDGETS
            .iter()
            .map(|b| format!("holdout_iou_t{b}"))
            .collect();
        writeln!(
            file,
            "round,states,total_states,rollout_iou_t0,rollout_iou_t1,rollout_iou_t5,rollout_iou_last,agreement,loss_dense,loss_teacher,loss_stop,loss_quality,{},rollout_s,fit_s",
            curve.join(",")
        )?;
        Ok(RoundLog {
            file,
            path: path.to_path_buf(),
        })
    }

    fn append(&mut self, r: &RoundRecord) -> Result<()> {
        use std::io::Write;
        let curve: Vec<String> = r.holdout_iou.iter().map(|v| format!("{v:.5}")).collect();
        writeln!(
            self.file,
            "{},{},{},{:.5},{:.5},{:.5},{:.5},{:.4},{:.5},{:.5},{:.5},{:.5},{},{:.1},{:.1}",
            r.round,
            r.states,
            r.total_states,
            r.rollout_iou[0],
            r.rollout_iou[1],
            r.rollout_iou[2],
            r.rollout_iou[3],
            r.agreement,
            r.losses.dense,
            r.losses.teacher,
            r.losses.stop,
            r.losses.quality,
            curve.join(","),
            r.seconds[0],
            r.seconds[1]
        )?;
        self.file
            .flush()
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

fn write_trunk_log(path: &std::path::Path, epochs: &[TrunkEpoch]) -> Result<()> {
    let mut text = String::from("epoch,loss,holdout_object_iou,seconds\n");
    for e in epochs {
        text += &format!(
            "{},{:.5},{:.5},{:.1}\n",
            e.epoch, e.loss, e.holdout_object_iou, e.seconds
        );
    }
    crate::sink::write_bytes_atomic(path, text.as_bytes())
}

/// `bundle.toml` for the output: the source's encoder and decoder with their variants, its SRM
/// and its policy (the paper's agent, kept for comparison), and the clicker as the agent.
fn write_output_manifest(job: &ClickerJob, best_patch: usize, stop_threshold: f32) -> Result<()> {
    let source = job.bundle;
    let m = &source.manifest;
    let names: Vec<String> = job
        .datasets
        .iter()
        .map(|d| format!("{} ({})", dataset_name(d.dir()), d.split()))
        .collect();
    let options = InferOptions {
        name: Some(format!("{}-clicker", m.name)),
        description: format!(
            "learned clicker trained by alignsam train --agent clicker (imitation of the oracle, DAgger, seed {}) on {}; SAM encoder and decoder, SRM{} from {}",
            job.config.seed,
            names.join(", "),
            if m.models.policy.is_some() {
                " and the paper's policy"
            } else {
                ""
            },
            source.dir.display()
        ),
        policy: m.models.policy.as_ref().map(|p| source.path(&p.file)),
        srm: m.models.srm.as_ref().map(|s| source.path(&s.file)),
        clicker: Some(job.out_dir.join(files::CLICKER)),
        stop_threshold,
        agent: AgentSection {
            kind: AgentKind::Clicker,
            best_patch: Some(best_patch),
            max_steps: job.config.steps,
            ..m.agent.clone()
        },
        ..super::source_sam(source)
    };
    write_bundle(&job.out_dir, &job.out_dir, &options)?;
    Ok(())
}

/// The clicker's curves: the trunk by epoch (loss, held-out object IoU), the rounds (held-out
/// IoU by budget, agreement with the teacher, the head's losses).
fn draw_clicker_curves(
    path: &std::path::Path,
    trunk: &[TrunkEpoch],
    rounds: &[RoundRecord],
) -> Result<()> {
    use super::plot::{GridPanel, Series, draw_panel_grid};
    let epochs = |f: fn(&TrunkEpoch) -> f32| -> Vec<(f32, f32)> {
        trunk.iter().map(|e| (e.epoch as f32, f(e))).collect()
    };
    let by_round = |f: &dyn Fn(&RoundRecord) -> f32| -> Vec<(f32, f32)> {
        rounds.iter().map(|r| (r.round as f32, f(r))).collect()
    };
    let names: Vec<String> = CURVE_BUDGETS.iter().map(|b| format!("T = {b}")).collect();
    let curves: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            (
                n.as_str(),
                by_round(&|r| r.holdout_iou.get(k).copied().unwrap_or(f32::NAN)),
            )
        })
        .collect();
    let panels = [
        GridPanel {
            title: "trunk: loss (BCE + Dice) and held-out object map IoU",
            x_desc: "epoch",
            series: vec![
                ("loss", epochs(|e| e.loss)),
                ("object IoU", epochs(|e| e.holdout_object_iou)),
            ],
        },
        GridPanel {
            title: "held-out IoU by budget",
            x_desc: "round",
            series: curves,
        },
        GridPanel {
            title: "agreement with the teacher",
            x_desc: "round",
            series: vec![("agreement", by_round(&|r| r.agreement))],
        },
        GridPanel {
            title: "head losses (last epoch of the round)",
            x_desc: "round",
            series: vec![
                ("dense", by_round(&|r| r.losses.dense)),
                ("teacher", by_round(&|r| r.losses.teacher)),
                ("stop", by_round(&|r| r.losses.stop)),
                ("quality", by_round(&|r| r.losses.quality)),
            ],
        },
    ];
    draw_panel_grid(
        path,
        "clicker: trunk by epoch, head by DAgger round",
        &panels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trajectory(ious: &[f32], qualities: &[f32], stops: &[f32]) -> Trajectory {
        Trajectory {
            samples: vec![],
            ious: ious.to_vec(),
            qualities: qualities.to_vec(),
            stops: stops.to_vec(),
            soft_ious: qualities.to_vec(),
            agreed: (0, 0),
        }
    }

    #[test]
    fn budgets_keep_the_best_estimated_mask() {
        let t = trajectory(&[0.5, 0.7, 0.4, 0.8], &[0.5, 0.9, 0.6, 0.7], &[0.0; 4]);
        assert_eq!(kept(&t, 0, Keep::Estimated), 0);
        assert_eq!(kept(&t, 3, Keep::Estimated), 1, "0.9 is the best estimate");
        assert_eq!(kept(&t, 3, Keep::TrulyBest), 3);
        assert_eq!(kept(&t, 2, Keep::Last), 2);
        assert_eq!(kept(&t, 10, Keep::Last), 3, "a budget beyond the rollout");
        assert_eq!(
            curve_of(&[t], &[0, 2, 3], Keep::Estimated),
            vec![0.5, 0.7, 0.7]
        );
    }

    #[test]
    fn the_stop_threshold_saves_steps_within_the_tolerance() {
        // Both images gain nothing after step 1; the stop probability rises to 0.8 there.
        let ts = vec![
            trajectory(
                &[0.5, 0.8, 0.8, 0.8],
                &[0.5, 0.8, 0.7, 0.7],
                &[0.35, 0.8, 0.9, 0.9],
            ),
            trajectory(
                &[0.6, 0.7, 0.7, 0.7],
                &[0.6, 0.7, 0.6, 0.6],
                &[0.35, 0.8, 0.9, 0.9],
            ),
        ];
        let c = choose_stop(&ts);
        assert_eq!(c.threshold, 0.8, "{c:?}");
        let at = |th: f32| c.candidates.iter().find(|x| x.0 == th).unwrap();
        assert_eq!(at(0.8).1, 1.0, "one step each");
        assert_eq!(at(1.01).1, 3.0, "never stopping");
        assert!((at(0.3).2 - 0.55).abs() < 1e-6, "stopping at once loses");
    }

    #[test]
    fn splits_hold_out_a_share_and_cover_everything() {
        let mut rng = StdRng::seed_from_u64(1);
        let (fit, held) = split(20, 0.1, &mut rng);
        assert_eq!((fit.len(), held.len()), (18, 2));
        let mut all = [fit, held].concat();
        all.sort();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert_eq!(split(1, 0.1, &mut rng).1.len(), 0);
        assert_eq!(split(3, 0.1, &mut rng).1.len(), 1);
    }

    #[test]
    fn pooling_averages_blocks_per_channel() {
        let e = crate::engine::Tensor::new(
            vec![1, 2, 2, 2],
            vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 30.0],
        )
        .unwrap();
        assert_eq!(pool_embedding(&e, 2), vec![2.5, 15.0]);
    }
}
