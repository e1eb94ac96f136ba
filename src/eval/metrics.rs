//! Segmentation-quality metrics of salient-object, polyp and shadow segmentation, with the
//! conventions of the standard toolboxes so that our numbers compare with published ones.
//!
//! A prediction is a row-major map of `f32` in [0, 1] (a probability map, or a binary mask as
//! 0.0 / 1.0); the ground truth (GT) is a binary mask of the same length. Every function checks
//! both and returns an error rather than a number for bad input (different lengths, no pixels,
//! a value outside [0, 1] or NaN, e.g. logits passed for probabilities).
//!
//! The threshold-swept measures (F-measure, E-measure) follow PySODMetrics (Pang et al.,
//! <https://github.com/lartpang/PySODMetrics>, classes `Fmeasure` and `Emeasure`, version 1.6.2),
//! itself a port of the MATLAB saliency-evaluation toolboxes (`sal_eval_toolbox`, Fan et al.'s
//! E-measure code):
//!
//! * the prediction is quantised to `b = floor(255 p)` (computed in `f32`, as numpy does for a
//!   `float32` map), and for each threshold `t = 0..=255` the binary prediction is `b >= t`.
//!   `t = 0` marks every pixel as foreground;
//! * the counts for all 256 thresholds come from one histogram of `b` over GT-foreground pixels
//!   and one over GT-background pixels, accumulated from the top: O(pixels + 256) per image;
//! * dataset level: the per-image curves (256 values) are averaged over images, then `max_*` is
//!   the maximum and `mean_*` the mean of that averaged curve. `adaptive_*` is the mean over
//!   images of the per-image value at the adaptive threshold `min(2 * mean(p), 1)` (Achanta et
//!   al., CVPR 2009), applied to the unquantised prediction as `p >= threshold`.
//!
//! For a binary prediction (0.0 / 1.0) the curve has two values: the mask's own at
//! `t = 1..=255` and, at `t = 0`, that of the all-foreground map. So maxF of a binary mask is
//! `max(F(mask), F(everything))`, and the latter wins when the mask is poor and the object large;
//! meanF is `(255 F(mask) + F(everything)) / 256`. adpF (and adpE) is the mask's own, except for
//! an empty mask, whose adaptive threshold 0 selects everything. This is the toolbox convention,
//! kept so that numbers compare with published ones; for binary outputs mIoU and adpF are the
//! clearer numbers.
//!
//! IoU and BER binarise the prediction as `p > 0.5` ([`BINARY_THRESHOLD`]): SAM's own mask
//! threshold (logit > 0 is sigmoid > 0.5) and PySODMetrics's binary mode (`FmeasureV2`,
//! `with_binary`, `pred > 0.5`). A binary mask stays as it is; shadow-detection code uses
//! `>= 0.5` or `>= 128/255`, which differ only for values at the boundary. MAE uses the
//! prediction as it is.

use std::fmt;
use std::ops::AddAssign;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::agent::ground_truth::Overlap;

/// The number of thresholds of the swept measures: `t = 0..=255`.
pub const THRESHOLDS: usize = 256;

/// The F-measure's beta squared: precision weighs more than recall (Achanta et al., CVPR 2009).
pub const BETA2: f64 = 0.3;

/// Where IoU and BER binarise a prediction: foreground where `p > 0.5`.
pub const BINARY_THRESHOLD: f32 = 0.5;

/// numpy's `np.spacing(1)` (MATLAB's `eps`), which the E-measure adds to its denominators.
const EPS: f64 = f64::EPSILON;

/// A value per threshold: index `t` is the measure for the binary prediction `floor(255 p) >= t`.
pub type Curve = [f64; THRESHOLDS];

/// The 0..=255 level of a prediction value, `floor(255 p)`, as PySODMetrics computes it
/// (`(pred * 255).astype(np.uint8)`). `p` is in [0, 1]; anything else saturates.
pub fn level(p: f32) -> u8 {
    (p * 255.0) as u8
}

/// Checks a prediction against its GT: same non-zero length, every value in [0, 1].
fn check(pred: &[f32], gt: &[bool]) -> Result<()> {
    check_lengths(pred.len(), gt.len())?;
    if let Some((i, v)) = pred
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=1.0).contains(*v))
    {
        bail!(
            "prediction value {v} at index {i} is outside [0, 1] (metrics take probabilities, not logits)"
        );
    }
    Ok(())
}

fn check_lengths(pred: usize, gt: usize) -> Result<()> {
    if pred != gt {
        bail!("prediction has {pred} values but the ground truth has {gt}");
    }
    if pred == 0 {
        bail!("prediction and ground truth have no pixels");
    }
    Ok(())
}

/// Pixel counts of a binary prediction against the GT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Predicted foreground, GT foreground.
    pub true_pos: u64,
    /// Predicted foreground, GT background.
    pub false_pos: u64,
    /// Predicted background, GT foreground.
    pub false_neg: u64,
    /// Predicted background, GT background.
    pub true_neg: u64,
}

impl Confusion {
    /// Counts a binary prediction.
    pub fn from_binary(pred: &[bool], gt: &[bool]) -> Result<Self> {
        check_lengths(pred.len(), gt.len())?;
        Ok(Self::count(pred.iter().copied(), gt))
    }

    /// Counts the prediction binarised as `p >= threshold` (the swept measures' rule).
    pub fn at_threshold(pred: &[f32], gt: &[bool], threshold: f32) -> Result<Self> {
        check(pred, gt)?;
        Ok(Self::count(pred.iter().map(|&p| p >= threshold), gt))
    }

    /// Counts the prediction binarised as `p > 0.5` (IoU's and BER's rule).
    pub fn above_half(pred: &[f32], gt: &[bool]) -> Result<Self> {
        check(pred, gt)?;
        Ok(Self::count(pred.iter().map(|&p| p > BINARY_THRESHOLD), gt))
    }

