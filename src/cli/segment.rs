//! `alignsam segment`: the prompting loop over image files, writing masks, overlays and JSON.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{EXIT_PARTIAL, EngineArgs};
use crate::agent::{Agent, LoopOptions};
use crate::sam::Map;
use crate::sink::{ImageRecord, overlay, write_mask_png};
use crate::source::{expand_inputs, load_rgb};

/// Options of the prompting loop, shared by `segment`, `bench` and `run`.
#[derive(Debug, Clone, Args)]
pub struct LoopArgs {
    /// Steps after the two start points (default: the bundle's max_steps).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Time budget per frame in milliseconds (encoder included): the loop does not start a step
    /// that its running mean step time says would overrun.
    #[arg(long)]
    pub budget_ms: Option<f64>,
    /// Stop early when the IoU between successive masks reaches this value.
    #[arg(long, default_value_t = 0.99, conflicts_with = "no_early_stop")]
    pub stop_iou: f32,
    /// Never stop early on convergence (run until the step limit or the budget).
    #[arg(long)]
    pub no_early_stop: bool,
    /// Do not feed the previous low-resolution logits back as the decoder's mask input.
    #[arg(long)]
    pub no_mask_input: bool,
    /// Forbid choosing a patch twice (the paper does not mask actions).
    #[arg(long)]
    pub no_repeat: bool,
}

impl LoopArgs {
    /// The loop options, with the bundle's step limit as the default.
    pub fn options(&self, bundle_max_steps: usize) -> Result<LoopOptions> {
        if let Some(b) = self.budget_ms
            && !(b > 0.0 && b.is_finite())
        {
            bail!("--budget-ms must be a positive number of milliseconds, got {b}");
        }
        if !(0.0..=1.0).contains(&self.stop_iou) {
            bail!("--stop-iou must be between 0 and 1, got {}", self.stop_iou);
        }
        Ok(LoopOptions {
            max_steps: self.steps.unwrap_or(bundle_max_steps),
            budget: self.budget_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)),
            stop_iou: (!self.no_early_stop).then_some(self.stop_iou),
            feed_mask: !self.no_mask_input,
            forbid_repeats: self.no_repeat,
        })
    }
}

/// Arguments of `alignsam segment`.
#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// Bundle directory (SAM encoder and decoder, policy, SRM).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Images: files, directories (their image files, in natural order) or glob patterns.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Output directory for masks/ and overlays/.
    #[arg(long, short = 'o', default_value = "out/segment")]
    pub out: PathBuf,
    /// Write the JSON lines to this file instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Do not write overlay PNGs.
    #[arg(long)]
    pub no_overlays: bool,
    /// For an explicit-branch SRM: a directory of text-image similarity maps, one grey PNG per
    /// image with the same file stem (any size; resized to the embedding grid, 255 = 1.0).
    #[arg(long)]
    pub semantic_dir: Option<PathBuf>,
    #[command(flatten)]
    pub loop_args: LoopArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Hide the progress bar (also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// Gives every input a unique output stem: `a/img.png` and `b/img.png` become `img` and `img-2`.
fn output_stems(paths: &[PathBuf]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    paths
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let n = seen.entry(stem.clone()).or_insert(0);
            *n += 1;
            if *n == 1 { stem } else { format!("{stem}-{n}") }
        })
        .collect()
}

/// Loads a semantic map for the explicit SRM branch, resized to the embedding grid.
pub fn load_semantic(dir: &Path, stem: &str, size: (usize, usize)) -> Result<Map> {
    let path = dir.join(format!("{stem}.png"));
    let img = image::open(&path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the semantic map: {e}", path.display()))?
        .to_luma32f();
    let map = Map {
        height: img.height() as usize,
        width: img.width() as usize,
        data: img.into_raw(),
    };
    Ok(crate::sam::postprocess::resize_bilinear(
        &map, size.0, size.1,
    ))
}

struct Outputs {
    embedding_hw: (usize, usize),
    masks: PathBuf,
    overlays: Option<PathBuf>,
    json: Box<dyn Write>,
}

fn process_one(
    agent: &Agent,
    args: &SegmentArgs,
    options: &LoopOptions,
    path: &Path,
    stem: &str,
    out: &mut Outputs,
) -> Result<()> {
    let image = load_rgb(path)?;
    let semantic = match &args.semantic_dir {
        Some(dir) => Some(load_semantic(dir, stem, out.embedding_hw)?),
        None => None,
    };
    let result = agent
        .segment(&image, options, semantic.as_ref())
        .with_context(|| format!("{}", path.display()))?;
    let (h, w) = result.geometry.original;
    let mask_path = out.masks.join(format!("{stem}.png"));
    write_mask_png(&mask_path, &result.mask, w, h)?;
    let overlay_path = match &out.overlays {
        Some(dir) => {
            let p = dir.join(format!("{stem}.png"));
            overlay(&image, &result.mask, &result.points)
                .save(&p)
                .map_err(|e| anyhow::anyhow!("{}: cannot write overlay: {e}", p.display()))?;
            Some(p)
        }
        None => None,
    };
    let mut record = ImageRecord::new(path, &result);
    record.mask = Some(&mask_path);
    record.overlay = overlay_path.as_deref();
    serde_json::to_writer(&mut out.json, &record)?;
    out.json.write_all(b"\n")?;
    Ok(())
}

/// Runs `alignsam segment`.
pub fn run(args: SegmentArgs, quiet: bool) -> Result<ExitCode> {
    let paths = expand_inputs(&args.inputs)?;
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let options = args.loop_args.options(bundle.manifest.agent.max_steps)?;
    let backend = args.engine.backend()?;
    let agent = Agent::load(&bundle, backend.as_ref())?;
    if agent.srm.needs_semantic() && args.semantic_dir.is_none() {
        bail!(
            "{}: the SRM is the explicit branch; pass --semantic-dir with a similarity map per image",
            bundle.dir.display()
        );
    }

    let masks = args.out.join("masks");
    std::fs::create_dir_all(&masks)
        .with_context(|| format!("{}: cannot create", masks.display()))?;
    let overlays = (!args.no_overlays).then(|| args.out.join("overlays"));
    if let Some(dir) = &overlays {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let json: Box<dyn Write> = match &args.json {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let [_, eh, ew] = bundle.manifest.embedding.shape;
    let mut out = Outputs {
        embedding_hw: (eh, ew),
        masks,
        overlays,
        json,
    };

    let bar = if quiet || args.no_progress || paths.len() < 2 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(paths.len() as u64).with_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} images, {elapsed} elapsed, ~{eta} left  {msg}",
            )
            .expect("valid template"),
        )
    };
    let stems = output_stems(&paths);
    let mut failed = 0usize;
    for (path, stem) in paths.iter().zip(&stems) {
        bar.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        if let Err(e) = bar.suspend(|| process_one(&agent, &args, &options, path, stem, &mut out)) {
            failed += 1;
            bar.suspend(|| eprintln!("error: {e:#}"));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.json.flush()?;
    if failed > 0 {
        eprintln!(
            "error: {failed} of {} images failed (see the errors above)",
            paths.len()
        );
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    log::info!(
        "segmented {} images into {}",
        paths.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_unique() {
        let paths: Vec<PathBuf> = ["a/img.png", "b/img.jpg", "c/other.png", "d/img.png"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(output_stems(&paths), ["img", "img-2", "other", "img-3"]);
    }
}
