//! Writing the trained networks as ONNX files with the interfaces of the prompting loop
//! (models/README.md): `policy.onnx` `state [1,C,H,W]` -> `logits [1,G*G]`, `value [1,1]`;
//! `srm.onnx` `state [1,C,H,W]` -> `fg_prob [1,1,S,S]`. The graphs are built op for op from the
//! candle networks ([`super::nets`]) with [`GraphBuilder`]: AveragePool, Sub and Mul (the input
//! standardisation), Conv, Relu, Transpose, Flatten, Gemm, Add and Sigmoid, all in the standard
//! domain.

use std::path::Path;

use anyhow::Result;

use super::clicker_net::{ClickerNet, STATE_CHANNELS};
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
    let d = c.dilation as i64;
    let mut attrs = vec![
        ("kernel_shape", Attr::Ints(vec![k, k])),
        ("strides", Attr::Ints(vec![1, 1])),
        ("pads", Attr::Ints(vec![p, p, p, p])),
    ];
    if d != 1 {
        attrs.push(("dilations", Attr::Ints(vec![d, d])));
    }
    Ok(g.op("Conv", &[x, &w, &b], &attrs))
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

/// `AveragePool` (or `MaxPool`) by `k`, kernel and stride alike.
fn pool(g: &mut GraphBuilder, op: &str, x: &str, k: usize) -> String {
    let k = k as i64;
    g.op(
        op,
        &[x],
        &[
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![k, k])),
        ],
    )
}

/// A `[1, K, 1, 1]`-pooled map as `[1, K]`.
fn global(g: &mut GraphBuilder, op: &str, x: &str) -> String {
    let p = g.op(op, &[x], &[]);
    g.op("Flatten", &[&p], &[("axis", Attr::Int(1))])
}

/// The clicker's graph: the runtime's interface (see [`crate::agent::clicker`]), the
/// computation of [`ClickerNet::forward`], channels first.
pub fn clicker_graph(net: &ClickerNet) -> Result<GraphBuilder> {
    let a = &net.arch;
    let (s, side) = (a.map_side(), a.side);
    let mut g = GraphBuilder::new("alignsam_clicker");
    let embedding = g.input("embedding", &[1, a.channels, side, side]);
    let mask = g.input("mask", &[1, 1, a.mask_side(), a.mask_side()]);
    let clicks = g.input("clicks", &[1, 2, side, side]);
    let scalars = g.input("scalars", &[1, 2]);

    // The trunk.
    let t = &net.trunk;
    let x = front(&mut g, &embedding, a.pool, &net.norm, "clicker");
    let x = pointwise(&mut g, &x, &t.conv1)?;
    let x = g.op("Relu", &[&x], &[]);
    let x = conv(&mut g, &x, &t.conv2.conv)?;
    let x = g.op("Relu", &[&x], &[]);
    let x = conv(&mut g, &x, &t.conv3.conv)?;
    let features = g.op("Relu", &[&x], &[]);
    let object = pointwise(&mut g, &features, &t.object)?;
    let ts = a.trunk_side();
    let position = g.constant(&t.position.name, &[1, 1, ts, ts], &t.position.values()?);
    let object = g.op("Add", &[&object, &position], &[]);
    let o = g.op("Sigmoid", &[&object], &[]);
    let o = pool(&mut g, "AveragePool", &o, a.head_pool);

    // The state at the maps' side.
    let m = g.op("Sigmoid", &[&mask], &[]);
    let m = pool(&mut g, "AveragePool", &m, a.mask_side() / s);
    let clicks = pool(&mut g, "MaxPool", &clicks, side / s);
    let m_o = g.op("Sub", &[&m, &o], &[]);
    let o_m = g.op("Sub", &[&o, &m], &[]);
    let error = g.op("Concat", &[&m_o, &o_m], &[("axis", Attr::Int(1))]);
    let shape = g.constant_i64("clicker.scalar_shape", &[1, 2, 1, 1]);
    let planes = g.op("Reshape", &[&scalars, &shape], &[]);
    let ones = g.constant("clicker.ones", &[1, 1, s, s], &vec![1.0; s * s]);
    let planes = g.op("Mul", &[&planes, &ones], &[]);
    let x = g.op(
        "Concat",
        &[&o, &m, &clicks, &error, &planes],
        &[("axis", Attr::Int(1))],
    );
    debug_assert_eq!(STATE_CHANNELS, 8);

    // The head.
    let h = &net.head;
    let x = pointwise(&mut g, &x, &h.conv1)?;
    let x = g.op("Relu", &[&x], &[]);
    let mut x = x;
    for c in [&h.conv2, &h.conv3, &h.conv4] {
        x = conv(&mut g, &x, &c.conv)?;
        x = g.op("Relu", &[&x], &[]);
    }
    let learned = pointwise(&mut g, &x, &h.scores)?;
    let wa = weights(&mut g, &h.rules)?;
    let ea = g.op("Mul", &[&error, &wa], &[]);
    let scores = g.op("Add", &[&learned, &ea], &[]);
    let mean = global(&mut g, "GlobalAveragePool", &x);
    let max = global(&mut g, "GlobalMaxPool", &x);
    let om = g.op("Mul", &[&o, &m], &[]);
    let overlap = global(&mut g, "GlobalAveragePool", &om);
    let o_mean = global(&mut g, "GlobalAveragePool", &o);
    let m_mean = global(&mut g, "GlobalAveragePool", &m);
    let sum = g.op("Add", &[&o, &m], &[]);
    let union = g.op("Sub", &[&sum, &om], &[]);
    let union = global(&mut g, "GlobalAveragePool", &union);
    let eps = g.constant(
        "clicker.soft_iou_eps",
        &[1],
        &[super::clicker_net::SOFT_IOU_EPS],
    );
    let union = g.op("Add", &[&union, &eps], &[]);
    let soft_iou = g.op("Div", &[&overlap, &union], &[]);
    let f = g.op(
        "Concat",
        &[&mean, &max, &overlap, &o_mean, &m_mean, &soft_iou, &scalars],
        &[("axis", Attr::Int(1))],
    );
    let out = gemm(&mut g, &f, &h.global)?;
    let axes = g.constant_i64("clicker.axes", &[1]);
    let (zero, one, two) = (
        g.constant_i64("clicker.i0", &[0]),
        g.constant_i64("clicker.i1", &[1]),
        g.constant_i64("clicker.i2", &[2]),
    );
    let stop = g.op("Slice", &[&out, &zero, &one, &axes], &[]);
    let quality = g.op("Slice", &[&out, &one, &two, &axes], &[]);
    g.output(&scores, "scores", &[1, 2, s, s]);
    g.output(&stop, "stop", &[1, 1]);
    g.output(&quality, "quality", &[1, 1]);
    g.output(&o, "object", &[1, 1, s, s]);
    Ok(g)
}

