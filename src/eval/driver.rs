//! `eval` as a library call: [`run`] takes an [`EvalJob`] (an agent, its loop options, the
//! methods, a dataset's samples, an embedding cache and an output folder) and a progress
//! callback, as [`crate::train::run`] does. Two passes: first every embedding is made sure of
//! in the cache (the encoder is the slow part, and a second run skips it), then every image runs
//! the loop once per method. Writes `per_image.csv`, `oracle_curve.csv` (when the oracle runs)
//! and `montage.png`; the caller writes `report.md` from the returned summary, with what it knows
//! of the run (the command line, the engine).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::report::{CSV_HEADER, csv_rows, oracle_csv_header, oracle_csv_row};
use super::{BUDGETS, EvalSummary, Evaluation, Method, MethodRunner, NOC_CAP, montage, srm_scores};
use crate::agent::{Agent, LoopOptions};
use crate::cache::EmbeddingCache;
use crate::dataset::Sample;

/// What to evaluate, and where the files go.
pub struct EvalJob<'a> {
    /// The bundle's agent.
    pub agent: &'a Agent,
    /// The loop's options for every method.
    pub options: &'a LoopOptions,
    /// The methods, each once, in the report's order.
    pub methods: &'a [Method],
    /// The images with their masks.
    pub samples: &'a [Sample],
    /// Embeddings: read from here, computed and stored when missing.
    pub cache: &'a EmbeddingCache,
    /// The output folder (checked and locked by the caller).
    pub out: &'a Path,
    /// The seed of the random methods.
    pub seed: u64,
    /// Label every method's points from the ground truth (the where-versus-label diagnosis).
    pub truth_labels: bool,
    /// Images shown in the montage.
    pub montage: usize,
}

