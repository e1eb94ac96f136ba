//! alignsam: AlignSAM on the edge. A learned prompting agent drives a frozen Segment Anything
//! Model; this crate runs it through pure-Rust ONNX engines (rten by default, tract) or ONNX
//! Runtime, on CPUs and ARM boards.
//!
//! Data flow, one module per stage: [`source`] (images, cameras, video) -> [`sam`] (preprocess,
//! encode, decode, postprocess) -> [`agent`] (the bounded prompting loop: the learned clicker, or
//! the paper's policy and SRM; the decoder) -> [`sink`] (masks, overlays, JSON, recordings, the
//! live view; every output checked by one guard). [`engine`] runs the ONNX models and [`bundle`]
//! says which ones, checked. [`pipeline`] runs a stream of frames through the loop, [`eval`] and
//! `train` measure and train the agent (each a driver call: [`eval::driver::run`],
//! `train::run`), [`bench`](mod@bench) times the loop, [`cache`] keeps embeddings, [`exit`] holds
//! the exit codes. Beneath them all, [`safe_read`] reads input files within
//! [`source::InputLimits`] (a value each caller passes) and [`safe_write`] writes outputs
//! atomically. `cli` (the `cli` feature, on by default) is the command line over all of it; the
//! library modules know nothing of flags.
//!
//! # Example
//!
//! Load a bundle once, then segment images: encode once, click a bounded number of times.
//!
//! ```
//! use alignsam::agent::{Agent, LoopOptions};
//! use alignsam::bundle::{Bundle, OpenOptions};
//! use alignsam::engine::{BackendKind, EngineOptions};
//!
//! # fn main() -> anyhow::Result<()> {
//! let bundle = Bundle::open("models/tiny".as_ref(), OpenOptions::default())?;
//! let backend = BackendKind::Tract.create(&EngineOptions { threads: 1 })?;
//! let agent = Agent::load(&bundle, backend.as_ref())?;
//!
//! let image = alignsam::source::load_rgb("demo/images/ball.png".as_ref())?;
//! let options = LoopOptions { max_steps: 3, ..LoopOptions::default() };
//! let result = agent.segment(&image, &options)?;
//!
//! assert!(result.steps <= 3);
//! assert_eq!(result.points.len(), 2 + result.steps); // two SRM start points, one per step
//! assert_eq!(result.mask.len(), (image.width() * image.height()) as usize);
//! # Ok(())
//! # }
//! ```
//!
//! For a whole image run in two calls, as candle's segment-anything has it (`forward` then
//! `forward_for_embeddings`): [`agent::Agent::encode`] then [`agent::Agent::run_on_embedding`];
//! the loop's phases are [`agent::Agent::start`], [`agent::Agent::step`] and
//! [`agent::Agent::finish`].

#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod bundle;
pub mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub mod dataset;
pub mod engine;
pub mod eval;
pub mod exit;
pub mod gate;
pub mod pipeline;
pub mod safe_read;
pub mod safe_write;
pub mod sam;
pub mod sink;
pub mod source;
#[cfg(feature = "train")]
pub mod train;
pub mod util;
