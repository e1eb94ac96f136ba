//! The tract backend: load, declare input facts, optimise once, run many times.
//!
//! We use `tract-onnx` (with `tract-core` through it) rather than the `tract` facade crate,
//! because the runtime needs four things the facade does not expose: choosing which outputs to
//! keep (so the standard SAM decoder's full-size Resize is pruned from the graph), folding an
//! input into a constant (the one case where that Resize must run), a per-model thread pool
//! (`RunOptions::executor`), and the ONNX protobuf types to inspect files and write the trained
//! policy and SRM. All tract calls stay in this file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;

use super::{
    Backend, Dim, EngineOptions, LoadTimings, Model, ModelInfo, ModelSpec, NodeTime, Tensor,
    TensorView, check_run_inputs, check_run_output, onnx_io,
};

/// tract, pure Rust, one thread pool per loaded model.
pub struct TractBackend {
    threads: usize,
}

impl TractBackend {
    /// A backend whose models each run on `options.threads` threads.
    pub fn new(options: &EngineOptions) -> Self {
        TractBackend {
            threads: options.resolved_threads(),
        }
    }
}

type Plan = Arc<TypedRunnableModel>;

/// A model optimised by tract. Runs share one pre-allocated state (its scratch memory survives
/// between runs); calls are serialised, which matches how a frame is processed.
struct TractModel {
    info: ModelInfo,
    /// For each spec input, its position among the optimised model's inputs (None: not an input
    /// of this file, or folded into a constant).
    input_slots: Vec<Option<usize>>,
    model_inputs: usize,
    /// The element type of each optimised model input (f16 after the f16 transform).
    input_types: Vec<DatumType>,
    /// The matrix-product kernels tract picked, for reports.
    kernels: Vec<String>,
    state: Mutex<TypedSimpleState>,
    _plan: Plan,
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, path: &Path, spec: &ModelSpec) -> Result<Box<dyn Model>> {
        let start = Instant::now();
        let (proto, declared) = onnx_io::inspect(path, spec)?;
        let p = path.display();
        refuse_quantized_softmax(path, &proto)?;
        let model_dir = path.parent().and_then(|d| d.to_str());
        let mut model = tract_onnx::onnx()
            .parse(&proto, model_dir)
            .map_err(|e| anyhow!("{p}: tract cannot parse the {}: {e:#}", spec.role))?
            .model;
        drop(proto);
        let parse = start.elapsed();

        let start = Instant::now();
        declare_facts(&mut model, spec).with_context(|| format!("{p}: declaring input facts"))?;
        let output_names: Vec<&str> = spec.outputs.iter().map(|o| o.name.as_str()).collect();
        model
            .select_outputs_by_name(&output_names)
            .with_context(|| format!("{p}: selecting outputs {output_names:?}"))?;
        let typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(|e| anyhow!("{p}: tract cannot type the {}: {e:#}", spec.role))?;
        check_typed_outputs(path, spec, &typed)?;
        let typed = if spec.half { to_half(typed) } else { Ok(typed) }
            .map_err(|e| anyhow!("{p}: tract cannot convert the {} to f16: {e:#}", spec.role))?;
        let optimised = typed
            .into_optimized()
            .map_err(|e| anyhow!("{p}: tract cannot optimise the {}: {e:#}", spec.role))?;

        let input_slots = spec
            .inputs
            .iter()
            .map(|i| {
                optimised
                    .inputs
                    .iter()
                    .position(|o| optimised.node(o.node).name == i.name)
            })
            .collect();
        let model_inputs = optimised.inputs.len();
        let input_types = optimised
            .inputs
            .iter()
            .map(|o| optimised.outlet_fact(*o).map(|f| f.datum_type))
            .collect::<TractResult<Vec<_>>>()?;
        let kernels = matmul_kernels(&optimised);
        let executor = (self.threads > 1).then(|| Executor::multithread(self.threads));
        let options = RunOptions {
            executor,
            ..Default::default()
        };
        let plan = optimised
            .into_runnable_with_options(&options)
            .map_err(|e| anyhow!("{p}: tract cannot plan the {}: {e:#}", spec.role))?;
        let state = plan.spawn().map_err(|e| anyhow!("{p}: {e:#}"))?;
        let optimise = start.elapsed();

        Ok(Box::new(TractModel {
            info: ModelInfo {
                path: path.to_path_buf(),
                spec: spec.clone(),
                declared,
                timings: LoadTimings { parse, optimise },
            },
            input_slots,
            model_inputs,
            input_types,
            kernels,
            state: Mutex::new(state),
            _plan: plan,
        }))
    }
}

/// Declares every input's shape (symbols for varying dimensions, so that one plan serves every
/// point count) and folds constant inputs into the graph.
fn declare_facts(model: &mut InferenceModel, spec: &ModelSpec) -> TractResult<()> {
    for (ix, outlet) in model.inputs.clone().iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        if let Some((_, value)) = spec.constants.iter().find(|(n, _)| *n == name) {
            let t = tract_onnx::prelude::Tensor::from_shape(value.shape(), value.data())?;
            model.set_input_fact(ix, InferenceFact::from(t))?;
        } else if let Some(input) = spec.inputs.iter().find(|i| i.name == name) {
            let dims: TVec<TDim> = input
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => TDim::Val(*n as i64),
                    Dim::Symbol(s) => model.symbols.sym(s).into(),
                })
                .collect();
            model.set_input_fact(ix, f32::fact(dims).into())?;
        }
    }
    Ok(())
}

