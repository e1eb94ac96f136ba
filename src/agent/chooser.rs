//! Who picks the next click: the paper's policy, the learned clicker ([`super::clicker`]), or one
//! of the evaluation baselines (random patches, a fixed patch, the SRM's most confident patch,
//! the rule that clicks where the SRM's map and the mask disagree).
//!
//! A chooser sees the episode through a [`StepView`] and answers with a [`Choice`]: a click (a
//! patch centre, with a label or leaving the label to the SRM), or stop. The loop's guards live
//! in the view: with repeats forbidden, [`StepView::free_click`] refuses a patch already clicked
//! with the same label and [`StepView::free_patch`] a patch already clicked at all (for choosers
//! that leave the label to the SRM, which would label it the same way again).

use std::cell::{Cell, OnceCell};
use std::time::Instant;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::grid::PatchGrid;
use super::policy::{Policy, greedy, sample};
use super::record::{PointOrigin, PointRecord};
use super::srm::Srm;
use super::state::{mask_probability, state};
use crate::engine::Tensor;
use crate::sam::{Embedding, FrameGeometry, LowResMask, Map, PointLabel};
use crate::util::ms;

/// The clicks made so far, per patch and label: what the no-repeat guard checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedClicks {
    /// Per patch: clicked with a negative label, clicked with a positive label.
    by_patch: Vec<[bool; 2]>,
}

impl UsedClicks {
    /// No click yet on a grid of `patches` patches.
    pub fn new(patches: usize) -> Self {
        UsedClicks {
            by_patch: vec![[false; 2]; patches],
        }
    }

    /// Records a click.
    pub fn mark(&mut self, patch: usize, label: PointLabel) {
        self.by_patch[patch][label as usize] = true;
    }

    /// Whether the patch was clicked with this label.
    pub fn has(&self, patch: usize, label: PointLabel) -> bool {
        self.by_patch[patch][label as usize]
    }

    /// Whether the patch was clicked with either label.
    pub fn any(&self, patch: usize) -> bool {
        self.by_patch[patch].iter().any(|&u| u)
    }
}

/// What a chooser sees at a step: the embedding, the current mask, the points so far, the SRM's
/// map on `E`, and the guard. The paper's state `E * M` is built on first use
/// ([`StepView::state`]): most choosers never need it.
pub struct StepView<'a> {
    /// The image embedding `E`.
    pub embedding: &'a Embedding,
    /// Where the image sits in the encoder frame.
    pub geometry: &'a FrameGeometry,
    /// The current low-resolution mask and the decoder's IoU prediction for it.
    pub current: &'a LowResMask,
    /// The points so far, start points first.
    pub points: &'a [PointRecord],
    /// Steps taken so far (0 before the first).
    pub steps: usize,
    /// The SRM's map on `E` (the start points' map).
    pub embedding_map: &'a Map,
    /// The action grid.
    pub grid: PatchGrid,
    used: &'a UsedClicks,
    forbid_repeats: bool,
    state: OnceCell<Tensor>,
    state_ms: Cell<f64>,
}

