//! `alignsam eval` end to end on synthetic datasets: with a hand-built agent whose every figure
//! can be worked out by hand, with the random tiny bundle (counts, repeatability, montage), and
//! with broken datasets (errors naming the file, partial failures).
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use alignsam::agent::{Agent, LoopOptions, PointOrigin};
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::dataset::Mask;
use alignsam::eval::montage::{CAPTION_HEIGHT, GAP, TILE_HEIGHT, tile_width};
use alignsam::eval::{Method, MethodRunner, srm_scores};
use image::{GrayImage, Luma, RgbImage};

const G: usize = 10;

/// A dataset in a temporary directory: `images/<id>.png`, `masks/<id>.png`, `splits/eval.txt`.
struct Data {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Data {
    fn new() -> Data {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("DS");
        for sub in ["images", "masks", "splits"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Data { tmp, dir }
    }

    /// A textured image of `w` x `h` with a brighter rectangle `rect` = (x0, y0, x1, y1), and
    /// its mask: the rectangle is the object.
    fn pair(&self, id: &str, (w, h): (u32, u32), (x0, y0, x1, y1): (u32, u32, u32, u32)) -> &Self {
        let inside = |x, y| x >= x0 && x < x1 && y >= y0 && y < y1;
        RgbImage::from_fn(w, h, |x, y| {
            let base = [(x * 3 % 97) as u8, (y * 5 % 89) as u8, ((x + y) % 61) as u8];
            image::Rgb(if inside(x, y) {
                base.map(|v| v + 150)
            } else {
                base
            })
        })
        .save(self.dir.join(format!("images/{id}.png")))
        .unwrap();
        GrayImage::from_fn(w, h, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]))
            .save(self.dir.join(format!("masks/{id}.png")))
            .unwrap();
        self
    }

    fn split(&self, ids: &[&str]) -> &Self {
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(self.dir.join("splits/eval.txt"), text).unwrap();
        self
    }

    fn out(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }
}

/// Runs the built binary's `eval` on `data` with `bundle`, writing to `out`.
fn eval(bundle: &Path, data: &Data, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = common::alignsam();
    cmd.arg("eval")
        .arg("--bundle")
        .arg(bundle)
        .arg("--data")
        .arg(&data.dir)
        .arg("--out")
        .arg(out);
    cmd.arg("--cache")
        .arg(data.cache())
        .args(["--threads", "2", "--no-progress"])
        .args(extra);
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// The per-image CSV as rows of named fields.
struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn read(path: &Path) -> Csv {
        let body = std::fs::read_to_string(path).unwrap();
        let mut lines = body
            .lines()
            .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>());
        let header = lines.next().unwrap();
        let rows: Vec<_> = lines.collect();
        for r in &rows {
            assert_eq!(r.len(), header.len(), "{r:?}");
        }
        Csv { header, rows }
    }

    fn col(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    fn method(&self, method: &str) -> Vec<&Vec<String>> {
        let m = self.col("method");
        self.rows.iter().filter(|r| r[m] == method).collect()
    }

    fn num(&self, row: &[String], name: &str) -> f64 {
        row[self.col(name)]
            .parse()
            .unwrap_or_else(|e| panic!("{name} = {:?}: {e}", row[self.col(name)]))
    }

    /// Step hits over step points, pooled over the method's rows.
    fn hit_rate(&self, method: &str) -> f64 {
        let rows = self.method(method);
        let hits: f64 = rows.iter().map(|r| self.num(r, "step_hits")).sum();
        let points: f64 = rows.iter().map(|r| self.num(r, "step_points")).sum();
        hits / points
    }
}

/// A value of the markdown report's table, by method and column header.
fn report_value(report: &str, method: &str, column: &str) -> f64 {
    let cells = |l: &str| {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>()
    };
    let header = cells(
        report
            .lines()
            .find(|l| l.starts_with("| method |"))
            .expect("table header"),
    );
    let row = cells(
        report
            .lines()
            .find(|l| l.starts_with(&format!("| {method} |")))
            .unwrap_or_else(|| panic!("no row {method}")),
    );
    let i = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    row[i].parse().unwrap()
}

