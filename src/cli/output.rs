//! What the commands write, in one place: JSON lines (to a file or stdout, whole lines, flushed
//! per record, a closed pipe handled like ripgrep does), the short human line per image on a
//! terminal, output folders, mask and overlay files, and progress bars.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::agent::LoopResult;
use crate::sink::{overlay, save_png_atomic, write_mask_png};

/// Where JSON lines go and what stdout shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdoutMode {
    /// stdout is a pipe or a file: the JSON lines (unless `--json FILE` takes them).
    Json,
    /// stdout is a terminal: one short line per image for people.
    Human,
}

impl StdoutMode {
    /// Human lines when stdout is a terminal.
    pub fn detect() -> Self {
        if io::stdout().is_terminal() {
            StdoutMode::Human
        } else {
            StdoutMode::Json
        }
    }
}

/// A JSON-lines writer. Each record is serialised first and written as one whole line, then
/// flushed: a reader tailing the file sees each record as it is done, and an interruption never
/// leaves half a record. When the reader of stdout goes away (`| head -1`), writes stop quietly
/// and [`JsonLines::is_closed`] says so, so that the command can wind down cleanly.
pub struct JsonLines {
    out: Option<Box<dyn Write>>,
    name: String,
    closed: bool,
}

impl JsonLines {
    /// To `path` (created; the previous content is replaced), or to stdout (no path, or `-`).
    pub fn open(path: Option<&Path>) -> Result<Self> {
        Ok(match path.filter(|p| !is_stdout(p)) {
            Some(p) => JsonLines {
                out: Some(Box::new(crate::sink::create_streamed(p)?)),
                name: p.display().to_string(),
                closed: false,
            },
            None => Self::stdout(),
        })
    }

    /// To stdout.
    pub fn stdout() -> Self {
        JsonLines {
            out: Some(Box::new(io::stdout())),
            name: "stdout".into(),
            closed: false,
        }
    }

    /// Nowhere (JSON not asked for).
    pub fn none() -> Self {
        JsonLines {
            out: None,
            name: String::new(),
            closed: false,
        }
    }

    /// Writes one record as one line and flushes. A closed pipe is not an error: the writer
    /// closes itself; any other failure names the file.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        match out.write_all(&line).and_then(|_| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(anyhow!("{}: cannot write: {e}", self.name)),
        }
    }

    /// Whether the reader went away.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Writes one line to stdout and flushes; the error names stdout and the cause (a full disk).
pub fn write_stdout_line(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| anyhow!("stdout: cannot write: {e}"))
}

/// Whether a file argument means stdout (`-`).
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Prints a line to stdout for people; false when stdout's reader went away.
pub fn print_line(line: &str) -> bool {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

/// One short line per image or frame for a terminal: name, steps, stop reason, time,
/// foreground share.
pub fn human_line(name: &str, result: &LoopResult) -> String {
    format!(
        "{name}: {} steps ({}), {:.0} ms, {:.1}% foreground",
        result.steps,
        serde_json::to_value(result.stop)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        result.times.total_ms,
        100.0 * result.foreground_share()
    )
}

/// Creates `dir` and its parents; the error names the folder.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))
}

/// The mask and overlay folders of a command's output directory.
pub struct MaskFiles {
    masks: PathBuf,
    overlays: Option<PathBuf>,
}

impl MaskFiles {
    /// The names inside the output folder that [`MaskFiles`] writes.
    pub fn names(overlays: bool) -> Vec<&'static str> {
        if overlays {
            vec!["masks", "overlays"]
        } else {
            vec!["masks"]
        }
    }

    /// `out/masks` and, unless `overlays` is false, `out/overlays`, created.
    pub fn create(out: &Path, overlays: bool) -> Result<Self> {
        let masks = out.join("masks");
        create_dir(&masks)?;
        let overlays = overlays.then(|| out.join("overlays"));
        if let Some(d) = &overlays {
            create_dir(d)?;
        }
        Ok(MaskFiles { masks, overlays })
    }

    /// Writes `<stem>.png` in masks/ (and overlays/), each file atomically; returns the paths.
    pub fn write(
        &self,
        stem: &str,
        image: &RgbImage,
        result: &LoopResult,
    ) -> Result<(PathBuf, Option<PathBuf>)> {
        let (h, w) = result.geometry.original;
        let mask_path = self.masks.join(format!("{stem}.png"));
        write_mask_png(&mask_path, &result.mask, w, h)?;
        let overlay_path = match &self.overlays {
            Some(dir) => {
                let p = dir.join(format!("{stem}.png"));
                save_png_atomic(&p, &overlay(image, &result.mask, result.kept_points()))?;
                Some(p)
            }
            None => None,
        };
        Ok((mask_path, overlay_path))
    }
}

/// A report as pretty JSON: on stdout for `-`, else into the file, through the output guard
/// (never over an input, a device or a file another kind of run wrote; written atomically).
pub fn write_json_report<T: Serialize>(path: &Path, kind: &str, report: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if is_stdout(path) {
        write_stdout_line(&text)?;
        return Ok(());
    }
    let _lock = crate::sink::OutputPlan::new(kind, false)
        .file(path)
        .check()?;
    crate::sink::write_bytes_atomic(path, format!("{text}\n").as_bytes())
}

