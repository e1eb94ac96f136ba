//! Low-resolution mask logits -> mask at the original image size, as
//! `SamPredictor.postprocess_masks` (and the standard ONNX decoder) does it: bilinear upsampling
//! to the square frame, crop of the padding, bilinear resizing to the original size, threshold 0.

use super::transform::FrameGeometry;

/// A single-channel f32 map, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width` values.
    pub data: Vec<f32>,
}

impl Map {
    /// A map of zeros.
    pub fn zeros(height: usize, width: usize) -> Self {
        Map {
            height,
            width,
            data: vec![0.0; height * width],
        }
    }

    /// The value at row `y`, column `x`.
    pub fn at(&self, y: usize, x: usize) -> f32 {
        self.data[y * self.width + x]
    }
}

/// Source index and weights for one output index, with PyTorch's `align_corners=False` rules:
/// `src = scale * (dst + 0.5) - 0.5`, clamped at 0, and the upper neighbour clamped at the edge.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

fn taps(in_size: usize, out_size: usize, scale: f32) -> Vec<Tap> {
    (0..out_size)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_size - 1);
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                w0: 1.0 - lambda,
                w1: lambda,
            }
        })
        .collect()
}

/// Bilinear resampling of the top-left `crop_h` x `crop_w` window of a map that is conceptually
/// `full_h` x `full_w` (as if the whole map had been resized to that size and then cropped), to
/// `out_h` x `out_w`. With `crop == full`, it is `F.interpolate(mode="bilinear",
/// align_corners=False)`; the crop lets the first upscale skip the rows and columns the crop
/// would throw away.
fn resample(src: &Map, full: (usize, usize), crop: (usize, usize), out: (usize, usize)) -> Map {
    let (full_h, full_w) = full;
    let (crop_h, crop_w) = crop;
    let (out_h, out_w) = out;
    let ys = taps(
        src.height,
        crop_h.min(full_h),
        src.height as f32 / full_h as f32,
    );
    let xs = taps(
        src.width,
        crop_w.min(full_w),
        src.width as f32 / full_w as f32,
    );
    let cropped = |y: usize, x: usize| -> f32 {
        let (ty, tx) = (ys[y], xs[x]);
        let r0 = src.at(ty.i0, tx.i0) * tx.w0 + src.at(ty.i0, tx.i1) * tx.w1;
        let r1 = src.at(ty.i1, tx.i0) * tx.w0 + src.at(ty.i1, tx.i1) * tx.w1;
        r0 * ty.w0 + r1 * ty.w1
    };
    if (crop_h, crop_w) == (out_h, out_w) {
        let mut m = Map::zeros(out_h, out_w);
        for y in 0..out_h {
            for x in 0..out_w {
                m.data[y * out_w + x] = cropped(y, x);
            }
        }
        return m;
    }
    // Materialise the crop, then resample it to the output size.
    let mut c = Map::zeros(crop_h, crop_w);
    for y in 0..crop_h {
        for x in 0..crop_w {
            c.data[y * crop_w + x] = cropped(y, x);
        }
    }
    resample(&c, (out_h, out_w), (out_h, out_w), (out_h, out_w))
}

/// Bilinear resize with PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` rules.
pub fn resize_bilinear(src: &Map, out_h: usize, out_w: usize) -> Map {
    resample(src, (out_h, out_w), (out_h, out_w), (out_h, out_w))
}

/// Upscales low-resolution logits (256 x 256 for SAM) to the original image size: to the
/// `frame` x `frame` square, crop to the resized image, then to the original size. Returns
/// logits; threshold them at 0 for the mask.
pub fn upscale_logits(low_res: &Map, geometry: &FrameGeometry) -> Map {
    let f = geometry.frame;
    let up = resample(low_res, (f, f), geometry.resized, geometry.resized);
    let (oh, ow) = geometry.original;
    if geometry.resized == (oh, ow) {
        return up;
    }
    resize_bilinear(&up, oh, ow)
}

/// SAM's mask threshold: logits above 0 are foreground.
pub fn threshold(logits: &Map) -> Vec<bool> {
    logits.data.iter().map(|&v| v > 0.0).collect()
}

/// A sigmoid of every value.
pub fn sigmoid(map: &Map) -> Map {
    Map {
        height: map.height,
        width: map.width,
        data: map.data.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_two_by_two_matches_torch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        // mode="bilinear", align_corners=False) gives these rows.
        let src = Map {
            height: 2,
            width: 2,
            data: vec![0.0, 1.0, 2.0, 3.0],
        };
        let out = resize_bilinear(&src, 4, 4);
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in out.data.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{:?}", out.data);
        }
    }

    #[test]
    fn downsampling_without_antialias_samples_neighbours() {
        // 4 -> 2: scale 2, sources at 0.5 and 2.5, so averages of pairs (no antialiasing).
        let src = Map {
            height: 1,
            width: 4,
            data: vec![0.0, 2.0, 4.0, 8.0],
        };
        let out = resize_bilinear(&src, 1, 2);
        assert_eq!(out.data, vec![1.0, 6.0]);
    }

    #[test]
    fn crop_equals_full_resize_then_crop() {
        let src = Map {
            height: 3,
            width: 3,
            data: (0..9).map(|v| (v * v) as f32).collect(),
        };
        let full = resize_bilinear(&src, 12, 12);
        let cropped = resample(&src, (12, 12), (7, 9), (7, 9));
        for y in 0..7 {
            for x in 0..9 {
                assert_eq!(cropped.at(y, x), full.at(y, x));
            }
        }
    }

    #[test]
    fn upscale_to_original_size() {
        let g = FrameGeometry::new(30, 60, 16); // resized 8 x 16
        let low = Map {
            height: 4,
            width: 4,
            data: vec![1.0; 16],
        };
        let up = upscale_logits(&low, &g);
        assert_eq!((up.height, up.width), (30, 60));
        assert!(up.data.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }
}
