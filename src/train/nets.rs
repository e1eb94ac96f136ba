//! The policy (actor and critic) and the SRM as candle networks, with weights drawn from our own
//! seeded RNG so that a run is repeatable.
//!
//! Both networks start with a fixed, parameter-free front end: an average pool (8x8 for the
//! policy, 64x64 -> 8x8 cells; 4x4 for the SRM, -> 16x16, its output map) and a per-channel
//! standardisation whose mean and standard deviation are measured on the training embeddings
//! before training ([`InputNorm::measure`]). The standardisation makes one learning rate work
//! whatever the encoder's output scale (the random MobileSAM and the tiny test encoder differ by
//! orders of magnitude).
//!
//! ```text
//! policy: state -> AvgPool8 -> norm -+-> actor  trunk -> Linear(H -> G*G)  = logits
//!                                    +-> critic trunk -> Linear(H -> 1)    = value
//! trunk:  Conv1x1(C -> W) ReLU, Flatten (W * 8 * 8), Linear(.. -> H) ReLU
//! SRM:    state -> AvgPool4 -> norm -> Conv1x1(C -> W) ReLU, Conv3x3(W -> W, pad 1) ReLU,
//!         Conv1x1(W -> 1), + position bias [1,1,16,16], Sigmoid       = fg_prob [1,1,16,16]
//! ```
//!
//! Why these shapes (W = 16, H = 64 by default):
//! - The cost is in the first layer, over `C` = 256 channels at every pooled cell: candle's
//!   backward also computes the gradient of a matmul's constant input, so that layer costs about
//!   three times its forward pass at each of PPO's K = 20 epochs. Pooling the policy's input to
//!   8x8 keeps an epoch over an episode's 15 states at a few milliseconds; the fully connected
//!   layer still sees where every feature is, which is what choosing a patch needs.
//! - The SRM's output is a map, so it keeps 16x16 cells and a 3x3 convolution for context; it
//!   runs on one state at a time.
//! - Actor and critic have separate trunks: the critic's squared-error gradients are large while
//!   returns are poorly predicted, and with a shared trunk they drown the actor's.
//! - The SRM's position bias (one learned logit per cell) is the location prior that a small
//!   convolutional network cannot otherwise express: a dataset's objects favour parts of the frame.
//! - The first layers run channels-last as one matrix product (`[N * S * S, C] x [C, W]`), which
//!   candle does far faster than its direct convolution; the export writes the same computation
//!   as ONNX Conv (and a Transpose before Flatten, for the channels-last order).

use candle_core::{D, DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Sizes of both networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Arch {
    /// Embedding channels C.
    pub channels: usize,
    /// Embedding side (64 for SAM).
    pub side: usize,
    /// Patch grid side G (the policy outputs G*G logits).
    pub grid: usize,
    /// The policy's average pooling (kernel and stride).
    pub policy_pool: usize,
    /// The SRM's average pooling; its output map has `side / srm_pool` cells per side.
    pub srm_pool: usize,
    /// Width W of the first (and the SRM's second) layer.
    pub width: usize,
    /// Hidden units H of the policy's fully connected layer.
    pub hidden: usize,
    /// The actor's shape.
    pub actor: ActorKind,
}

/// The shape of the policy's actor (the critic is always [`Trunk`] + Linear).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    /// [`Trunk`] + Linear(H -> G*G): every pooled cell has its own weights in the fully
    /// connected layer (73 000 weights at the defaults for a 64-channel embedding).
    #[default]
    Dense,
    /// [`ConvActor`]: one score per pooled cell from convolutions shared by all cells (as the
    /// SRM), then Linear(S*S -> G*G) from the score map to the patches (10 000 weights).
    /// Made for the 50-image budget, where the dense actor fits the training images (sampled hit
    /// rate 0.75-0.80 there) and falls back to one patch for every eval image. Measured on
    /// models/small-sam (README, "Training and evaluation"): it picks per image, but its mIoU
    /// ties with the dense actor's.
    Conv,
}

impl std::str::FromStr for ActorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dense" => Ok(ActorKind::Dense),
            "conv" => Ok(ActorKind::Conv),
            _ => Err(format!("unknown actor {s:?}: expected dense or conv")),
        }
    }
}

