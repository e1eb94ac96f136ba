//! The bounded prompting loop, per image or frame, in the paper's phases:
//!
//! ```text
//! encode once                      Agent::encode
//! start: SRM(s_0) -> start points  Agent::start   (+ at its highest score, - at its lowest;
//!        -> decode                                 or the previous frame's points, warm)
//! for t in 1..=T:                  Agent::step
//!     s_t = E * M_{t-1} -> choose a patch -> SRM(s_t) labels its centre
//!     -> decode all points (previous low-res logits as mask_input) -> M_t
//! upscale the last logits once     Agent::finish
//! ```
//!
//! [`Agent::run_on_embedding`] runs the phases with the three bounds that stop the loop: the
//! step limit, a time budget per frame (a step is not started when the running mean step time
//! says it would overrun), and convergence (IoU between successive masks at or above a
//! tolerance). The result records every point, why the loop stopped and the time of every stage.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use image::RgbImage;

use super::chooser::{PatchChooser, PolicyChooser};
use super::grid::PatchGrid;
use super::policy::Policy;
use super::record::{
    LoopResult, PointOrigin, PointRecord, StageTimes, StepTimes, StopReason, WarmStart, prompt_of,
};
use super::srm::{Srm, start_points};
use super::state::{mask_probability, state};
use crate::bundle::manifest::StepLabels;
use crate::sam::{
    Embedding, FrameGeometry, LowResMask, Map, PointLabel, Sam, postprocess, preprocess,
};
use crate::util::ms;

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
    /// Which SRM map labels a step's point.
    pub step_labels: StepLabels,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            max_steps: 15,
            budget: None,
            stop_iou: Some(0.99),
            feed_mask: true,
            forbid_repeats: false,
            step_labels: StepLabels::State,
        }
    }
}

impl LoopOptions {
    /// Exactly `steps` steps on every image: no time budget, no early stop (benchmarks and
    /// held-out scoring, where every image must do the same work).
    pub fn fixed_steps(steps: usize) -> LoopOptions {
        LoopOptions {
            max_steps: steps,
            stop_iou: None,
            ..LoopOptions::default()
        }
    }
}

/// What one image brings beside its pixels; every field is optional ([`ImageOptions::default`]
/// is a cold start, no semantic map, the agent's policy, the clock starting at the call).
#[derive(Default)]
pub struct ImageOptions<'a> {
    /// Start from the previous frame's points and mask instead of the SRM's start points.
    pub warm: Option<&'a WarmStart>,
    /// The text-image similarity map an explicit-branch SRM needs.
    pub semantic: Option<&'a Map>,
    /// Who picks the patches (`None`: the agent's policy, greedy).
    pub chooser: Option<&'a mut dyn PatchChooser>,
    /// When the frame's clock started, for the time budget (`None`: when the loop starts).
    pub started: Option<Instant>,
}

/// An encoded image: the embedding, where the image sits in the encoder frame, and what it cost.
pub struct Encoded {
    /// The image embedding `E`.
    pub embedding: Embedding,
    /// The image's place in the encoder frame.
    pub geometry: FrameGeometry,
    /// Preprocessing milliseconds.
    pub preprocess_ms: f64,
    /// Encoder milliseconds.
    pub encoder_ms: f64,
    /// When preprocessing started (the frame's clock).
    pub started: Instant,
}

/// One image's loop in progress: the points so far and the current mask. Made by
/// [`Agent::start`], advanced by [`Agent::step`], closed by [`Agent::finish`].
pub struct Episode<'e> {
    embedding: &'e Embedding,
    geometry: FrameGeometry,
    semantic: Option<&'e Map>,
    points: Vec<PointRecord>,
    current: LowResMask,
    /// The SRM's map on `s_0 = E`: the start points' map (cold start), or the one that
    /// relabelled the previous frame's points (warm start with [`StepLabels::Embedding`]).
    embedding_map: Option<Map>,
    used: Vec<bool>,
    times: StageTimes,
    start_phase: Duration,
    step_total: Duration,
}

