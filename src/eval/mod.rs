//! Evaluation: how good a predicted mask is against the ground truth, and how the prompting
//! agent compares with baselines on a dataset split.
//!
//! [`metrics`] holds the standard salient-object, polyp and shadow segmentation measures (IoU,
//! MAE, F-measure, E-measure, BER) and an accumulator that streams images into dataset-level
//! numbers. [`agent_stats`] holds the agent-level figures (hit rate of the chosen points, SRM
//! labels and map), [`method`] the policy and its baselines, [`oracle`] the ground-truth
//! clicker (the interactive upper bound), [`evaluate`] the runs and totals, [`report`] the table
//! and CSV, [`montage`] the picture of a few images, and [`driver`] the whole evaluation of a
//! dataset split as one call ([`driver::run`]).

/// The files `eval` writes into its output folder.
pub const OUTPUT_NAMES: &[&str] = &[
    "report.md",
    "per_image.csv",
    "oracle_curve.csv",
    "montage.png",
];

pub mod agent_stats;
pub mod driver;
pub mod evaluate;
pub mod method;
pub mod metrics;
pub mod montage;
pub mod oracle;
pub mod report;

pub use agent_stats::{PointStats, SrmScores, srm_scores};
pub use driver::{EvalJob, EvalOutcome, EvalProgress, default_methods};
pub use evaluate::{
    BUDGETS, Comparison, Diversity, EvalSummary, Evaluation, ImageEval, MethodResults, MethodRun,
    MethodRunner, MethodSummary, OracleSummary, PairedDiff, SrmSummary, mask_at_budget,
};
pub use method::{Method, image_seed};
pub use metrics::{ImageMetrics, MetricAccumulator, MetricSummary};
pub use oracle::{NOC_CAP, OracleRun, next_click, run_oracle};
