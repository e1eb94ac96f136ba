//! The SAM prompt encoder + mask decoder, in the `SamOnnxModel` interface:
//! `image_embeddings, point_coords [1,N,2], point_labels [1,N], mask_input [1,1,4H,4W],
//! has_mask_input [1], orig_im_size [2]` -> `iou_predictions [1,1], low_res_masks [1,1,4H,4W]`
//! (and `masks [1,1,h,w]` in the standard form).
//!
//! The point count `N` is a symbol: one optimised model serves every prompt size. Inside the
//! prompting loop only the low-resolution logits are read; the standard form's full-size output
//! is pruned from the graph (tract) or not fetched, and [`super::postprocess`] upscales once,
//! at the end. [`FullResDecoder`] runs the standard form's `masks` output for comparison.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Result, bail};

use super::encoder::Embedding;
use super::postprocess::Map;
use super::transform::FrameGeometry;
use crate::bundle::{DecoderForm, Manifest};
use crate::engine::{Backend, Dim, Model, ModelSpec, Precision, Tensor, fixed};

/// A prompt point's label, as SAM encodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointLabel {
    /// A click on the background (label 0).
    Negative,
    /// A click on the object (label 1).
    Positive,
}

impl PointLabel {
    /// The value SAM's prompt encoder expects.
    pub fn value(self) -> f32 {
        match self {
            PointLabel::Negative => 0.0,
            PointLabel::Positive => 1.0,
        }
    }

    /// Positive for `true`, negative for `false`.
    pub fn from_positive(positive: bool) -> Self {
        if positive {
            PointLabel::Positive
        } else {
            PointLabel::Negative
        }
    }

    /// Whether this is a click on the object.
    pub fn is_positive(self) -> bool {
        self == PointLabel::Positive
    }
}

/// A prompt point in original image coordinates (pixels, x to the right, y down).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptPoint {
    /// Column.
    pub x: f64,
    /// Row.
    pub y: f64,
    /// Foreground or background.
    pub label: PointLabel,
}

/// What the decoder returns for one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct LowResMask {
    /// Mask logits at 4x the embedding resolution (256 x 256), over the padded frame.
    pub logits: Map,
    /// The decoder's own estimate of the mask's IoU.
    pub iou: f32,
}

/// Builds the `point_coords` and `point_labels` tensors: points mapped into the encoder frame,
/// followed by the padding point `(0, 0)` with label -1 that `SamPredictor` adds when there is
/// no box prompt.
pub fn point_tensors(points: &[PromptPoint], geometry: &FrameGeometry) -> (Tensor, Tensor) {
    let n = points.len() + 1;
    let mut coords = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for p in points {
        let (x, y) = geometry.to_frame(p.x, p.y);
        coords.extend([x as f32, y as f32]);
        labels.push(p.label.value());
    }
    coords.extend([0.0, 0.0]);
    labels.push(-1.0);
    (
        Tensor::new(vec![1, n, 2], coords).expect("2 values per point"),
        Tensor::new(vec![1, n], labels).expect("1 label per point"),
    )
}

/// The six decoder inputs after the embedding, in the `SamOnnxModel` order: points and labels
/// (padding point added), `mask_input` (zeros when there is none), `has_mask_input`,
/// `orig_im_size`. One place builds them for every decoder use.
#[derive(Clone, Debug)]
pub struct PromptInputs {
    /// `point_coords [1,N,2]`, in the encoder frame.
    pub coords: Tensor,
    /// `point_labels [1,N]`.
    pub labels: Tensor,
    /// `mask_input [1,1,4H,4W]`.
    pub mask: Tensor,
    /// `has_mask_input [1]`.
    pub has_mask: Tensor,
    /// `orig_im_size [2]` (h, w).
    pub orig_size: Tensor,
}

