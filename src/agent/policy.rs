//! The policy network: state `[1,C,H,W]` -> `logits [1,G*G]` over the patch grid (and, when the
//! export has a value head, `value [1,1]`, which inference ignores).

use std::path::Path;

use anyhow::{Result, bail};

use crate::bundle::Manifest;
use crate::engine::{Backend, Model, ModelSpec, Tensor, fixed};

/// The loaded policy.
pub struct Policy {
    model: Box<dyn Model>,
    actions: usize,
}

impl Policy {
    /// What the runtime needs from a policy file, per the manifest.
    pub fn spec(manifest: &Manifest) -> ModelSpec {
        let [c, h, w] = manifest.embedding.shape;
        let g = manifest.agent.grid;
        ModelSpec::new("policy")
            .input("state", fixed(&[1, c, h, w]))
            .output("logits", fixed(&[1, g * g]))
    }

    /// Loads the policy named in the manifest's `[models.policy]`.
    pub fn load(backend: &dyn Backend, path: &Path, manifest: &Manifest) -> Result<Self> {
        if manifest.models.policy.is_none() {
            bail!("the bundle has no [models.policy]");
        }
        let model = backend.load(path, &Self::spec(manifest))?;
        Ok(Policy {
            model,
            actions: manifest.agent.grid * manifest.agent.grid,
        })
    }

    /// Logits over the patches for one state.
    pub fn logits(&self, state: &Tensor) -> Result<Vec<f32>> {
        let out = self.model.run(&[state.view()])?;
        let logits = out.into_iter().next().expect("one output").into_data();
        debug_assert_eq!(logits.len(), self.actions);
        Ok(logits)
    }

    /// The underlying model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }
}

/// The index of the largest logit among the allowed actions (`allowed[i] == false` masks action
/// `i` out); ties go to the lowest index. `None` when nothing is allowed. NaN logits never win.
pub fn greedy(logits: &[f32], allowed: Option<&[bool]>) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if allowed.is_some_and(|a| !a[i]) || v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// A patch drawn from the softmax of the logits over the allowed patches (`u` uniform in [0, 1)),
/// `None` when no patch is allowed or every allowed logit is NaN.
pub fn sample(logits: &[f32], allowed: Option<&[bool]>, u: f64) -> Option<usize> {
    let ok = |i: usize| allowed.is_none_or(|a| a[i]) && !logits[i].is_nan();
    let top = (0..logits.len())
        .filter(|&i| ok(i))
        .map(|i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    if top == f32::NEG_INFINITY {
        return None;
    }
    let weight = |i: usize| {
        if ok(i) {
            f64::from(logits[i] - top).exp()
        } else {
            0.0
        }
    };
    let total: f64 = (0..logits.len()).map(weight).sum();
    let mut left = u * total;
    let mut last = None;
    for i in (0..logits.len()).filter(|&i| ok(i)) {
        left -= weight(i);
        last = Some(i);
        if left < 0.0 {
            break;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_softmax_and_the_mask() {
        // Probabilities 1/(1+e^2) and e^2/(1+e^2) = 0.119 and 0.881 over the two allowed patches.
        let logits = [0.0, 5.0, 2.0, f32::NAN];
        let allowed = [true, false, true, true];
        assert_eq!(sample(&logits, Some(&allowed), 0.0), Some(0));
        assert_eq!(sample(&logits, Some(&allowed), 0.118), Some(0));
        assert_eq!(sample(&logits, Some(&allowed), 0.120), Some(2));
        assert_eq!(sample(&logits, Some(&allowed), 0.999_999), Some(2));
        assert_eq!(sample(&logits, None, 0.5), Some(1));
        assert_eq!(
            sample(&logits, Some(&[false, false, false, true]), 0.5),
            None
        );
        let draws = 10_000;
        let zeros = (0..draws)
            .filter(|k| {
                sample(&logits, Some(&allowed), (*k as f64 + 0.5) / draws as f64) == Some(0)
            })
            .count();
        assert!(
            (zeros as f64 / draws as f64 - 0.1192).abs() < 1e-3,
            "{zeros}"
        );
    }

    #[test]
    fn greedy_respects_the_mask_and_ties() {
        assert_eq!(greedy(&[0.1, 0.9, 0.9, 0.2], None), Some(1));
        assert_eq!(
            greedy(&[0.1, 0.9, 0.9, 0.2], Some(&[true, false, true, true])),
            Some(2)
        );
        assert_eq!(greedy(&[0.1, 0.2], Some(&[false, false])), None);
        assert_eq!(greedy(&[f32::NAN, -1.0], None), Some(1));
    }
}
