//! Ground truth in the agent's terms, shared by training and evaluation: whether a point hits
//! the object (the paper's reward) and the object mask as an SRM-sized map over the frame.

use crate::dataset::Mask;
use crate::sam::{FrameGeometry, Map};

/// Whether image point (x, y) lies on the object: the pixel containing it is foreground.
pub fn hit(gt: &Mask, x: f64, y: f64) -> bool {
    let (px, py) = (x.floor(), y.floor());
    px >= 0.0 && py >= 0.0 && gt.get(px as usize, py as usize).unwrap_or(false)
}

/// The paper's reward: +1 for a point on the object, -1 otherwise.
pub fn reward(gt: &Mask, x: f64, y: f64) -> f32 {
    if hit(gt, x, y) { 1.0 } else { -1.0 }
}

/// The ground truth as a `size` x `size` map over the encoder frame, the SRM's output layout:
/// each cell holds the fraction of the image pixels falling in it that are foreground. Cells
/// that no image pixel reaches (the padding) are 0 and marked invalid.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameTarget {
    /// Foreground fraction per cell, row-major.
    pub map: Map,
    /// Whether the cell covers part of the image.
    pub valid: Vec<bool>,
}

/// Builds the [`FrameTarget`] of a mask: image pixel (x, y) maps to frame pixel
/// (x * resized_w / w, y * resized_h / h), which falls in cell (fy * size / frame, fx * size / frame).
pub fn frame_target(gt: &Mask, geometry: &FrameGeometry, size: usize) -> FrameTarget {
    let (h, w) = geometry.original;
    assert_eq!((gt.height, gt.width), (h, w), "mask and geometry disagree");
    let (nh, nw) = geometry.resized;
    let f = geometry.frame as f64;
    let cell = |v: usize, resized: usize, original: usize| -> usize {
        // Pixel centre, mapped into the frame, then to a cell.
        let frame_pos = (v as f64 + 0.5) * resized as f64 / original as f64;
        ((frame_pos / f * size as f64) as usize).min(size - 1)
    };
    let cols: Vec<usize> = (0..w).map(|x| cell(x, nw, w)).collect();
    let rows: Vec<usize> = (0..h).map(|y| cell(y, nh, h)).collect();
    let mut fg = vec![0u32; size * size];
    let mut total = vec![0u32; size * size];
    for (y, &r) in rows.iter().enumerate() {
        for (x, &c) in cols.iter().enumerate() {
            total[r * size + c] += 1;
            fg[r * size + c] += gt.data[y * w + x] as u32;
        }
    }
    let data = fg
        .iter()
        .zip(&total)
        .map(|(&a, &t)| if t == 0 { 0.0 } else { a as f32 / t as f32 })
        .collect();
    FrameTarget {
        map: Map {
            height: size,
            width: size,
            data,
        },
        valid: total.iter().map(|&t| t > 0).collect(),
    }
}

/// IoU of the SRM's map and the target, both thresholded at 0.5, over valid cells (1.0 when
/// both are empty).
pub fn map_iou(prob: &Map, target: &FrameTarget) -> f32 {
    binary_iou(
        prob.data
            .iter()
            .zip(&target.map.data)
            .zip(&target.valid)
            .filter(|&(_, &valid)| valid)
            .map(|((&p, &t), _)| (p >= 0.5, t >= 0.5)),
    )
}

/// Intersection and union of two binary masks: the one count behind every IoU in the crate
/// (the SRM map IoU, the loop's convergence test, training's mask IoU, the evaluation's IoU, the
/// agreement of warm and cold masks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overlap {
    /// Cells set in both.
    pub intersection: u64,
    /// Cells set in either.
    pub union: u64,
}

impl Overlap {
    /// Counts pairs of cells.
    pub fn of(cells: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let mut o = Overlap::default();
        for (a, b) in cells {
            o.intersection += (a && b) as u64;
            o.union += (a || b) as u64;
        }
        o
    }

    /// IoU, 1.0 when both masks are empty (nothing to find, nothing found).
    pub fn iou(&self) -> f64 {
        if self.union == 0 {
            1.0
        } else {
            self.intersection as f64 / self.union as f64
        }
    }

    /// The same in single precision, for the networks' own figures.
    pub fn iou_f32(&self) -> f32 {
        if self.union == 0 {
            1.0
        } else {
            self.intersection as f32 / self.union as f32
        }
    }
}

/// IoU of two binary masks given as pairs of cells (1.0 when both are empty).
pub fn binary_iou(cells: impl IntoIterator<Item = (bool, bool)>) -> f32 {
    Overlap::of(cells).iou_f32()
}

/// IoU of two equally long masks (1.0 when both are empty).
pub fn mask_iou(a: &[bool], b: &[bool]) -> f64 {
    debug_assert_eq!(a.len(), b.len(), "masks of different sizes");
    Overlap::of(a.iter().copied().zip(b.iter().copied())).iou()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(w: usize, h: usize, f: impl Fn(usize, usize) -> bool) -> Mask {
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        Mask {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn hits_and_rewards() {
        let m = mask(4, 2, |x, _| x >= 2);
        assert!(hit(&m, 2.0, 0.0) && hit(&m, 3.9, 1.9));
        assert!(!hit(&m, 1.99, 0.0) && !hit(&m, 4.0, 0.0) && !hit(&m, -0.1, 0.0));
        assert_eq!((reward(&m, 3.0, 1.0), reward(&m, 0.0, 1.0)), (1.0, -1.0));
    }

    #[test]
    fn frame_target_of_a_wide_image() {
        // 8 x 4 image (w x h) in a frame of 8: resized 4 x 8, so a 2 x 2 map has its top row over
        // the image and its bottom row in the padding. Right half of the image is foreground.
        let g = FrameGeometry::new(4, 8, 8);
        let t = frame_target(&mask(8, 4, |x, _| x >= 4), &g, 2);
        assert_eq!(t.map.data, vec![0.0, 1.0, 0.0, 0.0]);
        assert_eq!(t.valid, vec![true, true, false, false]);
        let pred = Map {
            height: 2,
            width: 2,
            data: vec![0.2, 0.9, 0.9, 0.9],
        };
        assert_eq!(map_iou(&pred, &t), 1.0, "padding cells do not count");
        let pred = Map {
            height: 2,
            width: 2,
            data: vec![0.7, 0.9, 0.0, 0.0],
        };
        assert_eq!(map_iou(&pred, &t), 0.5);
    }
}
