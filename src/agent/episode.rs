//! One image's loop in progress ([`Episode`]) and the mechanics every loop shares
//! ([`LoopCore`]): decode the start points, add a click and decode every point so far (the
//! previous logits as `mask_input`), close with the kept mask upscaled once. `Agent`'s phases
//! add the SRM and the chooser around them; the paper agent's PPO episode in training adds its
//! sampled policy and its SRM being trained, on the same mechanics, so that what training sees
//! is what inference does.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::chooser::{StepView, UsedClicks};
use super::grid::PatchGrid;
use super::options::LoopOptions;
use super::record::{LoopResult, PointRecord, StageTimes, StopReason, TraceStep, prompt_of};
#[cfg(doc)]
use crate::bundle::manifest::StepLabels;
use crate::dataset::Mask;
use crate::sam::{Decoder, Embedding, FrameGeometry, LowResMask, Map, postprocess};
use crate::util::ms;

/// The mask the keep-best guard holds: the best estimated one so far.
struct Kept {
    step: usize,
    quality: f32,
    mask: LowResMask,
}

/// One image's loop in progress: the points so far and the current mask. Made by
/// `Agent::start` (or [`LoopCore::begin`]), advanced by `Agent::step` (or
/// [`LoopCore::click`]), closed by `Agent::finish` (or [`LoopCore::finish`]).
pub struct Episode<'e> {
    pub(super) embedding: &'e Embedding,
    pub(super) geometry: FrameGeometry,
    pub(super) semantic: Option<&'e Map>,
    pub(super) truth: Option<&'e Mask>,
    pub(super) points: Vec<PointRecord>,
    pub(super) current: LowResMask,
    /// The SRM's map on `s_0 = E`: the start points' map, the srm-error rule's and the clicker's
    /// prior, and the step labels with [`StepLabels::Embedding`].
    pub(super) embedding_map: Map,
    pub(super) used: UsedClicks,
    /// Whether the current mask has its estimated IoU yet (the chooser gives it when asked for
    /// the next click).
    pub(super) scored: bool,
    kept: Option<Kept>,
    trace: Option<Vec<TraceStep>>,
    pub(super) times: StageTimes,
    /// Clicks added by [`LoopCore::click`] (the steps taken).
    clicks: usize,
    start_phase: Duration,
    pub(super) step_total: Duration,
}

impl Episode<'_> {
    /// Steps taken so far (start points excluded): the clicks added, through [`LoopCore::click`]
    /// directly or `Agent::step`.
    pub fn steps(&self) -> usize {
        self.clicks
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

    /// What a chooser sees of this episode.
    pub fn view(&self, grid: PatchGrid, forbid_repeats: bool) -> StepView<'_> {
        StepView::new(
            self.embedding,
            &self.geometry,
            &self.current,
            &self.points,
            self.steps(),
            &self.embedding_map,
            grid,
            &self.used,
            forbid_repeats,
        )
    }

    /// Records the current mask's estimated IoU (`None`: the decoder's prediction) for the
    /// keep-best guard and the trace.
    pub(super) fn score_current(&mut self, quality: Option<f32>) {
        if self.scored {
            return;
        }
        self.scored = true;
        let q = quality.unwrap_or(self.current.iou);
        let step = self.steps();
        if let Some(trace) = &mut self.trace {
            trace.push(TraceStep {
                step,
                quality: q,
                low_res: self.current.logits.clone(),
            });
        }
        // NaN never wins; ties keep the earlier mask (fewer clicks for the same estimate).
        if self.kept.as_ref().is_none_or(|k| q > k.quality) {
            self.kept = Some(Kept {
                step,
                quality: q,
                mask: self.current.clone(),
            });
        }
    }
}

/// The loop's mechanics without an SRM or a chooser: who picks the points is the caller's.
#[derive(Clone, Copy)]
pub struct LoopCore<'d> {
    decoder: &'d Decoder,
    grid: PatchGrid,
}

