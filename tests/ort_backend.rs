//! The ONNX Runtime backend (feature `ort`) against tract on the same models: same interface,
//! same checks, outputs within 1e-4. Needs ORT_DYLIB_PATH (set by .ci/test after .ci/setup).
#![cfg(feature = "ort")]

mod common;

use alignsam::agent::{Agent, ImageOptions, LoopOptions};
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::engine::{BackendKind, EngineOptions};
use common::rel_err;

fn ort_available() -> bool {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        eprintln!(
            "SKIPPED: ORT_DYLIB_PATH is not set, so the ONNX Runtime backend cannot be tested"
        );
        return false;
    }
    true
}

#[test]
fn ort_and_tract_agree_through_the_whole_loop() {
    if !ort_available() {
        return;
    }
    let bundle = Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap();
    let options = EngineOptions { threads: 2 };
    let tract = BackendKind::Tract.create(&options).unwrap();
    let ort = BackendKind::Ort.create(&options).unwrap();
    let a = Agent::load(&bundle, tract.as_ref()).unwrap();
    let b = Agent::load(&bundle, ort.as_ref()).unwrap();
    let image = alignsam::source::load_rgb(
        &common::root().join("tests/fixtures/parity/images/wide_300x200.png"),
    )
    .unwrap();
    let (ea, ga) = a.sam.embed(&image).unwrap();
    let (eb, _) = b.sam.embed(&image).unwrap();
    assert!(
        rel_err(eb.0.data(), ea.0.data()) < 1e-4,
        "embeddings differ"
    );
    let opts = LoopOptions {
        max_steps: 4,
        stop_iou: None,
        ..Default::default()
    };
    let now = std::time::Instant::now();
    let ra = a
        .run_on_embedding(
            &ea,
            &ga,
            &opts,
            ImageOptions {
                started: Some(now),
                ..ImageOptions::default()
            },
        )
        .unwrap();
    let rb = b
        .run_on_embedding(
            &ea,
            &ga,
            &opts,
            ImageOptions {
                started: Some(now),
                ..ImageOptions::default()
            },
        )
        .unwrap();
    let pa: Vec<usize> = ra.points.iter().map(|p| p.patch).collect();
    let pb: Vec<usize> = rb.points.iter().map(|p| p.patch).collect();
    assert_eq!(pa, pb, "same points chosen");
    assert!(
        rel_err(&rb.low_res.data, &ra.low_res.data) < 1e-4,
        "final logits differ"
    );
}

#[test]
fn ort_reports_bad_models_like_tract() {
    if !ort_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("encoder.onnx");
    std::fs::write(&path, b"not a model").unwrap();
    let ort = BackendKind::Ort
        .create(&EngineOptions { threads: 1 })
        .unwrap();
    let bundle = Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap();
    let err = ort
        .load(&path, &alignsam::sam::Encoder::spec(&bundle.manifest))
        .err()
        .expect("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("encoder.onnx: not an ONNX model"), "{msg}");
}
