//! The learned clicker as a candle network (the runtime's interface is in
//! [`crate::agent::clicker`]); [`super::export::save_clicker`] writes the same computation as
//! ONNX. Maps are channels-last inside (`[N, S, S, C]`), every convolution one matrix product.
//!
//! ```text
//! trunk (per image, side T = H / pool):
//!   E -> AvgPool pool -> norm -> Conv1x1(C->W) ReLU -> Conv3x3 d1 ReLU -> Conv3x3 d2 ReLU  = F
//!   F -> Conv1x1(W->1) + position bias [T, T]                                = object logits
//! head (per state, side S = T / head_pool, the score maps' side):
//!   o = AvgPool(sigmoid(object)), m = AvgPool(sigmoid(mask)), clicks = MaxPool(clicks),
//!   error = [m - o, o - m], the scalars as planes
//!   concat[o, m, clicks, error, scalars] -> Conv1x1(8 -> V) ReLU
//!   -> Conv3x3 d1 ReLU -> Conv3x3 d2 ReLU -> Conv3x3 d4 ReLU                         = G
//!   scores = Conv1x1(V -> 2)(G) + a * error                   ([negative, positive] per cell)
//!   [stop, quality] = Linear(mean G, max G, mean(o * m), mean o, mean m,
//!                            softIoU(o, m) = mean(o m) / mean(o + m - o m), scalars)
//! ```
//!
//! Why this shape:
//! - The object logits are what the clicker must learn that a rule cannot know: where the object
//!   is, from the embedding (the SRM's map is one such guess, trained on few images). The trunk
//!   is trained first on the images alone (BCE + Dice against the object), then frozen: every
//!   DAgger state of an image shares it, so that the head trains on many states cheaply.
//! - The position bias (one learned logit per cell of the frame) is the location prior a small
//!   convolutional network cannot otherwise express, as in the SRM: where a convolution sees no
//!   object (a synthetic demo image, an unseen domain), the map falls back to where objects
//!   usually are.
//! - The head reads the object map, not the trunk's features, and trains on object maps made
//!   by trunks that did not see the image (cross-fitting, see `crate::train::imitation`): on
//!   its own training images a trunk's map is far better than on new ones, and a head trained on
//!   those learns to trust it too much (measured: imitation then lost to the untrained rules on
//!   held-out images). Features of separately trained trunks have no common meaning; their
//!   object probabilities do.
//! - The scores start as a rule (`a` learned, starting at 2; the head's last layer at 0): click
//!   where the mask and the object map disagree most, with the label that fixes it. Imitation
//!   learns the correction: which disagreements a click fixes, given the clicks so far.
//! - The SRM's map is not an input: the bundle's SRM may have been trained on some of the
//!   clicker's training images, where its map is far better than on new ones (the leak the
//!   cross-fitting closes for the object map); the object map takes its place.
//! - The head runs at S = 16 (64 frame pixels a cell, finer than the 10 x 10 patches): on two
//!   cores, candle's training cost per state at 32 x 32 was 10-25 ms, at 16 x 16 it is a few.
//!   Dilated 3x3 convolutions (1, 2, 4) give each cell a view of half the frame.
//! - Stop and quality read global pools and the soft overlap of object map and mask, the
//!   natural estimate of the mask's IoU.

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::im2col::conv3x3;
use super::nets::{Conv, InputNorm, Linear, Param, Pointwise};

/// Channels the head reads.
pub const STATE_CHANNELS: usize = 8;
/// Features of the stop and quality read-out besides the pools.
const GLOBAL_EXTRA: usize = 6;
/// Keeps the soft IoU defined when both maps are empty.
pub const SOFT_IOU_EPS: f32 = 1e-6;

/// Sizes of the clicker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClickerArch {
    /// Embedding channels C.
    pub channels: usize,
    /// Embedding side H (= W).
    pub side: usize,
    /// Average pooling of the embedding before the trunk.
    pub pool: usize,
    /// Trunk width W.
    pub width: usize,
    /// Pooling from the trunk's side to the head's (the score maps').
    pub head_pool: usize,
    /// Head width V.
    pub head_width: usize,
}