impl Arch {
    /// The default sizes for an embedding of `channels x side x side` and a `grid x grid` action
    /// space: policy pool 8, SRM pool 4, width 16, hidden 64.
    pub fn new(channels: usize, side: usize, grid: usize) -> Self {
        Arch {
            channels,
            side,
            grid,
            policy_pool: 8,
            srm_pool: 4,
            width: 16,
            hidden: 64,
            actor: ActorKind::Dense,
        }
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (what, pool) in [("policy", self.policy_pool), ("SRM", self.srm_pool)] {
            if pool == 0 || !self.side.is_multiple_of(pool) {
                anyhow::bail!(
                    "the {what}'s pooling size {pool} must divide the embedding side {}",
                    self.side
                );
            }
        }
        if self.width == 0 || self.hidden == 0 || self.grid == 0 || self.channels == 0 {
            anyhow::bail!("network sizes must be positive: {self:?}");
        }
        Ok(())
    }

    /// Side of the policy's pooled state.
    pub fn policy_side(&self) -> usize {
        self.side / self.policy_pool
    }

    /// Side of the SRM's pooled state and output map.
    pub fn srm_side(&self) -> usize {
        self.side / self.srm_pool
    }

    /// Inputs of the policy trunk's fully connected layer.
    pub fn flat(&self) -> usize {
        self.width * self.policy_side() * self.policy_side()
    }
}

/// A weight tensor and the name it has in exports.
#[derive(Clone, Debug)]
pub struct Param {
    /// Unique name (also the ONNX initialiser's name).
    pub name: String,
    /// The trainable variable.
    pub var: Var,
}

impl Param {
    /// The current values, row-major.
    pub fn values(&self) -> candle_core::Result<Vec<f32>> {
        self.var.as_tensor().flatten_all()?.to_vec1::<f32>()
    }

    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        self.var.as_tensor().dims().to_vec()
    }
}

/// A [`Conv`] with He-uniform weights (times `gain`), zero bias, no padding: for networks
/// outside this module (set `pad` and `dilation` on the result).
pub fn conv_he(
    rng: &mut StdRng,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    gain: f32,
) -> candle_core::Result<Conv> {
    Conv::new(&mut Init { rng }, name, cin, cout, k, 0, gain)
}

/// A [`Pointwise`] layer with He-uniform weights, zero bias.
pub fn pointwise_he(
    rng: &mut StdRng,
    name: &str,
    cin: usize,
    cout: usize,
) -> candle_core::Result<Pointwise> {
    Pointwise::new(&mut Init { rng }, name, cin, cout, 1.0)
}

/// A [`Linear`] layer with He-uniform weights (times `gain`), zero bias.
pub fn linear_he(
    rng: &mut StdRng,
    name: &str,
    cin: usize,
    cout: usize,
    gain: f32,
) -> candle_core::Result<Linear> {
    Linear::new(&mut Init { rng }, name, cin, cout, gain)
}

/// A parameter of one value everywhere.
pub fn const_param(name: &str, shape: &[usize], value: f32) -> candle_core::Result<Param> {
    let n: usize = shape.iter().product();
    let var = Var::from_tensor(&Tensor::from_vec(vec![value; n], shape, &Device::Cpu)?)?;
    Ok(Param {
        name: name.into(),
        var,
    })
}

/// A parameter of zeros.
pub fn zeros_param(name: &str, shape: &[usize]) -> candle_core::Result<Param> {
    const_param(name, shape, 0.0)
}

/// Draws weights: uniform in `[-bound, bound)`, row-major.
struct Init<'a> {
    rng: &'a mut StdRng,
}

impl Init<'_> {
    fn uniform(&mut self, name: &str, shape: &[usize], bound: f32) -> candle_core::Result<Param> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                if bound > 0.0 {
                    self.rng.random_range(-bound..bound)
                } else {
                    0.0
                }
            })
            .collect();
        let var = Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)?;
        Ok(Param {
            name: name.into(),
            var,
        })
    }
}

