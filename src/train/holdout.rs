//! A quick held-out check of a trained bundle, run through the exported ONNX files and the
//! inference loop itself ([`Agent::run_on_embedding`] on cached embeddings): the hit rate of the
//! greedy policy beside the random-patch and centre-patch baselines (same SRM, same start points,
//! same decoder), and the SRM's map IoU on `s_0 = E` beside a constant map and the training
//! set's mean map. `alignsam eval` is the full evaluation; this is the number training reports.

use std::time::Instant;

use anyhow::Result;

use super::data::TrainImage;
use crate::agent::ground_truth::{self, map_iou};
use crate::agent::state::state;
use crate::agent::{
    Agent, FixedPatchChooser, ImageOptions, LoopOptions, PatchChooser, PointOrigin, PolicyChooser,
    RandomChooser,
};
use crate::cache::EmbeddingCache;
use crate::sam::Map;

/// One chooser's numbers over the held-out images.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ChooserScore {
    /// Points chosen at steps (start points excluded).
    pub points: usize,
    /// Fraction of them on the object.
    pub hit_rate: f64,
    /// Mean IoU of the final mask with the ground truth.
    pub mask_iou: f64,
}

/// The held-out report.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HoldoutReport {
    /// Images evaluated.
    pub images: usize,
    /// Steps per image.
    pub steps: usize,
    /// The trained policy, greedy.
    pub policy: ChooserScore,
    /// Uniformly random patches.
    pub random: ChooserScore,
    /// Always the centre patch.
    pub centre: ChooserScore,
    /// Mean IoU of the SRM's map on `s_0` with the target (both at 0.5).
    pub srm_iou: f64,
    /// The same for an all-foreground map (the best constant map: an all-background one scores 0).
    pub constant_iou: f64,
    /// The same for the training targets' mean map (a location prior), when given.
    pub prior_iou: Option<f64>,
    /// Seconds taken.
    pub seconds: f64,
}

/// Evaluates `agent` on `images` (cached) with the loop's `options`; `prior` is the training
/// set's mean target map. `progress` is called after each image.
pub fn evaluate(
    agent: &Agent,
    images: &[TrainImage],
    cache: &EmbeddingCache,
    options: &LoopOptions,
    seed: u64,
    prior: Option<&Map>,
    mut progress: impl FnMut(usize),
) -> Result<HoldoutReport> {
    let start = Instant::now();
    let mut scores = [
        ChooserScore::default(),
        ChooserScore::default(),
        ChooserScore::default(),
    ];
    let mut hits = [0usize; 3];
    let (mut srm_iou, mut constant_iou, mut prior_iou) = (0f64, 0f64, 0f64);
    for (i, img) in images.iter().enumerate() {
        let embedding = img.embedding(cache)?;
        let mut random = RandomChooser::new(seed.wrapping_add(i as u64));
        let mut centre = FixedPatchChooser::centre(agent.grid);
        let mut greedy = PolicyChooser(agent.policy()?);
        let choosers: [&mut dyn PatchChooser; 3] = [&mut greedy, &mut random, &mut centre];
        for (k, chooser) in choosers.into_iter().enumerate() {
            let per_image = ImageOptions {
                chooser: Some(chooser),
                ..ImageOptions::default()
            };
            let r = agent.run_on_embedding(&embedding, &img.geometry, options, per_image)?;
            for p in r.points.iter().filter(|p| p.origin == PointOrigin::Step) {
                scores[k].points += 1;
                hits[k] += ground_truth::hit(&img.gt, p.x, p.y) as usize;
            }
            scores[k].mask_iou += crate::eval::metrics::iou(&r.mask, &img.gt.data)?;
        }
        let prob = agent.srm.predict(&state(&embedding, None), None)?;
        srm_iou += map_iou(&prob, &img.target) as f64;
        let ones = Map {
            height: prob.height,
            width: prob.width,
            data: vec![1.0; prob.data.len()],
        };
        constant_iou += map_iou(&ones, &img.target) as f64;
        if let Some(p) = prior {
            prior_iou += map_iou(p, &img.target) as f64;
        }
        progress(i + 1);
    }
    let n = images.len().max(1) as f64;
    for (s, h) in scores.iter_mut().zip(hits) {
        s.hit_rate = h as f64 / s.points.max(1) as f64;
        s.mask_iou /= n;
    }
    let [policy, random, centre] = scores;
    Ok(HoldoutReport {
        images: images.len(),
        steps: options.max_steps,
        policy,
        random,
        centre,
        srm_iou: srm_iou / n,
        constant_iou: constant_iou / n,
        prior_iou: prior.map(|_| prior_iou / n),
        seconds: start.elapsed().as_secs_f64(),
    })
}