impl ClickerArch {
    /// The default sizes for a `channels x side x side` embedding: pools 2 and 2 (32 and 16
    /// for SAM's 64), widths 32 and 24.
    pub fn new(channels: usize, side: usize) -> Self {
        ClickerArch {
            channels,
            side,
            pool: 2,
            width: 32,
            head_pool: 2,
            head_width: 24,
        }
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.pool == 0
            || self.head_pool == 0
            || !self.side.is_multiple_of(self.pool * self.head_pool)
        {
            anyhow::bail!(
                "the clicker's poolings {} and {} must divide the embedding side {}",
                self.pool,
                self.head_pool,
                self.side
            );
        }
        if self.width == 0 || self.head_width == 0 || self.channels == 0 {
            anyhow::bail!("the clicker's sizes must be positive: {self:?}");
        }
        Ok(())
    }

    /// Side of the trunk's maps.
    pub fn trunk_side(&self) -> usize {
        self.side / self.pool
    }

    /// Side S of the score maps.
    pub fn map_side(&self) -> usize {
        self.trunk_side() / self.head_pool
    }

    /// Side of the decoder's low-resolution mask (4x the embedding's).
    pub fn mask_side(&self) -> usize {
        4 * self.side
    }
}

/// A 3x3 convolution's weights in ONNX's layout, its dilation (padding alike).
#[derive(Clone, Debug)]
pub struct Conv3 {
    /// `[out, in, 3, 3]` and `[out]`, as [`Conv`] holds them.
    pub conv: Conv,
}

impl Conv3 {
    fn new(rng: &mut StdRng, name: &str, cin: usize, cout: usize, dilation: usize) -> Self {
        let c = super::nets::conv_he(rng, name, cin, cout, 3, 1.0).expect("valid shapes");
        Conv3 {
            conv: Conv {
                pad: dilation,
                dilation,
                ..c
            },
        }
    }

    /// `[N, S, S, in]` -> `[N, S, S, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.conv;
        conv3x3(
            x,
            c.weight.var.as_tensor(),
            c.bias.var.as_tensor(),
            c.dilation,
        )
    }
}

/// A 1x1 convolution on a channels-last map.
fn pointwise(layer: &Pointwise, x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, s, _, c) = x.dims4()?;
    let y = layer.forward(&x.reshape((n * s * s, c))?)?;
    let out = y.dim(1)?;
    y.reshape((n, s, s, out))
}

/// Average pool by `k` on a channels-last map.
pub fn pool_cl(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    if k == 1 {
        return Ok(x.clone());
    }
    let (n, s, _, c) = x.dims4()?;
    x.reshape((n, s / k, k, s / k, k, c))?.mean(4)?.mean(2)
}

/// The per-image part: features and object logits.
#[derive(Clone, Debug)]
pub struct Trunk {
    /// Conv1x1 C -> W.
    pub conv1: Pointwise,
    /// Conv3x3 W -> W, dilation 1.
    pub conv2: Conv3,
    /// Conv3x3 W -> W, dilation 2.
    pub conv3: Conv3,
    /// Conv1x1 W -> 1: the object logits.
    pub object: Pointwise,
    /// A logit per cell, `[T, T]`: the location prior.
    pub position: Param,
}

/// The per-state part.
#[derive(Clone, Debug)]
pub struct Head {
    /// Conv1x1 8 -> V.
    pub conv1: Pointwise,
    /// Conv3x3 V -> V, dilation 1.
    pub conv2: Conv3,
    /// Conv3x3 V -> V, dilation 2.
    pub conv3: Conv3,
    /// Conv3x3 V -> V, dilation 4.
    pub conv4: Conv3,
    /// Conv1x1 V -> 2: the learned part of the scores (starts at 0).
    pub scores: Pointwise,
    /// `[a]`: the weight of the object-error rule in the scores.
    pub rules: Param,
    /// Linear (2V + 6) -> 2: stop and quality logits.
    pub global: Linear,
}

