//! The committed small SAM (models/small-sam) on the demo images, scored against their true
//! masks (demo/masks, drawn by demo/make_images.py) with the oracle's clicks: a regression in
//! preprocessing, loading, the decoder or postprocessing shows up here as a quality drop, not only
//! as a parity failure. The floors sit a few points under what the committed model measures
//! (models/README.md gives the figures and the command).

mod common;

use alignsam::agent::{Agent, LoopOptions};
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::dataset::load_mask;
use alignsam::eval::run_oracle;
use alignsam::sam::Sam;
use alignsam::source::{InputLimits, load_rgb};

/// Minimum IoU after 3 oracle clicks, per demo image: a few points under what the committed
/// model measures (ball 0.976, mug 0.848, leaf 0.612: the leaf's thin stem takes this model a
/// fourth and fifth click, 0.756 and 0.825; `alignsam eval --bundle models/small-sam --data demo
/// --split eval --methods oracle`, oracle_curve.csv).
const FLOORS: [(&str, f64); 3] = [("ball", 0.94), ("mug", 0.80), ("leaf", 0.56)];

#[test]
fn small_sam_segments_the_demo_objects() {
    let root = common::root();
    let bundle = Bundle::open(&root.join("models/small-sam"), OpenOptions::default()).unwrap();
    let backend = common::tract(2);
    let sam = Sam::load(&bundle, backend.as_ref()).unwrap();
    let mut report = vec![];
    for (name, floor) in FLOORS {
        let image = load_rgb(&root.join(format!("demo/images/{name}.png"))).unwrap();
        let gt = load_mask(
            &root.join(format!("demo/masks/{name}.png")),
            &InputLimits::default(),
        )
        .unwrap();
        let (embedding, geometry) = sam.embed(&image).unwrap();
        let run = run_oracle(&sam.decoder, &embedding, &geometry, &gt, 3, 3, true).unwrap();
        let iou = run.iou_at(3);
        report.push(format!("{name} {iou:.3} (floor {floor})"));
        assert!(iou >= floor, "{}", report.join(", "));
    }
    eprintln!("demo IoU after 3 oracle clicks: {}", report.join(", "));
}

/// Minimum IoU of the committed agent's own mask (the default loop: the bundle's clicker, its
/// stop, the kept mask), per demo image: a few points under what it measures (ball 0.976 after 1
/// step, mug 0.835 after 10; `alignsam eval --bundle models/small-sam --data demo --split eval
/// --methods clicker`, per_image.csv). The leaf is a known failure, held only to not getting
/// worse: the SRM's start points give a mask of the background at 0.089 IoU that the decoder
/// rates 0.72, and neither the clicker (its object map is empty on this synthetic image) nor any
/// other rule repairs it, while the oracle's clicks reach 0.96 (docs/agent.md, Limits).
const AGENT_FLOORS: [(&str, f64); 3] = [("ball", 0.94), ("mug", 0.78), ("leaf", 0.06)];

#[test]
fn the_committed_agent_segments_the_demo_objects() {
    let root = common::root();
    let bundle = Bundle::open(&root.join("models/small-sam"), OpenOptions::default()).unwrap();
    let backend = common::tract(2);
    let agent = Agent::load(&bundle, backend.as_ref()).unwrap();
    let mut report = vec![];
    for (name, floor) in AGENT_FLOORS {
        let image = load_rgb(&root.join(format!("demo/images/{name}.png"))).unwrap();
        let gt = load_mask(
            &root.join(format!("demo/masks/{name}.png")),
            &InputLimits::default(),
        )
        .unwrap();
        let r = agent.segment(&image, &LoopOptions::default()).unwrap();
        let iou = alignsam::agent::ground_truth::mask_iou(&r.mask, &gt.data);
        report.push(format!(
            "{name} {iou:.3} in {} steps (floor {floor})",
            r.steps
        ));
        assert!(iou >= floor, "{}", report.join(", "));
    }
    eprintln!("demo IoU of the committed agent: {}", report.join(", "));
}