/// A copy of the tiny SAM whose policy always prefers patch `patch` and whose SRM says 0.9 in
/// the top-left 3x3 cells and 0.1 elsewhere.
fn hand_built_bundle(dir: &Path, patch: usize) -> PathBuf {
    let srm: Vec<f32> = (0..G * G)
        .map(|i| if i / G < 3 && i % G < 3 { 0.9 } else { 0.1 })
        .collect();
    common::constant_agent_bundle(dir, G, patch, &srm)
}

#[test]
fn hand_built_agent_gives_hand_computed_figures() {
    // 100x100 images (square: no padding, patches and SRM cells coincide, 10 px each) with the
    // object in the top-left 30x30 pixels, i.e. the SRM's 0.9 cells.
    let data = Data::new();
    for id in ["a", "b", "c"] {
        data.pair(id, (100, 100), (0, 0, 30, 30));
    }
    data.split(&["a", "b", "c"]);
    let bundle = hand_built_bundle(data.tmp.path(), 11);
    let out = data.out("hand");
    // The paper's loop (repeats allowed, the last mask returned): what the figures below were
    // computed for by hand.
    let o = eval(
        &bundle,
        &data,
        &out,
        &[
            "--steps",
            "4",
            "--montage",
            "0",
            "--allow-repeats",
            "--keep-last",
        ],
    );
    check_ok(&o);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();

    // Policy: patch 11 (row 1, col 1), centre (15, 15): on the object, SRM 0.9 -> positive.
    assert_eq!(report_value(&report, "policy", "hit"), 1.0);
    assert_eq!(report_value(&report, "policy", "label acc"), 1.0);
    assert_eq!(report_value(&report, "policy", "patches"), 1.0);
    // Centre: patch 55, centre (55, 55): background, SRM 0.1 -> negative, right.
    assert_eq!(report_value(&report, "centre", "hit"), 0.0);
    assert_eq!(report_value(&report, "centre", "label acc"), 1.0);
    // Random: the SRM is right everywhere on this image, whatever the patch.
    assert_eq!(report_value(&report, "random", "label acc"), 1.0);
    // SRM only: the four most confident free patches, 0, 1, 2 and 10, all on the object.
    assert_eq!(report_value(&report, "srm-only", "hit"), 1.0);
    assert_eq!(report_value(&report, "srm-only", "patches"), 4.0);
    // The oracle: as many clicks as the loop's points, its curve under the table and in a CSV.
    assert_eq!(report_value(&report, "oracle", "steps"), 4.0);
    assert!(report.contains("oracle clicks: mIoU @1 "), "{report}");
    let curve = std::fs::read_to_string(out.join("oracle_curve.csv")).unwrap();
    let lines: Vec<&str> = curve.lines().collect();
    assert_eq!(lines.len(), 1 + 3, "{curve}");
    assert!(lines[0].starts_with("id,iou@1,iou@2,") && lines[0].ends_with(",iou@20"));
    assert!(lines[1..].iter().all(|l| l.split(',').count() == 21));
    // Start points: the first 0.9 cell (0, on the object) and the first 0.1 cell (3, background).
    for m in ["policy", "random", "centre"] {
        assert_eq!(report_value(&report, m, "start hit"), 1.0, "{m}");
        assert_eq!(
            report_value(&report, m, "steps"),
            4.0,
            "{m}: early stop is off by default"
        );
    }
    assert!(report.contains("early stop off"), "{report}");
    // SRM map == ground truth: IoU 1; all-foreground map: 9 of 100 cells.
    assert!(
        report.contains("SRM IoU (s_0, map vs ground truth): 1.000; constant all-foreground map 0.090, all-background 0.000"),
        "{report}"
    );
    assert!(
        report.contains("SRM IoU minus the better constant map: +0.910"),
        "{report}"
    );
    assert!(!out.join("montage.png").exists(), "--montage 0 writes none");

    let csv = Csv::read(&out.join("per_image.csv"));
    // policy, random, centre, srm-only, srm-error, oracle (no clicker, no best patch in this
    // bundle; the teacher only when asked).
    assert_eq!(csv.rows.len(), 6 * 3, "six methods by default");
    for r in &csv.rows {
        assert_eq!(
            (csv.num(r, "srm_iou"), csv.num(r, "all_foreground_iou")),
            (1.0, 0.09)
        );
        assert_eq!(csv.num(r, "gt_fraction"), 0.09);
        assert_eq!(r[csv.col("stop_reason")], "step_limit");
    }
    // The random baseline's hits, recounted from its points: patches 0-2, 10-12, 20-22 are on the
    // object. The report's figure is the CSV's pooled count.
    assert!((report_value(&report, "random", "hit") - csv.hit_rate("random")).abs() < 5e-4);
}

