//! Mutation fuzzing of every parser that reads untrusted bytes: the Y4M reader, the pixel-format
//! converters, bundle.toml, ONNX inspection, image decoding, the dataset loader (split files and
//! masks), embedding-cache entries and gate references. Valid inputs
//! are mutated (bit flips, byte overwrites with boundary values, deletions, insertions,
//! duplicated chunks, truncation, numbers in text replaced by huge, negative or NaN ones) by a
//! seeded generator; every mutant must give `Ok` or an error, never a panic, and the harness
//! bounds memory by running under the default input limits.
//!
//! A short pass runs with the tests (`ALIGNSAM_FUZZ_ITERS`, default 200 mutants per target); a
//! long one is a separate command:
//!
//! ```sh
//! ALIGNSAM_FUZZ_SECONDS=120 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! (cargo-fuzz needs a nightly toolchain, which cannot be installed on the machines this project
//! is built on; these are its property-test equivalent.) A crashing input is written to
//! `target/fuzz-crashes/<target>-<n>.bin` and the test fails naming it.

mod common;

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use alignsam::bundle::Manifest;
use alignsam::dataset::Dataset;
use alignsam::engine::onnx_io;
use alignsam::source::InputLimits;
use alignsam::source::pixel::{Chroma, PixelFormat, Range, planar_yuv_to_rgb};
use alignsam::source::y4m::Y4mReader;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Applies 1 to 4 random mutations.
fn mutate(input: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = [0x00, 0xFF, 0x7F, 0x80, b'9', b'-', b' '][rng.random_range(0..7)];
            }
            2 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                v.drain(a..b);
            }
            3 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(at..at, bytes);
            }
            4 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=256)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, chunk);
            }
            5 if len > 0 => v.truncate(rng.random_range(0..len)),
            6 => replace_number(&mut v, rng),
            _ => {}
        }
    }
    v
}

/// Replaces an ASCII number with a boundary value (text formats: Y4M headers, TOML).
fn replace_number(v: &mut Vec<u8>, rng: &mut StdRng) {
    let starts: Vec<usize> = (0..v.len())
        .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let a = starts[rng.random_range(0..starts.len())];
    let b = (a..v.len())
        .find(|&i| !v[i].is_ascii_digit())
        .unwrap_or(v.len());
    let with: &[u8] = [
        &b"0"[..],
        b"-1",
        b"4294967295",
        b"18446744073709551616",
        b"99999999999999999999",
        b"nan",
        b"1e308",
        b"65536",
    ][rng.random_range(0..8)];
    v.splice(a..b, with.iter().copied());
}

/// Runs `target` on `iters` mutants of the seeds (or for `seconds` when set); panics are caught,
/// saved and counted. Returns (inputs tried, panics).
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) -> (usize, usize) {
    let seconds: Option<u64> = std::env::var("ALIGNSAM_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let iters: usize = std::env::var("ALIGNSAM_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut rng = StdRng::seed_from_u64(0x5eed ^ name.len() as u64);
    let (mut tried, mut crashes) = (0usize, 0usize);
    let crash_dir = common::root().join("target").join("fuzz-crashes");
    loop {
        let done = match deadline {
            Some(d) => Instant::now() >= d,
            None => tried >= iters,
        };
        if done {
            break;
        }
        let seed = &seeds[tried % seeds.len()];
        let input = if tried < seeds.len() {
            seed.clone()
        } else {
            mutate(seed, &mut rng)
        };
        tried += 1;
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            crashes += 1;
            std::fs::create_dir_all(&crash_dir).unwrap();
            let p = crash_dir.join(format!("{name}-{crashes}.bin"));
            std::fs::write(&p, &input).unwrap();
            eprintln!("{name}: panic on {} (saved)", p.display());
        }
    }
    eprintln!("fuzz {name}: {tried} inputs, {crashes} panics");
    (tried, crashes)
}

fn check(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) {
    let (tried, crashes) = fuzz(name, seeds, target);
    assert!(tried >= seeds.len());
    assert_eq!(
        crashes, 0,
        "{name}: {crashes} of {tried} inputs panicked (see target/fuzz-crashes)"
    );
}

/// A small valid Y4M stream of `frames` frames.
fn y4m(chroma: &str, w: u32, h: u32, frames: usize) -> Vec<u8> {
    let mut v = format!("YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C{chroma}\n").into_bytes();
    let c = match chroma {
        "420jpeg" => Chroma::C420,
        "422" => Chroma::C422,
        "444" => Chroma::C444,
        _ => Chroma::Mono,
    };
    for f in 0..frames {
        v.extend_from_slice(b"FRAME\n");
        v.extend((0..c.frame_len(w, h)).map(|i| (i * 7 + f) as u8));
    }
    v
}

