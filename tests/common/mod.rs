//! Helpers shared by the integration tests: fixture paths, safetensors reading, comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use alignsam::bundle::{InferOptions, write_bundle};
use alignsam::engine::onnx_build::constant_model;
use alignsam::engine::{Backend, BackendKind, EngineOptions};
use safetensors::{Dtype, SafeTensors};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the checkout, if present.
pub fn shared() -> Option<PathBuf> {
    let p = root().join("..").join("shared");
    p.is_dir().then_some(p)
}

/// A command that runs the `alignsam` binary under test. When the tests run for another
/// architecture under an emulator (`.ci/test` sets `ALIGNSAM_TEST_RUNNER` to the qemu command
/// line, as cargo's target runner), the binary is started through it too: without binfmt_misc the
/// kernel cannot execute it directly.
#[cfg(feature = "cli")]
pub fn alignsam() -> std::process::Command {
    let exe = env!("CARGO_BIN_EXE_alignsam");
    match std::env::var("ALIGNSAM_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = std::process::Command::new(parts.next().expect("not empty"));
            cmd.args(parts).arg(exe);
            cmd
        }
        _ => std::process::Command::new(exe),
    }
}

/// A backend of `kind` with `threads` threads; `None` when this build does not have it (rten and
/// ONNX Runtime are cargo features).
pub fn backend(kind: BackendKind, threads: usize) -> Option<Box<dyn Backend>> {
    kind.create(&EngineOptions { threads }).ok()
}

/// tract, which every build has, with `threads` threads.
pub fn tract(threads: usize) -> Box<dyn Backend> {
    BackendKind::Tract
        .create(&EngineOptions { threads })
        .expect("tract is always built in")
}

/// The committed tiny bundle.
pub fn tiny_bundle() -> PathBuf {
    root().join("models").join("tiny")
}

/// A bundle in `dir/bundle` with the tiny SAM (low-res decoder) and hand-built agent networks
/// that ignore their input: a policy whose logits are 5 at `patch` and 0 elsewhere, and an SRM
/// whose `grid x grid` map is `srm`. The loop's choices and labels can then be computed by hand.
pub fn constant_agent_bundle(dir: &Path, grid: usize, patch: usize, srm: &[f32]) -> PathBuf {
    assert_eq!(srm.len(), grid * grid);
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let tiny = tiny_bundle();
    std::fs::copy(tiny.join("encoder.onnx"), models.join("encoder.onnx")).unwrap();
    std::fs::copy(
        tiny.join("decoder_lowres.onnx"),
        models.join("decoder.onnx"),
    )
    .unwrap();
    let state: &[usize] = &[1, 32, 64, 64];
    let mut logits = vec![0f32; grid * grid];
    logits[patch] = 5.0;
    constant_model(&[("state", state)], ("logits", &[1, grid * grid]), &logits)
        .save(&models.join("policy.onnx"), "test")
        .unwrap();
    constant_model(&[("state", state)], ("fg_prob", &[1, 1, grid, grid]), srm)
        .save(&models.join("srm.onnx"), "test")
        .unwrap();
    let out = dir.join("bundle");
    write_bundle(&models, &out, &InferOptions::default()).unwrap();
    out
}

/// A fixture file's tensors, owned.
pub struct Fixture {
    bytes: Vec<u8>,
    pub path: PathBuf,
}

impl Fixture {
    pub fn open(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixture {
            bytes,
            path: path.to_path_buf(),
        }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors().names().contains(&name)
    }

    /// An f32 tensor: (shape, values).
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: {name}: {e}", self.path.display()));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape().to_vec(), v)
    }

    /// A u8 tensor: (shape, values).
    pub fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: {name}: {e}", self.path.display()));
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        (t.shape().to_vec(), t.data().to_vec())
    }
}

/// max |a - b| / max |b|: the error relative to the reference tensor's scale (element-wise
/// relative error is meaningless for values near zero).
pub fn rel_err(actual: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(actual.len(), reference.len());
    let scale = reference.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let diff = actual
        .iter()
        .zip(reference)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    if scale == 0.0 { diff } else { diff / scale }
}

/// Intersection over union of two masks (1.0 when both are empty): the crate's own count.
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    alignsam::agent::ground_truth::mask_iou(a, b)
}

/// Pixels where the masks differ that are not on the reference mask's boundary (a pixel is on
/// the boundary when one of its 8 neighbours has the other value).
pub fn off_boundary_mismatches(
    actual: &[bool],
    reference: &[bool],
    width: usize,
    height: usize,
) -> usize {
    let at = |x: isize, y: isize| -> Option<bool> {
        (x >= 0 && y >= 0 && (x as usize) < width && (y as usize) < height)
            .then(|| reference[y as usize * width + x as usize])
    };
    let mut n = 0;
    for y in 0..height as isize {
        for x in 0..width as isize {
            let i = y as usize * width + x as usize;
            if actual[i] == reference[i] {
                continue;
            }
            let on_boundary = (-1..=1)
                .any(|dy| (-1..=1).any(|dx| at(x + dx, y + dy).is_some_and(|v| v != reference[i])));
            if !on_boundary {
                n += 1;
            }
        }
    }
    n
}

/// A dataset of `n` images (96 x 64, textured) with a bright rectangle as the object, in
/// `dir` with splits train (all) and eval (the first two).
pub fn synthetic_dataset(dir: &Path, n: usize) {
    for sub in ["images", "masks", "splits"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let (w, h) = (96u32, 64u32);
    let mut ids = vec![];
    for i in 0..n {
        let (x0, y0) = (8 + (i as u32 * 13) % 40, 6 + (i as u32 * 7) % 24);
        let inside = |x: u32, y: u32| x >= x0 && x < x0 + 36 && y >= y0 && y < y0 + 26;
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            if inside(x, y) {
                image::Rgb([230, 200, 40])
            } else {
                image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
            }
        });
        let mask = image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([if inside(x, y) { 255 } else { 0 }])
        });
        let id = format!("img{i:02}");
        img.save(dir.join("images").join(format!("{id}.png")))
            .unwrap();
        mask.save(dir.join("masks").join(format!("{id}.png")))
            .unwrap();
        ids.push(id);
    }
    std::fs::write(dir.join("splits/train.txt"), ids.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.join("splits/eval.txt"),
        ids[..n.min(2)].join("\n") + "\n",
    )
    .unwrap();
}

/// A temporary directory with a synthetic dataset of `n` images in it (`DS/`).
pub fn temp_dataset(n: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("DS");
    synthetic_dataset(&data, n);
    (tmp, data)
}