    fn count(pred: impl Iterator<Item = bool>, gt: &[bool]) -> Self {
        let mut c = Confusion::default();
        for (p, &g) in pred.zip(gt) {
            match (p, g) {
                (true, true) => c.true_pos += 1,
                (true, false) => c.false_pos += 1,
                (false, true) => c.false_neg += 1,
                (false, false) => c.true_neg += 1,
            }
        }
        c
    }

    /// GT foreground pixels (`Np`).
    pub fn positives(&self) -> u64 {
        self.true_pos + self.false_neg
    }

    /// GT background pixels (`Nn`).
    pub fn negatives(&self) -> u64 {
        self.true_neg + self.false_pos
    }

    /// All pixels.
    pub fn pixels(&self) -> u64 {
        self.positives() + self.negatives()
    }

    /// Intersection over union (Jaccard index; Everingham et al., "The PASCAL Visual Object
    /// Classes (VOC) Challenge", IJCV 2010): `TP / (TP + FP + FN)`.
    ///
    /// Convention: an empty union (no foreground in prediction nor GT) is a perfect answer,
    /// 1.0, so that an image without an object that the model leaves empty is not penalised.
    /// (PySODMetrics's `IOUHandler` gives 0 there; the two agree everywhere else.)
    pub fn iou(&self) -> f64 {
        Overlap {
            intersection: self.true_pos,
            union: self.true_pos + self.false_pos + self.false_neg,
        }
        .iou()
    }

    /// Balanced error rate in percent, as in shadow detection (Vicente et al., "Large-scale
    /// training of shadow detectors with noisily-annotated shadow examples", ECCV 2016; Hu et al.,
    /// "Direction-aware spatial context features for shadow detection", CVPR 2018):
    /// `BER = (1 - (TP/Np + TN/Nn) / 2) * 100`, lower is better.
    ///
    /// Convention when a class is absent: the mean is taken over the classes present, so with no
    /// GT foreground (`Np = 0`) `BER = (1 - TN/Nn) * 100`, with no GT background
    /// `BER = (1 - TP/Np) * 100`; with no pixels at all it is 0. (PySODMetrics's `BERHandler`
    /// takes an absent class's accuracy as 0 instead, so a perfect answer on an image without an
    /// object scores 50%; pooled over a dataset that has both classes, the two agree.)
    pub fn ber(&self) -> f64 {
        let (np, nn) = (self.positives(), self.negatives());
        let accuracy = match (np, nn) {
            (0, 0) => return 0.0,
            (0, _) => self.true_neg as f64 / nn as f64,
            (_, 0) => self.true_pos as f64 / np as f64,
            _ => 0.5 * (self.true_pos as f64 / np as f64 + self.true_neg as f64 / nn as f64),
        };
        (1.0 - accuracy) * 100.0
    }

    /// The F-measure of this binary prediction, with PySODMetrics's convention for the adaptive
    /// F-measure: 0 when there is no true positive, otherwise [`f_beta`] of
    /// `precision = TP / (TP + FP)` and `recall = TP / (TP + FN)`.
    pub fn f_measure(&self) -> f64 {
        if self.true_pos == 0 {
            return 0.0;
        }
        let tp = self.true_pos as f64;
        f_beta(
            tp / (self.true_pos + self.false_pos) as f64,
            tp / self.positives() as f64,
        )
    }

    /// The enhanced-alignment measure of this binary prediction; see [`e_measure_at`].
    pub fn e_measure(&self) -> f64 {
        e_measure_from_counts(
            self.true_pos,
            self.false_pos,
            self.positives(),
            self.pixels(),
        )
    }
}

impl AddAssign for Confusion {
    fn add_assign(&mut self, o: Confusion) {
        self.true_pos += o.true_pos;
        self.false_pos += o.false_pos;
        self.false_neg += o.false_neg;
        self.true_neg += o.true_neg;
    }
}

/// IoU of a binary prediction against the GT; see [`Confusion::iou`] (empty union: 1.0).
pub fn iou(pred: &[bool], gt: &[bool]) -> Result<f64> {
    Ok(Confusion::from_binary(pred, gt)?.iou())
}

/// Balanced error rate (percent) of the prediction binarised as `p > 0.5`; see
/// [`Confusion::ber`] for the definition and the convention for images without foreground or
/// background. For a dataset, shadow-detection papers pool the counts over all images before
/// taking the rates, which is what [`MetricAccumulator`] does.
pub fn ber(pred: &[f32], gt: &[bool]) -> Result<f64> {
    Ok(Confusion::above_half(pred, gt)?.ber())
}

/// Mean absolute error (Perazzi et al., "Saliency filters: contrast based filtering for salient
/// region detection", CVPR 2012): `mean(|p - g|)` over pixels, GT as 0/1, computed in `f64`.
pub fn mae(pred: &[f32], gt: &[bool]) -> Result<f64> {
    check(pred, gt)?;
    let sum: f64 = pred
        .iter()
        .zip(gt)
        .map(|(&p, &g)| (p as f64 - if g { 1.0 } else { 0.0 }).abs())
        .sum();
    Ok(sum / pred.len() as f64)
}

/// The weighted harmonic mean of precision and recall (Achanta et al., "Frequency-tuned salient
/// region detection", CVPR 2009), with `beta^2 =` [`BETA2`] `= 0.3`:
/// `F = (1 + beta^2) P R / (beta^2 P + R)`, and 0 when `P R = 0` (the zero-precision-and-recall
/// case included), as PySODMetrics does.
pub fn f_beta(precision: f64, recall: f64) -> f64 {
    let numerator = (1.0 + BETA2) * precision * recall;
    if numerator == 0.0 {
        0.0
    } else {
        numerator / (BETA2 * precision + recall)
    }
}

/// Precision, recall and F-measure of one image for every threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct PrCurve {
    /// `TP / (TP + FP)`, 0 where nothing is predicted.
    pub precision: Curve,
    /// `TP / Np`, 0 everywhere when the GT has no foreground.
    pub recall: Curve,
    /// [`f_beta`] of the two.
    pub f: Curve,
}

/// Histograms of the prediction's levels over GT-foreground and GT-background pixels, from which
/// every threshold's counts follow (the toolbox trick: no pass over the pixels per threshold).
struct Histograms {
    fg: [u64; THRESHOLDS],
    bg: [u64; THRESHOLDS],
}

