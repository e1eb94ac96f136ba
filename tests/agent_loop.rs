//! The prompting loop against hand-computed cases: a policy built to always prefer one patch and
//! an SRM with a fixed map, over the tiny SAM bundle. Also the three ways the loop stops.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use alignsam::agent::state::state;
use alignsam::agent::{
    Agent, Choice, Click, Decision, ImageOptions, LoopOptions, LoopResult, PatchChooser,
    PointOrigin, PointRecord, StepLabels, StepView, StopReason, WarmStart,
};
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::sam::PointLabel;
use image::RgbImage;

const G: usize = 10;

/// The SRM map used throughout: 0.5 everywhere, a clear maximum and minimum inside a 300x200
/// image, and more extreme values in cells that lie in the frame's padding (rows 7-9 for that
/// image), which the start points must ignore.
fn srm_map() -> Vec<f32> {
    let mut m = vec![0.5f32; G * G];
    m[G + 1] = 0.95; // row 1, col 1: the positive start point
    m[5 * G + 4] = 0.02; // row 5, col 4: the negative start point
    m[2 * G + 7] = 0.8; // row 2, col 7: where patch 37's centre falls for a 300x200 image
    m[8 * G] = 0.99; // padding
    m[9 * G + 9] = 0.0; // padding
    m
}

/// A copy of the tiny bundle whose policy always prefers `patch` (logit 5, others 0) and whose
/// SRM outputs `srm_map()`.
fn bundle_with(tmp: &Path, patch: usize) -> PathBuf {
    common::constant_agent_bundle(tmp, G, patch, &srm_map())
}

fn agent(bundle: &Path) -> Agent {
    let b = Bundle::open(bundle, OpenOptions::default()).unwrap();
    let backend = common::tract(2);
    Agent::load(&b, backend.as_ref()).unwrap()
}

fn image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    })
}

fn fixed(steps: usize) -> LoopOptions {
    LoopOptions::fixed_steps(steps)
}

#[test]
fn points_follow_the_policy_and_labels_follow_the_srm() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    // The paper's loop: the policy may choose its patch again.
    let r = agent.segment(&image(300, 200), &fixed(3).paper()).unwrap();

    // 300x200 (w x h) resizes to 1024x683 in the 1024 frame; SRM cells are 102.4 frame pixels.
    // Positive start: cell (1,1), centre (153.6, 153.6) in the frame -> (153.6 * 300/1024,
    // 153.6 * 200/683) in the image. Negative start: cell (5,4), centre (460.8, 563.2).
    assert_eq!(r.points.len(), 2 + 3);
    let (pos, neg) = (&r.points[0], &r.points[1]);
    assert_eq!(
        (pos.label, pos.origin, pos.step),
        (PointLabel::Positive, PointOrigin::SrmStart, 0)
    );
    assert!(
        (pos.x - 45.0).abs() < 1e-9 && (pos.y - 153.6 * 200.0 / 683.0).abs() < 1e-9,
        "{pos:?}"
    );
    assert_eq!(pos.srm_prob, 0.95);
    assert_eq!(neg.label, PointLabel::Negative);
    assert!(
        (neg.x - 135.0).abs() < 1e-9 && (neg.y - 563.2 * 200.0 / 683.0).abs() < 1e-9,
        "{neg:?}"
    );
    assert_eq!(neg.srm_prob, 0.02);

    // Every step: patch 37 = row 3, col 7, centre (7.5 * 30, 3.5 * 20) = (225, 70) in the image,
    // (768, 239.05) in the frame: SRM cell (2, 7), probability 0.8, so a positive label.
    for (i, p) in r.points[2..].iter().enumerate() {
        assert_eq!((p.step, p.patch, p.origin), (i + 1, 37, PointOrigin::Step));
        assert_eq!((p.x, p.y), (225.0, 70.0));
        assert_eq!((p.label, p.srm_prob), (PointLabel::Positive, 0.8));
        assert!(p.iou_prediction.is_finite());
    }
    assert_eq!((r.steps, r.stop), (3, StopReason::StepLimit));
    assert_eq!(r.mask.len(), 300 * 200);
}

