//! Training: exported networks match candle when run by tract, a seed gives the same run, a
//! trained bundle loads and segments through the inference path and the CLI, and a broken
//! dataset is refused before any work, naming the file. Runs on the tiny bundle (C = 32) with
//! a synthetic dataset in a temporary directory.

#![cfg(all(feature = "cli", feature = "train"))]

mod common;

use std::path::{Path, PathBuf};

use alignsam::agent::{Agent, LoopOptions, StepLabels};
use alignsam::bundle::manifest::AgentKind;
use alignsam::bundle::{Bundle, InferOptions, OpenOptions, write_bundle};
use alignsam::dataset::Dataset;
use alignsam::engine::{Precision, Tensor};
use alignsam::source::InputLimits;
use alignsam::train::nets::{Actor, ActorKind, Arch, InputNorm, PolicyNet, SrmNet};
use alignsam::train::{self, TrainConfig, TrainJob, export};
use candle_core::{DType, Device};
use image::GrayImage;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const TOLERANCE: f32 = 1e-4;

/// A random state `[1, C, 64, 64]`, values scaled like an embedding gated by a mask.
fn random_state(c: usize, rng: &mut StdRng) -> Tensor {
    let data = (0..c * 64 * 64)
        .map(|_| rng.random_range(-1.0f32..1.0) * rng.random_range(0.0f32..1.0))
        .collect();
    Tensor::new(vec![1, c, 64, 64], data).unwrap()
}

/// Multiplies every weight by `factor`, so that outputs are far from their near-zero start and the
/// comparison means something.
fn scale(params: Vec<&alignsam::train::nets::Param>, factor: f64) {
    for p in params {
        p.var.set(&(p.var.as_tensor() * factor).unwrap()).unwrap();
    }
}

#[test]
fn exported_networks_match_candle_within_1e_4() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    for (c, grid, actor) in [
        (32, 10, ActorKind::Dense),
        (256, 8, ActorKind::Dense),
        (64, 10, ActorKind::Conv),
    ] {
        let arch = Arch {
            actor,
            ..Arch::new(c, 64, grid)
        };
        // A non-trivial standardisation: offsets and scales per channel.
        let norm = |rng: &mut StdRng| InputNorm {
            mean: (0..c).map(|_| rng.random_range(-0.2f32..0.2)).collect(),
            inv_std: (0..c).map(|_| rng.random_range(0.5f32..3.0)).collect(),
        };
        let policy = PolicyNet::new(arch, norm(&mut rng), 1).unwrap();
        let srm = SrmNet::new(arch, norm(&mut rng), 2).unwrap();
        // Larger heads and a non-zero position bias than at initialisation.
        let logits_weight = match &policy.actor {
            Actor::Dense { logits, .. } => &logits.weight,
            Actor::Conv(a) => &a.head.weight,
        };
        scale(vec![logits_weight, &policy.value.weight], 1000.0);
        scale(vec![&srm.conv3.weight], 10.0);
        let s = arch.srm_side();
        let bias: Vec<f32> = (0..s * s).map(|i| (i as f32 * 0.37).sin()).collect();
        srm.position
            .var
            .set(&candle_core::Tensor::from_vec(bias, (1, 1, s, s), &Device::Cpu).unwrap())
            .unwrap();

        let (pp, sp) = (
            tmp.path().join(format!("policy{c}{actor:?}.onnx")),
            tmp.path().join(format!("srm{c}{actor:?}.onnx")),
        );
        export::save_policy(&policy, &pp).unwrap();
        export::save_srm(&srm, &sp).unwrap();
        let states: Vec<Tensor> = (0..3).map(|_| random_state(c, &mut rng)).collect();
        let check =
            export::compare(common::tract(2).as_ref(), &policy, &srm, &pp, &sp, &states).unwrap();
        assert!(check.max() <= TOLERANCE, "C = {c}, {actor:?}: {check:?}");

        // The outputs are not trivially small (the comparison would then prove little).
        let x = alignsam::train::nets::to_candle(&states[0]).unwrap();
        let (logits, value) = policy.forward(&x).unwrap();
        let spread = logits
            .max_keepdim(1)
            .unwrap()
            .sub(&logits.min_keepdim(1).unwrap())
            .unwrap();
        let spread = spread.to_vec2::<f32>().unwrap()[0][0];
        assert!(spread > 0.5, "logits barely vary: {spread}");
        assert!(
            value
                .to_dtype(DType::F32)
                .unwrap()
                .abs()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
                > 1e-3
        );
        let p = alignsam::train::nets::values(&srm.forward(&x).unwrap()).unwrap();
        assert!(
            p.iter().any(|&v| v > 0.6) && p.iter().any(|&v| v < 0.4),
            "SRM map is flat"
        );
    }
}

