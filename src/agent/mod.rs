//! The AlignSAM agent: a policy that chooses where to click and an SRM that says whether the
//! click is on the object, driving a frozen SAM through a bounded prompting loop.
//!
//! [`grid`] is the action space, [`state`] the paper's view `E * M`, [`policy`], [`srm`] and
//! [`clicker`] the networks (ONNX, through the same engine as SAM), [`chooser`] who picks the
//! click (the policy, the clicker or a baseline) and the guards, [`prompt_loop`] the loop
//! itself, [`record`] what it returns and [`stream`] the loop over the frames of a video,
//! warm-starting each from the previous one.

pub mod chooser;
pub mod clicker;
pub mod episode;
pub mod grid;
pub mod ground_truth;
pub mod options;
pub mod policy;
pub mod prompt_loop;
pub mod record;
pub mod srm;
pub mod state;
pub mod stream;

pub use crate::bundle::manifest::{AgentKind, StepLabels};
pub use chooser::{
    Choice, Click, Decision, FixedPatchChooser, PatchChooser, PolicyChooser, RandomChooser,
    SampledPolicyChooser, SrmChooser, SrmErrorChooser, StepView, UsedClicks,
};
pub use clicker::{Clicker, ClickerChooser};
pub use episode::{Episode, LoopCore, low_res_iou};
pub use grid::{FrameMap, PatchGrid};
pub use policy::Policy;
pub use prompt_loop::{Agent, Encoded, ImageOptions, LoopOptions, StepOutcome};
pub use record::{
    LoopResult, PointOrigin, PointRecord, StageTimes, StepTimes, StopReason, TraceStep, WarmStart,
};
pub use srm::Srm;
pub use stream::StreamSegmenter;
