//! `alignsam decode`: segment one image from points given on the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;

use super::args::EngineArgs;
use crate::sam::{PointLabel, PromptPoint, Sam};
use crate::sink::{OutputPlan, write_mask_png};
use crate::source::InputLimits;

/// A point given as `X,Y` (positive) or `X,Y,0` / `X,Y,1` (explicit label).
#[derive(Clone, Debug)]
pub struct PointArg(pub PromptPoint);

impl FromStr for PointArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("'{v}' in point '{s}' is not a number"))
        };
        let (x, y) = match parts.as_slice() {
            [x, y] | [x, y, _] => (num(x)?, num(y)?),
            _ => return Err(format!("point '{s}' should be X,Y or X,Y,LABEL")),
        };
        let label = match parts.get(2) {
            None | Some(&"1") | Some(&"+") => PointLabel::Positive,
            Some(&"0") | Some(&"-") => PointLabel::Negative,
            Some(other) => return Err(format!("label '{other}' in point '{s}' should be 1 or 0")),
        };
        Ok(PointArg(PromptPoint { x, y, label }))
    }
}

/// Arguments of `alignsam decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Image file.
    pub image: PathBuf,
    /// Prompt point in image pixels: X,Y (object) or X,Y,0 (background). Repeatable.
    #[arg(long = "point", short = 'p', required = true)]
    pub points: Vec<PointArg>,
    /// Where to write the binary mask PNG.
    #[arg(long, short = 'o', default_value = "mask.png")]
    pub out: PathBuf,
    /// Whether existing files may be replaced.
    #[command(flatten)]
    pub write: super::args::WriteArgs,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs `alignsam decode`.
pub fn run(args: DecodeArgs, limits: InputLimits) -> Result<ExitCode> {
    let _lock = OutputPlan::new("decode", args.write.force)
        .input(&args.image)
        .input_dir(&args.bundle)
        .file(&args.out)
        .check()?;
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let backend = args.engine.backend()?;
    let sam = Sam::load(&bundle, backend.as_ref())?;
    let image = limits.load_rgb(&args.image)?;
    let (w, h) = (image.width() as f64, image.height() as f64);
    let points: Vec<PromptPoint> = args.points.iter().map(|p| p.0).collect();
    if let Some(p) = points.iter().find(|p| {
        !(p.x.is_finite() && p.y.is_finite()) || p.x < 0.0 || p.y < 0.0 || p.x >= w || p.y >= h
    }) {
        bail!(
            "point ({}, {}) lies outside the {}x{} image {}",
            p.x,
            p.y,
            w,
            h,
            args.image.display()
        );
    }
    let t0 = Instant::now();
    let (embedding, geometry) = sam.embed(&image)?;
    let t1 = Instant::now();
    let (mask, low) = sam.segment(&embedding, &geometry, &points)?;
    let t2 = Instant::now();
    write_mask_png(&args.out, &mask, geometry.original.1, geometry.original.0)?;
    let record = serde_json::json!({
        "image": args.image,
        "mask": args.out,
        "points": points,
        "iou_prediction": low.iou,
        "foreground_fraction": mask.iter().filter(|&&m| m).count() as f64 / mask.len() as f64,
        "ms": { "embed": (t1 - t0).as_secs_f64() * 1e3, "decode_and_postprocess": (t2 - t1).as_secs_f64() * 1e3 },
    });
    outln!("{record}");
    Ok(ExitCode::SUCCESS)
}
