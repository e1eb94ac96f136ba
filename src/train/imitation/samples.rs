//! The training data of the clicker: each image once (its truth at low resolution, the SRM's
//! map, the pooled embedding, later the trunk's outputs), and each state a rollout visited
//! (the network's inputs and the teacher's targets), with the batches built from them.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::teacher::LowResTruth;
use crate::agent::FrameMap;
use crate::agent::clicker::STEP_SCALE;
use crate::agent::ground_truth::FrameTarget;
use crate::dataset::Mask;
use crate::sam::{FrameGeometry, Map, PointLabel};
use crate::train::clicker_net::{ClickerArch, ClickerNet, HeadOut, Pooled, StateBatch, maps};

/// One training image, ready for rollouts and batches.
pub struct ImageData {
    /// The dataset's name and the id, `NAME/ID`.
    pub id: String,
    /// The image file (the cache key).
    pub image_path: PathBuf,
    /// The ground truth at the image's size.
    pub gt: Mask,
    /// Where the image sits in the encoder frame.
    pub geometry: FrameGeometry,
    /// The truth at the decoder's low resolution (the teacher's).
    pub truth: LowResTruth,
    /// The object at the trunk's side (its target).
    pub object: FrameTarget,
    /// The SRM's map on E (the start points' map).
    pub srm_map: Map,
    /// Per patch, the score-map cell of its centre.
    pub centre_cells: Vec<usize>,
    /// Per patch, the low-resolution pixel of its centre.
    pub centre_pixels: Vec<usize>,
    /// Per score-map cell, whether it covers part of the image.
    pub valid: Vec<bool>,
    /// The embedding average-pooled to the trunk's side, `[C, T, T]`.
    pub pooled: Vec<f32>,
    /// The object probabilities `[S, S]` at the score maps' side, from a trunk that did not see
    /// the image (fit images) or the final trunk (held-out images), once trained.
    pub object_map: Option<Vec<f32>>,
}

/// An action: patch and label, as one index (`patch * 2 + label`, label 0 negative).
pub fn action(patch: usize, label: PointLabel) -> usize {
    patch * 2 + label as usize
}

/// A state a rollout visited, with what the teacher says about it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Index of the image.
    pub image: u32,
    /// Steps taken.
    pub steps: u8,
    /// The mask's probability at the score maps' side (sigmoid of the logits, averaged).
    pub mask: Vec<f32>,
    /// Clicks at the score maps' side, channels-last `[S, S, 2]`.
    pub clicks: Vec<u8>,
    /// The decoder's IoU prediction for the mask.
    pub iou_prediction: f32,
    /// Dense targets `[S, S, 2]` in 1/255 steps.
    pub targets: Vec<u8>,
    /// Per action (`patch * 2 + label`), the depth of its point in an error region of its kind,
    /// in quarter low-resolution pixels (capped at 255).
    pub depths: Vec<u8>,
    /// The teacher's action (None: no patch centre lies in an error region).
    pub teacher: Option<u16>,
    /// Actions already taken (the guard forbids them).
    pub used: Vec<u16>,
    /// Whether no later click of the rollout improved on the best mask so far (None: the
    /// rollout's last state, which has no later clicks).
    pub stop: Option<bool>,
    /// The mask's IoU with the object (at low resolution).
    pub quality: f32,
}

/// Whether mirroring left to right maps the image onto itself in the frame: it spans the
/// frame's whole width (landscape and square images; a portrait image sits at the frame's left).
pub fn can_mirror(image: &ImageData) -> bool {
    image.geometry.resized.1 == image.geometry.frame
}

/// A channels-last `[S, S, K]` map mirrored left to right.
pub fn mirror_map<T: Copy>(map: &[T], s: usize) -> Vec<T> {
    let k = map.len() / (s * s);
    let mut out = Vec::with_capacity(map.len());
    for y in 0..s {
        for x in (0..s).rev() {
            out.extend_from_slice(&map[(y * s + x) * k..(y * s + x + 1) * k]);
        }
    }
    out
}

/// A state and its image's object map as a batch item: as rolled out, or mirrored left to
/// right (the training's augmentation: clicking is symmetric, the state mirrors exactly for an
/// image that spans the frame's width).
#[derive(Clone, Debug)]
pub struct Item<'a> {
    /// The state.
    pub sample: std::borrow::Cow<'a, Sample>,
    /// The image's object map at the score maps' side.
    pub object: std::borrow::Cow<'a, [f32]>,
    /// The image's valid cells.
    pub valid: std::borrow::Cow<'a, [bool]>,
    /// The image's patch centres' cells.
    pub centre_cells: &'a [usize],
}

