//! Inference engines: the only place that knows how an ONNX file becomes something we can run.
//!
//! The rest of the crate talks to models through [`Model`], a small object-safe interface:
//! positional f32 inputs in, f32 outputs out, in the order a [`ModelSpec`] declares. A backend
//! ([`tract`], and ONNX Runtime behind the `ort` feature) implements [`Backend`] and does its
//! expensive work (parsing, typing, optimising) once, in [`Backend::load`].
//!
//! Every check that does not depend on the backend lives here and in [`onnx_io`]: the file
//! exists and is ONNX, its declared inputs and outputs are the ones the spec asks for, and the
//! tensors handed to `run` have the shapes the spec allows. Errors name the file and the problem.

pub mod onnx_build;
pub mod onnx_io;
mod onnx_wire;
pub mod precision;
pub mod tensor;
pub mod tract;

#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "rten")]
pub mod rten;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

pub use onnx_io::{DeclaredIo, IoDecl};
pub use precision::Precision;
pub use tensor::{Tensor, TensorView};

/// One dimension of a declared tensor shape: a fixed size, or a named symbol that may vary from
/// one run to the next (the decoder's point count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A size known when the model is loaded.
    Fixed(usize),
    /// A size that each run chooses, e.g. `N` for the number of prompt points.
    Symbol(String),
}

impl Dim {
    /// Whether a concrete size `n` is allowed by this dimension.
    pub fn admits(&self, n: usize) -> bool {
        match self {
            Dim::Fixed(f) => *f == n,
            Dim::Symbol(_) => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => write!(f, "{s}"),
        }
    }
}

/// Formats a shape as `[1,N,2]`.
pub fn fmt_shape(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// Shorthand for a shape of fixed dimensions.
pub fn fixed(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// An input the caller will feed.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// The graph input's name in the ONNX file.
    pub name: String,
    /// The shape the caller promises; fixed dimensions let the backend specialise the graph.
    pub shape: Vec<Dim>,
    /// An optional input may be absent from the file (e.g. `orig_im_size` in a low-res-only
    /// decoder); the value passed for it is then dropped.
    pub optional: bool,
}

/// An output the caller will read.
#[derive(Clone, Debug)]
pub struct OutputSpec {
    /// The graph output's name in the ONNX file.
    pub name: String,
    /// The expected shape, checked at load time where the file declares it and after each run.
    pub shape: Vec<Dim>,
}

/// What a caller needs from a model: the inputs it feeds and the outputs it reads, in order.
///
/// Outputs of the file that the spec does not list are pruned where the backend can do so (tract
/// then never computes them): this is how a standard SAM decoder runs without its full-resolution
/// upscaling inside the prompting loop.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// What the model is for ("encoder", "decoder", ...), used in messages.
    pub role: String,
    /// Inputs, in the order `run` takes them.
    pub inputs: Vec<InputSpec>,
    /// Outputs, in the order `run` returns them.
    pub outputs: Vec<OutputSpec>,
    /// Inputs whose value is the same for every run and can be folded into the graph at load
    /// time. Needed by tract for the standard decoder's `orig_im_size`, which sets the size of a
    /// Resize: one specialised model per image size.
    pub constants: Vec<(String, Tensor)>,
    /// Compute the float parts in float16 (the `f16` precision). Only tract can: it converts
    /// the graph at load, keeping reductions, normalisations and Softmax in float32. Other
    /// backends refuse such a spec rather than silently run float32.
    pub half: bool,
}

impl ModelSpec {
    /// A spec with the given role and no inputs or outputs yet.
    pub fn new(role: impl Into<String>) -> Self {
        ModelSpec {
            role: role.into(),
            inputs: vec![],
            outputs: vec![],
            constants: vec![],
            half: false,
        }
    }

    /// Adds a required input.
    pub fn input(mut self, name: &str, shape: Vec<Dim>) -> Self {
        self.inputs.push(InputSpec {
            name: name.into(),
            shape,
            optional: false,
        });
        self
    }

    /// Adds an input that the file may lack.
    pub fn optional_input(mut self, name: &str, shape: Vec<Dim>) -> Self {
        self.inputs.push(InputSpec {
            name: name.into(),
            shape,
            optional: true,
        });
        self
    }

    /// Adds an output.
    pub fn output(mut self, name: &str, shape: Vec<Dim>) -> Self {
        self.outputs.push(OutputSpec {
            name: name.into(),
            shape,
        });
        self
    }