impl Episode<'_> {
    /// Steps taken so far (start points excluded).
    pub fn steps(&self) -> usize {
        self.times.steps.len()
    }

    /// The points so far, start points first.
    pub fn points(&self) -> &[PointRecord] {
        &self.points
    }

    /// The current low-resolution mask.
    pub fn current(&self) -> &LowResMask {
        &self.current
    }

    /// Whether one more step would overrun `budget`, counted from `started`: the running mean
    /// step time is the estimate (before the first step, the start phase's time, one SRM and one
    /// decoder run, is the best one).
    pub fn would_overrun(&self, budget: Option<Duration>, started: Instant) -> bool {
        let Some(budget) = budget else { return false };
        let estimate = match self.steps() {
            0 => self.start_phase,
            n => self.step_total / n as u32,
        };
        started.elapsed() + estimate > budget
    }
}

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// A point was added and the mask changed (or convergence is not checked).
    Continue,
    /// A point was added and the mask stopped changing.
    Converged,
    /// The chooser had no patch left (every patch used, repeats forbidden); nothing was added.
    NoActionLeft,
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

/// The AlignSAM agent: SAM plus the SRM and the policy.
pub struct Agent {
    /// Encoder and decoder.
    pub sam: Sam,
    /// The SRM.
    pub srm: Srm,
    /// The policy.
    pub policy: Policy,
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
        let missing = |what: &str| {
            anyhow::anyhow!(
                "{}: the bundle has no [models.{what}]; the prompting loop needs a policy and an SRM (see models/README.md)",
                bundle.dir.display()
            )
        };
        let srm_entry = m.models.srm.as_ref().ok_or_else(|| missing("srm"))?;
        let policy_entry = m.models.policy.as_ref().ok_or_else(|| missing("policy"))?;
        Ok(Agent {
            sam: Sam::load(bundle, backend)?,
            srm: Srm::load(backend, &bundle.path(&srm_entry.file), m)?,
            policy: Policy::load(backend, &bundle.path(&policy_entry.file), m)?,
            grid: PatchGrid::new(m.agent.grid),
        })
    }

    /// Segments one image with the greedy policy.
    pub fn segment(&self, image: &RgbImage, options: &LoopOptions) -> Result<LoopResult> {
        self.segment_with(image, options, ImageOptions::default())
    }

    /// Segments one image: [`Agent::encode`], then [`Agent::run_on_embedding`].
    pub fn segment_with(
        &self,
        image: &RgbImage,
        options: &LoopOptions,
        per_image: ImageOptions<'_>,
    ) -> Result<LoopResult> {
        let encoded = self.encode(image)?;
        let per_image = ImageOptions {
            started: per_image.started.or(Some(encoded.started)),
            ..per_image
        };
        let mut result =
            self.run_on_embedding(&encoded.embedding, &encoded.geometry, options, per_image)?;
        result.times.preprocess_ms = encoded.preprocess_ms;
        result.times.encoder_ms = encoded.encoder_ms;
        Ok(result)
    }

    /// Preprocesses and encodes an image, once: the loop's later steps only read the embedding.
    pub fn encode(&self, image: &RgbImage) -> Result<Encoded> {
        let started = Instant::now();
        let (input, geometry) = preprocess::preprocess(image, &self.sam.preprocess)?;
        let preprocess_ms = ms(started.elapsed());
        let t = Instant::now();
        let embedding = self.sam.encoder.encode(&input)?;
        Ok(Encoded {
            embedding,
            geometry,
            preprocess_ms,
            encoder_ms: ms(t.elapsed()),
            started,
        })
    }

    /// The loop on an image that is already encoded (cached embeddings, evaluation).
    pub fn run_on_embedding(
        &self,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        options: &LoopOptions,
        per_image: ImageOptions<'_>,
    ) -> Result<LoopResult> {
        let started = per_image.started.unwrap_or_else(Instant::now);
        let mut policy = PolicyChooser(&self.policy);
        let chooser: &mut dyn PatchChooser = match per_image.chooser {
            Some(c) => c,
            None => &mut policy,
        };
        let mut episode = self.start(
            embedding,
            geometry,
            per_image.warm,
            per_image.semantic,
            options,
        )?;
        let stop = loop {
            if episode.steps() == options.max_steps {
                break StopReason::StepLimit;
            }
            if episode.would_overrun(options.budget, started) {
                break StopReason::TimeBudget;
            }
            match self.step(&mut episode, chooser, options)? {
                StepOutcome::Continue => {}
                StepOutcome::Converged => break StopReason::Converged,
                StepOutcome::NoActionLeft => break StopReason::NoActionLeft,
            }
        };
        Ok(self.finish(episode, stop, started))
    }

    /// The start phase: the start points (the SRM's most and least confident cells on `s_0 = E`,
    /// or the previous frame's points relabelled by the SRM) and the first decode.
    pub fn start<'e>(
        &self,
        embedding: &'e Embedding,
        geometry: &FrameGeometry,
        warm: Option<&WarmStart>,
        semantic: Option<&'e Map>,
        options: &LoopOptions,
    ) -> Result<Episode<'e>> {
        let t = Instant::now();
        let mut times = StageTimes::default();
        let (mut points, embedding_map, mask_input) = match warm {
            None => {
                let (points, map) = self.srm_start(embedding, geometry, semantic, &mut times)?;
                (points, Some(map), None)
            }
            Some(prev) => {
                let labels = options.step_labels;
                let (points, map) =
                    self.warm_start(embedding, geometry, prev, semantic, labels, &mut times)?;
                (points, map, options.feed_mask.then_some(&prev.low_res))
            }
        };
        let t_dec = Instant::now();
        let first =
            self.sam
                .decoder
                .decode(embedding, &prompt_of(&points), mask_input, geometry)?;
        times.start_decoder_ms = ms(t_dec.elapsed());
        for p in points.iter_mut() {
            p.iou_prediction = first.iou;
        }
        let mut used = vec![false; self.grid.len()];
        for p in &points {
            used[p.patch] = true;
        }
        let start_phase = t.elapsed();
        times.start_ms = ms(start_phase);
        Ok(Episode {
            embedding,
            geometry: *geometry,
            semantic,
            points,
            current: first,
            embedding_map,
            used,
            times,
            start_phase,
            step_total: Duration::ZERO,
        })
    }

    /// Cold start: a positive point at the SRM's highest score on `s_0`, a negative one at its
    /// lowest; also returns that map.
    fn srm_start(
        &self,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        semantic: Option<&Map>,
        times: &mut StageTimes,
    ) -> Result<(Vec<PointRecord>, Map)> {
        let t = Instant::now();
        let prob = self.srm.predict(&state(embedding, None), semantic)?;
        times.start_srm_ms = ms(t.elapsed());
        let Some((pos, neg)) = start_points(&prob, self.srm.frame_map(), geometry) else {
            let (h, w) = geometry.original;
            bail!("the SRM map has no cell inside the {w}x{h} image");
        };
        let (h, w) = geometry.original;
        let points = [(pos, PointLabel::Positive), (neg, PointLabel::Negative)]
            .into_iter()
            .map(|(sp, label)| PointRecord {
                step: 0,
                x: sp.x,
                y: sp.y,
                label,
                patch: self.grid.patch_at(sp.x, sp.y, h, w),
                origin: PointOrigin::SrmStart,
                srm_prob: sp.prob,
                iou_prediction: f32::NAN,
            })
            .collect();
        Ok((points, prob))
    }

    /// Warm start: the previous frame's points, relabelled by the SRM on `E * M_prev` (with
    /// [`StepLabels::Embedding`]: on `E`, and that map is returned for the steps).
    fn warm_start(
        &self,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        prev: &WarmStart,
        semantic: Option<&Map>,
        labels: StepLabels,
        times: &mut StageTimes,
    ) -> Result<(Vec<PointRecord>, Option<Map>)> {
        if prev.points.is_empty() {
            bail!("a warm start needs the previous frame's points");
        }
        let (_, eh, ew) = embedding.chw();
        let (h, w) = geometry.original;
        let t = Instant::now();
        let m = match labels {
            StepLabels::State => Some(mask_probability(&prev.low_res, eh, ew)),
            StepLabels::Embedding => None,
        };
        let prob = self.srm.predict(&state(embedding, m.as_ref()), semantic)?;
        times.start_srm_ms = ms(t.elapsed());
        let points = prev
            .points
            .iter()
            .map(|p| {
                let (x, y) = (
                    p.x.clamp(0.0, w as f64 - 0.5),
                    p.y.clamp(0.0, h as f64 - 0.5),
                );
                let (srm_prob, label) = self.srm.label_at(&prob, x, y, geometry);
                PointRecord {
                    step: 0,
                    x,
                    y,
                    label,
                    patch: self.grid.patch_at(x, y, h, w),
                    origin: PointOrigin::PreviousFrame,
                    srm_prob,
                    iou_prediction: f32::NAN,
                }
            })
            .collect();
        Ok((points, m.is_none().then_some(prob)))
    }

    /// One step: `s_t = E * M_{t-1}`, the chooser picks a patch, the SRM labels its centre, the
    /// decoder runs on every point so far (the previous logits as `mask_input`).
    pub fn step(
        &self,
        episode: &mut Episode<'_>,
        chooser: &mut dyn PatchChooser,
        options: &LoopOptions,
    ) -> Result<StepOutcome> {
        let step_start = Instant::now();
        let mut st = StepTimes::default();
        let (_, eh, ew) = episode.embedding.chw();
        let (h, w) = episode.geometry.original;

        let t = Instant::now();
        let m = mask_probability(&episode.current.logits, eh, ew);
        let s = state(episode.embedding, Some(&m));
        st.state_ms = ms(t.elapsed());

        let t = Instant::now();
        let free: Option<Vec<bool>> = options
            .forbid_repeats
            .then(|| episode.used.iter().map(|u| !u).collect());
        let Some(patch) = chooser.choose(&s, free.as_deref())? else {
            return Ok(StepOutcome::NoActionLeft);
        };
        st.policy_ms = ms(t.elapsed());

        let t = Instant::now();
        // An episode started with the paper's labels has no map on E yet; make it once.
        if options.step_labels == StepLabels::Embedding && episode.embedding_map.is_none() {
            let map = self
                .srm
                .predict(&state(episode.embedding, None), episode.semantic)?;
            episode.embedding_map = Some(map);
        }
        let on_state;
        let prob = match (options.step_labels, &episode.embedding_map) {
            (StepLabels::Embedding, Some(map)) => map,
            _ => {
                on_state = self.srm.predict(&s, episode.semantic)?;
                &on_state
            }
        };
        let (x, y) = self.grid.centre(patch, h, w);
        let (srm_prob, label) = self.srm.label_at(prob, x, y, &episode.geometry);
        st.srm_ms = ms(t.elapsed());
        episode.points.push(PointRecord {
            step: episode.steps() + 1,
            x,
            y,
            label,
            patch,
            origin: PointOrigin::Step,
            srm_prob,
            iou_prediction: f32::NAN,
        });
        episode.used[patch] = true;

        let t = Instant::now();
        let mask_input = options.feed_mask.then_some(&episode.current.logits);
        let next = self.sam.decoder.decode(
            episode.embedding,
            &prompt_of(&episode.points),
            mask_input,
            &episode.geometry,
        )?;
        st.decoder_ms = ms(t.elapsed());
        episode
            .points
            .last_mut()
            .expect("just pushed")
            .iou_prediction = next.iou;

        let converged = options.stop_iou.is_some_and(|tol| {
            low_res_iou(&episode.current.logits, &next.logits, &episode.geometry) >= tol
        });
        episode.current = next;
        let elapsed = step_start.elapsed();
        episode.step_total += elapsed;
        st.total_ms = ms(elapsed);
        episode.times.steps.push(st);
        Ok(if converged {
            StepOutcome::Converged
        } else {
            StepOutcome::Continue
        })
    }

    /// Closes an episode: the last logits upscaled to the image size and thresholded, once.
    pub fn finish(&self, episode: Episode<'_>, stop: StopReason, started: Instant) -> LoopResult {
        let Episode {
            geometry,
            points,
            current,
            mut times,
            ..
        } = episode;
        let t = Instant::now();
        let mask = postprocess::threshold(&postprocess::upscale_logits(&current.logits, &geometry));
        times.postprocess_ms = ms(t.elapsed());
        times.total_ms = ms(started.elapsed());
        LoopResult {
            steps: times.steps.len(),
            points,
            stop,
            times,
            iou_prediction: current.iou,
            low_res: current.logits,
            mask,
            geometry,
        }
    }
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
}