impl<'a> Item<'a> {
    /// The state as it was.
    pub fn new(sample: &'a Sample, image: &'a ImageData) -> Self {
        Item {
            sample: std::borrow::Cow::Borrowed(sample),
            object: std::borrow::Cow::Borrowed(image.object_map.as_deref().expect("maps")),
            valid: std::borrow::Cow::Borrowed(&image.valid),
            centre_cells: &image.centre_cells,
        }
    }

    /// The state mirrored left to right (see [`can_mirror`]); `grid` is the patch grid's side.
    pub fn mirrored(sample: &'a Sample, image: &'a ImageData, s: usize, grid: usize) -> Self {
        let patch = |p: usize| (p / grid) * grid + (grid - 1 - p % grid);
        let action = |a: usize| patch(a / 2) * 2 + a % 2;
        let mut depths = vec![0u8; sample.depths.len()];
        for (a, &d) in sample.depths.iter().enumerate() {
            depths[action(a)] = d;
        }
        let flipped = Sample {
            mask: mirror_map(&sample.mask, s),
            clicks: mirror_map(&sample.clicks, s),
            targets: mirror_map(&sample.targets, s),
            depths,
            teacher: sample.teacher.map(|a| action(a as usize) as u16),
            used: sample
                .used
                .iter()
                .map(|&a| action(a as usize) as u16)
                .collect(),
            ..sample.clone()
        };
        Item {
            sample: std::borrow::Cow::Owned(flipped),
            object: std::borrow::Cow::Owned(mirror_map(
                image.object_map.as_deref().expect("maps"),
                s,
            )),
            valid: std::borrow::Cow::Owned(mirror_map(&image.valid, s)),
            centre_cells: &image.centre_cells,
        }
    }
}

/// The mask's probability at side `s`: the sigmoid of the low-resolution logits averaged over
/// blocks, as the network pools its `mask` input.
pub fn mask_at(logits: &Map, s: usize) -> Vec<f32> {
    let k = logits.height / s;
    let mut out = vec![0f32; s * s];
    let norm = 1.0 / (k * k) as f32;
    for y in 0..logits.height {
        for x in 0..logits.width {
            let v = 1.0 / (1.0 + (-logits.data[y * logits.width + x]).exp());
            out[(y / k) * s + x / k] += v * norm;
        }
    }
    out
}

/// The clicks at side `s`, channels-last `[S, S, 2]`: 1 in each click's cell.
pub fn clicks_at(points: &[(f64, f64, PointLabel)], geometry: &FrameGeometry, s: usize) -> Vec<u8> {
    let cells = FrameMap { size: s };
    let mut out = vec![0u8; s * s * 2];
    for &(x, y, label) in points {
        out[cells.cell_at(x, y, geometry) * 2 + label as usize] = 1;
    }
    out
}

/// The two scalars as the network reads them.
pub fn scalars(iou_prediction: f32, steps: usize) -> [f32; 2] {
    [iou_prediction, steps as f32 / STEP_SCALE]
}

/// The object maps of some items as the head's batch input.
pub fn pooled_batch(items: &[Item], arch: &ClickerArch) -> Result<Pooled> {
    let (n, s) = (items.len(), arch.map_side());
    let mut object = Vec::with_capacity(n * s * s);
    for item in items {
        object.extend_from_slice(&item.object);
    }
    Ok(Pooled {
        object: maps(object, n, s, 1)?,
    })
}

/// States as the head's batch input.
pub fn state_batch(items: &[Item], arch: &ClickerArch) -> Result<StateBatch> {
    let (n, s) = (items.len(), arch.map_side());
    let mut mask = Vec::with_capacity(n * s * s);
    let mut clicks = Vec::with_capacity(n * s * s * 2);
    let mut sc = Vec::with_capacity(n * 2);
    for x in items.iter().map(|i| &i.sample) {
        mask.extend_from_slice(&x.mask);
        clicks.extend(x.clicks.iter().map(|&c| c as f32));
        sc.extend(scalars(x.iou_prediction, x.steps as usize));
    }
    Ok(StateBatch {
        mask_prob: maps(mask, n, s, 1)?,
        clicks: maps(clicks, n, s, 2)?,
        scalars: Tensor::from_vec(sc, (n, 2), &Device::Cpu)?,
    })
}