fn short_config(seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(seed, 4);
    c.steps = 3;
    c.ppo.epochs = 3;
    c
}

/// The committed tiny bundle, opened at fp32.
fn tiny() -> Bundle {
    Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap()
}

/// Trains with `bundle` into `out` and returns the report.
fn train_with(
    bundle: &Bundle,
    data: &Path,
    cache: &Path,
    out: &Path,
    config: TrainConfig,
    holdout: Option<&Dataset>,
) -> train::TrainReport {
    let dataset = Dataset::open(data, "train").unwrap();
    let backend = common::tract(2);
    let job = TrainJob {
        bundle,
        backend: backend.as_ref(),
        dataset: &dataset,
        cache_root: cache.to_path_buf(),
        limits: InputLimits::default(),
        out_dir: out.to_path_buf(),
        config,
        holdout,
        threads: 2,
    };
    train::run(&job, &mut |_| {}).unwrap()
}

/// The training options that change what an episode sees (`--srm-start`: inference's start
/// points; `--actor conv`; `--step-labels embedding`; `--no-repeat`) are as repeatable as the
/// default, and do
/// change the run; the label source is written to the bundle, so that inference labels alike.
#[test]
fn episode_options_repeat_and_differ_from_the_default() {
    let (tmp, data) = common::temp_dataset(3);
    let (cache, tiny) = (tmp.path().join("cache"), tiny());
    let log = |name: &str, config: TrainConfig| {
        let out = tmp.path().join(name);
        train_with(&tiny, &data, &cache, &out, config, None);
        std::fs::read_to_string(out.join("train_log.csv")).unwrap()
    };
    let default = log("default", short_config(5));
    let mut srm_start = short_config(5);
    srm_start.srm_start = true;
    let mut conv = short_config(5);
    conv.actor = ActorKind::Conv;
    let mut embedding_labels = short_config(5);
    embedding_labels.step_labels = StepLabels::Embedding;
    let mut no_repeat = short_config(5);
    no_repeat.forbid_repeats = true;
    for (name, config) in [
        ("srm-start", srm_start),
        ("conv", conv),
        ("embedding-labels", embedding_labels),
        ("no-repeat", no_repeat),
    ] {
        let a = log(&format!("{name}-a"), config.clone());
        let b = log(&format!("{name}-b"), config);
        assert_eq!(a, b, "{name}: same seed, different logs");
        assert_ne!(a, default, "{name}: the option changed nothing");
    }
    let labels = |name: &str| {
        let dir = tmp.path().join(name);
        Bundle::open(&dir, OpenOptions::default())
            .unwrap()
            .manifest
            .agent
            .step_labels
    };
    assert_eq!(labels("default"), StepLabels::State);
    assert_eq!(labels("embedding-labels-a"), StepLabels::Embedding);
}

