//! The learned clicker (`[agent] kind = "clicker"`): one network that sees what is wrong with
//! the current mask and picks the next click, its label, or stop. Trained by imitation of the
//! ground-truth oracle on its own rollouts (`alignsam train --agent clicker`, see
//! `crate::train::imitation`).
//!
//! Its interface (`clicker.onnx`; H x W the embedding grid, S the score maps' side):
//!
//! ```text
//! embedding [1,C,H,W]    the image embedding E
//! mask      [1,1,4H,4W]  the current low-resolution mask logits
//! clicks    [1,2,H,W]    the clicks so far: 1 in the embedding cell of each negative (channel 0)
//!                        and positive (channel 1) click
//! scalars   [1,2]        the decoder's IoU prediction for the mask, steps taken / 15
//! ->
//! scores    [1,2,S,S]    how much a negative (0) or positive (1) click in each cell would fix
//! stop      [1,1]        logit: no click would help any more
//! quality   [1,1]        logit of the mask's IoU with the object
//! object    [1,1,S,S]    where the clicker thinks the object is (probability), from E alone
//! ```
//!
//! The runtime reads the score maps at the patch centres ([`ClickerChooser`]): the action space
//! is the grid's patches times the two labels, as for the paper's policy, plus stop. The step
//! count is scaled by a constant, not the budget, so that a run's first T steps are the same
//! whatever the budget.

use std::path::Path;

use anyhow::{Result, bail};

use super::chooser::{Choice, Decision, PatchChooser, StepView, best_click};
use super::grid::FrameMap;
use super::record::PointRecord;
use crate::bundle::Manifest;
use crate::engine::{Backend, Model, ModelSpec, Tensor, TensorView, fixed};
use crate::sam::{FrameGeometry, Map, PointLabel};

/// Steps are given to the network as `steps / STEP_SCALE`.
pub const STEP_SCALE: f32 = 15.0;

/// The loaded clicker.
pub struct Clicker {
    model: Box<dyn Model>,
    map: FrameMap,
    stop_threshold: f32,
    embedding_hw: (usize, usize),
}

/// What the clicker says about one state.
#[derive(Clone, Debug, PartialEq)]
pub struct ClickerOutput {
    /// `[negative, positive]` score maps, each S x S over the frame.
    pub scores: [Map; 2],
    /// Probability that no click would help.
    pub stop: f32,
    /// Estimated IoU of the current mask.
    pub quality: f32,
    /// Where the clicker thinks the object is: a probability per cell, S x S over the frame.
    pub object: Map,
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl Clicker {
    /// What the runtime needs from a clicker file, per the manifest.
    pub fn spec(manifest: &Manifest) -> Result<ModelSpec> {
        let Some(entry) = &manifest.models.clicker else {
            bail!("the bundle has no [models.clicker]")
        };
        let [c, h, w] = manifest.embedding.shape;
        let m = manifest.embedding.low_res_size();
        let s = entry.map_size;
        Ok(ModelSpec::new("clicker")
            .input("embedding", fixed(&[1, c, h, w]))
            .input("mask", fixed(&[1, 1, m, m]))
            .input("clicks", fixed(&[1, 2, h, w]))
            .input("scalars", fixed(&[1, 2]))
            .output("scores", fixed(&[1, 2, s, s]))
            .output("stop", fixed(&[1, 1]))
            .output("quality", fixed(&[1, 1]))
            .output("object", fixed(&[1, 1, s, s])))
    }

    /// Loads the clicker named in the manifest's `[models.clicker]`.
    pub fn load(backend: &dyn Backend, path: &Path, manifest: &Manifest) -> Result<Self> {
        let spec = Self::spec(manifest)?;
        let entry = manifest.models.clicker.as_ref().expect("spec checked");
        let model = backend.load(path, &spec)?;
        Ok(Clicker {
            model,
            map: FrameMap {
                size: entry.map_size,
            },
            stop_threshold: entry.stop_threshold,
            embedding_hw: (manifest.embedding.shape[1], manifest.embedding.shape[2]),
        })
    }

    /// The score maps' cell layout over the frame.
    pub fn frame_map(&self) -> FrameMap {
        self.map
    }

    /// The stop probability at which the clicker stops.
    pub fn stop_threshold(&self) -> f32 {
        self.stop_threshold
    }

    /// Runs the network on one state.
    pub fn run(&self, view: &StepView) -> Result<ClickerOutput> {
        let (h, w) = self.embedding_hw;
        let inputs = StateInputs::new(view.points, view.geometry, view.current.iou, view.steps, h);
        if h != w {
            bail!("the clicker needs a square embedding grid, the bundle's is {h}x{w}");
        }
        let m = view.current.logits.height;
        let out = self.model.run(&[
            view.embedding.0.view(),
            TensorView {
                shape: &[1, 1, m, m],
                data: &view.current.logits.data,
            },
            inputs.clicks.view(),
            inputs.scalars.view(),
        ])?;
        let path = self.model.path();
        for (name, t) in ["scores", "stop", "quality", "object"].iter().zip(&out) {
            crate::engine::check_finite(path, name, t.data())?;
        }
        let s = self.map.size;
        let data = out[0].data();
        let map = |k: usize| Map {
            height: s,
            width: s,
            data: data[k * s * s..(k + 1) * s * s].to_vec(),
        };
        Ok(ClickerOutput {
            scores: [map(0), map(1)],
            stop: sigmoid(out[1].data()[0]),
            quality: sigmoid(out[2].data()[0]),
            object: Map {
                height: s,
                width: s,
                data: out[3].data().to_vec(),
            },
        })
    }

    /// The underlying model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }
}

/// The clicker's inputs besides the embedding and the mask, built the same way at inference and
/// in training.
#[derive(Clone, Debug, PartialEq)]
pub struct StateInputs {
    /// `clicks [1,2,H,W]`.
    pub clicks: Tensor,
    /// `scalars [1,2]`.
    pub scalars: Tensor,
}

impl StateInputs {
    /// The inputs for an episode's state: its points, the decoder's IoU prediction for the
    /// current mask and the steps taken; `side` is the embedding grid's.
    pub fn new(
        points: &[PointRecord],
        geometry: &FrameGeometry,
        iou_prediction: f32,
        steps: usize,
        side: usize,
    ) -> Self {
        let cells = FrameMap { size: side };
        let mut clicks = vec![0.0; 2 * side * side];
        for p in points {
            let c = cells.cell_at(p.x, p.y, geometry);
            clicks[p.label as usize * side * side + c] = 1.0;
        }
        StateInputs {
            clicks: Tensor::new(vec![1, 2, side, side], clicks).expect("2 maps"),
            scalars: Tensor::from_slice(&[iou_prediction, steps as f32 / STEP_SCALE])
                .reshaped(vec![1, 2])
                .expect("two values"),
        }
    }
}

/// The clicker as the loop's chooser: the free (patch, label) with the highest score at its
/// patch centre, or stop when the network says so (and `stop` is on).
pub struct ClickerChooser<'a> {
    clicker: &'a Clicker,
    stop: bool,
}

