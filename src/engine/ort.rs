//! The ONNX Runtime backend (cargo feature `ort`), through the `ort` crate.
//!
//! ONNX Runtime is loaded at run time from the shared library named by `ORT_DYLIB_PATH` (for
//! instance the one inside the PyPI `onnxruntime` or `onnxruntime-gpu` wheel, or a Jetson build),
//! so nothing is downloaded at build time and the binary runs without it when the backend is not
//! asked for. `ALIGNSAM_ORT_PROVIDERS` chooses execution providers in order of preference, e.g.
//! `tensorrt,cuda,cpu`; the default is the CPU provider. A provider the library lacks is skipped
//! with a warning by ONNX Runtime itself.
//!
//! Unlike tract, ONNX Runtime keeps a symbolic point count natively and computes only the outputs
//! asked for, so the standard decoder's full-size Resize is skipped when `masks` is not read.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::{RunOptions, Session, builder::GraphOptimizationLevel};
use ort::value::Tensor as OrtTensor;

use super::{
    Backend, EngineOptions, LoadTimings, Model, ModelInfo, ModelSpec, Tensor, TensorView,
    check_run_inputs, check_run_output, onnx_io,
};

/// ONNX Runtime, one session per model.
pub struct OrtBackend {
    threads: usize,
    providers: Vec<String>,
}

fn environment() -> Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH").ok_or_else(|| {
            "the ort backend loads ONNX Runtime at run time: set ORT_DYLIB_PATH to libonnxruntime.so \
             (e.g. site-packages/onnxruntime/capi/libonnxruntime.so.* from `pip install onnxruntime`)"
                .to_string()
        })?;
        let path = PathBuf::from(path);
        let builder = ort::init_from(&path).map_err(|e| format!("{}: cannot load ONNX Runtime: {e}", path.display()))?;
        builder.with_name("alignsam").build().map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

impl OrtBackend {
    /// Loads ONNX Runtime (once per process) and prepares sessions with `options.threads` threads.
    pub fn new(options: &EngineOptions) -> Result<Self> {
        environment()?;
        let providers = std::env::var("ALIGNSAM_ORT_PROVIDERS")
            .unwrap_or_else(|_| "cpu".into())
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>();
        for p in &providers {
            if !["cpu", "cuda", "tensorrt"].contains(&p.as_str()) {
                bail!(
                    "ALIGNSAM_ORT_PROVIDERS: unknown execution provider '{p}' (known: tensorrt, cuda, cpu)"
                );
            }
        }
        Ok(OrtBackend {
            threads: options.resolved_threads(),
            providers,
        })
    }

    fn dispatch(&self) -> Vec<ExecutionProviderDispatch> {
        self.providers
            .iter()
            .map(|p| match p.as_str() {
                // TensorRT builds an engine per input shape; caching it on disk makes the second
                // start fast, and FP16 is what Jetson boards are for.
                "tensorrt" => ep::TensorRT::default()
                    .with_engine_cache(true)
                    .with_engine_cache_path(
                        std::env::temp_dir()
                            .join("alignsam-trt")
                            .display()
                            .to_string(),
                    )
                    .with_fp16(true)
                    .build(),
                "cuda" => ep::CUDA::default().build(),
                _ => ep::CPU::default().build(),
            })
            .collect()
    }
}

struct OrtModel {
    info: ModelInfo,
    /// The execution providers asked for, in order of preference.
    providers: Vec<String>,
    /// Names of the spec inputs the file has (an optional input it lacks is skipped).
    present: Vec<bool>,
    session: Mutex<Session>,
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn load(&self, path: &Path, spec: &ModelSpec) -> Result<Box<dyn Model>> {
        let start = Instant::now();
        let (proto, declared) = onnx_io::inspect(path, spec)?;
        super::refuse_half("ort", path, spec)?;
        drop(proto);
        let parse = start.elapsed();
        let start = Instant::now();
        let p = path.display();
        let configure = || -> ort::Result<_> {
            Ok(
                Session::builder(environment().map_err(|e| ort::Error::new(e.to_string()))?)?
                    .with_intra_threads(self.threads)?
                    // ONNX Runtime's pool spins after each run by default; with the encoder,
                    // decoder, policy and SRM each holding a pool, the spinning of one steals the
                    // cores another is running on (measured: decoder steps 1.5-2x slower).
                    .with_intra_op_spinning(false)?
                    .with_optimization_level(GraphOptimizationLevel::Level3)?
                    .with_execution_providers(self.dispatch())?,
            )
        };
        let session = configure()
            .map_err(|e| anyhow!("{p}: cannot configure an ONNX Runtime session: {e}"))?
            .commit_from_file(path)
            .map_err(|e| anyhow!("{p}: ONNX Runtime cannot load the {}: {e}", spec.role))?;
        let present = spec
            .inputs
            .iter()
            .map(|i| declared.inputs.iter().any(|d| d.name == i.name))
            .collect();
        Ok(Box::new(OrtModel {
            providers: self.providers.clone(),
            info: ModelInfo {
                path: path.to_path_buf(),
                spec: spec.clone(),
                declared,
                timings: LoadTimings {
                    parse,
                    optimise: start.elapsed(),
                },
            },
            present,
            session: Mutex::new(session),
        }))
    }
}

impl Model for OrtModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// ONNX Runtime picks its kernels inside each execution provider (MLAS on the CPU): the
    /// providers are what can be reported.
    fn kernels(&self) -> Vec<String> {
        self.providers
            .iter()
            .map(|p| format!("{p} execution provider"))
            .collect()
    }

    fn run(&self, inputs: &[TensorView<'_>]) -> Result<Vec<Tensor>> {
        check_run_inputs(&self.info.path, &self.info.spec, inputs)?;
        let p = self.info.path.display();
        let mut values = vec![];
        for ((input, view), present) in self.info.spec.inputs.iter().zip(inputs).zip(&self.present)
        {
            if !present {
                continue;
            }
            // Constants for tract's sake are plain inputs here.
            let shape: Vec<i64> = view.shape.iter().map(|&d| d as i64).collect();
            let value = OrtTensor::from_array((shape, view.data.to_vec()))
                .map_err(|e| anyhow!("{p}: input '{}': {e}", input.name))?;
            values.push((input.name.clone(), value.into_dyn()));
        }
        let mut selector = ort::session::OutputSelector::no_default();
        for o in &self.info.spec.outputs {
            selector = selector.with(o.name.clone());
        }
        let options = RunOptions::new()
            .map_err(|e| anyhow!("{e}"))?
            .with_outputs(selector);
        let mut session = self
            .session
            .lock()
            .map_err(|_| anyhow!("{p}: session poisoned"))?;
        let outputs = session
            .run_with_options(values, &options)
            .map_err(|e| anyhow!("{p}: running the {}: {e}", self.info.spec.role))?;
        self.info
            .spec
            .outputs
            .iter()
            .map(|o| {
                let value = outputs
                    .get(&o.name)
                    .with_context(|| format!("{p}: no output '{}'", o.name))?;
                let (shape, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| anyhow!("{p}: output '{}': {e}", o.name))?;
                let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                check_run_output(&self.info.path, &self.info.spec.role, o, &shape)?;
                Tensor::new(shape, data.to_vec())
            })
            .collect()
    }
}