/// The tiny bundle's random SRM reads its input, so the map on `E * M` differs from the map on
/// `E`: each point's recorded probability says which map labelled it. A warm start relabels the
/// previous frame's points with the same map as the steps.
#[test]
fn step_labels_come_from_the_map_the_options_name() {
    let agent = agent(&common::tiny_bundle());
    let encoded = agent.encode(&image(300, 200)).unwrap();
    let (e, g) = (&encoded.embedding, &encoded.geometry);
    let on_embedding = agent.srm.predict(&state(e, None), None).unwrap();
    let from_embedding_map = |x, y| agent.srm.label_at(&on_embedding, x, y, g).0;
    let run = |step_labels, warm: Option<&WarmStart>| {
        let options = LoopOptions {
            step_labels,
            ..fixed(4)
        };
        let per_image = ImageOptions {
            warm,
            ..ImageOptions::default()
        };
        agent.run_on_embedding(e, g, &options, per_image).unwrap()
    };
    let cold = run(StepLabels::Embedding, None);
    assert_eq!(cold.points.len(), 2 + 4);
    for p in &cold.points[2..] {
        assert_eq!(p.srm_prob, from_embedding_map(p.x, p.y), "{p:?}");
    }
    let warm = WarmStart::from_result(&cold, 3);
    for step_labels in [StepLabels::Embedding, StepLabels::State] {
        let from_e = |r: &LoopResult| {
            r.points
                .iter()
                .all(|p| p.srm_prob == from_embedding_map(p.x, p.y))
        };
        let warm_run = run(step_labels, Some(&warm));
        assert_eq!(warm_run.points[0].origin, PointOrigin::PreviousFrame);
        assert_eq!(
            from_e(&warm_run),
            step_labels == StepLabels::Embedding,
            "{step_labels:?}: {:?}",
            warm_run.points
        );
    }
    let paper = run(StepLabels::State, None);
    assert!(
        paper.points[2..]
            .iter()
            .any(|p| p.srm_prob != from_embedding_map(p.x, p.y)),
        "labels on E * M should differ from the map on E somewhere: {:?}",
        paper.points
    );
}

#[test]
fn forbidding_repeats_moves_to_the_next_best_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    let options = LoopOptions {
        forbid_repeats: true,
        ..fixed(3)
    };
    let r = agent.segment(&image(300, 200), &options).unwrap();
    // The start points sit in patches 21 (45, 45.0) and 84 (135, 164.9); then 37, and after it
    // every logit is 0, so the lowest free indices: 0 and 1. Their centres (15, 10) and (45, 10)
    // fall in SRM cells (0,0) and (0,1), probability 0.5: positive (>= 0.5).
    let patches: Vec<usize> = r.points.iter().map(|p| p.patch).collect();
    assert_eq!(patches, [21, 84, 37, 0, 1]);
    assert_eq!((r.points[3].x, r.points[3].y), (15.0, 10.0));
    assert_eq!(r.points[4].label, PointLabel::Positive);
}

#[test]
fn square_image_patches_and_cells_coincide() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 27));
    let r = agent.segment(&image(200, 200), &fixed(1)).unwrap();
    // Square image: patch 27 (row 2, col 7) is SRM cell (2,7): 0.8, positive, at (150, 50).
    let p = &r.points[2];
    assert_eq!(
        (p.x, p.y, p.label, p.srm_prob),
        (150.0, 50.0, PointLabel::Positive, 0.8)
    );
    // On a square image the padding cells are inside the image: cell (8,0) with 0.99 wins.
    assert_eq!(r.points[0].srm_prob, 0.99);
    assert_eq!(r.points[1].srm_prob, 0.0);
}

/// The loop's mechanics alone, as the trainers drive them: clicks added through `LoopCore` count
/// as steps, each decodes every point so far, and `finish` reports them.
#[test]
fn clicks_through_the_loop_core_are_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    let encoded = agent.encode(&image(120, 90)).unwrap();
    let options = fixed(2).paper();
    let mut episode = agent
        .start(&encoded.embedding, &encoded.geometry, None, None, &options)
        .unwrap();
    assert_eq!((episode.steps(), episode.points().len()), (0, 2));
    let core = agent.core();
    for (i, patch) in [12, 57].into_iter().enumerate() {
        let before = episode.current().logits.clone();
        let point = PointRecord {
            step: i + 1,
            x: 10.0 + 40.0 * i as f64,
            y: 20.0,
            label: PointLabel::Positive,
            patch,
            origin: PointOrigin::Step,
            srm_prob: f32::NAN,
            iou_prediction: f32::NAN,
        };
        assert!(!core.click(&mut episode, point, &options).unwrap());
        assert_eq!((episode.steps(), episode.points().len()), (i + 1, i + 3));
        assert!(episode.points()[i + 2].iou_prediction.is_finite());
        assert_ne!(episode.current().logits, before, "the click was decoded");
    }
    let r = core.finish(
        episode,
        StopReason::StepLimit,
        std::time::Instant::now(),
        &options,
    );
    assert_eq!((r.steps, r.kept_step, r.points.len()), (2, 2, 4));
}