impl Histograms {
    fn new(pred: &[f32], gt: &[bool]) -> Self {
        let mut h = Histograms {
            fg: [0; THRESHOLDS],
            bg: [0; THRESHOLDS],
        };
        for (&p, &g) in pred.iter().zip(gt) {
            let bin = level(p) as usize;
            if g {
                h.fg[bin] += 1;
            } else {
                h.bg[bin] += 1;
            }
        }
        h
    }

    /// `(TP, FP)` for each threshold `t`: the pixels with level `>= t` on GT foreground and on GT
    /// background.
    fn counts(&self) -> [(u64, u64); THRESHOLDS] {
        let mut out = [(0, 0); THRESHOLDS];
        let (mut tp, mut fp) = (0, 0);
        for t in (0..THRESHOLDS).rev() {
            tp += self.fg[t];
            fp += self.bg[t];
            out[t] = (tp, fp);
        }
        out
    }

    fn positives(&self) -> u64 {
        self.fg.iter().sum()
    }

    fn pixels(&self) -> u64 {
        self.positives() + self.bg.iter().sum::<u64>()
    }

    fn pr_curve(&self) -> PrCurve {
        let positives = self.positives().max(1) as f64;
        let mut c = PrCurve {
            precision: [0.0; THRESHOLDS],
            recall: [0.0; THRESHOLDS],
            f: [0.0; THRESHOLDS],
        };
        for (t, (tp, fp)) in self.counts().into_iter().enumerate() {
            // A zero denominator has a zero numerator: 0/1, as PySODMetrics does.
            c.precision[t] = tp as f64 / (tp + fp).max(1) as f64;
            c.recall[t] = tp as f64 / positives;
            c.f[t] = f_beta(c.precision[t], c.recall[t]);
        }
        c
    }

    fn e_curve(&self) -> Curve {
        let (positives, pixels) = (self.positives(), self.pixels());
        let mut c = [0.0; THRESHOLDS];
        for (t, (tp, fp)) in self.counts().into_iter().enumerate() {
            c[t] = e_measure_from_counts(tp, fp, positives, pixels);
        }
        c
    }
}

/// Precision, recall and F-measure (see [`f_beta`]) of one image for the 256 thresholds
/// `floor(255 p) >= t`, as PySODMetrics's `Fmeasure.cal_pr`. Conventions: precision is 0 where
/// no pixel is predicted; recall (hence F) is 0 at every threshold when the GT has no foreground.
/// The per-image max-F is the maximum of `f`; see [`MetricAccumulator`] for the dataset level.
pub fn pr_curve(pred: &[f32], gt: &[bool]) -> Result<PrCurve> {
    check(pred, gt)?;
    Ok(Histograms::new(pred, gt).pr_curve())
}

/// The adaptive threshold of Achanta et al. (CVPR 2009): `min(2 * mean(p), 1)`, the mean
/// computed in `f64` (1.0 for an empty map).
pub fn adaptive_threshold(pred: &[f32]) -> f64 {
    if pred.is_empty() {
        return 1.0;
    }
    let mean = pred.iter().map(|&p| p as f64).sum::<f64>() / pred.len() as f64;
    (2.0 * mean).min(1.0)
}

fn at_adaptive_threshold(pred: &[f32], gt: &[bool]) -> Confusion {
    let threshold = adaptive_threshold(pred);
    Confusion::count(pred.iter().map(|&p| p as f64 >= threshold), gt)
}

/// The adaptive F-measure of one image (PySODMetrics `Fmeasure.cal_adaptive_fm`): the
/// prediction binarised as `p >= min(2 * mean(p), 1)`, then [`Confusion::f_measure`] (0 when
/// there is no true positive).
pub fn adaptive_f_measure(pred: &[f32], gt: &[bool]) -> Result<f64> {
    check(pred, gt)?;
    Ok(at_adaptive_threshold(pred, gt).f_measure())
}

/// The enhanced-alignment measure from the counts of a binary prediction: `tp` and `fp`
/// predicted-foreground pixels on GT foreground and background, `positives` GT-foreground
/// pixels, `pixels` in all. See [`e_measure_at`]. Private: callers pass consistent counts
/// (`tp <= positives`, `tp + fp <= pixels`, ...), which raw numbers from outside need not be.
fn e_measure_from_counts(tp: u64, fp: u64, positives: u64, pixels: u64) -> f64 {
    let pred_fg = tp + fp;
    let pred_bg = pixels - pred_fg;
    let sum = if positives == 0 {
        pred_bg as f64
    } else if positives == pixels {
        pred_fg as f64
    } else {
        let fn_ = positives - tp;
        let tn = pred_bg - fn_;
        let n = pixels as f64;
        let (mp, mg) = (pred_fg as f64 / n, positives as f64 / n);
        // Each of the four regions has one (pred, GT) pair of mean-centred values.
        [
            (tp, 1.0 - mp, 1.0 - mg),
            (fp, 1.0 - mp, -mg),
            (fn_, -mp, 1.0 - mg),
            (tn, -mp, -mg),
        ]
        .iter()
        .map(|&(count, a, b)| {
            let align = 2.0 * a * b / (a * a + b * b + EPS);
            count as f64 * (align + 1.0).powi(2) / 4.0
        })
        .sum()
    };
    // MATLAB's `w*h - 1 + eps`, kept for comparable numbers; a one-pixel image would divide by
    // eps, so it divides by 1 instead.
    let denominator = if pixels > 1 {
        pixels as f64 - 1.0 + EPS
    } else {
        1.0
    };
    sum / denominator
}

