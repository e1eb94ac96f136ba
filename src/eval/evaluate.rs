//! One evaluation run: every chosen [`Method`] on each image's cached embedding, scored against
//! the ground truth, and the running totals that become the report.
//!
//! [`MethodRunner::run`] is the model side (the loops and the oracle); [`Evaluation::add`] the
//! bookkeeping (mask metrics, point counts, SRM scores, the oracle's curve), kept apart so that
//! the totals can be tested without models.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::agent_stats::{PointStats, SrmScores};
use super::method::{Method, image_seed};
use super::metrics::{ImageMetrics, MetricAccumulator, MetricSummary};
use super::oracle::{NOC_CAP, OracleRun, run_oracle};
use crate::agent::ground_truth::mask_iou;
use crate::agent::{
    Agent, ImageOptions, LoopOptions, LoopResult, PointOrigin, PointRecord, StageTimes, StopReason,
    TraceStep,
};
use crate::dataset::Mask;
use crate::sam::{Embedding, FrameGeometry, postprocess};
use crate::util::ms;

/// The step budgets the evaluation reports a curve at (those up to the run's step limit): the
/// mask each method would return with that many steps, read from one traced run.
pub const BUDGETS: [usize; 6] = [0, 1, 3, 5, 10, 15];

/// What the methods produced on one image: one loop result per method (the oracle's as a loop
/// result with its clicks as points), and the oracle's whole curve when it ran.
pub struct MethodResults {
    /// One per method, in the order asked for.
    pub results: Vec<(Method, LoopResult)>,
    /// The oracle's clicks and IoU after each (up to [`NOC_CAP`] or the loop's point count).
    pub oracle: Option<OracleRun>,
}

/// Runs each method once on the same embedding. The random baseline's seed comes from `seed` and
/// the image id (see [`image_seed`]). Each loop's clock starts when it does, so its times leave
/// out the encoder (the embedding is cached). The oracle clicks `max(NOC_CAP, 2 + steps)` times
/// and keeps the mask after `2 + steps` clicks, the loop's point count.
pub struct MethodRunner<'a> {
    /// The agent (SAM, SRM, policy).
    pub agent: &'a Agent,
    /// The loop options of every loop method.
    pub options: &'a LoopOptions,
    /// Which methods, in report order.
    pub methods: &'a [Method],
    /// The random baseline's seed.
    pub seed: u64,
    /// Label every point from the ground truth instead of the chooser or the SRM (the diagnosis
    /// of *where* against *which label*).
    pub truth_labels: bool,
}

impl MethodRunner<'_> {
    /// Every method on one image.
    pub fn run(
        &self,
        id: &str,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        gt: &Mask,
    ) -> Result<MethodResults> {
        let (agent, options) = (self.agent, self.options);
        let mut out = MethodResults {
            results: vec![],
            oracle: None,
        };
        for &method in self.methods {
            let result = match method.chooser(agent, image_seed(self.seed, id), gt) {
                Ok(Some(mut chooser)) => {
                    let per_image = ImageOptions {
                        chooser: Some(chooser.as_mut()),
                        truth: self.truth_labels.then_some(gt),
                        ..ImageOptions::default()
                    };
                    agent.run_on_embedding(embedding, geometry, options, per_image)
                }
                Ok(None) => {
                    oracle_result(agent, embedding, geometry, options, gt).map(|(r, run)| {
                        out.oracle = Some(run);
                        r
                    })
                }
                Err(e) => Err(e),
            }
            .with_context(|| format!("{}: the {} method failed", id, method.name()))?;
            out.results.push((method, result));
        }
        Ok(out)
    }
}