#[test]
fn fuzz_y4m_reader() {
    let seeds = vec![
        y4m("420jpeg", 8, 6, 2),
        y4m("422", 5, 3, 1),
        y4m("444", 4, 4, 2),
        y4m("mono", 7, 2, 1),
    ];
    check("y4m", &seeds, |bytes| {
        if let Ok(mut r) = Y4mReader::new(Cursor::new(bytes), "fuzz") {
            let mut buf = vec![];
            for _ in 0..8 {
                match r.read_frame_into(&mut buf) {
                    Ok(true) => {
                        let h = r.header().clone();
                        let _ = planar_yuv_to_rgb(&buf, h.width, h.height, h.chroma, h.range);
                    }
                    _ => break,
                }
            }
        }
    });
}

#[test]
fn fuzz_pixel_converters() {
    // Seeds: [format, width, height, stride, data...]; mutations change the sizes and the data.
    let seeds: Vec<Vec<u8>> = (0..9u8)
        .map(|f| {
            let mut v = vec![f, 6, 4, 0];
            v.extend((0..6 * 4 * 3).map(|i| (i * 13) as u8));
            v
        })
        .collect();
    check("pixel", &seeds, |b| {
        if b.len() < 4 {
            return;
        }
        let format = PixelFormat::PREFERENCE[b[0] as usize % PixelFormat::PREFERENCE.len()];
        let (w, h, stride) = (b[1] as u32, b[2] as u32, b[3] as usize * 4);
        let _ = format.to_rgb(&b[4..], w, h, stride, Range::Limited);
        let _ = planar_yuv_to_rgb(&b[4..], w, h, Chroma::C420, Range::Full);
    });
}

#[test]
fn fuzz_bundle_manifest() {
    let seeds: Vec<Vec<u8>> = ["tiny", "mobilesam-random"]
        .iter()
        .map(|b| std::fs::read(common::root().join("models").join(b).join("bundle.toml")).unwrap())
        .collect();
    check("manifest", &seeds, |b| {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = Manifest::parse(text, Path::new("fuzz.toml"));
        }
    });
}

