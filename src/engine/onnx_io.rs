//! Reading an ONNX file's declared interface, and checking it against a [`ModelSpec`].
//!
//! This runs before any backend sees the file, so that a missing file, a file that is not ONNX,
//! or a model with other inputs than the bundle says gets the same one-line error whichever
//! backend is in use.

use std::path::Path;

use anyhow::{Result, bail};
use prost::Message;
use tract_onnx::pb;

use super::{Dim, ModelSpec, fmt_shape};

/// A graph input or output as the file declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct IoDecl {
    /// Its name.
    pub name: String,
    /// Its element type as ONNX names it ("FLOAT", "INT64", ...).
    pub elem_type: String,
    /// Its declared shape; `None` when the file gives no shape.
    pub shape: Option<Vec<Dim>>,
}

impl IoDecl {
    /// The shape as `[1,N,2]`, or `[?]` when undeclared.
    pub fn shape_string(&self) -> String {
        match &self.shape {
            Some(s) => fmt_shape(s),
            None => "[?]".into(),
        }
    }
}

/// Everything about a model file that `alignsam info` prints and the loaders check.
#[derive(Clone, Debug)]
pub struct DeclaredIo {
    /// Graph inputs (initialisers excluded).
    pub inputs: Vec<IoDecl>,
    /// Graph outputs.
    pub outputs: Vec<IoDecl>,
    /// The default-domain opset version (0 when absent).
    pub opset: i64,
    /// Size of the file in bytes.
    pub file_bytes: u64,
    /// Number of parameters in the initialisers.
    pub parameters: u64,
    /// Number of graph nodes.
    pub nodes: usize,
    /// `producer_name producer_version` from the file.
    pub producer: String,
}

/// The external data files a model's initialisers point at (their `location`, relative to the
/// model file's directory), each once, in order of first use. Models over protobuf's 2 GiB limit
/// (SAM ViT-H's encoder) keep their weights there.
pub fn external_data_files(proto: &pb::ModelProto) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let Some(graph) = &proto.graph else {
        return out;
    };
    for t in &graph.initializer {
        for kv in &t.external_data {
            if kv.key == "location" && !out.contains(&kv.value) {
                out.push(kv.value.clone());
            }
        }
    }
    out
}

/// Reads and decodes an ONNX file, with errors that say which file and what is wrong.
pub fn read_proto(path: &Path) -> Result<(pb::ModelProto, u64)> {
    crate::safe_read::regular_file(path, "model file")?;
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{}: model file not found", path.display()),
        _ => anyhow::anyhow!("{}: cannot read model file: {e}", path.display()),
    })?;
    let proto = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an ONNX model (protobuf decoding failed: {e})",
            path.display()
        )
    })?;
    let graph_ok = proto.graph.as_ref().is_some_and(|g| !g.node.is_empty());
    if !graph_ok {
        bail!(
            "{}: not an ONNX model (no graph in the file)",
            path.display()
        );
    }
    Ok((proto, bytes.len() as u64))
}

fn elem_type_name(t: i32) -> String {
    pb::tensor_proto::DataType::try_from(t)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("type#{t}"))
}

fn decl(v: &pb::ValueInfoProto) -> IoDecl {
    let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    let elem_type = tensor
        .map(|t| elem_type_name(t.elem_type))
        .unwrap_or_else(|| "?".into());
    let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                    Dim::Fixed(*n as usize)
                }
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                    Dim::Symbol(p.clone())
                }
                _ => Dim::Symbol("?".into()),
            })
            .collect()
    });
    IoDecl {
        name: v.name.clone(),
        elem_type,
        shape,
    }
}

/// Describes the declared interface of a decoded model.
pub fn declared_io(proto: &pb::ModelProto, file_bytes: u64) -> DeclaredIo {
    let graph = proto.graph.as_ref().expect("read_proto checked the graph");
    let initialisers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let parameters = graph
        .initializer
        .iter()
        .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
        .sum();
    DeclaredIo {
        inputs: graph
            .input
            .iter()
            .filter(|i| !initialisers.contains(i.name.as_str()))
            .map(decl)
            .collect(),
        outputs: graph.output.iter().map(decl).collect(),
        opset: proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0),
        file_bytes,
        parameters,
        nodes: graph.node.len(),
        producer: format!("{} {}", proto.producer_name, proto.producer_version)
            .trim()
            .to_string(),
    }
}

