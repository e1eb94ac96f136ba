//! What the clicker imitates, computed from the ground truth at the decoder's low resolution
//! (256 x 256 over the frame for SAM): the error regions of the current mask and how deep each
//! pixel lies inside its region. The oracle (SAM's and RITM's protocol) clicks the deepest point
//! of the largest error region; on the patch grid the teacher clicks the patch centre that lies
//! deepest inside an error region, positive in a missed part, negative in a false one.
//!
//! Depth is the distance to the region's boundary (or the image's edge) in low-resolution
//! pixels: it grows with the region's size and is largest where a click fixes most.

use image::{GrayImage, Luma};
use imageproc::distance_transform::euclidean_squared_distance_transform;

use crate::agent::ground_truth::frame_target;
use crate::dataset::Mask;
use crate::sam::{FrameGeometry, Map};

/// Depth (low-resolution pixels) at which a dense target saturates at 1: 32 pixels of 256 are
/// 128 frame pixels, an error region an eighth of the frame across.
pub const DEPTH_SCALE: f32 = 32.0;

/// The ground truth at the decoder's low resolution: per pixel 1 object, 0 background, and
/// whether the pixel covers the image (the padding never counts).
#[derive(Clone, Debug)]
pub struct LowResTruth {
    /// Side (256 for SAM).
    pub side: usize,
    /// Object (foreground share >= 0.5), row-major.
    pub object: Vec<bool>,
    /// Inside the image, row-major.
    pub valid: Vec<bool>,
}

impl LowResTruth {
    /// The mask over the frame at `side` x `side`.
    pub fn new(gt: &Mask, geometry: &FrameGeometry, side: usize) -> Self {
        let t = frame_target(gt, geometry, side);
        LowResTruth {
            side,
            object: t.map.data.iter().map(|&v| v >= 0.5).collect(),
            valid: t.valid,
        }
    }

    /// IoU of a mask's logits (> 0) with the object, over the image's pixels.
    pub fn iou(&self, logits: &Map) -> f32 {
        crate::agent::ground_truth::binary_iou(
            logits
                .data
                .iter()
                .zip(&self.object)
                .zip(&self.valid)
                .filter(|&(_, &v)| v)
                .map(|((&l, &g), _)| (l > 0.0, g)),
        )
    }
}

/// The errors of one mask: per pixel, depth inside a missed part (where a positive click
/// helps) and inside a false part (a negative click).
#[derive(Clone, Debug)]
pub struct Errors {
    /// Side.
    pub side: usize,
    /// `[negative, positive]` depth maps, row-major: the false-positive and the missed regions.
    pub depth: [Vec<f32>; 2],
}

impl Errors {
    /// The errors of mask logits against the truth.
    pub fn of(logits: &Map, truth: &LowResTruth) -> Self {
        let side = truth.side;
        assert_eq!((logits.height, logits.width), (side, side), "low-res sizes");
        let mut missed = vec![false; side * side];
        let mut false_pos = vec![false; side * side];
        for i in 0..side * side {
            if !truth.valid[i] {
                continue;
            }
            let pred = logits.data[i] > 0.0;
            missed[i] = truth.object[i] && !pred;
            false_pos[i] = !truth.object[i] && pred;
        }
        Errors {
            side,
            depth: [depth(&false_pos, side), depth(&missed, side)],
        }
    }

    /// The depth at a low-resolution pixel for a click with label index `label` (0 negative,
    /// 1 positive).
    pub fn at(&self, label: usize, pixel: usize) -> f32 {
        self.depth[label][pixel]
    }

    /// Dense targets at `cells` x `cells`: per cell the largest depth in it, scaled by
    /// [`DEPTH_SCALE`] and capped at 1; channels-last `[cells, cells, 2]` (negative, positive).
    pub fn dense_targets(&self, cells: usize) -> Vec<f32> {
        let k = self.side / cells;
        let mut out = vec![0f32; cells * cells * 2];
        for (label, d) in self.depth.iter().enumerate() {
            for y in 0..self.side {
                for x in 0..self.side {
                    let c = (y / k) * cells + x / k;
                    let v = (d[y * self.side + x] / DEPTH_SCALE).min(1.0);
                    let slot = &mut out[c * 2 + label];
                    *slot = slot.max(v);
                }
            }
        }
        out
    }
}

/// Euclidean distance of every pixel of `region` to the nearest pixel outside it (the frame's
/// edge counts as outside); 0 outside the region.
fn depth(region: &[bool], side: usize) -> Vec<f32> {
    if !region.iter().any(|&r| r) {
        return vec![0.0; side * side];
    }
    let s = side as u32;
    let outside = GrayImage::from_fn(s + 2, s + 2, |x, y| {
        let inside = (1..=s).contains(&x)
            && (1..=s).contains(&y)
            && region[(y - 1) as usize * side + (x - 1) as usize];
        Luma([(!inside) as u8])
    });
    let dist = euclidean_squared_distance_transform(&outside);
    (0..side * side)
        .map(|i| {
            let (x, y) = ((i % side) as u32 + 1, (i / side) as u32 + 1);
            if region[i] {
                (dist.get_pixel(x, y)[0] as f32).sqrt()
            } else {
                0.0
            }
        })
        .collect()
}

/// The low-resolution pixel that holds image point (x, y).
pub fn low_res_pixel(x: f64, y: f64, geometry: &FrameGeometry, side: usize) -> usize {
    let (fx, fy) = geometry.to_frame(x, y);
    let f = geometry.frame as f64;
    let col = ((fx / f * side as f64) as usize).min(side - 1);
    let row = ((fy / f * side as f64) as usize).min(side - 1);
    row * side + col
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_the_distance_to_the_boundary() {
        // A 5-wide band in a 9x9 map: depth 1 on its edges, 3 in the middle column.
        let region: Vec<bool> = (0..81).map(|i| (2..7).contains(&(i % 9))).collect();
        let d = depth(&region, 9);
        assert_eq!(d[4 * 9 + 4], 3.0);
        assert_eq!(d[4 * 9 + 2], 1.0);
        assert_eq!(d[4 * 9 + 1], 0.0);
        // The frame's edge is a boundary: the top row is 1 deep.
        assert_eq!(d[4], 1.0);
    }

    #[test]
    fn errors_split_missed_and_false_parts() {
        // 8x8, object: left half; mask: top half. Missed: bottom-left, false: top-right.
        let truth = LowResTruth {
            side: 8,
            object: (0..64).map(|i| i % 8 < 4).collect(),
            valid: vec![true; 64],
        };
        let logits = Map {
            height: 8,
            width: 8,
            data: (0..64)
                .map(|i| if i / 8 < 4 { 1.0 } else { -1.0 })
                .collect(),
        };
        assert_eq!(truth.iou(&logits), 16.0 / 48.0);
        let e = Errors::of(&logits, &truth);
        assert!(
            e.at(1, 6 * 8 + 1) > 0.0 && e.at(0, 6 * 8 + 1) == 0.0,
            "missed"
        );
        assert!(e.at(0, 8 + 6) > 0.0 && e.at(1, 8 + 6) == 0.0, "false");
        assert_eq!(e.at(0, 0), 0.0, "right");
        let t = e.dense_targets(2);
        // Cells: top-left right (0, 0), top-right false, bottom-left missed, bottom-right right.
        assert_eq!((t[0], t[1]), (0.0, 0.0));
        assert!(t[2] > 0.0 && t[3] == 0.0);
        assert!(t[4] == 0.0 && t[5] > 0.0);
        assert_eq!((t[6], t[7]), (0.0, 0.0));
    }
}