/// A 1x1 convolution on channels-last rows: `[R, in] -> [R, out]`, `y = x W^T + b`. Exported
/// as a Conv with weight `[out, in, 1, 1]`.
#[derive(Clone, Debug)]
pub struct Pointwise {
    /// `[out, in]`.
    pub weight: Param,
    /// `[out]`.
    pub bias: Param,
}

impl Pointwise {
    fn new(
        init: &mut Init,
        name: &str,
        cin: usize,
        cout: usize,
        gain: f32,
    ) -> candle_core::Result<Self> {
        let l = Linear::new(init, name, cin, cout, gain)?;
        Ok(Pointwise {
            weight: l.weight,
            bias: l.bias,
        })
    }

    /// `[R, in]` -> `[R, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.var.as_tensor().t()?)?
            .broadcast_add(self.bias.var.as_tensor())
    }

    pub(crate) fn params(&self) -> [&Param; 2] {
        [&self.weight, &self.bias]
    }
}

/// A 2-D convolution with bias, channels first.
#[derive(Clone, Debug)]
pub struct Conv {
    /// `[out, in, k, k]`.
    pub weight: Param,
    /// `[out]`.
    pub bias: Param,
    /// Zero padding (all sides); the stride is 1.
    pub pad: usize,
    /// Dilation (1: a plain convolution).
    pub dilation: usize,
}

impl Conv {
    /// He-uniform weights (bound `sqrt(6 / fan_in) * gain`), zero bias.
    fn new(
        init: &mut Init,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        pad: usize,
        gain: f32,
    ) -> candle_core::Result<Self> {
        let bound = (6.0 / (cin * k * k) as f32).sqrt() * gain;
        Ok(Conv {
            weight: init.uniform(&format!("{name}.weight"), &[cout, cin, k, k], bound)?,
            bias: init.uniform(&format!("{name}.bias"), &[cout], 0.0)?,
            pad,
            dilation: 1,
        })
    }

    /// `[N, in, h, w]` -> `[N, out, h', w']`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.weight.var.as_tensor();
        let out = x.conv2d(w, self.pad, 1, self.dilation, 1)?;
        out.broadcast_add(&self.bias.var.as_tensor().reshape((1, w.dim(0)?, 1, 1))?)
    }

    pub(crate) fn params(&self) -> [&Param; 2] {
        [&self.weight, &self.bias]
    }
}

/// A fully connected layer, `y = x W^T + b` (ONNX `Gemm` with `transB = 1`).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Param,
    /// `[out]`.
    pub bias: Param,
}

impl Linear {
    /// He-uniform weights (bound `sqrt(6 / fan_in) * gain`), zero bias.
    fn new(
        init: &mut Init,
        name: &str,
        cin: usize,
        cout: usize,
        gain: f32,
    ) -> candle_core::Result<Self> {
        let bound = (6.0 / cin as f32).sqrt() * gain;
        Ok(Linear {
            weight: init.uniform(&format!("{name}.weight"), &[cout, cin], bound)?,
            bias: init.uniform(&format!("{name}.bias"), &[cout], 0.0)?,
        })
    }

    /// `[N, in]` -> `[N, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.var.as_tensor().t()?)?
            .broadcast_add(self.bias.var.as_tensor())
    }

    pub(crate) fn params(&self) -> [&Param; 2] {
        [&self.weight, &self.bias]
    }
}

/// The fixed per-channel standardisation of the pooled state, `(x - mean) * inv_std`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InputNorm {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel 1 / standard deviation.
    pub inv_std: Vec<f32>,
}

impl InputNorm {
    /// The identity (mean 0, std 1) for `channels` channels.
    pub fn identity(channels: usize) -> Self {
        InputNorm {
            mean: vec![0.0; channels],
            inv_std: vec![1.0; channels],
        }
    }

