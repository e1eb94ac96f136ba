//! The montage: a few images, one row each, ground truth beside every method's overlay, each
//! tile scaled to a common height and captioned, so that a person sees at a glance where each
//! method clicked.

use ab_glyph::{Font, PxScale, ScaleFont};
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

use super::evaluate::ImageEval;
use crate::dataset::Mask;
use crate::sink::overlay::{draw_text, font, overlay};

/// Height of every tile's image part, in pixels.
pub const TILE_HEIGHT: u32 = 256;
/// Height of the caption bar above each tile's image.
pub const CAPTION_HEIGHT: u32 = 20;
/// Space between tiles and around the montage.
pub const GAP: u32 = 4;

const CAPTION_SIZE: f32 = 14.0;
/// Captions shrink to fit narrow (portrait) tiles, down to this size; beyond it they are cut.
const MIN_CAPTION_SIZE: f32 = 9.0;
const CAPTION_MARGIN: f32 = 3.0;
const BACKGROUND: [u8; 3] = [24, 24, 24];
const CAPTION_COLOUR: [u8; 3] = [235, 235, 235];

/// The width of a tile for an image of `width` x `height` (aspect ratio kept, at least 1).
pub fn tile_width(width: u32, height: u32) -> u32 {
    ((width as f64 * TILE_HEIGHT as f64 / height as f64).round() as u32).max(1)
}

/// One tile: the image scaled to [`TILE_HEIGHT`] under a caption bar.
pub fn tile(image: &RgbImage, caption: &str) -> RgbImage {
    let w = tile_width(image.width(), image.height());
    let scaled = imageops::resize(image, w, TILE_HEIGHT, FilterType::Triangle);
    let mut out = RgbImage::from_pixel(w, CAPTION_HEIGHT + TILE_HEIGHT, Rgb(BACKGROUND));
    imageops::replace(&mut out, &scaled, 0, CAPTION_HEIGHT as i64);
    let size = caption_size(caption, w);
    draw_text(
        &mut out,
        caption,
        CAPTION_MARGIN,
        (CAPTION_HEIGHT as f32 - size) / 2.0,
        size,
        CAPTION_COLOUR,
    );
    out
}

/// The font size at which `caption` fits in `width` pixels, at most [`CAPTION_SIZE`].
fn caption_size(caption: &str, width: u32) -> f32 {
    let scaled = font().as_scaled(PxScale::from(CAPTION_SIZE));
    let natural: f32 = caption
        .chars()
        .map(|c| scaled.h_advance(scaled.glyph_id(c)))
        .sum();
    let room = width as f32 - 2.0 * CAPTION_MARGIN;
    if natural <= room {
        CAPTION_SIZE
    } else {
        (CAPTION_SIZE * room / natural).max(MIN_CAPTION_SIZE)
    }
}

/// One image's row: the ground truth, then every method's final mask and points, captioned with
/// the method, its hit rate and its IoU.
pub fn row(image: &RgbImage, gt: &Mask, eval: &ImageEval) -> Vec<RgbImage> {
    let mut tiles = vec![tile(
        &overlay(image, &gt.data, &[]),
        &format!("GT {}", eval.id),
    )];
    for run in &eval.runs {
        let hit = run
            .points
            .hit_rate()
            .map_or("-".to_string(), |h| format!("{h:.2}"));
        let caption = format!("{} hit {hit} IoU {:.2}", run.method.name(), run.metrics.iou);
        tiles.push(tile(
            &overlay(image, &run.result.mask, run.result.kept_points()),
            &caption,
        ));
    }
    tiles
}

/// Lays rows of tiles out left to right, top to bottom, [`GAP`] apart on a dark background
/// (`None` without rows).
pub fn montage(rows: &[Vec<RgbImage>]) -> Option<RgbImage> {
    if rows.is_empty() {
        return None;
    }
    let row_width = |r: &Vec<RgbImage>| GAP + r.iter().map(|t| t.width() + GAP).sum::<u32>();
    let row_height = |r: &Vec<RgbImage>| r.iter().map(|t| t.height()).max().unwrap_or(0) + GAP;
    let width = rows.iter().map(row_width).max().unwrap_or(GAP);
    let height = GAP + rows.iter().map(row_height).sum::<u32>();
    let mut out = RgbImage::from_pixel(width, height, Rgb(BACKGROUND));
    let mut y = GAP;
    for r in rows {
        let mut x = GAP;
        for t in r {
            imageops::replace(&mut out, t, x as i64, y as i64);
            x += t.width() + GAP;
        }
        y += row_height(r);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_share_a_height_and_rows_stack() {
        let wide = tile(&RgbImage::from_pixel(100, 50, Rgb([200, 0, 0])), "wide");
        let square = tile(&RgbImage::from_pixel(30, 30, Rgb([0, 200, 0])), "square");
        assert_eq!(wide.dimensions(), (512, CAPTION_HEIGHT + TILE_HEIGHT));
        assert_eq!(square.dimensions(), (256, CAPTION_HEIGHT + TILE_HEIGHT));
        // The image sits under the caption bar.
        assert_eq!(wide.get_pixel(10, CAPTION_HEIGHT + 10).0, [200, 0, 0]);
        let m = montage(&[vec![wide.clone(), square.clone()], vec![square]]).unwrap();
        assert_eq!(
            m.dimensions(),
            (
                GAP + 512 + GAP + 256 + GAP,
                GAP + 2 * (CAPTION_HEIGHT + TILE_HEIGHT + GAP)
            )
        );
        assert!(montage(&[]).is_none());
        // A long caption shrinks on a narrow tile, a short one does not.
        assert_eq!(caption_size("GT a", 171), CAPTION_SIZE);
        let shrunk = caption_size("policy hit 0.00 IoU 0.24", 171);
        assert!(
            (MIN_CAPTION_SIZE..CAPTION_SIZE).contains(&shrunk),
            "{shrunk}"
        );
    }
}
