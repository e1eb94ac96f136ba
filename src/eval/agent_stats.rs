//! Agent-level figures: how often the chosen points land on the object, how often the SRM labels
//! them right, and how well the SRM's map matches the ground truth.
//!
//! Unlike the mask metrics, these do not go through SAM's decoder, so they keep their meaning
//! with a SAM of random weights: the policy and the SRM see the embeddings, whatever they are, and
//! are judged against the ground truth directly.

use std::ops::AddAssign;

use anyhow::Result;
use serde::Serialize;

use crate::agent::ground_truth::{frame_target, hit, map_iou};
use crate::agent::state::state;
use crate::agent::{PointOrigin, PointRecord, Srm};
use crate::dataset::Mask;
use crate::sam::{Embedding, FrameGeometry, Map, PointLabel};

/// Point counts of one loop (or, summed, of many): step points are the chooser's, start points
/// the SRM's (identical for every chooser on the same embedding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PointStats {
    /// Points chosen at steps (origin [`PointOrigin::Step`]).
    pub step_points: usize,
    /// Step points on ground-truth foreground (the paper's reward is +1 there).
    pub step_hits: usize,
    /// Step points whose SRM label agrees with the ground truth there.
    pub step_labels_correct: usize,
    /// Distinct patches among the step points (a greedy policy may repeat one patch).
    pub distinct_patches: usize,
    /// SRM start points (two per image: one positive, one negative).
    pub start_points: usize,
    /// Start points whose label agrees with the ground truth: the positive one on foreground,
    /// the negative one on background.
    pub start_correct: usize,
}

impl PointStats {
    /// Counts the points of one loop against its image's ground truth. Points carried over from a
    /// previous frame are not counted (evaluation runs still images).
    pub fn of(points: &[PointRecord], gt: &Mask) -> Self {
        let mut s = PointStats::default();
        let mut patches = vec![];
        for p in points {
            let on_object = hit(gt, p.x, p.y);
            let label_right = (p.label == PointLabel::Positive) == on_object;
            match p.origin {
                PointOrigin::Step => {
                    s.step_points += 1;
                    s.step_hits += on_object as usize;
                    s.step_labels_correct += label_right as usize;
                    if !patches.contains(&p.patch) {
                        patches.push(p.patch);
                    }
                }
                PointOrigin::SrmStart => {
                    s.start_points += 1;
                    s.start_correct += label_right as usize;
                }
                PointOrigin::PreviousFrame | PointOrigin::Oracle | PointOrigin::TruthStart => {}
            }
        }
        s.distinct_patches = patches.len();
        s
    }

    /// The fraction of step points on the object, pooled over every point counted (`None`
    /// without step points).
    pub fn hit_rate(&self) -> Option<f64> {
        ratio(self.step_hits, self.step_points)
    }

    /// The fraction of start points the SRM labelled right.
    pub fn start_hit_rate(&self) -> Option<f64> {
        ratio(self.start_correct, self.start_points)
    }

    /// The fraction of step points the SRM labelled right.
    pub fn label_accuracy(&self) -> Option<f64> {
        ratio(self.step_labels_correct, self.step_points)
    }
}

impl AddAssign for PointStats {
    fn add_assign(&mut self, o: Self) {
        self.step_points += o.step_points;
        self.step_hits += o.step_hits;
        self.step_labels_correct += o.step_labels_correct;
        self.distinct_patches += o.distinct_patches;
        self.start_points += o.start_points;
        self.start_correct += o.start_correct;
    }
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// The SRM's map on the first state (`s_0 = E`) against the ground truth, beside constant maps:
/// the IoU a map earns without looking at the image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SrmScores {
    /// IoU of the SRM's map (see [`map_iou`]).
    pub srm: f64,
    /// IoU of a map that says "object" everywhere: the object's share of the image.
    pub all_foreground: f64,
    /// IoU of a map that says "background" everywhere: 0, or 1 for an image without object.
    pub all_background: f64,
}

/// Scores the SRM on one image. `s_0` does not depend on the chooser, so this is one figure per
/// image, shared by every method. Panics when the mask's size is not the geometry's (as
/// [`frame_target`] does): check it first.
pub fn srm_scores(
    srm: &Srm,
    embedding: &Embedding,
    geometry: &FrameGeometry,
    gt: &Mask,
) -> Result<SrmScores> {
    let prob = srm.predict(&state(embedding, None), None)?;
    let size = srm.frame_map().size;
    let target = frame_target(gt, geometry, size);
    let constant = |v: f32| Map {
        height: size,
        width: size,
        data: vec![v; size * size],
    };
    Ok(SrmScores {
        srm: map_iou(&prob, &target) as f64,
        all_foreground: map_iou(&constant(1.0), &target) as f64,
        all_background: map_iou(&constant(0.0), &target) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(origin: PointOrigin, x: f64, y: f64, label: PointLabel, patch: usize) -> PointRecord {
        let step = if origin == PointOrigin::Step { 1 } else { 0 };
        PointRecord {
            step,
            x,
            y,
            label,
            patch,
            origin,
            srm_prob: 0.5,
            iou_prediction: 0.5,
        }
    }

    #[test]
    fn counts_hits_labels_and_start_points() {
        // 4x2 mask, right half foreground.
        let gt = Mask {
            width: 4,
            height: 2,
            data: vec![false, false, true, true, false, false, true, true],
        };
        use PointLabel::{Negative as N, Positive as P};
        use PointOrigin::{PreviousFrame, SrmStart, Step};
        let points = [
            point(SrmStart, 3.5, 0.5, P, 1), // positive start on the object: right
            point(SrmStart, 2.5, 1.5, N, 1), // negative start on the object: wrong
            point(Step, 2.5, 0.5, P, 1),     // hit, label right
            point(Step, 2.5, 0.5, N, 1),     // hit (same patch again), label wrong
            point(Step, 0.5, 0.5, N, 0),     // miss, label right
            point(PreviousFrame, 3.0, 1.0, P, 1), // ignored
        ];
        let s = PointStats::of(&points, &gt);
        assert_eq!(
            s,
            PointStats {
                step_points: 3,
                step_hits: 2,
                step_labels_correct: 2,
                distinct_patches: 2,
                start_points: 2,
                start_correct: 1
            }
        );
        assert_eq!(s.hit_rate(), Some(2.0 / 3.0));
        assert_eq!(s.label_accuracy(), Some(2.0 / 3.0));
        assert_eq!(s.start_hit_rate(), Some(0.5));

        // Pooled over images: per point, not a mean of per-image rates.
        let mut total = s;
        total += PointStats::of(&[point(Step, 3.0, 0.0, P, 1)], &gt);
        assert_eq!((total.step_points, total.step_hits), (4, 3));
        assert_eq!(total.hit_rate(), Some(0.75));
        assert_eq!(PointStats::default().hit_rate(), None);
    }
}