/// The enhanced-alignment measure E (Fan et al., "Enhanced-alignment Measure for Binary
/// Foreground Map Evaluation", IJCAI 2018) of the prediction binarised as `p >= threshold`, as
/// PySODMetrics's `Emeasure.cal_em_with_threshold`.
///
/// With `FM` the binary prediction and `GT` as 0/1, `phi_FM = FM - mean(FM)` and
/// `phi_GT = GT - mean(GT)` are the mean-centred maps, the alignment matrix is
/// `xi = 2 phi_GT phi_FM / (phi_GT^2 + phi_FM^2 + eps)` and the enhanced alignment
/// `(1 + xi)^2 / 4`; `E = sum(enhanced) / (w h - 1 + eps)`. Special cases: a GT with no
/// foreground gives `enhanced = 1 - FM`, a GT all foreground `enhanced = FM`. The pixel values
/// only take four (FM, GT) combinations, so the sum is taken over four region counts.
///
/// Note that the `w h - 1` of the reference code puts a perfect prediction at `wh / (wh - 1)`,
/// a little above 1 (1.0000153 for 256x256); we keep it so that numbers compare.
pub fn e_measure_at(pred: &[f32], gt: &[bool], threshold: f32) -> Result<f64> {
    Ok(Confusion::at_threshold(pred, gt, threshold)?.e_measure())
}

/// The E-measure of one image for the 256 thresholds `floor(255 p) >= t` (PySODMetrics
/// `Emeasure.cal_changeable_em`); see [`e_measure_at`] for the definition.
pub fn e_measure_curve(pred: &[f32], gt: &[bool]) -> Result<Curve> {
    check(pred, gt)?;
    Ok(Histograms::new(pred, gt).e_curve())
}

/// The adaptive E-measure of one image (PySODMetrics `Emeasure.cal_adaptive_em`): the
/// prediction binarised as `p >= min(2 * mean(p), 1)`, then [`e_measure_at`].
pub fn adaptive_e_measure(pred: &[f32], gt: &[bool]) -> Result<f64> {
    check(pred, gt)?;
    Ok(at_adaptive_threshold(pred, gt).e_measure())
}

/// The measures of one image, as [`MetricAccumulator::add`] computed them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageMetrics {
    /// IoU at `p > 0.5` (empty union: 1.0).
    pub iou: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// The maximum of this image's F-measure curve.
    pub max_f: f64,
    /// The mean of this image's F-measure curve.
    pub mean_f: f64,
    /// F-measure at the adaptive threshold.
    pub adaptive_f: f64,
    /// Balanced error rate in percent at `p > 0.5`.
    pub ber: f64,
    /// The maximum of this image's E-measure curve.
    pub max_e: f64,
    /// The mean of this image's E-measure curve.
    pub mean_e: f64,
    /// E-measure at the adaptive threshold.
    pub adaptive_e: f64,
}

/// Dataset-level measures; see each field for how images are combined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Mean over images of the per-image IoU at `p > 0.5` (mIoU).
    pub miou: f64,
    /// Maximum over thresholds of the F-measure curve averaged over images (maxF).
    pub max_f: f64,
    /// Mean over thresholds of the F-measure curve averaged over images (meanF).
    pub mean_f: f64,
    /// Mean over images of the adaptive F-measure (adpF).
    pub adaptive_f: f64,
    /// Mean over images of the per-image MAE.
    pub mae: f64,
    /// Balanced error rate in percent from the counts pooled over all images at `p > 0.5`, as
    /// shadow-detection benchmarks compute it (not a mean of per-image BERs).
    pub ber: f64,
    /// Maximum over thresholds of the E-measure curve averaged over images (maxE).
    pub max_e: f64,
    /// Mean over thresholds of the E-measure curve averaged over images (meanE).
    pub mean_e: f64,
    /// Mean over images of the adaptive E-measure (adpE).
    pub adaptive_e: f64,
    /// The number of images.
    pub images: usize,
}

impl fmt::Display for MetricSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} images: mIoU {:.4}  maxF {:.4}  meanF {:.4}  adpF {:.4}  MAE {:.4}  BER {:.2}  maxE {:.4}  meanE {:.4}  adpE {:.4}",
            self.images,
            self.miou,
            self.max_f,
            self.mean_f,
            self.adaptive_f,
            self.mae,
            self.ber,
            self.max_e,
            self.mean_e,
            self.adaptive_e
        )
    }
}

/// Curves averaged over images, for precision-recall and F/E-threshold plots.
#[derive(Clone, Debug, PartialEq)]
pub struct MeanCurves {
    /// Precision, recall and F-measure per threshold, each averaged over images (PySODMetrics
    /// averages precision and recall the same way for its PR curve).
    pub pr: PrCurve,
    /// E-measure per threshold, averaged over images.
    pub e: Curve,
}

/// Streams images into dataset-level measures: add each (prediction, GT) pair, then ask for the
/// [`MetricSummary`]. Memory is constant (four 256-value curves and a few sums) and each image
/// costs two passes over its pixels.
#[derive(Clone, Debug)]
pub struct MetricAccumulator {
    images: usize,
    iou: f64,
    mae: f64,
    adaptive_f: f64,
    adaptive_e: f64,
    precision: Curve,
    recall: Curve,
    f: Curve,
    e: Curve,
    confusion: Confusion,
}

impl Default for MetricAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricAccumulator {
    /// An accumulator with no images.
    pub fn new() -> Self {
        MetricAccumulator {
            images: 0,
            iou: 0.0,
            mae: 0.0,
            adaptive_f: 0.0,
            adaptive_e: 0.0,
            precision: [0.0; THRESHOLDS],
            recall: [0.0; THRESHOLDS],
            f: [0.0; THRESHOLDS],
            e: [0.0; THRESHOLDS],
            confusion: Confusion::default(),
        }
    }

