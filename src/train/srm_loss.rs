//! The SRM's loss: Dice + binary cross-entropy against the ground truth downsampled to the SRM's
//! map ([`crate::agent::ground_truth::frame_target`]: soft targets, the foreground fraction of
//! each cell), over the cells that cover the image (the frame's padding is masked out).
//!
//! ```text
//! BCE  = sum_i w_i * (max(z_i, 0) - z_i t_i + log(1 + exp(-|z_i|))) / sum_i w_i
//! Dice = 1 - (2 sum_i w_i p_i t_i + 1) / (sum_i w_i p_i + sum_i w_i t_i + 1),  p = sigmoid(z)
//! loss = BCE + Dice
//! ```
//!
//! BCE is computed from the logits `z` (the stable form, no `log(0)`); the `+ 1` smoothing keeps
//! Dice defined on an image without foreground. Sums run over every sample of the batch.

use candle_core::{Device, Tensor};

use crate::agent::ground_truth::FrameTarget;

/// The loss and its two parts.
#[derive(Clone, Debug)]
pub struct SrmLoss {
    /// `bce + dice`, differentiable.
    pub total: Tensor,
    /// The BCE term's value.
    pub bce: f32,
    /// The Dice term's value.
    pub dice: f32,
}

/// Dice smoothing.
pub const DICE_SMOOTH: f64 = 1.0;

/// The target and validity weights of a [`FrameTarget`] as `[1, 1, S, S]` tensors.
pub fn target_tensors(target: &FrameTarget) -> candle_core::Result<(Tensor, Tensor)> {
    let s = target.map.height;
    let t = Tensor::from_slice(&target.map.data, (1, 1, s, s), &Device::Cpu)?;
    let w: Vec<f32> = target
        .valid
        .iter()
        .map(|&v| if v { 1.0 } else { 0.0 })
        .collect();
    Ok((t, Tensor::from_vec(w, (1, 1, s, s), &Device::Cpu)?))
}

/// Binary cross-entropy of logits `z` against soft targets `t`, weighted by `w` and averaged
/// over the weights (all three of the same shape).
pub fn bce(z: &Tensor, t: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let wsum = w.sum_all()?.to_scalar::<f32>()?.max(1e-6) as f64;
    let softplus_neg_abs = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let cells = ((z.relu()? - (z * t)?)? + softplus_neg_abs)?;
    (cells * w)?.sum_all()? / wsum
}

/// Dice + BCE of logits `z` against soft targets `t`, cells weighted by `w` (1 valid, 0 padding);
/// all three of the same shape.
pub fn dice_bce(z: &Tensor, t: &Tensor, w: &Tensor) -> candle_core::Result<SrmLoss> {
    let bce = bce(z, t, w)?;
    let p = candle_nn::ops::sigmoid(z)?;
    let pw = (&p * w)?;
    let inter = (&pw * t)?.sum_all()?;
    let denom = ((pw.sum_all()? + (t * w)?.sum_all()?)? + DICE_SMOOTH)?;
    let dice = ((((inter * 2.0)? + DICE_SMOOTH)? / denom)?.neg()? + 1.0)?;
    Ok(SrmLoss {
        bce: bce.to_scalar()?,
        dice: dice.to_scalar()?,
        total: (bce + dice)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_case() {
        // Two valid cells and one padding cell. z = (0, ln 3, 5), t = (1, 0.5, 1), w = (1, 1, 0).
        // p = (0.5, 0.75, .). BCE cell 0: log 2 = 0.693147; cell 1: ln3 - 0.5 ln3 + log(1 + 1/3)
        // = 0.549306 + 0.287682 = 0.836988; mean 0.765068. Dice: inter = 0.5 + 0.375 = 0.875,
        // sum p = 1.25, sum t = 1.5: 1 - (1.75 + 1) / (2.75 + 1) = 0.266667.
        let d = &Device::Cpu;
        let z = Tensor::new(&[0f32, 3f32.ln(), 5.0], d).unwrap();
        let t = Tensor::new(&[1f32, 0.5, 1.0], d).unwrap();
        let w = Tensor::new(&[1f32, 1.0, 0.0], d).unwrap();
        let l = dice_bce(&z, &t, &w).unwrap();
        assert!((l.bce - 0.765068).abs() < 1e-5, "{}", l.bce);
        assert!((l.dice - 0.266667).abs() < 1e-5, "{}", l.dice);
        assert!((l.total.to_scalar::<f32>().unwrap() - 1.031735).abs() < 1e-5);
    }
}
