//! The bounded prompting loop, per image or frame:
//!
//! ```text
//! encode once -> SRM(s_0) -> start points (+ at its highest score, - at its lowest) -> decode
//! for t in 1..=T:  s_t = E * M_{t-1} -> choose a patch -> SRM(s_t) labels its centre
//!                  -> decode all points (previous low-res logits as mask_input) -> M_t
//! upscale the last low-res logits to the image size, once.
//! ```
//!
//! Three bounds stop the loop: the step limit, a time budget per frame (a step is not started
//! when the running mean step time says it would overrun), and convergence (IoU between
//! successive masks at or above a tolerance). The result records every point, why the loop
//! stopped and the time of every stage.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::grid::PatchGrid;
use super::policy::{Policy, greedy};
use super::srm::{Srm, start_points};
use super::state::{mask_probability, state};
use crate::engine::Tensor;
use crate::sam::{
    Embedding, FrameGeometry, Map, PointLabel, PromptPoint, Sam, postprocess, preprocess,
};

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It ran the maximum number of steps.
    StepLimit,
    /// The next step would have overrun the frame's time budget.
    TimeBudget,
    /// The mask stopped changing (IoU with the previous mask at or above the tolerance).
    Converged,
    /// Every patch was used and repeats are forbidden.
    NoActionLeft,
}

/// Where a point came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointOrigin {
    /// The SRM's most (positive) or least (negative) confident cell.
    SrmStart,
    /// Carried over from the previous frame (temporal reuse), relabelled by the SRM.
    PreviousFrame,
    /// Chosen by the policy (or a baseline chooser) at a step.
    Step,
}

/// One prompt point and what happened when it was added.
#[derive(Clone, Debug, Serialize)]
pub struct PointRecord {
    /// 0 for start points, then 1..=T.
    pub step: usize,
    /// Column in image pixels.
    pub x: f64,
    /// Row in image pixels.
    pub y: f64,
    /// The label the SRM gave it.
    pub label: PointLabel,
    /// The patch of the grid it lies in.
    pub patch: usize,
    /// Where it came from.
    pub origin: PointOrigin,
    /// The SRM's foreground probability at the point.
    pub srm_prob: f32,
    /// The decoder's IoU prediction for the mask after this point was added.
    pub iou_prediction: f32,
}

/// Milliseconds of each part of one step.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepTimes {
    /// Building `s_t = E * M_{t-1}`.
    pub state_ms: f64,
    /// The chooser (policy network, or a baseline).
    pub policy_ms: f64,
    /// The SRM.
    pub srm_ms: f64,
    /// The decoder with all points so far.
    pub decoder_ms: f64,
    /// The whole step.
    pub total_ms: f64,
}

/// Milliseconds of every stage of one frame.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageTimes {
    /// Resize, normalise, pad.
    pub preprocess_ms: f64,
    /// The image encoder.
    pub encoder_ms: f64,
    /// SRM on `s_0` and the first decode with the two start points.
    pub start_ms: f64,
    /// The SRM part of `start_ms`.
    pub start_srm_ms: f64,
    /// The decoder part of `start_ms`.
    pub start_decoder_ms: f64,
    /// Each step.
    pub steps: Vec<StepTimes>,
    /// Upscaling the final logits to the image size and thresholding.
    pub postprocess_ms: f64,
    /// The whole frame.
    pub total_ms: f64,
}

/// What the loop produced for one image.
#[derive(Clone, Debug)]
pub struct LoopResult {
    /// All points, start points first.
    pub points: Vec<PointRecord>,
    /// Steps run after the start points.
    pub steps: usize,
    /// Why it stopped.
    pub stop: StopReason,
    /// Stage timings.
    pub times: StageTimes,
    /// The last low-resolution logits.
    pub low_res: Map,
    /// The decoder's IoU prediction for the final mask.
    pub iou_prediction: f32,
    /// The final mask at the image size, row-major (true = object).
    pub mask: Vec<bool>,
    /// Where the image sat in the encoder frame.
    pub geometry: FrameGeometry,
}