#[test]
fn fuzz_onnx_inspection() {
    let tiny = common::tiny_bundle();
    let seeds: Vec<Vec<u8>> = ["srm.onnx", "policy.onnx"]
        .iter()
        .map(|f| std::fs::read(tiny.join(f)).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    check("onnx", &seeds, |b| {
        std::fs::write(&path, b).unwrap();
        if let Ok((proto, bytes)) = onnx_io::read_proto(&path) {
            let _ = onnx_io::declared_io(&proto, bytes);
            let _ = onnx_io::external_data_files(&proto);
        }
    });
}

#[test]
fn fuzz_image_decoding() {
    let seeds: Vec<Vec<u8>> = {
        let mut v = vec![];
        for f in [
            image::ImageFormat::Png,
            image::ImageFormat::Jpeg,
            image::ImageFormat::Bmp,
        ] {
            let img = image::RgbImage::from_fn(12, 9, |x, y| {
                image::Rgb([x as u8 * 20, y as u8 * 25, 90])
            });
            let mut b = vec![];
            img.write_to(&mut Cursor::new(&mut b), f).unwrap();
            v.push(b);
        }
        v
    };
    check("image", &seeds, |b| {
        let _ = InputLimits::default().decode_image(b.to_vec(), Path::new("fuzz.img"), "image");
    });
}

#[test]
fn fuzz_dataset_loader() {
    // Seeds: a split file and a mask; the harness writes them into a dataset folder.
    let mask = {
        let img =
            image::GrayImage::from_fn(8, 6, |x, _| image::Luma([if x < 4 { 255 } else { 0 }]));
        let mut b = vec![];
        img.write_to(&mut Cursor::new(&mut b), image::ImageFormat::Png)
            .unwrap();
        b
    };
    let split = b"a\nb\n".to_vec();
    let seeds = vec![[&[0u8][..], &split].concat(), [&[1u8][..], &mask].concat()];
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("DS");
    for sub in ["images", "masks", "splits"] {
        std::fs::create_dir_all(ds.join(sub)).unwrap();
    }
    let image = image::RgbImage::from_pixel(8, 6, image::Rgb([9, 9, 9]));
    for id in ["a", "b"] {
        image.save(ds.join(format!("images/{id}.png"))).unwrap();
    }
    check("dataset", &seeds, |b| {
        if b.is_empty() {
            return;
        }
        let (which, body) = (b[0] % 2, &b[1..]);
        std::fs::write(
            ds.join("splits/eval.txt"),
            if which == 0 { body } else { b"a\nb\n" },
        )
        .unwrap();
        for id in ["a", "b"] {
            std::fs::write(
                ds.join(format!("masks/{id}.png")),
                if which == 1 { body } else { &mask },
            )
            .unwrap();
        }
        if let Ok(d) = Dataset::open(&ds, "eval") {
            let _ = d.validate();
            for s in d.items() {
                let _ = s.load();
            }
        }
    });
}

/// Gate references (`gate --reference`): a reference the harness writes, then mutated. The
/// header's claimed sizes and offsets, the tensors' shapes and the JSON metadata are all
/// attacker-controlled; loading must give a reference or an error.
#[test]
fn fuzz_gate_references() {
    use alignsam::engine::tensor::Tensor;
    use alignsam::gate::{Reference, ReferenceImage};
    use alignsam::sam::decoder::{PointLabel, PromptPoint};
    use alignsam::sam::postprocess::Map;
    let item = |id: &str| ReferenceImage {
        id: id.into(),
        embedding: Tensor::new(vec![1, 2, 2, 2], (0..8).map(|i| i as f32).collect()).unwrap(),
        prompt: vec![
            PromptPoint {
                x: 3.0,
                y: 4.0,
                label: PointLabel::Positive,
            },
            PromptPoint {
                x: 1.0,
                y: 2.0,
                label: PointLabel::Negative,
            },
        ],
        start_points: 1,
        low_res: Map {
            height: 2,
            width: 3,
            data: vec![0.5; 6],
        },
    };
    let reference = Reference {
        bundle: "tiny".into(),
        encoder_sha256: "ab".repeat(32),
        images: "demo:eval:2 images:3 steps".into(),
        backend: "tract".into(),
        arch: "x86_64".into(),
        items: vec![item("ball"), item("mug")],
    };
    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("seed.safetensors");
    reference.save(&seed_path).unwrap();
    let seeds = vec![std::fs::read(&seed_path).unwrap()];
    let loaded = Reference::load(&seed_path, &InputLimits::default()).expect("the seed loads");
    assert_eq!(loaded.items.len(), 2);
    let path = dir.path().join("ref.safetensors");
    check("gate-reference", &seeds, |b| {
        std::fs::write(&path, b).unwrap();
        let _ = Reference::load(&path, &InputLimits::default());
    });
}

/// Embedding-cache entries (`eval --cache`, training's cache): an entry the cache wrote, then
/// mutated in place; a damaged entry must be reported as absent (and recomputed), never trusted
/// with the wrong shape and never a panic.
#[test]
fn fuzz_cache_entries() {
    use alignsam::cache::EmbeddingCache;
    use alignsam::engine::precision::Precision;
    use alignsam::engine::tensor::Tensor;
    use alignsam::sam::encoder::Embedding;
    use alignsam::sam::transform::FrameGeometry;
    let manifest_path = common::tiny_bundle().join("bundle.toml");
    let manifest = Manifest::parse(
        &std::fs::read_to_string(&manifest_path).unwrap(),
        &manifest_path,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = EmbeddingCache::new(
        dir.path(),
        &manifest,
        Precision::Fp32,
        InputLimits::default(),
    )
    .unwrap();
    let image = dir.path().join("a.png");
    std::fs::write(&image, b"any bytes: the key is their checksum").unwrap();
    let [c, h, w] = manifest.embedding.shape;
    let embedding = Embedding(
        Tensor::new(
            vec![1, c, h, w],
            (0..c * h * w).map(|i| (i % 97) as f32).collect(),
        )
        .unwrap(),
    );
    let frame = manifest.image.size;
    cache
        .put(&image, &embedding, &FrameGeometry::new(30, 40, frame))
        .unwrap();
    let entry = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("the cache wrote an entry");
    let seeds = vec![std::fs::read(&entry).unwrap()];
    assert!(cache.get(&image).unwrap().is_some(), "the seed reads back");
    check("cache-entry", &seeds, |b| {
        std::fs::write(&entry, b).unwrap();
        if let Ok(Some((e, g))) = cache.get(&image) {
            // Whatever is accepted has the model's shape and a geometry that fits the frame.
            assert_eq!(e.0.shape(), [1, c, h, w]);
            assert!(g.original.0 > 0 && g.original.1 > 0 && g.resized.0 <= frame);
        }
    });
}
