//! The evaluation's outputs for people and for scripts: a table (plain text for the terminal,
//! markdown with a header and notes for `report.md`) and one CSV row per image and method.

use std::fmt::Write as _;

use super::evaluate::{EvalSummary, ImageEval, MethodSummary, PairedDiff};
use super::oracle::{NOC_CAP, REPORT_CLICKS};
use crate::agent::{LoopOptions, StopReason};

/// What the report's header says about the run.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The command line, quoted for a shell.
    pub command: String,
    /// The dataset directory.
    pub dataset: String,
    /// The split evaluated.
    pub split: String,
    /// Images in the split.
    pub split_images: usize,
    /// Images taken from it (`--images`).
    pub requested: usize,
    /// One message per image that failed (and is left out of every figure).
    pub failed: Vec<String>,
    /// The bundle directory.
    pub bundle: String,
    /// The bundle's name and description, from its manifest.
    pub bundle_name: String,
    /// The bundle's description.
    pub bundle_description: String,
    /// The policy's action grid side.
    pub grid: usize,
    /// The loop options every method ran with.
    pub options: LoopOptions,
    /// The random baseline's seed.
    pub seed: u64,
    /// Where the labels came from (`--labels`).
    pub labels: String,
    /// Embeddings found in the cache and computed.
    pub cache_hits: usize,
    /// Embeddings computed (and stored) by this run.
    pub cache_computed: usize,
    /// Seconds spent filling the cache.
    pub cache_seconds: f64,
    /// The backend and threads, in words.
    pub engine: String,
}

/// The loop options in words, for the header.
pub fn describe_options(o: &LoopOptions) -> String {
    let mut s = format!("{} steps after the 2 SRM start points", o.max_steps);
    match o.stop_iou {
        None => s.push_str(", early stop off (every method gets the same number of points)"),
        Some(t) => {
            let _ = write!(
                s,
                ", early stop at mask IoU >= {t} (methods may get different numbers of points)"
            );
        }
    }
    if let Some(b) = o.budget {
        let _ = write!(
            s,
            ", time budget {:.1} ms per image (encoder excluded: embeddings are cached)",
            b.as_secs_f64() * 1e3
        );
    }
    s.push_str(if o.feed_mask {
        ", previous mask fed back"
    } else {
        ", no mask feedback"
    });
    s.push_str(if o.forbid_repeats {
        ", no click on a patch with the label it already had there"
    } else {
        ", repeated clicks allowed (as in the paper)"
    });
    s.push_str(if o.keep_best {
        ", the mask with the best estimated IoU kept"
    } else {
        ", the last mask kept (as in the paper)"
    });
    if o.srm_labels {
        s.push_str(", every step labelled by the SRM (--labels srm)");
    }
    let _ = write!(
        s,
        ", SRM-labelled steps labelled by {}",
        o.step_labels.describe()
    );
    s
}

/// A column of the table: header and how to print a method's value.
struct Column {
    header: &'static str,
    value: fn(&MethodSummary) -> String,
}

fn rate(r: Option<f64>) -> String {
    r.map_or("-".into(), |v| format!("{v:.3}"))
}

const COLUMNS: &[Column] = &[
    Column {
        header: "mIoU",
        value: |m| format!("{:.3}", m.metrics.miou),
    },
    Column {
        header: "adpF",
        value: |m| format!("{:.3}", m.metrics.adaptive_f),
    },
    Column {
        header: "maxF",
        value: |m| format!("{:.3}", m.metrics.max_f),
    },
    Column {
        header: "meanF",
        value: |m| format!("{:.3}", m.metrics.mean_f),
    },
    Column {
        header: "MAE",
        value: |m| format!("{:.3}", m.metrics.mae),
    },
    Column {
        header: "BER%",
        value: |m| format!("{:.2}", m.metrics.ber),
    },
    Column {
        header: "maxE",
        value: |m| format!("{:.3}", m.metrics.max_e),
    },
    Column {
        header: "meanE",
        value: |m| format!("{:.3}", m.metrics.mean_e),
    },
    Column {
        header: "adpE",
        value: |m| format!("{:.3}", m.metrics.adaptive_e),
    },
    Column {
        header: "hit",
        value: |m| rate(m.points.hit_rate()),
    },
    Column {
        header: "start hit",
        value: |m| rate(m.points.start_hit_rate()),
    },
    Column {
        header: "label acc",
        value: |m| rate(m.points.label_accuracy()),
    },
    Column {
        header: "steps",
        value: |m| format!("{:.1}", m.mean_steps),
    },
    Column {
        header: "patches",
        value: |m| format!("{:.1}", m.mean_distinct),
    },
    Column {
        header: "first",
        value: |m| m.diversity.first_distinct.to_string(),
    },
    Column {
        header: "top1",
        value: |m| {
            let v = m.diversity.first_top_share;
            if v.is_nan() {
                "-".into()
            } else {
                format!("{v:.2}")
            }
        },
    },
    Column {
        header: "ms/img",
        value: |m| format!("{:.1}", m.mean_loop_ms),
    },
];