impl<'d> LoopCore<'d> {
    /// The mechanics over SAM's `decoder`, with clicks on `grid`'s patches.
    pub fn new(decoder: &'d Decoder, grid: PatchGrid) -> Self {
        LoopCore { decoder, grid }
    }

    /// Decodes the start `points` (with `mask_input`, a warm start's previous logits) and opens
    /// the episode. `embedding_map` is the SRM's map on `s_0 = E` (what choosers see as the
    /// prior); `times` holds what the start phase measured so far, `started` when it began.
    #[allow(clippy::too_many_arguments)]
    pub fn begin<'e>(
        &self,
        embedding: &'e Embedding,
        geometry: &FrameGeometry,
        mut points: Vec<PointRecord>,
        embedding_map: Map,
        mask_input: Option<&Map>,
        semantic: Option<&'e Map>,
        options: &LoopOptions,
        (mut times, started): (StageTimes, Instant),
    ) -> Result<Episode<'e>> {
        let t_dec = Instant::now();
        let first = self
            .decoder
            .decode(embedding, &prompt_of(&points), mask_input, geometry)?;
        times.start_decoder_ms = ms(t_dec.elapsed());
        for p in points.iter_mut() {
            p.iou_prediction = first.iou;
        }
        let mut used = UsedClicks::new(self.grid.len());
        for p in &points {
            used.mark(p.patch, p.label);
        }
        let start_phase = started.elapsed();
        times.start_ms = ms(start_phase);
        Ok(Episode {
            embedding,
            geometry: *geometry,
            semantic,
            truth: None,
            points,
            current: first,
            embedding_map,
            used,
            scored: false,
            kept: None,
            trace: options.trace.then(Vec::new),
            times,
            clicks: 0,
            start_phase,
            step_total: Duration::ZERO,
        })
    }

    /// Adds `point` (labelled, its step number set) and decodes every point so far, the current
    /// logits as `mask_input` with `options.feed_mask`. Returns whether the mask converged: its
    /// IoU with the previous one at or above `options.stop_iou`.
    pub fn click(
        &self,
        episode: &mut Episode<'_>,
        point: PointRecord,
        options: &LoopOptions,
    ) -> Result<bool> {
        episode.used.mark(point.patch, point.label);
        episode.points.push(point);
        episode.clicks += 1;
        let mask_input = options.feed_mask.then_some(&episode.current.logits);
        let next = self.decoder.decode(
            episode.embedding,
            &prompt_of(&episode.points),
            mask_input,
            &episode.geometry,
        )?;
        episode
            .points
            .last_mut()
            .expect("just pushed")
            .iou_prediction = next.iou;
        let converged = options.stop_iou.is_some_and(|tol| {
            low_res_iou(&episode.current.logits, &next.logits, &episode.geometry) >= tol
        });
        episode.current = next;
        episode.scored = false;
        Ok(converged)
    }

    /// Closes an episode: the kept mask (the best estimated one, with `keep_best`; else the last)
    /// upscaled to the image size and thresholded, once.
    pub fn finish(
        &self,
        episode: Episode<'_>,
        stop: StopReason,
        started: Instant,
        options: &LoopOptions,
    ) -> LoopResult {
        let steps = episode.steps();
        let Episode {
            geometry,
            points,
            current,
            kept,
            trace,
            mut times,
            ..
        } = episode;
        let (kept_step, kept_mask) = match kept {
            Some(k) if options.keep_best => (k.step, k.mask),
            _ => (steps, current),
        };
        let t = Instant::now();
        let mask =
            postprocess::threshold(&postprocess::upscale_logits(&kept_mask.logits, &geometry));
        times.postprocess_ms = ms(t.elapsed());
        times.total_ms = ms(started.elapsed());
        LoopResult {
            steps,
            kept_step,
            points,
            stop,
            times,
            iou_prediction: kept_mask.iou,
            low_res: kept_mask.logits,
            mask,
            geometry,
            trace: trace.unwrap_or_default(),
        }
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
