//! Rollouts: the prompting loop as inference runs it (the SRM's start points, a click per step
//! at a patch centre, the decoder on every point so far with the previous logits fed back), driven
//! by the teacher or by the clicker being trained, recording every state with the teacher's
//! targets. DAgger: the clicker's own rollouts give the states the teacher labels.

use std::time::Instant;

use anyhow::Result;
use rand::RngExt;
use rand::rngs::StdRng;

use super::samples::{ImageData, Sample, action, best_action, clicks_at, mask_at, score};
use super::teacher::Errors;
use crate::agent::srm::start_points;
use crate::agent::{
    FrameMap, LoopCore, LoopOptions, PatchGrid, PointOrigin, PointRecord, StageTimes,
};
use crate::cache::EmbeddingCache;
use crate::sam::{Decoder, PointLabel};
use crate::train::clicker_net::{ClickerArch, ClickerNet};

/// Who picks the clicks in a rollout.
pub enum Driver<'n> {
    /// The teacher (its action at every state).
    Teacher,
    /// The clicker, greedy, with a random free action now and then (`explore`: the chance).
    Learner {
        /// The network.
        net: &'n ClickerNet,
        /// Chance of a random free action instead of the network's.
        explore: f64,
    },
}

/// What the rollouts need besides the images.
pub struct Env<'a> {
    /// SAM's decoder.
    pub decoder: &'a Decoder,
    /// The embeddings.
    pub cache: &'a EmbeddingCache,
    /// The action grid.
    pub grid: PatchGrid,
    /// The SRM map's cells (for the start points).
    pub srm_cells: FrameMap,
    /// The clicker's sizes.
    pub arch: ClickerArch,
    /// Steps per rollout.
    pub steps: usize,
    /// A state's stop target is true when no later click of its rollout raises the best IoU so
    /// far by this much.
    pub stop_gain: f32,
}

/// One rollout.
pub struct Trajectory {
    /// Every state, in order (the last one after the last click).
    pub samples: Vec<Sample>,
    /// The true IoU of each state's mask.
    pub ious: Vec<f32>,
    /// The clicker's estimated IoU of each state's mask (NaN when the teacher drove).
    pub qualities: Vec<f32>,
    /// The clicker's stop probability at each state (NaN when the teacher drove).
    pub stops: Vec<f32>,
    /// Soft IoU of the image's object map and each state's mask (at the score maps' side).
    pub soft_ious: Vec<f32>,
    /// States where the clicker's choice was the teacher's, and states where both chose.
    pub agreed: (usize, usize),
}