/// The oracle's run, and its mask after the loop's point count as a loop result.
fn oracle_result(
    agent: &Agent,
    embedding: &Embedding,
    geometry: &FrameGeometry,
    options: &LoopOptions,
    gt: &Mask,
) -> Result<(LoopResult, OracleRun)> {
    let start = Instant::now();
    let keep = 2 + options.max_steps;
    let run = run_oracle(
        &agent.sam.decoder,
        embedding,
        geometry,
        gt,
        keep.max(NOC_CAP),
        keep,
        options.feed_mask,
    )?;
    let (h, w) = geometry.original;
    let points = run
        .points
        .iter()
        .take(keep)
        .enumerate()
        .map(|(i, p)| PointRecord {
            step: i,
            x: p.x,
            y: p.y,
            label: p.label,
            patch: agent.grid.patch_at(p.x, p.y, h, w),
            origin: PointOrigin::Oracle,
            srm_prob: f32::NAN,
            iou_prediction: f32::NAN,
        })
        .collect();
    let result = LoopResult {
        points,
        steps: keep.saturating_sub(2),
        kept_step: keep.saturating_sub(2),
        stop: StopReason::StepLimit,
        times: StageTimes {
            total_ms: ms(start.elapsed()),
            ..StageTimes::default()
        },
        low_res: run.kept_low_res.clone(),
        iou_prediction: run.kept_iou_prediction,
        mask: run.kept_mask.clone(),
        geometry: *geometry,
        trace: vec![],
    };
    Ok((result, run))
}

/// One method's loop on one image, scored.
#[derive(Clone, Debug)]
pub struct MethodRun {
    /// Which method.
    pub method: Method,
    /// The loop's points, mask and times.
    pub result: LoopResult,
    /// The final mask against the ground truth.
    pub metrics: ImageMetrics,
    /// The points against the ground truth.
    pub points: PointStats,
    /// IoU of the mask the method returns with each of the evaluation's budgets (see
    /// [`Evaluation::budgets`]; empty when the run was not traced).
    pub budget_ious: Vec<f64>,
}

/// Everything measured on one image.
#[derive(Clone, Debug)]
pub struct ImageEval {
    /// The sample id.
    pub id: String,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// The object's share of the image.
    pub gt_fraction: f64,
    /// The SRM on `s_0`, shared by every method.
    pub srm: SrmScores,
    /// One run per method, in the evaluation's order.
    pub runs: Vec<MethodRun>,
    /// The oracle's IoU after each click, when it ran.
    pub oracle_ious: Option<Vec<f64>>,
}

/// A paired difference over images (method A minus method B on the same image): its mean and
/// the half-width of a 95% confidence interval (Student's t). Pairing removes the variation
/// between images, which dominates: points on one image are far from independent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedDiff {
    /// Mean difference.
    pub mean: f64,
    /// Half-width of the 95% interval (NaN with fewer than two images).
    pub half_width: f64,
    /// Images paired.
    pub n: usize,
}

impl PairedDiff {
    /// The paired difference of two equally long series (`None` when empty).
    pub fn of(a: &[f64], b: &[f64]) -> Option<PairedDiff> {
        assert_eq!(a.len(), b.len(), "paired series");
        let n = a.len();
        if n == 0 {
            return None;
        }
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let mean = d.iter().sum::<f64>() / n as f64;
        let half_width = if n < 2 {
            f64::NAN
        } else {
            let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t975(n - 1) * (var / n as f64).sqrt()
        };
        Some(PairedDiff {
            mean,
            half_width,
            n,
        })
    }