    /// Mean and standard deviation per channel over pooled states `[N, C, S, S]` (cells of all
    /// states together). A channel with (near) zero spread keeps std 1, so that it is centred but
    /// not blown up.
    pub fn measure(pooled: &[Tensor]) -> candle_core::Result<Self> {
        let mut sum: Vec<f64> = vec![];
        let mut sq: Vec<f64> = vec![];
        let mut count = 0usize;
        for t in pooled {
            let (n, c, h, w) = t.dims4()?;
            if sum.is_empty() {
                (sum, sq) = (vec![0.0; c], vec![0.0; c]);
            }
            let data = t.flatten_all()?.to_vec1::<f32>()?;
            for (i, plane) in data.chunks_exact(h * w).enumerate() {
                let ch = i % c;
                for &v in plane {
                    sum[ch] += v as f64;
                    sq[ch] += (v as f64) * (v as f64);
                }
            }
            count += n * h * w;
        }
        let count = count.max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let inv_std = sum
            .iter()
            .zip(&sq)
            .map(|(s, q)| {
                let m = s / count;
                let var = (q / count - m * m).max(0.0);
                if var.sqrt() > 1e-6 {
                    (1.0 / var.sqrt()) as f32
                } else {
                    1.0
                }
            })
            .collect();
        Ok(InputNorm { mean, inv_std })
    }

    /// Applies the standardisation to `[N, C, S, S]`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = self.mean.len();
        let mean = Tensor::from_slice(&self.mean, (1, c, 1, 1), x.device())?;
        let inv = Tensor::from_slice(&self.inv_std, (1, c, 1, 1), x.device())?;
        x.broadcast_sub(&mean)?.broadcast_mul(&inv)
    }
}

/// States prepared for one network: pooled, standardised and channels-last, `[N * S * S, C]`
/// rows (batch, row, column order). Preparing is done once per state; PPO's K epochs reuse it.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// `[N * S * S, C]`.
    pub rows: Tensor,
    /// States N.
    pub n: usize,
    /// Pooled side S.
    pub side: usize,
}

impl Prepared {
    /// Pools `[N, C, H, W]` states by `pool`, standardises them and lays them out channels-last.
    pub fn new(state: &Tensor, pool: usize, norm: &InputNorm) -> candle_core::Result<Self> {
        let x = norm.apply(&state.avg_pool2d(pool)?)?;
        let (n, c, s, _) = x.dims4()?;
        let rows = x
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((n * s * s, c))?;
        Ok(Prepared { rows, n, side: s })
    }

    /// Several prepared batches as one.
    pub fn cat(items: &[Prepared]) -> candle_core::Result<Self> {
        let rows: Vec<&Tensor> = items.iter().map(|p| &p.rows).collect();
        Ok(Prepared {
            rows: Tensor::cat(&rows, 0)?,
            n: items.iter().map(|p| p.n).sum(),
            side: items.first().map_or(0, |p| p.side),
        })
    }
}

/// A state from the crate's tensor type (`[1, C, H, W]`) as a candle tensor.
pub fn to_candle(t: &crate::engine::Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_slice(t.data(), t.shape(), &Device::Cpu)
}

/// Conv1x1 ReLU, Flatten (channels-last), Linear ReLU.
#[derive(Clone, Debug)]
pub struct Trunk {
    /// Conv1x1 C -> W.
    pub conv: Pointwise,
    /// Linear (S * S * W) -> H.
    pub fc: Linear,
}

impl Trunk {
    fn new(init: &mut Init, name: &str, arch: &Arch) -> candle_core::Result<Self> {
        Ok(Trunk {
            conv: Pointwise::new(
                init,
                &format!("{name}.conv"),
                arch.channels,
                arch.width,
                1.0,
            )?,
            fc: Linear::new(init, &format!("{name}.fc"), arch.flat(), arch.hidden, 1.0)?,
        })
    }

    fn forward(&self, x: &Prepared) -> candle_core::Result<Tensor> {
        let h = self.conv.forward(&x.rows)?.relu()?;
        let h = h.reshape((x.n, ()))?;
        self.fc.forward(&h)?.relu()
    }

    fn params(&self) -> Vec<&Param> {
        [self.conv.params(), self.fc.params()].concat()
    }
}

