//! PPO as the paper uses it: after each episode, n-step returns bootstrapped with the critic's
//! value of the state after the last step, advantage = return - value, then K epochs of Adam on
//! the clipped ratio objective plus the value error, over the episode's transitions as one batch.
//!
//! ```text
//! R_T+1 = V(s_T+1)                 (the episode is cut at T steps, not ended: bootstrap)
//! R_t   = r_t + gamma R_t+1
//! A_t   = R_t - V_old(s_t)         (values from the rollout, fixed for the K epochs)
//! ratio = exp(log pi(a_t|s_t) - log pi_old(a_t|s_t))
//! L     = -mean(min(ratio A, clip(ratio, 1 - eps, 1 + eps) A))
//!         + c_v mean((V(s_t) - R_t)^2) - c_e mean(entropy(pi(.|s_t)))
//! ```

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{D, Device, Tensor, Var};
use candle_nn::Optimizer;
use candle_nn::optim::AdamW;

use super::nets::{PolicyNet, Prepared};

/// PPO's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PpoConfig {
    /// Discount gamma.
    pub gamma: f32,
    /// Ratio clipping epsilon.
    pub clip: f32,
    /// Epochs K over each episode's batch.
    pub epochs: usize,
    /// Weight of the value error.
    pub value_coef: f32,
    /// Weight of the entropy bonus.
    pub entropy_coef: f32,
    /// Scale the gradient down when its global norm exceeds this (0: never).
    pub max_grad_norm: f32,
    /// Divide advantages by their running root mean square ([`AdvantageScale`]).
    pub scale_advantages: bool,
    /// Subtract each episode's mean advantage first ([`centre`]).
    pub centre_advantages: bool,
}

/// A running root mean square of the advantages, over episodes (exponential average, decay
/// 0.95 per episode). Dividing by it keeps the policy term near unit size whatever the return
/// scale (returns grow to about `1 / (1 - gamma)` once bootstrapped), so that the entropy
/// bonus and the gradient clipping keep their meaning; the sign and the ordering of advantages
/// within an episode, which is all the clipped objective acts on, are unchanged. Unlike the usual
/// per-batch normalisation, it does not subtract the batch mean: an episode of one image where
/// every point missed must stay an episode of negative advantages.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdvantageScale {
    mean_square: Option<f64>,
}

impl AdvantageScale {
    /// The decay per episode.
    pub const DECAY: f64 = 0.95;

    /// Folds in one episode's advantages and returns them scaled.
    pub fn apply(&mut self, advantages: &[f32]) -> Vec<f32> {
        if advantages.is_empty() {
            return vec![];
        }
        let ms = advantages
            .iter()
            .map(|&a| (a as f64) * (a as f64))
            .sum::<f64>()
            / advantages.len() as f64;
        let m = match self.mean_square {
            None => ms,
            Some(prev) => Self::DECAY * prev + (1.0 - Self::DECAY) * ms,
        };
        self.mean_square = Some(m);
        let scale = 1.0 / (m.sqrt() + 1e-6);
        advantages
            .iter()
            .map(|&a| (a as f64 * scale) as f32)
            .collect()
    }
}

/// Discounted returns `R_t = r_t + gamma R_{t+1}`, starting from `bootstrap` after the last step.
pub fn discounted_returns(rewards: &[f32], bootstrap: f32, gamma: f32) -> Vec<f32> {
    let mut out = vec![0.0; rewards.len()];
    let mut acc = bootstrap;
    for (o, &r) in out.iter_mut().zip(rewards).rev() {
        acc = r + gamma * acc;
        *o = acc;
    }
    out
}

/// `A_t = R_t - V(s_t)`.
pub fn advantages(returns: &[f32], values: &[f32]) -> Vec<f32> {
    returns.iter().zip(values).map(|(r, v)| r - v).collect()
}

/// Subtracts the mean: advantages relative to the episode's other steps, on the same image.
/// A critic that lags behind the returns (it starts at 0 while returns sit near -10 on datasets
/// with small objects) adds the same offset to every advantage; the offset cancels in expectation
/// but its noise swamps the +-1 reward that tells one patch from another.
pub fn centre(advantages: &[f32]) -> Vec<f32> {
    if advantages.is_empty() {
        return vec![];
    }
    let mean = advantages.iter().sum::<f32>() / advantages.len() as f32;
    advantages.iter().map(|a| a - mean).collect()
}

/// The clipped surrogate per sample: `min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`.
pub fn clipped_surrogate(ratio: &Tensor, adv: &Tensor, clip: f32) -> candle_core::Result<Tensor> {
    let unclipped = (ratio * adv)?;
    let clipped = (ratio.clamp(1.0 - clip, 1.0 + clip)? * adv)?;
    unclipped.minimum(&clipped)
}

