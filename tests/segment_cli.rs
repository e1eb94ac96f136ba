//! `alignsam segment` end to end: outputs per image, JSON lines, and bad inputs.
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

mod common;

use std::path::Path;
use std::process::Output;

fn segment(bundle: &Path, args: &[&str], out: &Path) -> Output {
    common::alignsam()
        .args(["segment", "--bundle"])
        .arg(bundle)
        .arg("--out")
        .arg(out)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn writes_mask_overlay_and_json_for_every_image() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = common::root().join("demo/images");
    let out = segment(
        &common::tiny_bundle(),
        &[&demo.to_string_lossy(), "--steps", "4"],
        tmp.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let stem = Path::new(l["image"].as_str().unwrap())
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mask = image::open(tmp.path().join(format!("masks/{stem}.png"))).unwrap();
        assert_eq!(
            (mask.width() as u64, mask.height() as u64),
            (l["width"].as_u64().unwrap(), l["height"].as_u64().unwrap())
        );
        assert!(tmp.path().join(format!("overlays/{stem}.png")).exists());
        let points = l["points"].as_array().unwrap();
        let steps = l["steps"].as_u64().unwrap() as usize;
        assert!(steps <= 4);
        assert_eq!(points.len(), 2 + steps, "2 start points plus one per step");
        assert_eq!(points[0]["origin"], "srm_start");
        assert_eq!(points[0]["label"], "positive");
        assert_eq!(points[1]["label"], "negative");
        assert!(
            ["step_limit", "converged", "time_budget", "no_action_left"]
                .contains(&l["stop_reason"].as_str().unwrap())
        );
        for key in [
            "preprocess_ms",
            "encoder_ms",
            "start_ms",
            "postprocess_ms",
            "total_ms",
        ] {
            assert!(l["ms"][key].as_f64().unwrap() >= 0.0, "{key}");
        }
        assert_eq!(l["ms"]["steps"].as_array().unwrap().len(), steps);
    }
}

#[test]
fn one_bad_image_among_many_is_reported_and_the_rest_done() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    for name in ["ball", "mug"] {
        std::fs::copy(
            common::root().join(format!("demo/images/{name}.png")),
            inputs.join(format!("{name}.png")),
        )
        .unwrap();
    }
    std::fs::write(inputs.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = segment(
        &common::tiny_bundle(),
        &[&inputs.to_string_lossy(), "--steps", "1"],
        &tmp.path().join("out"),
    );
    assert_eq!(out.status.code(), Some(2), "partial failure exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.png: corrupt or unsupported image"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 3 images failed"), "{stderr}");
    assert_eq!(lines(&out).len(), 2);
}

#[test]
fn bad_input_lists_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (arg, expected) in [
        (
            empty.to_string_lossy().into_owned(),
            "directory has no image files",
        ),
        (
            tmp.path().join("missing").to_string_lossy().into_owned(),
            "no such file or directory",
        ),
        (
            format!("{}/*.jpg", empty.display()),
            "pattern matches no files",
        ),
    ] {
        let out = segment(&common::tiny_bundle(), &[&arg], &tmp.path().join("out"));
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{arg}: {stderr}");
    }
    // No input at all: clap refuses.
    let out = segment(&common::tiny_bundle(), &[], &tmp.path().join("out"));
    assert_eq!(out.status.code(), Some(64), "a usage error's own code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("required"));
}

#[test]
fn shared_bundle_on_salient_object_images() {
    let Some(shared) = common::shared() else {
        eprintln!(
            "SKIPPED: ../shared is absent, so segment cannot run on the shared MobileSAM bundle"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let images = shared.join("data/saliency/SOD/images");
    let pattern = format!("{}/10[0-2]*.jpg", images.display());
    let bundle = common::root().join("models/mobilesam-random");
    let out = segment(&bundle, &[&pattern, "--steps", "3"], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = glob::glob(&pattern).unwrap().count();
    assert_eq!(lines(&out).len(), n);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("masks")).unwrap().count(),
        n
    );
}