/// One score per pooled cell, `[N, 1, S, S]`: Conv1x1(C -> W) ReLU on the channels-last rows,
/// Conv3x3(W -> W, pad 1) ReLU, Conv1x1(W -> 1). The SRM's map (before its position bias) and the
/// convolutional actor's score map.
fn cell_scores(
    conv1: &Pointwise,
    conv2: &Conv,
    conv3: &Conv,
    x: &Prepared,
) -> candle_core::Result<Tensor> {
    let (n, s) = (x.n, x.side);
    let h = conv1.forward(&x.rows)?.relu()?;
    let w = h.dim(1)?;
    let h = h
        .reshape((n, s, s, w))?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
    let h = conv2.forward(&h)?.relu()?;
    conv3.forward(&h)
}

/// Conv1x1(C -> W) ReLU, Conv3x3(W -> W, pad 1) ReLU, Conv1x1(W -> 1): a score per pooled
/// cell (`cell_scores`, shared with the SRM); Flatten; Linear(S*S -> G*G): the patches' logits
/// from the score map (its bias is the location prior).
#[derive(Clone, Debug)]
pub struct ConvActor {
    /// Conv1x1 C -> W.
    pub conv1: Pointwise,
    /// Conv3x3 W -> W, pad 1.
    pub conv2: Conv,
    /// Conv1x1 W -> 1.
    pub conv3: Conv,
    /// Linear S*S -> G*G.
    pub head: Linear,
}

impl ConvActor {
    fn new(init: &mut Init, arch: &Arch) -> candle_core::Result<Self> {
        let (w, s) = (arch.width, arch.policy_side());
        Ok(ConvActor {
            conv1: Pointwise::new(init, "actor.conv1", arch.channels, w, 1.0)?,
            conv2: Conv::new(init, "actor.conv2", w, w, 3, 1, 1.0)?,
            conv3: Conv::new(init, "actor.conv3", w, 1, 1, 0, 1.0)?,
            // Small, as the dense actor's logits layer: a near-uniform first policy.
            head: Linear::new(init, "actor.logits", s * s, arch.grid * arch.grid, 0.01)?,
        })
    }

    fn forward(&self, x: &Prepared) -> candle_core::Result<Tensor> {
        let score = cell_scores(&self.conv1, &self.conv2, &self.conv3, x)?;
        self.head.forward(&score.reshape((x.n, x.side * x.side))?)
    }

    fn params(&self) -> Vec<&Param> {
        [
            self.conv1.params(),
            self.conv2.params(),
            self.conv3.params(),
            self.head.params(),
        ]
        .concat()
    }
}

/// The actor: logits over the G x G patches.
#[derive(Clone, Debug)]
pub enum Actor {
    /// [`ActorKind::Dense`]: trunk, then Linear H -> G*G.
    Dense {
        /// Conv1x1, Flatten, Linear, ReLU.
        trunk: Trunk,
        /// Linear H -> G*G.
        logits: Linear,
    },
    /// [`ActorKind::Conv`].
    Conv(ConvActor),
}

impl Actor {
    fn new(init: &mut Init, arch: &Arch) -> candle_core::Result<Self> {
        Ok(match arch.actor {
            ActorKind::Dense => Actor::Dense {
                trunk: Trunk::new(init, "actor", arch)?,
                logits: Linear::new(
                    init,
                    "actor.logits",
                    arch.hidden,
                    arch.grid * arch.grid,
                    0.01,
                )?,
            },
            ActorKind::Conv => Actor::Conv(ConvActor::new(init, arch)?),
        })
    }

    /// Logits `[N, G*G]`.
    fn forward(&self, x: &Prepared) -> candle_core::Result<Tensor> {
        match self {
            Actor::Dense { trunk, logits } => logits.forward(&trunk.forward(x)?),
            Actor::Conv(c) => c.forward(x),
        }
    }

    fn params(&self) -> Vec<&Param> {
        match self {
            Actor::Dense { trunk, logits } => [trunk.params(), logits.params().to_vec()].concat(),
            Actor::Conv(c) => c.params(),
        }
    }
}

/// The policy: actor (logits over the G x G patches) and critic (state value).
#[derive(Clone, Debug)]
pub struct PolicyNet {
    /// Sizes.
    pub arch: Arch,
    /// Input standardisation (after the policy's pooling).
    pub norm: InputNorm,
    /// The actor.
    pub actor: Actor,
    /// The critic's trunk.
    pub critic: Trunk,
    /// Linear H -> 1.
    pub value: Linear,
}

