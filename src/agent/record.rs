//! What one run of the prompting loop produces: every point with where it came from, the stop
//! reason, the time of every stage, and the final mask.

use serde::Serialize;

use crate::sam::{FrameGeometry, Map, PointLabel, PromptPoint};

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It ran the maximum number of steps.
    StepLimit,
    /// The next step would have overrun the frame's time budget.
    TimeBudget,
    /// The mask stopped changing (IoU with the previous mask at or above the tolerance).
    Converged,
    /// Every action was used and repeats are forbidden.
    NoActionLeft,
    /// The agent's stop action: it judged that no click would help.
    AgentStop,
}

/// Where a point came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointOrigin {
    /// The SRM's most (positive) or least (negative) confident cell.
    SrmStart,
    /// Carried over from the previous frame (temporal reuse), relabelled by the SRM.
    PreviousFrame,
    /// Chosen by the policy (or a baseline chooser) at a step.
    Step,
    /// Clicked by the evaluation's oracle from the ground truth (not the agent's).
    Oracle,
    /// A random point on (or off) the object from the ground truth: how the paper's training
    /// episodes start.
    TruthStart,
}

/// One prompt point and what happened when it was added.
#[derive(Clone, Debug, Serialize)]
pub struct PointRecord {
    /// 0 for start points, then 1..=T.
    pub step: usize,
    /// Column in image pixels.
    pub x: f64,
    /// Row in image pixels.
    pub y: f64,
    /// The label the SRM gave it.
    pub label: PointLabel,
    /// The patch of the grid it lies in.
    pub patch: usize,
    /// Where it came from.
    pub origin: PointOrigin,
    /// The SRM's foreground probability at the point.
    pub srm_prob: f32,
    /// The decoder's IoU prediction for the mask after this point was added.
    pub iou_prediction: f32,
}

impl PointRecord {
    /// The point as the decoder sees it.
    pub fn prompt(&self) -> PromptPoint {
        PromptPoint {
            x: self.x,
            y: self.y,
            label: self.label,
        }
    }
}

/// The prompt points of a list of records, in order.
pub fn prompt_of(points: &[PointRecord]) -> Vec<PromptPoint> {
    points.iter().map(PointRecord::prompt).collect()
}

/// Milliseconds of each part of one step.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepTimes {
    /// Building `s_t = E * M_{t-1}`.
    pub state_ms: f64,
    /// The chooser (policy network, or a baseline).
    pub policy_ms: f64,
    /// The SRM.
    pub srm_ms: f64,
    /// The decoder with all points so far.
    pub decoder_ms: f64,
    /// The whole step.
    pub total_ms: f64,
}

/// Milliseconds of every stage of one frame.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageTimes {
    /// Resize, normalise, pad.
    pub preprocess_ms: f64,
    /// The image encoder.
    pub encoder_ms: f64,
    /// SRM on `s_0` and the first decode with the two start points.
    pub start_ms: f64,
    /// The SRM part of `start_ms`.
    pub start_srm_ms: f64,
    /// The decoder part of `start_ms`.
    pub start_decoder_ms: f64,
    /// Each step.
    pub steps: Vec<StepTimes>,
    /// Upscaling the final logits to the image size and thresholding.
    pub postprocess_ms: f64,
    /// The whole frame.
    pub total_ms: f64,
}

/// One mask the loop made, kept when [`crate::agent::LoopOptions::trace`] is on.
#[derive(Clone, Debug)]
pub struct TraceStep {
    /// Steps taken when the mask was made (0: the start points' mask).
    pub step: usize,
    /// Its estimated IoU (the chooser's, or the decoder's prediction).
    pub quality: f32,
    /// Its low-resolution logits.
    pub low_res: Map,
}

/// What the loop produced for one image.
#[derive(Clone, Debug)]
pub struct LoopResult {
    /// All points clicked, start points first (also those after the kept step).
    pub points: Vec<PointRecord>,
    /// Steps run after the start points.
    pub steps: usize,
    /// The step whose mask is the result (the keep-best guard's choice; `steps` without it).
    pub kept_step: usize,
    /// Why it stopped.
    pub stop: StopReason,
    /// Stage timings.
    pub times: StageTimes,
    /// The kept mask's low-resolution logits.
    pub low_res: Map,
    /// The decoder's IoU prediction for the kept mask.
    pub iou_prediction: f32,
    /// The kept mask at the image size, row-major (true = object).
    pub mask: Vec<bool>,
    /// Where the image sat in the encoder frame.
    pub geometry: FrameGeometry,
    /// Every mask the loop made, when traced (empty otherwise).
    pub trace: Vec<TraceStep>,
}

impl LoopResult {
    /// The prompt points as the decoder saw them for the kept mask.
    pub fn prompt(&self) -> Vec<PromptPoint> {
        prompt_of(self.kept_points())
    }

    /// The points that made the kept mask: the start points and those of steps up to
    /// [`LoopResult::kept_step`].
    pub fn kept_points(&self) -> &[PointRecord] {
        let n = self
            .points
            .iter()
            .take_while(|p| p.step <= self.kept_step)
            .count();
        &self.points[..n]
    }

    /// The share of the image's pixels in the mask.
    pub fn foreground_share(&self) -> f64 {
        if self.mask.is_empty() {
            return 0.0;
        }
        self.mask.iter().filter(|&&m| m).count() as f64 / self.mask.len() as f64
    }
}

/// What carries over from the previous frame of a video (temporal reuse, beyond the paper).
#[derive(Clone, Debug)]
pub struct WarmStart {
    /// The previous frame's final points (image coordinates; same frame size required).
    pub points: Vec<PromptPoint>,
    /// The previous frame's final low-resolution logits.
    pub low_res: Map,
}

impl WarmStart {
    /// The warm start that a finished frame hands to the next one: the last `max_points` of the
    /// points that made its kept mask (the most recent are the most refined; without a cap,
    /// points would pile up frame after frame) and that mask's low-resolution logits.
    pub fn from_result(result: &LoopResult, max_points: usize) -> Self {
        let prompt = result.prompt();
        let keep = prompt.len().min(max_points.max(1));
        WarmStart {
            points: prompt[prompt.len() - keep..].to_vec(),
            low_res: result.low_res.clone(),
        }
    }
}
