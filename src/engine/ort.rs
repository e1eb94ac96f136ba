//! ONNX Runtime backend (feature `ort`). Filled in by the ONNX Runtime work.
