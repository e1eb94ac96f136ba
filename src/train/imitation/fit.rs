//! The two fits: the trunk on the images (BCE + Dice of the object logits against the object,
//! as the SRM is trained), and the head on the states the rollouts gathered:
//!
//! ```text
//! teacher  cross-entropy of the scores at the patch centres (the free actions) against the
//!          teacher's distribution: each action's depth squared, normalised (listwise: only the
//!          ranking within a state matters, as for the argmax that picks the click)
//! dense    BCE of the score maps against the teacher's depth targets per cell (valid cells)
//! stop     BCE of the stop logit against the rollout's stop target
//! quality  BCE of the quality logit against the mask's true IoU
//! loss = w_teacher * teacher + w_dense * dense + w_stop * stop + w_quality * quality
//! ```

use anyhow::Result;
use candle_core::{D, Device, Tensor};
use candle_nn::Optimizer;
use candle_nn::optim::{AdamW, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::samples::{ImageData, Item, Sample, can_mirror, pooled_batch, state_batch};
use crate::train::clicker_net::{ClickerNet, maps, vars};
use crate::train::ppo::clip_grad_norm;
use crate::train::srm_loss::{bce, dice_bce};
use rand::RngExt;

/// The weights of the head's loss terms and the optimiser's settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FitConfig {
    /// Adam's learning rate.
    pub lr: f64,
    /// States (or images) per batch.
    pub batch: usize,
    /// Weight of the teacher's cross-entropy.
    pub teacher_weight: f32,
    /// Weight of the dense per-cell targets.
    pub dense_weight: f32,
    /// Weight of the stop term.
    pub stop_weight: f32,
    /// Weight of the quality term.
    pub quality_weight: f32,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

fn adam(vars: Vec<candle_core::Var>, c: &FitConfig) -> candle_core::Result<AdamW> {
    AdamW::new(
        vars,
        ParamsAdamW {
            lr: c.lr,
            weight_decay: c.weight_decay,
            ..ParamsAdamW::default()
        },
    )
}

/// The prepared trunk inputs of some images, `[N, T, T, C]`.
fn trunk_input(net: &ClickerNet, images: &[&ImageData]) -> Result<Tensor> {
    let (c, t) = (net.arch.channels, net.arch.trunk_side());
    let mut data = Vec::with_capacity(images.len() * c * t * t);
    for img in images {
        data.extend_from_slice(&img.pooled);
    }
    let pooled = Tensor::from_vec(data, (images.len(), c, t, t), &Device::Cpu)?;
    Ok(net.prepare_pooled(&pooled)?)
}

/// The object targets and validity of some images at the trunk's side, `[N, T, T, 1]`.
fn object_targets(images: &[&ImageData], t: usize) -> Result<(Tensor, Tensor)> {
    let mut target = Vec::with_capacity(images.len() * t * t);
    let mut valid = Vec::with_capacity(images.len() * t * t);
    for img in images {
        target.extend_from_slice(&img.object.map.data);
        valid.extend(img.object.valid.iter().map(|&v| v as u8 as f32));
    }
    let n = images.len();
    Ok((maps(target, n, t, 1)?, maps(valid, n, t, 1)?))
}

/// One epoch of the trunk over `indices` (shuffled); returns the mean loss.
pub fn trunk_epoch(
    net: &ClickerNet,
    opt: &mut AdamW,
    images: &[ImageData],
    indices: &[usize],
    batch: usize,
    rng: &mut StdRng,
) -> Result<f32> {
    let mut order = indices.to_vec();
    order.shuffle(rng);
    let (mut total, mut batches) = (0f32, 0usize);
    for chunk in order.chunks(batch.max(1)) {
        let imgs: Vec<&ImageData> = chunk.iter().map(|&i| &images[i]).collect();
        let out = net.trunk(&trunk_input(net, &imgs)?)?;
        let (t, w) = object_targets(&imgs, net.arch.trunk_side())?;
        let loss = dice_bce(&out.object, &t, &w)?;
        opt.backward_step(&loss.total)?;
        total += loss.bce + loss.dice;
        batches += 1;
    }
    Ok(total / batches.max(1) as f32)
}

/// A new optimiser for the trunk's weights.
pub fn trunk_optimiser(net: &ClickerNet, c: &FitConfig) -> Result<AdamW> {
    Ok(adam(vars(&net.trunk_params()), c)?)
}

/// A new optimiser for the head's weights.
pub fn head_optimiser(net: &ClickerNet, c: &FitConfig) -> Result<AdamW> {
    Ok(adam(vars(&net.head_params()), c)?)
}

/// Mean IoU (at 0.5) of the trunk's object map with the object, over `indices` (NaN for none).
pub fn object_iou(net: &ClickerNet, images: &[ImageData], indices: &[usize]) -> Result<f32> {
    if indices.is_empty() {
        return Ok(f32::NAN);
    }
    let mut sum = 0f32;
    for chunk in indices.chunks(32) {
        let imgs: Vec<&ImageData> = chunk.iter().map(|&i| &images[i]).collect();
        let out = net.trunk(&trunk_input(net, &imgs)?)?;
        let z = out.object.flatten_all()?.to_vec1::<f32>()?;
        let per = z.len() / imgs.len();
        for (img, z) in imgs.iter().zip(z.chunks(per)) {
            sum += crate::agent::ground_truth::binary_iou(
                z.iter()
                    .zip(&img.object.map.data)
                    .zip(&img.object.valid)
                    .filter(|&(_, &v)| v)
                    .map(|((&z, &t), _)| (z > 0.0, t >= 0.5)),
            );
        }
    }
    Ok(sum / indices.len().max(1) as f32)
}

/// Runs a trunk on the images `indices` and keeps their object maps at the head's side.
pub fn cache_object_maps(
    net: &ClickerNet,
    images: &mut [ImageData],
    indices: &[usize],
) -> Result<()> {
    for chunk in indices.chunks(32) {
        let pooled = {
            let refs: Vec<&ImageData> = chunk.iter().map(|&i| &images[i]).collect();
            net.pool(&net.trunk(&trunk_input(net, &refs)?)?)?
        };
        let o = pooled.object.flatten_all()?.to_vec1::<f32>()?;
        let per = o.len() / chunk.len();
        for (k, &i) in chunk.iter().enumerate() {
            images[i].object_map = Some(o[k * per..(k + 1) * per].to_vec());
        }
    }
    Ok(())
}

/// The head's mean losses over an epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct HeadLosses {
    /// Dense score BCE.
    pub dense: f32,
    /// Teacher cross-entropy.
    pub teacher: f32,
    /// Stop BCE.
    pub stop: f32,
    /// Quality BCE.
    pub quality: f32,
}