impl<'a> StepView<'a> {
    /// A view of an episode; `forbid_repeats` switches the guard on.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        embedding: &'a Embedding,
        geometry: &'a FrameGeometry,
        current: &'a LowResMask,
        points: &'a [PointRecord],
        steps: usize,
        embedding_map: &'a Map,
        grid: PatchGrid,
        used: &'a UsedClicks,
        forbid_repeats: bool,
    ) -> Self {
        StepView {
            embedding,
            geometry,
            current,
            points,
            steps,
            embedding_map,
            grid,
            used,
            forbid_repeats,
            state: OnceCell::new(),
            state_ms: Cell::new(0.0),
        }
    }

    /// The paper's state `s_t = E * M_{t-1}`, built once per view.
    pub fn state(&self) -> &Tensor {
        self.state.get_or_init(|| {
            let t = Instant::now();
            let (_, eh, ew) = self.embedding.chw();
            let m = mask_probability(&self.current.logits, eh, ew);
            let s = state(self.embedding, Some(&m));
            self.state_ms.set(ms(t.elapsed()));
            s
        })
    }

    /// Milliseconds spent building [`StepView::state`] (0 when nobody asked for it).
    pub fn state_ms(&self) -> f64 {
        self.state_ms.get()
    }

    /// Whether a click on `patch` with `label` is allowed (the guard: never the same patch with
    /// the same label twice).
    pub fn free_click(&self, patch: usize, label: PointLabel) -> bool {
        !self.forbid_repeats || !self.used.has(patch, label)
    }

    /// Whether a click on `patch` is allowed for a chooser that leaves the label to the SRM: a
    /// patch clicked before is not (the SRM would label it alike).
    pub fn free_patch(&self, patch: usize) -> bool {
        !self.forbid_repeats || !self.used.any(patch)
    }

    /// The free patches as a mask (`None` when every patch is allowed).
    pub fn free_patches(&self) -> Option<Vec<bool>> {
        self.forbid_repeats
            .then(|| (0..self.grid.len()).map(|p| self.free_patch(p)).collect())
    }

    /// The current mask's probability (sigmoid of its low-resolution logit) at image point (x, y).
    pub fn mask_probability_at(&self, x: f64, y: f64) -> f32 {
        let logits = &self.current.logits;
        let (fx, fy) = self.geometry.to_frame(x, y);
        let f = self.geometry.frame as f64;
        let col = ((fx / f * logits.width as f64) as usize).min(logits.width - 1);
        let row = ((fy / f * logits.height as f64) as usize).min(logits.height - 1);
        1.0 / (1.0 + (-logits.at(row, col)).exp())
    }
}

/// Where to click: a patch's centre, or (the evaluation's teacher) an exact point in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Click {
    /// The patch (the action).
    pub patch: usize,
    /// An exact image point instead of the patch's centre.
    pub at: Option<(f64, f64)>,
    /// The label, or `None` for the SRM's.
    pub label: Option<PointLabel>,
}

impl Click {
    /// The centre of `patch`, labelled by the SRM.
    pub fn patch(patch: usize) -> Self {
        Click {
            patch,
            at: None,
            label: None,
        }
    }
}

/// What a chooser decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Add this click.
    Click(Click),
    /// The mask is done: no click would help (the clicker's stop action).
    Stop,
    /// Every action is used (repeats forbidden).
    NoActionLeft,
}

/// A decision, and the chooser's own estimate of the current mask's IoU when it has one (the
/// clicker's quality head), which the keep-best guard then prefers to the decoder's prediction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// The decision.
    pub decision: Decision,
    /// Estimated IoU of the current mask.
    pub quality: Option<f32>,
}

impl From<Option<Click>> for Choice {
    fn from(click: Option<Click>) -> Self {
        Choice {
            decision: click.map_or(Decision::NoActionLeft, Decision::Click),
            quality: None,
        }
    }
}

/// Chooses the next click from what the episode shows.
pub trait PatchChooser {
    /// The next click, or stop.
    fn choose(&mut self, view: &StepView) -> Result<Choice>;

    /// The chooser's estimate of the current mask's IoU, asked for the last mask of an episode
    /// that ended without asking [`PatchChooser::choose`] again (`None`: no estimate of its own).
    fn assess(&mut self, _view: &StepView) -> Result<Option<f32>> {
        Ok(None)
    }
}

/// The greedy policy: the patch with the largest logit.
pub struct PolicyChooser<'a>(pub &'a Policy);

impl PatchChooser for PolicyChooser<'_> {
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let free = view.free_patches();
        let logits = self.0.logits(view.state())?;
        Ok(greedy(&logits, free.as_deref()).map(Click::patch).into())
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
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let u: f64 = self.rng.random();
        let free = view.free_patches();
        let logits = self.policy.logits(view.state())?;
        Ok(sample(&logits, free.as_deref(), u).map(Click::patch).into())
    }
}

/// Uniformly random patches: the paper's "w/o RL" baseline (labels still come from the SRM).
pub struct RandomChooser {
    rng: StdRng,
}

