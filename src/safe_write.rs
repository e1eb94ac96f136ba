//! Files that appear whole or not at all: everything is written to a temporary file beside the
//! target (same directory, so the rename stays on one file system), flushed and synced, then
//! renamed over the target. A Ctrl-C, a crash or a full disk leaves the previous file (or none),
//! never a truncated one. Nothing is written through a symbolic link, a device, a FIFO or a
//! socket. Below every module that writes (the engine's exports, bundles, sinks); the output
//! guard ([`crate::sink::guard`]) decides before a run what may be written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// Writes `path` through `write`, atomically; errors name the file and what failed.
/// A target that exists must be a regular file: a device, FIFO, socket, folder or symbolic link
/// is refused (the rename would replace the node or the link itself, never what it points to, but
/// a user who named one meant something else).
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        refuse_special(path, &md, true)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let file =
            File::create(&tmp).map_err(|e| anyhow!("{}: cannot create: {e}", path.display()))?;
        let mut w = BufWriter::new(file);
        write(&mut w).with_context(|| format!("{}: cannot write", path.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| anyhow!("{}: cannot write: {}", path.display(), e.error()))?;
        file.sync_all()
            .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates (or truncates) a file that is written as the run goes (JSON lines, logs a reader
/// tails): an existing device, FIFO, socket, folder or symbolic link there is refused, not
/// written through.
pub fn create_streamed(path: &Path) -> Result<File> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        refuse_special(path, &md, true)?;
    }
    File::create(path).map_err(|e| anyhow!("{}: cannot create: {e}", path.display()))
}

/// Writes bytes to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| Ok(w.write_all(bytes)?))
}

/// Encodes an image as PNG and writes it atomically.
pub fn save_png_atomic<P, C>(path: &Path, image: &image::ImageBuffer<P, C>) -> Result<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| anyhow!("{}: cannot encode PNG: {e}", path.display()))?;
    write_bytes_atomic(path, &png)
}

/// `dir/.name.tmp-<pid>`: hidden, and distinct per process so that two runs never share one.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Refuses what is not a regular file (or, for `file == false`, a folder) at an output path:
/// never written through, never replaced.
pub fn refuse_special(path: &Path, md: &std::fs::Metadata, file: bool) -> Result<()> {
    let t = md.file_type();
    if t.is_symlink() {
        bail!(
            "{}: is a symbolic link; outputs are never written through links",
            path.display()
        );
    }
    if t.is_dir() && file {
        bail!("{}: is a folder, not a file", path.display());
    }
    if !t.is_dir() && !t.is_file() {
        bail!(
            "{}: is a device, FIFO or socket; outputs are written to regular files only",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_bytes_atomic(&p, b"old").unwrap();
        let e = write_atomic(&p, |w| {
            w.write_all(b"half a rec")?;
            bail!("interrupted")
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("a.json: cannot write: interrupted"),
            "{e:#}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        write_bytes_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn errors_name_the_file() {
        let e = write_bytes_atomic(Path::new("/nonexistent-dir/x.png"), b"x").unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent-dir/x.png: cannot create"),
            "{e}"
        );
    }
}