/// The clicker: trunk and head.
#[derive(Clone, Debug)]
pub struct ClickerNet {
    /// Sizes.
    pub arch: ClickerArch,
    /// Standardisation of the pooled embedding.
    pub norm: InputNorm,
    /// Per image.
    pub trunk: Trunk,
    /// Per state.
    pub head: Head,
}

/// What the trunk computes for a batch of images, channels-last at the trunk's side.
#[derive(Clone, Debug)]
pub struct TrunkOut {
    /// `[N, T, T, W]` features.
    pub features: Tensor,
    /// `[N, T, T, 1]` object logits.
    pub object: Tensor,
}

/// The trunk's output at the head's side, as the head reads it.
#[derive(Clone, Debug)]
pub struct Pooled {
    /// `[N, S, S, 1]` object probabilities.
    pub object: Tensor,
}

/// A batch of states at the head's side, channels-last.
#[derive(Clone, Debug)]
pub struct StateBatch {
    /// `[N, S, S, 1]`: the mask's probability, pooled.
    pub mask_prob: Tensor,
    /// `[N, S, S, 2]`: negative and positive clicks (1 in a click's cell).
    pub clicks: Tensor,
    /// `[N, 2]`: the decoder's IoU prediction, steps / 15.
    pub scalars: Tensor,
}

/// The head's outputs.
#[derive(Clone, Debug)]
pub struct HeadOut {
    /// `[N, S, S, 2]` score logits (negative, positive), channels-last.
    pub scores: Tensor,
    /// `[N]` stop logits.
    pub stop: Tensor,
    /// `[N]` quality logits.
    pub quality: Tensor,
}

