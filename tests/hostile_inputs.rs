//! Hostile and unusual inputs through the CLI, one test per finding of the hardening issue and per
//! class of bad input: outputs that would overwrite inputs, names that collide, writes cut short,
//! files that are not regular files, images too elongated for SAM's resize, sizes that would
//! drive allocation, external data outside the checksum, out-of-range options, odd file names
//! and closed pipes. Each case must end with a clear error naming the file or option, in bounded
//! time, and leave the user's files as they were.
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use image::{GrayImage, RgbImage};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `alignsam` with `args`, killing it (and failing) after `limit`: a hang is a failure here,
/// not a stuck test run.
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child: Child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            child.kill().ok();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (killed); stderr: {}",
                text(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alignsam(args: &[&str]) -> Command {
    let mut c = common::alignsam();
    c.args(args);
    c
}

fn tiny() -> String {
    common::tiny_bundle().to_string_lossy().into_owned()
}

/// `alignsam segment --bundle <tiny> INPUT --out OUT EXTRA...`, killed after `limit_s` seconds.
fn segment_tiny(input: &Path, out: &Path, extra: &[&str], limit_s: u64) -> Output {
    let mut args = vec!["segment", "--bundle"];
    let (bundle, input, out) = (tiny(), s(input), s(out));
    args.extend([bundle.as_str(), input.as_str(), "--out", out.as_str()]);
    args.extend(extra);
    run_within(alignsam(&args), Duration::from_secs(limit_s))
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 90])
    })
}

/// A dataset folder with `images/a.png`, `masks/a.png` and `splits/eval.txt`.
fn dataset(root: &Path) -> PathBuf {
    let ds = root.join("ds");
    for d in ["images", "masks", "splits"] {
        std::fs::create_dir_all(ds.join(d)).unwrap();
    }
    picture(40, 30).save(ds.join("images/a.png")).unwrap();
    GrayImage::from_fn(40, 30, |x, _| image::Luma([if x < 20 { 255 } else { 0 }]))
        .save(ds.join("masks/a.png"))
        .unwrap();
    std::fs::write(ds.join("splits/eval.txt"), "a\n").unwrap();
    ds
}

// ---------------------------------------------------------------------------------------------
// Finding 1: outputs over the user's files

#[test]
fn segment_refuses_to_write_into_the_dataset_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let mask_before = std::fs::read(ds.join("masks/a.png")).unwrap();
    let image_before = std::fs::read(ds.join("images/a.png")).unwrap();
    for (input, out) in [
        (ds.join("images"), ds.clone()),
        (ds.join("masks"), ds.clone()),
    ] {
        let o = segment_tiny(&input, &out, &[], 60);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("would") || err.contains("refusing"), "{err}");
    }
    assert_eq!(std::fs::read(ds.join("masks/a.png")).unwrap(), mask_before);
    assert_eq!(
        std::fs::read(ds.join("images/a.png")).unwrap(),
        image_before
    );
}

#[test]
fn eval_train_and_run_refuse_outputs_over_their_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let mask_before = std::fs::read(ds.join("masks/a.png")).unwrap();
    let d = s(&ds);
    let masks = s(&ds.join("masks"));
    for args in [
        vec![
            "eval",
            "--bundle",
            &tiny(),
            "--data",
            &d,
            "--split",
            "eval",
            "--out",
            &masks,
        ],
        vec![
            "train",
            "--bundle",
            &tiny(),
            "--data",
            &d,
            "--split",
            "eval",
            "--out",
            &masks,
        ],
    ] {
        let o = run_within(alignsam(&args), Duration::from_secs(60));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("refusing"), "{err}");
    }
    assert_eq!(std::fs::read(ds.join("masks/a.png")).unwrap(), mask_before);
    assert_eq!(std::fs::read_dir(ds.join("masks")).unwrap().count(), 1);

    let y4m = tmp.path().join("clip.y4m");
    let mut bytes = b"YUV4MPEG2 W8 H8 F10:1 C444\nFRAME\n".to_vec();
    bytes.extend([100u8; 8 * 8 * 3]);
    std::fs::write(&y4m, &bytes).unwrap();
    let o = run_within(
        alignsam(&[
            "run",
            "--bundle",
            &tiny(),
            "--input",
            &s(&y4m),
            "--json",
            &s(&y4m),
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("overwrite an input"));
    assert_eq!(std::fs::read(&y4m).unwrap(), bytes);
}

#[test]
fn json_output_over_an_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("in/a.png");
    std::fs::create_dir_all(img.parent().unwrap()).unwrap();
    picture(40, 30).save(&img).unwrap();
    let before = std::fs::read(&img).unwrap();
    let o = segment_tiny(&img, &tmp.path().join("out"), &["--json", &s(&img)], 60);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("overwrite an input"));
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn inputs_with_one_stem_get_distinct_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    // img.png and img.jpg share a stem; img-2.png is what a naive de-duplication would pick.
    picture(40, 30).save(dir.join("img.png")).unwrap();
    picture(30, 40).save(dir.join("img.jpg")).unwrap();
    picture(50, 20).save(dir.join("img-2.png")).unwrap();
    let out = tmp.path().join("out");
    let o = segment_tiny(&dir, &out, &["--steps", "1"], 120);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let mut masks: Vec<String> = lines
        .iter()
        .map(|l| l["mask"].as_str().unwrap().to_string())
        .collect();
    for (l, m) in lines.iter().zip(&masks) {
        let mask = image::open(m).unwrap();
        assert_eq!(
            (mask.width() as u64, mask.height() as u64),
            (l["width"].as_u64().unwrap(), l["height"].as_u64().unwrap()),
            "{m} is not the mask of {}",
            l["image"]
        );
    }
    masks.sort();
    masks.dedup();
    assert_eq!(masks.len(), 3, "{masks:?}");
}