#[test]
fn the_sampled_policy_draws_from_the_softmax() {
    // The hand-built policy's logits: 5 for patch 11, 0 for the 99 others, so each step takes
    // patch 11 with probability e^5 / (e^5 + 99) = 0.60 and one of the 8 other object patches
    // (0-2, 10, 12, 20-22) with 0.40 * 8 / 99: a hit rate of 0.63. Greedy would hit every time
    // with one patch; uniform patches would hit 9% of the time.
    let data = Data::new();
    for id in ["a", "b", "c"] {
        data.pair(id, (100, 100), (0, 0, 30, 30));
    }
    data.split(&["a", "b", "c"]);
    let bundle = hand_built_bundle(data.tmp.path(), 11);
    let out = data.out("sampled");
    let o = eval(
        &bundle,
        &data,
        &out,
        &[
            "--steps",
            "15",
            "--montage",
            "0",
            "--methods",
            "policy,policy-sample",
            "--allow-repeats",
            "--keep-last",
        ],
    );
    check_ok(&o);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(report_value(&report, "policy", "patches"), 1.0);
    let hit = report_value(&report, "policy-sample", "hit");
    assert!((0.35..0.9).contains(&hit), "sampled hit rate {hit}");
    assert!(
        report_value(&report, "policy-sample", "patches") > 2.0,
        "{report}"
    );
    assert!(
        !report.contains("policy-sample mIoU minus policy:")
            && !report.contains("policy mIoU minus policy-sample"),
        "the two policies are not compared with each other: {report}"
    );
}

#[test]
fn random_tiny_bundle_end_to_end() {
    let data = Data::new();
    data.pair("one", (64, 48), (10, 8, 40, 30))
        .pair("two", (64, 48), (30, 20, 60, 46))
        .pair("three", (40, 56), (0, 0, 20, 56))
        .pair("four", (64, 48), (5, 5, 25, 25))
        .split(&["one", "two", "three", "four"]);
    let tiny = common::tiny_bundle();
    const RUN: &[&str] = &[
        "--steps",
        "5",
        "--images",
        "3",
        "--montage",
        "2",
        "--seed",
        "7",
    ];
    let out = data.out("first");
    let o = eval(&tiny, &data, &out, RUN);
    check_ok(&o);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(stderr.contains("3 images, 0 from the cache"), "{stderr}");
    for m in ["policy", "random", "centre"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(m)),
            "{m} missing from\n{stdout}"
        );
    }

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("--images 3"),
        "the command line is in the header"
    );
    assert!(
        report.contains("4 images in the split, 3 taken, 3 evaluated, 0 failed"),
        "{report}"
    );
    assert!(
        report.contains("random weights"),
        "the note on random SAM weights"
    );
    let csv = Csv::read(&out.join("per_image.csv"));
    // policy, random, centre, srm-only, srm-error, oracle (no clicker, no best patch in this
    // bundle; the teacher only when asked).
    assert_eq!(csv.rows.len(), 6 * 3, "six methods by default");
    for m in ["policy", "random", "centre"] {
        let rows = csv.method(m);
        assert_eq!(rows.len(), 3, "{m}");
        for r in &rows {
            let h = csv.num(r, "hit_rate");
            assert!((0.0..=1.0).contains(&h), "{m}: {h}");
            assert_eq!(csv.num(r, "step_points"), 5.0);
            assert_eq!(csv.num(r, "start_points"), 2.0);
            let srm = csv.num(r, "srm_iou");
            assert!((0.0..=1.0).contains(&srm));
        }
        let recount = csv.hit_rate(m);
        let reported = report_value(&report, m, "hit");
        assert!(
            (reported - recount).abs() < 5e-4,
            "{m}: report {reported}, CSV {recount}"
        );
        for col in ["start hit", "label acc", "mIoU", "adpF"] {
            let v = report_value(&report, m, col);
            assert!((0.0..=1.0).contains(&v), "{m} {col}: {v}");
        }
    }
    // The centre baseline's first click is the centre patch on every image (later ones move
    // on: the loop never clicks a patch twice with one label).
    assert_eq!(report_value(&report, "centre", "first"), 1.0, "{report}");
    assert_eq!(report_value(&report, "centre", "top1"), 1.0, "{report}");

    // Two rows of seven tiles (GT and the six methods) of the 64x48 images.
    let montage = image::open(out.join("montage.png")).unwrap();
    let tw = tile_width(64, 48);
    assert_eq!(
        (montage.width(), montage.height()),
        (
            GAP + 7 * (tw + GAP),
            GAP + 2 * (CAPTION_HEIGHT + TILE_HEIGHT + GAP)
        )
    );

    // Again with the same seed: embeddings from the cache, and the same figures (timings aside).
    let again = data.out("second");
    let o = eval(&tiny, &data, &again, RUN);
    check_ok(&o);
    assert!(
        text(&o.stderr).contains("3 from the cache"),
        "{}",
        text(&o.stderr)
    );
    let csv2 = Csv::read(&again.join("per_image.csv"));
    let ms = csv.col("loop_ms");
    let strip = |c: &Csv| {
        c.rows
            .iter()
            .map(|r| [&r[..ms], &r[ms + 1..]].concat())
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&csv), strip(&csv2), "the run repeats");
}

