//! `alignsam segment`: the prompting loop over image files, writing masks, overlays and JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::args::{EngineArgs, LoopArgs};
use super::output::{
    JsonLines, MaskFiles, StdoutMode, check_no_clobber, human_line, is_stdout, output_stems,
    print_line, progress,
};
use crate::agent::{Agent, ImageOptions, LoopOptions};
use crate::exit::EXIT_INTERRUPTED;
use crate::exit::EXIT_PARTIAL;
use crate::pipeline::{StopFlag, install_ctrlc};
use crate::sam::Map;
use crate::sink::{ImageRecord, OutputPlan};
use crate::source::{InputLimits, expand_inputs};

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
    /// Write the JSON lines to this file instead of stdout (`-`: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Whether existing files may be replaced.
    #[command(flatten)]
    pub write: super::args::WriteArgs,
    /// Do not write overlay PNGs.
    #[arg(long)]
    pub no_overlays: bool,
    /// For an explicit-branch SRM: a directory of text-image similarity maps, one grey PNG per
    /// image with the same file stem (any size; resized to the embedding grid, 255 = 1.0).
    #[arg(long)]
    pub semantic_dir: Option<PathBuf>,
    /// The prompting loop's bounds and switches.
    #[command(flatten)]
    pub loop_args: LoopArgs,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Hide the progress bar (also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// Loads a semantic map for the explicit SRM branch, resized to the embedding grid.
pub fn load_semantic(
    dir: &Path,
    stem: &str,
    size: (usize, usize),
    limits: &InputLimits,
) -> Result<Map> {
    let path = dir.join(format!("{stem}.png"));
    let bytes = limits.read_file(&path, "semantic map")?;
    let img = limits
        .decode_image(bytes, &path, "semantic map")?
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
    files: MaskFiles,
    json: JsonLines,
    human: bool,
    limits: InputLimits,
}

fn process_one(
    agent: &Agent,
    args: &SegmentArgs,
    options: &LoopOptions,
    path: &Path,
    stem: &str,
    out: &mut Outputs,
) -> Result<()> {
    let image = out.limits.load_rgb(path)?;
    let semantic = match &args.semantic_dir {
        Some(dir) => Some(load_semantic(dir, stem, out.embedding_hw, &out.limits)?),
        None => None,
    };
    let per_image = ImageOptions {
        semantic: semantic.as_ref(),
        ..ImageOptions::default()
    };
    let result = agent
        .segment_with(&image, options, per_image)
        .with_context(|| format!("{}", path.display()))?;
    let (mask_path, overlay_path) = out.files.write(stem, &image, &result)?;
    let mut record = ImageRecord::new(path, &result);
    record.mask = Some(&mask_path);
    record.overlay = overlay_path.as_deref();
    out.json.write(&record)?;
    if out.human && !print_line(&human_line(&path.display().to_string(), &result)) {
        out.human = false;
    }
    Ok(())
}

/// Runs `alignsam segment`.
pub fn run(args: SegmentArgs, limits: InputLimits) -> Result<ExitCode> {
    let paths = expand_inputs(&args.inputs)?;
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let options = args.loop_args.options(&bundle.manifest.agent)?;
    let backend = args.engine.backend()?;
    let agent = Agent::load(&bundle, backend.as_ref())?;
    if agent.srm.needs_semantic() && args.semantic_dir.is_none() {
        bail!(
            "{}: the SRM is the explicit branch; pass --semantic-dir with a similarity map per image",
            bundle.dir.display()
        );
    }

    let mut out_dirs = vec![args.out.join("masks")];
    if !args.no_overlays {
        out_dirs.push(args.out.join("overlays"));
    }
    let json_file = args.json.as_deref().filter(|p| !is_stdout(p));
    let out_files: Vec<PathBuf> = json_file.iter().map(|p| p.to_path_buf()).collect();
    check_no_clobber(&paths, &out_files, &out_dirs)?;
    let mut plan = OutputPlan::new("segment", args.write.force)
        .inputs(&paths)
        .input_dir(&bundle.dir)
        .dir(&args.out, &MaskFiles::names(!args.no_overlays));
    if let Some(d) = &args.semantic_dir {
        plan = plan.input_dir(d);
    }
    if let Some(p) = json_file {
        plan = plan.file(p);
    }
    let _lock = plan.check()?;
    let files = MaskFiles::create(&args.out, !args.no_overlays)?;
    let human = StdoutMode::detect() == StdoutMode::Human;
    let json = match (&args.json, human) {
        (Some(p), _) => JsonLines::open(Some(p))?,
        (None, false) => JsonLines::stdout(),
        (None, true) => JsonLines::none(),
    };
    let [_, eh, ew] = bundle.manifest.embedding.shape;
    let mut out = Outputs {
        embedding_hw: (eh, ew),
        files,
        json,
        human,
        limits,
    };

    // Ctrl-C, SIGTERM: finish the image at hand (its files and JSON line whole), then stop.
    let stop = StopFlag::new();
    install_ctrlc(stop.clone())?;
    let bar = progress(paths.len(), args.no_progress, "images");
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
        if stop.is_raised() {
            // Counted before the bar ends: finishing a bar moves it to its length.
            let done = bar.position();
            bar.finish_and_clear();
            eprintln!("interrupted after {done} of {} images", paths.len());
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        if out.json.is_closed() {
            // The reader of stdout went away (`| head`): stop quietly, as Unix tools do.
            bar.finish_and_clear();
            return Ok(ExitCode::SUCCESS);
        }
    }
    bar.finish_and_clear();
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