/// A progress event.
#[derive(Clone, Debug)]
pub enum EvalProgress<'a> {
    /// A pass starts over this many images (`what`: "embeddings", "images").
    Start(&'static str, usize),
    /// An image of the pass begins.
    Item(&'a str),
    /// An image of the pass ended.
    Advance,
    /// An image failed; it is left out of every figure.
    Error(&'a str),
    /// The pass ended.
    Done,
    /// A line of information.
    Note(String),
}

/// What the run found and wrote.
pub struct EvalOutcome {
    /// The table's figures.
    pub summary: EvalSummary,
    /// Embeddings found in the cache.
    pub cache_hits: usize,
    /// Embeddings computed.
    pub cache_computed: usize,
    /// Seconds the cache pass took.
    pub cache_seconds: f64,
    /// One message per image that failed.
    pub failed: Vec<String>,
    /// The files written.
    pub written: Vec<PathBuf>,
}

/// Runs every method on every image; errors only when nothing could be evaluated or a file
/// cannot be written (a failing image is reported through `progress` and left out).
pub fn run(job: &EvalJob, progress: &mut dyn FnMut(EvalProgress)) -> Result<EvalOutcome> {
    let filled = fill_cache(job, progress);
    progress(EvalProgress::Note(format!(
        "embeddings: {} images, {} from the cache ({}), {} computed in {:.1} s",
        job.samples.len(),
        filled.hits,
        job.cache.dir().display(),
        filled.computed,
        filled.seconds
    )));

    let csv_path = job.out.join("per_image.csv");
    let mut csv = create(&csv_path)?;
    writeln!(csv, "{CSV_HEADER}")?;
    let oracle_path = job.out.join("oracle_curve.csv");
    let mut oracle_csv = match job.methods.contains(&Method::Oracle) {
        true => {
            let mut f = create(&oracle_path)?;
            writeln!(
                f,
                "{}",
                oracle_csv_header(NOC_CAP.max(2 + job.options.max_steps))
            )?;
            Some(f)
        }
        false => None,
    };
    let runner = MethodRunner {
        agent: job.agent,
        options: job.options,
        methods: job.methods,
        seed: job.seed,
        truth_labels: job.truth_labels,
    };
    let budgets: Vec<usize> = BUDGETS
        .into_iter()
        .filter(|&b| b <= job.options.max_steps)
        .collect();
    let mut evaluation = Evaluation::new(job.methods).with_budgets(&budgets, job.options.keep_best);
    let mut failed: Vec<String> = filled.errors.iter().flatten().cloned().collect();
    let mut rows = vec![];
    progress(EvalProgress::Start(
        "images",
        job.samples.len() - failed.len(),
    ));
    for (sample, error) in job.samples.iter().zip(&filled.errors) {
        if error.is_some() {
            continue;
        }
        progress(EvalProgress::Item(&sample.id));
        let with_montage = rows.len() < job.montage;
        match evaluate_one(&runner, job.cache, &mut evaluation, sample, with_montage) {
            Ok((lines, row)) => {
                for line in lines.methods {
                    writeln!(csv, "{line}")?;
                }
                if let (Some(f), Some(line)) = (oracle_csv.as_mut(), lines.oracle) {
                    writeln!(f, "{line}")?;
                }
                rows.extend(row);
            }
            Err(e) => {
                let msg = naming(&sample.image_path, &e);
                progress(EvalProgress::Error(&msg));
                failed.push(msg);
            }
        }
        progress(EvalProgress::Advance);
    }
    progress(EvalProgress::Done);
    csv.flush()
        .with_context(|| format!("{}: cannot write", csv_path.display()))?;
    if let Some(f) = oracle_csv.as_mut() {
        f.flush()
            .with_context(|| format!("{}: cannot write", oracle_path.display()))?;
    }
    if evaluation.images() == 0 {
        bail!(
            "none of the {} images could be evaluated (see the errors above)",
            job.samples.len()
        );
    }
    let mut written = vec![csv_path];
    if oracle_csv.is_some() {
        written.push(oracle_path);
    }
    if let Some(image) = montage::montage(&rows) {
        let path = job.out.join("montage.png");
        crate::sink::save_png_atomic(&path, &image)?;
        written.push(path);
    }
    Ok(EvalOutcome {
        summary: evaluation.summary()?,
        cache_hits: filled.hits,
        cache_computed: filled.computed,
        cache_seconds: filled.seconds,
        failed,
        written,
    })
}

/// The methods a bundle allows by default: its agents, every baseline it has what for, the
/// oracle.
pub fn default_methods(agent: &Agent) -> Vec<Method> {
    Method::ALL
        .into_iter()
        .filter(|m| match m {
            Method::Clicker | Method::ClickerNoStop => agent.clicker.is_some(),
            Method::Policy => agent.policy.is_some(),
            Method::BestPatch => agent.best_patch.is_some(),
            Method::PolicySample | Method::Teacher => false,
            _ => true,
        })
        .collect()
}

/// What the cache pass found.
struct Filled {
    hits: usize,
    computed: usize,
    seconds: f64,
    /// Per sample, the error that rules it out (None: ready).
    errors: Vec<Option<String>>,
}

/// The error's message, led by the file's name unless it already names it (file errors do).
fn naming(path: &Path, e: &anyhow::Error) -> String {
    let (msg, name) = (format!("{e:#}"), path.display().to_string());
    if msg.contains(&name) {
        msg
    } else {
        format!("{name}: {msg}")
    }
}

/// Makes sure every image has a cached embedding. A failing image is reported and skipped.
fn fill_cache(job: &EvalJob, progress: &mut dyn FnMut(EvalProgress)) -> Filled {
    let start = Instant::now();
    progress(EvalProgress::Start("embeddings", job.samples.len()));
    let paths: Vec<PathBuf> = job.samples.iter().map(|s| s.image_path.clone()).collect();
    let stats = job.cache.fill(&job.agent.sam, &paths, |i, outcome| {
        let sample = &job.samples[i - 1];
        progress(EvalProgress::Item(&sample.id));
        if let Err(e) = outcome {
            progress(EvalProgress::Error(&naming(&sample.image_path, e)));
        }
        progress(EvalProgress::Advance);
    });
    progress(EvalProgress::Done);
    Filled {
        hits: stats.hits,
        computed: stats.computed,
        seconds: start.elapsed().as_secs_f64(),
        errors: stats
            .errors
            .iter()
            .zip(job.samples)
            .map(|(e, s)| e.as_ref().map(|e| naming(&s.image_path, e)))
            .collect(),
    }
}

/// One image's CSV lines: the per-method rows and, when the oracle ran, its curve.
struct ImageRows {
    methods: Vec<String>,
    oracle: Option<String>,
}

/// Runs every method on one image and adds it to the totals; returns its CSV lines and, when
/// asked, its montage row.
fn evaluate_one(
    runner: &MethodRunner,
    cache: &EmbeddingCache,
    evaluation: &mut Evaluation,
    sample: &Sample,
    with_montage: bool,
) -> Result<(ImageRows, Option<Vec<image::RgbImage>>)> {
    let agent = runner.agent;
    let gt = sample.load_mask()?;
    let (embedding, geometry, _) = cache.get_or_compute(&agent.sam, &sample.image_path)?;
    let (h, w) = geometry.original;
    if (gt.height, gt.width) != (h, w) {
        bail!(
            "{} is {}x{} but {} is {w}x{h}",
            sample.mask_path.display(),
            gt.width,
            gt.height,
            sample.image_path.display()
        );
    }
    let srm = srm_scores(&agent.srm, &embedding, &geometry, &gt)?;
    let results = runner.run(&sample.id, &embedding, &geometry, &gt)?;
    let eval = evaluation.add(&sample.id, &gt, srm, results)?;
    let row = if with_montage {
        Some(montage::row(&sample.load_image()?, &gt, &eval))
    } else {
        None
    };
    let rows = ImageRows {
        methods: csv_rows(&eval),
        oracle: oracle_csv_row(&eval),
    };
    Ok((rows, row))
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::new(crate::sink::create_streamed(path)?))
}
