//! Still images from files, decoded by the `image` crate.

use std::path::Path;

use anyhow::Result;
use image::RgbImage;

/// Reads and decodes an image file into 8-bit RGB. Errors name the file and say whether it is
/// missing, unreadable, or not a decodable image.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{}: image not found", path.display()),
        std::io::ErrorKind::IsADirectory => {
            anyhow::anyhow!("{}: is a directory, not an image", path.display())
        }
        _ => anyhow::anyhow!("{}: cannot read image: {e}", path.display()),
    })?;
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow::anyhow!("{}: cannot read image: {e}", path.display()))?
        .decode()
        .map_err(|e| anyhow::anyhow!("{}: corrupt or unsupported image: {e}", path.display()))?;
    if img.width() == 0 || img.height() == 0 {
        anyhow::bail!("{}: image has no pixels", path.display());
    }
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.png");
        let e = format!("{:#}", load_rgb(&missing).unwrap_err());
        assert!(e.contains("nope.png: image not found"), "{e}");

        let corrupt = tmp.path().join("bad.png");
        std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\n garbage").unwrap();
        let e = format!("{:#}", load_rgb(&corrupt).unwrap_err());
        assert!(e.contains("bad.png: corrupt or unsupported image"), "{e}");

        let e = format!("{:#}", load_rgb(tmp.path()).unwrap_err());
        assert!(
            e.contains("is a directory") || e.contains("cannot read image"),
            "{e}"
        );
    }

    #[test]
    fn decodes_to_rgb() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("g.png");
        image::GrayImage::from_pixel(3, 2, image::Luma([77]))
            .save(&p)
            .unwrap();
        let img = load_rgb(&p).unwrap();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.get_pixel(0, 0).0, [77, 77, 77]);
    }
}
