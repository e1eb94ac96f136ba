//! The SAM image encoder: `image [1,3,S,S]` -> `image_embeddings [1,C,H,W]`, run once per image.

use std::path::Path;

use anyhow::Result;

use crate::bundle::Manifest;
use crate::engine::{Backend, Model, ModelSpec, Precision, Tensor, fixed};

/// An image embedding `[1, C, H, W]` (`[1, 256, 64, 64]` for SAM).
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding(pub Tensor);

impl Embedding {
    /// Channels, height and width.
    pub fn chw(&self) -> (usize, usize, usize) {
        let s = self.0.shape();
        (s[1], s[2], s[3])
    }
}

/// The loaded encoder.
pub struct Encoder {
    model: Box<dyn Model>,
}

impl Encoder {
    /// What the runtime needs from an encoder file, per the manifest.
    pub fn spec(manifest: &Manifest) -> ModelSpec {
        let s = manifest.image.size;
        let [c, h, w] = manifest.embedding.shape;
        ModelSpec::new("encoder")
            .input("image", fixed(&[1, 3, s, s]))
            .output("image_embeddings", fixed(&[1, c, h, w]))
    }

    /// Loads and optimises the encoder.
    pub fn load(backend: &dyn Backend, path: &Path, manifest: &Manifest) -> Result<Self> {
        Self::load_in(backend, path, manifest, Precision::Fp32)
    }

    /// Loads the encoder to run at a precision: `path` is already the variant's file for int8;
    /// f16 asks the backend to convert the float file.
    pub fn load_in(
        backend: &dyn Backend,
        path: &Path,
        manifest: &Manifest,
        precision: Precision,
    ) -> Result<Self> {
        let spec = Self::spec(manifest).at_precision(precision);
        Ok(Encoder {
            model: backend.load(path, &spec)?,
        })
    }

    /// Runs the encoder on a preprocessed image.
    pub fn encode(&self, image: &Tensor) -> Result<Embedding> {
        let mut out = self.model.run(&[image.view()])?;
        let embedding = out.remove(0);
        crate::engine::check_finite(self.model.path(), "image_embeddings", embedding.data())?;
        Ok(Embedding(embedding))
    }

    /// The underlying model (for `info` and benchmarks).
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }
}
