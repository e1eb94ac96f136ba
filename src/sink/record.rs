//! One JSON line per image or frame: points, labels, stop reason and per-stage milliseconds.

use std::path::Path;

use serde::Serialize;

use crate::agent::{LoopResult, PointRecord, StageTimes, StopReason};

/// The record written for each image.
#[derive(Debug, Serialize)]
pub struct ImageRecord<'a> {
    /// The input file (or frame source).
    pub image: &'a Path,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Steps run after the two start points.
    pub steps: usize,
    /// Why the loop stopped.
    pub stop_reason: StopReason,
    /// Every point, start points first.
    pub points: &'a [PointRecord],
    /// The decoder's IoU prediction for the final mask.
    pub iou_prediction: f32,
    /// Fraction of the image inside the mask.
    pub foreground_fraction: f64,
    /// Milliseconds per stage.
    pub ms: &'a StageTimes,
    /// The mask PNG written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<&'a Path>,
    /// The overlay PNG written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<&'a Path>,
}

impl<'a> ImageRecord<'a> {
    /// The record of a loop result.
    pub fn new(image: &'a Path, result: &'a LoopResult) -> Self {
        let (height, width) = result.geometry.original;
        let fg =
            result.mask.iter().filter(|&&m| m).count() as f64 / result.mask.len().max(1) as f64;
        ImageRecord {
            image,
            width,
            height,
            steps: result.steps,
            stop_reason: result.stop,
            points: &result.points,
            iou_prediction: result.iou_prediction,
            foreground_fraction: fg,
            ms: &result.times,
            mask: None,
            overlay: None,
        }
    }
}
