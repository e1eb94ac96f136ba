//! The agent's state `s_t = E * M_{t-1}`: the image embedding gated by the previous mask.

use crate::engine::Tensor;
use crate::sam::{Embedding, Map};

/// Reduces low-resolution mask logits (4H x 4W) to a mask probability at the embedding's
/// resolution (H x W): the sigmoid of each logit, averaged over 4 x 4 blocks.
pub fn mask_probability(logits: &Map, height: usize, width: usize) -> Map {
    let fy = logits.height / height;
    let fx = logits.width / width;
    assert!(
        fy * height == logits.height && fx * width == logits.width,
        "logits must be a multiple of the embedding size"
    );
    let mut out = Map::zeros(height, width);
    let norm = 1.0 / (fx * fy) as f32;
    for y in 0..height {
        for x in 0..width {
            let mut acc = 0.0;
            for dy in 0..fy {
                let row = &logits.data[(y * fy + dy) * logits.width + x * fx..][..fx];
                acc += row.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).sum::<f32>();
            }
            out.data[y * width + x] = acc * norm;
        }
    }
    out
}

/// `E * M`: every channel of the embedding multiplied by the mask probability map. With no mask
/// yet (`None`), M is all ones and the state is the embedding itself.
pub fn state(embedding: &Embedding, mask: Option<&Map>) -> Tensor {
    let (c, h, w) = embedding.chw();
    let e = embedding.0.data();
    let data = match mask {
        None => e.to_vec(),
        Some(m) => {
            assert_eq!(
                (m.height, m.width),
                (h, w),
                "mask probability must match the embedding grid"
            );
            let mut out = Vec::with_capacity(e.len());
            for plane in e.chunks_exact(h * w) {
                out.extend(plane.iter().zip(&m.data).map(|(a, b)| a * b));
            }
            out
        }
    };
    Tensor::new(vec![1, c, h, w], data).expect("same size as the embedding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_is_block_mean_of_sigmoid() {
        // 4x4 logits -> 1x1: mean of sigmoid(0) (=0.5, x8) and sigmoid(big) (~1, x8) = 0.75.
        let mut data = vec![0.0; 8];
        data.extend(vec![100.0; 8]);
        let p = mask_probability(
            &Map {
                height: 4,
                width: 4,
                data,
            },
            1,
            1,
        );
        assert!((p.data[0] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn state_gates_every_channel() {
        let e = Embedding(Tensor::new(vec![1, 2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap());
        let m = Map {
            height: 1,
            width: 2,
            data: vec![0.5, 0.0],
        };
        assert_eq!(state(&e, Some(&m)).data(), &[0.5, 0.0, 1.5, 0.0]);
        assert_eq!(state(&e, None).data(), &[1.0, 2.0, 3.0, 4.0]);
    }
}
