//! What an input file may cost before anything is decoded: only regular files are read (a
//! device such as /dev/zero or a FIFO would be read forever or block), files are size-checked
//! before they are read, and images are size-checked from their header before their pixels are
//! decoded, so that a 389 KB PNG that claims 20000x20000 pixels is refused instead of taking
//! gigabytes.

use std::fs::Metadata;
use std::io::Read;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use image::{DynamicImage, ImageDecoder};

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

impl InputLimits {
    /// Reads an input file (an image, a mask, a split file, a cache entry) of at most
    /// [`InputLimits::max_file_bytes`]; errors name the file.
    pub fn read_file(&self, path: &Path, what: &str) -> Result<Vec<u8>> {
        read_regular(path, what, self.max_file_bytes)
    }

    /// Reads and decodes an image file as RGB (any format the `image` crate reads, EXIF
    /// orientation applied), within these limits. Errors name the file and say whether it is
    /// missing, unreadable, too large or corrupt.
    pub fn load_rgb(&self, path: &Path) -> Result<image::RgbImage> {
        let bytes = self.read_file(path, "image")?;
        Ok(self.decode_image(bytes, path, "image")?.to_rgb8())
    }

    /// Decodes an image or mask file's bytes, refusing from the header alone an image larger
    /// than [`InputLimits::max_pixels`]; errors name the file.
    pub fn decode_image(&self, bytes: Vec<u8>, path: &Path, what: &str) -> Result<DynamicImage> {
        decode_image(bytes, path, what, self.max_pixels)
    }
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
            "{}: not a regular file but {}, so not read as {}",
            path.display(),
            special_kind(&md),
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

fn decode_image(bytes: Vec<u8>, path: &Path, what: &str, limit: u64) -> Result<DynamicImage> {
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
    if r.format() == Some(image::ImageFormat::Jpeg) && !jpeg_has_end(&bytes) {
        // The JPEG decoder is lenient: a file cut short decodes with its missing part grey.
        bail!(
            "{}: truncated JPEG {what}: the data ends before the end-of-image marker (the file was cut short)",
            path.display()
        );
    }
    let mut l = image::Limits::default();
    // The decoder's own allocation limit, as a second line of defence: 8 bytes per pixel (16-bit
    // RGBA) plus slack.
    l.max_alloc = Some(limit.saturating_mul(8).saturating_add(1 << 26));
    r.limits(l);
    let corrupt =
        |e: image::ImageError| anyhow!("{}: corrupt or unsupported {what}: {e}", path.display());
    let mut decoder = r.into_decoder().map_err(corrupt)?;
    // The EXIF orientation (cameras store portrait photos sideways and say so there): applied
    // as every viewer does, so that masks, points and overlays are in the orientation the user
    // sees, and a mask drawn on the shown image matches it. An unreadable tag counts as none.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        bail!("{}: {what} has no pixels", path.display());
    }
    Ok(img)
}

/// The size at which an image is shown (and decoded by [`InputLimits::decode_image`]): its stored size, with
/// width and height swapped when its EXIF orientation turns it a quarter turn. Reads the header
/// only.
pub fn shown_dimensions(decoder: &mut impl ImageDecoder) -> (u32, u32) {
    use image::metadata::Orientation::*;
    let (w, h) = decoder.dimensions();
    match decoder.orientation().unwrap_or(NoTransforms) {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        _ => (w, h),
    }
}

/// Whether a JPEG's data reaches its end-of-image marker after its last scan. Inside a scan a
/// 0xFF byte is always followed by 0x00 or a restart marker, so 0xFFD9 after the last
/// start-of-scan (0xFFDA) is the real end; an EXIF thumbnail's markers come before it.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_scan.is_some_and(|at| bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]))
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

/// What a path that is neither a file nor a directory is, for messages.
pub fn special_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
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
        let e = decode_image(png, Path::new("huge.png"), "image", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(
            e.to_string()
                .contains("huge.png: image of 20000x20000 = 400000000 pixels, more than the limit"),
            "{e}"
        );
    }

    /// A JPEG of `w` x `h`, left half red and right half blue, at quality 95.
    fn halves_jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut jpg = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 95)
            .encode_image(&img)
            .unwrap();
        jpg
    }

    /// `jpg` with an EXIF APP1 segment right after its start marker that holds only the
    /// orientation tag (0x0112, a SHORT) set to `orientation`.
    pub(crate) fn with_exif_orientation(jpg: &[u8], orientation: u8) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        tiff.extend_from_slice(&[
            0x01,
            0x12,
            0,
            3,
            0,
            0,
            0,
            1,
            0,
            orientation,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&tiff);
        let len = (payload.len() + 2) as u16;
        let mut out = jpg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let jpg = with_exif_orientation(&halves_jpeg(32, 16), 6);
        let img = decode_image(jpg, Path::new("side.jpg"), "image", DEFAULT_MAX_PIXELS)
            .unwrap()
            .to_rgb8();
        // Orientation 6: shown rotated 90 degrees clockwise, so the left half is now on top.
        assert_eq!(img.dimensions(), (16, 32));
        let top = img.get_pixel(8, 4).0;
        let bottom = img.get_pixel(8, 28).0;
        assert!(top[0] > 200 && top[2] < 60, "{top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "{bottom:?}");
        // Orientation 1 (and none): as stored.
        let jpg = with_exif_orientation(&halves_jpeg(32, 16), 1);
        let img = decode_image(jpg, Path::new("up.jpg"), "image", DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!((img.width(), img.height()), (32, 16));
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_and_trailing_bytes_are_not() {
        // A busy picture, so that most of the file is scan data and half of it cuts a scan.
        let img = image::RgbImage::from_fn(256, 256, |x, y| {
            image::Rgb([((x * 7) ^ (y * 13)) as u8, (x * y) as u8, (x + 3 * y) as u8])
        });
        let mut jpg = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 90)
            .encode_image(&img)
            .unwrap();
        let cut = jpg[..jpg.len() / 2].to_vec();
        let Err(e) = decode_image(cut, Path::new("cut.jpg"), "image", DEFAULT_MAX_PIXELS) else {
            panic!("a truncated JPEG is refused, not decoded with a grey half");
        };
        assert!(
            e.to_string().contains("cut.jpg: truncated JPEG image"),
            "{e}"
        );
        let mut padded = jpg.clone();
        padded.extend_from_slice(b"\0\0trailing junk some cameras write");
        assert!(decode_image(padded, Path::new("padded.jpg"), "image", DEFAULT_MAX_PIXELS).is_ok());
        assert!(decode_image(jpg, Path::new("whole.jpg"), "image", DEFAULT_MAX_PIXELS).is_ok());
    }
}