/// Where tract can compute the output shapes from the declared inputs, compare them with the
/// spec now rather than at the first run.
fn check_typed_outputs(path: &Path, spec: &ModelSpec, typed: &TypedModel) -> Result<()> {
    for (out, outlet) in spec.outputs.iter().zip(typed.outputs.iter()) {
        let fact = typed.outlet_fact(*outlet)?;
        let concrete: Option<Vec<usize>> = fact.shape.as_concrete().map(|s| s.to_vec());
        let Some(shape) = concrete else { continue };
        check_run_output(path, &spec.role, out, &shape)?;
    }
    Ok(())
}

/// Refuses a static-QDQ file whose Softmax was quantised: tract 0.23.9 would compute it wrong.
fn refuse_quantized_softmax(path: &Path, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    let nodes = onnx_io::quantized_softmax_nodes(proto);
    if let Some(first) = nodes.first() {
        anyhow::bail!(
            "{}: Softmax node '{first}' (and {} more) is quantised (DequantizeLinear -> Softmax -> QuantizeLinear); tract 0.23.9 folds that into a lookup table as if Softmax were element-wise and gives wrong outputs. Quantise with Softmax kept float (calibration/quantize.py does by default) or use another backend",
            path.display(),
            nodes.len() - 1
        );
    }
    Ok(())
}

/// Operators that stay float32 in the f16 transform: sums over many values (reductions,
/// normalisations, Softmax) overflow or lose their small terms in float16's 11-bit mantissa.
fn keeps_f32(node: &TypedNode) -> bool {
    let op = node.op.name();
    ["Reduce", "Softmax", "Norm", "Pool", "Resize"]
        .iter()
        .any(|k| op.contains(k))
}

/// tract's float precision translator, f32 to f16, except what [`keeps_f32`] names.
fn to_half(model: TypedModel) -> TractResult<TypedModel> {
    use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
    use tract_onnx::tract_core::transform::ModelTransform;
    FloatPrecisionTranslator::with_filter(f32::datum_type(), f16::datum_type(), |n| !keeps_f32(n))
        .transform_into(model)
}

/// The distinct matrix-multiplication kernels in an optimised model.
fn matmul_kernels(model: &TypedModel) -> Vec<String> {
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    let mut names: Vec<String> = model
        .nodes
        .iter()
        .filter_map(|n| n.op_as::<OptMatMul>())
        .flat_map(|op| op.mmm.iter().map(|k| format!("{k:?}")))
        .collect();
    names.sort();
    names.dedup();
    names
}

impl TractModel {
    /// Checks the inputs and orders them as the optimised model wants them.
    fn values(&self, inputs: &[TensorView<'_>]) -> Result<TVec<TValue>> {
        check_run_inputs(&self.info.path, &self.info.spec, inputs)?;
        let mut slots: Vec<Option<TValue>> = vec![None; self.model_inputs];
        for (slot, view) in self.input_slots.iter().zip(inputs) {
            if let Some(ix) = slot {
                let t = tract_onnx::prelude::Tensor::from_shape(view.shape, view.data)?;
                let t = t.cast_to_dt(self.input_types[*ix])?.into_owned();
                slots[*ix] = Some(t.into_tvalue());
            }
        }
        slots
            .into_iter()
            .enumerate()
            .map(|(ix, v)| {
                v.ok_or_else(|| {
                    anyhow!(
                        "{}: model input #{ix} has no value",
                        self.info.path.display()
                    )
                })
            })
            .collect()
    }
}

impl Model for TractModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn kernels(&self) -> Vec<String> {
        self.kernels.clone()
    }

    fn profile(&self, inputs: &[TensorView<'_>]) -> Result<Option<Vec<NodeTime>>> {
        let values = self.values(inputs)?;
        let mut times = vec![];
        let mut state = self
            .state
            .lock()
            .map_err(|_| anyhow!("model state poisoned"))?;
        // The same evaluation hook tract's own profiler uses: time each node as the plan runs it.
        state
            .run_plan_with_eval(values, |ctx, op_state, node, node_inputs| {
                let t = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, node_inputs);
                times.push(NodeTime {
                    name: node.name.clone(),
                    op: node.op.name().to_string(),
                    time: t.elapsed(),
                });
                out
            })
            .map_err(|e| {
                anyhow!(
                    "{}: profiling the {}: {e:#}",
                    self.info.path.display(),
                    self.info.spec.role
                )
            })?;
        Ok(Some(times))
    }

    fn run(&self, inputs: &[TensorView<'_>]) -> Result<Vec<Tensor>> {
        let values = self.values(inputs)?;
        let outputs = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| anyhow!("model state poisoned"))?;
            state.run(values).map_err(|e| {
                anyhow!(
                    "{}: running the {}: {e:#}",
                    self.info.path.display(),
                    self.info.spec.role
                )
            })?
        };
        self.info
            .spec
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, value)| {
                let shape = value.shape().to_vec();
                check_run_output(&self.info.path, &self.info.spec.role, spec, &shape)?;
                let value = value.cast_to::<f32>()?;
                let data = value.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                Tensor::new(shape, data)
            })
            .collect()
    }
}