/// The head on one state of an image: its outputs as plain values.
pub struct Scored {
    /// Scores `[S, S, 2]`, channels-last (logits).
    pub scores: Vec<f32>,
    /// Stop probability.
    pub stop: f32,
    /// Estimated IoU.
    pub quality: f32,
}

/// Runs the head on one state.
pub fn score(net: &ClickerNet, image: &ImageData, sample: &Sample) -> Result<Scored> {
    let item = [Item::new(sample, image)];
    let pooled = pooled_batch(&item, &net.arch)?;
    let state = state_batch(&item, &net.arch)?;
    let HeadOut {
        scores,
        stop,
        quality,
    } = net.head(&pooled, &state)?;
    let sig = |t: &Tensor| -> Result<f32> {
        let v = t.flatten_all()?.to_vec1::<f32>()?[0];
        Ok(1.0 / (1.0 + (-v).exp()))
    };
    Ok(Scored {
        scores: scores.flatten_all()?.to_vec1::<f32>()?,
        stop: sig(&stop)?,
        quality: sig(&quality)?,
    })
}

/// The free action with the highest score at its patch centre (ties: the lowest index).
pub fn best_action(scored: &Scored, image: &ImageData, used: &[u16]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (patch, &cell) in image.centre_cells.iter().enumerate() {
        for label in [PointLabel::Negative, PointLabel::Positive] {
            let a = action(patch, label);
            if used.contains(&(a as u16)) {
                continue;
            }
            let v = scored.scores[cell * 2 + label as usize];
            if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
                best = Some((a, v));
            }
        }
    }
    best.map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_and_clicks_pool_as_the_network_does() {
        let logits = Map {
            height: 4,
            width: 4,
            data: [vec![100.0; 8], vec![-100.0; 8]].concat(),
        };
        assert_eq!(mask_at(&logits, 2), vec![1.0, 1.0, 0.0, 0.0]);
        let geo = FrameGeometry::new(100, 100, 16);
        let c = clicks_at(&[(80.0, 10.0, PointLabel::Positive)], &geo, 2);
        assert_eq!(c, vec![0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(action(7, PointLabel::Positive), 15);
    }

    #[test]
    fn mirroring_moves_maps_and_actions_alike() {
        assert_eq!(
            mirror_map(&[1, 2, 3, 4, 5, 6, 7, 8], 2),
            vec![3, 4, 1, 2, 7, 8, 5, 6]
        );
        let sample = Sample {
            image: 0,
            steps: 1,
            mask: vec![0.1, 0.2, 0.3, 0.4],
            clicks: vec![1, 0, 0, 0, 0, 0, 0, 1],
            iou_prediction: 0.5,
            targets: vec![0; 8],
            // A 2 x 2 grid: action 3 is patch 1 (row 0, column 1) positive.
            depths: vec![0, 0, 0, 9, 0, 0, 0, 0],
            teacher: Some(3),
            used: vec![4],
            stop: None,
            quality: 0.5,
        };
        let image = ImageData {
            id: "x".into(),
            image_path: "x".into(),
            gt: Mask {
                width: 1,
                height: 1,
                data: vec![true],
            },
            geometry: FrameGeometry::new(10, 10, 16),
            truth: LowResTruth {
                side: 1,
                object: vec![true],
                valid: vec![true],
            },
            object: crate::agent::ground_truth::FrameTarget {
                map: Map::zeros(1, 1),
                valid: vec![true],
            },
            srm_map: Map::zeros(1, 1),
            centre_cells: vec![0, 1, 2, 3],
            centre_pixels: vec![0; 4],
            valid: vec![true, true, true, false],
            pooled: vec![],
            object_map: Some(vec![0.9, 0.0, 0.0, 0.0]),
        };
        assert!(can_mirror(&image));
        let m = Item::mirrored(&sample, &image, 2, 2);
        // Patch 1 (row 0, column 1) becomes patch 0; patch 2 (row 1, column 0) patch 3.
        assert_eq!(m.sample.depths[1], 9);
        assert_eq!(m.sample.teacher, Some(1));
        assert_eq!(m.sample.used, vec![6]);
        assert_eq!(m.sample.mask, vec![0.2, 0.1, 0.4, 0.3]);
        assert_eq!(m.sample.clicks, vec![0, 0, 1, 0, 0, 1, 0, 0]);
        assert_eq!(&*m.object, &[0.0, 0.9, 0.0, 0.0]);
        assert_eq!(&*m.valid, &[true, true, false, true]);
    }
}
