//! One JSON line per image or frame: points, labels, stop reason and per-stage milliseconds.

use std::path::Path;

use serde::Serialize;

use crate::agent::{LoopResult, PointRecord, StageTimes, StopReason};

/// The record written for each image.
#[derive(Debug, Serialize)]
pub struct ImageRecord<'a> {
    /// The input file (or frame source); a name that is not UTF-8 is written with U+FFFD.
    #[serde(serialize_with = "escaped_path_ser")]
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
        serialize_with = "escaped_opt_path"
    )]
    pub mask: Option<&'a Path>,
    /// The overlay PNG written, if any.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "escaped_opt_path"
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

/// A path as text for records and messages: UTF-8 names as they are; a byte that is not UTF-8
/// is written as `\xNN` (as `ls -b` does), so that distinct files keep distinct names where a
/// replacement character would make them all the same.
pub fn escaped_path(p: &Path) -> std::borrow::Cow<'_, str> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.into();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.into()
}

/// Serialises a path as [`escaped_path`] text (serde refuses paths that are not UTF-8, which
/// would lose the whole record).
pub fn escaped_path_ser<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&escaped_path(p))
}

/// [`escaped_path_ser`] for an optional path.
pub fn escaped_opt_path<S: serde::Serializer, P: AsRef<Path>>(
    p: &Option<P>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&escaped_path(p.as_ref())),
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
        escaped_path_ser(p, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#""img\\xff\n.png""#);
        let other = Path::new(std::ffi::OsStr::from_bytes(b"img\xfe\n.png"));
        assert_ne!(escaped_path(p), escaped_path(other));
    }
}