#[test]
fn stops_at_the_step_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    for steps in [0, 1, 4] {
        let r = agent.segment(&image(120, 90), &fixed(steps)).unwrap();
        assert_eq!(
            (r.stop, r.steps, r.points.len()),
            (StopReason::StepLimit, steps, 2 + steps)
        );
        assert_eq!(r.times.steps.len(), steps);
    }
}

#[test]
fn stops_on_the_time_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    let img = image(300, 200);
    // A budget smaller than the encoder alone: no step can start.
    let tight = LoopOptions {
        budget: Some(Duration::from_micros(100)),
        ..fixed(10)
    };
    let r = agent.segment(&img, &tight).unwrap();
    assert_eq!((r.stop, r.steps), (StopReason::TimeBudget, 0));

    // A budget of about half an unbounded run: it stops part way, and not later than the
    // budget plus one step.
    // The fastest of a few runs after a warm-up: one run slowed by another process would give a
    // budget that a quicker run fits into whole.
    agent.segment(&img, &fixed(8)).unwrap(); // warm-up
    let full = (0..3)
        .map(|_| agent.segment(&img, &fixed(8)).unwrap())
        .min_by(|a, b| a.times.total_ms.total_cmp(&b.times.total_ms))
        .unwrap();
    let budget_ms = full.times.total_ms * 0.5;
    let half = LoopOptions {
        budget: Some(Duration::from_secs_f64(budget_ms / 1e3)),
        ..fixed(8)
    };
    let r = agent.segment(&img, &half).unwrap();
    assert_eq!(r.stop, StopReason::TimeBudget);
    assert!(r.steps < 8, "{} steps", r.steps);
    let longest_step = r.times.steps.iter().map(|s| s.total_ms).fold(0.0, f64::max);
    let before_post = r.times.total_ms - r.times.postprocess_ms;
    assert!(
        before_post <= budget_ms + longest_step.max(full.times.steps[0].total_ms) * 1.5,
        "{before_post} ms for a {budget_ms} ms budget"
    );
}

#[test]
fn stops_when_the_mask_stops_changing() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    let img = image(300, 200);
    // Any IoU is >= 0: converged after the first step.
    let r = agent
        .segment(
            &img,
            &LoopOptions {
                stop_iou: Some(0.0),
                ..fixed(10)
            },
        )
        .unwrap();
    assert_eq!((r.stop, r.steps), (StopReason::Converged, 1));
    // An unreachable tolerance never stops the loop early.
    let r = agent
        .segment(
            &img,
            &LoopOptions {
                stop_iou: Some(1.01),
                ..fixed(4)
            },
        )
        .unwrap();
    assert_eq!((r.stop, r.steps), (StopReason::StepLimit, 4));
}

/// A chooser that clicks the given patches in order with its own labels, estimates each mask's
/// IoU from a list, and stops after `stop_after` steps.
struct Scripted {
    clicks: Vec<(usize, PointLabel)>,
    quality: Vec<f32>,
    stop_after: Option<usize>,
}

impl PatchChooser for Scripted {
    fn choose(&mut self, view: &StepView) -> anyhow::Result<Choice> {
        let quality = self.quality.get(view.steps).copied();
        if Some(view.steps) == self.stop_after {
            return Ok(Choice {
                decision: Decision::Stop,
                quality,
            });
        }
        let (patch, label) = self.clicks[view.steps];
        let click = Click {
            patch,
            at: None,
            label: Some(label),
        };
        Ok(Choice {
            decision: Decision::Click(click),
            quality,
        })
    }