    /// Whether the interval excludes zero.
    pub fn significant(&self) -> bool {
        self.mean.abs() > self.half_width
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom: tabulated up to 4, then the
/// Cornish-Fisher expansion around the normal quantile (within 0.12% from df = 5 on).
fn t975(df: usize) -> f64 {
    const SMALL: [f64; 4] = [12.706, 4.303, 3.182, 2.776];
    if (1..=4).contains(&df) {
        return SMALL[df - 1];
    }
    let z: f64 = 1.959_963_984_540_054;
    let v = df as f64;
    z + (z.powi(3) + z) / (4.0 * v)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * v.powi(3))
}

/// Per image figures of one method, for paired comparisons.
#[derive(Clone, Debug, Default)]
struct PerImage {
    iou: Vec<f64>,
    adaptive_f: Vec<f64>,
    mae: Vec<f64>,
    /// The hit rate of the step points (NaN for an image without step points).
    hit_rate: Vec<f64>,
}

/// The running totals of one method.
#[derive(Clone, Debug)]
struct MethodTotals {
    method: Method,
    metrics: MetricAccumulator,
    points: PointStats,
    steps: usize,
    loop_ms: f64,
    per_image: PerImage,
    /// The patch of each image's first step (None: no step).
    first_patches: Vec<Option<usize>>,
    /// Every patch a step clicked, over all images.
    all_patches: std::collections::BTreeSet<usize>,
    /// Per budget, per image: IoU of the mask returned with that budget.
    budget_ious: Vec<Vec<f64>>,
}

/// How varied a method's clicks are across images: a policy that clicks one constant patch is a
/// location prior, not an agent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Diversity {
    /// Distinct patches of the first step across images.
    pub first_distinct: usize,
    /// Share of images (with a step) whose first step is the most common first patch.
    pub first_top_share: f64,
    /// Distinct patches clicked at any step across images.
    pub distinct: usize,
}

impl Diversity {
    fn of(first: &[Option<usize>], all: &std::collections::BTreeSet<usize>) -> Self {
        let mut counts = std::collections::BTreeMap::new();
        for p in first.iter().flatten() {
            *counts.entry(*p).or_insert(0usize) += 1;
        }
        let with_step = counts.values().sum::<usize>();
        let top = counts.values().copied().max().unwrap_or(0);
        Diversity {
            first_distinct: counts.len(),
            first_top_share: if with_step == 0 {
                f64::NAN
            } else {
                top as f64 / with_step as f64
            },
            distinct: all.len(),
        }
    }
}

/// One method's row of the report.
#[derive(Clone, Debug)]
pub struct MethodSummary {
    /// Which method.
    pub method: Method,
    /// Mask metrics over images.
    pub metrics: MetricSummary,
    /// Points summed over images: rates are pooled per point.
    pub points: PointStats,
    /// Mean steps per image.
    pub mean_steps: f64,
    /// Mean distinct patches among the step points per image.
    pub mean_distinct: f64,
    /// Mean loop milliseconds per image (start points, steps, final upscale; no encoder).
    pub mean_loop_ms: f64,
    /// How varied the clicks are across images.
    pub diversity: Diversity,
    /// Mean IoU with each budget (see [`EvalSummary::budgets`]); empty when not traced.
    pub budget_miou: Vec<f64>,
}

/// The SRM's line of the report.
#[derive(Clone, Copy, Debug)]
pub struct SrmSummary {
    /// Mean SRM IoU over images.
    pub srm: f64,
    /// Mean IoU of the all-foreground map.
    pub all_foreground: f64,
    /// Mean IoU of the all-background map.
    pub all_background: f64,
    /// SRM minus the better of the two constant maps (over the dataset), paired per image.
    pub vs_best_constant: Option<PairedDiff>,
}

impl SrmSummary {
    /// The better constant map's mean IoU.
    pub fn best_constant(&self) -> f64 {
        self.all_foreground.max(self.all_background)
    }
}

/// A learned method (see [`Method::is_learned`]) against another method, paired per image.
#[derive(Clone, Copy, Debug)]
pub struct Comparison {
    /// The learned method.
    pub method: Method,
    /// The other method.
    pub other: Method,
    /// Method minus other: IoU.
    pub iou: Option<PairedDiff>,
    /// Method minus other: adaptive F-measure.
    pub adaptive_f: Option<PairedDiff>,
    /// Method minus other: MAE (negative is better for the method).
    pub mae: Option<PairedDiff>,
    /// Method minus other: hit rate of the step points, over images where both have step points.
    pub hit_rate: Option<PairedDiff>,
}

