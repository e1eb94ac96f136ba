//! The manifest is inferred in two places: `alignsam bundle` (src/bundle) and
//! `models/export.py`'s `write_bundle`, which wrote the committed manifests. Run on the same
//! ONNX files, the two must describe them the same way: shapes, decoder form, agent entries,
//! checksums. (Precision variants and gate records are added later, by calibration/quantize.py
//! and `alignsam gate --record`, and the clicker's stop threshold and the best patch by
//! `alignsam train`: they are left out of the comparison.)
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

mod common;

use std::path::Path;

use alignsam::bundle::Manifest;

fn manifest(path: &Path) -> Manifest {
    let text = std::fs::read_to_string(path).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `alignsam bundle` on a copy of `bundle`'s ONNX files (no manifest), with the committed
/// manifest's name and description, against the committed manifest.
fn check_writers_agree(bundle: &Path) {
    let mut committed = manifest(&bundle.join("bundle.toml"));
    committed.models.encoder.variants.clear();
    committed.models.decoder.variants.clear();
    committed.gate.clear();
    committed.agent.best_patch = None;
    let trained_stop = committed.models.clicker.as_ref().map(|c| c.stop_threshold);
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(bundle).unwrap() {
        let p = entry.unwrap().path();
        let variant = p.to_string_lossy().contains(".int8");
        if p.extension().is_some_and(|e| e == "onnx") && !variant {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let out = common::alignsam()
        .arg("bundle")
        .arg(tmp.path())
        .args([
            "--name",
            &committed.name,
            "--description",
            &committed.description,
        ])
        .args(["--grid", &committed.agent.grid.to_string()])
        .args(["--max-steps", &committed.agent.max_steps.to_string()])
        .args(["--kind", committed.agent.kind.as_str()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut inferred = manifest(&tmp.path().join("bundle.toml"));
    if let (Some(c), Some(t)) = (inferred.models.clicker.as_mut(), trained_stop) {
        c.stop_threshold = t;
    }
    assert_eq!(
        inferred,
        committed,
        "{}: alignsam bundle and models/export.py disagree",
        bundle.display()
    );
}

#[test]
fn rust_and_python_manifest_writers_agree_on_the_tiny_bundle() {
    check_writers_agree(&common::tiny_bundle());
}

#[test]
fn rust_and_python_manifest_writers_agree_on_the_small_sam_bundle() {
    check_writers_agree(&common::root().join("models").join("small-sam"));
}
