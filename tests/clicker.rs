//! The learned clicker end to end on the tiny bundle: a clicker trains in seconds on a synthetic
//! dataset, its bundle opens as `[agent] kind = "clicker"`, tract and rten run the exported file
//! alike, the loop runs it (labels, stop, kept mask), and a seed repeats the run.

#![cfg(feature = "train")]

mod common;

use std::path::Path;
use std::time::Instant;

use alignsam::agent::{
    Agent, AgentKind, ClickerChooser, ImageOptions, LoopOptions, PatchChooser, PointOrigin,
    StopReason,
};
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::dataset::Dataset;
use alignsam::engine::{Backend, BackendKind};
use alignsam::source::InputLimits;
use alignsam::train::imitation::{self, ClickerConfig, ClickerJob, ClickerReport, files};

/// A configuration small enough for seconds: 3 steps, one DAgger round, narrow networks.
fn tiny_config(seed: u64) -> ClickerConfig {
    let mut c = ClickerConfig::new(seed);
    c.steps = 3;
    c.rounds = 1;
    c.trunk_epochs = 2;
    c.head_epochs = 1;
    c.trunk_folds = 2;
    c.holdout = 0.34;
    c.width = 4;
    c.head_width = 4;
    c
}

fn train(data: &Path, cache: &Path, out: &Path, config: ClickerConfig) -> ClickerReport {
    let bundle = Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap();
    let datasets = [Dataset::open(data, "train").unwrap()];
    let backend = common::tract(2);
    let job = ClickerJob {
        bundle: &bundle,
        backend: backend.as_ref(),
        datasets: &datasets,
        cache_root: cache.to_path_buf(),
        limits: InputLimits::default(),
        out_dir: out.to_path_buf(),
        config,
        threads: 2,
    };
    imitation::run(&job, &mut |_| {}).unwrap()
}

#[test]
fn a_tiny_clicker_trains_and_its_bundle_runs_on_tract_and_rten() {
    let (tmp, data) = common::temp_dataset(6);
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("clicker"));
    let started = Instant::now();
    let report = train(&data, &cache, &out, tiny_config(0));
    let seconds = started.elapsed().as_secs_f64();
    assert!(seconds < 60.0, "a tiny clicker took {seconds:.1} s");
    for f in [
        files::CLICKER,
        files::LOG,
        files::TRUNK_LOG,
        files::CURVES,
        files::CONFIG,
        "bundle.toml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // A header and one line per round (the teacher's and one DAgger round).
    let log = std::fs::read_to_string(out.join(files::LOG)).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(
        report.export_check <= 1e-4,
        "candle and the export differ by {}",
        report.export_check
    );
    assert_eq!(report.images, (4, 2));
    assert_eq!(report.trunk.len(), 2);

    let bundle = Bundle::open(&out, OpenOptions::default()).unwrap();
    let m = &bundle.manifest;
    assert_eq!(m.agent.kind, AgentKind::Clicker);
    assert_eq!(m.agent.best_patch, Some(report.best_patch));
    assert_eq!(m.agent.max_steps, 3);
    let clicker = m.models.clicker.as_ref().expect("[models.clicker]");
    assert_eq!(clicker.map_size, 16);
    assert!(m.models.srm.is_some() && m.models.policy.is_some());

    // Both pure-Rust engines run the file, and agree.
    let image = image::open(data.join("images/img00.png"))
        .unwrap()
        .to_rgb8();
    let mut backends: Vec<Box<dyn Backend>> = vec![common::tract(2)];
    backends.extend(common::backend(BackendKind::Rten, 2));
    let mut outputs = vec![];
    for backend in &backends {
        let agent = Agent::load(&bundle, backend.as_ref()).unwrap();
        let encoded = agent.encode(&image).unwrap();
        let options = LoopOptions::fixed_steps(3);
        let episode = agent
            .start(&encoded.embedding, &encoded.geometry, None, None, &options)
            .unwrap();
        let out = agent
            .clicker()
            .unwrap()
            .run(&episode.view(agent.grid, true))
            .unwrap();
        assert!((0.0..=1.0).contains(&out.stop) && (0.0..=1.0).contains(&out.quality));
        outputs.push(out);

        // The loop with the bundle's agent: the clicker's clicks, its labels, at most 3 steps.
        let r = agent.segment(&image, &options).unwrap();
        assert!(r.steps <= 3 && r.kept_step <= r.steps, "{r:?}");
        assert!(matches!(
            r.stop,
            StopReason::StepLimit | StopReason::AgentStop
        ));
        let steps: Vec<_> = r
            .points
            .iter()
            .filter(|p| p.origin == PointOrigin::Step)
            .collect();
        assert_eq!(steps.len(), r.steps);
        // No patch with the same label twice.
        for (i, a) in r.points.iter().enumerate() {
            for b in &r.points[i + 1..] {
                assert!((a.patch, a.label) != (b.patch, b.label), "{:?}", r.points);
            }
        }
        assert_eq!(r.mask.len(), 96 * 64);
    }
    if let [a, b] = outputs.as_slice() {
        let diff = a.scores[1]
            .data
            .iter()
            .zip(&b.scores[1].data)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "tract and rten scores differ by {diff}");
        assert!((a.stop - b.stop).abs() < 1e-4 && (a.quality - b.quality).abs() < 1e-4);
    }

    // The same seed trains the same clicker; another seed another one.
    let again = train(&data, &cache, &tmp.path().join("again"), tiny_config(0));
    let rounds = |r: &ClickerReport| -> Vec<Vec<f32>> {
        r.rounds.iter().map(|x| x.holdout_iou.clone()).collect()
    };
    assert_eq!(rounds(&report), rounds(&again));
    let bytes = |d: &Path| std::fs::read(d.join(files::CLICKER)).unwrap();
    assert_eq!(bytes(&out), bytes(&tmp.path().join("again")));
    train(&data, &cache, &tmp.path().join("other"), tiny_config(1));
    assert_ne!(bytes(&out), bytes(&tmp.path().join("other")));
}

