//! Writing ONNX files from Rust: a small graph builder over the protobuf types that tract-onnx
//! already carries (`tract_onnx::pb`, encoded with prost).
//!
//! Used to export trained policies and SRMs, and by tests that need a model with a known
//! behaviour (a policy that always picks one patch, an SRM with a fixed map).

use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use tract_onnx::pb;

/// The opset the builder declares (the same as the SAM exports).
pub const OPSET: i64 = 17;

/// An attribute value for a node.
#[derive(Clone, Debug)]
pub enum Attr {
    /// A single integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A single float.
    Float(f32),
    /// A string.
    Str(String),
}

/// Builds one ONNX graph: declare inputs, add initialisers and nodes, declare outputs, save.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    counter: usize,
}

fn value_info(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    let dims = shape
        .iter()
        .map(|&d| pb::tensor_shape_proto::Dimension {
            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: pb::GraphProto {
                name: name.into(),
                ..Default::default()
            },
            counter: 0,
        }
    }

    /// Declares a float input.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        self.graph.input.push(value_info(name, shape));
        name.into()
    }

    /// Declares a float output produced by `value` (renamed through an Identity if needed).
    pub fn output(&mut self, value: &str, name: &str, shape: &[usize]) {
        if value != name {
            self.node("Identity", &[value], &[name], &[]);
        }
        self.graph.output.push(value_info(name, shape));
    }

    /// Adds an initialiser of `len` elements from their little-endian bytes; returns its name.
    fn initializer(
        &mut self,
        name: &str,
        shape: &[usize],
        len: usize,
        data_type: pb::tensor_proto::DataType,
        raw_data: Vec<u8>,
    ) -> String {
        assert_eq!(
            shape.iter().product::<usize>(),
            len,
            "initialiser {name}: shape and data disagree"
        );
        self.graph.initializer.push(pb::TensorProto {
            name: name.into(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        });
        name.into()
    }

    /// Adds a float initialiser (weights) and returns its name.
    pub fn constant(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(
            name,
            shape,
            data.len(),
            pb::tensor_proto::DataType::Float,
            raw,
        )
    }

    /// Adds an int64 initialiser (shapes for Reshape, axes) and returns its name.
    pub fn constant_i64(&mut self, name: &str, data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let n = data.len();
        self.initializer(name, &[n], n, pb::tensor_proto::DataType::Int64, raw)
    }

    /// Adds a uint8 initialiser (a quantisation zero point) and returns its name.
    pub fn constant_u8(&mut self, name: &str, shape: &[usize], data: &[u8]) -> String {
        let n = data.len();
        self.initializer(
            name,
            shape,
            n,
            pb::tensor_proto::DataType::Uint8,
            data.to_vec(),
        )
    }

    /// Adds a node with explicit output names.
    pub fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        let attribute = attrs
            .iter()
            .map(|(name, a)| {
                use pb::attribute_proto::AttributeType as T;
                let mut p = pb::AttributeProto {
                    name: (*name).into(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.i = *i;
                        p.r#type = T::Int as i32;
                    }
                    Attr::Ints(v) => {
                        p.ints = v.clone();
                        p.r#type = T::Ints as i32;
                    }
                    Attr::Float(f) => {
                        p.f = *f;
                        p.r#type = T::Float as i32;
                    }
                    Attr::Str(s) => {
                        p.s = s.as_bytes().to_vec();
                        p.r#type = T::String as i32;
                    }
                }
                p
            })
            .collect();
        self.counter += 1;
        self.graph.node.push(pb::NodeProto {
            name: format!("{op}_{}", self.counter),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    /// Adds a single-output node and returns its output's (generated) name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = format!("{}_{}_out", op.to_lowercase(), self.counter + 1);
        self.node(op, inputs, &[&out], attrs);
        out
    }

    /// The finished model.
    pub fn into_model(self, producer: &str) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: producer.into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }

    /// Encodes the model (repeated numbers unpacked, as ONNX's proto2 schema has them, which rten
    /// requires; tract's generated types would pack them) and writes it to `path`.
    pub fn save(self, path: &Path, producer: &str) -> Result<()> {
        let bytes = super::onnx_wire::unpacked(&self.into_model(producer).encode_to_vec())
            .with_context(|| format!("{}: re-encoding the model", path.display()))?;
        crate::safe_write::write_bytes_atomic(path, &bytes)
    }
}

/// A model that ignores its input's values and outputs a constant, with the given input and
/// output names and shapes. Tests use it for a policy that always prefers one patch or an SRM
/// with a known map; the input still flows through the graph (times zero) so that no backend
/// prunes it.
pub fn constant_model(
    inputs: &[(&str, &[usize])],
    output: (&str, &[usize]),
    values: &[f32],
) -> GraphBuilder {
    let mut g = GraphBuilder::new("constant");
    let mut zero_terms = vec![];
    for (name, shape) in inputs {
        let x = g.input(name, shape);
        let mean = g.op("ReduceMean", &[&x], &[("keepdims", Attr::Int(0))]);
        let zero = g.constant(&format!("zero_{name}"), &[], &[0.0]);
        zero_terms.push(g.op("Mul", &[&mean, &zero], &[]));
    }
    let (out_name, out_shape) = output;
    let values = g.constant("values", out_shape, values);
    let mut acc = values;
    for z in zero_terms {
        acc = g.op("Add", &[&acc, &z], &[]);
    }
    g.output(&acc, out_name, out_shape);
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{BackendKind, EngineOptions, ModelSpec, Tensor, fixed};

    #[test]
    fn constant_model_runs_in_tract() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.onnx");
        let values: Vec<f32> = (0..6).map(|v| v as f32 * 0.5).collect();
        constant_model(&[("state", &[1, 2, 3, 3])], ("out", &[1, 6]), &values)
            .save(&path, "test")
            .unwrap();
        let backend = BackendKind::Tract
            .create(&EngineOptions { threads: 1 })
            .unwrap();
        let spec = ModelSpec::new("test")
            .input("state", fixed(&[1, 2, 3, 3]))
            .output("out", fixed(&[1, 6]));
        let model = backend.load(&path, &spec).unwrap();
        let x = Tensor::new(vec![1, 2, 3, 3], (0..18).map(|v| v as f32).collect()).unwrap();
        let out = model.run(&[x.view()]).unwrap();
        assert_eq!(out[0].data(), values.as_slice());
    }
}