/// One epoch of the head over `samples` (shuffled).
pub fn head_epoch(
    net: &ClickerNet,
    opt: &mut AdamW,
    images: &[ImageData],
    samples: &[Sample],
    c: &FitConfig,
    rng: &mut StdRng,
) -> Result<HeadLosses> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.shuffle(rng);
    let head_vars = vars(&net.head_params());
    let mut sum = HeadLosses::default();
    let mut batches = 0usize;
    let (s, grid) = (net.arch.map_side(), grid_side(images));
    for chunk in order.chunks(c.batch.max(1)) {
        // Each state as it was or mirrored, by a coin (see `Item::mirrored`).
        let batch: Vec<Item> = chunk
            .iter()
            .map(|&i| {
                let (x, img) = (&samples[i], &images[samples[i].image as usize]);
                if can_mirror(img) && rng.random::<bool>() {
                    Item::mirrored(x, img, s, grid)
                } else {
                    Item::new(x, img)
                }
            })
            .collect();
        let (loss, parts) = head_loss(net, &batch, c)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &head_vars, 1.0)?;
        opt.step(&grads)?;
        sum.dense += parts.dense;
        sum.teacher += parts.teacher;
        sum.stop += parts.stop;
        sum.quality += parts.quality;
        batches += 1;
    }
    let n = batches.max(1) as f32;
    Ok(HeadLosses {
        dense: sum.dense / n,
        teacher: sum.teacher / n,
        stop: sum.stop / n,
        quality: sum.quality / n,
    })
}