    fn assess(&mut self, view: &StepView) -> anyhow::Result<Option<f32>> {
        Ok(self.quality.get(view.steps).copied())
    }
}

fn scripted(stop_after: Option<usize>) -> Scripted {
    Scripted {
        // Three patches, each with the label the script says.
        clicks: vec![
            (54, PointLabel::Negative),
            (37, PointLabel::Positive),
            (12, PointLabel::Negative),
        ],
        quality: vec![0.5, 0.9, 0.2, 0.1],
        stop_after,
    }
}

fn run_scripted(
    agent: &Agent,
    chooser: &mut Scripted,
    options: &LoopOptions,
    truth: Option<&alignsam::dataset::Mask>,
) -> LoopResult {
    let encoded = agent.encode(&image(300, 200)).unwrap();
    let per_image = ImageOptions {
        chooser: Some(chooser),
        truth,
        ..ImageOptions::default()
    };
    agent
        .run_on_embedding(&encoded.embedding, &encoded.geometry, options, per_image)
        .unwrap()
}

#[test]
fn keep_best_returns_the_mask_the_chooser_rates_best() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    let traced = LoopOptions {
        trace: true,
        ..fixed(3)
    };
    let r = run_scripted(&agent, &mut scripted(None), &traced, None);
    // Masks 0..=3 rated 0.5, 0.9, 0.2, 0.1: the loop clicks three times and keeps mask 1.
    assert_eq!(
        (r.steps, r.kept_step, r.stop),
        (3, 1, StopReason::StepLimit)
    );
    assert_eq!(r.trace.len(), 4);
    assert_eq!(r.low_res, r.trace[1].low_res);
    assert_eq!(r.iou_prediction, r.points[2].iou_prediction);
    assert_eq!(r.kept_points().len(), 3, "the start points and step 1's");
    assert_eq!(
        r.trace.iter().map(|t| t.quality).collect::<Vec<_>>(),
        [0.5, 0.9, 0.2, 0.1]
    );
    // The chooser's labels are the points' labels.
    let labels: Vec<_> = r.points[2..].iter().map(|p| p.label).collect();
    assert_eq!(
        labels,
        [
            PointLabel::Negative,
            PointLabel::Positive,
            PointLabel::Negative
        ]
    );
    // The paper's loop returns the last mask.
    let r = run_scripted(&agent, &mut scripted(None), &traced.clone().paper(), None);
    assert_eq!((r.steps, r.kept_step), (3, 3));
    assert_eq!(r.low_res, r.trace[3].low_res);
}

#[test]
fn the_agents_stop_ends_the_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    let r = run_scripted(&agent, &mut scripted(Some(2)), &fixed(10), None);
    assert_eq!(
        (r.stop, r.steps, r.kept_step),
        (StopReason::AgentStop, 2, 1)
    );
    assert_eq!(r.points.len(), 4);
}

#[test]
fn labels_from_the_srm_or_the_ground_truth_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent(&bundle_with(tmp.path(), 37));
    // --labels srm: the SRM labels the chooser's clicks. For a 300x200 image patch 54's centre
    // (135, 110) falls in SRM cell (3, 4) and patch 12's (75, 30) in cell (1, 2), both 0.5;
    // patch 37's in cell (2, 7), 0.8: all positive, against the script's two negatives.
    let srm = LoopOptions {
        srm_labels: true,
        ..fixed(3)
    };
    let r = run_scripted(&agent, &mut scripted(None), &srm, None);
    assert!(
        r.points[2..]
            .iter()
            .all(|p| p.label == PointLabel::Positive)
    );
    // --labels truth: every point from the ground truth, start points too. Truth: the image's
    // right half (x >= 150).
    let gt = alignsam::dataset::Mask {
        width: 300,
        height: 200,
        data: (0..300 * 200).map(|i| i % 300 >= 150).collect(),
    };
    let r = run_scripted(&agent, &mut scripted(None), &fixed(3), Some(&gt));
    for p in &r.points {
        let expected = if p.x >= 150.0 {
            PointLabel::Positive
        } else {
            PointLabel::Negative
        };
        assert_eq!(p.label, expected, "{p:?}");
    }
    assert!(r.points.iter().any(|p| p.label == PointLabel::Positive));
    assert!(r.points.iter().any(|p| p.label == PointLabel::Negative));
}
