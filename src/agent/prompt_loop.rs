//! The bounded prompting loop, per image or frame, in the paper's phases:
//!
//! ```text
//! encode once                      Agent::encode
//! start: SRM(s_0) -> start points  Agent::start   (+ at its highest score, - at its lowest;
//!        -> decode                                 or the previous frame's points, warm)
//! for t in 1..=T:                  Agent::step
//!     the chooser sees the episode -> a click (patch, label or the SRM's) or stop
//!     -> decode all points (previous low-res logits as mask_input) -> M_t
//! keep the best mask, upscale once Agent::finish
//! ```
//!
//! The chooser is the bundle's agent (the paper's policy, or the learned clicker, by `[agent]
//! kind`) or an evaluation baseline. [`Agent::run_on_embedding`] runs the phases with the bounds
//! that stop the loop: the step limit, a time budget per frame (a step is not started when the
//! running mean step time says it would overrun), convergence (IoU between successive masks at
//! or above a tolerance), and the agent's own stop action. Two guards hold for every agent: no
//! click on a patch with a label it already had there, and (`keep_best`) the result is the mask
//! with the highest estimated IoU among those the loop made, so that a longer budget never
//! returns a worse mask by the model's own estimate. The estimate is the chooser's when it has
//! one (the clicker's quality head), else the decoder's IoU prediction.
//!
//! The result records every point, why the loop stopped, which step's mask it kept and the time
//! of every stage. The decoding and the episode's bookkeeping are [`LoopCore`]'s, which training
//! runs on too.

use std::time::Instant;

use anyhow::{Result, bail};
use image::RgbImage;

use super::chooser::{Click, Decision, PatchChooser, PolicyChooser, UsedClicks};
use super::clicker::{Clicker, ClickerChooser};
use super::episode::{Episode, LoopCore};
use super::grid::PatchGrid;
use super::ground_truth::hit;
pub use super::options::LoopOptions;
use super::policy::Policy;
use super::record::{
    LoopResult, PointOrigin, PointRecord, StageTimes, StepTimes, StopReason, WarmStart, prompt_of,
};
use super::srm::{Srm, start_points};
use super::state::{mask_probability, state};
use crate::bundle::manifest::{AgentKind, StepLabels};
use crate::dataset::Mask;
use crate::sam::{Embedding, FrameGeometry, Map, PointLabel, Sam, preprocess};
use crate::util::ms;

/// What one image brings beside its pixels; every field is optional ([`ImageOptions::default`]
/// is a cold start, no semantic map, the bundle's agent, the clock starting at the call).
#[derive(Default)]
pub struct ImageOptions<'a> {
    /// Start from the previous frame's points and mask instead of the SRM's start points.
    pub warm: Option<&'a WarmStart>,
    /// The text-image similarity map an explicit-branch SRM needs.
    pub semantic: Option<&'a Map>,
    /// Who picks the clicks (`None`: the bundle's agent).
    pub chooser: Option<&'a mut dyn PatchChooser>,
    /// When the frame's clock started, for the time budget (`None`: when the loop starts).
    pub started: Option<Instant>,
    /// Label every point (start points too) from this ground truth instead of the agent or the
    /// SRM: the evaluation's diagnosis of *where* against *which label*.
    pub truth: Option<&'a Mask>,
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

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// A point was added and the mask changed (or convergence is not checked).
    Continue,
    /// A point was added and the mask stopped changing.
    Converged,
    /// The chooser had no action left (every one used, repeats forbidden); nothing was added.
    NoActionLeft,
    /// The chooser said the mask is done; nothing was added.
    Stopped,
}

/// The AlignSAM agent: SAM, the SRM, and the networks that pick the clicks.
pub struct Agent {
    /// Encoder and decoder.
    pub sam: Sam,
    /// The SRM.
    pub srm: Srm,
    /// The paper's policy, when the bundle has one.
    pub policy: Option<Policy>,
    /// The learned clicker, when the bundle has one.
    pub clicker: Option<Clicker>,
    /// Which of the two picks the clicks by default.
    pub kind: AgentKind,
    /// The action grid.
    pub grid: PatchGrid,
    /// The patch most often on the object in training (`[agent] best_patch`), if known.
    pub best_patch: Option<usize>,
}

