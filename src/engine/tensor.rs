//! The tensor type that crosses the engine boundary: dense, row-major f32.
//!
//! Every model in the SAM interface (and the agent's policy and SRM) takes and returns f32, so one
//! element type keeps the interface small. Backends convert at the boundary.

use anyhow::{Result, bail};

/// An owned, dense, row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that the data fills the shape exactly.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            bail!(
                "tensor of shape {shape:?} needs {expected} values, got {}",
                data.len()
            );
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A tensor holding `values` with shape `[values.len()]`.
    pub fn from_slice(values: &[f32]) -> Self {
        Tensor {
            shape: vec![values.len()],
            data: values.to_vec(),
        }
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Its values, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Takes the values out.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// A borrowed view.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: &self.shape,
            data: &self.data,
        }
    }

    /// The same values under another shape with as many elements.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Self> {
        Tensor::new(shape, self.data)
    }
}

/// A borrowed tensor: what callers hand to [`crate::engine::Model::run`] so that large inputs
/// (the 4 MB image embedding, reused at every step) are not cloned on the caller's side.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Its shape.
    pub shape: &'a [usize],
    /// Its values, row-major; `data.len()` is the product of `shape`.
    pub data: &'a [f32],
}

impl<'a> TensorView<'a> {
    /// Builds a view, checking that the data fills the shape exactly.
    pub fn new(shape: &'a [usize], data: &'a [f32]) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            bail!(
                "tensor view of shape {shape:?} needs {expected} values, got {}",
                data.len()
            );
        }
        Ok(TensorView { shape, data })
    }

    /// Copies into an owned tensor.
    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            shape: self.shape.to_vec(),
            data: self.data.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_mismatched_length() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
        assert!(TensorView::new(&[4], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn reshape_keeps_values() {
        let t = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let r = t.reshaped(vec![4]).unwrap();
        assert_eq!(r.shape(), &[4]);
        assert_eq!(r.data(), &[1.0, 2.0, 3.0, 4.0]);
        assert!(r.reshaped(vec![3]).is_err());
    }
}
