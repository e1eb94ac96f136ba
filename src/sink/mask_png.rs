//! Binary masks as 8-bit PNG (0 background, 255 object), the format of most segmentation datasets.

use std::path::Path;

use anyhow::{Result, bail};
use image::GrayImage;

/// Converts a row-major mask into a grey image.
pub fn mask_image(mask: &[bool], width: usize, height: usize) -> Result<GrayImage> {
    if mask.len() != width * height {
        bail!(
            "mask has {} values for a {width}x{height} image",
            mask.len()
        );
    }
    let data = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    Ok(GrayImage::from_raw(width as u32, height as u32, data).expect("size checked"))
}

/// Writes a binary mask PNG, atomically (whole or not at all); errors name the file.
pub fn write_mask_png(path: &Path, mask: &[bool], width: usize, height: usize) -> Result<()> {
    crate::safe_write::save_png_atomic(path, &mask_image(mask, width, height)?)
}