impl ClickerNet {
    /// A new clicker with weights drawn from `seed`.
    pub fn new(arch: ClickerArch, norm: InputNorm, seed: u64) -> candle_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let (c, w, v) = (arch.channels, arch.width, arch.head_width);
        let pw = |rng: &mut StdRng, name: &str, cin, cout| {
            super::nets::pointwise_he(rng, name, cin, cout)
        };
        let trunk = Trunk {
            conv1: pw(&mut rng, "clicker.trunk.conv1", c, w)?,
            conv2: Conv3::new(&mut rng, "clicker.trunk.conv2", w, w, 1),
            conv3: Conv3::new(&mut rng, "clicker.trunk.conv3", w, w, 2),
            object: pw(&mut rng, "clicker.trunk.object", w, 1)?,
            position: super::nets::zeros_param(
                "clicker.trunk.position",
                &[arch.trunk_side(), arch.trunk_side()],
            )?,
        };
        let head = Head {
            conv1: pw(&mut rng, "clicker.head.conv1", STATE_CHANNELS, v)?,
            conv2: Conv3::new(&mut rng, "clicker.head.conv2", v, v, 1),
            conv3: Conv3::new(&mut rng, "clicker.head.conv3", v, v, 2),
            conv4: Conv3::new(&mut rng, "clicker.head.conv4", v, v, 4),
            scores: Pointwise {
                weight: super::nets::zeros_param("clicker.head.scores.weight", &[2, v])?,
                bias: super::nets::zeros_param("clicker.head.scores.bias", &[2])?,
            },
            rules: super::nets::const_param("clicker.head.rules", &[1], 2.0)?,
            global: super::nets::linear_he(
                &mut rng,
                "clicker.head.global",
                2 * v + GLOBAL_EXTRA,
                2,
                0.1,
            )?,
        };
        Ok(ClickerNet {
            arch,
            norm,
            trunk,
            head,
        })
    }

    /// The pooled, standardised embedding `[N, T, T, C]` (channels-last) the trunk reads, from
    /// embeddings `[N, C, H, W]`.
    pub fn prepare(&self, embedding: &Tensor) -> candle_core::Result<Tensor> {
        self.prepare_pooled(&embedding.avg_pool2d(self.arch.pool)?)
    }

    /// [`ClickerNet::prepare`] from embeddings already pooled to the trunk's side.
    pub fn prepare_pooled(&self, pooled: &Tensor) -> candle_core::Result<Tensor> {
        self.norm.apply(pooled)?.permute((0, 2, 3, 1))?.contiguous()
    }

    /// The trunk on prepared embeddings.
    pub fn trunk(&self, x: &Tensor) -> candle_core::Result<TrunkOut> {
        let t = &self.trunk;
        let h = pointwise(&t.conv1, x)?.relu()?;
        let h = t.conv2.forward(&h)?.relu()?;
        let features = t.conv3.forward(&h)?.relu()?;
        let (n, s, _, _) = features.dims4()?;
        let bias = t.position.var.as_tensor().reshape((1, s, s, 1))?;
        let object = pointwise(&t.object, &features)?.broadcast_add(&bias)?;
        Ok(TrunkOut {
            features,
            object: object.reshape((n, s, s, 1))?,
        })
    }

    /// The trunk's outputs at the head's side.
    pub fn pool(&self, trunk: &TrunkOut) -> candle_core::Result<Pooled> {
        let k = self.arch.head_pool;
        Ok(Pooled {
            object: pool_cl(&candle_nn::ops::sigmoid(&trunk.object)?, k)?,
        })
    }

    /// The head on a batch of states, with the pooled trunk outputs of their images (one row
    /// each).
    pub fn head(&self, trunk: &Pooled, state: &StateBatch) -> candle_core::Result<HeadOut> {
        let h = &self.head;
        let o = &trunk.object;
        let m = &state.mask_prob;
        let (n, s, _, _) = m.dims4()?;
        let planes = state
            .scalars
            .reshape((n, 1, 1, 2))?
            .broadcast_as((n, s, s, 2))?
            .contiguous()?;
        let error = Tensor::cat(&[(m - o)?, (o - m)?], 3)?;
        let x = Tensor::cat(&[o, m, &state.clicks, &error, &planes], 3)?;
        let g = pointwise(&h.conv1, &x)?.relu()?;
        let g = h.conv2.forward(&g)?.relu()?;
        let g = h.conv3.forward(&g)?.relu()?;
        let g = h.conv4.forward(&g)?.relu()?;
        let scores = (pointwise(&h.scores, &g)? + error.broadcast_mul(h.rules.var.as_tensor())?)?;
        let v = g.dim(3)?;
        let flat = g.reshape((n, s * s, v))?;
        let mean_of = |t: &Tensor| t.reshape((n, s * s))?.mean_keepdim(1);
        let om = (o * m)?;
        let overlap = mean_of(&om)?;
        let union = (mean_of(&((o + m)? - &om)?)? + SOFT_IOU_EPS as f64)?;
        let soft_iou = (&overlap / union)?;
        let features = Tensor::cat(
            &[
                &flat.mean(1)?,
                &flat.max(1)?,
                &overlap,
                &mean_of(o)?,
                &mean_of(m)?,
                &soft_iou,
                &state.scalars,
            ],
            1,
        )?;
        let out = h.global.forward(&features)?;
        Ok(HeadOut {
            scores,
            stop: out.narrow(1, 0, 1)?.squeeze(1)?,
            quality: out.narrow(1, 1, 1)?.squeeze(1)?,
        })
    }

    /// The whole network on the runtime's inputs (what the exported graph computes): embedding
    /// `[N, C, H, W]`, mask logits `[N, 1, 4H, 4W]`, clicks `[N, 2, H, W]`, scalars `[N, 2]`.
    pub fn forward(
        &self,
        embedding: &Tensor,
        mask: &Tensor,
        clicks: &Tensor,
        scalars: &Tensor,
    ) -> candle_core::Result<HeadOut> {
        let trunk = self.pool(&self.trunk(&self.prepare(embedding)?)?)?;
        let state = self.state(mask, clicks, scalars)?;
        self.head(&trunk, &state)
    }

    /// The runtime's state inputs (channels first) pooled to the head's side, channels-last.
    pub fn state(
        &self,
        mask: &Tensor,
        clicks: &Tensor,
        scalars: &Tensor,
    ) -> candle_core::Result<StateBatch> {
        let k = self.arch.side / self.arch.map_side();
        let mask_k = self.arch.mask_side() / self.arch.map_side();
        let cl = |t: Tensor| t.permute((0, 2, 3, 1))?.contiguous();
        Ok(StateBatch {
            mask_prob: cl(candle_nn::ops::sigmoid(mask)?.avg_pool2d(mask_k)?)?,
            clicks: cl(clicks.max_pool2d(k)?)?,
            scalars: scalars.clone(),
        })
    }

    /// The trunk's weights, in a fixed order.
    pub fn trunk_params(&self) -> Vec<&Param> {
        let t = &self.trunk;
        let mut p = t.conv1.params().to_vec();
        p.extend(t.conv2.conv.params());
        p.extend(t.conv3.conv.params());
        p.extend(t.object.params());
        p.push(&t.position);
        p
    }

    /// The head's weights, in a fixed order.
    pub fn head_params(&self) -> Vec<&Param> {
        let h = &self.head;
        let mut p = h.conv1.params().to_vec();
        for c in [&h.conv2, &h.conv3, &h.conv4] {
            p.extend(c.conv.params());
        }
        p.extend(h.scores.params());
        p.push(&h.rules);
        p.extend(h.global.params());
        p
    }

    /// Every weight.
    pub fn params(&self) -> Vec<&Param> {
        let mut p = self.trunk_params();
        p.extend(self.head_params());
        p
    }
}