    /// The number of images added.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Adds one image: `pred` in [0, 1] and `gt`, both row-major `width x height`. Returns the
    /// image's own measures (for per-image reports); on error nothing is added.
    pub fn add(
        &mut self,
        pred: &[f32],
        gt: &[bool],
        width: usize,
        height: usize,
    ) -> Result<ImageMetrics> {
        if width.checked_mul(height) != Some(pred.len()) {
            bail!(
                "prediction has {} values for a {width}x{height} image",
                pred.len()
            );
        }
        if gt.len() != pred.len() {
            bail!(
                "ground truth has {} values for a {width}x{height} image",
                gt.len()
            );
        }
        check(pred, gt)?;

        let hist = Histograms::new(pred, gt);
        let pr = hist.pr_curve();
        let e = hist.e_curve();
        let at_half = Confusion::count(pred.iter().map(|&p| p > BINARY_THRESHOLD), gt);
        let adaptive = at_adaptive_threshold(pred, gt);
        let image = ImageMetrics {
            iou: at_half.iou(),
            mae: mae(pred, gt)?,
            max_f: max(&pr.f),
            mean_f: mean(&pr.f),
            adaptive_f: adaptive.f_measure(),
            ber: at_half.ber(),
            max_e: max(&e),
            mean_e: mean(&e),
            adaptive_e: adaptive.e_measure(),
        };

        self.images += 1;
        self.iou += image.iou;
        self.mae += image.mae;
        self.adaptive_f += image.adaptive_f;
        self.adaptive_e += image.adaptive_e;
        add_into(&mut self.precision, &pr.precision);
        add_into(&mut self.recall, &pr.recall);
        add_into(&mut self.f, &pr.f);
        add_into(&mut self.e, &e);
        self.confusion += at_half;
        Ok(image)
    }

    /// Adds a binary prediction (a thresholded SAM mask), as 0.0 / 1.0; see [`Self::add`].
    pub fn add_binary(
        &mut self,
        pred: &[bool],
        gt: &[bool],
        width: usize,
        height: usize,
    ) -> Result<ImageMetrics> {
        let pred: Vec<f32> = pred.iter().map(|&p| if p { 1.0 } else { 0.0 }).collect();
        self.add(&pred, gt, width, height)
    }

    /// The pooled counts at `p > 0.5` over all images so far.
    pub fn confusion(&self) -> Confusion {
        self.confusion
    }

    /// The dataset-level measures; an error if no image was added.
    pub fn summary(&self) -> Result<MetricSummary> {
        let n = self.count()?;
        let (f, e) = (self.f.map(|v| v / n), self.e.map(|v| v / n));
        Ok(MetricSummary {
            miou: self.iou / n,
            max_f: max(&f),
            mean_f: mean(&f),
            adaptive_f: self.adaptive_f / n,
            mae: self.mae / n,
            ber: self.confusion.ber(),
            max_e: max(&e),
            mean_e: mean(&e),
            adaptive_e: self.adaptive_e / n,
            images: self.images,
        })
    }

    /// The curves averaged over images; an error if no image was added.
    pub fn curves(&self) -> Result<MeanCurves> {
        let n = self.count()?;
        Ok(MeanCurves {
            pr: PrCurve {
                precision: self.precision.map(|v| v / n),
                recall: self.recall.map(|v| v / n),
                f: self.f.map(|v| v / n),
            },
            e: self.e.map(|v| v / n),
        })
    }

    fn count(&self) -> Result<f64> {
        if self.images == 0 {
            bail!("no image was evaluated, so there are no metrics");
        }
        Ok(self.images as f64)
    }
}

fn add_into(sum: &mut Curve, curve: &Curve) {
    for (s, v) in sum.iter_mut().zip(curve) {
        *s += v;
    }
}

