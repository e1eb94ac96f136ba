//! The rten backend: a second pure-Rust engine (crate `rten`). It loads `.onnx` files directly,
//! runs on its own thread pool (sized by [`EngineOptions::threads`]) and has int8 matrix kernels
//! for x86 (AVX-512 VNNI) and ARM (dotprod, i8mm). Loading goes through [`onnx_io::inspect`]
//! first, so a wrong file gets the same one-line error as with tract.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use rten::{ModelOptions, NodeId, RunOptions, ThreadPool};
use rten_tensor::TensorView as RtenView;
use rten_tensor::prelude::*;

use super::onnx_io;
use super::{
    Backend, EngineOptions, LoadTimings, Model, ModelInfo, ModelSpec, Tensor, TensorView,
    check_run_inputs, check_run_output,
};

/// Loads models into rten.
pub struct RtenBackend {
    pool: Arc<ThreadPool>,
}

impl RtenBackend {
    /// A backend whose models run on a pool of `options.threads` threads (0: all cores).
    pub fn new(options: &EngineOptions) -> Self {
        RtenBackend {
            pool: Arc::new(ThreadPool::with_num_threads(options.resolved_threads())),
        }
    }
}

/// A model loaded into rten.
pub struct RtenModel {
    info: ModelInfo,
    /// The graph node of each spec input (`None`: an optional input the file lacks).
    inputs: Vec<Option<NodeId>>,
    outputs: Vec<NodeId>,
    model: rten::Model,
    pool: Arc<ThreadPool>,
}

impl Backend for RtenBackend {
    fn name(&self) -> &'static str {
        "rten"
    }

    fn load(&self, path: &Path, spec: &ModelSpec) -> Result<Box<dyn Model>> {
        let start = Instant::now();
        let (proto, declared) = onnx_io::inspect(path, spec)?;
        drop(proto);
        super::refuse_half("rten", path, spec)?;
        let parse = start.elapsed();
        let start = Instant::now();
        let p = path.display();
        let model = ModelOptions::with_all_ops()
            .load_file(path)
            .map_err(|e| anyhow!("{p}: rten cannot load the {}: {e}", spec.role))?;
        let node = |name: &str| {
            model
                .node_id(name)
                .map_err(|e| anyhow!("{p}: the {} has no node '{name}' in rten: {e}", spec.role))
        };
        let inputs = spec
            .inputs
            .iter()
            .map(|i| {
                let present = declared.inputs.iter().any(|d| d.name == i.name);
                present.then(|| node(&i.name)).transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = spec
            .outputs
            .iter()
            .map(|o| node(&o.name))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(RtenModel {
            info: ModelInfo {
                path: path.to_path_buf(),
                spec: spec.clone(),
                declared,
                timings: LoadTimings {
                    parse,
                    optimise: start.elapsed(),
                },
            },
            inputs,
            outputs,
            model,
            pool: self.pool.clone(),
        }))
    }
}

impl Model for RtenModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// rten picks its kernels per CPU once, for the whole process: the float one and the int8
    /// one (what a quantised model's MatMulInteger and ConvInteger run on).
    fn kernels(&self) -> Vec<String> {
        vec![
            format!(
                "f32: {}",
                rten_gemm::GemmExecutor::<f32>::default().kernel_name()
            ),
            format!(
                "int8: {}",
                rten_gemm::GemmExecutor::<u8, i8, i32>::default().kernel_name()
            ),
        ]
    }

    fn run(&self, inputs: &[TensorView<'_>]) -> Result<Vec<Tensor>> {
        self.run_with(inputs, RunOptions::default())
    }

    /// rten's own report: time per operator and per input shape, printed to stdout by rten
    /// (the report `RTEN_TIMING=1` gives); node-level times are not exposed by its API.
    fn print_engine_timing(&self, inputs: &[TensorView<'_>]) -> Result<bool> {
        let mut options = RunOptions::default();
        options.timing = true;
        options.timing_by_shape = true;
        self.run_with(inputs, options)?;
        Ok(true)
    }
}

impl RtenModel {
    /// Runs on this backend's pool with `options` (timing flags and the like).
    fn run_with(&self, inputs: &[TensorView<'_>], options: RunOptions) -> Result<Vec<Tensor>> {
        check_run_inputs(&self.info.path, &self.info.spec, inputs)?;
        let p = self.info.path.display();
        let values = self
            .inputs
            .iter()
            .zip(inputs)
            .filter_map(|(id, view)| {
                id.map(|id| (id, RtenView::from_data(view.shape, view.data).into()))
            })
            .collect();
        let options = options.with_thread_pool(Some(self.pool.clone()));
        let outputs = self
            .model
            .run(values, &self.outputs, Some(options))
            .map_err(|e| anyhow!("{p}: running the {}: {e}", self.info.spec.role))?;
        self.info
            .spec
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, value)| {
                let t = value.into_tensor::<f32>().ok_or_else(|| {
                    anyhow!(
                        "{p}: output '{}' of the {} is not float32",
                        spec.name,
                        self.info.spec.role
                    )
                })?;
                let shape = t.shape().to_vec();
                check_run_output(&self.info.path, &self.info.spec.role, spec, &shape)?;
                Tensor::new(shape, t.into_data())
            })
            .collect()
    }
}
