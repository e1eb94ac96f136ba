//! The action space: the centres of a G x G grid of patches over the image, and the SRM's map
//! over the encoder frame.
//!
//! Patches cover the original image (not the padded encoder frame), so every action is a point
//! inside the image whatever its aspect ratio. Patch `i` is row `i / G`, column `i % G`.

use crate::sam::FrameGeometry;

/// A G x G patch grid over an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGrid {
    /// Patches per side.
    pub size: usize,
}

impl PatchGrid {
    /// A grid of `size` x `size` patches.
    pub fn new(size: usize) -> Self {
        assert!(size > 0, "grid size must be positive");
        PatchGrid { size }
    }

    /// Number of patches (actions).
    pub fn len(&self) -> usize {
        self.size * self.size
    }

    /// Whether the grid has no patches (never true: size is positive).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The centre of patch `index` in image pixel coordinates (x, y), for an image of
    /// `height` x `width`.
    pub fn centre(&self, index: usize, height: usize, width: usize) -> (f64, f64) {
        let (row, col) = (index / self.size, index % self.size);
        let g = self.size as f64;
        (
            (col as f64 + 0.5) * width as f64 / g,
            (row as f64 + 0.5) * height as f64 / g,
        )
    }

    /// The patch that contains image point (x, y) (points on the far edges belong to the last
    /// row or column).
    pub fn patch_at(&self, x: f64, y: f64, height: usize, width: usize) -> usize {
        let g = self.size as f64;
        let col = ((x / width as f64 * g).floor().max(0.0) as usize).min(self.size - 1);
        let row = ((y / height as f64 * g).floor().max(0.0) as usize).min(self.size - 1);
        row * self.size + col
    }
}

/// An `S` x `S` map over the encoder's square frame (the padded image), as the SRM outputs it.
/// Cell (r, c) covers frame pixels `[r * F / S, (r + 1) * F / S)` vertically, likewise across.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMap {
    /// Cells per side.
    pub size: usize,
}

impl FrameMap {
    /// The cell that holds image point (x, y).
    pub fn cell_at(&self, x: f64, y: f64, geometry: &FrameGeometry) -> usize {
        let (fx, fy) = geometry.to_frame(x, y);
        let s = self.size as f64;
        let f = geometry.frame as f64;
        let col = ((fx / f * s).floor().max(0.0) as usize).min(self.size - 1);
        let row = ((fy / f * s).floor().max(0.0) as usize).min(self.size - 1);
        row * self.size + col
    }

    /// The centre of cell `index` in image coordinates, or `None` when the centre lies in the
    /// frame's padding (outside the image).
    pub fn centre_in_image(&self, index: usize, geometry: &FrameGeometry) -> Option<(f64, f64)> {
        let (row, col) = (index / self.size, index % self.size);
        let step = geometry.frame as f64 / self.size as f64;
        let (fx, fy) = ((col as f64 + 0.5) * step, (row as f64 + 0.5) * step);
        let (nh, nw) = geometry.resized;
        if fx >= nw as f64 || fy >= nh as f64 {
            return None;
        }
        let (x, y) = geometry.to_image(fx, fy);
        let (h, w) = geometry.original;
        Some((x.min(w as f64 - 0.5), y.min(h as f64 - 0.5)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_centres_and_lookup_agree() {
        let g = PatchGrid::new(10);
        // 481 x 321 image (w x h): patch 0 centred at (24.05, 16.05), patch 99 at the far corner.
        let (x, y) = g.centre(0, 321, 481);
        assert!((x - 24.05).abs() < 1e-9 && (y - 16.05).abs() < 1e-9);
        let (x, y) = g.centre(99, 321, 481);
        assert!((x - 456.95).abs() < 1e-9 && (y - 304.95).abs() < 1e-9);
        for i in 0..g.len() {
            let (x, y) = g.centre(i, 321, 481);
            assert_eq!(g.patch_at(x, y, 321, 481), i);
        }
        assert_eq!(g.patch_at(481.0, 321.0, 321, 481), 99);
    }

    #[test]
    fn frame_cells_skip_the_padding() {
        // 1000 x 500 image in a 1024 frame: resized 512 x 1024, so rows 5..9 of a 10-cell map
        // have centres in the padding.
        let geo = FrameGeometry::new(500, 1000, 1024);
        let m = FrameMap { size: 10 };
        assert!(m.centre_in_image(4 * 10, &geo).is_some());
        assert!(m.centre_in_image(5 * 10, &geo).is_none());
        let (x, y) = m.centre_in_image(0, &geo).unwrap();
        assert!(
            (x - 51.2 * 1000.0 / 1024.0).abs() < 1e-9 && (y - 51.2 * 500.0 / 512.0).abs() < 1e-9
        );
        assert_eq!(m.cell_at(x, y, &geo), 0);
    }
}
