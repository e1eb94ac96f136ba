//! The ONNX messages that [`super::onnx_build`] writes, declared for prost with proto2's wire
//! format for repeated numbers: one field per value, not packed.
//!
//! tract-onnx's generated types (`tract_onnx::pb`) encode repeated numbers packed (proto3's
//! default). ONNX is a proto2 schema, where they are unpacked unless marked; ONNX Runtime and
//! tract read both, but rten 0.27 rejects packed `dims` and `ints` ("field type mismatch"), so a
//! policy or SRM written with tract's types would not load in rten. A model is built with
//! tract's types, then decoded into these (prost reads either form) and encoded from them.
//! Only the fields the builder sets are declared: decoding drops the others.

use prost::Message;

/// `onnx.ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `onnx.GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
}

/// `onnx.AttributeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
}

/// `onnx.TensorProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, packed = "false", tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, packed = "false", tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(int64, repeated, packed = "false", tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `onnx.ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `onnx.TypeProto`, tensor types only.
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorType>,
}

/// `onnx.TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorType {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `onnx.TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// Re-encodes a model encoded by tract's types with unpacked repeated numbers.
pub fn unpacked(tract_encoded: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
    Ok(ModelProto::decode(tract_encoded)?.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onnx_build::{Attr, GraphBuilder};

    /// `perm = [1, 0]` as AttributeProto.ints (tag 8): packed, it is key (8 << 3) | 2, length 2,
    /// then 1, 0; unpacked, key 8 << 3 before each value.
    #[test]
    fn repeated_numbers_are_written_unpacked_and_read_back_the_same() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", &[1, 4]);
        let y = g.op("Transpose", &[&x], &[("perm", Attr::Ints(vec![1, 0]))]);
        g.output(&y, "y", &[4, 1]);
        let tract_bytes = prost::Message::encode_to_vec(&g.into_model("test"));
        let ours = unpacked(&tract_bytes).unwrap();
        let has = |bytes: &[u8], pattern: &[u8]| bytes.windows(pattern.len()).any(|w| w == pattern);
        assert!(has(&tract_bytes, &[(8 << 3) | 2, 2, 1, 0]));
        assert!(has(&ours, &[8 << 3, 1, 8 << 3, 0]));
        assert!(!has(&ours, &[(8 << 3) | 2, 2, 1, 0]));
        assert_eq!(
            ModelProto::decode(&tract_bytes[..]).unwrap(),
            ModelProto::decode(&ours[..]).unwrap()
        );
    }
}
