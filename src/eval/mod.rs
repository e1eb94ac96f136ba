//! Evaluation: how good a predicted mask is against the ground truth.
//!
//! [`metrics`] holds the standard salient-object, polyp and shadow segmentation measures (IoU,
//! MAE, F-measure, E-measure, BER) and an accumulator that streams images into dataset-level
//! numbers.

pub mod metrics;

pub use metrics::{ImageMetrics, MetricAccumulator, MetricSummary};