impl PolicyNet {
    /// A new policy with weights drawn from `seed`. The logits layer starts 100x smaller than
    /// He initialisation, so that the first policy is close to uniform over the patches (the
    /// usual PPO practice: no early preference that sampling would then reinforce).
    pub fn new(arch: Arch, norm: InputNorm, seed: u64) -> candle_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut init = Init { rng: &mut rng };
        let actor = Actor::new(&mut init, &arch)?;
        let critic = Trunk::new(&mut init, "critic", &arch)?;
        let value = Linear::new(&mut init, "critic.value", arch.hidden, 1, 0.1)?;
        Ok(PolicyNet {
            arch,
            norm,
            actor,
            critic,
            value,
        })
    }

    /// Prepares full states `[N, C, H, W]` for this network.
    pub fn prepare(&self, state: &Tensor) -> candle_core::Result<Prepared> {
        Prepared::new(state, self.arch.policy_pool, &self.norm)
    }

    /// Logits `[N, G*G]` and values `[N]` of prepared states.
    pub fn forward_prepared(&self, x: &Prepared) -> candle_core::Result<(Tensor, Tensor)> {
        let logits = self.actor.forward(x)?;
        let value = self
            .value
            .forward(&self.critic.forward(x)?)?
            .squeeze(D::Minus1)?;
        Ok((logits, value))
    }

    /// Logits and values of full states `[N, C, H, W]` (what the exported graph computes).
    pub fn forward(&self, state: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        self.forward_prepared(&self.prepare(state)?)
    }

    /// Every trainable weight, in a fixed order.
    pub fn params(&self) -> Vec<&Param> {
        let mut p = self.actor.params();
        p.extend(self.critic.params());
        p.extend(self.value.params());
        p
    }

    /// The variables, for the optimiser.
    pub fn vars(&self) -> Vec<Var> {
        self.params().into_iter().map(|p| p.var.clone()).collect()
    }
}

/// The SRM: a foreground probability per cell of an S x S map over the encoder frame.
#[derive(Clone, Debug)]
pub struct SrmNet {
    /// Sizes.
    pub arch: Arch,
    /// Input standardisation (after the SRM's pooling).
    pub norm: InputNorm,
    /// Conv1x1 C -> W.
    pub conv1: Pointwise,
    /// Conv3x3 W -> W, pad 1.
    pub conv2: Conv,
    /// Conv1x1 W -> 1.
    pub conv3: Conv,
    /// A learned logit per cell, `[1, 1, S, S]`: the location prior.
    pub position: Param,
}

impl SrmNet {
    /// A new SRM with weights drawn from `seed`; the position bias starts at zero.
    pub fn new(arch: Arch, norm: InputNorm, seed: u64) -> candle_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut init = Init { rng: &mut rng };
        let s = arch.srm_side();
        Ok(SrmNet {
            conv1: Pointwise::new(&mut init, "srm.conv1", arch.channels, arch.width, 1.0)?,
            conv2: Conv::new(&mut init, "srm.conv2", arch.width, arch.width, 3, 1, 1.0)?,
            conv3: Conv::new(&mut init, "srm.conv3", arch.width, 1, 1, 0, 0.1)?,
            position: init.uniform("srm.position", &[1, 1, s, s], 0.0)?,
            arch,
            norm,
        })
    }

    /// Prepares full states `[N, C, H, W]` for this network.
    pub fn prepare(&self, state: &Tensor) -> candle_core::Result<Prepared> {
        Prepared::new(state, self.arch.srm_pool, &self.norm)
    }

    /// Logits (before the sigmoid) `[N, 1, S, S]` of prepared states.
    pub fn logits_prepared(&self, x: &Prepared) -> candle_core::Result<Tensor> {
        cell_scores(&self.conv1, &self.conv2, &self.conv3, x)?
            .broadcast_add(self.position.var.as_tensor())
    }

    /// Foreground probabilities `[N, 1, S, S]` of full states `[N, C, H, W]` (what the exported
    /// graph computes).
    pub fn forward(&self, state: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::sigmoid(&self.logits_prepared(&self.prepare(state)?)?)
    }

    /// Every trainable weight, in a fixed order.
    pub fn params(&self) -> Vec<&Param> {
        let mut p: Vec<&Param> = [
            self.conv1.params(),
            self.conv2.params(),
            self.conv3.params(),
        ]
        .concat();
        p.push(&self.position);
        p
    }

    /// The variables, for the optimiser.
    pub fn vars(&self) -> Vec<Var> {
        self.params().into_iter().map(|p| p.var.clone()).collect()
    }
}

