//! Writing the trained networks as ONNX files with the interfaces of the prompting loop
//! (models/README.md): `policy.onnx` `state [1,C,H,W]` -> `logits [1,G*G]`, `value [1,1]`;
//! `srm.onnx` `state [1,C,H,W]` -> `fg_prob [1,1,S,S]`. The graphs are built op for op from the
//! candle networks ([`super::nets`]) with [`GraphBuilder`]: AveragePool, Sub and Mul (the input
//! standardisation), Conv, Relu, Transpose, Flatten, Gemm, Add and Sigmoid, all in the standard
//! domain.

use std::path::Path;

use anyhow::Result;

use super::nets::{
    Actor, Conv, ConvActor, InputNorm, Linear, Param, Pointwise, PolicyNet, SrmNet, Trunk,
};
use crate::engine::onnx_build::{Attr, GraphBuilder};

/// The producer name written into the files.
pub const PRODUCER: &str = "alignsam-train";

fn weights(g: &mut GraphBuilder, p: &Param) -> Result<String> {
    Ok(g.constant(&p.name, &p.shape(), &p.values()?))
}

/// Pool then standardise: the networks' fixed front end.
fn front(g: &mut GraphBuilder, input: &str, pool: usize, norm: &InputNorm, prefix: &str) -> String {
    let k = pool as i64;
    let x = g.op(
        "AveragePool",
        &[input],
        &[
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![k, k])),
        ],
    );
    let c = norm.mean.len();
    let mean = g.constant(&format!("{prefix}.input_mean"), &[1, c, 1, 1], &norm.mean);
    let inv = g.constant(
        &format!("{prefix}.input_inv_std"),
        &[1, c, 1, 1],
        &norm.inv_std,
    );
    let x = g.op("Sub", &[&x, &mean], &[]);
    g.op("Mul", &[&x, &inv], &[])
}

fn conv(g: &mut GraphBuilder, x: &str, c: &Conv) -> Result<String> {
    let w = weights(g, &c.weight)?;
    let b = weights(g, &c.bias)?;
    let k = c.weight.shape()[2] as i64;
    let p = c.pad as i64;
    Ok(g.op(
        "Conv",
        &[x, &w, &b],
        &[
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![1, 1])),
            ("pads", Attr::Ints(vec![p, p, p, p])),
        ],
    ))
}

/// A [`Pointwise`] layer as a 1x1 Conv (weight `[out, in]` -> `[out, in, 1, 1]`).
fn pointwise(g: &mut GraphBuilder, x: &str, c: &Pointwise) -> Result<String> {
    let shape = c.weight.shape();
    let w = g.constant(
        &c.weight.name,
        &[shape[0], shape[1], 1, 1],
        &c.weight.values()?,
    );
    let b = weights(g, &c.bias)?;
    Ok(g.op(
        "Conv",
        &[x, &w, &b],
        &[("kernel_shape", Attr::Ints(vec![1, 1]))],
    ))
}

fn gemm(g: &mut GraphBuilder, x: &str, l: &Linear) -> Result<String> {
    let w = weights(g, &l.weight)?;
    let b = weights(g, &l.bias)?;
    Ok(g.op("Gemm", &[x, &w, &b], &[("transB", Attr::Int(1))]))
}

/// Conv1x1, Relu, then channels-last Flatten (as candle's rows are laid out), Gemm, Relu.
fn trunk(g: &mut GraphBuilder, x: &str, t: &Trunk) -> Result<String> {
    let x = pointwise(g, x, &t.conv)?;
    let x = g.op("Relu", &[&x], &[]);
    let x = g.op(
        "Transpose",
        &[&x],
        &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
    );
    let x = g.op("Flatten", &[&x], &[("axis", Attr::Int(1))]);
    let x = gemm(g, &x, &t.fc)?;
    Ok(g.op("Relu", &[&x], &[]))
}

/// Conv1x1, Relu, Conv3x3, Relu, Conv1x1: one score per cell (the SRM's and the conv actor's,
/// as `nets::cell_scores` computes them).
fn cell_scores(
    g: &mut GraphBuilder,
    x: &str,
    conv1: &Pointwise,
    conv2: &Conv,
    conv3: &Conv,
) -> Result<String> {
    let x = pointwise(g, x, conv1)?;
    let x = g.op("Relu", &[&x], &[]);
    let x = conv(g, &x, conv2)?;
    let x = g.op("Relu", &[&x], &[]);
    conv(g, &x, conv3)
}

