//! Image -> encoder input, as `SamPredictor.set_image` does it: resize the longest side to the
//! frame size (PIL bilinear), normalise with the pixel mean and std, pad bottom/right with zeros.

use anyhow::Result;
use image::RgbImage;

use super::resize::resize_bilinear_like_pil;
use super::transform::FrameGeometry;
use crate::engine::Tensor;

/// Pixel statistics and frame size for one SAM family member.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Side of the square encoder input.
    pub frame: usize,
    /// Per-channel mean (RGB, 0-255 scale) subtracted before dividing by `pixel_std`.
    pub pixel_mean: [f32; 3],
    /// Per-channel standard deviation (RGB, 0-255 scale).
    pub pixel_std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// SAM's values (ImageNet statistics on the 0-255 scale).
    fn default() -> Self {
        PreprocessConfig {
            frame: 1024,
            pixel_mean: [123.675, 116.28, 103.53],
            pixel_std: [58.395, 57.12, 57.375],
        }
    }
}

/// Builds the encoder input `[1, 3, frame, frame]` and the geometry needed to map prompts and
/// masks between the image and the frame.
pub fn preprocess(image: &RgbImage, config: &PreprocessConfig) -> Result<(Tensor, FrameGeometry)> {
    let geometry = FrameGeometry::checked(
        image.height() as usize,
        image.width() as usize,
        config.frame,
    )?;
    let (nh, nw) = geometry.resized;
    let resized = resize_bilinear_like_pil(image, nw as u32, nh as u32);
    let s = config.frame;
    let mut data = vec![0f32; 3 * s * s];
    let raw = resized.as_raw();
    for c in 0..3 {
        let (mean, std) = (config.pixel_mean[c], config.pixel_std[c]);
        let plane = &mut data[c * s * s..(c + 1) * s * s];
        for y in 0..nh {
            let row = &mut plane[y * s..y * s + nw];
            let src = &raw[y * nw * 3..(y + 1) * nw * 3];
            for (x, v) in row.iter_mut().enumerate() {
                // Same f32 operations as the reference: (x - mean) / std.
                *v = (src[x * 3 + c] as f32 - mean) / std;
            }
        }
    }
    let tensor = Tensor::new(vec![1, 3, s, s], data).expect("shape and data agree");
    Ok((tensor, geometry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_pads_with_zeros() {
        let img = RgbImage::from_pixel(8, 4, image::Rgb([123, 116, 104]));
        let cfg = PreprocessConfig {
            frame: 16,
            ..Default::default()
        };
        let (t, g) = preprocess(&img, &cfg).unwrap();
        assert_eq!(t.shape(), &[1, 3, 16, 16]);
        assert_eq!(g.resized, (8, 16));
        let d = t.data();
        // Inside the image: normalised value of channel 0.
        let inside = (123.0f32 - 123.675) / 58.395;
        assert_eq!(d[0], inside);
        assert_eq!(d[7 * 16 + 15], inside);
        // Below the resized image (row 8 onwards): zero padding in every channel.
        for c in 0..3 {
            assert_eq!(d[c * 256 + 8 * 16], 0.0);
            assert_eq!(d[c * 256 + 15 * 16 + 15], 0.0);
        }
    }
}