/// Converts a candle tensor of f32 to a plain vector (any shape, row-major).
pub fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_seeds() {
        let arch = Arch {
            channels: 3,
            side: 8,
            grid: 2,
            policy_pool: 4,
            srm_pool: 2,
            width: 4,
            hidden: 5,
            actor: ActorKind::Dense,
        };
        assert_eq!(
            (arch.policy_side(), arch.srm_side(), arch.flat()),
            (2, 4, 16)
        );
        let p = PolicyNet::new(arch, InputNorm::identity(3), 7).unwrap();
        let x = Tensor::ones((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let (l, v) = p.forward(&x).unwrap();
        assert_eq!((l.dims(), v.dims()), (&[2, 4][..], &[2][..]));
        let s = SrmNet::new(arch, InputNorm::identity(3), 7).unwrap();
        assert_eq!(s.forward(&x).unwrap().dims(), &[2, 1, 4, 4]);
        // Same seed, same weights; another seed, others.
        let q = PolicyNet::new(arch, InputNorm::identity(3), 7).unwrap();
        let r = PolicyNet::new(arch, InputNorm::identity(3), 8).unwrap();
        let first = |n: &PolicyNet| n.params()[0].values().unwrap();
        assert_eq!(first(&p), first(&q));
        assert_ne!(first(&p), first(&r));
        // The convolutional actor: same outputs' shapes, far fewer weights than the dense one.
        let conv = Arch {
            actor: ActorKind::Conv,
            ..arch
        };
        let c = PolicyNet::new(conv, InputNorm::identity(3), 7).unwrap();
        let (l, v) = c.forward(&x).unwrap();
        assert_eq!((l.dims(), v.dims()), (&[2, 4][..], &[2][..]));
        let count = |n: &PolicyNet| -> usize {
            n.params()
                .iter()
                .map(|p| p.shape().iter().product::<usize>())
                .sum()
        };
        let big = Arch::new(256, 64, 10);
        let dense = PolicyNet::new(big, InputNorm::identity(256), 1).unwrap();
        let small = PolicyNet::new(
            Arch {
                actor: ActorKind::Conv,
                ..big
            },
            InputNorm::identity(256),
            1,
        )
        .unwrap();
        assert!(
            count(&small) + 60_000 < count(&dense),
            "{} vs {}",
            count(&small),
            count(&dense)
        );
        assert!(
            Arch {
                srm_pool: 3,
                ..arch
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn prepared_rows_are_channels_last() {
        // 1 state, 2 channels, 2x2, no pooling: rows are the cells, columns the channels.
        let t = Tensor::from_vec(
            (0..8).map(|v| v as f32).collect(),
            (1, 2, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let p = Prepared::new(&t, 1, &InputNorm::identity(2)).unwrap();
        assert_eq!(
            p.rows.to_vec2::<f32>().unwrap(),
            vec![
                vec![0.0, 4.0],
                vec![1.0, 5.0],
                vec![2.0, 6.0],
                vec![3.0, 7.0]
            ]
        );
    }

    #[test]
    fn norm_standardises_channels() {
        let t = Tensor::from_vec(vec![1f32, 3.0, 5.0, 5.0], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let n = InputNorm::measure(&[t]).unwrap();
        assert_eq!(n.mean, vec![2.0, 5.0]);
        assert_eq!(
            n.inv_std,
            vec![1.0, 1.0],
            "std 1 for channel 0, constant channel 1 keeps 1"
        );
    }
}