impl LoopResult {
    /// The prompt points as the decoder saw them.
    pub fn prompt(&self) -> Vec<PromptPoint> {
        self.points
            .iter()
            .map(|p| PromptPoint {
                x: p.x,
                y: p.y,
                label: p.label,
            })
            .collect()
    }
}

/// What carries over from the previous frame of a video (temporal reuse, beyond the paper).
#[derive(Clone, Debug)]
pub struct WarmStart {
    /// The previous frame's final points (image coordinates; same frame size required).
    pub points: Vec<PromptPoint>,
    /// The previous frame's final low-resolution logits.
    pub low_res: Map,
}

impl WarmStart {
    /// The warm start that a finished frame hands to the next one: its last `max_points` points
    /// (the most recent are the most refined; without a cap, points would pile up frame after
    /// frame) and its final low-resolution logits.
    pub fn from_result(result: &LoopResult, max_points: usize) -> Self {
        let prompt = result.prompt();
        let keep = prompt.len().min(max_points.max(1));
        WarmStart {
            points: prompt[prompt.len() - keep..].to_vec(),
            low_res: result.low_res.clone(),
        }
    }
}

/// Bounds and switches of the loop.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// Steps after the start points (the paper: 15).
    pub max_steps: usize,
    /// Time budget per frame, preprocessing and encoder included.
    pub budget: Option<Duration>,
    /// Stop when the IoU between successive masks reaches this (None: never).
    pub stop_iou: Option<f32>,
    /// Feed the previous low-resolution logits back as the decoder's `mask_input`.
    pub feed_mask: bool,
    /// Forbid choosing a patch twice. The paper does not mask actions; a repeated patch adds a
    /// duplicate point, which usually leaves the mask as it was and ends the loop by convergence.
    pub forbid_repeats: bool,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            max_steps: 15,
            budget: None,
            stop_iou: Some(0.99),
            feed_mask: true,
            forbid_repeats: false,
        }
    }
}

/// Chooses the next patch from a state: the policy, or one of the evaluation baselines.
pub trait PatchChooser {
    /// Returns the chosen patch index, given which patches are allowed (`None`: all).
    fn choose(&mut self, state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>>;
}

/// The greedy policy: the patch with the largest logit.
pub struct PolicyChooser<'a>(pub &'a Policy);

impl PatchChooser for PolicyChooser<'_> {
    fn choose(&mut self, state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        Ok(greedy(&self.0.logits(state)?, allowed))
    }
}

/// Uniformly random patches: the paper's "w/o RL" baseline (labels still come from the SRM).
pub struct RandomChooser {
    rng: StdRng,
    actions: usize,
}

impl RandomChooser {
    /// A seeded random chooser over `actions` patches.
    pub fn new(actions: usize, seed: u64) -> Self {
        RandomChooser {
            rng: StdRng::seed_from_u64(seed),
            actions,
        }
    }
}

impl PatchChooser for RandomChooser {
    fn choose(&mut self, _state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        let candidates: Vec<usize> = (0..self.actions)
            .filter(|&i| allowed.is_none_or(|a| a[i]))
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        Ok(Some(candidates[self.rng.random_range(0..candidates.len())]))
    }
}

/// Always the patch at the centre of the grid (the "click the middle" baseline).
pub struct CentreChooser(pub PatchGrid);

impl PatchChooser for CentreChooser {
    fn choose(&mut self, _state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        let g = self.0.size;
        let centre = (g / 2) * g + g / 2;
        if allowed.is_none_or(|a| a[centre]) {
            return Ok(Some(centre));
        }
        // Nearest allowed patch to the centre, so that `forbid_repeats` still has a meaning.
        let dist = |i: usize| {
            let (r, c) = (
                (i / g) as i64 - (g / 2) as i64,
                (i % g) as i64 - (g / 2) as i64,
            );
            r * r + c * c
        };
        Ok((0..g * g)
            .filter(|&i| allowed.is_none_or(|a| a[i]))
            .min_by_key(|&i| (dist(i), i)))
    }
}

