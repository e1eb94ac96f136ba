//! The semantic recalibration module (SRM): state `[1,C,H,W]` (and, for the explicit branch, a
//! `semantic [1,1,H,W]` text-image similarity map) -> `fg_prob [1,1,S,S]`, a foreground
//! probability map over the encoder frame. It gives the start points and labels every point
//! the policy chooses.

use std::path::Path;

use anyhow::{Result, bail};

use super::grid::FrameMap;
use crate::bundle::Manifest;
use crate::engine::{Backend, Model, ModelSpec, Tensor, TensorView, fixed};
use crate::sam::{FrameGeometry, Map, PointLabel};

/// The loaded SRM.
pub struct Srm {
    model: Box<dyn Model>,
    map: FrameMap,
    semantic: bool,
    embedding_hw: (usize, usize),
}

impl Srm {
    /// What the runtime needs from an SRM file, per the manifest.
    pub fn spec(manifest: &Manifest) -> Result<ModelSpec> {
        let Some(entry) = &manifest.models.srm else {
            bail!("the bundle has no [models.srm]")
        };
        let [c, h, w] = manifest.embedding.shape;
        let s = entry.map_size;
        let mut spec = ModelSpec::new("SRM").input("state", fixed(&[1, c, h, w]));
        if entry.semantic {
            spec = spec.input("semantic", fixed(&[1, 1, h, w]));
        }
        Ok(spec.output("fg_prob", fixed(&[1, 1, s, s])))
    }

    /// Loads the SRM named in the manifest's `[models.srm]`.
    pub fn load(backend: &dyn Backend, path: &Path, manifest: &Manifest) -> Result<Self> {
        let spec = Self::spec(manifest)?;
        let entry = manifest.models.srm.as_ref().expect("spec checked");
        let model = backend.load(path, &spec)?;
        Ok(Srm {
            model,
            map: FrameMap {
                size: entry.map_size,
            },
            semantic: entry.semantic,
            embedding_hw: (manifest.embedding.shape[1], manifest.embedding.shape[2]),
        })
    }

    /// Whether this SRM is the explicit branch (needs a semantic map per image).
    pub fn needs_semantic(&self) -> bool {
        self.semantic
    }

    /// The map's cell layout over the frame.
    pub fn frame_map(&self) -> FrameMap {
        self.map
    }

    /// The foreground probability map for a state.
    pub fn predict(&self, state: &Tensor, semantic: Option<&Map>) -> Result<Map> {
        let out = match (self.semantic, semantic) {
            (false, _) => self.model.run(&[state.view()])?,
            (true, Some(m)) => {
                let (h, w) = self.embedding_hw;
                if (m.height, m.width) != (h, w) {
                    bail!(
                        "the semantic map must be {h}x{w}, got {}x{}",
                        m.height,
                        m.width
                    );
                }
                let shape = [1, 1, h, w];
                self.model.run(&[
                    state.view(),
                    TensorView {
                        shape: &shape,
                        data: &m.data,
                    },
                ])?
            }
            (true, None) => bail!(
                "this bundle's SRM is the explicit branch and needs a text-image similarity map for every image"
            ),
        };
        let s = self.map.size;
        Ok(Map {
            height: s,
            width: s,
            data: out.into_iter().next().expect("one output").into_data(),
        })
    }

    /// The model's probability at an image point, and the label it implies (>= 0.5: object).
    pub fn label_at(
        &self,
        prob: &Map,
        x: f64,
        y: f64,
        geometry: &FrameGeometry,
    ) -> (f32, PointLabel) {
        let p = prob.data[self.map.cell_at(x, y, geometry)];
        (
            p,
            if p >= 0.5 {
                PointLabel::Positive
            } else {
                PointLabel::Negative
            },
        )
    }

    /// The model itself.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }
}

/// A start point: a cell centre in image coordinates and the SRM's probability there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StartPoint {
    /// Column in image pixels.
    pub x: f64,
    /// Row in image pixels.
    pub y: f64,
    /// The SRM's foreground probability in that cell.
    pub prob: f32,
}

/// Start points from a probability map: the centre of the most probable cell inside the image
/// (positive) and of the least probable one (negative). Ties go to the first cell in row-major
/// order; cells whose centre lies in the frame's padding are skipped.
pub fn start_points(
    prob: &Map,
    map: FrameMap,
    geometry: &FrameGeometry,
) -> Option<(StartPoint, StartPoint)> {
    let mut best: Option<StartPoint> = None;
    let mut worst: Option<StartPoint> = None;
    for (i, &p) in prob.data.iter().enumerate() {
        let Some((x, y)) = map.centre_in_image(i, geometry) else {
            continue;
        };
        if p.is_nan() {
            continue;
        }
        let here = StartPoint { x, y, prob: p };
        if best.is_none_or(|b| p > b.prob) {
            best = Some(here);
        }
        if worst.is_none_or(|w| p < w.prob) {
            worst = Some(here);
        }
    }
    Some((best?, worst?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_points_ignore_cells_in_the_padding() {
        // Square frame of 4 cells per side over a 2:1 image: only the top two rows are image.
        let geo = FrameGeometry::new(50, 100, 8); // resized 4 x 8
        let mut data = vec![0.5; 16];
        data[1] = 0.9; // row 0, col 1: best inside the image
        data[6] = 0.1; // row 1, col 2: worst inside the image
        data[12] = 1.0; // row 3 lies in the padding: ignored
        data[13] = 0.0;
        let prob = Map {
            height: 4,
            width: 4,
            data,
        };
        let (pos, neg) = start_points(&prob, FrameMap { size: 4 }, &geo).unwrap();
        // Cell (0,1) centre in the frame: (3, 1) -> image (37.5, 12.5).
        assert_eq!(
            pos,
            StartPoint {
                x: 37.5,
                y: 12.5,
                prob: 0.9
            }
        );
        // Cell (1,2) centre: (5, 3) -> image (62.5, 37.5).
        assert_eq!(
            neg,
            StartPoint {
                x: 62.5,
                y: 37.5,
                prob: 0.1
            }
        );
    }
}
