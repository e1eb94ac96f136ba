//! Numeric precision of a SAM model: the float export, a quantised file beside it, or the float
//! file computed in half precision.
//!
//! | name | what runs | made by |
//! |---|---|---|
//! | `fp32` | the exported file | `models/export.py` |
//! | `int8` | dynamic int8 (weights int8, activations quantised per run): MatMul, and Conv where the engine has `ConvInteger` (rten, ONNX Runtime; not tract) | `calibration/quantize.py` |
//! | `int8-qdq` | static int8, QDQ format, per-tensor activation ranges calibrated on real images, Softmax kept float | `calibration/quantize.py` |
//! | `f16` | the fp32 file, converted at load by tract's `f32_to_f16` transform (reductions, norms and Softmax stay f32) | nothing: tract only |
//!
//! A variant other than fp32 must pass the accuracy gate (`alignsam gate`) before the runtime
//! uses it: see [`crate::bundle::GateRecord`].

use std::fmt;

/// A precision variant of the SAM encoder and decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// The float32 export (the reference).
    #[default]
    Fp32,
    /// Dynamic int8 quantisation (a separate file).
    Int8,
    /// Static int8 quantisation, QDQ format (a separate file).
    Int8Qdq,
    /// The float32 file computed in float16 (tract's transform at load).
    F16,
}

impl Precision {
    /// Every precision, reference first.
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Int8,
        Precision::Int8Qdq,
        Precision::F16,
    ];

    /// The name on the command line and in bundle.toml.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Int8Qdq => "int8-qdq",
            Precision::F16 => "f16",
        }
    }

    /// Whether the variant is a file of its own (named in bundle.toml), rather than the fp32 file
    /// run differently.
    pub fn has_own_file(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Int8Qdq)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Precision::ALL.iter().map(|p| p.name()).collect();
                format!("unknown precision '{s}' (known: {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        let err = "int4".parse::<Precision>().unwrap_err();
        assert!(err.contains("int4") && err.contains("int8-qdq"), "{err}");
    }
}