/// IoU of the binary masks (logits > 0) of two low-resolution maps, over the cells that cover
/// the image (the padding is always background and would inflate the score).
pub fn low_res_iou(a: &Map, b: &Map, geometry: &FrameGeometry) -> f32 {
    let rows = (geometry.resized.0 * a.height)
        .div_ceil(geometry.frame)
        .min(a.height);
    let cols = (geometry.resized.1 * a.width)
        .div_ceil(geometry.frame)
        .min(a.width);
    super::ground_truth::binary_iou(
        (0..rows).flat_map(|y| (0..cols).map(move |x| (a.at(y, x) > 0.0, b.at(y, x) > 0.0))),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The AlignSAM agent: SAM plus the SRM and a patch chooser.
pub struct Agent {
    /// Encoder and decoder.
    pub sam: Sam,
    /// The SRM.
    pub srm: Srm,
    /// The policy (absent in bundles made for baselines only).
    pub policy: Option<Policy>,
    /// The action grid.
    pub grid: PatchGrid,
}

impl Agent {
    /// Loads SAM, the SRM and the policy from a bundle.
    pub fn load(
        bundle: &crate::bundle::Bundle,
        backend: &dyn crate::engine::Backend,
    ) -> Result<Self> {
        let m = &bundle.manifest;
        let Some(srm_entry) = &m.models.srm else {
            bail!(
                "{}: the bundle has no [models.srm]; the prompting loop needs a policy and an SRM (see models/README.md)",
                bundle.dir.display()
            )
        };
        let Some(policy_entry) = &m.models.policy else {
            bail!(
                "{}: the bundle has no [models.policy]; the prompting loop needs a policy and an SRM (see models/README.md)",
                bundle.dir.display()
            )
        };
        Ok(Agent {
            sam: Sam::load(bundle, backend)?,
            srm: Srm::load(backend, &bundle.path(&srm_entry.file), m)?,
            policy: Some(Policy::load(backend, &bundle.path(&policy_entry.file), m)?),
            grid: PatchGrid::new(m.agent.grid),
        })
    }

    /// Segments one image with the greedy policy.
    pub fn segment(
        &self,
        image: &RgbImage,
        options: &LoopOptions,
        semantic: Option<&Map>,
    ) -> Result<LoopResult> {
        let policy = self.policy.as_ref().expect("Agent::load requires a policy");
        self.segment_with(image, options, semantic, None, &mut PolicyChooser(policy))
    }

    /// Segments one image with any chooser, optionally warm-started from the previous frame.
    pub fn segment_with(
        &self,
        image: &RgbImage,
        options: &LoopOptions,
        semantic: Option<&Map>,
        warm: Option<&WarmStart>,
        chooser: &mut dyn PatchChooser,
    ) -> Result<LoopResult> {
        let start = Instant::now();
        let (input, geometry) = preprocess::preprocess(image, &self.sam.preprocess);
        let t_pre = start.elapsed();
        let t = Instant::now();
        let embedding = self.sam.encoder.encode(&input)?;
        let t_enc = t.elapsed();
        drop(input);
        let mut result = self.run_on_embedding(
            &embedding, &geometry, options, semantic, warm, chooser, start,
        )?;
        result.times.preprocess_ms = ms(t_pre);
        result.times.encoder_ms = ms(t_enc);
        Ok(result)
    }

    /// The loop on an image that is already encoded (cached embeddings, evaluation). `frame_start`
    /// is when the frame's clock started, for the time budget.
    #[allow(clippy::too_many_arguments)]
    pub fn run_on_embedding(
        &self,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        options: &LoopOptions,
        semantic: Option<&Map>,
        warm: Option<&WarmStart>,
        chooser: &mut dyn PatchChooser,
        frame_start: Instant,
    ) -> Result<LoopResult> {
        let (_, eh, ew) = embedding.chw();
        let (h, w) = geometry.original;
        let decoder = &self.sam.decoder;
        let mut times = StageTimes::default();

        // Start points: from the SRM on s_0, or carried over from the previous frame.
        let t = Instant::now();
        let mut points: Vec<PointRecord> = vec![];
        let first = match warm {
            None => {
                let t_srm = Instant::now();
                let prob = self.srm.predict(&state(embedding, None), semantic)?;
                times.start_srm_ms = ms(t_srm.elapsed());
                let Some((pos, neg)) = start_points(&prob, self.srm.frame_map(), geometry) else {
                    bail!("the SRM map has no cell inside the {w}x{h} image");
                };
                for (sp, label) in [(pos, PointLabel::Positive), (neg, PointLabel::Negative)] {
                    let (x, y, p) = (sp.x, sp.y, sp.prob);
                    let patch = self.grid.patch_at(x, y, h, w);
                    points.push(PointRecord {
                        step: 0,
                        x,
                        y,
                        label,
                        patch,
                        origin: PointOrigin::SrmStart,
                        srm_prob: p,
                        iou_prediction: f32::NAN,
                    });
                }
                let t_dec = Instant::now();
                let out = decoder.decode(embedding, &prompt_of(&points), None, geometry)?;
                times.start_decoder_ms = ms(t_dec.elapsed());
                out
            }
            Some(prev) => {
                if prev.points.is_empty() {
                    bail!("a warm start needs the previous frame's points");
                }
                let t_srm = Instant::now();
                let m = mask_probability(&prev.low_res, eh, ew);
                let prob = self.srm.predict(&state(embedding, Some(&m)), semantic)?;
                times.start_srm_ms = ms(t_srm.elapsed());
                for p in &prev.points {
                    let (x, y) = (
                        p.x.clamp(0.0, w as f64 - 0.5),
                        p.y.clamp(0.0, h as f64 - 0.5),
                    );
                    let (srm_prob, label) = self.srm.label_at(&prob, x, y, geometry);
                    let patch = self.grid.patch_at(x, y, h, w);
                    points.push(PointRecord {
                        step: 0,
                        x,
                        y,
                        label,
                        patch,
                        origin: PointOrigin::PreviousFrame,
                        srm_prob,
                        iou_prediction: f32::NAN,
                    });
                }
                let mask_input = options.feed_mask.then_some(&prev.low_res);
                let t_dec = Instant::now();
                let out = decoder.decode(embedding, &prompt_of(&points), mask_input, geometry)?;
                times.start_decoder_ms = ms(t_dec.elapsed());
                out
            }
        };
        for p in points.iter_mut() {
            p.iou_prediction = first.iou;
        }
        let mut current = first;
        let start_phase = t.elapsed();
        times.start_ms = ms(start_phase);

        let mut used = vec![false; self.grid.len()];
        for p in &points {
            used[p.patch] = true;
        }
        let mut stop = StopReason::StepLimit;
        let mut step_total = Duration::ZERO;
        for step in 1..=options.max_steps {
            if let Some(budget) = options.budget {
                // Before the first step, the start phase (one SRM and one decoder run) is the
                // best estimate of a step's cost.
                let estimate = if step == 1 {
                    start_phase
                } else {
                    step_total / (step as u32 - 1)
                };
                if frame_start.elapsed() + estimate > budget {
                    stop = StopReason::TimeBudget;
                    break;
                }
            }
            let step_start = Instant::now();
            let mut st = StepTimes::default();

            let t = Instant::now();
            let m = mask_probability(&current.logits, eh, ew);
            let s = state(embedding, Some(&m));
            st.state_ms = ms(t.elapsed());

            let t = Instant::now();
            let free: Vec<bool>;
            let allowed = if options.forbid_repeats {
                free = used.iter().map(|u| !u).collect();
                Some(free.as_slice())
            } else {
                None
            };
            let Some(patch) = chooser.choose(&s, allowed)? else {
                stop = StopReason::NoActionLeft;
                break;
            };
            st.policy_ms = ms(t.elapsed());

            let t = Instant::now();
            let prob = self.srm.predict(&s, semantic)?;
            let (x, y) = self.grid.centre(patch, h, w);
            let (srm_prob, label) = self.srm.label_at(&prob, x, y, geometry);
            st.srm_ms = ms(t.elapsed());
            points.push(PointRecord {
                step,
                x,
                y,
                label,
                patch,
                origin: PointOrigin::Step,
                srm_prob,
                iou_prediction: f32::NAN,
            });
            used[patch] = true;

            let t = Instant::now();
            let mask_input = options.feed_mask.then_some(&current.logits);
            let next = decoder.decode(embedding, &prompt_of(&points), mask_input, geometry)?;
            st.decoder_ms = ms(t.elapsed());
            points.last_mut().expect("just pushed").iou_prediction = next.iou;

            let converged = options
                .stop_iou
                .is_some_and(|tol| low_res_iou(&current.logits, &next.logits, geometry) >= tol);
            current = next;
            let elapsed = step_start.elapsed();
            step_total += elapsed;
            st.total_ms = ms(elapsed);
            times.steps.push(st);
            if converged {
                stop = StopReason::Converged;
                break;
            }
        }

        let t = Instant::now();
        let mask = postprocess::threshold(&postprocess::upscale_logits(&current.logits, geometry));
        times.postprocess_ms = ms(t.elapsed());
        times.total_ms = ms(frame_start.elapsed());
        Ok(LoopResult {
            steps: times.steps.len(),
            points,
            stop,
            times,
            iou_prediction: current.iou,
            low_res: current.logits,
            mask,
            geometry: *geometry,
        })
    }
}

fn prompt_of(points: &[PointRecord]) -> Vec<PromptPoint> {
    points
        .iter()
        .map(|p| PromptPoint {
            x: p.x,
            y: p.y,
            label: p.label,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_res_iou_ignores_the_padding() {
        // Frame 8, image resized to 4 x 8: the top half of a 4x4 low-res map covers the image.
        let geo = FrameGeometry::new(50, 100, 8);
        let a = Map {
            height: 4,
            width: 4,
            data: [vec![1.0; 8], vec![-1.0; 8]].concat(),
        };
        let mut b = a.clone();
        b.data[15] = 1.0; // padding cell: does not count
        assert_eq!(low_res_iou(&a, &b, &geo), 1.0);
        b.data[0] = -1.0; // one of 8 image cells lost
        assert!((low_res_iou(&a, &b, &geo) - 7.0 / 8.0).abs() < 1e-6);
    }

    #[test]
    fn centre_chooser_falls_back_to_the_nearest_free_patch() {
        let mut c = CentreChooser(PatchGrid::new(3));
        let s = Tensor::zeros(vec![1]);
        assert_eq!(c.choose(&s, None).unwrap(), Some(4));
        let mut allowed = vec![true; 9];
        allowed[4] = false;
        assert_eq!(c.choose(&s, Some(&allowed)).unwrap(), Some(1));
    }

    #[test]
    fn random_chooser_is_seeded_and_respects_the_mask() {
        let s = Tensor::zeros(vec![1]);
        let picks = |seed| {
            let mut c = RandomChooser::new(100, seed);
            (0..20)
                .map(|_| c.choose(&s, None).unwrap().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        let mut allowed = vec![false; 100];
        allowed[42] = true;
        let mut c = RandomChooser::new(100, 1);
        assert_eq!(c.choose(&s, Some(&allowed)).unwrap(), Some(42));
    }
}
