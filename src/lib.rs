//! alignsam: AlignSAM on the edge. A learned prompting agent drives a frozen Segment Anything
//! Model; this crate runs it through tract on CPUs and ARM boards.
//!
//! Data flow, one module per stage: [`source`] (images) -> [`sam`] (preprocess, encode, decode,
//! postprocess) -> [`sink`] (masks on disk). [`engine`] runs the ONNX models and [`bundle`] says
//! which ones, checked. [`cli`] is the command line over all of it.

pub mod agent;
pub mod bench;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod dataset;
pub mod engine;
pub mod eval;
pub mod pipeline;
pub mod sam;
pub mod sink;
pub mod source;
#[cfg(feature = "train")]
pub mod train;
