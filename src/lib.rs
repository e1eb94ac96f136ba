//! alignsam: AlignSAM on the edge. A learned prompting agent drives a frozen Segment Anything
//! Model; this crate runs it through tract on CPUs and ARM boards.
//!
//! Data flow, one module per stage: [`engine`] (running ONNX models) -> [`bundle`] (which models,
//! checked) -> [`sam`] (preprocess, encode, decode, postprocess).

pub mod bundle;
pub mod engine;
pub mod sam;