impl Env<'_> {
    /// Rolls out image `index` of `images`.
    pub fn rollout(
        &self,
        images: &[ImageData],
        index: usize,
        driver: &Driver,
        rng: &mut StdRng,
    ) -> Result<Trajectory> {
        let img = &images[index];
        let geometry = img.geometry;
        let (h, w) = geometry.original;
        let s = self.arch.map_side();
        let embedding = {
            let Some((e, _)) = self.cache.get(&img.image_path)? else {
                anyhow::bail!("{}: no cached embedding", img.image_path.display())
            };
            e
        };
        let Some((pos, neg)) = start_points(&img.srm_map, self.srm_cells, &geometry) else {
            anyhow::bail!("{}: the SRM map has no cell inside the image", img.id)
        };
        let start: Vec<PointRecord> = [(pos, PointLabel::Positive), (neg, PointLabel::Negative)]
            .into_iter()
            .map(|(p, label)| PointRecord {
                step: 0,
                x: p.x,
                y: p.y,
                label,
                patch: self.grid.patch_at(p.x, p.y, h, w),
                origin: PointOrigin::SrmStart,
                srm_prob: p.prob,
                iou_prediction: f32::NAN,
            })
            .collect();
        let mut used: Vec<u16> = start
            .iter()
            .map(|p| action(p.patch, p.label) as u16)
            .collect();
        // The loop's own mechanics, as inference runs the clicker's steps: the previous logits
        // fed back; the rollout decides when to stop.
        let core = LoopCore::new(self.decoder, self.grid);
        let options = LoopOptions::fixed_steps(self.steps).paper();
        let mut prompting = core.begin(
            &embedding,
            &geometry,
            start,
            img.srm_map.clone(),
            None,
            None,
            &options,
            (StageTimes::default(), Instant::now()),
        )?;
        let mut t = Trajectory {
            samples: vec![],
            ious: vec![],
            qualities: vec![],
            stops: vec![],
            soft_ious: vec![],
            agreed: (0, 0),
        };
        for step in 0..=self.steps {
            let current = prompting.current();
            let errors = Errors::of(&current.logits, &img.truth);
            let teacher = self.teacher(img, &errors, &used);
            let quality = img.truth.iou(&current.logits);
            let sample = Sample {
                image: index as u32,
                steps: step as u8,
                mask: mask_at(&current.logits, s),
                clicks: clicks_at(&clicked(prompting.points()), &geometry, s),
                iou_prediction: current.iou,
                targets: errors
                    .dense_targets(s)
                    .iter()
                    .map(|v| (v * 255.0).round() as u8)
                    .collect(),
                depths: (0..2 * img.centre_pixels.len())
                    .map(|a| (errors.at(a % 2, img.centre_pixels[a / 2]) * 4.0).min(255.0) as u8)
                    .collect(),
                teacher: teacher.map(|a| a as u16),
                used: used.clone(),
                stop: None,
                quality,
            };
            let learner = match driver {
                Driver::Learner { net, .. } => Some(score(net, img, &sample)?),
                Driver::Teacher => None,
            };
            t.ious.push(quality);
            t.qualities
                .push(learner.as_ref().map_or(f32::NAN, |l| l.quality));
            t.stops.push(learner.as_ref().map_or(f32::NAN, |l| l.stop));
            t.soft_ious.push(
                img.object_map
                    .as_ref()
                    .map_or(f32::NAN, |o| soft_iou(o, &sample.mask)),
            );
            t.samples.push(sample);
            if step == self.steps {
                break;
            }
            let chosen = match (driver, &learner) {
                (Driver::Learner { explore, .. }, Some(scored)) => {
                    let mine = best_action(scored, img, &used);
                    if let (Some(a), Some(b)) = (mine, teacher) {
                        t.agreed.0 += (a == b) as usize;
                        t.agreed.1 += 1;
                    }
                    if rng.random::<f64>() < *explore {
                        random_free(&used, self.grid.len(), rng)
                    } else {
                        mine
                    }
                }
                _ => teacher,
            };
            let Some(a) = chosen else { break };
            let (patch, label) = (a / 2, PointLabel::from_positive(a % 2 == 1));
            let (x, y) = self.grid.centre(patch, h, w);
            used.push(a as u16);
            let click = PointRecord {
                step: step + 1,
                x,
                y,
                label,
                patch,
                origin: PointOrigin::Step,
                srm_prob: f32::NAN,
                iou_prediction: f32::NAN,
            };
            core.click(&mut prompting, click, &options)?;
        }
        set_stop_targets(&mut t, self.stop_gain);
        Ok(t)
    }

    /// The teacher's action: the free (patch, label) whose centre lies deepest in an error
    /// region of that kind; None when no centre lies in one.
    fn teacher(&self, img: &ImageData, errors: &Errors, used: &[u16]) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for (patch, &pixel) in img.centre_pixels.iter().enumerate() {
            for label in [PointLabel::Negative, PointLabel::Positive] {
                let a = action(patch, label);
                let d = errors.at(label as usize, pixel);
                if d > 0.0 && !used.contains(&(a as u16)) && best.is_none_or(|(_, b)| d > b) {
                    best = Some((a, d));
                }
            }
        }
        best.map(|(a, _)| a)
    }
}

/// Soft IoU of two probability maps: sum(a b) / sum(a + b - a b).
pub fn soft_iou(a: &[f32], b: &[f32]) -> f32 {
    let (mut inter, mut union) = (0f32, 0f32);
    for (&x, &y) in a.iter().zip(b) {
        inter += x * y;
        union += x + y - x * y;
    }
    if union > 0.0 { inter / union } else { 1.0 }
}

/// A uniformly random free action.
/// The points as the samples record them.
fn clicked(points: &[PointRecord]) -> Vec<(f64, f64, PointLabel)> {
    points.iter().map(|p| (p.x, p.y, p.label)).collect()
}

fn random_free(used: &[u16], patches: usize, rng: &mut StdRng) -> Option<usize> {
    let free: Vec<usize> = (0..2 * patches)
        .filter(|a| !used.contains(&(*a as u16)))
        .collect();
    (!free.is_empty()).then(|| free[rng.random_range(0..free.len())])
}

/// Stop targets: at each state but the last, whether the rest of the rollout never beats the
/// best IoU so far by `gain` (stopping there, with the keep-best guard, loses less than that).
fn set_stop_targets(t: &mut Trajectory, gain: f32) {
    let n = t.ious.len();
    let mut best_so_far = f32::NEG_INFINITY;
    for i in 0..n.saturating_sub(1) {
        best_so_far = best_so_far.max(t.ious[i]);
        let future = t.ious[i + 1..]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        t.samples[i].stop = Some(future - best_so_far < gain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_targets_look_ahead_from_the_best_so_far() {
        let mut t = Trajectory {
            samples: vec![],
            ious: vec![0.5, 0.7, 0.6, 0.71, 0.69],
            qualities: vec![],
            stops: vec![],
            soft_ious: vec![],
            agreed: (0, 0),
        };
        for _ in 0..5 {
            t.samples.push(Sample {
                image: 0,
                steps: 0,
                mask: vec![],
                clicks: vec![],
                iou_prediction: 0.0,
                targets: vec![],
                depths: vec![],
                teacher: None,
                used: vec![],
                stop: None,
                quality: 0.0,
            });
        }
        set_stop_targets(&mut t, 0.02);
        let stops: Vec<_> = t.samples.iter().map(|s| s.stop).collect();
        // After state 1 (0.7) the best later is 0.71: not worth 0.02 more.
        assert_eq!(
            stops,
            [Some(false), Some(true), Some(true), Some(true), None]
        );
    }
}
