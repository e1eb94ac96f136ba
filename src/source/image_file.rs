//! Still images from files, decoded by the `image` crate.

use std::path::Path;

use anyhow::Result;
use image::RgbImage;

use crate::safe_read::InputLimits;

/// Reads and decodes an image file into 8-bit RGB within the default [`InputLimits`] (photos up
/// to 128 megapixels); [`InputLimits::load_rgb`] takes other limits. Errors name the file and say
/// whether it is missing, unreadable, not a regular file, too large, or not a decodable image.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    InputLimits::default().load_rgb(path)
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
