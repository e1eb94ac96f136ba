//! The environment and the training loop, one episode at a time.
//!
//! Per episode (the paper's setting): one image; a random ground-truth point on the object (+)
//! and one on the background (-) are decoded first (with `srm_start`, the SRM's most and least
//! probable cells on `s_0`, as inference starts); then for `t = 1..=T`:
//!
//! ```text
//! s_t = E * M_{t-1}               (crate::agent::state, as inference builds it)
//! a_t ~ softmax(policy(s_t))      (sampled: PPO is on-policy; inference is greedy)
//! label = SRM(s_t) at the patch centre >= 0.5   (or the ground truth, --teacher-labels;
//!         or SRM(s_0) from the episode's start, --step-labels embedding)
//! SRM: q Adam steps of Dice + BCE on s_t against the ground truth at its map size
//! r_t = +1 if the centre is on the object, else -1   (+ optional shaping)
//! M_t = decoder(all points, mask_input = M_{t-1} logits)   (the loop's own mechanics)
//! ```
//!
//! The points and masks go through [`crate::agent::LoopCore`], the mechanics inference's loop
//! runs on (`begin`, `click`, `finish`), so that a change to the loop reaches training too.
//!
//! The SRM also takes q steps on `s_0 = E` (the state inference uses for the start points).
//! After the episode: returns bootstrapped with `V(s_{T+1})` and K epochs of PPO ([`super::ppo`]).
//!
//! Every random draw (image order, start points, actions) comes from one `StdRng` seeded from the
//! run's seed, and weights from two others derived from it: a seed gives the same run.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{D, Tensor};
use candle_nn::Optimizer;
use candle_nn::optim::{AdamW, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::data::{TrainImage, random_start_points};
use super::episode_log::EpisodeRecord;
use super::nets::{ActorKind, Arch, InputNorm, PolicyNet, Prepared, SrmNet, to_candle, values};
use super::ppo::{self, Batch, PpoConfig};
use super::srm_loss::{dice_bce, target_tensors};
use crate::agent::ground_truth::{self, map_iou};
use crate::agent::srm::start_points;
use crate::agent::state::{mask_probability, state};
use crate::agent::{
    FrameMap, LoopCore, LoopOptions, PatchGrid, PointOrigin, PointRecord, StageTimes, StepLabels,
    StopReason,
};
use crate::cache::EmbeddingCache;
use crate::sam::{Decoder, Embedding, FrameGeometry, Map, PointLabel};

/// Every option of a training run (written to `train_config.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Episodes (one image each).
    pub episodes: usize,
    /// Steps T per episode.
    pub steps: usize,
    /// Label the policy's points with the ground truth instead of the SRM.
    pub teacher_labels: bool,
    /// Which SRM map labels the policy's points: on `s_t` (the paper) or on `s_0 = E`, from the
    /// episode's start (unless `teacher_labels`).
    pub step_labels: StepLabels,
    /// Start each episode as inference does (the SRM's most and least probable cells on `s_0`)
    /// instead of the paper's random ground-truth points.
    pub srm_start: bool,
    /// The policy's Adam learning rate.
    pub lr: f64,
    /// The SRM's Adam learning rate.
    pub srm_lr: f64,
    /// SRM updates q per state.
    pub srm_updates: usize,
    /// PPO.
    pub ppo: PpoConfig,
    /// Subtracted from the reward of a patch already chosen in the episode (0: the paper).
    pub repeat_penalty: f32,
    /// Forbid a patch already chosen in the episode, in the rollouts and in PPO's probabilities
    /// (inference's `--no-repeat`; the paper does not mask actions).
    pub forbid_repeats: bool,
    /// Added to the reward times the gain in low-resolution mask IoU (0: the paper).
    pub iou_bonus: f32,
    /// Average pooling before the policy.
    pub policy_pool: usize,
    /// Average pooling before the SRM (its map has 64 / srm_pool cells per side for SAM).
    pub srm_pool: usize,
    /// Convolution width.
    pub width: usize,
    /// The policy's hidden units.
    pub hidden: usize,
    /// The actor's shape.
    pub actor: ActorKind,
}