#[test]
fn baselines_click_where_they_should() {
    let b = Bundle::open(&common::tiny_bundle(), OpenOptions::default()).unwrap();
    let backend = common::tract(2);
    let agent = Agent::load(&b, backend.as_ref()).unwrap();
    let img = RgbImage::from_fn(90, 60, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 40])
    });
    let (embedding, geometry) = agent.sam.embed(&img).unwrap();
    // The paper's loop (repeats allowed): the centre baseline clicks the centre every step.
    let options = LoopOptions {
        max_steps: 6,
        stop_iou: None,
        ..LoopOptions::default()
    }
    .paper();
    // Every method the tiny bundle has what for (it has no clicker and no best patch).
    const METHODS: [Method; 8] = [
        Method::Policy,
        Method::PolicySample,
        Method::Random,
        Method::Centre,
        Method::SrmOnly,
        Method::SrmError,
        Method::Teacher,
        Method::Oracle,
    ];
    // The ground truth only matters to the oracle: the left half of the image.
    let half = Mask {
        width: 90,
        height: 60,
        data: (0..90 * 60).map(|i| i % 90 < 45).collect(),
    };
    let run = |seed| {
        let runner = MethodRunner {
            agent: &agent,
            options: &options,
            methods: &METHODS,
            seed,
            truth_labels: false,
        };
        let r = runner.run("img", &embedding, &geometry, &half).unwrap();
        let oracle = r.oracle.expect("the oracle ran");
        let results: Vec<_> = r.results.into_iter().map(|(_, r)| r).collect();
        (results, oracle)
    };
    let (results, oracle) = run(3);
    assert_eq!(results.len(), METHODS.len());
    let at = |m: Method| METHODS.iter().position(|&x| x == m).unwrap();
    // The oracle clicks 20 times, keeps the mask after the loop's 2 + 6 points, and its first
    // click is the object's deepest point, positive.
    assert_eq!(oracle.ious.len(), 20);
    assert_eq!(results[at(Method::Oracle)].points.len(), 8);
    assert_eq!(results[at(Method::Oracle)].mask, oracle.kept_mask);
    let first = oracle.points[0];
    assert_eq!(first.label, alignsam::sam::PointLabel::Positive);
    // (x 22 is 23 pixels from both sides of the half; rows 22..=37 are all that deep: the first.)
    assert_eq!((first.x, first.y), (22.5, 22.5), "{first:?}");
    // The SRM-only baseline never clicks the same patch twice.
    let srm_patches: Vec<usize> = results[at(Method::SrmOnly)]
        .points
        .iter()
        .filter(|p| p.origin == PointOrigin::Step)
        .map(|p| p.patch)
        .collect();
    assert_eq!(srm_patches.len(), 6);
    let mut distinct = srm_patches.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "{srm_patches:?}");

    let centre = G / 2 * G + G / 2;
    let (cx, cy) = agent.grid.centre(centre, 60, 90);
    let steps = |i: usize| {
        results[i]
            .points
            .iter()
            .filter(|p| p.origin == PointOrigin::Step)
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(at(Method::Centre)).len(), 6);
    for p in steps(at(Method::Centre)) {
        assert_eq!((p.patch, p.x, p.y), (centre, cx, cy), "the centre baseline");
    }
    // Every loop method starts from the same SRM start points, on the same embedding.
    let loops = METHODS.iter().zip(&results).filter(|(m, _)| m.is_loop());
    for (_, r) in loops {
        assert_eq!(
            r.points[..2].iter().map(|p| (p.x, p.y)).collect::<Vec<_>>(),
            results[0].points[..2]
                .iter()
                .map(|p| (p.x, p.y))
                .collect::<Vec<_>>()
        );
    }
    // The random baseline repeats for the same seed and image, and changes with the seed.
    // So does the sampled policy.
    let patches = |rs: &[alignsam::agent::LoopResult], m: Method| {
        rs[at(m)].points.iter().map(|p| p.patch).collect::<Vec<_>>()
    };
    let (same, _) = run(3);
    let (other, _) = run(4);
    for m in [Method::Random, Method::PolicySample] {
        assert_eq!(patches(&results, m), patches(&same, m), "{m}");
        assert_ne!(patches(&results, m), patches(&other, m), "{m}");
    }

    // The SRM's constant-map figures on a hand-checkable mask: left 30% of a square image.
    let sq = RgbImage::from_pixel(100, 100, image::Rgb([90, 90, 90]));
    let (e, g) = agent.sam.embed(&sq).unwrap();
    let gt = Mask {
        width: 100,
        height: 100,
        data: (0..100 * 100).map(|i| i % 100 < 30).collect(),
    };
    let s = srm_scores(&agent.srm, &e, &g, &gt).unwrap();
    assert!(
        (s.all_foreground - 0.3).abs() < 1e-6 && s.all_background == 0.0,
        "{s:?}"
    );
    assert!((0.0..=1.0).contains(&s.srm));
}

