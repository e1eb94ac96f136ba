//! Static QDQ quantisation around Softmax: tract 0.23.9 computes it wrong, and the runtime refuses
//! such a file on tract with an error that says why.
//!
//! tract folds DequantizeLinear -> (element-wise op) -> QuantizeLinear into a lookup table, and
//! accepts Softmax there because its axes mapping looks element-wise. A lookup table maps each
//! value on its own, but a softmax output depends on the whole row. The first test runs tract
//! directly on a minimal graph to show the bug (when it fails, tract is fixed and the refusal can
//! go); the others check the refusal and that a graph with Softmax kept float is accepted.

mod common;

use std::path::Path;

use alignsam::engine::onnx_build::{Attr, GraphBuilder};
use alignsam::engine::{BackendKind, EngineOptions, ModelSpec, fixed};
use tract_onnx::prelude::*;

const ROW: [f32; 8] = [0.1, 0.5, -0.3, 1.2, 0.0, 2.0, -1.0, 0.7];
/// Input quantisation: scale 1/50, zero point 128 covers [-2.56, 2.54].
const IN_SCALE: f32 = 0.02;
/// Output quantisation: Softmax is in [0, 1].
const OUT_SCALE: f32 = 1.0 / 255.0;

/// x -> Q -> DQ -> Softmax -> (Q -> DQ when `quantize_softmax`) -> y.
fn qdq_softmax_model(path: &Path, quantize_softmax: bool) {
    let mut g = GraphBuilder::new("qdq_softmax");
    let x = g.input("x", &[1, 8]);
    let s_in = g.constant("s_in", &[], &[IN_SCALE]);
    let z_in = g.constant_u8("z_in", &[], &[128]);
    let s_out = g.constant("s_out", &[], &[OUT_SCALE]);
    let z_out = g.constant_u8("z_out", &[], &[0]);
    let q = g.op("QuantizeLinear", &[&x, &s_in, &z_in], &[]);
    let dq = g.op("DequantizeLinear", &[&q, &s_in, &z_in], &[]);
    let sm = g.op("Softmax", &[&dq], &[("axis", Attr::Int(-1))]);
    let y = if quantize_softmax {
        let q2 = g.op("QuantizeLinear", &[&sm, &s_out, &z_out], &[]);
        g.op("DequantizeLinear", &[&q2, &s_out, &z_out], &[])
    } else {
        sm
    };
    g.output(&y, "y", &[1, 8]);
    g.save(path, "alignsam tests").unwrap();
}

/// Softmax of the quantised row, in f64.
fn expected() -> Vec<f32> {
    let q: Vec<f64> = ROW
        .iter()
        .map(|&v| ((v / IN_SCALE).round() * IN_SCALE) as f64)
        .collect();
    let max = q.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = q.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

fn max_error(got: &[f32]) -> f32 {
    got.iter()
        .zip(expected())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn spec() -> ModelSpec {
    ModelSpec::new("softmax test")
        .input("x", fixed(&[1, 8]))
        .output("y", fixed(&[1, 8]))
}

#[test]
fn tract_computes_a_quantised_softmax_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qdq_softmax.onnx");
    qdq_softmax_model(&path, true);
    let plan = tract_onnx::onnx()
        .model_for_path(&path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x = tract_onnx::prelude::Tensor::from_shape(&[1, 8], &ROW).unwrap();
    let out = plan.run(tvec![x.into_tvalue()]).unwrap();
    let got: Vec<f32> = out[0]
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec();
    // A right answer is within one output step (1/255) of the softmax; tract's lookup table
    // maps each value alone and is far off.
    assert!(
        max_error(&got) > 0.1,
        "tract now computes DQ -> Softmax -> Q right (max error {}): the refusal in the tract backend can be lifted",
        max_error(&got)
    );
}

#[test]
fn the_tract_backend_refuses_a_quantised_softmax_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qdq_softmax.onnx");
    qdq_softmax_model(&path, true);
    let backend = common::tract(1);
    let err = format!("{:#}", backend.load(&path, &spec()).err().unwrap());
    assert!(
        err.contains("qdq_softmax.onnx")
            && err.contains("Softmax node")
            && err.contains("lookup table")
            && err.contains("calibration/quantize.py"),
        "{err}"
    );
}

#[test]
fn softmax_kept_float_is_accepted_and_right() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("float_softmax.onnx");
    qdq_softmax_model(&path, false);
    let input = alignsam::engine::Tensor::new(vec![1, 8], ROW.to_vec()).unwrap();
    for kind in [BackendKind::Tract, BackendKind::Rten] {
        let Some(backend) = common::backend(kind, 1) else {
            continue; // rten not built in
        };
        let model = backend.load(&path, &spec()).unwrap();
        let y = model.run(&[input.view()]).unwrap().remove(0);
        assert!(max_error(y.data()) < 1e-5, "{kind}: {:?}", y.data());
    }
}

#[cfg(feature = "rten")]
#[test]
fn rten_computes_a_quantised_softmax_right() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qdq_softmax.onnx");
    qdq_softmax_model(&path, true);
    let input = alignsam::engine::Tensor::new(vec![1, 8], ROW.to_vec()).unwrap();
    let backend = BackendKind::Rten
        .create(&EngineOptions { threads: 1 })
        .unwrap();
    let y = backend
        .load(&path, &spec())
        .unwrap()
        .run(&[input.view()])
        .unwrap()
        .remove(0);
    assert!(
        max_error(y.data()) <= OUT_SCALE,
        "{:?} vs {:?}",
        y.data(),
        expected()
    );
}