/// One episode's transitions, ready for the update.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The states, prepared for the policy.
    pub states: Prepared,
    /// Actions `[T]` (u32).
    pub actions: Tensor,
    /// Log-probabilities of the actions under the rollout policy `[T]`.
    pub old_log_probs: Tensor,
    /// Returns `[T]`.
    pub returns: Tensor,
    /// Advantages `[T]`.
    pub advantages: Tensor,
    /// Added to the logits before the softmax, `[T, A]`: [`FORBIDDEN`] where an action was not
    /// allowed at that step (patches already used, with repeats forbidden), 0 elsewhere.
    pub forbidden: Option<Tensor>,
}

/// The logit offset of a forbidden action: its probability underflows to 0, and stays finite so
/// that the entropy's `p * log p` is 0, not NaN.
pub const FORBIDDEN: f32 = -1e9;

/// The logit offsets `[rows, A]` for per-step masks of forbidden actions.
pub fn forbidden_offsets(masks: &[Vec<bool>]) -> candle_core::Result<Tensor> {
    let a = masks.first().map_or(0, Vec::len);
    let data: Vec<f32> = masks
        .iter()
        .flatten()
        .map(|&f| if f { FORBIDDEN } else { 0.0 })
        .collect();
    Tensor::from_vec(data, (masks.len(), a), &Device::Cpu)
}

impl Batch {
    /// Builds the batch from per-step prepared states and scalars.
    pub fn new(
        states: &[Prepared],
        actions: &[u32],
        old_log_probs: &[f32],
        returns: &[f32],
        advantages: &[f32],
    ) -> candle_core::Result<Self> {
        let d = &Device::Cpu;
        Ok(Batch {
            states: Prepared::cat(states)?,
            actions: Tensor::new(actions, d)?,
            old_log_probs: Tensor::new(old_log_probs, d)?,
            returns: Tensor::new(returns, d)?,
            advantages: Tensor::new(advantages, d)?,
            forbidden: None,
        })
    }

    /// The same batch where `masks[t][a]` says action `a` was forbidden at step `t`.
    pub fn with_forbidden(self, masks: &[Vec<bool>]) -> candle_core::Result<Self> {
        Ok(Batch {
            forbidden: Some(forbidden_offsets(masks)?),
            ..self
        })
    }
}

/// The loss on a batch and its parts.
#[derive(Clone, Debug)]
pub struct PpoLoss {
    /// The total, differentiable.
    pub total: Tensor,
    /// `-mean(surrogate)`.
    pub policy: f32,
    /// `mean((V - R)^2)`.
    pub value: f32,
    /// Mean entropy of the policy.
    pub entropy: f32,
}

/// PPO's loss for the current network on a batch.
pub fn loss(net: &PolicyNet, batch: &Batch, config: &PpoConfig) -> candle_core::Result<PpoLoss> {
    let (logits, values) = net.forward_prepared(&batch.states)?;
    let logits = match &batch.forbidden {
        Some(offsets) => (logits + offsets)?,
        None => logits,
    };
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let taken = log_probs
        .gather(&batch.actions.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let ratio = (taken - &batch.old_log_probs)?.exp()?;
    let policy = clipped_surrogate(&ratio, &batch.advantages, config.clip)?
        .mean_all()?
        .neg()?;
    let value = (values - &batch.returns)?.sqr()?.mean_all()?;
    let entropy = (log_probs.exp()? * &log_probs)?
        .sum(D::Minus1)?
        .neg()?
        .mean_all()?;
    let total = ((&policy + (&value * config.value_coef as f64)?)?
        - (&entropy * config.entropy_coef as f64)?)?;
    Ok(PpoLoss {
        total,
        policy: policy.to_scalar()?,
        value: value.to_scalar()?,
        entropy: entropy.to_scalar()?,
    })
}

/// What an update did: the losses of its first epoch (the rollout policy's).
#[derive(Clone, Copy, Debug, Default)]
pub struct UpdateStats {
    /// Policy term.
    pub policy: f32,
    /// Value term.
    pub value: f32,
    /// Entropy.
    pub entropy: f32,
}

/// Scales the gradients of `vars` down so that their global L2 norm is at most `max_norm`;
/// returns the norm before scaling.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[Var],
    max_norm: f32,
) -> candle_core::Result<f32> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let factor = (max_norm / norm) as f64;
        for v in vars {
            if let Some(g) = grads.get(v) {
                let scaled = (g * factor)?;
                grads.insert(v, scaled);
            }
        }
    }
    Ok(norm)
}