/// The oracle's click curve over the images.
#[derive(Clone, Debug)]
pub struct OracleSummary {
    /// Mean IoU after 1, 2, ... clicks.
    pub miou: Vec<f64>,
    /// Mean clicks to reach IoU 0.85 (capped at [`NOC_CAP`]).
    pub noc85: f64,
    /// Mean clicks to reach IoU 0.90 (capped at [`NOC_CAP`]).
    pub noc90: f64,
    /// Images that did not reach 0.85 within the cap.
    pub failed85: usize,
    /// Images that did not reach 0.90 within the cap.
    pub failed90: usize,
}

impl OracleSummary {
    /// Mean IoU after `n` clicks.
    pub fn miou_at(&self, n: usize) -> f64 {
        self.miou[n.clamp(1, self.miou.len()) - 1]
    }

    fn of(curves: &[Vec<f64>]) -> Option<Self> {
        let n = curves.len();
        let len = curves.iter().map(Vec::len).min()?;
        let miou = (0..len)
            .map(|k| curves.iter().map(|c| c[k]).sum::<f64>() / n as f64)
            .collect();
        let noc = |t: f64| {
            let clicks: Vec<usize> = curves
                .iter()
                .map(|c| {
                    c.iter()
                        .take(NOC_CAP)
                        .position(|&v| v >= t)
                        .map_or(NOC_CAP, |i| i + 1)
                })
                .collect();
            let failed = curves
                .iter()
                .filter(|c| !c.iter().take(NOC_CAP).any(|&v| v >= t))
                .count();
            (clicks.iter().sum::<usize>() as f64 / n as f64, failed)
        };
        let ((noc85, failed85), (noc90, failed90)) = (noc(0.85), noc(0.90));
        Some(OracleSummary {
            miou,
            noc85,
            noc90,
            failed85,
            failed90,
        })
    }
}

/// The whole report's numbers.
#[derive(Clone, Debug)]
pub struct EvalSummary {
    /// Images evaluated.
    pub images: usize,
    /// One row per method, in the evaluation's order.
    pub methods: Vec<MethodSummary>,
    /// The SRM against constant maps.
    pub srm: SrmSummary,
    /// Each learned method that ran against each other method (empty without one).
    pub comparisons: Vec<Comparison>,
    /// The oracle's curve, when it ran.
    pub oracle: Option<OracleSummary>,
    /// The step budgets of the methods' budget curves.
    pub budgets: Vec<usize>,
}

impl EvalSummary {
    /// The greedy policy against one other method.
    pub fn policy_vs(&self, other: Method) -> Option<&Comparison> {
        self.vs(Method::Policy, other)
    }

    /// A learned method against one other method.
    pub fn vs(&self, method: Method, other: Method) -> Option<&Comparison> {
        self.comparisons
            .iter()
            .find(|p| p.method == method && p.other == other)
    }
}

/// The mask a traced run returns with a budget of `budget` steps: among the masks made with at
/// most that many steps, the best estimated one (`keep_best`) or the last.
pub fn mask_at_budget(trace: &[TraceStep], budget: usize, keep_best: bool) -> Option<&TraceStep> {
    if keep_best {
        let within = trace.iter().filter(|t| t.step <= budget);
        // The first of the highest: the loop keeps the earlier mask on a tie.
        within.fold(None, |best: Option<&TraceStep>, t| match best {
            // A NaN quality never replaces the kept mask.
            Some(b) if t.quality.partial_cmp(&b.quality) != Some(std::cmp::Ordering::Greater) => {
                Some(b)
            }
            _ => Some(t),
        })
    } else {
        trace.iter().rfind(|t| t.step <= budget)
    }
}