#[test]
fn same_seed_same_curves_and_the_bundle_segments() {
    let (tmp, data) = common::temp_dataset(3);
    let cache = tmp.path().join("cache");
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let (eval, tiny) = (Dataset::open(&data, "eval").unwrap(), tiny());
    let report = train_with(&tiny, &data, &cache, &a, short_config(5), Some(&eval));
    assert_eq!(report.timing.cache_computed, 3);
    train_with(&tiny, &data, &cache, &b, short_config(5), None);
    train_with(&tiny, &data, &cache, &c, short_config(6), None);

    let csv = |d: &PathBuf| std::fs::read(d.join("train_log.csv")).unwrap();
    assert_eq!(csv(&a), csv(&b), "same seed, different training logs");
    assert_ne!(csv(&a), csv(&c), "another seed gave the same log");
    let text = String::from_utf8(csv(&a)).unwrap();
    assert_eq!(text.lines().count(), 1 + 4, "{text}");
    assert!(
        text.starts_with("episode,image,reward,hit_rate,srm_loss,srm_iou,"),
        "{text}"
    );
    // The exported files are the same bytes too.
    for f in ["policy.onnx", "srm.onnx"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    for f in ["bundle.toml", "curves.png", "train_config.json"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    assert!(
        report.export_check.max() <= TOLERANCE,
        "{:?}",
        report.export_check
    );
    let h = report.holdout.as_ref().expect("held-out report");
    assert_eq!((h.images, h.steps), (2, 3));
    assert_eq!(h.policy.points, 6);

    // The trained bundle loads like any other and segments an image through the loop.
    let bundle = Bundle::open(&a, OpenOptions::default()).unwrap();
    let m = &bundle.manifest;
    assert_eq!(
        (m.agent.grid, m.agent.max_steps),
        (10, 15),
        "grid and step limit come from the source"
    );
    assert_eq!(m.models.srm.as_ref().unwrap().map_size, 16);
    assert!(m.models.policy.as_ref().unwrap().value_head);
    let agent = Agent::load(&bundle, common::tract(2).as_ref()).unwrap();
    let (img, _) = Dataset::open(&data, "train").unwrap().items()[0]
        .load()
        .unwrap();
    let r = agent
        .segment(
            &img,
            &LoopOptions {
                max_steps: 4,
                stop_iou: None,
                ..LoopOptions::default()
            },
        )
        .unwrap();
    assert_eq!((r.points.len(), r.mask.len()), (2 + 4, 96 * 64));
}

/// The paper's agent trained from a bundle whose agent is the clicker (the committed small SAM)
/// is written as the paper's agent: the output loads and segments (it kept `kind = "clicker"`
/// without a clicker model, and failed at its export check).
#[test]
fn the_paper_agent_trained_from_a_clicker_bundle_is_a_paper_bundle() {
    let (tmp, data) = common::temp_dataset(2);
    let source = Bundle::open(
        &common::root().join("models/small-sam"),
        OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(source.manifest.agent.kind, AgentKind::Clicker);
    let out = tmp.path().join("paper");
    let mut config = TrainConfig::new(3, 2);
    config.steps = 2;
    config.ppo.epochs = 1;
    train_with(
        &source,
        &data,
        &tmp.path().join("cache"),
        &out,
        config,
        None,
    );
    let bundle = Bundle::open(&out, OpenOptions::default()).unwrap();
    assert_eq!(bundle.manifest.agent.kind, AgentKind::Paper);
    assert!(bundle.manifest.models.clicker.is_none());
    Agent::load(&bundle, common::tract(2).as_ref()).unwrap();
}

/// Trained through a quantised variant, the output bundle still names the fp32 files as its
/// models and lists the variants beside them (without the source's gate records, which measured
/// another policy): a quantised file is never passed off as fp32.
#[test]
fn training_on_a_variant_keeps_fp32_as_the_model_and_the_variants_as_variants() {
    let (tmp, data) = common::temp_dataset(3);
    // The tiny bundle with an int8 "variant" of its encoder: a copy, so it runs the same way,
    // but another file.
    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    for f in [
        "encoder.onnx",
        "decoder_lowres.onnx",
        "policy.onnx",
        "srm.onnx",
    ] {
        std::fs::copy(common::tiny_bundle().join(f), source.join(f)).unwrap();
    }
    let int8 = source.join("encoder.int8.onnx");
    std::fs::copy(source.join("encoder.onnx"), &int8).unwrap();
    let options = InferOptions {
        encoder_variants: [("int8".to_string(), int8.clone())].into(),
        ..InferOptions::default()
    };
    write_bundle(&source, &source, &options).unwrap();
    let open = OpenOptions {
        precision: Precision::Int8,
        allow_ungated: true,
        ..OpenOptions::default()
    };
    let bundle = Bundle::open(&source, open).unwrap();
    assert_eq!(bundle.encoder_path(), source.join("encoder.int8.onnx"));

    let out = tmp.path().join("out");
    train_with(
        &bundle,
        &data,
        &tmp.path().join("cache"),
        &out,
        short_config(5),
        None,
    );
    let trained = Bundle::open(&out, OpenOptions::default()).unwrap();
    let encoder = &trained.manifest.models.encoder;
    let same = |a: PathBuf, b: &Path| a.canonicalize().unwrap() == b.canonicalize().unwrap();
    assert!(
        same(trained.path(&encoder.file), &source.join("encoder.onnx")),
        "the trained bundle's encoder is {}",
        encoder.file
    );
    assert!(same(trained.path(&encoder.variants["int8"].file), &int8));
    assert!(
        trained.manifest.gate.is_empty(),
        "gate records were carried"
    );
    assert!(
        trained.manifest.description.contains("int8 embeddings"),
        "{}",
        trained.manifest.description
    );
    assert_eq!(trained.encoder_path(), trained.path(&encoder.file));
}

fn cli(args: &[&str]) -> std::process::Output {
    common::alignsam().args(args).output().unwrap()
}

#[test]
fn cli_trains_then_segment_and_bench_load_the_bundle() {
    let (tmp, data) = common::temp_dataset(2);
    let out = tmp.path().join("out");
    let (tiny, cache) = (common::tiny_bundle(), tmp.path().join("cache"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "train",
        "--bundle",
        &s(&tiny),
        "--data",
        &s(&data),
        "--images",
        "2",
        "--out",
        &s(&out),
        "--cache",
        &s(&cache),
        "--episodes",
        "2",
        "--steps",
        "2",
        "--epochs",
        "2",
        "--no-progress",
        "--threads",
        "2",
    ];
    let o = cli(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("training") && stdout.contains("export check"),
        "{stdout}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("train_config.json")).unwrap()).unwrap();
    assert_eq!(config["image_ids"], serde_json::json!(["img00", "img01"]));
    assert_eq!(config["config"]["seed"], 0);

    let masks = tmp.path().join("seg");
    let image = data.join("images/img00.png");
    let json = tmp.path().join("seg.jsonl");
    let o = cli(&[
        "segment",
        "--bundle",
        &s(&out),
        "--out",
        &s(&masks),
        "--json",
        &s(&json),
        "--threads",
        "2",
        &s(&image),
    ]);
    assert!(
        o.status.success(),
        "segment: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(std::fs::read_to_string(&json).unwrap().lines().count() == 1);
    let o = cli(&[
        "bench",
        "--bundle",
        &s(&out),
        "--steps",
        "1",
        "--frames",
        "1",
        "--warmup",
        "0",
        "--no-decoder-comparison",
        "--threads",
        "2",
    ]);
    assert!(
        o.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn broken_datasets_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let tiny = s(&common::tiny_bundle());
    let run = |data: &Path| {
        let out = tmp.path().join("out");
        let o = cli(&[
            "train",
            "--bundle",
            &tiny,
            "--data",
            &s(data),
            "--out",
            &s(&out),
            "--cache",
            &s(&tmp.path().join("c")),
            "--no-progress",
        ]);
        assert!(!o.status.success());
        assert!(
            !out.join("policy.onnx").exists(),
            "nothing is trained from a broken dataset"
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    let missing = tmp.path().join("missing");
    common::synthetic_dataset(&missing, 2);
    std::fs::remove_file(missing.join("masks/img01.png")).unwrap();
    let e = run(&missing);
    assert!(e.contains("img01.png: mask not found"), "{e}");

    let mismatch = tmp.path().join("mismatch");
    common::synthetic_dataset(&mismatch, 2);
    GrayImage::new(50, 40)
        .save(mismatch.join("masks/img00.png"))
        .unwrap();
    let e = run(&mismatch);
    assert!(
        e.contains("img00.png is 50x40 but") && e.contains("img00.png is 96x64"),
        "{e}"
    );

    let empty = tmp.path().join("empty");
    common::synthetic_dataset(&empty, 1);
    std::fs::write(empty.join("splits/train.txt"), "\n").unwrap();
    let e = run(&empty);
    assert!(e.contains("train.txt: split file lists no ids"), "{e}");
}
