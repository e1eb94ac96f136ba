//! Segment Anything: preprocessing, the encoder, the decoder and postprocessing, matching the
//! reference `segment_anything.SamPredictor` step for step.
//!
//! ```text
//! RgbImage --preprocess--> [1,3,1024,1024] --encoder--> Embedding [1,256,64,64]
//! points (image coords) --transform--> frame coords --decoder--> 256x256 logits, IoU
//! 256x256 logits --postprocess--> logits at the image size --threshold 0--> mask
//! ```

pub mod decoder;
pub mod encoder;
pub mod postprocess;
pub mod preprocess;
pub mod resize;
pub mod transform;

use anyhow::Result;
use image::RgbImage;

use crate::bundle::Bundle;
use crate::engine::Backend;
pub use decoder::{Decoder, FullResDecoder, LowResMask, PointLabel, PromptPoint};
pub use encoder::{Embedding, Encoder};
pub use postprocess::Map;
pub use preprocess::PreprocessConfig;
pub use transform::FrameGeometry;

/// A SAM model loaded from a bundle: encoder, decoder and the preprocessing they expect.
pub struct Sam {
    /// Frame size and pixel statistics.
    pub preprocess: PreprocessConfig,
    /// The image encoder.
    pub encoder: Encoder,
    /// The prompt/mask decoder (low-resolution outputs).
    pub decoder: Decoder,
}

impl Sam {
    /// Loads and optimises the bundle's encoder and decoder.
    ///
    /// The bundle's precision chooses the files (int8 variants) or the arithmetic (f16); a
    /// variant without a passing accuracy-gate record for this backend is refused.
    pub fn load(bundle: &Bundle, backend: &dyn Backend) -> Result<Self> {
        let m = &bundle.manifest;
        bundle.check_gate(backend.name())?;
        let p = bundle.precision;
        Ok(Sam {
            preprocess: PreprocessConfig {
                frame: m.image.size,
                pixel_mean: m.image.pixel_mean,
                pixel_std: m.image.pixel_std,
            },
            encoder: Encoder::load_in(backend, &bundle.encoder_path(), m, p)?,
            decoder: Decoder::load_in(backend, &bundle.decoder_path(), m, p)?,
        })
    }

    /// Preprocesses and encodes an image.
    pub fn embed(&self, image: &RgbImage) -> Result<(Embedding, FrameGeometry)> {
        let (input, geometry) = preprocess::preprocess(image, &self.preprocess)?;
        Ok((self.encoder.encode(&input)?, geometry))
    }

    /// Decodes a prompt and returns the binary mask at the image's size (row-major, true =
    /// object), with the decoder's result.
    pub fn segment(
        &self,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        points: &[PromptPoint],
    ) -> Result<(Vec<bool>, LowResMask)> {
        let low = self.decoder.decode(embedding, points, None, geometry)?;
        let mask = postprocess::threshold(&postprocess::upscale_logits(&low.logits, geometry));
        Ok((mask, low))
    }
}
