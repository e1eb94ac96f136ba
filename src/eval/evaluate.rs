//! One evaluation run: every [`Method`] on each image's cached embedding, scored against the
//! ground truth, and the running totals that become the report.
//!
//! [`run_methods`] is the model side (the loops); [`Evaluation::add`] the bookkeeping (mask
//! metrics, point counts, SRM scores), kept apart so that the totals can be tested without models.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::agent_stats::{PointStats, SrmScores};
use super::method::{Method, image_seed};
use super::metrics::{ImageMetrics, MetricAccumulator, MetricSummary};
use crate::agent::{Agent, LoopOptions, LoopResult};
use crate::dataset::Mask;
use crate::sam::{Embedding, FrameGeometry};

/// Runs the loop once per method on the same embedding, in [`Method::ALL`] order. The random
/// baseline's seed comes from `seed` and the image id (see [`image_seed`]). Each loop's clock
/// starts when it does, so its times leave out the encoder (the embedding is cached).
pub fn run_methods(
    agent: &Agent,
    embedding: &Embedding,
    geometry: &FrameGeometry,
    options: &LoopOptions,
    seed: u64,
    id: &str,
) -> Result<Vec<LoopResult>> {
    Method::ALL
        .iter()
        .map(|&method| {
            let mut chooser = method.chooser(agent, image_seed(seed, id));
            agent
                .run_on_embedding(
                    embedding,
                    geometry,
                    options,
                    None,
                    None,
                    chooser.as_mut(),
                    Instant::now(),
                )
                .with_context(|| format!("{}: the {} loop failed", id, method.name()))
        })
        .collect()
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
    /// One run per method, in [`Method::ALL`] order.
    pub runs: Vec<MethodRun>,
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

/// The running totals of one method.
#[derive(Clone, Debug)]
struct MethodTotals {
    metrics: MetricAccumulator,
    points: PointStats,
    steps: usize,
    loop_ms: f64,
    /// Per image, the hit rate of the step points (NaN for an image without step points).
    hit_rates: Vec<f64>,
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

/// The whole report's numbers.
#[derive(Clone, Debug)]
pub struct EvalSummary {
    /// Images evaluated.
    pub images: usize,
    /// One row per method, in [`Method::ALL`] order.
    pub methods: Vec<MethodSummary>,
    /// The SRM against constant maps.
    pub srm: SrmSummary,
    /// The policy's hit rate minus the random baseline's, paired per image.
    pub policy_vs_random: Option<PairedDiff>,
}

/// Totals over the images added so far.
#[derive(Clone, Debug)]
pub struct Evaluation {
    methods: Vec<MethodTotals>,
    srm: Vec<SrmScores>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self::new()
    }
}

impl Evaluation {
    /// No images yet.
    pub fn new() -> Self {
        let totals = MethodTotals {
            metrics: MetricAccumulator::new(),
            points: PointStats::default(),
            steps: 0,
            loop_ms: 0.0,
            hit_rates: vec![],
        };
        Evaluation {
            methods: vec![totals; Method::ALL.len()],
            srm: vec![],
        }
    }

    /// Images added.
    pub fn images(&self) -> usize {
        self.srm.len()
    }

    /// Scores one image's loops (from [`run_methods`], in [`Method::ALL`] order) and adds them.
    /// On error nothing is added.
    pub fn add(
        &mut self,
        id: &str,
        gt: &Mask,
        srm: SrmScores,
        results: Vec<LoopResult>,
    ) -> Result<ImageEval> {
        if results.len() != Method::ALL.len() {
            bail!(
                "{id}: {} loop results for {} methods",
                results.len(),
                Method::ALL.len()
            );
        }
        let (w, h) = (gt.width, gt.height);
        // Score into copies first, so that a failure part-way leaves the totals untouched.
        let mut scored = Vec::with_capacity(results.len());
        let mut accumulators = Vec::with_capacity(results.len());
        for ((&method, result), totals) in Method::ALL.iter().zip(results).zip(&self.methods) {
            if result.geometry.original != (h, w) {
                let (rh, rw) = result.geometry.original;
                bail!(
                    "{id}: the {} loop ran on a {rw}x{rh} image but the mask is {w}x{h}",
                    method.name()
                );
            }
            let mut acc = totals.metrics.clone();
            let metrics = acc
                .add_binary(&result.mask, &gt.data, w, h)
                .with_context(|| format!("{id}: {}", method.name()))?;
            accumulators.push(acc);
            let points = PointStats::of(&result.points, gt);
            scored.push(MethodRun {
                method,
                result,
                metrics,
                points,
            });
        }
        for ((totals, acc), run) in self.methods.iter_mut().zip(accumulators).zip(&scored) {
            totals.metrics = acc;
            totals.points += run.points;
            totals.steps += run.result.steps;
            totals.loop_ms += run.result.times.total_ms;
            totals
                .hit_rates
                .push(run.points.hit_rate().unwrap_or(f64::NAN));
        }
        self.srm.push(srm);
        Ok(ImageEval {
            id: id.to_string(),
            width: w,
            height: h,
            gt_fraction: gt.foreground() as f64 / (w * h) as f64,
            srm,
            runs: scored,
        })
    }

    /// The report's numbers; an error if no image was added.
    pub fn summary(&self) -> Result<EvalSummary> {
        let n = self.images();
        if n == 0 {
            bail!("no image was evaluated, so there are no results");
        }
        let methods = Method::ALL
            .iter()
            .zip(&self.methods)
            .map(|(&method, t)| {
                Ok(MethodSummary {
                    method,
                    metrics: t.metrics.summary()?,
                    points: t.points,
                    mean_steps: t.steps as f64 / n as f64,
                    mean_distinct: t.points.distinct_patches as f64 / n as f64,
                    mean_loop_ms: t.loop_ms / n as f64,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let mean = |f: fn(&SrmScores) -> f64| self.srm.iter().map(f).sum::<f64>() / n as f64;
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
        let srm_summary = SrmSummary {
            srm: mean(|s| s.srm),
            all_foreground: fg,
            all_background: bg,
            vs_best_constant: PairedDiff::of(&srm, &best),
        };

        // Images where either method ran no step can say nothing about the difference.
        let (policy, random) = (&self.methods[0].hit_rates, &self.methods[1].hit_rates);
        let (a, b): (Vec<f64>, Vec<f64>) = policy
            .iter()
            .zip(random)
            .filter(|(p, r)| !p.is_nan() && !r.is_nan())
            .unzip();
        Ok(EvalSummary {
            images: n,
            methods,
            srm: srm_summary,
            policy_vs_random: PairedDiff::of(&a, &b),
        })
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
            stop: StopReason::StepLimit,
            times: StageTimes {
                total_ms: 10.0,
                ..StageTimes::default()
            },
            low_res: Map::zeros(1, 1),
            iou_prediction: 0.5,
            mask: mask.to_vec(),
            geometry: FrameGeometry::new(height, 2, 1024),
        }
    }

    #[test]
    fn totals_pool_points_and_pair_images() {
        let srm = SrmScores {
            srm: 1.0,
            all_foreground: 0.5,
            all_background: 0.0,
        };
        let mut e = Evaluation::new();
        // Image 1: policy 2 hits of 2, random 1 of 2, centre 0 of 2.
        let r = vec![
            result(&[1.5, 1.5], [false, true], 1),
            result(&[0.5, 1.5], [true, true], 1),
            result(&[0.5, 0.5], [true, false], 1),
        ];
        let one = e.add("one", &gt(), srm, r).unwrap();
        assert_eq!(one.runs[0].points.step_hits, 2);
        assert_eq!(one.runs[2].metrics.iou, 0.0);
        assert_eq!(one.gt_fraction, 0.5);
        // A result for another image size is refused and leaves the totals as they were.
        let bad = vec![
            result(&[1.5], [false, true], 1),
            result(&[1.5], [false, true], 1),
            result(&[1.5], [false, true], 2),
        ];
        assert!(e.add("bad", &gt(), srm, bad).is_err());
        assert_eq!(e.images(), 1);
        // Image 2: policy 1 hit of 1, random 0 of 1, centre 0 of 1.
        let r = vec![
            result(&[1.5], [false, true], 1),
            result(&[0.5], [true, false], 1),
            result(&[0.5], [true, false], 1),
        ];
        e.add("two", &gt(), SrmScores { srm: 0.0, ..srm }, r)
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
        // Per image, policy minus random: 0.5 and 1.0.
        let d = s.policy_vs_random.unwrap();
        assert_eq!((d.mean, d.n), (0.75, 2));
        assert_eq!(
            (s.srm.srm, s.srm.all_foreground, s.srm.best_constant()),
            (0.5, 0.5, 0.5)
        );
        assert_eq!(s.srm.vs_best_constant.unwrap().mean, 0.0);
        assert!(Evaluation::new().summary().is_err());
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