// ---------------------------------------------------------------------------------------------
// Finding 2: writes cut short

/// A run stopped by SIGINT part way leaves whole files only: every JSON line parses, every mask
/// and overlay decodes, no temporary file is left, and an overlay from an earlier run is either
/// the old one or a new whole one.
#[cfg(unix)]
#[test]
fn interrupted_segment_leaves_whole_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..40 {
        picture(320 + i, 240)
            .save(dir.join(format!("p{i:02}.png")))
            .unwrap();
    }
    let out = tmp.path().join("out");
    let json = tmp.path().join("lines.jsonl");
    let mut child = common::alignsam()
        .args(["segment", "--bundle", &tiny(), &s(&dir), "--out", &s(&out)])
        .args(["--json", &s(&json), "--steps", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&json).map_or(0, |t| t.lines().count()) < 2 {
        assert!(start.elapsed() < Duration::from_secs(120), "no output");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill sends a signal to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let lines = std::fs::read_to_string(&json).unwrap();
    let n = lines.lines().count();
    assert!(n < 40, "the run was not interrupted ({n} lines)");
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
        image::open(v["mask"].as_str().unwrap()).expect("a whole mask");
        image::open(v["overlay"].as_str().unwrap()).expect("a whole overlay");
    }
    for sub in ["masks", "overlays"] {
        for e in std::fs::read_dir(out.join(sub)).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(
                p.extension().and_then(|x| x.to_str()),
                Some("png"),
                "left behind: {}",
                p.display()
            );
            image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

#[test]
fn an_output_that_cannot_be_written_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    picture(40, 30).save(&img).unwrap();
    let out = tmp.path().join("out");
    // A directory where the mask file should go: the write must fail, and say where.
    std::fs::create_dir_all(out.join("masks/a.png")).unwrap();
    let o = segment_tiny(&img, &out, &["--steps", "1"], 60);
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains(&s(&out.join("masks"))), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Finding 3: files that are not regular files

#[cfg(unix)]
#[test]
fn a_model_that_is_a_device_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    for e in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, b.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(b.join("encoder.onnx")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", b.join("encoder.onnx")).unwrap();
    for args in [
        vec!["info", &s(&b)],
        vec!["info", &s(&b), "--no-verify"],
        vec!["bench", "--bundle", &s(&b), "--no-verify", "--frames", "1"],
    ] {
        let o = run_within(alignsam(&args), Duration::from_secs(30));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("encoder.onnx"), "{err}");
        assert!(err.contains("not a regular file"), "{err}");
    }
}

#[cfg(unix)]
#[test]
fn a_mask_that_is_a_fifo_does_not_hang_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let mask = ds.join("masks/a.png");
    std::fs::remove_file(&mask).unwrap();
    mkfifo(&mask);
    let o = run_within(
        alignsam(&[
            "eval",
            "--bundle",
            &tiny(),
            "--data",
            &s(&ds),
            "--split",
            "eval",
            "--out",
            &s(&tmp.path().join("o")),
            "--cache",
            &s(&tmp.path().join("cache")),
        ]),
        Duration::from_secs(60),
    );
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&s(&mask)) && err.contains("not a regular file"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 4: shapes SAM's resize cannot represent

#[test]
fn an_extremely_elongated_image_is_one_failure_among_many() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    picture(40, 30).save(dir.join("a.png")).unwrap();
    picture(20000, 1).save(dir.join("b-wide.png")).unwrap();
    picture(30, 40).save(dir.join("c.png")).unwrap();
    let out = tmp.path().join("out");
    let o = segment_tiny(&dir, &out, &["--steps", "1"], 120);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("b-wide.png") && err.contains("too elongated"),
        "{err}"
    );
    assert_eq!(text(&o.stdout).lines().count(), 2, "{err}");
    assert!(out.join("masks/a.png").exists() && out.join("masks/c.png").exists());

    // decode: one image, so a plain error (not a panic, exit 101).
    let o = run_within(
        alignsam(&[
            "decode",
            "--bundle",
            &tiny(),
            &s(&dir.join("b-wide.png")),
            "-p",
            "5,0",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("too elongated"));
}

#[test]
fn an_extremely_elongated_video_frame_is_a_bad_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let y4m = tmp.path().join("wide.y4m");
    let (w, h) = (20000usize, 2usize);
    let mut bytes = format!("YUV4MPEG2 W{w} H{h} F10:1 C444\n").into_bytes();
    for _ in 0..2 {
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend(std::iter::repeat_n(128u8, w * h * 3));
    }
    std::fs::write(&y4m, bytes).unwrap();
    let o = run_within(
        alignsam(&[
            "run",
            "--bundle",
            &tiny(),
            "--input",
            &s(&y4m),
            "--steps",
            "1",
        ]),
        Duration::from_secs(60),
    );
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(101), "{err}");
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("too elongated"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Finding 5: allocation driven by the input

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header says `w x h` greyscale, with a tiny (wrong) body: small on disk, huge
/// when decoded.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = vec![];
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

#[test]
fn a_huge_image_is_refused_from_its_header() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.png");
    std::fs::write(&big, png_claiming(20000, 20000)).unwrap();
    let out = tmp.path().join("out");
    let o = segment_tiny(&big, &out, &[], 30);
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("big.png") && err.contains("400000000 pixels"),
        "{err}"
    );
    // Raising the limit lets it through to the decoder, which finds the body corrupt.
    let o = segment_tiny(&big, &out, &["--max-pixels", "500000000"], 60);
    let err = text(&o.stderr);
    assert!(
        err.contains("big.png") && !err.contains("limit of"),
        "{err}"
    );
}