/// Totals over the images added so far.
#[derive(Clone, Debug)]
pub struct Evaluation {
    methods: Vec<MethodTotals>,
    srm: Vec<SrmScores>,
    oracle_curves: Vec<Vec<f64>>,
    budgets: Vec<usize>,
    keep_best: bool,
}

impl Evaluation {
    /// No images yet; `methods` are the methods each image will bring, in report order.
    pub fn new(methods: &[Method]) -> Self {
        Evaluation {
            methods: methods
                .iter()
                .map(|&method| MethodTotals {
                    method,
                    metrics: MetricAccumulator::new(),
                    points: PointStats::default(),
                    steps: 0,
                    loop_ms: 0.0,
                    per_image: PerImage::default(),
                    first_patches: vec![],
                    all_patches: Default::default(),
                    budget_ious: vec![],
                })
                .collect(),
            srm: vec![],
            oracle_curves: vec![],
            budgets: vec![],
            keep_best: false,
        }
    }

    /// Also reports each method's mIoU with each of `budgets` steps, from traced runs (see
    /// [`crate::agent::LoopOptions::trace`]), the masks chosen as the loop would (`keep_best`).
    pub fn with_budgets(mut self, budgets: &[usize], keep_best: bool) -> Self {
        self.budgets = budgets.to_vec();
        self.keep_best = keep_best;
        for m in &mut self.methods {
            m.budget_ious = vec![vec![]; budgets.len()];
        }
        self
    }

    /// The budgets of the curves.
    pub fn budgets(&self) -> &[usize] {
        &self.budgets
    }

    /// IoU with the ground truth of the mask each budget returns, for one run: from its trace,
    /// or for the oracle its IoU after 2 + budget clicks.
    fn budget_ious(
        &self,
        method: Method,
        result: &LoopResult,
        oracle: Option<&OracleRun>,
        gt: &Mask,
    ) -> Vec<f64> {
        if self.budgets.is_empty() {
            return vec![];
        }
        if method == Method::Oracle {
            let run = oracle.expect("the oracle's run comes with its result");
            return self.budgets.iter().map(|&b| run.iou_at(2 + b)).collect();
        }
        self.budgets
            .iter()
            .map(
                |&b| match mask_at_budget(&result.trace, b, self.keep_best) {
                    Some(t) => {
                        let mask = postprocess::threshold(&postprocess::upscale_logits(
                            &t.low_res,
                            &result.geometry,
                        ));
                        mask_iou(&mask, &gt.data)
                    }
                    None => f64::NAN,
                },
            )
            .collect()
    }

    /// Images added.
    pub fn images(&self) -> usize {
        self.srm.len()
    }

