//! Turning command-line inputs (files, directories, glob patterns) into a list of image files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// File extensions treated as images when a directory is listed.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"];

/// Whether a path has an image extension (case-insensitive).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Sorts paths in natural order (`frame2` before `frame10`).
pub fn sort_natural(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| natord::compare(&a.to_string_lossy(), &b.to_string_lossy()));
}

/// The image files of a directory (not recursive), in natural order.
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot read directory: {e}", dir.display()))?;
    let mut files = vec![];
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot read directory entry", dir.display()))?
            .path();
        if path.is_file() && is_image(&path) {
            files.push(path);
        }
    }
    sort_natural(&mut files);
    Ok(files)
}

/// Expands inputs: a file is kept as given (even without an image extension, so that a
/// mislabelled file gets a decode error rather than being skipped), a directory gives its image
/// files, anything else is tried as a glob pattern. Each input's files come in natural order,
/// inputs in the order given. Errors name the input that gave nothing.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        bail!("no input given: pass image files, directories or glob patterns");
    }
    let mut out = vec![];
    for input in inputs {
        let path = Path::new(input);
        if path.is_file() {
            out.push(path.to_path_buf());
        } else if path.is_dir() {
            let files = list_dir(path)?;
            if files.is_empty() {
                bail!(
                    "{input}: directory has no image files ({})",
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            out.extend(files);
        } else if input.contains(['*', '?', '[']) {
            let pattern =
                glob::glob(input).map_err(|e| anyhow::anyhow!("{input}: bad glob pattern: {e}"))?;
            let mut files = vec![];
            for entry in pattern {
                let p = entry.map_err(|e| anyhow::anyhow!("{input}: {e}"))?;
                if p.is_file() {
                    files.push(p);
                }
            }
            if files.is_empty() {
                bail!("{input}: pattern matches no files");
            }
            sort_natural(&mut files);
            out.extend(files);
        } else if let Ok(md) = std::fs::metadata(path) {
            // It exists but is neither a file nor a directory: say what it is rather than
            // "not found", which sends the user looking for a typo.
            bail!(
                "{input}: {}, not an image file or directory (devices, FIFOs and sockets are not read as images)",
                crate::safe_read::special_kind(&md)
            );
        } else {
            bail!("{input}: no such file or directory");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_dirs_globs_and_files_in_natural_order() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for name in ["f10.png", "f2.png", "f1.jpg", "notes.txt"] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        let dir = d.to_string_lossy().into_owned();
        assert_eq!(
            names(expand_inputs(std::slice::from_ref(&dir)).unwrap()),
            ["f1.jpg", "f2.png", "f10.png"]
        );
        let pattern = format!("{dir}/f*.png");
        assert_eq!(
            names(expand_inputs(&[pattern]).unwrap()),
            ["f2.png", "f10.png"]
        );
        let file = format!("{dir}/notes.txt");
        assert_eq!(names(expand_inputs(&[file]).unwrap()), ["notes.txt"]);
    }

    #[test]
    fn bad_inputs_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().to_string_lossy().into_owned();
        let msg = format!(
            "{:#}",
            expand_inputs(std::slice::from_ref(&empty)).unwrap_err()
        );
        assert!(msg.contains("has no image files"), "{msg}");
        let msg = format!(
            "{:#}",
            expand_inputs(&[format!("{empty}/nothing")]).unwrap_err()
        );
        assert!(msg.contains("no such file or directory"), "{msg}");
        let msg = format!(
            "{:#}",
            expand_inputs(&[format!("{empty}/*.png")]).unwrap_err()
        );
        assert!(msg.contains("pattern matches no files"), "{msg}");
        assert!(expand_inputs(&[]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_directory_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let locked = tmp.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // root can read anything; the check only means something for other users.
        if std::fs::read_dir(&locked).is_err() {
            let msg = format!("{:#}", list_dir(&locked).unwrap_err());
            assert!(msg.contains("locked: cannot read directory"), "{msg}");
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