/// `--max-pixels` reaches every command that reads images, frames, masks or datasets: the
/// limits are a value each command passes down, so one that forgot would read a 40x30 picture
/// under a limit of 1000 pixels.
#[test]
fn every_command_reads_its_inputs_within_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let (d, bundle) = (s(&ds), tiny());
    let image = s(&ds.join("images/a.png"));
    let frames = s(&ds.join("images"));
    let y4m = tmp.path().join("clip.y4m");
    let mut bytes = b"YUV4MPEG2 W40 H30 F10:1 C444\nFRAME\n".to_vec();
    bytes.extend([100u8; 40 * 30 * 3]);
    std::fs::write(&y4m, &bytes).unwrap();
    let out = |name: &str| s(&tmp.path().join(name));
    let (seg, mask, y4m) = (out("seg"), out("m.png"), s(&y4m));
    let (eval, train, cache) = (out("eval"), out("train"), out("cache"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["segment", "--bundle", &bundle, &image, "--out", &seg],
            "a.png",
        ),
        (
            vec![
                "decode", "--bundle", &bundle, "--point", "5,5", &image, "--out", &mask,
            ],
            "a.png",
        ),
        (
            vec!["run", "--bundle", &bundle, "--input", &frames],
            "a.png",
        ),
        (
            vec!["run", "--bundle", &bundle, "--input", &y4m],
            "clip.y4m",
        ),
        (
            vec![
                "bench", "--bundle", &bundle, "--input", &image, "--frames", "1",
            ],
            "a.png",
        ),
        (
            vec!["bench-models", "--bundle", &bundle, "--image", &image],
            "a.png",
        ),
        (vec!["bench-reuse", "--bundle", &bundle, &frames], "a.png"),
        (
            vec!["profile", "--bundle", &bundle, "--image", &image],
            "a.png",
        ),
        (
            vec![
                "eval", "--bundle", &bundle, "--data", &d, "--split", "eval", "--out", &eval,
                "--cache", &cache,
            ],
            "a.png",
        ),
        (
            vec![
                "train", "--bundle", &bundle, "--data", &d, "--split", "eval", "--out", &train,
                "--cache", &cache,
            ],
            "a.png",
        ),
    ];
    for (mut args, file) in cases {
        args.extend(["--max-pixels", "1000"]);
        let o = run_within(alignsam(&args), Duration::from_secs(120));
        let err = text(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            err.contains(file) && err.contains("1200") && err.contains("limit of 1000"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_huge_y4m_header_allocates_nothing_before_data() {
    let tmp = tempfile::tempdir().unwrap();
    let y4m = tmp.path().join("huge.y4m");
    std::fs::write(
        &y4m,
        b"YUV4MPEG2 W16384 H16384 F30:1 C444alpha\nFRAME\n\x80\x80",
    )
    .unwrap();
    let o = run_within(
        alignsam(&["run", "--bundle", &tiny(), "--input", &s(&y4m)]),
        Duration::from_secs(30),
    );
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("16384x16384"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Finding 6: external data outside the checksum, non-finite outputs

/// A copy of the tiny bundle's models whose encoder keeps its largest weight in an external data
/// file at `location` (relative to the models folder, as ONNX stores it); returns the folder.
fn models_with_external_data(root: &Path, location: &str) -> PathBuf {
    use prost::Message;
    use tract_onnx::pb;
    let models = root.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let tiny = common::tiny_bundle();
    for f in ["decoder_lowres.onnx", "policy.onnx", "srm.onnx"] {
        std::fs::copy(tiny.join(f), models.join(f)).unwrap();
    }
    let bytes = std::fs::read(tiny.join("encoder.onnx")).unwrap();
    let mut model = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let t = graph
        .initializer
        .iter_mut()
        .max_by_key(|t| t.raw_data.len())
        .unwrap();
    assert!(t.raw_data.len() > 1000, "the tiny encoder has raw weights");
    let data = std::mem::take(&mut t.raw_data);
    let kv = |k: &str, v: String| pb::StringStringEntryProto {
        key: k.into(),
        value: v,
    };
    t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    t.external_data = vec![
        kv("location", location.into()),
        kv("offset", "0".into()),
        kv("length", data.len().to_string()),
    ];
    std::fs::write(models.join("encoder.onnx"), model.encode_to_vec()).unwrap();
    std::fs::write(models.join(location), &data).unwrap();
    models
}

/// [`models_with_external_data`] beside it, with the manifest written by `alignsam bundle` (which
/// lists the data file and its checksum).
fn bundle_with_external_data(root: &Path) -> PathBuf {
    let models = models_with_external_data(root, "encoder.onnx.data");
    let out = root.join("bundle");
    let o = alignsam(&["bundle", &s(&models), "--out", &s(&out)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    out
}

/// Data outside the model's folder (`../x`, an absolute path) is refused when the manifest is
/// written: every engine refuses to load it, so the bundle would never open.
#[test]
fn external_data_outside_the_model_folder_is_refused_by_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let abs = tmp.path().join("elsewhere.data");
    for location in ["../outside.data", abs.to_str().unwrap()] {
        let root = tmp.path().join(format!("case{}", location.len()));
        let models = models_with_external_data(&root, location);
        let out = root.join("bundle");
        let o = run_within(
            alignsam(&["bundle", &s(&models), "--out", &s(&out)]),
            Duration::from_secs(60),
        );
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{location}: {err}");
        assert!(
            err.contains("encoder.onnx") && err.contains("outside the model's folder"),
            "{location}: {err}"
        );
        assert!(!out.join("bundle.toml").exists(), "{location}");
    }
}

#[test]
fn external_data_is_checksummed_and_non_finite_outputs_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle_with_external_data(tmp.path());
    let manifest = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    assert!(manifest.contains("encoder.onnx.data"), "{manifest}");
    // On tract: this fixture is re-encoded with tract's protobuf types, which pack repeated
    // numbers; rten rejects that encoding (src/engine/onnx_wire.rs), exporters never write it.
    let o = run_within(
        alignsam(&["info", "--backend", "tract", &s(&b)]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    // The model reads through the bundle's relative path: the data file sits with encoder.onnx.
    let encoder_dir = tmp.path().join("models");
    let data = encoder_dir.join("encoder.onnx.data");
    let len = std::fs::metadata(&data).unwrap().len() as usize;
    // All bits set: NaN as f32.
    std::fs::write(&data, vec![0xFFu8; len]).unwrap();
    let o = run_within(alignsam(&["info", &s(&b)]), Duration::from_secs(60));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("encoder.onnx.data") && err.contains("checksum"),
        "{err}"
    );

    // Unverified, the garbage reaches the encoder, whose non-finite output is an error that
    // names the model instead of a mask made of NaN.
    let img = tmp.path().join("a.png");
    picture(40, 30).save(&img).unwrap();
    let o = run_within(
        alignsam(&[
            "segment",
            "--backend",
            "tract",
            "--bundle",
            &s(&b),
            &s(&img),
            "--out",
            &s(&tmp.path().join("out")),
            "--no-verify",
        ]),
        Duration::from_secs(60),
    );
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("encoder.onnx") && err.contains("non-finite"),
        "{err}"
    );

    // A manifest that does not list the data file is refused.
    // (the [[models.encoder.data]] table: its header, file and sha256 lines)
    let mut skip = false;
    let unlisted: String = manifest
        .lines()
        .filter(|l| {
            if l.starts_with('[') {
                skip = l.contains("models.encoder.data");
            }
            !skip
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!unlisted.contains("encoder.onnx.data"), "{unlisted}");
    std::fs::write(b.join("bundle.toml"), unlisted).unwrap();
    let o = run_within(alignsam(&["info", &s(&b)]), Duration::from_secs(60));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("does not list"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Options: zero, negative, NaN, infinite and absurd values

#[test]
fn every_numeric_option_is_range_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny();
    let img = s(&common::root().join("demo/images/ball.png"));
    let out = s(&tmp.path().join("out"));
    let seg = |flag: &str, v: &str| -> Vec<String> {
        [
            "segment",
            "--bundle",
            &t,
            &img,
            "--out",
            &out,
            &format!("{flag}={v}"),
        ]
        .map(String::from)
        .to_vec()
    };
    let runc = |flag: &str, v: &str| -> Vec<String> {
        [
            "run",
            "--bundle",
            &t,
            "--input",
            &img,
            &format!("{flag}={v}"),
        ]
        .map(String::from)
        .to_vec()
    };
    let train = |flag: &str, v: &str| -> Vec<String> {
        [
            "train",
            "--bundle",
            &t,
            "--data",
            "x",
            "--out",
            &out,
            &format!("{flag}={v}"),
        ]
        .map(String::from)
        .to_vec()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (seg("--steps", "100000"), "--steps"),
        (seg("--steps", "-1"), "--steps"),
        (seg("--budget-ms", "0"), "--budget-ms"),
        (seg("--budget-ms", "NaN"), "--budget-ms"),
        (seg("--budget-ms", "inf"), "--budget-ms"),
        (seg("--stop-iou", "1.5"), "--stop-iou"),
        (seg("--threads", "100000"), "--threads"),
        (seg("--max-pixels", "0"), "--max-pixels"),
        (seg("--max-file-mb", "0"), "--max-file-mb"),
        (runc("--fps", "0"), "--fps"),
        (runc("--fps", "-5"), "--fps"),
        (runc("--max-frames", "0"), "--max-frames"),
        (runc("--reuse-points", "1e9"), "--reuse-points"),
        (train("--episodes", "0"), "--episodes"),
        (train("--lr", "-1"), "--lr"),
        (train("--gamma", "inf"), "--gamma"),
        (train("--clip", "0"), "--clip"),
        (train("--images", "99999999999"), "--images"),
    ];
    for (args, flag) in cases {
        let o = common::alignsam().args(&args).output().unwrap();
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Names and pipes

#[cfg(unix)]
#[test]
fn odd_file_names_keep_the_json_valid() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let newline = dir.join("two\nlines.png");
    picture(40, 30).save(&newline).unwrap();
    // Three names that are not UTF-8 and differ only in that byte: a replacement character
    // would give all three the same name in the JSON.
    for b in [0xe9u8, 0xfe, 0xff] {
        let latin1 = dir.join(std::ffi::OsStr::from_bytes(&[
            b'c', b'a', b'f', b, b'.', b'p', b'n', b'g',
        ]));
        picture(40, 30).save(&latin1).unwrap();
    }
    let out = tmp.path().join("out");
    let o = segment_tiny(&dir, &out, &["--steps", "1"], 120);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one record per line"))
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert!(Path::new(l["mask"].as_str().unwrap()).exists(), "{l}");
    }
    let mut names: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("caf\\xe9.png")),
        "{names:?}"
    );
    let masks: Vec<&str> = lines.iter().map(|l| l["mask"].as_str().unwrap()).collect();
    assert!(
        masks.iter().any(|m| m.ends_with("caf_xff.png")),
        "{masks:?}"
    );
}

#[cfg(unix)]
#[test]
fn run_into_a_closed_pipe_still_writes_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("frames");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..6 {
        picture(64, 48).save(dir.join(format!("f{i}.png"))).unwrap();
    }
    let out = tmp.path().join("out");
    let summary = out.join("summary.json");
    let mut child = common::alignsam()
        .args([
            "run",
            "--bundle",
            &tiny(),
            "--input",
            &s(&dir),
            "--steps",
            "1",
        ])
        .args(["--out", &s(&out)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `| head -1`: read one line, then close the pipe.
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&first).expect("a whole first line");
    }
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "hangs on a closed pipe"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        status.code().is_some(),
        "killed by a signal: {status:?}; {err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written")).unwrap();
    assert!(v["frames_read"].as_u64().unwrap() >= 1, "{v}");
}

// ---------------------------------------------------------------------------------------------
// Round 2: every output through one guard, every read bounded, stdout errors without a panic

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn decode_tiny(image: &Path, out: &Path, extra: &[&str]) -> Output {
    let (bundle, image, out) = (tiny(), s(image), s(out));
    let mut args = vec![
        "decode", "--bundle", &bundle, &image, "-p", "10,10", "-o", &out,
    ];
    args.extend(extra);
    run_within(alignsam(&args), Duration::from_secs(60))
}

#[test]
fn decode_never_writes_over_its_input_a_fifo_a_link_or_a_stranger() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.png");
    picture(40, 30).save(&img).unwrap();
    let before = std::fs::read(&img).unwrap();
    // Over its own input, even with --force.
    let o = decode_tiny(&img, &img, &["--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("is an input"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&img).unwrap(), before);
    // Over a FIFO (a device node behaves the same: both are not regular files).
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let o = decode_tiny(&img, &fifo, &["--force"]);
    assert!(
        text(&o.stderr).contains("device, FIFO or socket"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // Through a link to another file.
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    let link = tmp.path().join("link.png");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let o = decode_tiny(&img, &link, &["--force"]);
    assert!(
        text(&o.stderr).contains("symbolic link"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    // Over a file no decode run wrote: refused without --force, replaced with it; a second run
    // into its own output needs no --force.
    let mine = tmp.path().join("mine.png");
    std::fs::write(&mine, b"user data").unwrap();
    let o = decode_tiny(&img, &mine, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains(
            "no earlier `decode` run wrote it; choose another path, or allow replacing it (--force)"
        ),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&mine).unwrap(), b"user data");
    let fresh = tmp.path().join("fresh.png");
    for _ in 0..2 {
        let o = decode_tiny(&img, &fresh, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    }
    // A point that is not a number is a point error, not the model's.
    let o = run_within(
        alignsam(&[
            "decode",
            "--bundle",
            &tiny(),
            &s(&img),
            "-p",
            "nan,nan",
            "-o",
            &s(&fresh),
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("point (NaN, NaN)"),
        "{}",
        text(&o.stderr)
    );
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn train_refuses_to_write_into_its_source_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b");
    std::fs::create_dir_all(&bundle).unwrap();
    for e in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bundle.join(e.file_name())).unwrap();
    }
    let ds = dataset(tmp.path());
    std::fs::write(ds.join("splits/train.txt"), "a\n").unwrap();
    let manifest = std::fs::read(bundle.join("bundle.toml")).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&bundle, &link).unwrap();
    for out in [s(&bundle), format!("{}/./", s(&bundle)), s(&link)] {
        let o = run_within(
            alignsam(&[
                "train",
                "--bundle",
                &s(&bundle),
                "--data",
                &s(&ds),
                "--out",
                &out,
                "--episodes",
                "1",
            ]),
            Duration::from_secs(60),
        );
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{out}: {err}");
        assert!(err.contains("which this run reads"), "{out}: {err}");
    }
    assert_eq!(std::fs::read(bundle.join("bundle.toml")).unwrap(), manifest);
}

#[test]
fn gate_references_never_replace_masks_or_models_and_are_read_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let mask = ds.join("masks/a.png");
    let before = std::fs::read(&mask).unwrap();
    let gate = |extra: &[&str]| {
        let mut args = vec![
            "gate".to_string(),
            "--bundle".into(),
            tiny(),
            "--data".into(),
            s(&ds),
            "--split".into(),
            "eval".into(),
            "--precisions".into(),
            "fp32".into(),
            "--backends".into(),
            "tract".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_within(alignsam(&refs), Duration::from_secs(120))
    };
    let o = gate(&["--save-reference", &s(&mask), "--force", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("which this run reads"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&mask).unwrap(), before);
    let model = common::tiny_bundle().join("encoder.onnx");
    let o = gate(&["--save-reference", &s(&model), "--force", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    // /dev/zero and a FIFO as the reference: refused at once, nothing read.
    let fifo = tmp.path().join("ref.fifo");
    mkfifo(&fifo);
    for r in ["/dev/zero".to_string(), s(&fifo)] {
        let o = gate(&["--reference", &r]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("not a regular file"), "{err}");
    }
}

#[test]
fn json_lines_never_land_on_another_output_of_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("ball.png");
    picture(40, 30).save(&img).unwrap();
    let out = tmp.path().join("o");
    let json = out.join("masks/ball.png");
    let o = segment_tiny(&img, &out, &["--steps", "1", "--json", &s(&json)], 60);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("another output of this run"),
        "{}",
        text(&o.stderr)
    );
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    picture(40, 30).save(frames.join("f1.png")).unwrap();
    let o = run_within(
        alignsam(&[
            "run",
            "--bundle",
            &tiny(),
            "--input",
            &s(&frames),
            "--out",
            &s(&out),
            "--json",
            &s(&out.join("summary.json")),
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("another output of this run"),
        "{}",
        text(&o.stderr)
    );
    // `-` is stdout, not a file named `-`.
    let o = segment_tiny(
        &img,
        &tmp.path().join("o2"),
        &["--steps", "1", "--json", "-"],
        60,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("\"image\""));
    assert!(!Path::new("-").exists() && !tmp.path().join("-").exists());
}

#[test]
fn segment_into_a_dataset_it_does_not_read_keeps_the_dataset_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let before = std::fs::read(ds.join("masks/a.png")).unwrap();
    let other = tmp.path().join("a.png");
    picture(40, 30).save(&other).unwrap();
    let o = segment_tiny(&other, &ds, &["--steps", "1"], 60);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no earlier `segment` run wrote it; choose another output folder, or allow replacing files (--force)"),
        "{err}"
    );
    assert_eq!(std::fs::read(ds.join("masks/a.png")).unwrap(), before);
    // Re-running into the run's own output folder works without --force.
    let out = tmp.path().join("out");
    for _ in 0..2 {
        let o = segment_tiny(&other, &out, &["--steps", "1"], 60);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    }
}

#[test]
fn a_second_run_into_a_folder_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    picture(40, 30).save(&img).unwrap();
    let out = tmp.path().join("o");
    // This process holds the folder as a first run would.
    let held = alignsam::sink::OutputPlan::new("segment", false)
        .dir(&out, &["masks", "overlays"])
        .check()
        .unwrap();
    let o = segment_tiny(&img, &out, &["--steps", "1"], 60);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("another alignsam run"),
        "{}",
        text(&o.stderr)
    );
    drop(held);
    let o = segment_tiny(&img, &out, &["--steps", "1"], 60);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

#[test]
fn a_cache_entry_that_is_a_link_to_dev_zero_or_a_fifo_is_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let eval = || {
        run_within(
            alignsam(&[
                "eval",
                "--bundle",
                &tiny(),
                "--data",
                &s(&ds),
                "--split",
                "eval",
                "--out",
                &s(&tmp.path().join("o")),
                "--cache",
                &s(&cache),
                "--steps",
                "1",
                "--methods",
                "centre",
            ]),
            Duration::from_secs(60),
        )
    };
    let o = eval();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let entries: Vec<PathBuf> = walk(&cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    for make in [0, 1] {
        std::fs::remove_file(&entries[0]).unwrap();
        if make == 0 {
            std::os::unix::fs::symlink("/dev/zero", &entries[0]).unwrap();
        } else {
            mkfifo(&entries[0]);
        }
        let o = eval();
        let err = text(&o.stderr);
        // The entry is ignored (recomputing is the cache's answer to a damaged entry), and the
        // special file is not replaced either.
        assert!(err.contains("not a regular file"), "{err}");
        assert!(o.status.code().is_some(), "{err}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every subcommand that prints to stdout ends with an error naming stdout, never a panic
/// (exit 101), when stdout is a full disk.
#[test]
fn a_full_stdout_is_an_error_on_every_subcommand() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full on this system");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    picture(40, 30).save(&img).unwrap();
    let ds = dataset(tmp.path());
    let t = tiny();
    let cases: Vec<Vec<String>> = vec![
        vec!["info".into(), "--bundle".into(), t.clone()],
        vec!["devices".into()],
        vec![
            "decode".into(),
            "--bundle".into(),
            t.clone(),
            s(&img),
            "-p".into(),
            "5,5".into(),
            "-o".into(),
            s(&tmp.path().join("m.png")),
        ],
        vec![
            "bench".into(),
            "--bundle".into(),
            t.clone(),
            "--frames".into(),
            "1".into(),
            "--warmup".into(),
            "0".into(),
            "--input".into(),
            s(&img),
        ],
        vec![
            "eval".into(),
            "--bundle".into(),
            t.clone(),
            "--data".into(),
            s(&ds),
            "--split".into(),
            "eval".into(),
            "--out".into(),
            s(&tmp.path().join("e")),
            "--steps".into(),
            "1".into(),
            "--methods".into(),
            "centre".into(),
            "--cache".into(),
            s(&tmp.path().join("c")),
        ],
        vec![
            "bundle".into(),
            s(&common::tiny_bundle()),
            "--out".into(),
            s(&tmp.path().join("b")),
        ],
    ];
    for args in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = alignsam(&refs);
        cmd.stdout(full.try_clone().unwrap()).stderr(Stdio::piped());
        let o = cmd.output().unwrap();
        let err = text(&o.stderr);
        assert_ne!(o.status.code(), Some(101), "{args:?} panicked: {err}");
        if o.status.code() != Some(0) {
            assert!(
                err.contains("stdout: cannot write") || !err.contains("panicked"),
                "{args:?}: {err}"
            );
        }
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// A FIFO or a device given as an input is named as what it is, not "no such file", on every
/// command that takes inputs; nothing is read from it (the test would hang on a FIFO otherwise).
#[test]
fn fifo_and_device_inputs_are_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo.png");
    mkfifo(&fifo);
    let out = s(&tmp.path().join("out"));
    let bundle = tiny();
    for input in [s(&fifo), "/dev/zero".into()] {
        let cases: [Vec<&str>; 4] = [
            vec!["segment", "--bundle", &bundle, &input, "--out", &out],
            vec!["run", "--bundle", &bundle, "--input", &input, "--out", &out],
            vec![
                "bench", "--bundle", &bundle, "--input", &input, "--frames", "1",
            ],
            vec!["bundle", "models/tiny", "--encoder", &input, "--out", &out],
        ];
        for args in cases {
            let o = run_within(alignsam(&args), Duration::from_secs(60));
            let err = text(&o.stderr);
            assert_ne!(o.status.code(), Some(0), "{args:?}: {err}");
            assert!(
                !err.contains("not found") && !err.contains("no such"),
                "{args:?}: {err}"
            );
            let named = if input.ends_with("zero") {
                "character device"
            } else {
                "FIFO"
            };
            // `run` opens a device as a camera, which says so in its own words.
            let camera = args[0] == "run" && err.contains("not a V4L2 device");
            assert!(
                err.contains(&input) && (err.contains(named) || camera),
                "{args:?}: {err}"
            );
        }
    }
}

/// `jpg` with an EXIF segment after its start marker holding only the orientation tag.
fn with_exif_orientation(jpg: &[u8], orientation: u8) -> Vec<u8> {
    let mut payload = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    payload.extend_from_slice(&[
        0x01,
        0x12,
        0,
        3,
        0,
        0,
        0,
        1,
        0,
        orientation,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    let mut out = jpg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpg[2..]);
    out
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut jpg = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 90)
        .encode_image(img)
        .unwrap();
    jpg
}

/// A phone's portrait photo (stored 40x30, EXIF "rotate 90") is segmented as it is shown
/// (30x40), and eval accepts the mask drawn on the shown image; a JPEG cut short is one failure
/// among the inputs, named, not a picture with a grey half.
#[test]
fn exif_orientation_is_honoured_and_truncated_jpegs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let rotated = with_exif_orientation(&jpeg_bytes(&picture(40, 30)), 6);
    std::fs::write(dir.join("portrait.jpg"), &rotated).unwrap();
    let busy = RgbImage::from_fn(200, 200, |x, y| {
        image::Rgb([((x * 7) ^ (y * 13)) as u8, (x * y) as u8, (x + 3 * y) as u8])
    });
    let whole = jpeg_bytes(&busy);
    std::fs::write(dir.join("cut.jpg"), &whole[..whole.len() / 2]).unwrap();
    let out = tmp.path().join("out");
    let o = segment_tiny(&dir, &out, &["--steps", "1"], 120);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "one of two failed: {err}");
    assert!(err.contains("cut.jpg: truncated JPEG"), "{err}");
    let line: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(
        (line["width"].as_u64(), line["height"].as_u64()),
        (Some(30), Some(40))
    );
    let mask = image::open(line["mask"].as_str().unwrap()).unwrap();
    assert_eq!((mask.width(), mask.height()), (30, 40));

    // eval: the image stored sideways, its mask drawn upright.
    let ds = tmp.path().join("ds");
    for d in ["images", "masks", "splits"] {
        std::fs::create_dir_all(ds.join(d)).unwrap();
    }
    std::fs::write(ds.join("images/a.jpg"), &rotated).unwrap();
    GrayImage::from_fn(30, 40, |x, _| image::Luma([if x < 15 { 255 } else { 0 }]))
        .save(ds.join("masks/a.png"))
        .unwrap();
    std::fs::write(ds.join("splits/eval.txt"), "a\n").unwrap();
    let o = run_within(
        alignsam(&[
            "eval",
            "--bundle",
            &tiny(),
            "--data",
            &s(&ds),
            "--split",
            "eval",
            "--steps",
            "1",
            "--methods",
            "centre",
            "--out",
            &s(&tmp.path().join("eval")),
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

/// A device node to aim outputs at: a character device (1,3, as /dev/null) made here when the
/// tests run as root, else a FIFO; both are special files the guard must never replace. The
/// system's /dev/null is never used: a guard bug would replace it for the whole machine.
fn special_node(path: &Path) -> &'static str {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: a valid C string path; makedev(1, 3) is a plain number.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0 {
        "character device"
    } else {
        mkfifo(path);
        "FIFO"
    }
}

/// What a path holds, to compare before and after a refused run: file bytes, a folder's files
/// (recursively) with their bytes, or the kind of special file.
fn snapshot(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return vec![];
    };
    let t = md.file_type();
    if t.is_dir() {
        walk(path).into_iter().flat_map(|p| snapshot(&p)).collect()
    } else if t.is_file() {
        vec![(path.to_path_buf(), std::fs::read(path).unwrap())]
    } else {
        let kind = if t.is_char_device() {
            "chr"
        } else if t.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        vec![(path.to_path_buf(), kind.as_bytes().to_vec())]
    }
}

/// The property over every subcommand that writes: each output option, aimed at an input of the
/// same run, at a device node, or at a file another option of the run writes, is refused before
/// anything is written (exit 1, the path named) and the target is left as it was.
#[test]
fn every_output_option_refuses_inputs_devices_and_the_runs_other_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let bundle = t.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    for e in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, bundle.join(p.file_name().unwrap())).unwrap();
    }
    let frames = t.join("in");
    std::fs::create_dir_all(&frames).unwrap();
    let img = frames.join("a.png");
    picture(40, 30).save(&img).unwrap();
    let ds = dataset(t);
    let node = t.join("node");
    let node_kind = special_node(&node);
    let (b, i, f, d) = (s(&bundle), s(&img), s(&frames), s(&ds));
    let o = |name: &str| s(&t.join(name));

    // (command line with TARGET in place of the output, [(class, target)]).
    type Case = (Vec<String>, Vec<(&'static str, String)>);
    let args = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut cases: Vec<Case> = vec![
        (
            args(&[
                "segment",
                "--bundle",
                &b,
                &i,
                "--out",
                &o("seg"),
                "--steps",
                "1",
                "--json",
                "TARGET",
            ]),
            vec![
                ("input", i.clone()),
                ("output", format!("{}/masks/a.png", o("seg"))),
            ],
        ),
        (
            // Masks written into the dataset the image comes from would replace its truth.
            args(&[
                "segment",
                "--bundle",
                &b,
                &format!("{d}/images/a.png"),
                "--steps",
                "1",
                "--out",
                "TARGET",
            ]),
            vec![("input", d.clone())],
        ),
        (
            args(&[
                "run",
                "--bundle",
                &b,
                "--input",
                &f,
                "--steps",
                "1",
                "--out",
                &o("run"),
                "--json",
                "TARGET",
            ]),
            vec![
                ("input", i.clone()),
                ("output", format!("{}/summary.json", o("run"))),
            ],
        ),
        (
            args(&["decode", "--bundle", &b, &i, "-p", "10,10", "-o", "TARGET"]),
            vec![
                ("input", i.clone()),
                ("input", s(&bundle.join("decoder_lowres.onnx"))),
            ],
        ),
        (
            args(&[
                "eval",
                "--bundle",
                &b,
                "--data",
                &d,
                "--split",
                "eval",
                "--steps",
                "1",
                "--methods",
                "centre",
                "--cache",
                &o("cache"),
                "--out",
                "TARGET",
            ]),
            vec![("input", d.clone()), ("input", format!("{d}/masks"))],
        ),
        (
            args(&[
                "eval",
                "--bundle",
                &b,
                "--data",
                &d,
                "--split",
                "eval",
                "--steps",
                "1",
                "--methods",
                "centre",
                "--out",
                &o("ev"),
                "--cache",
                "TARGET",
            ]),
            vec![
                ("input", d.clone()),
                ("input", b.clone()),
                ("output", format!("{}/report.md", o("ev"))),
            ],
        ),
        (
            args(&[
                "gate",
                "--bundle",
                &b,
                "--data",
                &d,
                "--images",
                "1",
                "--steps",
                "1",
                "--precisions",
                "fp32",
                "--backends",
                "tract",
                "--save-reference",
                "TARGET",
            ]),
            vec![
                ("input", format!("{d}/masks/a.png")),
                ("input", s(&bundle.join("encoder.onnx"))),
            ],
        ),
        (
            args(&["bundle", &b, "--out", "TARGET"]),
            vec![("input", s(&bundle.join("encoder.onnx")))],
        ),
        (
            args(&[
                "train", "--bundle", &b, "--data", &d, "--split", "eval", "--out", "TARGET",
            ]),
            vec![("input", b.clone()), ("input", d.clone())],
        ),
        (
            args(&[
                "train",
                "--bundle",
                &b,
                "--data",
                &d,
                "--split",
                "eval",
                "--out",
                &o("tr"),
                "--cache",
                "TARGET",
            ]),
            vec![
                ("input", format!("{d}/images")),
                ("output", format!("{}/bundle.toml", o("tr"))),
            ],
        ),
    ];
    if cfg!(feature = "mcap") {
        cases.push((
            args(&[
                "run",
                "--bundle",
                &b,
                "--input",
                &f,
                "--steps",
                "1",
                "--out",
                &o("rec"),
                "--json",
                &o("rec.jsonl"),
                "--record",
                "TARGET",
            ]),
            vec![
                ("input", i.clone()),
                ("output", o("rec.jsonl")),
                ("output", format!("{}/summary.json", o("rec"))),
            ],
        ));
    }
    let mut checked = 0;
    for (template, targets) in &cases {
        let targets = targets.iter().cloned().chain([("device", s(&node))]);
        for (class, target) in targets {
            let argv: Vec<String> = template
                .iter()
                .map(|a| {
                    if a == "TARGET" {
                        target.clone()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let before = snapshot(Path::new(&target));
            let out = run_within(alignsam(&argv), Duration::from_secs(120));
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{class} {argv:?}: {err}");
            assert!(
                err.contains(&target),
                "{class} {argv:?}: the error names the path: {err}"
            );
            assert_eq!(
                snapshot(Path::new(&target)),
                before,
                "{class} {argv:?}: the target changed ({node_kind})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
}