/// The variables of some parameters, for an optimiser.
pub fn vars(params: &[&Param]) -> Vec<Var> {
    params.iter().map(|p| p.var.clone()).collect()
}

/// A channels-last `[N, S, S, K]` tensor from row-major data.
pub fn maps(data: Vec<f32>, n: usize, s: usize, k: usize) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, (n, s, s, k), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_the_rules_at_start() {
        let arch = ClickerArch {
            channels: 3,
            side: 16,
            pool: 2,
            width: 4,
            head_pool: 2,
            head_width: 5,
        };
        arch.validate().unwrap();
        assert_eq!(
            (arch.trunk_side(), arch.map_side(), arch.mask_side()),
            (8, 4, 64)
        );
        let net = ClickerNet::new(arch, InputNorm::identity(3), 7).unwrap();
        let dev = Device::Cpu;
        let e = Tensor::randn(0f32, 1.0, (2, 3, 16, 16), &dev).unwrap();
        let mask = Tensor::randn(0f32, 3.0, (2, 1, 64, 64), &dev).unwrap();
        let clicks = Tensor::zeros((2, 2, 16, 16), candle_core::DType::F32, &dev).unwrap();
        let scalars = Tensor::new(&[[0.5f32, 0.0], [0.9, 1.0]], &dev).unwrap();
        let out = net.forward(&e, &mask, &clicks, &scalars).unwrap();
        assert_eq!(out.scores.dims(), &[2, 4, 4, 2]);
        assert_eq!((out.stop.dims(), out.quality.dims()), (&[2][..], &[2][..]));
        // At start the scores are the rule, 2 * error: the positive map is 2 * (o - m), the
        // negative its opposite.
        let trunk = net
            .pool(&net.trunk(&net.prepare(&e).unwrap()).unwrap())
            .unwrap();
        let st = net.state(&mask, &clicks, &scalars).unwrap();
        let expected = ((&trunk.object - &st.mask_prob).unwrap() * 2.0).unwrap();
        let positive = out.scores.narrow(3, 1, 1).unwrap();
        let diff = (positive - expected).unwrap().abs().unwrap();
        assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
        assert_eq!(
            net.params().len(),
            net.trunk_params().len() + net.head_params().len()
        );
    }
}