fn cells(m: &MethodSummary) -> Vec<String> {
    std::iter::once(m.method.name().to_string())
        .chain(COLUMNS.iter().map(|c| (c.value)(m)))
        .collect()
}

fn headers() -> Vec<&'static str> {
    std::iter::once("method")
        .chain(COLUMNS.iter().map(|c| c.header))
        .collect()
}

fn diff(d: &PairedDiff) -> String {
    let verdict = if d.half_width.is_nan() {
        "one image: no interval"
    } else if d.significant() {
        "the interval excludes 0"
    } else {
        "the interval includes 0"
    };
    format!(
        "{:+.3} (95% CI +/-{:.3}, paired over {} images; {verdict})",
        d.mean, d.half_width, d.n
    )
}

/// The lines under the table: the policy against each other method (paired per image), the
/// oracle's click curve, the SRM against constant maps.
fn comparisons(s: &EvalSummary) -> Vec<String> {
    let mut lines = vec![];
    for vs in &s.comparisons {
        let (policy, name) = (vs.method.name(), vs.other.name());
        for (what, d) in [
            ("mIoU", &vs.iou),
            ("adpF", &vs.adaptive_f),
            ("MAE", &vs.mae),
            ("hit rate", &vs.hit_rate),
        ] {
            if let Some(d) = d {
                lines.push(format!("{policy} {what} minus {name}: {}", diff(d)));
            }
        }
    }
    if let Some(o) = &s.oracle {
        let at: Vec<String> = REPORT_CLICKS
            .iter()
            .map(|&k| format!("@{k} {:.3}", o.miou_at(k)))
            .collect();
        lines.push(format!(
            "oracle clicks: mIoU {}; NoC@85 {:.2} ({} images not reaching it within {NOC_CAP}), NoC@90 {:.2} ({} not reaching it)",
            at.join(", "),
            o.noc85,
            o.failed85,
            o.noc90,
            o.failed90
        ));
    }
    let srm = &s.srm;
    lines.push(format!(
        "SRM IoU (s_0, map vs ground truth): {:.3}; constant all-foreground map {:.3}, all-background {:.3}",
        srm.srm, srm.all_foreground, srm.all_background
    ));
    if let Some(d) = &srm.vs_best_constant {
        lines.push(format!(
            "SRM IoU minus the better constant map: {}",
            diff(d)
        ));
    }
    lines
}

/// The budget curves as lines for the terminal (nothing when the runs were not traced).
fn budget_lines(s: &EvalSummary) -> String {
    if s.budgets.is_empty() {
        return String::new();
    }
    let width = s
        .methods
        .iter()
        .map(|m| m.method.name().len())
        .max()
        .unwrap_or(6);
    let mut out = format!("{:<width$}", "mIoU at T");
    for b in &s.budgets {
        let _ = write!(out, "  {:>6}", format!("T={b}"));
    }
    out.push('\n');
    for m in &s.methods {
        let _ = write!(out, "{:<width$}", m.method.name());
        for v in &m.budget_miou {
            let _ = write!(out, "  {v:>6.3}");
        }
        out.push('\n');
    }
    out
}

