//! The interactive upper bound: clicks from the ground truth instead of the agent, by SAM's (and
//! RITM's) evaluation protocol. The first click goes to the object's deepest point; each next one
//! to the interior point farthest from the boundary of the largest error region of the current
//! mask, positive on a false-negative region, negative on a false-positive one; the previous
//! low-resolution logits are fed back as `mask_input`. Reported as the IoU after each click and
//! the number of clicks to reach a target IoU (NoC@85, NoC@90, capped at [`NOC_CAP`]).
//!
//! This is how to check any SAM bundle on your own data, whatever the agent: the figures say how
//! well the decoder follows clicks, which bounds what a prompting policy can get from it.

use anyhow::{Result, bail};
use image::{GrayImage, Luma};
use imageproc::distance_transform::euclidean_squared_distance_transform;
use imageproc::region_labelling::{Connectivity, connected_components};

use crate::agent::ground_truth::mask_iou;
use crate::dataset::Mask;
use crate::sam::{Decoder, Embedding, FrameGeometry, Map, PointLabel, PromptPoint, postprocess};

/// Clicks given before NoC gives up (the number of clicks counted for an image that never
/// reaches the target), as in RITM's and SAM's tables.
pub const NOC_CAP: usize = 20;
/// The click counts the report gives mIoU at.
pub const REPORT_CLICKS: [usize; 4] = [1, 3, 5, 10];

/// The next oracle click for a prediction against the ground truth (both `width * height`,
/// row-major), or `None` when the prediction is exact. Coordinates are pixel centres.
pub fn next_click(pred: &[bool], gt: &Mask) -> Option<PromptPoint> {
    let (w, h) = (gt.width, gt.height);
    assert_eq!(
        pred.len(),
        w * h,
        "prediction and ground truth sizes differ"
    );
    let false_neg: Vec<bool> = pred.iter().zip(&gt.data).map(|(&p, &g)| g && !p).collect();
    let false_pos: Vec<bool> = pred.iter().zip(&gt.data).map(|(&p, &g)| p && !g).collect();
    let (fn_region, fn_area) = largest_component(&false_neg, w, h);
    let (fp_region, fp_area) = largest_component(&false_pos, w, h);
    if fn_area == 0 && fp_area == 0 {
        return None;
    }
    let (region, label) = if fn_area >= fp_area {
        (fn_region, PointLabel::Positive)
    } else {
        (fp_region, PointLabel::Negative)
    };
    let (x, y) = deepest_point(&region, w, h);
    Some(PromptPoint {
        x: x as f64 + 0.5,
        y: y as f64 + 0.5,
        label,
    })
}

/// The largest 8-connected region of `cells` (as a mask) and its area.
fn largest_component(cells: &[bool], w: usize, h: usize) -> (Vec<bool>, usize) {
    if !cells.iter().any(|&c| c) {
        return (vec![false; cells.len()], 0);
    }
    let image = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        Luma([cells[y as usize * w + x as usize] as u8])
    });
    let labels = connected_components(&image, Connectivity::Eight, Luma([0u8]));
    let mut areas: Vec<usize> = vec![];
    for &Luma([l]) in labels.pixels() {
        let l = l as usize;
        if l >= areas.len() {
            areas.resize(l + 1, 0);
        }
        areas[l] += 1;
    }
    areas[0] = 0; // the background label
    // The first label of the largest area: ties go to the region met first in row-major order.
    let (best, &area) = areas
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|&(_, a)| a)
        .expect("at least the background label");
    let region = labels
        .pixels()
        .map(|&Luma([l])| l as usize == best)
        .collect();
    (region, area)
}

/// The region's pixel farthest from its boundary (the frame's edge counts as boundary), first in
/// row-major order among equals.
fn deepest_point(region: &[bool], w: usize, h: usize) -> (usize, usize) {
    // Distances are to the nearest "foreground" pixel of the transform: everything outside the
    // region, including a one-pixel frame around the image.
    let outside = GrayImage::from_fn(w as u32 + 2, h as u32 + 2, |x, y| {
        let inside = (1..=w as u32).contains(&x)
            && (1..=h as u32).contains(&y)
            && region[(y - 1) as usize * w + (x - 1) as usize];
        Luma([(!inside) as u8])
    });
    let dist = euclidean_squared_distance_transform(&outside);
    let mut best = (0, 0, f64::NEG_INFINITY);
    for y in 0..h {
        for x in 0..w {
            let d = dist.get_pixel(x as u32 + 1, y as u32 + 1)[0];
            if region[y * w + x] && d > best.2 {
                best = (x, y, d);
            }
        }
    }
    (best.0, best.1)
}

/// One image clicked by the oracle.
#[derive(Clone, Debug)]
pub struct OracleRun {
    /// IoU of the mask after click 1, 2, ... (at the original size).
    pub ious: Vec<f64>,
    /// The clicks, in order.
    pub points: Vec<PromptPoint>,
    /// The mask after `keep` clicks (see [`run_oracle`]), at the original size.
    pub kept_mask: Vec<bool>,
    /// The low-resolution logits after `keep` clicks.
    pub kept_low_res: Map,
    /// The decoder's IoU prediction after `keep` clicks.
    pub kept_iou_prediction: f32,
}

