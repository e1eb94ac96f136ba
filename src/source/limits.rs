//! What an input file may cost before anything is decoded: only regular files are read (a
//! device such as /dev/zero or a FIFO would be read forever or block), files are size-checked
//! before they are read, and images are size-checked from their header before their pixels are
//! decoded, so that a 389 KB PNG that claims 20000x20000 pixels is refused instead of taking
//! gigabytes.

use std::fs::Metadata;
use std::io::Read;
use std::path::Path;
use std::sync::RwLock;

use anyhow::{Result, anyhow, bail};
use image::DynamicImage;

/// Limits on input files; [`InputLimits::default`] suits photos up to 100 megapixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest image, mask or manifest file in bytes.
    pub max_file_bytes: u64,
    /// Largest image or frame in pixels (width x height).
    pub max_pixels: u64,
}

/// 128 megapixels: a 108 MP phone photo passes, a 20000x20000 image (400 MP) does not.
pub const DEFAULT_MAX_PIXELS: u64 = 128_000_000;
/// 1 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

static LIMITS: RwLock<InputLimits> = RwLock::new(InputLimits {
    max_file_bytes: DEFAULT_MAX_FILE_BYTES,
    max_pixels: DEFAULT_MAX_PIXELS,
});

/// The process-wide limits every loader applies.
pub fn limits() -> InputLimits {
    *LIMITS.read().unwrap_or_else(|p| p.into_inner())
}

/// Sets the process-wide limits (the command line does, from its options).
pub fn set_limits(limits: InputLimits) {
    *LIMITS.write().unwrap_or_else(|p| p.into_inner()) = limits;
}

/// The file's metadata, or an error naming it when it is missing or not a regular file
/// (directories, devices, FIFOs, sockets). Symbolic links are followed. `what` names the role
/// ("image", "model file", ...).
pub fn regular_file(path: &Path, what: &str) -> Result<Metadata> {
    let md = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{}: {what} not found", path.display()),
        _ => anyhow!("{}: cannot read {what}: {e}", path.display()),
    })?;
    if md.is_dir() {
        bail!("{}: is a directory, not {}", path.display(), article(what));
    }
    if !md.is_file() {
        bail!(
            "{}: not a regular file (a device, FIFO or socket), so not read as {}",
            path.display(),
            article(what)
        );
    }
    Ok(md)
}

/// Reads a regular file of at most `max_bytes`; errors name the file.
pub fn read_regular(path: &Path, what: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let md = regular_file(path, what)?;
    if md.len() > max_bytes {
        bail!(
            "{}: {what} of {} bytes, more than the limit of {max_bytes}",
            path.display(),
            md.len()
        );
    }
    // Read at most one byte past the limit: a file that grows after the check (or a special
    // file that reports no size) can never make this allocate more than the limit.
    let mut bytes = Vec::with_capacity(md.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(|e| anyhow!("{}: cannot read {what}: {e}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        bail!(
            "{}: {what} grew past the limit of {max_bytes} bytes while being read",
            path.display()
        );
    }
    Ok(bytes)
}

/// Decodes an image or mask file's bytes, refusing from the header alone an image larger than
/// the pixel limit; errors name the file.
pub fn decode_image(bytes: Vec<u8>, path: &Path, what: &str) -> Result<DynamicImage> {
    let limit = limits().max_pixels;
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes.as_slice()))
            .with_guessed_format()
            .map_err(|e| anyhow!("{}: cannot read {what}: {e}", path.display()))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| anyhow!("{}: corrupt or unsupported {what}: {e}", path.display()))?;
    check_pixels(path, what, w as u64, h as u64, limit)?;
    let mut r = reader()?;
    let mut l = image::Limits::default();
    // The decoder's own allocation limit, as a second line of defence: 8 bytes per pixel (16-bit
    // RGBA) plus slack.
    l.max_alloc = Some(limit.saturating_mul(8).saturating_add(1 << 26));
    r.limits(l);
    let img = r
        .decode()
        .map_err(|e| anyhow!("{}: corrupt or unsupported {what}: {e}", path.display()))?;
    if img.width() == 0 || img.height() == 0 {
        bail!("{}: {what} has no pixels", path.display());
    }
    Ok(img)
}

/// An error naming the file when `w x h` exceeds `limit` pixels.
pub fn check_pixels(path: &Path, what: &str, w: u64, h: u64, limit: u64) -> Result<()> {
    let pixels = w.saturating_mul(h);
    if pixels > limit {
        bail!(
            "{}: {what} of {w}x{h} = {pixels} pixels, more than the limit of {limit} (the input pixel limit can be raised)",
            path.display()
        );
    }
    Ok(())
}

fn article(what: &str) -> String {
    let vowel = what.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {what}", if vowel { "an" } else { "a" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let e = read_regular(Path::new("/dev/zero"), "model file", 1 << 40).unwrap_err();
        assert!(
            e.to_string().contains("/dev/zero: not a regular file"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular(dir.path(), "image", 10).unwrap_err();
        assert!(
            e.to_string().contains("is a directory, not an image"),
            "{e}"
        );
        let f = dir.path().join("big.bin");
        std::fs::write(&f, [0u8; 100]).unwrap();
        let e = read_regular(&f, "manifest", 99).unwrap_err();
        assert!(
            e.to_string()
                .contains("manifest of 100 bytes, more than the limit of 99"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mask.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular(&fifo, "mask", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn huge_images_are_refused_from_their_header() {
        // A grey PNG of 20000x20000 compresses to a few hundred KB; decoding it would take 400 MB.
        let img = image::GrayImage::new(20000, 20000);
        let mut png = vec![];
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        drop(img);
        assert!(png.len() < 2_000_000);
        let e = decode_image(png, Path::new("huge.png"), "image").unwrap_err();
        assert!(
            e.to_string()
                .contains("huge.png: image of 20000x20000 = 400000000 pixels, more than the limit"),
            "{e}"
        );
    }
}