/// The table for the terminal: aligned columns, then the comparison lines.
pub fn text_table(s: &EvalSummary) -> String {
    let rows: Vec<Vec<String>> = s.methods.iter().map(cells).collect();
    let heads = headers();
    let widths: Vec<usize> = heads
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: Vec<&str>| {
        let mut out = format!("{:<w$}", cols[0], w = widths[0]);
        for (c, w) in cols.iter().zip(&widths).skip(1) {
            let _ = write!(out, "  {c:>w$}");
        }
        out.push('\n');
        out
    };
    let mut out = line(heads.clone());
    for r in &rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out += &budget_lines(s);
    for c in comparisons(s) {
        out += &c;
        out.push('\n');
    }
    out
}

/// The markdown report: header (command, dataset, bundle, loop options), table, comparisons,
/// what each column means and what to trust.
pub fn markdown(info: &RunInfo, s: &EvalSummary) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# alignsam eval: {} ({} split)\n",
        info.dataset, info.split
    );
    let _ = writeln!(md, "```\n{}\n```\n", info.command);
    let _ = writeln!(
        md,
        "- dataset: `{}`, split `{}`: {} images in the split, {} taken, {} evaluated, {} failed",
        info.dataset,
        info.split,
        info.split_images,
        info.requested,
        s.images,
        info.failed.len()
    );
    let _ = writeln!(
        md,
        "- bundle: `{}` ({}): {}",
        info.bundle, info.bundle_name, info.bundle_description
    );
    let _ = writeln!(
        md,
        "- loop: {}; action grid {}x{}",
        describe_options(&info.options),
        info.grid,
        info.grid
    );
    let _ = writeln!(
        md,
        "- random baseline seed: {} (mixed with each image id)",
        info.seed
    );
    let _ = writeln!(
        md,
        "- labels: {}",
        match info.labels.as_str() {
            "truth" => "every point's from the ground truth (--labels truth)",
            "srm" => "every step's from the SRM (--labels srm)",
            _ => "each method's own (the clicker's and the teacher's; the SRM's for the others)",
        }
    );
    let _ = writeln!(
        md,
        "- embeddings: {} from the cache, {} computed ({:.1} s); every method runs on the same embedding",
        info.cache_hits, info.cache_computed, info.cache_seconds
    );
    let _ = writeln!(md, "- engine: {}\n", info.engine);

    let _ = writeln!(md, "| {} |", headers().join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(COLUMNS.len()));
    for m in &s.methods {
        let _ = writeln!(md, "| {} |", cells(m).join(" | "));
    }
    md.push('\n');
    if !s.budgets.is_empty() {
        let heads: Vec<String> = s.budgets.iter().map(|b| format!("T = {b}")).collect();
        let _ = writeln!(
            md,
            "mIoU of the mask each method returns with a budget of T steps (from the same runs):\n"
        );
        let _ = writeln!(md, "| method | {} |", heads.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(heads.len()));
        for m in &s.methods {
            let v: Vec<String> = m.budget_miou.iter().map(|v| format!("{v:.3}")).collect();
            let _ = writeln!(md, "| {} | {} |", m.method.name(), v.join(" | "));
        }
        md.push('\n');
    }
    for c in comparisons(s) {
        let _ = writeln!(md, "- {c}");
    }

    md.push_str("\n## Methods\n\n");
    for m in &s.methods {
        let _ = writeln!(md, "- `{}`: {}", m.method.name(), m.method.describe());
    }

    md.push_str("\n## Notes\n\n");
    for note in [
        "**Which numbers mean something.** With a SAM of random weights (the `tiny` and `mobilesam-random` bundles) the masks carry no meaning, and neither do mIoU, F, MAE, BER and E. The hit rate and the SRM IoU do not go through SAM's decoder: they judge the policy's points and the SRM's map against the ground truth directly, so they stay meaningful whatever SAM's weights.",
        "**Binary masks.** SAM's masks are binary, and for a binary mask maxF is dominated by the trivial all-foreground threshold (t = 0 of the toolbox's sweep), which wins whenever the mask is poor and the object large; meanF and maxE/meanE inherit the same term. Lead with mIoU and adpF; the swept measures are there to compare with published tables (PySODMetrics conventions, beta^2 = 0.3).",
        "**hit**: the fraction of step points (those the method chose) on ground-truth foreground, pooled over all step points. **start hit**: the SRM's two start points labelled right (the positive one on foreground, the negative one on background); the same for every method. **label acc**: step points whose SRM label agrees with the ground truth. **patches**: distinct patches among the step points, per image (a greedy policy may choose one patch again and again). **first**: distinct patches of the first step across images; **top1**: the share of images whose first step is the most common first patch (1.00: one constant patch for every image, a location prior rather than an agent). **steps**: steps per image.",
        "**BER** is in percent, from pixel counts pooled over all images at p > 0.5. **ms/img** is the loop on a cached embedding (start points, steps, final upscale): the encoder is not included.",
        "**SRM IoU** is the SRM's map on s_0 = E, thresholded at 0.5, against the ground truth's foreground share per map cell (also at 0.5), over cells that cover the image. A constant map scores the IoU of \"everything\" (the object's share) or of \"nothing\" (0, or 1 on an image without object).",
        "**oracle** clicks from the ground truth: its row is the mask after as many clicks as the loop has points (2 + steps); its line under the table gives mIoU after 1, 3, 5 and 10 clicks and NoC (clicks to reach IoU 0.85 / 0.90, counted as 20 when not reached within 20). It bounds what any clicking agent can get from this decoder.",
        "**Intervals** are over images (paired differences on the same images, Student's t): points within one image are far from independent, so a per-point interval would be too narrow.",
    ] {
        let _ = writeln!(md, "- {note}");
    }
    if !info.failed.is_empty() {
        md.push_str("\n## Failed images (left out of every figure)\n\n");
        for f in &info.failed {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

/// The CSV's header line (no newline).
pub const CSV_HEADER: &str = "id,method,width,height,gt_fraction,iou,adp_f,max_f,mean_f,mae,ber,max_e,mean_e,adp_e,step_points,step_hits,step_labels_correct,distinct_patches,start_points,start_correct,hit_rate,steps,stop_reason,loop_ms,srm_iou,all_foreground_iou";

/// The name a stop reason has in the CSV (as in `segment`'s JSON).
pub fn stop_name(s: StopReason) -> &'static str {
    match s {
        StopReason::StepLimit => "step_limit",
        StopReason::TimeBudget => "time_budget",
        StopReason::Converged => "converged",
        StopReason::NoActionLeft => "no_action_left",
        StopReason::AgentStop => "agent_stop",
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The oracle curve CSV's header line (no newline): the IoU after each click.
pub fn oracle_csv_header(clicks: usize) -> String {
    std::iter::once("id".to_string())
        .chain((1..=clicks).map(|k| format!("iou@{k}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The oracle curve CSV's line of one image (no newline), when the oracle ran on it.
pub fn oracle_csv_row(e: &ImageEval) -> Option<String> {
    let ious = e.oracle_ious.as_ref()?;
    Some(
        std::iter::once(field(&e.id))
            .chain(ious.iter().map(|v| format!("{v:.6}")))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// One CSV line (no newline) per method run of an image, in the evaluation's method order.
pub fn csv_rows(e: &ImageEval) -> Vec<String> {
    e.runs
        .iter()
        .map(|r| {
            let (m, p) = (&r.metrics, &r.points);
            format!(
                "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.4},{:.6},{:.6},{:.6},{},{},{},{},{},{},{},{},{},{:.3},{:.6},{:.6}",
                field(&e.id),
                r.method.name(),
                e.width,
                e.height,
                e.gt_fraction,
                m.iou,
                m.adaptive_f,
                m.max_f,
                m.mean_f,
                m.mae,
                m.ber,
                m.max_e,
                m.mean_e,
                m.adaptive_e,
                p.step_points,
                p.step_hits,
                p.step_labels_correct,
                p.distinct_patches,
                p.start_points,
                p.start_correct,
                p.hit_rate().map_or(String::new(), |h| format!("{h:.6}")),
                r.result.steps,
                stop_name(r.result.stop),
                r.result.times.total_ms,
                e.srm.srm,
                e.srm.all_foreground,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(CSV_HEADER.split(',').count(), 26);
    }

    #[test]
    fn options_say_whether_early_stop_is_on() {
        let mut o = LoopOptions {
            max_steps: 15,
            stop_iou: None,
            ..LoopOptions::default()
        };
        assert!(describe_options(&o).contains("early stop off"));
        o.stop_iou = Some(0.99);
        assert!(describe_options(&o).contains("early stop at mask IoU >= 0.99"));
    }
}
