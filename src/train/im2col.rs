//! 3x3 convolutions for training as one matrix product each: a custom candle operation lays out
//! the 3x3 neighbourhood of every cell of a channels-last map as one row (im2col), with its own
//! backward pass (col2im), and candle's matrix product does the rest.
//!
//! Why: candle's CPU convolution, and the same thing built from its `pad`/`narrow`/`cat`, cost
//! 20-45 ms per 32x32 state for the clicker's head (forward and backward, measured on 2 cores),
//! mostly in data movement; these two loops are memory-bound and take a fraction of that.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `[N, S, S, C]` (channels-last) -> `[N * S * S, 9 * C]`: row `(n, y, x)` holds the 3x3
/// neighbourhood at dilation `d`, tap-major (`(ky * 3 + kx) * C + c`), zeros outside the map.
#[derive(Clone, Copy, Debug)]
pub struct Im2Col {
    /// Dilation.
    pub dilation: usize,
}

/// The backward of [`Im2Col`]: `[N * S * S, 9 * C]` -> `[N, S, S, C]`, each row's taps added
/// back into the cells they came from.
#[derive(Clone, Copy, Debug)]
struct Col2Im {
    dilation: usize,
    dims: (usize, usize, usize, usize),
}

/// For each tap, the source index of every output cell along one axis (None: outside).
fn taps(s: usize, d: usize) -> [Vec<Option<usize>>; 3] {
    [0usize, 1, 2].map(|k| {
        (0..s)
            .map(|y| {
                let src = y as isize + (k as isize - 1) * d as isize;
                (0..s as isize).contains(&src).then_some(src as usize)
            })
            .collect()
    })
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("im2col: f32 only"),
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("im2col: the input must be contiguous"),
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, s, s2, c) = layout.shape().dims4()?;
        if s != s2 {
            candle_core::bail!("im2col: square maps only, got {s}x{s2}");
        }
        let x = contiguous(storage, layout)?;
        let t = taps(s, self.dilation);
        let mut out = vec![0f32; n * s * s * 9 * c];
        for b in 0..n {
            for y in 0..s {
                for xx in 0..s {
                    let row = ((b * s + y) * s + xx) * 9 * c;
                    for (ky, tap_y) in t.iter().enumerate() {
                        let Some(sy) = tap_y[y] else { continue };
                        for (kx, tap_x) in t.iter().enumerate() {
                            let Some(sx) = tap_x[xx] else { continue };
                            let src = ((b * s + sy) * s + sx) * c;
                            let dst = row + (ky * 3 + kx) * c;
                            out[dst..dst + c].copy_from_slice(&x[src..src + c]);
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n * s * s, 9 * c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = Col2Im {
            dilation: self.dilation,
            dims: arg.dims4()?,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, s, _, c) = self.dims;
        let g = contiguous(storage, layout)?;
        if g.len() != n * s * s * 9 * c {
            candle_core::bail!("col2im: {} values for {:?}", g.len(), self.dims);
        }
        let t = taps(s, self.dilation);
        let mut out = vec![0f32; n * s * s * c];
        for b in 0..n {
            for y in 0..s {
                for xx in 0..s {
                    let row = ((b * s + y) * s + xx) * 9 * c;
                    for (ky, tap_y) in t.iter().enumerate() {
                        let Some(sy) = tap_y[y] else { continue };
                        for (kx, tap_x) in t.iter().enumerate() {
                            let Some(sx) = tap_x[xx] else { continue };
                            let dst = ((b * s + sy) * s + sx) * c;
                            let src = row + (ky * 3 + kx) * c;
                            for (o, v) in out[dst..dst + c].iter_mut().zip(&g[src..src + c]) {
                                *o += v;
                            }
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, s, s, c))))
    }
}

/// A 3x3 convolution (zero padding `d`, dilation `d`, stride 1) on a channels-last map
/// `[N, S, S, C]`, with weights in ONNX's layout `[Cout, C, 3, 3]`: `[N, S, S, Cout]`.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: &Tensor, dilation: usize) -> Result<Tensor> {
    let (n, s, _, c) = x.dims4()?;
    let cout = weight.dim(0)?;
    let cols = x.contiguous()?.apply_op1(Im2Col { dilation })?;
    let w = weight
        .permute((2, 3, 1, 0))?
        .contiguous()?
        .reshape((9 * c, cout))?;
    cols.matmul(&w)?
        .broadcast_add(bias)?
        .reshape((n, s, s, cout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candles_convolution_forward_and_backward() {
        let dev = Device::Cpu;
        for d in [1usize, 2, 4] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 9, 9), &dev).unwrap()).unwrap();
            let w =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap()).unwrap();
            let b = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap();
            // candle's direct convolution, channels first.
            let reference = x
                .as_tensor()
                .conv2d(w.as_tensor(), d, 1, d, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            let cl = x.as_tensor().permute((0, 2, 3, 1)).unwrap();
            let ours = conv3x3(&cl, w.as_tensor(), &b, d)
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let diff = (&reference - &ours)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "dilation {d}: forward differs by {diff}");
            // Gradients of a weighted sum of the outputs, both ways.
            let weights = Tensor::randn(0f32, 1.0, reference.shape(), &dev).unwrap();
            let g1 = (&reference * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&ours * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w] {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-3, "dilation {d}: gradient differs by {diff}");
            }
        }
    }
}
