//! SAM's `ResizeLongestSide`: the geometry shared by preprocessing, prompts and postprocessing.

/// Where an image sits inside the encoder's square input frame.
///
/// SAM resizes the image so that its longest side is `frame` (1024), keeping the aspect ratio,
/// and pads the rest of the frame with zeros at the bottom and right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameGeometry {
    /// Original image height and width.
    pub original: (usize, usize),
    /// Height and width after resizing, before padding.
    pub resized: (usize, usize),
    /// Side of the square encoder input (1024 for every SAM release).
    pub frame: usize,
}

impl FrameGeometry {
    /// The geometry for an image of `height` x `width` and an encoder frame of `frame` pixels.
    pub fn new(height: usize, width: usize, frame: usize) -> Self {
        FrameGeometry {
            original: (height, width),
            resized: preprocess_shape(height, width, frame),
            frame,
        }
    }

    /// The geometry, or an error when the image cannot be placed in the frame: an empty image,
    /// or one so elongated that its short side would round to 0 pixels (wider than about
    /// `2 * frame : 1`), which SAM's resize cannot represent.
    pub fn checked(height: usize, width: usize, frame: usize) -> anyhow::Result<Self> {
        if height == 0 || width == 0 {
            anyhow::bail!("the image is empty ({width}x{height})");
        }
        let g = Self::new(height, width, frame);
        if g.resized.0 == 0 || g.resized.1 == 0 {
            anyhow::bail!(
                "a {width}x{height} image is too elongated for SAM's {frame}-pixel frame: its short side would become {} pixels (at most about {}:1 works)",
                g.resized.0.min(g.resized.1),
                2 * frame
            );
        }
        Ok(g)
    }

    /// Maps a point from original image coordinates (x, y) into the encoder frame, exactly as
    /// `ResizeLongestSide.apply_coords` does (separate x and y scales, computed in f64).
    pub fn to_frame(&self, x: f64, y: f64) -> (f64, f64) {
        let (oh, ow) = self.original;
        let (nh, nw) = self.resized;
        (x * (nw as f64 / ow as f64), y * (nh as f64 / oh as f64))
    }

    /// The inverse of [`FrameGeometry::to_frame`].
    pub fn to_image(&self, x: f64, y: f64) -> (f64, f64) {
        let (oh, ow) = self.original;
        let (nh, nw) = self.resized;
        (x * (ow as f64 / nw as f64), y * (oh as f64 / nh as f64))
    }
}

/// `ResizeLongestSide.get_preprocess_shape`: the (height, width) after scaling the longest side
/// to `long_side`, rounded half up like the reference's `int(x + 0.5)`.
pub fn preprocess_shape(height: usize, width: usize, long_side: usize) -> (usize, usize) {
    let scale = long_side as f64 / height.max(width) as f64;
    let h = (height as f64 * scale + 0.5) as usize;
    let w = (width as f64 * scale + 0.5) as usize;
    (h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_reference_rounding() {
        // Values from segment_anything's ResizeLongestSide.get_preprocess_shape.
        assert_eq!(preprocess_shape(321, 481, 1024), (683, 1024));
        assert_eq!(preprocess_shape(480, 854, 1024), (576, 1024));
        assert_eq!(preprocess_shape(1500, 1100, 1024), (1024, 751));
        assert_eq!(preprocess_shape(37, 53, 1024), (715, 1024));
        assert_eq!(preprocess_shape(256, 256, 1024), (1024, 1024));
    }

    #[test]
    fn extreme_aspect_ratios_are_errors_not_panics() {
        // 1x20000 and 2x20000 round to 0 rows; 1x2000 keeps one.
        for (h, w) in [(1, 20000), (2, 20000), (20000, 1), (0, 5), (5, 0)] {
            let e = FrameGeometry::checked(h, w, 1024).unwrap_err().to_string();
            assert!(e.contains("too elongated") || e.contains("empty"), "{e}");
        }
        assert_eq!(
            FrameGeometry::checked(1, 2000, 1024).unwrap().resized,
            (1, 1024)
        );
    }

    #[test]
    fn coords_scale_each_axis_separately_and_invert() {
        let g = FrameGeometry::new(321, 481, 1024);
        let (x, y) = g.to_frame(240.0, 160.0);
        assert!((x - 240.0 * 1024.0 / 481.0).abs() < 1e-9);
        assert!((y - 160.0 * 683.0 / 321.0).abs() < 1e-9);
        let (bx, by) = g.to_image(x, y);
        assert!((bx - 240.0).abs() < 1e-9 && (by - 160.0).abs() < 1e-9);
    }
}