#[test]
fn broken_datasets_name_the_file() {
    let tiny = common::tiny_bundle();

    let data = Data::new();
    data.pair("a", (32, 24), (0, 0, 10, 10));
    std::fs::write(data.dir.join("splits/eval.txt"), "\n\n").unwrap();
    let o = eval(&tiny, &data, &data.out("o"), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{}: split file lists no ids",
            data.dir.join("splits/eval.txt").display()
        )),
        "{err}"
    );

    let data = Data::new();
    data.pair("a", (32, 24), (0, 0, 10, 10))
        .pair("b", (32, 24), (0, 0, 10, 10))
        .split(&["a", "b"]);
    std::fs::remove_file(data.dir.join("masks/b.png")).unwrap();
    let o = eval(&tiny, &data, &data.out("o"), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{}: mask not found",
            data.dir.join("masks/b.png").display()
        )),
        "{err}"
    );

    let data = Data::new();
    data.pair("a", (32, 24), (0, 0, 10, 10)).split(&["a"]);
    GrayImage::new(30, 24)
        .save(data.dir.join("masks/a.png"))
        .unwrap();
    let o = eval(&tiny, &data, &data.out("o"), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{} is 30x24 but",
            data.dir.join("masks/a.png").display()
        )),
        "{err}"
    );
    assert!(err.contains("a.png is 32x24"), "{err}");
}

#[test]
fn a_bad_image_among_many_is_reported_and_skipped() {
    let data = Data::new();
    data.pair("a", (32, 24), (0, 0, 10, 10))
        .pair("bad", (32, 24), (0, 0, 10, 10))
        .pair("c", (32, 24), (5, 5, 20, 20));
    data.split(&["a", "bad", "c"]);
    // Cut the image after its header: it validates (size from the header) but does not decode.
    let path = data.dir.join("images/bad.png");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = data.out("o");
    let o = eval(
        &common::tiny_bundle(),
        &data,
        &out,
        &["--steps", "2", "--montage", "1"],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("1 of 3 images failed"), "{err}");
    // 2 evaluated images x the 6 default methods
    assert_eq!(Csv::read(&out.join("per_image.csv")).rows.len(), 2 * 6);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("3 taken, 2 evaluated, 1 failed") && report.contains("## Failed images"),
        "{report}"
    );
}