/// `-q` for the whole command: no progress bars from any subcommand ([`progress`]).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The library's refusals name no flag; the command line adds the one that gets past each: the
/// `gate` command or `--allow-ungated` for a precision variant without a passing record,
/// `--force` for an output no earlier run wrote. Other errors pass unchanged.
pub fn with_flag_hint(err: anyhow::Error) -> anyhow::Error {
    use crate::bundle::GateRefusal;
    let hint = err.chain().find_map(|cause| {
        if let Some(refusal) = cause.downcast_ref::<GateRefusal>() {
            return Some(match refusal {
                GateRefusal::NotGated {
                    bundle,
                    precision,
                    backend,
                    ..
                } => format!(
                    "; run `alignsam gate --bundle {} --data DATASET --precisions {precision} --backends {backend} --record`, or pass --allow-ungated to use it unchecked",
                    bundle.display()
                ),
                GateRefusal::Failed { .. } => "; pass --allow-ungated to use it anyway".to_string(),
            });
        }
        cause
            .downcast_ref::<crate::sink::guard::NotOurs>()
            .map(|refusal| match refusal.in_folder {
                true => ", or allow replacing files (--force)".to_string(),
                false => ", or allow replacing it (--force)".to_string(),
            })
    });
    match hint {
        // The message is printed as `{:#}` (the context chain on one line), so the hint goes
        // at its end.
        Some(hint) => anyhow!("{err:#}{hint}"),
        None => err,
    }
}

/// Sets `-q` for the command being run (main's parse of the command line does, once).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// A progress bar over `len` items called `what`, hidden when asked (`--no-progress`, or `-q`
/// for any command), for fewer than two items, or when stderr is not a terminal (indicatif's
/// own rule). Every command's bars come from here.
pub fn progress(len: usize, hidden: bool, what: &str) -> ProgressBar {
    if hidden || QUIET.load(std::sync::atomic::Ordering::Relaxed) || len < 2 {
        return ProgressBar::hidden();
    }
    let template =
        format!("{{bar:30}} {{pos}}/{{len}} {what}, {{elapsed}} elapsed, ~{{eta}} left  {{msg}}");
    ProgressBar::new(len as u64)
        .with_style(ProgressStyle::with_template(&template).expect("valid template"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone away.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_whole_and_a_closed_pipe_closes_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let mut j = JsonLines::open(Some(&p)).unwrap();
        j.write(&serde_json::json!({"a": 1})).unwrap();
        j.write(&serde_json::json!({"b": "x\ny"})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"b\":\"x\\ny\"}\n"
        );
        let mut c = JsonLines {
            out: Some(Box::new(Closed)),
            name: "stdout".into(),
            closed: false,
        };
        c.write(&1).unwrap();
        assert!(c.is_closed());
        c.write(&2).unwrap();
    }
}

/// Unique output stems for a run's inputs, so that no two inputs write the same mask. The file
/// stem when no other input has it (`DS/images/0001.jpg` -> `0001`, as dataset masks are named);
/// else the whole file name (`img.png`, `img.jpg` -> `img_png`, `img_jpg`); else the parent
/// folder's name too (`a/img.png`, `b/img.png` -> `a_img_png`, `b_img_png`); a number is added
/// for what is still equal. Names cannot collide whatever the inputs: every candidate is checked
/// against every name already given.
pub fn output_stems(paths: &[PathBuf]) -> Vec<String> {
    // Bytes that are not UTF-8 as `_xNN` (from the records' `\xNN`): distinct names stay
    // distinct, and no output name holds a replacement character or a backslash.
    let lossy = |s: Option<&std::ffi::OsStr>| {
        s.map(|s| crate::sink::record::escaped_path(Path::new(s)).replace('\\', "_"))
    };
    let stem = |p: &PathBuf| lossy(p.file_stem()).unwrap_or_else(|| "image".into());
    let name = |p: &PathBuf| {
        lossy(p.file_name())
            .unwrap_or_else(|| "image".into())
            .replace('.', "_")
    };
    let with_parent = |p: &PathBuf| match lossy(p.parent().and_then(|d| d.file_name())) {
        Some(d) => format!("{d}_{}", name(p)),
        None => name(p),
    };
    let count =
        |f: &dyn Fn(&PathBuf) -> String, v: &str| paths.iter().filter(|p| f(p) == v).count();
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let candidates = [stem(p), name(p), with_parent(p)];
        let levels: [&dyn Fn(&PathBuf) -> String; 3] = [&stem, &name, &with_parent];
        let mut chosen = None;
        for (c, f) in candidates.iter().zip(levels) {
            if count(f, c) == 1 && !used.contains(c) && !paths_stems_clash(paths, p, c, &stem) {
                chosen = Some(c.clone());
                break;
            }
        }
        let base = chosen.unwrap_or_else(|| with_parent(p));
        let mut unique = base.clone();
        let mut n = 2;
        while used.contains(&unique) || paths_stems_clash(paths, p, &unique, &stem) {
            unique = format!("{base}-{n}");
            n += 1;
        }
        used.insert(unique.clone());
        out.push(unique);
    }
    out
}

