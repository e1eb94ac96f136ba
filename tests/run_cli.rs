//! `alignsam run` end to end on the tiny bundle: image sequences and Y4M streams give one JSON
//! line per frame, the summary's counts add up, a truncated stream ends with the right exit code
//! after its whole frames, and temporal reuse warm-starts every frame after the first.
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

mod common;

use std::path::Path;

use alignsam::source::pixel::Chroma;
use alignsam::source::y4m::{Y4mHeader, Y4mWriter};
use image::RgbImage;

fn frame(i: u32) -> RgbImage {
    // A disc moving to the right on a gradient: a tiny "video".
    RgbImage::from_fn(96, 64, |x, y| {
        let (cx, cy) = (30.0 + 4.0 * i as f32, 32.0);
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        if d < 14.0 {
            image::Rgb([220, 40, 40])
        } else {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, 120])
        }
    })
}

fn write_y4m(path: &Path, frames: u32) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = Y4mWriter::new(file, Y4mHeader::new(96, 64, (25, 1), Chroma::C420)).unwrap();
    for i in 0..frames {
        w.write_rgb(&frame(i)).unwrap();
    }
    w.into_inner().unwrap();
}

struct Run {
    code: Option<i32>,
    lines: Vec<serde_json::Value>,
    summary: serde_json::Value,
    stderr: String,
}

fn run(input: &str, extra: &[&str], out: &Path) -> Run {
    let output = common::alignsam()
        .args(["run", "--bundle"])
        .arg(common::tiny_bundle())
        .args(["--input", input, "--threads", "1", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    Run {
        code: output.status.code(),
        lines,
        summary,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn counts_add_up(r: &Run) {
    let s = &r.summary;
    let (read, processed, dropped) = (
        s["frames_read"].as_u64().unwrap(),
        s["frames_processed"].as_u64().unwrap(),
        s["frames_dropped"].as_u64().unwrap(),
    );
    assert_eq!(processed + dropped, read, "{s}");
    assert_eq!(
        processed as usize,
        r.lines.len(),
        "one JSON line per processed frame"
    );
}

#[test]
fn image_sequence_gives_one_line_per_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..4 {
        frame(i).save(frames.join(format!("f{i}.png"))).unwrap();
    }
    let r = run(
        &frames.to_string_lossy(),
        &["--save-every", "2", "--steps", "3"],
        &tmp.path().join("out"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.lines.len(), 4);
    counts_add_up(&r);
    for (i, l) in r.lines.iter().enumerate() {
        assert_eq!(l["frame"].as_u64(), Some(i as u64));
        assert!(l["steps"].as_u64().unwrap() <= 3);
        assert!(l["points"].as_array().unwrap().len() >= 2);
        assert!(l["stop_reason"].is_string() && l["ms"]["total_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(l["warm_start"].as_bool(), Some(false));
    }
    // Every 2nd frame saved: frames 0 and 2.
    assert!(tmp.path().join("out/overlays/frame000002.png").exists());
    assert!(!tmp.path().join("out/overlays/frame000001.png").exists());
}

#[test]
fn y4m_file_and_temporal_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let y4m = tmp.path().join("clip.y4m");
    write_y4m(&y4m, 5);
    let r = run(
        &y4m.to_string_lossy(),
        &["--reuse", "--steps", "4"],
        &tmp.path().join("out"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.lines.len(), 5);
    counts_add_up(&r);
    let warm: Vec<bool> = r
        .lines
        .iter()
        .map(|l| l["warm_start"].as_bool().unwrap())
        .collect();
    assert_eq!(warm, [false, true, true, true, true]);
    // Warm-started frames begin from the previous frame's points.
    let origin = r.lines[1]["points"][0]["origin"].as_str().unwrap();
    assert_eq!(origin, "previous_frame");
}

#[test]
fn truncated_y4m_ends_after_the_whole_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let y4m = tmp.path().join("clip.y4m");
    write_y4m(&y4m, 3);
    let bytes = std::fs::read(&y4m).unwrap();
    std::fs::write(&y4m, &bytes[..bytes.len() - 1000]).unwrap();
    let r = run(
        &y4m.to_string_lossy(),
        &["--steps", "2"],
        &tmp.path().join("out"),
    );
    assert_eq!(
        r.code,
        Some(alignsam::pipeline::EXIT_SOURCE_FAILED as i32),
        "{}",
        r.stderr
    );
    assert_eq!(r.lines.len(), 2, "the two whole frames are processed");
    counts_add_up(&r);
    assert!(
        r.summary["source_error"]
            .as_str()
            .unwrap()
            .contains("clip.y4m"),
        "{}",
        r.summary
    );
}

#[test]
fn max_frames_stops_and_counts_the_rest_as_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let y4m = tmp.path().join("clip.y4m");
    write_y4m(&y4m, 8);
    let r = run(
        &y4m.to_string_lossy(),
        &["--max-frames", "2", "--steps", "1"],
        &tmp.path().join("out"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.lines.len(), 2);
    counts_add_up(&r);
    assert_eq!(r.summary["stop"].as_str(), Some("requested"));
}

#[test]
fn missing_camera_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let output = common::alignsam()
        .args(["run", "--bundle"])
        .arg(common::tiny_bundle())
        .args(["--input", "/dev/video77"])
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/dev/video77"), "{stderr}");
}
