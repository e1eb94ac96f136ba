//! One JSON line per image or frame: points, labels, stop reason and per-stage milliseconds.

use std::path::Path;

use serde::Serialize;

use crate::agent::{LoopResult, PointRecord, StageTimes, StopReason};

/// The record written for each image.
#[derive(Debug, Serialize)]
pub struct ImageRecord<'a> {
    /// The input file (or frame source); a name that is not UTF-8 is written with U+FFFD.
    #[serde(serialize_with = "lossy_path")]
    pub image: &'a Path,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Steps run after the two start points.
    pub steps: usize,
    /// The step whose mask was kept (the best estimated one; `steps` with `--keep-last`).
    pub kept_step: usize,
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
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "lossy_opt_path"
    )]
    pub mask: Option<&'a Path>,
    /// The overlay PNG written, if any.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "lossy_opt_path"
    )]
    pub overlay: Option<&'a Path>,
}

impl<'a> ImageRecord<'a> {
    /// The record of a loop result.
    pub fn new(image: &'a Path, result: &'a LoopResult) -> Self {
        let (height, width) = result.geometry.original;
        ImageRecord {
            image,
            width,
            height,
            steps: result.steps,
            kept_step: result.kept_step,
            stop_reason: result.stop,
            points: &result.points,
            iou_prediction: result.iou_prediction,
            foreground_fraction: result.foreground_share(),
            ms: &result.times,
            mask: None,
            overlay: None,
        }
    }
}

/// Serialises a path as a string, replacing bytes that are not UTF-8 with U+FFFD (serde refuses
/// such paths, which would lose the whole record).
pub fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// [`lossy_path`] for an optional path.
pub fn lossy_opt_path<S: serde::Serializer, P: AsRef<Path>>(
    p: &Option<P>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.as_ref().to_string_lossy()),
        None => s.serialize_none(),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_utf8_still_serialise() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"img\xff\n.png"));
        let mut out = vec![];
        lossy_path(p, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "\"img\u{fffd}\\n.png\"");
    }
}
