//! Who picks the next patch: the greedy policy, or one of the evaluation baselines (random
//! patches, the centre patch, the SRM's most confident free patch).

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::grid::PatchGrid;
use super::policy::{Policy, greedy, sample};
use super::srm::Srm;
use crate::engine::Tensor;
use crate::sam::FrameGeometry;

/// Chooses the next patch from a state: the policy, or one of the evaluation baselines.
pub trait PatchChooser {
    /// Returns the chosen patch index, given which patches are allowed (`None`: all).
    fn choose(&mut self, state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>>;
}

/// The greedy policy: the patch with the largest logit.
pub struct PolicyChooser<'a>(pub &'a Policy);

impl PatchChooser for PolicyChooser<'_> {
    fn choose(&mut self, state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        Ok(greedy(&self.0.logits(state)?, allowed))
    }
}

/// The policy sampled rather than greedy: each patch drawn from the softmax of its logits, as
/// the policy acts while it is trained (seeded, so runs repeat).
pub struct SampledPolicyChooser<'a> {
    policy: &'a Policy,
    rng: StdRng,
}

impl<'a> SampledPolicyChooser<'a> {
    /// A seeded sampling chooser.
    pub fn new(policy: &'a Policy, seed: u64) -> Self {
        SampledPolicyChooser {
            policy,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl PatchChooser for SampledPolicyChooser<'_> {
    fn choose(&mut self, state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        let u: f64 = self.rng.random();
        Ok(sample(&self.policy.logits(state)?, allowed, u))
    }
}

/// Uniformly random patches: the paper's "w/o RL" baseline (labels still come from the SRM).
pub struct RandomChooser {
    rng: StdRng,
    actions: usize,
}

impl RandomChooser {
    /// A seeded random chooser over `actions` patches.
    pub fn new(actions: usize, seed: u64) -> Self {
        RandomChooser {
            rng: StdRng::seed_from_u64(seed),
            actions,
        }
    }
}

impl PatchChooser for RandomChooser {
    fn choose(&mut self, _state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        let candidates: Vec<usize> = (0..self.actions)
            .filter(|&i| allowed.is_none_or(|a| a[i]))
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        Ok(Some(candidates[self.rng.random_range(0..candidates.len())]))
    }
}

/// Always the patch at the centre of the grid (the "click the middle" baseline).
pub struct CentreChooser(pub PatchGrid);

impl PatchChooser for CentreChooser {
    fn choose(&mut self, _state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        let g = self.0.size;
        let centre = (g / 2) * g + g / 2;
        if allowed.is_none_or(|a| a[centre]) {
            return Ok(Some(centre));
        }
        // Nearest allowed patch to the centre, so that `forbid_repeats` still has a meaning.
        let dist = |i: usize| {
            let (r, c) = (
                (i / g) as i64 - (g / 2) as i64,
                (i % g) as i64 - (g / 2) as i64,
            );
            r * r + c * c
        };
        Ok((0..g * g)
            .filter(|&i| allowed.is_none_or(|a| a[i]))
            .min_by_key(|&i| (dist(i), i)))
    }
}

/// The SRM alone, no policy: at each step the patch whose centre the SRM, on the current state,
/// finds most likely to be on the object, among the patches not clicked yet. It answers "does
/// the policy add anything to the SRM's own map?".
pub struct SrmChooser<'a> {
    srm: &'a Srm,
    grid: PatchGrid,
    geometry: FrameGeometry,
    used: Vec<bool>,
}

impl<'a> SrmChooser<'a> {
    /// A chooser for one image (it remembers the patches it picked, and never picks one twice).
    pub fn new(srm: &'a Srm, grid: PatchGrid, geometry: FrameGeometry) -> Self {
        SrmChooser {
            srm,
            grid,
            geometry,
            used: vec![false; grid.len()],
        }
    }
}

impl PatchChooser for SrmChooser<'_> {
    fn choose(&mut self, state: &Tensor, allowed: Option<&[bool]>) -> Result<Option<usize>> {
        let prob = self.srm.predict(state, None)?;
        let (h, w) = self.geometry.original;
        let mut best: Option<(usize, f32)> = None;
        for i in 0..self.grid.len() {
            if self.used[i] || allowed.is_some_and(|a| !a[i]) {
                continue;
            }
            let (x, y) = self.grid.centre(i, h, w);
            let (p, _) = self.srm.label_at(&prob, x, y, &self.geometry);
            if !p.is_nan() && best.is_none_or(|(_, b)| p > b) {
                best = Some((i, p));
            }
        }
        let pick = best.map(|(i, _)| i);
        if let Some(i) = pick {
            self.used[i] = true;
        }
        Ok(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_chooser_falls_back_to_the_nearest_free_patch() {
        let mut c = CentreChooser(PatchGrid::new(3));
        let s = Tensor::zeros(vec![1]);
        assert_eq!(c.choose(&s, None).unwrap(), Some(4));
        let mut allowed = vec![true; 9];
        allowed[4] = false;
        assert_eq!(c.choose(&s, Some(&allowed)).unwrap(), Some(1));
    }

    #[test]
    fn random_chooser_is_seeded_and_respects_the_mask() {
        let s = Tensor::zeros(vec![1]);
        let picks = |seed| {
            let mut c = RandomChooser::new(100, seed);
            (0..20)
                .map(|_| c.choose(&s, None).unwrap().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        let mut allowed = vec![false; 100];
        allowed[42] = true;
        let mut c = RandomChooser::new(100, 1);
        assert_eq!(c.choose(&s, Some(&allowed)).unwrap(), Some(42));
    }
}