impl TrainConfig {
    /// The paper's settings with this crate's default networks, for `episodes` episodes.
    pub fn new(seed: u64, episodes: usize) -> Self {
        TrainConfig {
            seed,
            episodes,
            steps: 15,
            teacher_labels: false,
            step_labels: StepLabels::State,
            srm_start: false,
            lr: 1e-4,
            srm_lr: 1e-4,
            srm_updates: 1,
            ppo: PpoConfig {
                gamma: 0.99,
                clip: 0.2,
                epochs: 20,
                value_coef: 0.5,
                entropy_coef: 0.01,
                max_grad_norm: 0.5,
                scale_advantages: true,
                centre_advantages: false,
            },
            repeat_penalty: 0.0,
            forbid_repeats: false,
            iou_bonus: 0.0,
            policy_pool: 8,
            srm_pool: 4,
            width: 16,
            hidden: 64,
            actor: ActorKind::Dense,
        }
    }

    /// The inference loop that matches this training: `steps` steps on every image, no early
    /// stop, step labels from the map the training labelled with.
    pub fn loop_options(&self) -> LoopOptions {
        LoopOptions {
            step_labels: self.step_labels,
            forbid_repeats: self.forbid_repeats,
            ..LoopOptions::fixed_steps(self.steps)
        }
    }

    /// The networks' sizes for an embedding shape and grid.
    pub fn arch(&self, embedding: [usize; 3], grid: usize) -> Result<Arch> {
        let [c, h, w] = embedding;
        if h != w {
            bail!("training needs a square embedding, the bundle's is {c}x{h}x{w}");
        }
        let arch = Arch {
            channels: c,
            side: h,
            grid,
            policy_pool: self.policy_pool,
            srm_pool: self.srm_pool,
            width: self.width,
            hidden: self.hidden,
            actor: self.actor,
        };
        arch.validate()?;
        Ok(arch)
    }
}

fn adam(vars: Vec<candle_core::Var>, lr: f64) -> candle_core::Result<AdamW> {
    // Adam: AdamW without weight decay.
    AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
}

/// The input standardisations of the policy and the SRM, measured on the images' embeddings
/// (`s_0 = E`) pooled as each network pools them.
pub fn measure_norms(
    images: &[TrainImage],
    cache: &EmbeddingCache,
    arch: &Arch,
) -> Result<(InputNorm, InputNorm)> {
    let (mut policy, mut srm) = (vec![], vec![]);
    for img in images {
        let e = to_candle(&img.embedding(cache)?.0)?;
        policy.push(e.avg_pool2d(arch.policy_pool)?);
        srm.push(e.avg_pool2d(arch.srm_pool)?);
    }
    Ok((InputNorm::measure(&policy)?, InputNorm::measure(&srm)?))
}

/// The training loop's state: networks, optimisers, RNG and the data.
pub struct Trainer<'a> {
    config: TrainConfig,
    decoder: &'a Decoder,
    cache: &'a EmbeddingCache,
    images: &'a [TrainImage],
    grid: PatchGrid,
    /// The policy being trained.
    pub policy: PolicyNet,
    /// The SRM being trained.
    pub srm: SrmNet,
    policy_opt: AdamW,
    srm_opt: AdamW,
    rng: StdRng,
    order: Vec<usize>,
    targets: Vec<(Tensor, Tensor)>,
    low_res_targets: Vec<Option<ground_truth::FrameTarget>>,
    times: PhaseTimes,
    adv_scale: ppo::AdvantageScale,
}

/// Seconds spent in each part of the episodes so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PhaseTimes {
    /// Building and pooling states.
    pub state_s: f64,
    /// Policy forward passes during rollouts.
    pub policy_s: f64,
    /// SRM forward passes and updates.
    pub srm_s: f64,
    /// SAM decoder calls.
    pub decoder_s: f64,
    /// PPO updates.
    pub ppo_s: f64,
    /// Reading embeddings from the cache.
    pub cache_s: f64,
}

/// What the SRM did on one state.
struct SrmStep {
    prob: Map,
    loss: f32,
    iou: f32,
}