    /// The spec for running at `precision`: f16 asks for float16 arithmetic (see
    /// [`ModelSpec::half`]); the int8 precisions are other files, not another way of running.
    pub fn at_precision(mut self, precision: Precision) -> Self {
        self.half = precision == Precision::F16;
        self
    }

    /// Fixes the value of an input for every run.
    pub fn constant(mut self, name: &str, value: Tensor) -> Self {
        self.constants.push((name.into(), value));
        self
    }
}

/// How a backend should load models.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Threads for one model run (intra-op parallelism). 0 means all available cores.
    pub threads: usize,
}

impl EngineOptions {
    /// The thread count to use, resolving 0 to the number of available cores.
    pub fn resolved_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// Where the time of a load went.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadTimings {
    /// Reading and parsing the file.
    pub parse: Duration,
    /// Typing, decluttering and optimising the graph (or creating the session).
    pub optimise: Duration,
}

impl LoadTimings {
    /// Total load time.
    pub fn total(&self) -> Duration {
        self.parse + self.optimise
    }
}

/// A loaded, optimised model, ready to run many times.
pub trait Model: Send + Sync {
    /// What every backend knows of a loaded model: file, spec, declared interface, load time.
    fn info(&self) -> &ModelInfo;
    /// The file it came from.
    fn path(&self) -> &Path {
        &self.info().path
    }
    /// The spec it was loaded for.
    fn spec(&self) -> &ModelSpec {
        &self.info().spec
    }
    /// The inputs and outputs the file declares.
    fn declared(&self) -> &DeclaredIo {
        &self.info().declared
    }
    /// How long loading took.
    fn load_timings(&self) -> LoadTimings {
        self.info().timings
    }
    /// Runs the model on inputs in spec order (one per spec input, optional ones included),
    /// returning the spec's outputs in order. Shapes are checked against the spec first.
    fn run(&self, inputs: &[TensorView<'_>]) -> Result<Vec<Tensor>>;
    /// Runs once and times every node of the optimised graph, where the backend can (tract);
    /// `None` otherwise.
    fn profile(&self, inputs: &[TensorView<'_>]) -> Result<Option<Vec<NodeTime>>> {
        let _ = inputs;
        Ok(None)
    }
    /// Runs once with the engine's own timing report printed to stdout, where the engine has one
    /// but no node-level API (rten); `false` when it has none.
    fn print_engine_timing(&self, inputs: &[TensorView<'_>]) -> Result<bool> {
        let _ = inputs;
        Ok(false)
    }
    /// The matrix-product kernels the engine chose for this model on this CPU (e.g. tract's
    /// `arm64simd_mmm_f16_32x6`, rten's `arm-i8mm`): what an ARM result actually exercised.
    fn kernels(&self) -> Vec<String> {
        vec![]
    }
}

/// What a backend records of a model it loaded, the same for every backend.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The file it came from.
    pub path: PathBuf,
    /// The spec it was loaded for.
    pub spec: ModelSpec,
    /// The inputs and outputs the file declares.
    pub declared: DeclaredIo,
    /// How long loading took.
    pub timings: LoadTimings,
}

/// The time one node of an optimised graph took in a profiled run.
#[derive(Clone, Debug)]
pub struct NodeTime {
    /// The node's name (from the ONNX file, or tract's name for nodes it made).
    pub name: String,
    /// The operator after optimisation (e.g. tract's `OptMatMul`, `Conv`, `Softmax`).
    pub op: String,
    /// Wall time of the node.
    pub time: std::time::Duration,
}

/// A way of running ONNX models.
pub trait Backend: Send + Sync {
    /// Short name for logs and reports ("tract", "ort").
    fn name(&self) -> &'static str;
    /// Loads, checks and optimises a model once.
    fn load(&self, path: &Path, spec: &ModelSpec) -> Result<Box<dyn Model>>;
}

/// Backends this build can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// tract, pure Rust (default).
    Tract,
    /// ONNX Runtime through the `ort` crate (needs the `ort` feature and ORT_DYLIB_PATH).
    Ort,
    /// rten, pure Rust (needs the `rten` feature).
    Rten,
}

impl Default for BackendKind {
    /// rten where the build has it, tract otherwise: rten ran the encoder 1.3-1.5x and the
    /// decoder step 1.2-1.5x faster than tract on both measured models, with the same outputs
    /// (README.md, "Engines and precisions", for the table and its command).
    fn default() -> Self {
        if cfg!(feature = "rten") {
            BackendKind::Rten
        } else {
            BackendKind::Tract
        }
    }
}

impl BackendKind {
    /// Every backend, built in or not (creating one this build lacks is an error that says how
    /// to get it).
    pub const ALL: [BackendKind; 3] = [BackendKind::Tract, BackendKind::Ort, BackendKind::Rten];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
            BackendKind::Rten => "rten",
        }
    }