/// Whether a declared dimension can hold what the spec asks for. A symbolic or unknown
/// declaration admits anything; a fixed one must match a fixed spec dimension exactly, and a
/// fixed declaration cannot serve a symbolic spec dimension (the caller will vary it).
fn dims_compatible(declared: &Dim, wanted: &Dim) -> bool {
    match (declared, wanted) {
        (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
        (Dim::Fixed(_), Dim::Symbol(_)) => false,
        (Dim::Symbol(_), _) => true,
    }
}

fn shapes_compatible(declared: &Option<Vec<Dim>>, wanted: &[Dim]) -> bool {
    match declared {
        None => true,
        Some(d) => {
            d.len() == wanted.len() && d.iter().zip(wanted).all(|(a, b)| dims_compatible(a, b))
        }
    }
}

fn names(decls: &[IoDecl]) -> String {
    let n: Vec<String> = decls
        .iter()
        .map(|d| format!("{}{}", d.name, d.shape_string()))
        .collect();
    n.join(", ")
}

/// Checks the file's declared interface against what the caller needs. The message names the
/// file, the input or output, and lists what the file actually has.
pub fn check_against_spec(path: &Path, io: &DeclaredIo, spec: &ModelSpec) -> Result<()> {
    let p = path.display();
    for input in &spec.inputs {
        match io.inputs.iter().find(|d| d.name == input.name) {
            None if input.optional => {}
            None => bail!(
                "{p}: the {} needs an input '{}' {}, but the model's inputs are: {}",
                spec.role,
                input.name,
                fmt_shape(&input.shape),
                names(&io.inputs)
            ),
            Some(d) => {
                if d.elem_type != "FLOAT" {
                    bail!(
                        "{p}: input '{}' of the {} is {}, expected FLOAT (f32)",
                        d.name,
                        spec.role,
                        d.elem_type
                    );
                }
                if !shapes_compatible(&d.shape, &input.shape) {
                    bail!(
                        "{p}: input '{}' of the {} has shape {} but the bundle needs {}",
                        d.name,
                        spec.role,
                        d.shape_string(),
                        fmt_shape(&input.shape)
                    );
                }
            }
        }
    }
    if let Some(extra) = io
        .inputs
        .iter()
        .find(|d| !spec.inputs.iter().any(|i| i.name == d.name))
    {
        bail!(
            "{p}: the {} has an unexpected input '{}'{} (expected only: {})",
            spec.role,
            extra.name,
            extra.shape_string(),
            spec.inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for output in &spec.outputs {
        match io.outputs.iter().find(|d| d.name == output.name) {
            None => bail!(
                "{p}: the {} needs an output '{}' {}, but the model's outputs are: {}",
                spec.role,
                output.name,
                fmt_shape(&output.shape),
                names(&io.outputs)
            ),
            Some(d) => {
                if d.elem_type != "FLOAT" {
                    bail!(
                        "{p}: output '{}' is {}, expected FLOAT (f32)",
                        d.name,
                        d.elem_type
                    );
                }
                if !shapes_compatible(&d.shape, &output.shape) {
                    bail!(
                        "{p}: output '{}' of the {} has shape {} but the bundle needs {}",
                        d.name,
                        spec.role,
                        d.shape_string(),
                        fmt_shape(&output.shape)
                    );
                }
            }
        }
    }
    Ok(())
}

/// Reads a file's declared interface and checks it against a spec in one go.
pub fn inspect(path: &Path, spec: &ModelSpec) -> Result<(pb::ModelProto, DeclaredIo)> {
    let (proto, bytes) = read_proto(path)?;
    let io = declared_io(&proto, bytes);
    check_against_spec(path, &io, spec)?;
    Ok((proto, io))
}

/// Softmax nodes that sit between a DequantizeLinear and a QuantizeLinear (static QDQ
/// quantisation that included Softmax). tract 0.23.9 folds DequantizeLinear -> Softmax ->
/// QuantizeLinear into a lookup table as if Softmax were element-wise, and computes wrong
/// outputs; the tract backend refuses such files (`tests/qdq_softmax.rs` shows the bug).
pub fn quantized_softmax_nodes(proto: &pb::ModelProto) -> Vec<String> {
    let Some(graph) = &proto.graph else {
        return vec![];
    };
    let produced_by = |value: &str| {
        graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == value))
    };
    let feeds_quantize = |value: &str| {
        graph
            .node
            .iter()
            .any(|c| c.op_type == "QuantizeLinear" && c.input.iter().any(|i| i == value))
    };
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Softmax")
        .filter(|n| {
            let fed_by_dq = n
                .input
                .first()
                .and_then(|i| produced_by(i))
                .is_some_and(|p| p.op_type == "DequantizeLinear");
            let feeds_q = n.output.first().is_some_and(|o| feeds_quantize(o));
            fed_by_dq && feeds_q
        })
        .map(|n| {
            if n.name.is_empty() {
                n.output.first().cloned().unwrap_or_default()
            } else {
                n.name.clone()
            }
        })
        .collect()
}