impl<'a> Trainer<'a> {
    /// A trainer over `images` (already cached), with networks initialised from the seed and
    /// `norms` (policy, SRM) as their input standardisations ([`measure_norms`]).
    pub fn new(
        config: TrainConfig,
        arch: Arch,
        norms: (InputNorm, InputNorm),
        decoder: &'a Decoder,
        cache: &'a EmbeddingCache,
        images: &'a [TrainImage],
    ) -> Result<Self> {
        if images.is_empty() {
            bail!("no training images");
        }
        // Separate streams, so that adding a draw in one place does not shift the others.
        let policy = PolicyNet::new(arch, norms.0, config.seed.wrapping_mul(3).wrapping_add(1))?;
        let srm = SrmNet::new(arch, norms.1, config.seed.wrapping_mul(3).wrapping_add(2))?;
        let policy_opt = adam(policy.vars(), config.lr)?;
        let srm_opt = adam(srm.vars(), config.srm_lr)?;
        let targets = images
            .iter()
            .map(|i| target_tensors(&i.target))
            .collect::<candle_core::Result<_>>()?;
        let low_res = 4 * arch.side;
        let low_res_targets = images
            .iter()
            .map(|i| {
                (config.iou_bonus != 0.0)
                    .then(|| ground_truth::frame_target(&i.gt, &i.geometry, low_res))
            })
            .collect();
        Ok(Trainer {
            rng: StdRng::seed_from_u64(config.seed.wrapping_mul(3)),
            grid: PatchGrid::new(arch.grid),
            config,
            decoder,
            cache,
            images,
            policy,
            srm,
            policy_opt,
            srm_opt,
            order: vec![],
            targets,
            low_res_targets,
            times: PhaseTimes::default(),
            adv_scale: ppo::AdvantageScale::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Where the time of the episodes so far went.
    pub fn times(&self) -> &PhaseTimes {
        &self.times
    }

    /// The image of an episode: passes over the images, each in a fresh random order.
    fn next_image(&mut self) -> usize {
        if self.order.is_empty() {
            self.order = (0..self.images.len()).collect();
            self.order.shuffle(&mut self.rng);
            self.order.reverse(); // popped from the back: keep the shuffled order
        }
        self.order.pop().expect("refilled above")
    }

    /// q updates of the SRM on one state; returns the map before the first update.
    fn srm_step(&mut self, prepared: &Prepared, image: usize) -> Result<SrmStep> {
        let start = Instant::now();
        let (t, w) = &self.targets[image];
        let mut first = None;
        for _ in 0..self.config.srm_updates.max(1) {
            let z = self.srm.logits_prepared(prepared)?;
            let loss = dice_bce(&z, t, w)?;
            if first.is_none() {
                let s = z.dim(D::Minus1)?;
                let data = values(&candle_nn::ops::sigmoid(&z)?)?;
                first = Some((
                    Map {
                        height: s,
                        width: s,
                        data,
                    },
                    loss.bce + loss.dice,
                ));
            }
            if self.config.srm_updates > 0 {
                self.srm_opt.backward_step(&loss.total)?;
            }
        }
        let (prob, loss) = first.expect("at least one pass");
        let iou = map_iou(&prob, &self.images[image].target);
        self.times.srm_s += start.elapsed().as_secs_f64();
        Ok(SrmStep { prob, loss, iou })
    }

    /// `s = E * M` prepared for the policy and for the SRM.
    fn states(
        &mut self,
        embedding: &Embedding,
        mask: Option<&Map>,
    ) -> Result<(Prepared, Prepared)> {
        let t = Instant::now();
        let s = to_candle(&state(embedding, mask))?;
        let out = (self.policy.prepare(&s)?, self.srm.prepare(&s)?);
        self.times.state_s += t.elapsed().as_secs_f64();
        Ok(out)
    }

    fn low_res_iou(&self, image: usize, logits: &Map) -> f32 {
        let Some(t) = &self.low_res_targets[image] else {
            return 0.0;
        };
        crate::agent::ground_truth::binary_iou(
            logits
                .data
                .iter()
                .zip(&t.map.data)
                .zip(&t.valid)
                .filter(|&(_, &valid)| valid)
                .map(|((&l, &g), _)| (l > 0.0, g >= 0.5)),
        )
    }

    /// Runs one episode and the updates after it.
    pub fn run_episode(&mut self, number: usize) -> Result<EpisodeRecord> {
        let t_episode = Instant::now();
        let idx = self.next_image();
        let images = self.images;
        let img = &images[idx];
        let t = Instant::now();
        let embedding = img.embedding(self.cache)?;
        self.times.cache_s += t.elapsed().as_secs_f64();
        let geometry: FrameGeometry = img.geometry;
        let (h, w) = geometry.original;
        let (_, eh, ew) = embedding.chw();
        let srm_map = FrameMap {
            size: self.srm.arch.srm_side(),
        };

        // The SRM on s_0 = E (one of its training states; also the source of the start points
        // with `srm_start`).
        let (_, s0) = self.states(&embedding, None)?;
        let first = self.srm_step(&s0, idx)?;
        let (mut srm_loss, mut srm_iou) = (first.loss as f64, first.iou as f64);

        // Start: one random point on the object and one on the background (the paper), or the
        // SRM's most and least probable cells (what inference starts from).
        let (pos, neg, origin) = if self.config.srm_start {
            match start_points(&first.prob, srm_map, &geometry) {
                Some((p, n)) => (Some((p.x, p.y)), Some((n.x, n.y)), PointOrigin::SrmStart),
                None => (None, None, PointOrigin::SrmStart),
            }
        } else {
            let (pos, neg) = random_start_points(&img.gt, &mut self.rng);
            (pos, neg, PointOrigin::TruthStart)
        };
        let grid = self.grid;
        let point = |(x, y): (f64, f64), label, step, origin| PointRecord {
            step,
            x,
            y,
            label,
            patch: grid.patch_at(x, y, h, w),
            origin,
            srm_prob: f32::NAN,
            iou_prediction: f32::NAN,
        };
        let points = [(pos, PointLabel::Positive), (neg, PointLabel::Negative)]
            .into_iter()
            .filter_map(|(at, label)| Some(point(at?, label, 0, origin)))
            .collect();
        // The loop's own mechanics, as the paper's agent runs at inference (`LoopOptions::paper`):
        // the previous logits fed back, no early stop, the last mask kept.
        let core = LoopCore::new(self.decoder, self.grid);
        let options = LoopOptions::fixed_steps(self.config.steps).paper();
        let t = Instant::now();
        let mut prompting = core.begin(
            &embedding,
            &geometry,
            points,
            first.prob.clone(),
            None,
            None,
            &options,
            (StageTimes::default(), t),
        )?;
        self.times.decoder_s += t.elapsed().as_secs_f64();

        let steps = self.config.steps;
        let mut states = Vec::with_capacity(steps);
        let mut actions = Vec::with_capacity(steps);
        let mut log_probs = Vec::with_capacity(steps);
        let mut values_old = Vec::with_capacity(steps);
        let mut rewards = Vec::with_capacity(steps);
        let (mut hits, mut labels_right) = (0usize, 0usize);
        let mut used = vec![false; self.grid.len()];
        // Per step, the patches the rollout forbade (only with `forbid_repeats`): PPO's update
        // recomputes the probabilities under the same masks.
        let mut forbidden = Vec::new();
        for step in 1..=steps {
            let m = mask_probability(&prompting.current().logits, eh, ew);
            let (s, s_srm) = self.states(&embedding, Some(&m))?;
            let t = Instant::now();
            let (logits, value) = self.policy.forward_prepared(&s)?;
            let logits = if self.config.forbid_repeats {
                // Every patch used (more steps than patches): nothing left to forbid.
                let mask = if used.iter().all(|&u| u) {
                    vec![false; used.len()]
                } else {
                    used.clone()
                };
                let offsets = ppo::forbidden_offsets(std::slice::from_ref(&mask))?;
                forbidden.push(mask);
                (logits + offsets)?
            } else {
                logits
            };
            let lp = values(&candle_nn::ops::log_softmax(&logits, D::Minus1)?)?;
            let action = sample(&lp, &mut self.rng);
            self.times.policy_s += t.elapsed().as_secs_f64();

            let srm = self.srm_step(&s_srm, idx)?;
            srm_loss += srm.loss as f64;
            srm_iou += srm.iou as f64;
            let (x, y) = self.grid.centre(action, h, w);
            let hit = ground_truth::hit(&img.gt, x, y);
            let label_map = match self.config.step_labels {
                StepLabels::Embedding => &first.prob,
                StepLabels::State => &srm.prob,
            };
            let srm_says = label_map.data[srm_map.cell_at(x, y, &geometry)] >= 0.5;
            let positive = if self.config.teacher_labels {
                hit
            } else {
                srm_says
            };
            labels_right += (positive == hit) as usize;
            hits += hit as usize;
            let mut reward = if hit { 1.0 } else { -1.0 };
            if used[action] {
                reward -= self.config.repeat_penalty;
            }
            used[action] = true;

            let before = self.low_res_iou(idx, &prompting.current().logits);
            let mut click = point(
                (x, y),
                PointLabel::from_positive(positive),
                step,
                PointOrigin::Step,
            );
            click.patch = action;
            let t = Instant::now();
            core.click(&mut prompting, click, &options)?;
            self.times.decoder_s += t.elapsed().as_secs_f64();
            if self.config.iou_bonus != 0.0 {
                reward += self.config.iou_bonus
                    * (self.low_res_iou(idx, &prompting.current().logits) - before);
            }

            states.push(s);
            actions.push(action as u32);
            log_probs.push(lp[action]);
            values_old.push(values(&value)?[0]);
            rewards.push(reward);
        }

        // The episode is cut at T steps, not finished: bootstrap from the next state's value.
        let m = mask_probability(&prompting.current().logits, eh, ew);
        let t = Instant::now();
        let last = self
            .policy
            .prepare(&to_candle(&state(&embedding, Some(&m)))?)?;
        let bootstrap = values(&self.policy.forward_prepared(&last)?.1)?[0];
        self.times.policy_s += t.elapsed().as_secs_f64();
        let returns = ppo::discounted_returns(&rewards, bootstrap, self.config.ppo.gamma);
        let mut adv = ppo::advantages(&returns, &values_old);
        if self.config.ppo.centre_advantages {
            adv = ppo::centre(&adv);
        }
        if self.config.ppo.scale_advantages {
            adv = self.adv_scale.apply(&adv);
        }
        let t = Instant::now();
        let stats = if steps > 0 {
            let mut batch = Batch::new(&states, &actions, &log_probs, &returns, &adv)?;
            if self.config.forbid_repeats {
                batch = batch.with_forbidden(&forbidden)?;
            }
            ppo::update(&self.policy, &mut self.policy_opt, &batch, &self.config.ppo)?
        } else {
            ppo::UpdateStats::default()
        };
        self.times.ppo_s += t.elapsed().as_secs_f64();

        let result = core.finish(prompting, StopReason::StepLimit, t_episode, &options);
        let mask_iou = crate::eval::metrics::iou(&result.mask, &img.gt.data)? as f32;
        let n = steps.max(1) as f32;
        Ok(EpisodeRecord {
            episode: number,
            image: img.id.clone(),
            reward: rewards.iter().sum(),
            hit_rate: hits as f32 / n,
            srm_loss: (srm_loss / (steps + 1) as f64) as f32,
            srm_iou: (srm_iou / (steps + 1) as f64) as f32,
            label_accuracy: labels_right as f32 / n,
            mask_iou,
            policy_loss: stats.policy,
            value_loss: stats.value,
            entropy: stats.entropy,
        })
    }
}

/// Draws an index from log-probabilities (inverse CDF on one uniform draw; the last index takes
/// any rounding remainder).
pub fn sample(log_probs: &[f32], rng: &mut StdRng) -> usize {
    let u: f64 = rng.random_range(0.0..1.0);
    let mut acc = 0f64;
    for (i, &lp) in log_probs.iter().enumerate() {
        acc += (lp as f64).exp();
        if u < acc {
            return i;
        }
    }
    log_probs.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_probabilities() {
        let lp: Vec<f32> = [0.1f32, 0.0, 0.6, 0.3].iter().map(|p| p.ln()).collect();
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            counts[sample(&lp, &mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((counts[2] as f64 / 1e4 - 0.6).abs() < 0.02, "{counts:?}");
        assert!((counts[0] as f64 / 1e4 - 0.1).abs() < 0.02, "{counts:?}");
    }
}