    /// Scores one image's results (from [`MethodRunner::run`], in this evaluation's method order)
    /// and adds them. On error nothing is added.
    pub fn add(
        &mut self,
        id: &str,
        gt: &Mask,
        srm: SrmScores,
        results: MethodResults,
    ) -> Result<ImageEval> {
        let methods: Vec<Method> = results.results.iter().map(|(m, _)| *m).collect();
        let expected: Vec<Method> = self.methods.iter().map(|t| t.method).collect();
        if methods != expected {
            bail!("{id}: results for {methods:?}, but the evaluation runs {expected:?}");
        }
        let (w, h) = (gt.width, gt.height);
        // Score into copies first, so that a failure part-way leaves the totals untouched.
        let mut scored = Vec::with_capacity(methods.len());
        let mut accumulators = Vec::with_capacity(methods.len());
        let oracle = results.oracle.as_ref();
        for ((method, result), totals) in results.results.iter().zip(&self.methods) {
            let method = *method;
            if result.geometry.original != (h, w) {
                let (rh, rw) = result.geometry.original;
                bail!(
                    "{id}: the {} method ran on a {rw}x{rh} image but the mask is {w}x{h}",
                    method.name()
                );
            }
            let mut acc = totals.metrics.clone();
            let metrics = acc
                .add_binary(&result.mask, &gt.data, w, h)
                .with_context(|| format!("{id}: {}", method.name()))?;
            accumulators.push(acc);
            let points = PointStats::of(&result.points, gt);
            let budget_ious = self.budget_ious(method, result, oracle, gt);
            scored.push(MethodRun {
                method,
                result: result.clone(),
                metrics,
                points,
                budget_ious,
            });
        }
        for ((totals, acc), run) in self.methods.iter_mut().zip(accumulators).zip(&scored) {
            totals.metrics = acc;
            totals.points += run.points;
            totals.steps += run.result.steps;
            totals.loop_ms += run.result.times.total_ms;
            let p = &mut totals.per_image;
            p.iou.push(run.metrics.iou);
            p.adaptive_f.push(run.metrics.adaptive_f);
            p.mae.push(run.metrics.mae);
            p.hit_rate.push(run.points.hit_rate().unwrap_or(f64::NAN));
            let steps = run
                .result
                .points
                .iter()
                .filter(|p| p.origin == PointOrigin::Step);
            totals
                .first_patches
                .push(steps.clone().next().map(|p| p.patch));
            totals.all_patches.extend(steps.map(|p| p.patch));
            for (acc, &v) in totals.budget_ious.iter_mut().zip(&run.budget_ious) {
                acc.push(v);
            }
        }
        self.srm.push(srm);
        let oracle_ious = results.oracle.map(|o| o.ious);
        if let Some(c) = &oracle_ious {
            self.oracle_curves.push(c.clone());
        }
        Ok(ImageEval {
            id: id.to_string(),
            width: w,
            height: h,
            gt_fraction: gt.foreground() as f64 / (w * h) as f64,
            srm,
            runs: scored,
            oracle_ious,
        })
    }