impl PromptInputs {
    /// Builds the inputs for a prompt; `low_res` is the side of `mask_input` (256 for SAM).
    pub fn new(
        points: &[PromptPoint],
        mask_input: Option<&Map>,
        geometry: &FrameGeometry,
        low_res: usize,
    ) -> Result<Self> {
        let (coords, labels) = point_tensors(points, geometry);
        let mask = match mask_input {
            Some(map) if (map.height, map.width) != (low_res, low_res) => {
                bail!(
                    "mask_input must be {low_res}x{low_res}, got {}x{}",
                    map.height,
                    map.width
                )
            }
            Some(map) => Tensor::new(vec![1, 1, low_res, low_res], map.data.clone())?,
            None => Tensor::zeros(vec![1, 1, low_res, low_res]),
        };
        let (h, w) = geometry.original;
        Ok(PromptInputs {
            coords,
            labels,
            mask,
            has_mask: Tensor::from_slice(&[if mask_input.is_some() { 1.0 } else { 0.0 }]),
            orig_size: Tensor::from_slice(&[h as f32, w as f32]),
        })
    }

    /// All decoder inputs, the embedding first, as views for [`crate::engine::Model::run`].
    pub fn with<'a>(&'a self, embedding: &'a Tensor) -> [crate::engine::TensorView<'a>; 6] {
        [
            embedding.view(),
            self.coords.view(),
            self.labels.view(),
            self.mask.view(),
            self.has_mask.view(),
            self.orig_size.view(),
        ]
    }
}

/// The decoder's two low-resolution outputs as a [`LowResMask`].
fn low_res_output(out: &[Tensor], side: usize) -> LowResMask {
    LowResMask {
        iou: out[0].data()[0],
        logits: Map {
            height: side,
            width: side,
            data: out[1].data().to_vec(),
        },
    }
}

fn decoder_spec(manifest: &Manifest, role: &str) -> ModelSpec {
    let [c, h, w] = manifest.embedding.shape;
    let m = manifest.embedding.low_res_size();
    let n = || Dim::Symbol("N".into());
    ModelSpec::new(role)
        .input("image_embeddings", fixed(&[1, c, h, w]))
        .input("point_coords", vec![Dim::Fixed(1), n(), Dim::Fixed(2)])
        .input("point_labels", vec![Dim::Fixed(1), n()])
        .input("mask_input", fixed(&[1, 1, m, m]))
        .input("has_mask_input", fixed(&[1]))
        .optional_input("orig_im_size", fixed(&[2]))
        .output("iou_predictions", fixed(&[1, 1]))
        .output("low_res_masks", fixed(&[1, 1, m, m]))
}

/// The decoder as the prompting loop uses it: low-resolution logits and IoU only.
pub struct Decoder {
    model: Box<dyn Model>,
    form: DecoderForm,
    low_res: usize,
}

impl Decoder {
    /// What the loop needs from a decoder file of either form.
    pub fn spec(manifest: &Manifest) -> ModelSpec {
        decoder_spec(manifest, "decoder")
    }

    /// Loads the decoder, checking that its outputs match the manifest's `form`.
    pub fn load(backend: &dyn Backend, path: &Path, manifest: &Manifest) -> Result<Self> {
        Self::load_in(backend, path, manifest, Precision::Fp32)
    }

    /// Loads the decoder to run at a precision (see [`super::Encoder::load_in`]).
    pub fn load_in(
        backend: &dyn Backend,
        path: &Path,
        manifest: &Manifest,
        precision: Precision,
    ) -> Result<Self> {
        let spec = Self::spec(manifest).at_precision(precision);
        let model = backend.load(path, &spec)?;
        let form = manifest.models.decoder.form;
        let has_masks = model.declared().outputs.iter().any(|o| o.name == "masks");
        match (form, has_masks) {
            (DecoderForm::LowRes, true) => bail!(
                "{}: the manifest says form = \"low-res\" but the decoder has a full-size 'masks' output (form = \"standard\")",
                path.display()
            ),
            (DecoderForm::Standard, false) => bail!(
                "{}: the manifest says form = \"standard\" but the decoder has no 'masks' output (form = \"low-res\")",
                path.display()
            ),
            _ => {}
        }
        if form == DecoderForm::Standard
            && !model
                .declared()
                .inputs
                .iter()
                .any(|i| i.name == "orig_im_size")
        {
            bail!(
                "{}: a standard decoder needs an 'orig_im_size' input",
                path.display()
            );
        }
        Ok(Decoder {
            model,
            form,
            low_res: manifest.embedding.low_res_size(),
        })
    }