impl OracleRun {
    /// Clicks needed to reach `target` IoU, [`NOC_CAP`] when it is never reached within it.
    pub fn clicks_to(&self, target: f64) -> usize {
        self.ious
            .iter()
            .take(NOC_CAP)
            .position(|&v| v >= target)
            .map_or(NOC_CAP, |i| i + 1)
    }

    /// IoU after `n` clicks (the last one when fewer were run).
    pub fn iou_at(&self, n: usize) -> f64 {
        self.ious[n.clamp(1, self.ious.len()) - 1]
    }
}

/// Clicks an image `clicks` times by the oracle and keeps the mask after `keep` clicks. After an
/// exact mask there is nothing left to click: the mask and its IoU stay as they are.
pub fn run_oracle(
    decoder: &Decoder,
    embedding: &Embedding,
    geometry: &FrameGeometry,
    gt: &Mask,
    clicks: usize,
    keep: usize,
    feed_mask: bool,
) -> Result<OracleRun> {
    if clicks == 0 || keep == 0 || keep > clicks {
        bail!("the oracle needs 1 <= keep ({keep}) <= clicks ({clicks})");
    }
    if geometry.original != (gt.height, gt.width) {
        bail!(
            "the mask is {}x{} but the image is {}x{}",
            gt.width,
            gt.height,
            geometry.original.1,
            geometry.original.0
        );
    }
    let mut points = vec![];
    let mut ious = vec![];
    let mut pred = vec![false; gt.data.len()];
    let mut current: Option<crate::sam::LowResMask> = None;
    let mut kept = None;
    for n in 1..=clicks {
        if let Some(p) = next_click(&pred, gt) {
            points.push(p);
            let mask_input = current.as_ref().filter(|_| feed_mask).map(|m| &m.logits);
            let out = decoder.decode(embedding, &points, mask_input, geometry)?;
            pred = postprocess::threshold(&postprocess::upscale_logits(&out.logits, geometry));
            current = Some(out);
        }
        ious.push(mask_iou(&pred, &gt.data));
        if n == keep {
            kept = Some((pred.clone(), current.clone()));
        }
    }
    let (kept_mask, kept_out) = kept.expect("keep <= clicks");
    let kept_out = kept_out.expect("the first click always exists: the object is not empty");
    Ok(OracleRun {
        ious,
        points,
        kept_mask,
        kept_low_res: kept_out.logits,
        kept_iou_prediction: kept_out.iou,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(w: usize, h: usize, f: impl Fn(usize, usize) -> bool) -> Mask {
        Mask {
            width: w,
            height: h,
            data: (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| f(x, y))
                .collect(),
        }
    }

    #[test]
    fn first_click_is_the_objects_deepest_point() {
        // A 7x7 square at x 2..9, y 1..8 in a 12x10 image: its centre (5, 4) is the one pixel
        // 4 from every side.
        let gt = mask(12, 10, |x, y| (2..9).contains(&x) && (1..8).contains(&y));
        let p = next_click(&[false; 120], &gt).unwrap();
        assert_eq!((p.x, p.y, p.label), (5.5, 4.5, PointLabel::Positive));
        assert!(next_click(&gt.data, &gt).is_none(), "exact mask: no click");
    }

    #[test]
    fn the_larger_error_region_wins_and_sets_the_label() {
        // Object: left block x 0..4. Prediction: object plus a large false positive x 6..12.
        let gt = mask(12, 6, |x, _| x < 4);
        let pred = mask(12, 6, |x, _| !(4..6).contains(&x));
        let p = next_click(&pred.data, &gt).unwrap();
        assert_eq!(p.label, PointLabel::Negative);
        assert!((6.0..12.0).contains(&p.x), "{p:?}");
        // A small missed corner (1 pixel) loses against a 2-pixel false positive elsewhere.
        let gt = mask(6, 6, |x, y| x < 3 && y < 3);
        let pred = mask(6, 6, |x, y| {
            (x < 3 && y < 3 && (x, y) != (0, 0)) || (y == 5 && x >= 4)
        });
        assert_eq!(
            next_click(&pred.data, &gt).unwrap().label,
            PointLabel::Negative
        );
    }

    #[test]
    fn clicks_to_caps_at_twenty() {
        let run = |ious: Vec<f64>| OracleRun {
            ious,
            points: vec![],
            kept_mask: vec![],
            kept_low_res: Map::zeros(1, 1),
            kept_iou_prediction: 0.0,
        };
        let r = run(vec![0.5, 0.86, 0.91]);
        assert_eq!((r.clicks_to(0.85), r.clicks_to(0.9)), (2, 3));
        assert_eq!(run(vec![0.5; 25]).clicks_to(0.85), NOC_CAP);
        assert_eq!(r.iou_at(5), 0.91);
        assert_eq!(r.iou_at(1), 0.5);
    }
}