/// K epochs of the optimiser on one batch.
pub fn update(
    net: &PolicyNet,
    optimiser: &mut AdamW,
    batch: &Batch,
    config: &PpoConfig,
) -> Result<UpdateStats> {
    let mut stats = UpdateStats::default();
    let vars = net.vars();
    for epoch in 0..config.epochs {
        let l = loss(net, batch, config)?;
        if epoch == 0 {
            stats = UpdateStats {
                policy: l.policy,
                value: l.value,
                entropy: l.entropy,
            };
        }
        let mut grads = l.total.backward()?;
        if config.max_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, &vars, config.max_grad_norm)?;
        }
        optimiser.step(&grads)?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_bootstrap_and_discount() {
        // gamma 0.5, rewards (1, -1, 1), bootstrap 4: R3 = 1 + 2 = 3, R2 = -1 + 1.5 = 0.5,
        // R1 = 1 + 0.25 = 1.25.
        assert_eq!(
            discounted_returns(&[1.0, -1.0, 1.0], 4.0, 0.5),
            vec![1.25, 0.5, 3.0]
        );
        assert_eq!(advantages(&[1.25, 0.5], &[1.0, 1.0]), vec![0.25, -0.5]);
        assert!(discounted_returns(&[], 1.0, 0.9).is_empty());
    }

    #[test]
    fn forbidden_actions_get_no_probability_and_a_finite_entropy() {
        let masks = vec![vec![false, true, false], vec![true, true, false]];
        let offsets = forbidden_offsets(&masks).unwrap();
        assert_eq!(offsets.dims(), &[2, 3]);
        let logits = Tensor::new(&[[1f32, 5.0, 1.0], [9.0, 9.0, 0.0]], &Device::Cpu).unwrap();
        let lp = candle_nn::ops::log_softmax(&(logits + offsets).unwrap(), D::Minus1).unwrap();
        let p = lp.exp().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p[0][1], 0.0);
        assert!(
            (p[0][0] - 0.5).abs() < 1e-6 && (p[0][2] - 0.5).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(p[1], vec![0.0, 0.0, 1.0]);
        let entropy = (lp.exp().unwrap() * &lp).unwrap().sum_all().unwrap();
        assert!(entropy.to_scalar::<f32>().unwrap().is_finite());
    }

    #[test]
    fn centring_removes_the_common_offset() {
        // A critic 10 too high on every step: the same ordering, mean 0.
        assert_eq!(centre(&[-9.0, -11.0, -10.0]), vec![1.0, -1.0, 0.0]);
        assert!(centre(&[]).is_empty());
    }

    #[test]
    fn advantage_scale_keeps_signs_and_tracks_the_rms() {
        let mut s = AdvantageScale::default();
        // First episode: RMS of (3, -4) is sqrt(12.5).
        let a = s.apply(&[3.0, -4.0]);
        let r = 12.5f32.sqrt();
        assert!(
            (a[0] - 3.0 / r).abs() < 1e-5 && (a[1] + 4.0 / r).abs() < 1e-5,
            "{a:?}"
        );
        // Second: mean square 0.95 * 12.5 + 0.05 * 4 = 12.075; all-negative stays negative.
        let b = s.apply(&[-2.0, -2.0]);
        assert!(
            (b[0] + 2.0 / 12.075f32.sqrt()).abs() < 1e-5 && b[1] < 0.0,
            "{b:?}"
        );
    }

    #[test]
    fn gradient_clipping_scales_to_the_norm() {
        let d = &Device::Cpu;
        let v = Var::from_tensor(&Tensor::new(&[1f32, 1.0], d).unwrap()).unwrap();
        // loss = 3 v0 + 4 v1: gradient (3, 4), norm 5 -> clipped to norm 1: (0.6, 0.8).
        let loss = (v.as_tensor() * Tensor::new(&[3f32, 4.0], d).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let mut grads = loss.backward().unwrap();
        assert_eq!(
            clip_grad_norm(&mut grads, std::slice::from_ref(&v), 1.0).unwrap(),
            5.0
        );
        let g = grads.get(&v).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
            "{g:?}"
        );
    }

    #[test]
    fn surrogate_clips_only_in_the_favoured_direction() {
        let d = &Device::Cpu;
        // ratio 1.5 with A = 2: min(3, 1.2 * 2) = 2.4. ratio 0.5 with A = 2: min(1, 1.6) = 1.
        // ratio 0.5 with A = -1: min(-0.5, -0.8) = -0.8. ratio 1.5, A = -1: min(-1.5, -1.2) = -1.5.
        let ratio = Tensor::new(&[1.5f32, 0.5, 0.5, 1.5], d).unwrap();
        let adv = Tensor::new(&[2f32, 2.0, -1.0, -1.0], d).unwrap();
        let s = clipped_surrogate(&ratio, &adv, 0.2)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected = [2.4f32, 1.0, -0.8, -1.5];
        for (a, b) in s.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{s:?}");
        }
    }
}
