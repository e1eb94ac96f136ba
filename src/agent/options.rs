//! The loop's bounds and switches, shared by every phase and by the trainers' episodes.

use std::time::Duration;

#[cfg(doc)]
use super::record::LoopResult;
use crate::bundle::manifest::StepLabels;

/// Bounds and switches of the loop.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// Steps after the start points (the paper: 15).
    pub max_steps: usize,
    /// Time budget per frame, preprocessing and encoder included.
    pub budget: Option<Duration>,
    /// Stop when the IoU between successive masks reaches this (None: never).
    pub stop_iou: Option<f32>,
    /// Feed the previous low-resolution logits back as the decoder's `mask_input`.
    pub feed_mask: bool,
    /// The guard against repeats: never the same patch with the same label twice (a chooser that
    /// leaves the label to the SRM gets no patch twice). The paper does not mask actions; a
    /// repeated click adds a duplicate point, which usually leaves the mask as it was.
    pub forbid_repeats: bool,
    /// The keep-best guard: return the mask with the highest estimated IoU among those the loop
    /// made (off: the last one, as the paper).
    pub keep_best: bool,
    /// Which SRM map labels a step's point when the chooser leaves the label to the SRM.
    pub step_labels: StepLabels,
    /// Label every step's point by the SRM, even when the chooser gives a label (the
    /// evaluation's diagnosis of *where* against *which label*).
    pub srm_labels: bool,
    /// Keep every mask the loop made, with its estimated IoU, in [`LoopResult::trace`] (the
    /// evaluation's curve over budgets).
    pub trace: bool,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            max_steps: 15,
            budget: None,
            stop_iou: Some(0.99),
            feed_mask: true,
            forbid_repeats: true,
            keep_best: true,
            step_labels: StepLabels::State,
            srm_labels: false,
            trace: false,
        }
    }
}

impl LoopOptions {
    /// Exactly `steps` steps on every image unless the agent stops: no time budget, no early stop
    /// on convergence (benchmarks and held-out scoring, where every image must do the same work).
    pub fn fixed_steps(steps: usize) -> LoopOptions {
        LoopOptions {
            max_steps: steps,
            stop_iou: None,
            ..LoopOptions::default()
        }
    }

    /// The paper's loop: repeats allowed, the last mask returned.
    pub fn paper(self) -> LoopOptions {
        LoopOptions {
            forbid_repeats: false,
            keep_best: false,
            ..self
        }
    }
}