    /// The report's numbers; an error if no image was added.
    pub fn summary(&self) -> Result<EvalSummary> {
        let n = self.images();
        if n == 0 {
            bail!("no image was evaluated, so there are no results");
        }
        let methods = self
            .methods
            .iter()
            .map(|t| {
                Ok(MethodSummary {
                    method: t.method,
                    metrics: t.metrics.summary()?,
                    points: t.points,
                    mean_steps: t.steps as f64 / n as f64,
                    mean_distinct: t.points.distinct_patches as f64 / n as f64,
                    mean_loop_ms: t.loop_ms / n as f64,
                    diversity: Diversity::of(&t.first_patches, &t.all_patches),
                    budget_miou: t
                        .budget_ious
                        .iter()
                        .map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EvalSummary {
            images: n,
            methods,
            srm: self.srm_summary(),
            comparisons: self.comparisons(),
            oracle: OracleSummary::of(&self.oracle_curves),
            budgets: self.budgets.clone(),
        })
    }

    fn srm_summary(&self) -> SrmSummary {
        let n = self.srm.len() as f64;
        let mean = |f: fn(&SrmScores) -> f64| self.srm.iter().map(f).sum::<f64>() / n;
        let (fg, bg) = (mean(|s| s.all_foreground), mean(|s| s.all_background));
        let srm: Vec<f64> = self.srm.iter().map(|s| s.srm).collect();
        let best: Vec<f64> = self
            .srm
            .iter()
            .map(|s| {
                if fg >= bg {
                    s.all_foreground
                } else {
                    s.all_background
                }
            })
            .collect();
        SrmSummary {
            srm: mean(|s| s.srm),
            all_foreground: fg,
            all_background: bg,
            vs_best_constant: PairedDiff::of(&srm, &best),
        }
    }

    fn comparisons(&self) -> Vec<Comparison> {
        let learned = self.methods.iter().filter(|t| t.method.is_learned());
        learned
            .flat_map(|method| {
                self.methods
                    .iter()
                    .filter(move |t| t.method != method.method)
                    // The greedy and the sampled policy are one network read two ways: their
                    // difference is no result.
                    .filter(move |t| !(t.method.is_policy() && method.method.is_policy()))
                    .map(move |other| Self::paired(method, other))
            })
            .collect()
    }

    fn paired(method: &MethodTotals, other: &MethodTotals) -> Comparison {
        let (p, o) = (&method.per_image, &other.per_image);
        // Images where either method ran no step say nothing about the hit rates.
        let (a, b): (Vec<f64>, Vec<f64>) = p
            .hit_rate
            .iter()
            .zip(&o.hit_rate)
            .filter(|(x, y)| !x.is_nan() && !y.is_nan())
            .unzip();
        Comparison {
            method: method.method,
            other: other.method,
            iou: PairedDiff::of(&p.iou, &o.iou),
            adaptive_f: PairedDiff::of(&p.adaptive_f, &o.adaptive_f),
            mae: PairedDiff::of(&p.mae, &o.mae),
            hit_rate: PairedDiff::of(&a, &b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{PointOrigin, PointRecord, StageTimes, StopReason};
    use crate::sam::{Map, PointLabel};

    /// A 2x1 image whose right pixel is the object.
    fn gt() -> Mask {
        Mask {
            width: 2,
            height: 1,
            data: vec![false, true],
        }
    }

    /// A loop result on that image: step points at the given x (0.5: miss, 1.5: hit), the mask.
    fn result(xs: &[f64], mask: [bool; 2], height: usize) -> LoopResult {
        let points = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| PointRecord {
                step: i + 1,
                x,
                y: 0.5,
                label: PointLabel::Positive,
                patch: x as usize,
                origin: PointOrigin::Step,
                srm_prob: 0.9,
                iou_prediction: 0.5,
            })
            .collect();
        LoopResult {
            points,
            steps: xs.len(),
            kept_step: xs.len(),
            stop: StopReason::StepLimit,
            times: StageTimes {
                total_ms: 10.0,
                ..StageTimes::default()
            },
            low_res: Map::zeros(1, 1),
            iou_prediction: 0.5,
            mask: mask.to_vec(),
            geometry: FrameGeometry::new(height, 2, 1024),
            trace: vec![],
        }
    }

    fn results(rs: Vec<LoopResult>) -> MethodResults {
        MethodResults {
            results: [Method::Policy, Method::Random, Method::Centre]
                .into_iter()
                .zip(rs)
                .collect(),
            oracle: None,
        }
    }

    const THREE: [Method; 3] = [Method::Policy, Method::Random, Method::Centre];

    #[test]
    fn totals_pool_points_and_pair_images() {
        let srm = SrmScores {
            srm: 1.0,
            all_foreground: 0.5,
            all_background: 0.0,
        };
        let mut e = Evaluation::new(&THREE);
        // Image 1: policy 2 hits of 2, random 1 of 2, centre 0 of 2.
        let r = vec![
            result(&[1.5, 1.5], [false, true], 1),
            result(&[0.5, 1.5], [true, true], 1),
            result(&[0.5, 0.5], [true, false], 1),
        ];
        let one = e.add("one", &gt(), srm, results(r)).unwrap();
        assert_eq!(one.runs[0].points.step_hits, 2);
        assert_eq!(one.runs[2].metrics.iou, 0.0);
        assert_eq!(one.gt_fraction, 0.5);
        // A result for another image size is refused and leaves the totals as they were.
        let bad = vec![
            result(&[1.5], [false, true], 1),
            result(&[1.5], [false, true], 1),
            result(&[1.5], [false, true], 2),
        ];
        assert!(e.add("bad", &gt(), srm, results(bad)).is_err());
        assert_eq!(e.images(), 1);
        // Image 2: policy 1 hit of 1, random 0 of 1, centre 0 of 1.
        let r = vec![
            result(&[1.5], [false, true], 1),
            result(&[0.5], [true, false], 1),
            result(&[0.5], [true, false], 1),
        ];
        e.add("two", &gt(), SrmScores { srm: 0.0, ..srm }, results(r))
            .unwrap();

        let s = e.summary().unwrap();
        assert_eq!(s.images, 2);
        let [policy, random, centre] = [&s.methods[0], &s.methods[1], &s.methods[2]];
        assert_eq!(policy.points.hit_rate(), Some(1.0));
        assert_eq!(
            random.points.hit_rate(),
            Some(1.0 / 3.0),
            "pooled per point, not 0.25 per image"
        );
        assert_eq!(centre.points.hit_rate(), Some(0.0));
        assert_eq!((policy.mean_steps, policy.mean_loop_ms), (1.5, 10.0));
        assert_eq!(policy.metrics.miou, 1.0);
        assert_eq!(random.metrics.miou, 0.25);
        // Per image, policy minus random: hit rate 0.5 and 1.0, IoU 0.5 and 1.0.
        let vs = s.policy_vs(Method::Random).unwrap();
        let d = vs.hit_rate.unwrap();
        assert_eq!((d.mean, d.n), (0.75, 2));
        assert_eq!(vs.iou.unwrap().mean, 0.75);
        assert_eq!(s.policy_vs(Method::Centre).unwrap().iou.unwrap().mean, 1.0);
        assert!(s.policy_vs(Method::Policy).is_none());
        assert_eq!(
            (s.srm.srm, s.srm.all_foreground, s.srm.best_constant()),
            (0.5, 0.5, 0.5)
        );
        assert_eq!(s.srm.vs_best_constant.unwrap().mean, 0.0);
        assert!(Evaluation::new(&THREE).summary().is_err());
        // Results for other methods than the evaluation's are refused.
        let mut wrong = results(vec![result(&[1.5], [false, true], 1)]);
        wrong.results[0].0 = Method::Oracle;
        assert!(
            Evaluation::new(&[Method::Policy])
                .add("x", &gt(), srm, wrong)
                .is_err()
        );
    }

    #[test]
    fn oracle_curve_means_and_noc() {
        let curves = vec![vec![0.5, 0.86, 0.91], vec![0.9, 0.95, 0.97]];
        let o = OracleSummary::of(&curves).unwrap();
        assert_eq!(o.miou_at(1), 0.7);
        assert_eq!((o.noc85, o.noc90), (1.5, 2.0));
        assert_eq!((o.failed85, o.failed90), (0, 0));
        let o = OracleSummary::of(&[vec![0.1; 20]]).unwrap();
        assert_eq!((o.noc85, o.failed85), (NOC_CAP as f64, 1));
        assert!(OracleSummary::of(&[]).is_none());
    }

    #[test]
    fn t_quantiles() {
        // Tabulated t_{0.975}.
        for (df, t) in [(2, 4.303), (5, 2.5706), (19, 2.0930), (99, 1.9842)] {
            assert!(
                (t975(df) - t).abs() < 0.0015 * t,
                "df {df}: {} vs {t}",
                t975(df)
            );
        }
    }

    #[test]
    fn paired_differences() {
        let d = PairedDiff::of(&[0.5, 0.7, 0.6], &[0.4, 0.4, 0.4]).unwrap();
        assert!((d.mean - 0.2).abs() < 1e-12);
        // Differences 0.1, 0.3, 0.2: sd 0.1, se 0.1/sqrt(3), t(2) = 4.303.
        assert!(
            (d.half_width - 4.303 * 0.1 / 3f64.sqrt()).abs() < 1e-9,
            "{d:?}"
        );
        assert!(!d.significant(), "0.2 +/- 0.25 includes 0");
        assert!(
            PairedDiff::of(&[0.5, 0.6, 0.55, 0.52], &[0.1; 4])
                .unwrap()
                .significant()
        );
        assert!(PairedDiff::of(&[], &[]).is_none());
        assert!(PairedDiff::of(&[1.0], &[0.0]).unwrap().half_width.is_nan());
    }
}
