//! The AlignSAM agent: a policy that chooses where to click and an SRM that says whether the
//! click is on the object, driving a frozen SAM through a bounded prompting loop.
//!
//! [`grid`] is the action space, [`state`] the agent's view `E * M`, [`policy`] and [`srm`] the
//! two networks (ONNX, through the same engine as SAM), [`prompt_loop`] the loop itself.

pub mod grid;
pub mod ground_truth;
pub mod policy;
pub mod prompt_loop;
pub mod srm;
pub mod state;

pub use grid::{FrameMap, PatchGrid};
pub use policy::Policy;
pub use prompt_loop::{
    Agent, CentreChooser, LoopOptions, LoopResult, PatchChooser, PointOrigin, PointRecord,
    PolicyChooser, RandomChooser, StageTimes, StepTimes, StopReason, WarmStart,
};
pub use srm::Srm;