impl Agent {
    /// Loads SAM, the SRM, and the policy and the clicker that the bundle has (the one its
    /// `[agent] kind` names is required).
    pub fn load(
        bundle: &crate::bundle::Bundle,
        backend: &dyn crate::engine::Backend,
    ) -> Result<Self> {
        let m = &bundle.manifest;
        let missing = |what: &str, why: &str| {
            anyhow::anyhow!(
                "{}: the bundle has no [models.{what}]; {why} (see models/README.md)",
                bundle.dir.display()
            )
        };
        let srm_entry = m.models.srm.as_ref().ok_or_else(|| {
            missing(
                "srm",
                "the prompting loop needs an SRM for its start points",
            )
        })?;
        if m.agent.kind == AgentKind::Paper && m.models.policy.is_none() {
            return Err(missing(
                "policy",
                "the paper's agent ([agent] kind = \"paper\") needs a policy",
            ));
        }
        let policy = match &m.models.policy {
            Some(p) => Some(Policy::load(backend, &bundle.path(&p.file), m)?),
            None => None,
        };
        let clicker = match &m.models.clicker {
            Some(c) => Some(Clicker::load(backend, &bundle.path(&c.file), m)?),
            None => None,
        };
        Ok(Agent {
            sam: Sam::load(bundle, backend)?,
            srm: Srm::load(backend, &bundle.path(&srm_entry.file), m)?,
            policy,
            clicker,
            kind: m.agent.kind,
            grid: PatchGrid::new(m.agent.grid),
            best_patch: m.agent.best_patch,
        })
    }

    /// The paper's policy; an error naming what is missing when the bundle has none.
    pub fn policy(&self) -> Result<&Policy> {
        self.policy
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this bundle has no policy ([models.policy])"))
    }