/// Cell scores, Flatten, Gemm.
fn conv_actor(g: &mut GraphBuilder, x: &str, a: &ConvActor) -> Result<String> {
    let x = cell_scores(g, x, &a.conv1, &a.conv2, &a.conv3)?;
    let x = g.op("Flatten", &[&x], &[("axis", Attr::Int(1))]);
    gemm(g, &x, &a.head)
}

/// The policy's graph.
pub fn policy_graph(net: &PolicyNet) -> Result<GraphBuilder> {
    let a = &net.arch;
    let mut g = GraphBuilder::new("alignsam_policy");
    let state = g.input("state", &[1, a.channels, a.side, a.side]);
    let x = front(&mut g, &state, a.policy_pool, &net.norm, "policy");
    let logits = match &net.actor {
        Actor::Dense { trunk: t, logits } => {
            let h = trunk(&mut g, &x, t)?;
            gemm(&mut g, &h, logits)?
        }
        Actor::Conv(a) => conv_actor(&mut g, &x, a)?,
    };
    let critic = trunk(&mut g, &x, &net.critic)?;
    let value = gemm(&mut g, &critic, &net.value)?;
    g.output(&logits, "logits", &[1, a.grid * a.grid]);
    g.output(&value, "value", &[1, 1]);
    Ok(g)
}

/// The SRM's graph.
pub fn srm_graph(net: &SrmNet) -> Result<GraphBuilder> {
    let a = &net.arch;
    let s = a.srm_side();
    let mut g = GraphBuilder::new("alignsam_srm");
    let state = g.input("state", &[1, a.channels, a.side, a.side]);
    let x = front(&mut g, &state, a.srm_pool, &net.norm, "srm");
    let x = cell_scores(&mut g, &x, &net.conv1, &net.conv2, &net.conv3)?;
    let position = weights(&mut g, &net.position)?;
    let x = g.op("Add", &[&x, &position], &[]);
    let x = g.op("Sigmoid", &[&x], &[]);
    g.output(&x, "fg_prob", &[1, 1, s, s]);
    Ok(g)
}

/// Writes `policy.onnx`.
pub fn save_policy(net: &PolicyNet, path: &Path) -> Result<()> {
    policy_graph(net)?.save(path, PRODUCER)
}

/// Writes `srm.onnx`.
pub fn save_srm(net: &SrmNet, path: &Path) -> Result<()> {
    srm_graph(net)?.save(path, PRODUCER)
}

/// The largest absolute differences between the candle networks and their exported files run
/// by an inference backend, over some states.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ExportCheck {
    /// States compared.
    pub states: usize,
    /// Largest |logits difference|.
    pub logits: f32,
    /// Largest |value difference|.
    pub value: f32,
    /// Largest |fg_prob difference|.
    pub fg_prob: f32,
}

impl ExportCheck {
    /// The largest of the three.
    pub fn max(&self) -> f32 {
        self.logits.max(self.value).max(self.fg_prob)
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

/// Loads `policy_path` and `srm_path` with `backend` and compares their outputs with the candle
/// networks' on each state (`[1, C, H, W]`).
pub fn compare(
    backend: &dyn crate::engine::Backend,
    policy: &PolicyNet,
    srm: &SrmNet,
    policy_path: &Path,
    srm_path: &Path,
    states: &[crate::engine::Tensor],
) -> Result<ExportCheck> {
    use crate::engine::{ModelSpec, fixed};
    let a = &policy.arch;
    let input = fixed(&[1, a.channels, a.side, a.side]);
    let s = a.srm_side();
    let policy_spec = ModelSpec::new("policy")
        .input("state", input.clone())
        .output("logits", fixed(&[1, a.grid * a.grid]))
        .output("value", fixed(&[1, 1]));
    let srm_spec = ModelSpec::new("SRM")
        .input("state", input)
        .output("fg_prob", fixed(&[1, 1, s, s]));
    let policy_model = backend.load(policy_path, &policy_spec)?;
    let srm_model = backend.load(srm_path, &srm_spec)?;
    let mut check = ExportCheck {
        states: states.len(),
        ..Default::default()
    };
    for s in states {
        let x = super::nets::to_candle(s)?;
        let (logits, value) = policy.forward(&x)?;
        let prob = srm.forward(&x)?;
        let out = policy_model.run(&[s.view()])?;
        check.logits = check
            .logits
            .max(max_abs_diff(out[0].data(), &super::nets::values(&logits)?));
        check.value = check
            .value
            .max(max_abs_diff(out[1].data(), &super::nets::values(&value)?));
        let out = srm_model.run(&[s.view()])?;
        check.fg_prob = check
            .fg_prob
            .max(max_abs_diff(out[0].data(), &super::nets::values(&prob)?));
    }
    Ok(check)
}
