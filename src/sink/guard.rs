//! The guard every command's outputs pass before anything is written: a run declares what it
//! reads and what it will write, and [`OutputPlan::check`] refuses, up front and with the path,
//!
//! - an output that is an input of this run, or lies in a folder the run reads (a dataset, the
//!   source bundle), or an output folder that holds the run's inputs where it writes;
//! - an output that another option of the same run writes (`--json o/masks/ball.png` beside
//!   `--out o`);
//! - a device, FIFO, socket, directory or symbolic link where a file is to be written;
//! - an existing file that no earlier run of the same kind wrote there, unless the user allows
//!   replacing files (`force`): re-running a command into its own output folder works, writing
//!   over a dataset's masks or a bundle's models does not;
//! - a second run writing into the same folder at the same time (a lock, held until the run
//!   ends).
//!
//! What earlier runs wrote is recorded in a small index in each output folder
//! ([`INDEX_NAME`]: one `kind<TAB>name` line per output). The files themselves are written by
//! [`super::write_atomic`], which also refuses special files and links at the moment of writing.

use std::collections::BTreeSet;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

/// The index of what alignsam wrote in a folder.
pub const INDEX_NAME: &str = ".alignsam-outputs";
/// The lock file of an output folder.
pub const LOCK_NAME: &str = ".alignsam.lock";

/// What a run reads and writes, declared before it starts.
#[derive(Debug, Default)]
pub struct OutputPlan {
    kind: String,
    force: bool,
    inputs: Vec<PathBuf>,
    input_dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    dirs: Vec<(PathBuf, Vec<String>)>,
    shared_dirs: Vec<PathBuf>,
}

/// Held while the run writes: the output folders' locks, and where to record the outputs.
#[derive(Debug)]
pub struct OutputLock {
    _locks: Vec<File>,
}

impl OutputPlan {
    /// A plan for a run of `kind` (the command's name: what [`INDEX_NAME`] records); `force`
    /// allows replacing existing files that no earlier run of this kind wrote (never inputs,
    /// never special files).
    pub fn new(kind: &str, force: bool) -> Self {
        OutputPlan {
            kind: kind.to_string(),
            force,
            ..Self::default()
        }
    }

    /// A file the run reads.
    pub fn input(mut self, path: &Path) -> Self {
        self.inputs.push(normalise(path));
        self
    }

