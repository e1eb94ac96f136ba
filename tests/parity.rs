//! Numerical parity with the reference pipeline (`segment_anything.SamPredictor`):
//! preprocessing, encoder, decoder (both forms), prompt transform and postprocessing.
//!
//! Fixtures come from `tests/parity/make_fixtures.py` (see tests/parity/README.md): a tiny
//! SAM-interface bundle (models/tiny, the real prompt encoder and mask decoder at width 32) run
//! through PyTorch, and the full-size shared MobileSAM models run through ONNX Runtime.
//! Requirements: embeddings and low-res logits within 1e-4 of the reference (relative to its
//! largest magnitude); masks identical except along boundaries, IoU >= 0.999.

mod common;

use std::path::{Path, PathBuf};

use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::engine::{BackendKind, EngineOptions};
use alignsam::sam::{self, FrameGeometry, FullResDecoder, Map, PointLabel, PromptPoint, Sam};
use common::{Fixture, iou, off_boundary_mismatches, rel_err};

const TOL: f64 = 1e-4;

fn fixtures(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {}", dir.display());
    v
}

fn image_for(fixture: &Path) -> PathBuf {
    let stem = fixture.file_stem().unwrap().to_string_lossy().into_owned();
    common::root()
        .join("tests/fixtures/parity/images")
        .join(format!("{stem}.png"))
}

fn prompt(fx: &Fixture, k: usize) -> Vec<PromptPoint> {
    let (_, pts) = fx.f32(&format!("prompt{k}.points"));
    let (_, labels) = fx.f32(&format!("prompt{k}.labels"));
    pts.chunks(2)
        .zip(labels)
        .map(|(p, l)| PromptPoint {
            x: p[0] as f64,
            y: p[1] as f64,
            label: if l > 0.5 {
                PointLabel::Positive
            } else {
                PointLabel::Negative
            },
        })
        .collect()
}

fn map_of(fx: &Fixture, name: &str) -> Map {
    let (shape, data) = fx.f32(name);
    Map {
        height: shape[shape.len() - 2],
        width: shape[shape.len() - 1],
        data,
    }
}

/// The reference mask, stored bit-packed (`np.packbits(mask, axis=1)`: one row of
/// `ceil(w / 8)` bytes per image row, first pixel in the most significant bit).
fn reference_mask(fx: &Fixture, k: usize, h: usize, w: usize) -> Vec<bool> {
    let (shape, packed) = fx.u8(&format!("prompt{k}.mask_packed"));
    let row = w.div_ceil(8);
    assert_eq!(shape, vec![h, row], "packed mask shape");
    (0..h * w)
        .map(|i| (packed[(i / w) * row + (i % w) / 8] >> (7 - (i % w) % 8)) & 1 == 1)
        .collect()
}

fn check_mask(what: &str, actual: &[bool], fx: &Fixture, k: usize, geometry: &FrameGeometry) {
    let (h, w) = geometry.original;
    let reference = reference_mask(fx, k, h, w);
    let score = iou(actual, &reference);
    let off = off_boundary_mismatches(actual, &reference, w, h);
    assert!(score >= 0.999, "{what}: mask IoU {score} < 0.999");
    assert_eq!(
        off, 0,
        "{what}: {off} mismatched pixels away from the mask boundary"
    );
}

/// Runs one fixture's prompts through `sam` and compares everything with the reference.
/// `embedding_ref` compares the full embedding, or every 4th value for the full-size models.
fn check_prompts(
    sam: &Sam,
    fx: &Fixture,
    embedding: &sam::Embedding,
    geometry: &FrameGeometry,
    name: &str,
) {
    for k in 0..2 {
        let points = prompt(fx, k);
        let (coords, _) = sam::decoder::point_tensors(&points, geometry);
        let (_, frame_ref) = fx.f32(&format!("prompt{k}.frame_coords"));
        assert!(
            rel_err(coords.data(), &frame_ref) < 1e-6,
            "{name} prompt{k}: frame coordinates"
        );

        // Prompt 1 feeds back prompt 0's reference logits, so errors do not compound.
        let (_, has_mask) = fx.f32(&format!("prompt{k}.has_mask_input"));
        let mask_input = (has_mask[0] > 0.5).then(|| map_of(fx, "prompt0.low_res_logits"));
        let low = sam
            .decoder
            .decode(embedding, &points, mask_input.as_ref(), geometry)
            .unwrap();
        let reference = map_of(fx, &format!("prompt{k}.low_res_logits"));
        let err = rel_err(&low.logits.data, &reference.data);
        assert!(
            err <= TOL,
            "{name} prompt{k}: low-res logits differ by {err:e} (relative)"
        );
        let (_, iou_ref) = fx.f32(&format!("prompt{k}.iou"));
        assert!(
            (low.iou - iou_ref[0]).abs() <= 1e-4 * iou_ref[0].abs().max(1.0),
            "{name} prompt{k}: iou {} vs {}",
            low.iou,
            iou_ref[0]
        );

        let mask =
            sam::postprocess::threshold(&sam::postprocess::upscale_logits(&low.logits, geometry));
        check_mask(&format!("{name} prompt{k}"), &mask, fx, k, geometry);
    }
}

/// Every pure-Rust backend this build has: tract always, rten with the `rten` feature. Each
/// must match the references on its own.
fn backends() -> Vec<Box<dyn alignsam::engine::Backend>> {
    let kinds = [
        BackendKind::Tract,
        #[cfg(feature = "rten")]
        BackendKind::Rten,
    ];
    kinds
        .iter()
        .map(|k| k.create(&EngineOptions { threads: 2 }).unwrap())
        .collect()
}

