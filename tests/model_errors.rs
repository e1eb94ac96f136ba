//! Bad models and manifests give one-line errors that name the file and the problem.
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};

use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::engine::{BackendKind, EngineOptions, Tensor};
use alignsam::sam::Sam;

/// A copy of the tiny bundle in a temporary directory, to break at will.
fn bundle_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

fn load_error(dir: &Path, verify: bool) -> String {
    let result = Bundle::open(
        dir,
        OpenOptions {
            verify_checksums: verify,
            ..OpenOptions::default()
        },
    )
    .and_then(|b| {
        let backend = BackendKind::Tract.create(&EngineOptions { threads: 1 })?;
        Sam::load(&b, backend.as_ref()).map(|_| ())
    });
    let msg = format!("{:#}", result.expect_err("loading should fail"));
    assert!(!msg.contains('\n'), "error should be one line: {msg}");
    msg
}

fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let p = dir.join("bundle.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "manifest lacks {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn missing_model_file() {
    let (_tmp, dir) = bundle_copy();
    std::fs::remove_file(dir.join("encoder.onnx")).unwrap();
    let msg = load_error(&dir, true);
    assert!(
        msg.contains("encoder.onnx") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn corrupt_model_file() {
    let (_tmp, dir) = bundle_copy();
    // Garbage where the decoder should be, with the manifest's checksum updated so that the
    // loader, not the checksum, has to notice.
    std::fs::write(
        dir.join("decoder_lowres.onnx"),
        b"this is not a protobuf \xff\xfe\x00",
    )
    .unwrap();
    let msg = load_error(&dir, false);
    assert!(
        msg.contains("decoder_lowres.onnx") && msg.contains("not an ONNX model"),
        "{msg}"
    );

    // A truncated file: the first half of a real model.
    let (_tmp2, dir2) = bundle_copy();
    let bytes = std::fs::read(dir2.join("encoder.onnx")).unwrap();
    std::fs::write(dir2.join("encoder.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_error(&dir2, false);
    assert!(
        msg.contains("encoder.onnx") && msg.contains("not an ONNX model"),
        "{msg}"
    );

    // An empty file decodes as an empty protobuf message: still not a model.
    let (_tmp3, dir3) = bundle_copy();
    std::fs::write(dir3.join("encoder.onnx"), b"").unwrap();
    let msg = load_error(&dir3, false);
    assert!(
        msg.contains("encoder.onnx") && msg.contains("not an ONNX model"),
        "{msg}"
    );
}

#[test]
fn wrong_checksum() {
    let (_tmp, dir) = bundle_copy();
    let mut bytes = std::fs::read(dir.join("encoder.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.join("encoder.onnx"), bytes).unwrap();
    let msg = load_error(&dir, true);
    assert!(
        msg.contains("encoder.onnx") && msg.contains("checksum mismatch"),
        "{msg}"
    );
}

#[test]
fn wrong_input_shape_in_the_manifest() {
    // The manifest says the encoder takes 512x512 images; the file takes 1024x1024.
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, "size = 1024", "size = 512");
    let msg = load_error(&dir, true);
    assert!(msg.contains("encoder.onnx"), "{msg}");
    assert!(
        msg.contains("input 'image'")
            && msg.contains("[1,3,1024,1024]")
            && msg.contains("[1,3,512,512]"),
        "{msg}"
    );
}

#[test]
fn wrong_embedding_shape_in_the_manifest() {
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, "shape = [32, 64, 64]", "shape = [256, 64, 64]");
    let msg = load_error(&dir, true);
    assert!(
        msg.contains("encoder.onnx") && msg.contains("output 'image_embeddings'"),
        "{msg}"
    );
}

#[test]
fn decoder_form_must_match_the_file() {
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, "form = \"low-res\"", "form = \"standard\"");
    let msg = load_error(&dir, true);
    assert!(
        msg.contains("decoder_lowres.onnx") && msg.contains("no 'masks' output"),
        "{msg}"
    );
}

#[test]
fn a_model_in_place_of_another() {
    // The encoder file given as the decoder: the decoder's inputs are missing.
    let (_tmp, dir) = bundle_copy();
    std::fs::copy(dir.join("encoder.onnx"), dir.join("decoder_lowres.onnx")).unwrap();
    let msg = load_error(&dir, false);
    assert!(
        msg.contains("decoder_lowres.onnx") && msg.contains("needs an input 'image_embeddings'"),
        "{msg}"
    );
}

#[test]
fn wrong_tensor_shape_at_run_time() {
    let bundle = Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap();
    let backend = common::tract(1);
    let sam = Sam::load(&bundle, backend.as_ref()).unwrap();
    let bad = Tensor::zeros(vec![1, 3, 512, 512]);
    let msg = format!("{:#}", sam.encoder.encode(&bad).unwrap_err());
    assert!(
        msg.contains("encoder.onnx")
            && msg.contains("input 'image'")
            && msg.contains("[1, 3, 512, 512]"),
        "{msg}"
    );
}

#[test]
fn cli_reports_one_line_and_fails() {
    let (_tmp, dir) = bundle_copy();
    std::fs::write(dir.join("encoder.onnx"), b"garbage").unwrap();
    let out = common::alignsam()
        .args(["info", "--no-verify"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("encoder.onnx: not an ONNX model"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn malformed_manifest_via_cli() {
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, "[agent]", "[agent\n");
    let out = common::alignsam().arg("info").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bundle.toml: malformed manifest"),
        "{stderr}"
    );
}