/// The side of the patch grid (the images' patch count is its square).
fn grid_side(images: &[ImageData]) -> usize {
    let patches = images.first().map_or(0, |i| i.centre_cells.len());
    (patches as f64).sqrt().round() as usize
}

/// The head's loss on one batch, and its parts' values.
pub fn head_loss(net: &ClickerNet, batch: &[Item], c: &FitConfig) -> Result<(Tensor, HeadLosses)> {
    let arch = &net.arch;
    let (n, s) = (batch.len(), arch.map_side());
    let out = net.head(&pooled_batch(batch, arch)?, &state_batch(batch, arch)?)?;

    // Dense targets over the cells that cover the image.
    let mut target = Vec::with_capacity(n * s * s * 2);
    let mut valid = Vec::with_capacity(n * s * s * 2);
    for item in batch {
        target.extend(item.sample.targets.iter().map(|&v| v as f32 / 255.0));
        valid.extend(item.valid.iter().flat_map(|&v| [v as u8 as f32; 2]));
    }
    let dense = bce(&out.scores, &maps(target, n, s, 2)?, &maps(valid, n, s, 2)?)?;

    // The teacher's distribution over the free actions, against the scores at the patch
    // centres.
    let flat = out.scores.flatten_all()?;
    let mut index = vec![];
    let mut offset = vec![];
    let mut target = vec![];
    for (b, item) in batch.iter().enumerate() {
        let x = &item.sample;
        let free = |a: usize| !x.used.contains(&(a as u16));
        let weight = |a: usize| {
            if free(a) {
                (x.depths[a] as f32).powi(2)
            } else {
                0.0
            }
        };
        let total: f32 = (0..x.depths.len()).map(weight).sum();
        if total <= 0.0 {
            continue;
        }
        for (patch, &cell) in item.centre_cells.iter().enumerate() {
            for label in 0..2 {
                let a = patch * 2 + label;
                index.push(((b * s * s + cell) * 2 + label) as u32);
                offset.push(if free(a) { 0.0 } else { -1e4f32 });
                target.push(weight(a) / total);
            }
        }
    }
    let teacher = if target.is_empty() {
        Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?
    } else {
        let actions = 2 * batch[0].centre_cells.len();
        let k = target.len() / actions;
        let len = index.len();
        let index = Tensor::from_vec(index, len, &Device::Cpu)?;
        let logits = flat.index_select(&index, 0)?.reshape((k, actions))?;
        let logits = (logits + Tensor::from_vec(offset, (k, actions), &Device::Cpu)?)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let q = Tensor::from_vec(target, (k, actions), &Device::Cpu)?;
        ((logp * q)?.sum_all()? / k as f64)?.neg()?
    };

    // Stop (where the rollout gave a target) and quality.
    let stop_t: Vec<f32> = batch
        .iter()
        .map(|x| x.sample.stop.map_or(0.0, |v| v as u8 as f32))
        .collect();
    let stop_w: Vec<f32> = batch
        .iter()
        .map(|x| x.sample.stop.is_some() as u8 as f32)
        .collect();
    let vec1 = |v: Vec<f32>| Tensor::from_vec(v, n, &Device::Cpu);
    let stop = bce(&out.stop, &vec1(stop_t)?, &vec1(stop_w)?)?;
    let quality_t: Vec<f32> = batch.iter().map(|x| x.sample.quality).collect();
    let quality = bce(&out.quality, &vec1(quality_t)?, &vec1(vec![1.0; n])?)?;

    let parts = HeadLosses {
        dense: dense.to_scalar()?,
        teacher: teacher.to_scalar()?,
        stop: stop.to_scalar()?,
        quality: quality.to_scalar()?,
    };
    let total = ((dense * c.dense_weight as f64)?
        + (teacher * c.teacher_weight as f64)?
        + (stop * c.stop_weight as f64)?
        + (quality * c.quality_weight as f64)?)?;
    Ok((total, parts))
}