impl RandomChooser {
    /// A seeded random chooser.
    pub fn new(seed: u64) -> Self {
        RandomChooser {
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl PatchChooser for RandomChooser {
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let candidates: Vec<usize> = (0..view.grid.len())
            .filter(|&p| view.free_patch(p))
            .collect();
        if candidates.is_empty() {
            return Ok(None.into());
        }
        let pick = candidates[self.rng.random_range(0..candidates.len())];
        Ok(Some(Click::patch(pick)).into())
    }
}

/// Always one patch (the grid's centre, or the bundle's `best_patch`), or the free patch nearest
/// to it once it is used: a constant that needs no network.
pub struct FixedPatchChooser(pub usize);

impl FixedPatchChooser {
    /// The patch at the centre of the grid (the "click the middle" baseline).
    pub fn centre(grid: PatchGrid) -> Self {
        let g = grid.size;
        FixedPatchChooser((g / 2) * g + g / 2)
    }
}

impl PatchChooser for FixedPatchChooser {
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let g = view.grid.size as i64;
        let (tr, tc) = (self.0 as i64 / g, self.0 as i64 % g);
        // Nearest free patch to the target (itself when free), ties to the lowest index.
        let dist = |i: usize| {
            let (r, c) = (i as i64 / g - tr, i as i64 % g - tc);
            r * r + c * c
        };
        let pick = (0..view.grid.len())
            .filter(|&i| view.free_patch(i))
            .min_by_key(|&i| (dist(i), i));
        Ok(pick.map(Click::patch).into())
    }
}

/// The SRM alone, no policy: at each step the patch whose centre the SRM, on the current state,
/// finds most likely to be on the object, among the patches not clicked yet. It answers "does
/// the policy add anything to the SRM's own map?".
pub struct SrmChooser<'a> {
    srm: &'a Srm,
}

impl<'a> SrmChooser<'a> {
    /// A chooser over the SRM's map.
    pub fn new(srm: &'a Srm) -> Self {
        SrmChooser { srm }
    }
}

impl PatchChooser for SrmChooser<'_> {
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let prob = self.srm.predict(view.state(), None)?;
        let (h, w) = view.geometry.original;
        let mut best: Option<(usize, f32)> = None;
        for i in 0..view.grid.len() {
            // Never a patch it clicked before, even when repeats are allowed: the point of this
            // baseline is the SRM's ranking of new places.
            let stepped = |p: &PointRecord| p.origin == PointOrigin::Step && p.patch == i;
            if view.points.iter().any(stepped) || !view.free_patch(i) {
                continue;
            }
            let (x, y) = view.grid.centre(i, h, w);
            let (p, _) = self.srm.label_at(&prob, x, y, view.geometry);
            if !p.is_nan() && best.is_none_or(|(_, b)| p > b) {
                best = Some((i, p));
            }
        }
        Ok(best.map(|(i, _)| Click::patch(i)).into())
    }
}

/// A rule with no learning: click the patch where the SRM's map on `E` and the current mask
/// disagree most, positive where the map says object and the mask has none (score `P - M` at the
/// patch centre), negative the other way (`M - P`); never the same patch and label twice.
pub struct SrmErrorChooser<'a> {
    srm: &'a Srm,
}

impl<'a> SrmErrorChooser<'a> {
    /// The rule over the SRM's map.
    pub fn new(srm: &'a Srm) -> Self {
        SrmErrorChooser { srm }
    }

    /// The rule's scores at every patch centre: `[negative, positive]` per patch.
    pub fn scores(srm: &Srm, view: &StepView) -> Vec<[f32; 2]> {
        let (h, w) = view.geometry.original;
        (0..view.grid.len())
            .map(|i| {
                let (x, y) = view.grid.centre(i, h, w);
                let (p, _) = srm.label_at(view.embedding_map, x, y, view.geometry);
                let m = view.mask_probability_at(x, y);
                [m - p, p - m]
            })
            .collect()
    }
}

impl PatchChooser for SrmErrorChooser<'_> {
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let scores = Self::scores(self.srm, view);
        Ok(best_click(view, |patch, label| scores[patch][label as usize]).into())
    }
}