    /// Creates the backend with the given options.
    pub fn create(self, options: &EngineOptions) -> Result<Box<dyn Backend>> {
        match self {
            BackendKind::Tract => Ok(Box::new(tract::TractBackend::new(options))),
            #[cfg(feature = "ort")]
            BackendKind::Ort => Ok(Box::new(ort::OrtBackend::new(options)?)),
            #[cfg(not(feature = "ort"))]
            BackendKind::Ort => {
                bail!("this build has no ONNX Runtime backend: rebuild with `--features ort`")
            }
            #[cfg(feature = "rten")]
            BackendKind::Rten => Ok(Box::new(rten::RtenBackend::new(options))),
            #[cfg(not(feature = "rten"))]
            BackendKind::Rten => {
                bail!("this build has no rten backend: rebuild with `--features rten`")
            }
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = BackendKind::ALL.iter().map(|b| b.name()).collect();
                format!("unknown backend '{s}' (known: {})", names.join(", "))
            })
    }
}

/// Refuses a float16 spec on a backend without a float16 path.
pub fn refuse_half(backend: &str, path: &Path, spec: &ModelSpec) -> Result<()> {
    if spec.half {
        bail!(
            "{}: precision f16 needs the tract backend ({backend} has no float16 path here); use the tract backend or another precision",
            path.display()
        );
    }
    Ok(())
}

/// An error naming the model file when an output holds NaN or infinity: corrupt weights (or
/// external data) give garbage that would otherwise flow on silently as a mask.
pub fn check_finite(path: &Path, output: &str, data: &[f32]) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        bail!(
            "{}: output '{output}' has {bad} non-finite values (the first, at {i}, is {}): the model's weights are corrupt or it does not suit this input",
            path.display(),
            data[i]
        );
    }
    Ok(())
}

/// Checks the tensors given to `run` against the spec: one per input, each of an admitted shape,
/// with consistent values for symbols shared between inputs (e.g. `N` in coords and labels).
pub fn check_run_inputs(path: &Path, spec: &ModelSpec, inputs: &[TensorView<'_>]) -> Result<()> {
    if inputs.len() != spec.inputs.len() {
        bail!(
            "{}: {} expects {} inputs, got {}",
            path.display(),
            spec.role,
            spec.inputs.len(),
            inputs.len()
        );
    }
    let mut symbols: Vec<(&str, usize)> = vec![];
    for (input, view) in spec.inputs.iter().zip(inputs) {
        let ok = input.shape.len() == view.shape.len()
            && input
                .shape
                .iter()
                .zip(view.shape)
                .all(|(d, &n)| d.admits(n));
        if !ok {
            bail!(
                "{}: input '{}' of the {} needs shape {}, got {:?}",
                path.display(),
                input.name,
                spec.role,
                fmt_shape(&input.shape),
                view.shape
            );
        }
        for (d, &n) in input.shape.iter().zip(view.shape) {
            if let Dim::Symbol(s) = d {
                match symbols.iter().find(|(name, _)| name == s) {
                    Some(&(_, m)) if m != n => bail!(
                        "{}: symbol {s} of the {} is {m} in one input and {n} in '{}'",
                        path.display(),
                        spec.role,
                        input.name
                    ),
                    Some(_) => {}
                    None => symbols.push((s.as_str(), n)),
                }
            }
        }
    }
    Ok(())
}

/// Checks one output tensor against its spec after a run, so that a model whose output shape
/// depends on its inputs in an unexpected way fails loudly instead of feeding garbage onward.
pub fn check_run_output(path: &Path, role: &str, spec: &OutputSpec, shape: &[usize]) -> Result<()> {
    let ok =
        spec.shape.len() == shape.len() && spec.shape.iter().zip(shape).all(|(d, &n)| d.admits(n));
    if !ok {
        bail!(
            "{}: output '{}' of the {} should have shape {}, got {:?}",
            path.display(),
            spec.name,
            role,
            fmt_shape(&spec.shape),
            shape
        );
    }
    Ok(())
}

/// The path of a model relative to nothing: used where a model was built in memory.
pub fn display_path(path: &Path) -> PathBuf {
    path.to_path_buf()
}