impl<'a> ClickerChooser<'a> {
    /// A chooser; `stop` off ignores the stop action (the "clicker without stop" ablation).
    pub fn new(clicker: &'a Clicker, stop: bool) -> Self {
        ClickerChooser { clicker, stop }
    }
}

impl PatchChooser for ClickerChooser<'_> {
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let out = self.clicker.run(view)?;
        let quality = Some(out.quality);
        if self.stop && out.stop >= self.clicker.stop_threshold {
            return Ok(Choice {
                decision: Decision::Stop,
                quality,
            });
        }
        let (h, w) = view.geometry.original;
        let cells: Vec<usize> = (0..view.grid.len())
            .map(|p| {
                let (x, y) = view.grid.centre(p, h, w);
                self.clicker.map.cell_at(x, y, view.geometry)
            })
            .collect();
        let pick = best_click(view, |patch, label: PointLabel| {
            out.scores[label as usize].data[cells[patch]]
        });
        Ok(Choice {
            decision: pick.map_or(Decision::NoActionLeft, Decision::Click),
            quality,
        })
    }

    fn assess(&mut self, view: &StepView) -> Result<Option<f32>> {
        Ok(Some(self.clicker.run(view)?.quality))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::PointOrigin;

    #[test]
    fn inputs_mark_click_cells() {
        // A 100 x 100 image in a frame of 16: grid side 4, cell = 25 image pixels.
        let geo = FrameGeometry::new(100, 100, 16);
        let point = |x, y, label| PointRecord {
            step: 0,
            x,
            y,
            label,
            patch: 0,
            origin: PointOrigin::Step,
            srm_prob: 0.0,
            iou_prediction: 0.0,
        };
        let points = [
            point(10.0, 10.0, PointLabel::Positive),
            point(60.0, 90.0, PointLabel::Negative),
        ];
        let i = StateInputs::new(&points, &geo, 0.7, 3, 4);
        let c = i.clicks.data();
        assert_eq!(c.iter().sum::<f32>(), 2.0);
        assert_eq!(c[16], 1.0, "positive at cell (0, 0)");
        assert_eq!(c[3 * 4 + 2], 1.0, "negative at cell (3, 2)");
        assert_eq!(i.scalars.data(), &[0.7, 3.0 / STEP_SCALE]);
        assert_eq!(i.scalars.shape(), &[1, 2]);
    }
}