fn max(c: &Curve) -> f64 {
    c.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn mean(c: &Curve) -> f64 {
    c.iter().sum::<f64>() / THRESHOLDS as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {
            assert_close!($a, $b, 1e-12)
        };
        ($a:expr, $b:expr, $tol:expr) => {{
            let (a, b) = ($a, $b);
            assert!(close(a, b, $tol), "{} = {a}, expected {b}", stringify!($a));
        }};
    }

    /// The 3x3 case worked by hand below.
    ///
    /// ```text
    /// GT        pred                  levels floor(255 p)
    /// 1 1 0     1.00 0.50 0.75        255 127 191
    /// 1 0 0     0.25 0.00 0.00         63   0   0
    /// 0 0 0     0.00 0.00 0.00          0   0   0
    /// ```
    /// Np = 3 (levels 255, 127, 63 on GT foreground), Nn = 6 (levels 191 and five 0s).
    fn case_3x3() -> (Vec<f32>, Vec<bool>) {
        let pred = vec![1.0, 0.5, 0.75, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0];
        let gt = [1, 1, 0, 1, 0, 0, 0, 0, 0].map(|g| g == 1).to_vec();
        (pred, gt)
    }

    #[test]
    fn levels_are_floor_255p() {
        assert_eq!(level(0.0), 0);
        assert_eq!(level(1.0), 255);
        assert_eq!(level(0.5), 127);
        assert_eq!(level(0.75), 191);
        // Maps read from 8-bit PNGs as k / 255 come back to k, so a quantised map keeps its
        // levels.
        for k in 0..=255u8 {
            assert_eq!(level(k as f32 / 255.0), k);
        }
    }

    #[test]
    fn hand_case_iou_mae_ber() {
        let (pred, gt) = case_3x3();
        // At p > 0.5 (the 0.5 on GT foreground stays background): predicted {1.0 fg, 0.75 bg}:
        // TP 1, FP 1, FN 2, TN 5.
        let c = Confusion::above_half(&pred, &gt).unwrap();
        assert_eq!(
            c,
            Confusion {
                true_pos: 1,
                false_pos: 1,
                false_neg: 2,
                true_neg: 5
            }
        );
        // IoU = 1 / (1 + 1 + 2) = 1/4.
        let bin: Vec<bool> = pred.iter().map(|&p| p > 0.5).collect();
        assert_close!(iou(&bin, &gt).unwrap(), 0.25);
        // BER = (1 - (1/3 + 5/6) / 2) * 100 = (1 - 7/12) * 100 = 125/3.
        assert_close!(ber(&pred, &gt).unwrap(), 125.0 / 3.0);
        // At p >= 0.5 (the swept measures' rule) the 0.5 is foreground: TP 2, FP 1, FN 1, TN 5.
        let c = Confusion::at_threshold(&pred, &gt, 0.5).unwrap();
        assert_eq!(
            (c.true_pos, c.false_pos, c.false_neg, c.true_neg),
            (2, 1, 1, 5)
        );
        // MAE = (|1-1| + |0.5-1| + |0.75-0| + |0.25-1| + 0) / 9 = 2 / 9.
        assert_close!(mae(&pred, &gt).unwrap(), 2.0 / 9.0);
    }

    #[test]
    fn hand_case_f_measure() {
        let (pred, gt) = case_3x3();
        let c = pr_curve(&pred, &gt).unwrap();
        // F = 1.3 P R / (0.3 P + R), by ranges of thresholds t (pred level >= t):
        //   t 192..=255 (64 t): {255 fg}         TP 1 FP 0  P 1    R 1/3  F = (1.3/3)/(0.3+1/3) = 13/19
        //   t 128..=191 (64 t): + {191 bg}       TP 1 FP 1  P 1/2  R 1/3  F = (1.3/6)/(0.15+1/3) = 13/29
        //   t  64..=127 (64 t): + {127 fg}       TP 2 FP 1  P 2/3  R 2/3  F = 2/3
        //   t   1..=63  (63 t): + {63 fg}        TP 3 FP 1  P 3/4  R 1    F = 0.975/1.225 = 39/49
        //   t   0       (1 t):  every pixel      TP 3 FP 6  P 1/3  R 1    F = (1.3/3)/1.1 = 13/33
        let expect = |t: usize| match t {
            192..=255 => (1.0, 1.0 / 3.0, 13.0 / 19.0),
            128..=191 => (0.5, 1.0 / 3.0, 13.0 / 29.0),
            64..=127 => (2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0),
            1..=63 => (0.75, 1.0, 39.0 / 49.0),
            _ => (1.0 / 3.0, 1.0, 13.0 / 33.0),
        };
        for t in 0..THRESHOLDS {
            let (p, r, f) = expect(t);
            assert_close!(c.precision[t], p);
            assert_close!(c.recall[t], r);
            assert_close!(c.f[t], f);
        }
        // Adaptive: mean = (1 + 0.5 + 0.75 + 0.25) / 9 = 0.2778, threshold 0.5556:
        // {1.0 fg, 0.75 bg}, TP 1 FP 1: P 1/2, R 1/3, F = 13/29.
        assert_close!(adaptive_threshold(&pred), 5.0 / 9.0);
        assert_close!(adaptive_f_measure(&pred, &gt).unwrap(), 13.0 / 29.0);

        // One image: maxF = 39/49, meanF = the count-weighted mean of the five values.
        let mut acc = MetricAccumulator::new();
        let m = acc.add(&pred, &gt, 3, 3).unwrap();
        let mean_f = (64.0 * 13.0 / 19.0
            + 64.0 * 13.0 / 29.0
            + 64.0 * 2.0 / 3.0
            + 63.0 * 39.0 / 49.0
            + 13.0 / 33.0)
            / 256.0;
        assert_close!(m.max_f, 39.0 / 49.0);
        assert_close!(m.mean_f, mean_f);
        let s = acc.summary().unwrap();
        assert_close!(s.max_f, 39.0 / 49.0);
        assert_close!(s.mean_f, mean_f);
        assert_close!(s.adaptive_f, 13.0 / 29.0);
        assert_close!(s.miou, 0.25);
        assert_close!(s.ber, 125.0 / 3.0);
        assert_close!(s.mae, 2.0 / 9.0);
        assert_eq!(s.images, 1);
    }

    #[test]
    fn f_measure_zero_cases() {
        // No true positive: P R = 0, F = 0 rather than 0/0.
        assert_eq!(f_beta(0.0, 0.0), 0.0);
        assert_eq!(f_beta(1.0, 0.0), 0.0);
        // GT without foreground: recall (so F) 0 at every threshold, adaptive F 0.
        let gt = vec![false; 4];
        let pred = vec![0.0, 0.2, 0.9, 1.0];
        assert!(pr_curve(&pred, &gt).unwrap().f.iter().all(|&f| f == 0.0));
        assert_eq!(adaptive_f_measure(&pred, &gt).unwrap(), 0.0);
        // Nothing predicted above t: precision 0 there (0/1), not NaN.
        let gt = vec![true, false, false, false];
        let c = pr_curve(&[0.5, 0.0, 0.0, 0.0], &gt).unwrap();
        assert_eq!(c.precision[128], 0.0);
        assert_eq!(c.precision[127], 1.0);
    }

    #[test]
    fn e_measure_hand_case() {
        // 2x2, GT = [1 0 / 0 0], prediction = [1 1 / 0 0]: TP 1, FP 1, FN 0, TN 2.
        // mean(FM) = 1/2, mean(GT) = 1/4. Mean-centred (FM, GT) per region and xi = 2ab/(a²+b²):
        //   TP: ( 1/2,  3/4): xi = (3/4)/(13/16) = 12/13, (1+xi)²/4 = 625/676, 1 pixel
        //   FP: ( 1/2, -1/4): xi = (-1/4)/(5/16) = -4/5,  (1+xi)²/4 = 1/100,   1 pixel
        //   TN: (-1/2, -1/4): xi =  4/5,                  (1+xi)²/4 = 81/100,  2 pixels
        // E = (625/676 + 1/100 + 162/100) / (4 - 1).
        let gt = [true, false, false, false];
        let pred = [1.0, 1.0, 0.0, 0.0];
        let expected = (625.0 / 676.0 + 0.01 + 1.62) / 3.0;
        assert_close!(e_measure_at(&pred, &gt, 0.5).unwrap(), expected);
        // The curve: levels 255 on both predicted pixels, so every t >= 1 gives the same binary
        // map; t = 0 predicts everything: TP 1, FP 3, mean(FM) = 1, so phi_FM = 0 on every
        // pixel, xi = 0 and E = 4 * 1/4 / 3 = 1/3.
        let curve = e_measure_curve(&pred, &gt).unwrap();
        assert_close!(curve[0], 1.0 / 3.0);
        for &v in &curve[1..] {
            assert_close!(v, expected);
        }
    }

    #[test]
    fn e_measure_special_cases() {
        // GT all background: enhanced = 1 - FM, so E = (predicted-background pixels) / (n - 1).
        let bg = [false; 4];
        assert_close!(
            e_measure_at(&[1.0, 0.0, 0.0, 0.0], &bg, 0.5).unwrap(),
            3.0 / 3.0
        );
        // A perfect answer is n / (n - 1), as in the reference code.
        assert_close!(e_measure_at(&[0.0; 4], &bg, 0.5).unwrap(), 4.0 / 3.0);
        assert_close!(e_measure_at(&[1.0; 4], &bg, 0.5).unwrap(), 0.0);
        // GT all foreground: enhanced = FM.
        let fg = [true; 4];
        assert_close!(e_measure_at(&[1.0, 1.0, 1.0, 0.0], &fg, 0.5).unwrap(), 1.0);
        assert_close!(e_measure_at(&[0.0; 4], &fg, 0.5).unwrap(), 0.0);
        // One pixel: divided by 1, not by eps.
        assert_close!(e_measure_at(&[1.0], &[true], 0.5).unwrap(), 1.0);
    }

    #[test]
    fn iou_and_ber_conventions() {
        // Empty union: 1.0.
        assert_eq!(iou(&[false; 3], &[false; 3]).unwrap(), 1.0);
        // No GT foreground: BER = (1 - TN/Nn) * 100; 1 of 4 background pixels wrong: 25.
        assert_close!(ber(&[1.0, 0.0, 0.0, 0.0], &[false; 4]).unwrap(), 25.0);
        // No GT background: BER = (1 - TP/Np) * 100; 1 of 4 missed: 25.
        assert_close!(ber(&[1.0, 1.0, 1.0, 0.0], &[true; 4]).unwrap(), 25.0);
        // Dataset BER pools counts: image A (TP 1 of Np 1, TN 1 of Nn 3), image B (TN 4 of 4).
        // Pooled: TP/Np = 1, TN/Nn = 5/7, BER = (1 - (1 + 5/7)/2) * 100 = 100/7.
        let mut acc = MetricAccumulator::new();
        acc.add(&[1.0, 1.0, 1.0, 0.0], &[true, false, false, false], 2, 2)
            .unwrap();
        acc.add(&[0.0; 4], &[false; 4], 2, 2).unwrap();
        assert_close!(acc.summary().unwrap().ber, 100.0 / 7.0);
        // mIoU is the mean of per-image IoUs: (1/3 + 1) / 2.
        assert_close!(acc.summary().unwrap().miou, 2.0 / 3.0);
    }

    #[test]
    fn binary_predictions() {
        // A binary mask through add_binary: every threshold t >= 1 gives the mask itself
        // (255 thresholds), t = 0 gives the all-foreground map, and the adaptive threshold
        // (2 * 2/4 = 1) keeps the mask.
        let gt = [true, true, false, false];
        let pred = [true, false, true, false];
        let mut acc = MetricAccumulator::new();
        let m = acc.add_binary(&pred, &gt, 2, 2).unwrap();
        // The mask: TP 1, FP 1, FN 1: P = R = 1/2, F = 1/2, IoU = 1/3, BER = 50.
        // All foreground: TP 2, FP 2: P = 1/2, R = 1, F = 0.65 / 1.15 = 13/23 > 1/2, so maxF
        // is the trivial map's (the toolbox convention; see the module documentation).
        assert_close!(m.max_f, 13.0 / 23.0);
        assert_close!(m.mean_f, (255.0 * 0.5 + 13.0 / 23.0) / 256.0);
        assert_close!(m.adaptive_f, 0.5);
        assert_close!(m.iou, 1.0 / 3.0);
        assert_close!(m.ber, 50.0);
        assert_close!(m.mae, 0.5);
    }

    /// The LCG of the PySODMetrics snippet below: 256 values of `x >> 8`, with
    /// `x <- 1664525 x + 1013904223 mod 2^32`.
    fn lcg(seed: u32) -> Vec<u32> {
        let mut x = seed;
        (0..256)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                x >> 8
            })
            .collect()
    }

    /// The five 16x16 cases of the snippet below, as (GT, prediction).
    fn pysod_cases() -> Vec<(Vec<bool>, Vec<f32>)> {
        let grid = |f: fn(i32, i32) -> bool| -> Vec<bool> {
            (0..256).map(|i| f(i / 16, i % 16)).collect()
        };
        let disc = grid(|y, x| (y - 6) * (y - 6) + (x - 9) * (x - 9) <= 20);
        let bar = grid(|y, x| (3..7).contains(&y) && (2..14).contains(&x));
        let none = vec![false; 256];
        let full = vec![true; 256];
        // Integer levels, then one f32 division: the same IEEE operation as numpy's float32.
        let map = |gt: &[bool], add: u32, seed: u32, modulo: u32, scale: f32| -> Vec<f32> {
            gt.iter()
                .zip(lcg(seed))
                .map(|(&g, r)| (if g { add } else { 0 } + r % modulo) as f32 / scale)
                .collect()
        };
        let binary: Vec<f32> = disc
            .iter()
            .zip(lcg(3))
            .map(|(&g, r)| if g ^ (r % 7 == 0) { 1.0 } else { 0.0 })
            .collect();
        vec![
            (disc.clone(), map(&disc, 400, 1, 601, 1000.0)),
            (bar.clone(), map(&bar, 100, 2, 156, 255.0)),
            (disc, binary),
            (none.clone(), map(&none, 0, 4, 601, 1000.0)),
            (full.clone(), map(&full, 0, 5, 1001, 1000.0)),
        ]
    }

    /// Reference values from PySODMetrics 1.6.2 (`pip install pysodmetrics==1.6.2` with numpy
    /// 2.3), printed by this snippet: per image [maxF, meanF, adpF, maxE, meanE, adpE, MAE],
    /// then over the five images [maxF, meanF, adpF, maxE, meanE, adpE, mIoU, BER]. The
    /// prediction is float32 with `normalize=False`, so the 0..255 levels are computed in f32 as
    /// ours are; MAE is taken in float64 (numpy's float32 mean is ~1e-7 off).
    ///
    // import numpy as np
    // from py_sod_metrics import Fmeasure, Emeasure, FmeasureV2, IOUHandler, BERHandler  # pysodmetrics 1.6.2
    //
    // def lcg(seed):  # 256 values of x >> 8, x <- 1664525 x + 1013904223 mod 2^32
    //     out, x = [], seed
    //     for _ in range(256):
    //         x = (1664525 * x + 1013904223) % 2**32
    //         out.append(x >> 8)
    //     return np.array(out).reshape(16, 16)
    //
    // y, x = np.mgrid[0:16, 0:16]
    // disc = (y - 6) ** 2 + (x - 9) ** 2 <= 20
    // bar = (y >= 3) & (y < 7) & (x >= 2) & (x < 14)
    // none, full = np.zeros((16, 16), bool), np.ones((16, 16), bool)
    // f32 = np.float32
    // cases = [  # (GT, prediction)
    //     (disc, (disc * 400 + lcg(1) % 601).astype(f32) / f32(1000)),  # probability map
    //     (bar, (bar * 100 + lcg(2) % 156).astype(f32) / f32(255)),     # 8-bit levels k/255
    //     (disc, (disc ^ (lcg(3) % 7 == 0)).astype(f32)),               # binary mask
    //     (none, (lcg(4) % 601).astype(f32) / f32(1000)),               # no object
    //     (full, (lcg(5) % 1001).astype(f32) / f32(1000)),              # all object
    // ]
    // F, E = Fmeasure(), Emeasure()
    // V = FmeasureV2({"iou": IOUHandler(False, False, with_binary=True, sample_based=True),
    //                 "ber": BERHandler(False, False, with_binary=True, sample_based=False)})
    // for gt, pred in cases:
    //     f, e = Fmeasure(), Emeasure()
    //     for m in (f, e, F, E, V):
    //         m.step(pred, gt, normalize=False)
    //     fc, ec = f.get_results()["fm"], e.get_results()["em"]
    //     mae = np.abs(pred.astype(np.float64) - gt).mean()
    //     print([fc["curve"].max(), fc["curve"].mean(), fc["adp"], ec["curve"].max(), ec["curve"].mean(), ec["adp"], mae])
    // fc, ec, v = F.get_results()["fm"], E.get_results()["em"], V.get_results()
    // print([fc["curve"].max(), fc["curve"].mean(), fc["adp"], ec["curve"].max(), ec["curve"].mean(), ec["adp"], v["iou"]["binary"], 100 * v["ber"]["binary"]])
    #[test]
    fn matches_pysodmetrics() {
        let per_image: [[f64; 7]; 5] = [
            [
                0.9082969432314411,
                0.5415819014269683,
                0.5862068965517241,
                0.8935877435845626,
                0.522592707512672,
                0.4922106274821403,
                0.3061640618761885,
            ],
            [
                0.8965517241379312,
                0.5080060836934982,
                0.7558139534883722,
                0.9097318751729757,
                0.5182094424069716,
                0.6921258816110314,
                0.2995098093069828,
            ],
            [
                0.7721518987341772,
                0.7704019999496783,
                0.7721518987341772,
                0.8826200018653039,
                0.8801526596398801,
                0.8826200018653039,
                0.11328125,
            ],
            [
                0.0,
                0.0,
                0.0,
                1.003921568627451,
                0.6996017156862746,
                1.003921568627451,
                0.30239453114700154,
            ],
            [
                1.0,
                0.7114383418560759,
                0.17567567567567569,
                1.003921568627451,
                0.47876838235294117,
                0.047058823529411764,
                0.5231484356445435,
            ],
        ];
        let dataset = [
            0.6549142512498571,
            0.5062856653852441,
            0.4579696848899899,
            0.8115836661220792,
            0.619864981519748,
            0.6235873806230676,
            0.4150117304804805,
            27.60882946900074,
        ];

        let mut acc = MetricAccumulator::new();
        for (i, ((gt, pred), r)) in pysod_cases().iter().zip(per_image).enumerate() {
            let m = acc.add(pred, gt, 16, 16).unwrap();
            let ours = [
                m.max_f,
                m.mean_f,
                m.adaptive_f,
                m.max_e,
                m.mean_e,
                m.adaptive_e,
                m.mae,
            ];
            for (k, (a, b)) in ours.into_iter().zip(r).enumerate() {
                assert!(
                    close(a, b, 1e-12),
                    "image {i}, measure {k}: ours {a}, PySODMetrics {b}"
                );
            }
        }
        let s = acc.summary().unwrap();
        let ours = [
            s.max_f,
            s.mean_f,
            s.adaptive_f,
            s.max_e,
            s.mean_e,
            s.adaptive_e,
            s.miou,
            s.ber,
        ];
        for (k, (a, b)) in ours.into_iter().zip(dataset).enumerate() {
            assert!(
                close(a, b, 1e-12),
                "dataset measure {k}: ours {a}, PySODMetrics {b}"
            );
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let e = |r: Result<f64>| format!("{:#}", r.unwrap_err());
        assert!(e(mae(&[0.5], &[true, false])).contains("1 values but the ground truth has 2"));
        assert!(e(mae(&[], &[])).contains("no pixels"));
        assert!(e(mae(&[0.5, 3.0], &[true, false])).contains("3 at index 1 is outside [0, 1]"));
        assert!(e(mae(&[f32::NAN], &[true])).contains("NaN at index 0"));
        let mut acc = MetricAccumulator::new();
        let err = acc.add(&[0.0; 4], &[true; 4], 3, 2).unwrap_err();
        assert!(
            format!("{err}").contains("4 values for a 3x2 image"),
            "{err}"
        );
        let err = acc.add(&[0.0; 6], &[true; 4], 3, 2).unwrap_err();
        assert!(
            format!("{err}").contains("ground truth has 4 values"),
            "{err}"
        );
        assert_eq!(acc.images(), 0);
        assert!(acc.summary().is_err());
    }
}