/// The free (patch, label) pair with the largest score (NaN never wins; ties to the lowest
/// patch, negative before positive).
pub fn best_click(view: &StepView, score: impl Fn(usize, PointLabel) -> f32) -> Option<Click> {
    let mut best: Option<(Click, f32)> = None;
    for patch in 0..view.grid.len() {
        for label in [PointLabel::Negative, PointLabel::Positive] {
            let s = score(patch, label);
            if s.is_nan() || !view.free_click(patch, label) {
                continue;
            }
            if best.is_none_or(|(_, b)| s > b) {
                let click = Click {
                    patch,
                    at: None,
                    label: Some(label),
                };
                best = Some((click, s));
            }
        }
    }
    best.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        embedding: Embedding,
        geometry: FrameGeometry,
        current: LowResMask,
        map: Map,
        used: UsedClicks,
    }

    impl Fixture {
        fn new(grid: usize) -> Self {
            Fixture {
                embedding: Embedding(Tensor::zeros(vec![1, 1, 4, 4])),
                geometry: FrameGeometry::new(100, 100, 16),
                current: LowResMask {
                    logits: Map {
                        height: 16,
                        width: 16,
                        data: vec![-10.0; 256],
                    },
                    iou: 0.5,
                },
                map: Map::zeros(4, 4),
                used: UsedClicks::new(grid * grid),
            }
        }

        fn view(&self, grid: usize, forbid: bool) -> StepView<'_> {
            StepView::new(
                &self.embedding,
                &self.geometry,
                &self.current,
                &[],
                0,
                &self.map,
                PatchGrid::new(grid),
                &self.used,
                forbid,
            )
        }
    }

    #[test]
    fn fixed_patch_falls_back_to_the_nearest_free_patch() {
        let mut f = Fixture::new(3);
        let mut c = FixedPatchChooser::centre(PatchGrid::new(3));
        let pick = |c: &mut FixedPatchChooser, f: &Fixture, forbid| match c
            .choose(&f.view(3, forbid))
            .unwrap()
            .decision
        {
            Decision::Click(k) => Some(k.patch),
            _ => None,
        };
        assert_eq!(pick(&mut c, &f, true), Some(4));
        f.used.mark(4, PointLabel::Negative);
        assert_eq!(pick(&mut c, &f, true), Some(1));
        assert_eq!(pick(&mut c, &f, false), Some(4), "repeats allowed");
        for p in 0..9 {
            f.used.mark(p, PointLabel::Positive);
        }
        assert_eq!(pick(&mut c, &f, true), None);
    }

    #[test]
    fn random_chooser_is_seeded_and_respects_the_guard() {
        let mut f = Fixture::new(10);
        let picks = |f: &Fixture, seed| {
            let mut c = RandomChooser::new(seed);
            (0..20)
                .map(|_| match c.choose(&f.view(10, true)).unwrap().decision {
                    Decision::Click(k) => k.patch,
                    d => panic!("{d:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(&f, 7), picks(&f, 7));
        assert_ne!(picks(&f, 7), picks(&f, 8));
        for p in (0..100).filter(|&p| p != 42) {
            f.used.mark(p, PointLabel::Negative);
        }
        assert!(picks(&f, 1).iter().all(|&p| p == 42));
    }

    #[test]
    fn the_guard_is_per_label_for_choosers_that_choose_labels() {
        let mut f = Fixture::new(2);
        f.used.mark(3, PointLabel::Positive);
        let v = f.view(2, true);
        assert!(!v.free_click(3, PointLabel::Positive));
        assert!(v.free_click(3, PointLabel::Negative));
        assert!(
            !v.free_patch(3),
            "a label-less chooser may not click it again"
        );
        // Patch 3 scores highest with both labels: the positive one is used, so negative.
        let score = |p: usize, l: PointLabel| p as f32 + if l.is_positive() { 0.5 } else { 0.0 };
        let c = best_click(&v, score).unwrap();
        assert_eq!((c.patch, c.label), (3, Some(PointLabel::Negative)));
        let v = f.view(2, false);
        assert_eq!(
            best_click(&v, score).unwrap().label,
            Some(PointLabel::Positive)
        );
    }

    #[test]
    fn the_mask_is_read_at_the_point() {
        let mut f = Fixture::new(2);
        // Frame 16, image 100 x 100: low-res cell (r, c) covers image pixels 6.25 * (r, c)...
        f.current.logits.data[3 * 16 + 5] = 10.0;
        let v = f.view(2, true);
        assert!(v.mask_probability_at(5.5 * 6.25, 3.5 * 6.25) > 0.99);
        assert!(v.mask_probability_at(4.5 * 6.25, 3.5 * 6.25) < 0.01);
    }
}