    /// The learned clicker; an error naming what is missing when the bundle has none.
    pub fn clicker(&self) -> Result<&Clicker> {
        self.clicker.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "this bundle has no clicker ([models.clicker]; alignsam train --agent clicker makes one)"
            )
        })
    }

    /// The bundle's own agent as a chooser: the paper's greedy policy or the clicker.
    pub fn default_chooser(&self) -> Result<Box<dyn PatchChooser + '_>> {
        Ok(match self.kind {
            AgentKind::Paper => Box::new(PolicyChooser(self.policy()?)),
            AgentKind::Clicker => Box::new(ClickerChooser::new(self.clicker()?, true)),
        })
    }

    /// Segments one image with the bundle's agent.
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
        let mut own;
        let chooser: &mut dyn PatchChooser = match per_image.chooser {
            Some(c) => c,
            None => {
                own = self.default_chooser()?;
                own.as_mut()
            }
        };
        let mut episode = self.start(
            embedding,
            geometry,
            per_image.warm,
            per_image.semantic,
            options,
        )?;
        episode.truth = per_image.truth;
        if let Some(truth) = per_image.truth {
            relabel(&mut episode, truth, self.grid.len());
            episode.current =
                self.sam
                    .decoder
                    .decode(embedding, &prompt_of(&episode.points), None, geometry)?;
        }
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
                StepOutcome::Stopped => break StopReason::AgentStop,
            }
        };
        if !episode.scored {
            let quality = chooser.assess(&episode.view(self.grid, options.forbid_repeats))?;
            episode.score_current(quality);
        }
        Ok(self.finish(episode, stop, started, options))
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
        let (points, embedding_map, mask_input) = match warm {
            None => {
                let (points, map) = self.srm_start(embedding, geometry, semantic, &mut times)?;
                (points, map, None)
            }
            Some(prev) => {
                let labels = options.step_labels;
                let (points, map) =
                    self.warm_start(embedding, geometry, prev, semantic, labels, &mut times)?;
                (points, map, options.feed_mask.then_some(&prev.low_res))
            }
        };
        self.core().begin(
            embedding,
            geometry,
            points,
            embedding_map,
            mask_input,
            semantic,
            options,
            (times, t),
        )
    }

    /// The loop's mechanics over this agent's decoder and grid.
    pub fn core(&self) -> LoopCore<'_> {
        LoopCore::new(&self.sam.decoder, self.grid)
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
    /// [`StepLabels::Embedding`]: on `E`); also returns the SRM's map on `E`.
    fn warm_start(
        &self,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        prev: &WarmStart,
        semantic: Option<&Map>,
        labels: StepLabels,
        times: &mut StageTimes,
    ) -> Result<(Vec<PointRecord>, Map)> {
        if prev.points.is_empty() {
            bail!("a warm start needs the previous frame's points");
        }
        let (_, eh, ew) = embedding.chw();
        let (h, w) = geometry.original;
        let t = Instant::now();
        let on_embedding = self.srm.predict(&state(embedding, None), semantic)?;
        let on_state = match labels {
            StepLabels::State => {
                let m = mask_probability(&prev.low_res, eh, ew);
                Some(self.srm.predict(&state(embedding, Some(&m)), semantic)?)
            }
            StepLabels::Embedding => None,
        };
        times.start_srm_ms = ms(t.elapsed());
        let prob = on_state.as_ref().unwrap_or(&on_embedding);
        let points = prev
            .points
            .iter()
            .map(|p| {
                let (x, y) = (
                    p.x.clamp(0.0, w as f64 - 0.5),
                    p.y.clamp(0.0, h as f64 - 0.5),
                );
                let (srm_prob, label) = self.srm.label_at(prob, x, y, geometry);
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
        Ok((points, on_embedding))
    }

    /// One step: the chooser looks at the episode and picks a click (or stops), the click gets
    /// its label (the chooser's, the SRM's, or the ground truth's), the decoder runs on every
    /// point so far (the previous logits as `mask_input`).
    pub fn step(
        &self,
        episode: &mut Episode<'_>,
        chooser: &mut dyn PatchChooser,
        options: &LoopOptions,
    ) -> Result<StepOutcome> {
        let step_start = Instant::now();
        let mut st = StepTimes::default();
        let (h, w) = episode.geometry.original;

        let t = Instant::now();
        let view = episode.view(self.grid, options.forbid_repeats);
        let choice = chooser.choose(&view)?;
        st.state_ms = view.state_ms();
        st.policy_ms = ms(t.elapsed()) - st.state_ms;
        drop(view);
        episode.score_current(choice.quality);
        let click = match choice.decision {
            Decision::Click(c) => c,
            Decision::Stop => return Ok(StepOutcome::Stopped),
            Decision::NoActionLeft => return Ok(StepOutcome::NoActionLeft),
        };
        let (x, y) = click
            .at
            .unwrap_or_else(|| self.grid.centre(click.patch, h, w));

        let t = Instant::now();
        let (srm_prob, label) = self.label_step(episode, &click, x, y, options)?;
        st.srm_ms = ms(t.elapsed());
        let point = PointRecord {
            step: episode.steps() + 1,
            x,
            y,
            label,
            patch: click.patch,
            origin: PointOrigin::Step,
            srm_prob,
            iou_prediction: f32::NAN,
        };

        let t = Instant::now();
        let converged = self.core().click(episode, point, options)?;
        st.decoder_ms = ms(t.elapsed());
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

    /// A step point's label and the SRM's probability there: the ground truth's when the episode
    /// has one, else the chooser's, else the SRM's (on `E`, or on `E * M` as the paper).
    fn label_step(
        &self,
        episode: &Episode<'_>,
        click: &Click,
        x: f64,
        y: f64,
        options: &LoopOptions,
    ) -> Result<(f32, PointLabel)> {
        let geometry = &episode.geometry;
        let on_embedding = self.srm.label_at(&episode.embedding_map, x, y, geometry);
        if let Some(truth) = episode.truth {
            return Ok((on_embedding.0, PointLabel::from_positive(hit(truth, x, y))));
        }
        if let Some(label) = click.label.filter(|_| !options.srm_labels) {
            return Ok((on_embedding.0, label));
        }
        Ok(match options.step_labels {
            StepLabels::Embedding => on_embedding,
            StepLabels::State => {
                let (_, eh, ew) = episode.embedding.chw();
                let m = mask_probability(&episode.current.logits, eh, ew);
                let prob = self
                    .srm
                    .predict(&state(episode.embedding, Some(&m)), episode.semantic)?;
                self.srm.label_at(&prob, x, y, geometry)
            }
        })
    }

    /// Closes an episode ([`LoopCore::finish`]).
    pub fn finish(
        &self,
        episode: Episode<'_>,
        stop: StopReason,
        started: Instant,
        options: &LoopOptions,
    ) -> LoopResult {
        self.core().finish(episode, stop, started, options)
    }
}

/// Labels every point so far from the ground truth.
fn relabel(episode: &mut Episode<'_>, truth: &Mask, patches: usize) {
    for p in &mut episode.points {
        p.label = PointLabel::from_positive(hit(truth, p.x, p.y));
    }
    episode.used = UsedClicks::new(patches);
    for p in &episode.points {
        episode.used.mark(p.patch, p.label);
    }
}