#[test]
fn tiny_bundle_matches_the_pytorch_reference() {
    let bundle = Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap();
    for backend in backends() {
        tiny_matches_with(&bundle, backend.as_ref());
    }
}

fn tiny_matches_with(bundle: &Bundle, backend: &dyn alignsam::engine::Backend) {
    let sam = Sam::load(bundle, backend).unwrap();
    for path in fixtures(&common::root().join("tests/fixtures/parity/tiny")) {
        let fx = Fixture::open(&path);
        let name = format!(
            "{} ({})",
            path.file_stem().unwrap().to_string_lossy(),
            backend.name()
        );
        let image = alignsam::source::load_rgb(&image_for(&path)).unwrap();

        let (input, geometry) = sam::preprocess::preprocess(&image, &sam.preprocess).unwrap();
        let sum: f64 = input.data().iter().map(|&v| v as f64).sum();
        let abs_sum: f64 = input.data().iter().map(|&v| v.abs() as f64).sum();
        let (_, sum_ref) = fx.f32("preprocessed_sum");
        let (_, abs_ref) = fx.f32("preprocessed_abs_sum");
        assert!(
            (sum - sum_ref[0] as f64).abs() <= 1e-5 * abs_ref[0] as f64,
            "{name}: preprocessed sum {sum} vs {}",
            sum_ref[0]
        );
        assert!(
            (abs_sum / abs_ref[0] as f64 - 1.0).abs() < 1e-5,
            "{name}: preprocessed |sum| {abs_sum} vs {}",
            abs_ref[0]
        );

        let embedding = sam.encoder.encode(&input).unwrap();
        let (_, emb_ref) = fx.f32("embedding");
        let err = rel_err(embedding.0.data(), &emb_ref);
        assert!(
            err <= TOL,
            "{name}: embedding differs by {err:e} (relative)"
        );

        check_prompts(&sam, &fx, &embedding, &geometry, &name);
    }
}

/// The standard decoder (with the full-size `masks` output) next to the low-res one: the same
/// logits through the pruned path, and full-size masks equal to the reference's.
#[test]
fn tiny_standard_decoder_matches_in_both_uses() {
    let bundle = Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap();
    let backend = common::tract(2);
    let mut manifest = bundle.manifest.clone();
    manifest.models.decoder.file = "decoder.onnx".into();
    manifest.models.decoder.form = alignsam::bundle::DecoderForm::Standard;
    let standard_path = bundle.path("decoder.onnx");
    let pruned = sam::Decoder::load(backend.as_ref(), &standard_path, &manifest).unwrap();
    let full = FullResDecoder::new(backend.as_ref(), &standard_path, &manifest);
    let sam_lowres = Sam::load(&bundle, backend.as_ref()).unwrap();
    let sam_pruned = Sam {
        decoder: pruned,
        ..sam_lowres
    };

    for path in fixtures(&common::root().join("tests/fixtures/parity/tiny")) {
        let fx = Fixture::open(&path);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let image = alignsam::source::load_rgb(&image_for(&path)).unwrap();
        let (embedding, geometry) = sam_pruned.embed(&image).unwrap();
        check_prompts(
            &sam_pruned,
            &fx,
            &embedding,
            &geometry,
            &format!("{name} (standard, pruned)"),
        );

        let points = prompt(&fx, 0);
        let (low, masks) = full.decode(&embedding, &points, None, &geometry).unwrap();
        let reference = map_of(&fx, "prompt0.low_res_logits");
        assert!(
            rel_err(&low.logits.data, &reference.data) <= TOL,
            "{name}: standard decoder low-res output"
        );
        check_mask(
            &format!("{name} (standard, full-size output)"),
            &sam::postprocess::threshold(&masks),
            &fx,
            0,
            &geometry,
        );
    }
}

#[test]
fn shared_mobilesam_matches_onnx_runtime_reference() {
    let Some(shared) = common::shared() else {
        eprintln!(
            "SKIPPED: ../shared is absent, so the full-size MobileSAM parity test cannot run"
        );
        return;
    };
    let models = shared.join("models/mobilesam-random");
    let fx_dir = common::root().join("tests/fixtures/parity/mobilesam");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx_dir.join("models.json")).unwrap())
            .unwrap();
    for file in ["encoder.onnx", "decoder.onnx"] {
        let actual = alignsam::bundle::sha256_file(&models.join(file)).unwrap();
        let want = expected[file]
            .as_str()
            .unwrap_or_else(|| panic!("models.json lacks {file}"));
        assert_eq!(
            actual, want,
            "{file} is not the model the references were made with"
        );
    }
    let bundle = Bundle::open(&models, OpenOptions::default()).unwrap();
    for backend in backends() {
        mobilesam_matches_with(&bundle, &fx_dir, backend.as_ref());
    }
}

fn mobilesam_matches_with(bundle: &Bundle, fx_dir: &Path, backend: &dyn alignsam::engine::Backend) {
    let sam = Sam::load(bundle, backend).unwrap();
    for path in fixtures(fx_dir) {
        let fx = Fixture::open(&path);
        let name = format!(
            "mobilesam {} ({})",
            path.file_stem().unwrap().to_string_lossy(),
            backend.name()
        );
        let image = alignsam::source::load_rgb(&image_for(&path)).unwrap();
        let (embedding, geometry) = sam.embed(&image).unwrap();
        let strided: Vec<f32> = embedding.0.data().iter().step_by(4).copied().collect();
        let (_, emb_ref) = fx.f32("embedding_strided");
        let err = rel_err(&strided, &emb_ref);
        assert!(
            err <= TOL,
            "{name}: embedding differs by {err:e} (relative)"
        );
        check_prompts(&sam, &fx, &embedding, &geometry, &name);
    }
}