/// Writes `clicker.onnx`.
pub fn save_clicker(net: &ClickerNet, path: &Path) -> Result<()> {
    clicker_graph(net)?.save(path, PRODUCER)
}

/// The largest absolute difference between the candle clicker and its exported file run by
/// `backend`, over real states of one training image: its start points' mask, and the mask
/// after one more click at the grid's centre.
pub fn compare_clicker(
    backend: &dyn crate::engine::Backend,
    net: &ClickerNet,
    path: &Path,
    image: &super::imitation::samples::ImageData,
    cache: &crate::cache::EmbeddingCache,
    decoder: &crate::sam::Decoder,
    srm: &crate::agent::Srm,
) -> Result<f32> {
    use crate::agent::clicker::StateInputs;
    use crate::agent::srm::start_points;
    use crate::agent::{PointOrigin, PointRecord};
    use crate::engine::{ModelSpec, TensorView, fixed};
    use crate::sam::PointLabel;
    let a = &net.arch;
    let (s, side, m) = (a.map_side(), a.side, a.mask_side());
    let spec = ModelSpec::new("clicker")
        .input("embedding", fixed(&[1, a.channels, side, side]))
        .input("mask", fixed(&[1, 1, m, m]))
        .input("clicks", fixed(&[1, 2, side, side]))
        .input("scalars", fixed(&[1, 2]))
        .output("scores", fixed(&[1, 2, s, s]))
        .output("stop", fixed(&[1, 1]))
        .output("quality", fixed(&[1, 1]))
        .output("object", fixed(&[1, 1, s, s]));
    let model = backend.load(path, &spec)?;
    let Some((e, geometry)) = cache.get(&image.image_path)? else {
        anyhow::bail!("{}: no cached embedding", image.image_path.display());
    };
    let Some((pos, neg)) = start_points(&image.srm_map, srm.frame_map(), &geometry) else {
        anyhow::bail!("{}: no start points", image.id);
    };
    let point = |x, y, label| PointRecord {
        step: 0,
        x,
        y,
        label,
        patch: 0,
        origin: PointOrigin::Step,
        srm_prob: f32::NAN,
        iou_prediction: f32::NAN,
    };
    let (h, w) = geometry.original;
    let mut points = vec![
        point(pos.x, pos.y, PointLabel::Positive),
        point(neg.x, neg.y, PointLabel::Negative),
    ];
    let mut worst = 0f32;
    let mut current: Option<crate::sam::LowResMask> = None;
    for step in 0..2 {
        if step == 1 {
            points.push(point(w as f64 / 2.0, h as f64 / 2.0, PointLabel::Positive));
        }
        let prompt: Vec<_> = points.iter().map(PointRecord::prompt).collect();
        let mask_input = current.as_ref().map(|c| &c.logits);
        let low = decoder.decode(&e, &prompt, mask_input, &geometry)?;
        let inputs = StateInputs::new(&points, &geometry, low.iou, step, side);
        let mask_shape = [1, 1, m, m];
        let out = model.run(&[
            e.0.view(),
            TensorView {
                shape: &mask_shape,
                data: &low.logits.data,
            },
            inputs.clicks.view(),
            inputs.scalars.view(),
        ])?;
        let t = |x: &crate::engine::Tensor| super::nets::to_candle(x);
        let mask_t = candle_core::Tensor::from_slice(
            &low.logits.data,
            (1, 1, m, m),
            &candle_core::Device::Cpu,
        )?;
        let ours = net.forward(
            &t(&e.0)?,
            &mask_t,
            &t(&inputs.clicks)?,
            &t(&inputs.scalars)?,
        )?;
        let scores = super::nets::values(&ours.scores.permute((0, 3, 1, 2))?)?;
        let object = net.pool(&net.trunk(&net.prepare(&t(&e.0)?)?)?)?.object;
        worst = worst
            .max(max_abs_diff(out[3].data(), &super::nets::values(&object)?))
            .max(max_abs_diff(out[0].data(), &scores))
            .max(max_abs_diff(
                out[1].data(),
                &super::nets::values(&ours.stop)?,
            ))
            .max(max_abs_diff(
                out[2].data(),
                &super::nets::values(&ours.quality)?,
            ));
        current = Some(low);
    }
    Ok(worst)
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