    /// Decodes one prompt. `mask_input` is the previous step's low-resolution logits, fed back as
    /// SAM's dense prompt; `None` sets `has_mask_input` to 0.
    pub fn decode(
        &self,
        embedding: &Embedding,
        points: &[PromptPoint],
        mask_input: Option<&Map>,
        geometry: &FrameGeometry,
    ) -> Result<LowResMask> {
        let inputs = PromptInputs::new(points, mask_input, geometry, self.low_res)?;
        let out = self.model.run(&inputs.with(&embedding.0))?;
        let path = self.model.path();
        crate::engine::check_finite(path, "iou_predictions", out[0].data())?;
        crate::engine::check_finite(path, "low_res_masks", out[1].data())?;
        Ok(low_res_output(&out, self.low_res))
    }

    /// The decoder file's form.
    pub fn form(&self) -> DecoderForm {
        self.form
    }

    /// The underlying model (for `info` and benchmarks).
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }
}

/// The standard decoder with its full-size `masks` output, as an application that does not
/// prune it would run it at every step. tract can only run that output with `orig_im_size`
/// folded into the graph, so one optimised model is kept per image size.
pub struct FullResDecoder<'a> {
    backend: &'a dyn Backend,
    path: PathBuf,
    manifest: Manifest,
    by_size: Mutex<HashMap<(usize, usize), Box<dyn Model>>>,
}

impl<'a> FullResDecoder<'a> {
    /// Prepares to run a standard-form decoder file.
    pub fn new(backend: &'a dyn Backend, path: &Path, manifest: &Manifest) -> Self {
        FullResDecoder {
            backend,
            path: path.to_path_buf(),
            manifest: manifest.clone(),
            by_size: Mutex::new(HashMap::new()),
        }
    }

    /// The standard decoder's spec for an image of `h` x `w`: every output, with `orig_im_size`
    /// folded into the graph (tract needs the Resize's size to be a constant).
    pub fn spec_for(manifest: &Manifest, h: usize, w: usize) -> ModelSpec {
        decoder_spec(manifest, "standard decoder")
            .output("masks", fixed(&[1, 1, h, w]))
            .constant("orig_im_size", Tensor::from_slice(&[h as f32, w as f32]))
    }

    /// Loads (once per image size) the model specialised for `geometry`'s original size.
    pub fn prepare(&self, geometry: &FrameGeometry) -> Result<()> {
        let key = geometry.original;
        let mut cache = self.by_size.lock().expect("decoder cache");
        if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(key) {
            slot.insert(
                self.backend
                    .load(&self.path, &Self::spec_for(&self.manifest, key.0, key.1))?,
            );
        }
        Ok(())
    }

    /// Decodes one prompt, returning the low-resolution result and the full-size logits.
    pub fn decode(
        &self,
        embedding: &Embedding,
        points: &[PromptPoint],
        mask_input: Option<&Map>,
        geometry: &FrameGeometry,
    ) -> Result<(LowResMask, Map)> {
        self.prepare(geometry)?;
        let cache = self.by_size.lock().expect("decoder cache");
        let model = &cache[&geometry.original];
        let m = self.manifest.embedding.low_res_size();
        let inputs = PromptInputs::new(points, mask_input, geometry, m)?;
        let out = model.run(&inputs.with(&embedding.0))?;
        let (h, w) = geometry.original;
        let full = Map {
            height: h,
            width: w,
            data: out[2].data().to_vec(),
        };
        let low = low_res_output(&out, m);
        Ok((low, full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_map_into_the_frame_and_get_a_padding_point() {
        let g = FrameGeometry::new(500, 1000, 1024); // resized 512 x 1024
        let pts = [
            PromptPoint {
                x: 100.0,
                y: 50.0,
                label: PointLabel::Positive,
            },
            PromptPoint {
                x: 999.0,
                y: 499.0,
                label: PointLabel::Negative,
            },
        ];
        let (c, l) = point_tensors(&pts, &g);
        assert_eq!(c.shape(), &[1, 3, 2]);
        assert_eq!(l.data(), &[1.0, 0.0, -1.0]);
        let s = 1024.0 / 1000.0;
        let expected = [
            100.0 * s,
            50.0 * (512.0 / 500.0),
            999.0 * s,
            499.0 * (512.0 / 500.0),
            0.0,
            0.0,
        ];
        for (a, b) in c.data().iter().zip(expected) {
            assert!((*a as f64 - b).abs() < 1e-4, "{:?}", c.data());
        }
    }
}