/// Whether `candidate` for `p` is another input's plain stem (which that input may claim).
fn paths_stems_clash(
    paths: &[PathBuf],
    p: &PathBuf,
    candidate: &str,
    stem: &dyn Fn(&PathBuf) -> String,
) -> bool {
    paths.iter().any(|q| q != p && stem(q) == candidate)
}

pub use crate::sink::guard::normalise;

/// Refuses, before anything is written, outputs that would overwrite the user's inputs: an
/// output file that is an input, or an output folder that holds inputs or is a dataset's
/// `images/` or `masks/` folder (the sibling of an input folder with one of those names).
pub fn check_no_clobber(
    inputs: &[PathBuf],
    out_files: &[PathBuf],
    out_dirs: &[PathBuf],
) -> Result<()> {
    let inputs: Vec<PathBuf> = inputs.iter().map(|p| normalise(p)).collect();
    let mut protected: Vec<PathBuf> = vec![];
    for p in &inputs {
        if let Some(dir) = p.parent() {
            protected.push(dir.to_path_buf());
            let is_dataset_part = dir
                .file_name()
                .is_some_and(|n| n == "images" || n == "masks");
            if let (true, Some(root)) = (is_dataset_part, dir.parent()) {
                protected.push(root.join("images"));
                protected.push(root.join("masks"));
            }
        }
    }
    for f in out_files {
        let n = normalise(f);
        if inputs.contains(&n) {
            anyhow::bail!("{}: this output would overwrite an input file", f.display());
        }
        if n.parent()
            .is_some_and(|d| protected.contains(&d.to_path_buf()))
        {
            anyhow::bail!(
                "{}: this output would be written among the inputs (or into a dataset's images/ or masks/)",
                f.display()
            );
        }
    }
    for d in out_dirs {
        if protected.contains(&normalise(d)) {
            anyhow::bail!(
                "{}: refusing to write outputs into a folder of inputs (or a dataset's images/ or masks/); choose another --out",
                d.display()
            );
        }
    }
    Ok(())
}

/// [`check_no_clobber`] for commands that read a dataset folder and write into `out_dir`: the
/// dataset's `images/` and `masks/` are refused as outputs.
pub fn check_dataset_outputs(data: &Path, out_dir: &Path) -> Result<()> {
    let inside = [data.join("images").join("_"), data.join("masks").join("_")];
    check_no_clobber(&inside, &[], &[out_dir.to_path_buf()])
}

/// [`check_no_clobber`] for a source given as a path (a file, or a folder of frames); device
/// names and `-` are not files and have nothing to protect.
pub fn check_source_outputs(
    input: &str,
    out_files: &[PathBuf],
    out_dirs: &[PathBuf],
) -> Result<()> {
    let path = Path::new(input);
    let inputs = if path.is_dir() {
        vec![path.join("_")]
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Ok(());
    };
    check_no_clobber(&inputs, out_files, out_dirs)
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    fn stems(names: &[&str]) -> Vec<String> {
        output_stems(&names.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn stems_are_unique_whatever_the_inputs() {
        assert_eq!(stems(&["DS/images/1.jpg", "DS/images/2.jpg"]), ["1", "2"]);
        // The case: img.png's mask overwrote img-2.png's.
        assert_eq!(
            stems(&["d/img.png", "d/img.jpg", "d/img-2.png"]),
            ["img_png", "img_jpg", "img-2"]
        );
        assert_eq!(
            stems(&["a/img.png", "b/img.png"]),
            ["a_img_png", "b_img_png"]
        );
        let tricky = stems(&[
            "a/x.png",
            "a/x.jpg",
            "b/x_png.png",
            "x_png-2.png",
            "c/x.png",
        ]);
        let mut distinct = tricky.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), tricky.len(), "{tricky:?}");
    }

    #[test]
    fn outputs_never_land_on_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let ds = dir.path().join("DS");
        for sub in ["images", "masks"] {
            std::fs::create_dir_all(ds.join(sub)).unwrap();
        }
        let img = ds.join("images/1.jpg");
        std::fs::write(&img, b"x").unwrap();
        let inputs = vec![img.clone()];
        // segment DS/images --out DS: masks would go to DS/masks.
        let e = check_no_clobber(&inputs, &[], &[ds.join("masks")]).unwrap_err();
        assert!(e.to_string().contains("DS/masks: refusing"), "{e}");
        // --out DS/images.
        assert!(check_no_clobber(&inputs, &[], &[ds.join("images")]).is_err());
        // --json DS/images/1.jpg.
        assert!(check_no_clobber(&inputs, std::slice::from_ref(&img), &[]).is_err());
        // Through a `..` path too.
        let odd = ds.join("images/../masks");
        assert!(check_no_clobber(&inputs, &[], &[odd]).is_err());
        // Elsewhere is fine.
        check_no_clobber(
            &inputs,
            &[dir.path().join("out.jsonl")],
            &[dir.path().join("out/masks")],
        )
        .unwrap();
    }
}
