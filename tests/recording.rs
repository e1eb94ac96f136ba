//! `alignsam run --record FILE.mcap` and `--input FILE.mcap`, with real parts: the recording is
//! read back by an independent reader (the Python `mcap` package, installed by .ci/setup in
//! target/ort-venv; the tests that need it say so and pass where it is absent), a SIGKILL
//! mid-recording leaves what was written before the last complete chunk readable, and a replay
//! gives the same masks and capture times as the run that recorded it.
#![cfg(all(feature = "cli", feature = "mcap"))]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use image::RgbImage;

const TOPICS: [(&str, &str); 4] = [
    ("/alignsam/frame", "foxglove.CompressedImage"),
    ("/alignsam/mask", "foxglove.CompressedImage"),
    ("/alignsam/annotations", "foxglove.ImageAnnotations"),
    ("/alignsam/record", "alignsam.FrameRecord"),
];

/// A Python with the `mcap` package, or `None` (with a message).
fn python_with_mcap() -> Option<PathBuf> {
    let root = common::root();
    let candidates = [root.join("target/ort-venv/bin/python"), "python3".into()];
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import mcap.reader"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    eprintln!("skipped: no Python with the `mcap` package (.ci/setup installs it)");
    None
}

/// What the independent reader says about `file` (tests/support/read_mcap.py).
fn read_back(py: &Path, file: &Path) -> serde_json::Value {
    let o = Command::new(py)
        .arg(common::root().join("tests/support/read_mcap.py"))
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `n` distinct frames of 96 x 64 in `dir`.
fn frames(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        RgbImage::from_fn(96, 64, |x, y| {
            let inside = (x as i64 - 30 - 3 * i as i64).pow(2) + (y as i64 - 30).pow(2) < 300;
            image::Rgb(if inside {
                [220, 40, 40]
            } else {
                [(x * 2) as u8, (y * 3) as u8, 90]
            })
        })
        .save(dir.join(format!("f{i:03}.png")))
        .unwrap();
    }
}

fn run(args: &[&str]) -> Output {
    let mut c = common::alignsam();
    c.arg("run")
        .arg("--bundle")
        .arg(common::tiny_bundle())
        .args(["--steps", "2"])
        .args(args);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn a_recording_has_every_frame_on_every_topic_for_an_independent_reader() {
    let Some(py) = python_with_mcap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    frames(&input, 12);
    let rec = tmp.path().join("out/run.mcap");
    std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
    let o = run(&["--input", &s(&input), "--record", &s(&rec), "--json", "-"]);
    let lines = String::from_utf8_lossy(&o.stdout).lines().count();
    assert_eq!(lines, 12, "one JSON line per frame");
    let r = read_back(&py, &rec);
    assert_eq!(r["complete"], true, "{r}");
    let topics = r["topics"].as_object().unwrap();
    assert_eq!(topics.len(), TOPICS.len(), "{r}");
    for (topic, schema) in TOPICS {
        let t = &topics[topic];
        assert_eq!(t["schema"], schema, "{topic}");
        assert_eq!(t["schema_encoding"], "jsonschema", "{topic}");
        assert_eq!(t["message_encoding"], "json", "{topic}");
        assert_eq!(t["count"], 12, "{topic}: one message per processed frame");
        assert_eq!(t["monotonic"], true, "{topic}: log times in capture order");
    }
    let keys = &topics["/alignsam/frame"]["first_keys"];
    assert_eq!(
        keys,
        &serde_json::json!(["data", "format", "frame_id", "timestamp"])
    );
}

#[test]
fn a_replay_gives_the_same_masks_and_capture_times() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    frames(&input, 5);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let rec = tmp.path().join("rec/run.mcap");
    std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
    let first = run(&[
        "--input",
        &s(&input),
        "--out",
        &s(&a),
        "--save-every",
        "1",
        "--record",
        &s(&rec),
        "--json",
        "-",
    ]);
    let again = run(&[
        "--input",
        &s(&rec),
        "--out",
        &s(&b),
        "--save-every",
        "1",
        "--json",
        "-",
    ]);
    for i in 0..5 {
        let name = format!("masks/frame{i:06}.png");
        let (x, y) = (
            std::fs::read(a.join(&name)).unwrap(),
            std::fs::read(b.join(&name)).unwrap(),
        );
        assert!(x == y, "{name} differs between the run and its replay");
    }
    let times = |o: &Output| -> Vec<f64> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["captured_unix_s"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (t1, t2) = (times(&first), times(&again));
    assert_eq!(t1.len(), 5);
    for (x, y) in t1.iter().zip(&t2) {
        assert!((x - y).abs() < 1e-6, "capture times {t1:?} vs {t2:?}");
    }
}

#[test]
fn a_killed_recording_keeps_its_complete_chunks() {
    let Some(py) = python_with_mcap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    frames(&input, 8);
    let rec = tmp.path().join("rec/run.mcap");
    std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
    let mut child = common::alignsam()
        .arg("run")
        .arg("--bundle")
        .arg(common::tiny_bundle())
        .args([
            "--steps",
            "1",
            "--loop",
            "--fps",
            "40",
            "--input",
            &s(&input),
        ])
        .args(["--record", &s(&rec), "--json", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until 35 frames were processed (the JSON lines: at least three chunks of 10 closed
    // by the writer, whatever the machine's speed), then SIGKILL: no chance to finish the file.
    let start = Instant::now();
    let stdout = child.stdout.take().unwrap();
    let processed = Arc::new(AtomicUsize::new(0));
    let counter = processed.clone();
    std::thread::spawn(move || {
        for _ in BufReader::new(stdout).lines() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    while processed.load(Ordering::SeqCst) < 35 {
        assert!(start.elapsed() < Duration::from_secs(120), "too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let printed = processed.load(Ordering::SeqCst);
    let r = read_back(&py, &rec);
    assert_eq!(
        r["complete"], false,
        "a killed recording has no footer: {r}"
    );
    let topics = r["topics"].as_object().unwrap();
    let frames = topics["/alignsam/frame"]["count"].as_u64().unwrap();
    assert!(
        frames >= 20,
        "{frames} frames readable of {printed} processed: {r}"
    );
    // What is lost is the chunk in progress: at most 10 frames (and those still queued).
    assert!(
        printed as u64 - frames <= 10 + 4 + 1,
        "{frames} readable of {printed}"
    );
    for (topic, _) in TOPICS {
        assert_eq!(topics[topic]["count"], frames, "{topic}: whole frames only");
    }
}