    /// Files the run reads.
    pub fn inputs<'p>(mut self, paths: impl IntoIterator<Item = &'p PathBuf>) -> Self {
        self.inputs.extend(paths.into_iter().map(|p| normalise(p)));
        self
    }

    /// A folder the run reads from (a dataset, a bundle): nothing is written inside it.
    pub fn input_dir(mut self, dir: &Path) -> Self {
        self.input_dirs.push(normalise(dir));
        self
    }

    /// A file the run writes (`--json FILE`, `decode -o FILE`, a gate reference).
    pub fn file(mut self, path: &Path) -> Self {
        self.files.push(path.to_path_buf());
        self
    }

    /// A folder the run writes into, with the names inside it that it writes (files or
    /// sub-folders: `masks`, `overlays`, `summary.json`).
    pub fn dir(mut self, dir: &Path, writes: &[&str]) -> Self {
        self.dirs.push((
            dir.to_path_buf(),
            writes.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// A folder the run writes into that other runs share at the same time (the embedding
    /// cache, whose entries are written atomically under content-derived names): checked like
    /// an output folder (never inside what the run reads, never over another output, never a
    /// special file) but neither locked nor indexed.
    pub fn shared_dir(mut self, dir: &Path) -> Self {
        self.shared_dirs.push(dir.to_path_buf());
        self
    }

    /// Checks every rule, creates the output folders, takes their locks and records the
    /// outputs in each folder's index; the first refusal is the error, naming the path.
    pub fn check(self) -> Result<OutputLock> {
        let mut written: Vec<(PathBuf, String)> = vec![];
        for (dir, names) in &self.dirs {
            self.check_dir(dir, names)?;
            for n in names {
                written.push((normalise(&dir.join(n)), format!("{} {n}", dir.display())));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let n = normalise(f);
            if let Some((_, other)) = written.iter().find(|(w, _)| n.starts_with(w)) {
                bail!(
                    "{}: another output of this run writes there ({other}); choose another path",
                    f.display()
                );
            }
            if self.files[..i].iter().any(|g| normalise(g) == n) {
                bail!("{}: named for two outputs of this run", f.display());
            }
            self.check_file(f)?;
            written.push((n, f.display().to_string()));
        }
        for dir in &self.shared_dirs {
            let n = normalise(dir);
            if let Some((_, other)) = written.iter().find(|(w, _)| n.starts_with(w)) {
                bail!(
                    "{}: another output of this run writes there ({other}); choose another folder",
                    dir.display()
                );
            }
            self.check_dir(dir, &[])?;
        }
        let mut locks = vec![];
        for dir in &self.shared_dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow!("{}: cannot create: {e}", dir.display()))?;
        }
        for (dir, names) in &self.dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow!("{}: cannot create: {e}", dir.display()))?;
            locks.push(lock(dir)?);
            record(dir, &self.kind, names.iter().map(String::as_str))?;
        }
        for f in &self.files {
            if let (Some(parent), Some(name)) = (parent_dir(f), f.file_name()) {
                record(&parent, &self.kind, [name.to_string_lossy().as_ref()])?;
            }
        }
        Ok(OutputLock { _locks: locks })
    }

    fn check_dir(&self, dir: &Path, names: &[String]) -> Result<()> {
        let n = normalise(dir);
        if let Some(d) = self.input_dirs.iter().find(|d| n.starts_with(d)) {
            bail!(
                "{}: this output folder is inside {}, which this run reads; choose another output folder",
                dir.display(),
                d.display()
            );
        }
        if let Ok(md) = std::fs::symlink_metadata(dir)
            && !md.is_dir()
            && !(md.file_type().is_symlink() && dir.is_dir())
        {
            bail!("{}: exists and is not a folder", dir.display());
        }
        let ours = recorded(dir, &self.kind);
        for name in names {
            let target = n.join(name);
            if let Some(input) = self.inputs.iter().find(|i| i.starts_with(&target)) {
                bail!(
                    "{}: this run would write over its input {}; choose another output folder",
                    dir.display(),
                    input.display()
                );
            }
            if let Some(d) = self.input_dirs.iter().find(|d| d.starts_with(&target)) {
                bail!(
                    "{}: this run would write into {}, which it reads; choose another output folder",
                    dir.display(),
                    d.display()
                );
            }
            if let Ok(md) = std::fs::symlink_metadata(&target) {
                refuse_special(&target, &md, name.contains('.'))?;
                let nonempty = !md.is_dir()
                    || std::fs::read_dir(&target).is_ok_and(|mut r| r.next().is_some());
                if nonempty && !self.force && !ours.contains(name) {
                    return Err(NotOurs {
                        path: target,
                        kind: self.kind.clone(),
                        in_folder: true,
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    fn check_file(&self, f: &Path) -> Result<()> {
        let n = normalise(f);
        if self.inputs.contains(&n) {
            bail!("{}: this output is an input of this run", f.display());
        }
        if let Some(d) = self.input_dirs.iter().find(|d| n.starts_with(d)) {
            bail!(
                "{}: this output lies in {}, which this run reads; choose another path",
                f.display(),
                d.display()
            );
        }
        if let Ok(md) = std::fs::symlink_metadata(f) {
            refuse_special(f, &md, true)?;
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            let ours = parent_dir(f)
                .zip(name)
                .is_some_and(|(p, name)| recorded(&p, &self.kind).contains(&name));
            if !self.force && !ours {
                return Err(NotOurs {
                    path: f.to_path_buf(),
                    kind: self.kind.clone(),
                    in_folder: false,
                }
                .into());
            }
        }
        Ok(())
    }
}

pub use crate::safe_write::refuse_special;

/// An output path that exists and that no earlier run of the same command wrote: the guard
/// refuses to replace it unless the plan allows replacing files (`force` in [`OutputPlan::new`];
/// the command line's `--force`). Callers that offer that choice match on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: exists and no earlier `{kind}` run wrote it; choose another {}",
    path.display(),
    if *in_folder { "output folder" } else { "path" }
)]
pub struct NotOurs {
    /// The existing file or folder.
    pub path: PathBuf,
    /// The command whose runs the guard recognises (`segment`, `eval`, ...).
    pub kind: String,
    /// Whether the path is an entry of an output folder (else an output file named by the user).
    pub in_folder: bool,
}

/// The names a run of `kind` recorded in `dir`'s index.
fn recorded(dir: &Path, kind: &str) -> BTreeSet<String> {
    recorded_lines(dir)
        .iter()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(k, _)| *k == kind)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Adds `names` under `kind` to `dir`'s index.
fn record<'n>(dir: &Path, kind: &str, names: impl IntoIterator<Item = &'n str>) -> Result<()> {
    let mut all = recorded_lines(dir);
    let before = all.len();
    for n in names {
        all.insert(format!("{kind}\t{n}"));
    }
    if all.len() == before && dir.join(INDEX_NAME).exists() {
        return Ok(());
    }
    let text: String = all.into_iter().map(|l| l + "\n").collect();
    super::write_bytes_atomic(&dir.join(INDEX_NAME), text.as_bytes())
}

/// Every `kind<TAB>name` line of `dir`'s index (none when it has no readable index).
fn recorded_lines(dir: &Path) -> BTreeSet<String> {
    crate::safe_read::read_regular(&dir.join(INDEX_NAME), "index", 1 << 20)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter(|l| l.contains('\t'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Takes `dir`'s lock, or says that another run holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_NAME);
    if let Ok(md) = std::fs::symlink_metadata(&path) {
        refuse_special(&path, &md, true)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow!("{}: cannot create the lock: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => bail!(
            "{}: another alignsam run is writing into this folder; wait for it or choose another output folder",
            dir.display()
        ),
        Err(TryLockError::Error(e)) => bail!("{}: cannot lock: {e}", path.display()),
    }
}

fn parent_dir(f: &Path) -> Option<PathBuf> {
    match f.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

/// An absolute, normalised form of a path that may not exist yet: the longest existing prefix
/// resolved (symbolic links, `..`), the rest appended.
pub fn normalise(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = vec![];
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_may_replace_its_own_outputs_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("o");
        let plan = || OutputPlan::new("segment", false).dir(&out, &["masks"]);
        drop(plan().check().unwrap());
        std::fs::create_dir_all(out.join("masks")).unwrap();
        std::fs::write(out.join("masks").join("a.png"), b"x").unwrap();
        drop(plan().check().unwrap());
        // Another kind of run finds files it did not write.
        let e = OutputPlan::new("eval", false)
            .dir(&out, &["masks"])
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("no earlier `eval` run"), "{e}");
        // A typed refusal, naming no flag: the caller offers the way around it.
        let refusal = e.downcast_ref::<NotOurs>().expect("a typed refusal");
        assert_eq!(refusal.path, out.join("masks"));
        assert!(refusal.in_folder && !e.to_string().contains("--"), "{e}");
        drop(
            OutputPlan::new("eval", true)
                .dir(&out, &["masks"])
                .check()
                .unwrap(),
        );
    }

    #[test]
    fn two_runs_into_one_folder_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let held = OutputPlan::new("segment", false)
            .dir(d.path(), &["masks"])
            .check()
            .unwrap();
        let e = OutputPlan::new("segment", false)
            .dir(d.path(), &["masks"])
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("another alignsam run"), "{e}");
        drop(held);
        OutputPlan::new("segment", false)
            .dir(d.path(), &["masks"])
            .check()
            .unwrap();
    }

    #[test]
    fn inputs_special_files_and_other_outputs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.png");
        std::fs::write(&img, b"x").unwrap();
        let e = OutputPlan::new("decode", true)
            .input(&img)
            .file(&img)
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("is an input"), "{e}");
        let e = OutputPlan::new("decode", true)
            .file(Path::new("/dev/null"))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("device, FIFO or socket"), "{e}");
        let out = d.path().join("o");
        let e = OutputPlan::new("segment", true)
            .dir(&out, &["masks", "summary.json"])
            .file(&out.join("masks").join("ball.png"))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("another output of this run"), "{e}");
        let e = OutputPlan::new("train", true)
            .input_dir(d.path())
            .dir(d.path(), &["policy.onnx"])
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("which this run reads"), "{e}");
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let e = OutputPlan::new("decode", true)
            .file(&link)
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