/// The clicker without its stop action clicks to the step limit; with a stop threshold above
/// every probability it never stops, and with 0 it stops at once.
#[test]
fn the_stop_action_ends_the_loop_and_can_be_switched_off() {
    let (tmp, data) = common::temp_dataset(6);
    let out = tmp.path().join("clicker");
    train(&data, &tmp.path().join("cache"), &out, tiny_config(3));
    let image = image::open(data.join("images/img01.png"))
        .unwrap()
        .to_rgb8();
    let text = std::fs::read_to_string(out.join("bundle.toml")).unwrap();
    for (threshold, stops) in [(0.0f32, true), (2.0, false)] {
        let edited = with_key(&text, "stop_threshold = ", threshold);
        std::fs::write(out.join("bundle.toml"), edited).unwrap();
        let bundle = Bundle::open(&out, OpenOptions::default()).unwrap();
        let backend = common::tract(2);
        let agent = Agent::load(&bundle, backend.as_ref()).unwrap();
        let r = agent.segment(&image, &LoopOptions::fixed_steps(3)).unwrap();
        if stops {
            assert_eq!(
                (r.stop, r.steps, r.kept_step),
                (StopReason::AgentStop, 0, 0)
            );
        } else {
            assert_eq!((r.stop, r.steps), (StopReason::StepLimit, 3));
        }
        // The ablation without stop clicks to the limit whatever the threshold.
        let mut no_stop = ClickerChooser::new(agent.clicker().unwrap(), false);
        let encoded = agent.encode(&image).unwrap();
        let per_image = ImageOptions {
            chooser: Some(&mut no_stop as &mut dyn PatchChooser),
            ..ImageOptions::default()
        };
        let r = agent
            .run_on_embedding(
                &encoded.embedding,
                &encoded.geometry,
                &LoopOptions::fixed_steps(3),
                per_image,
            )
            .unwrap();
        assert_eq!((r.stop, r.steps), (StopReason::StepLimit, 3));
    }
}

/// `stop_threshold = X` in a manifest's text set to `value`.
fn with_key(text: &str, key: &str, value: f32) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with(key) {
                format!("{key}{value:?}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
