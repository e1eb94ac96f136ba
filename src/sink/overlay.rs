//! Overlays for people: the mask tinted over the image in a colour that contrasts with what it
//! covers and outlined in white and black (visible on any image), positive points green, negative
//! red, each numbered by the step that added it ("s" for start points).

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::agent::{PointOrigin, PointRecord};
use crate::sam::PointLabel;

/// DejaVu Sans Mono Bold, subset to printable ASCII (see assets/fonts/LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono-Bold-subset.ttf");

/// The bundled font, parsed once.
pub fn font() -> &'static FontRef<'static> {
    static F: OnceLock<FontRef<'static>> = OnceLock::new();
    F.get_or_init(|| FontRef::try_from_slice(FONT).expect("the bundled font parses"))
}

/// The tints to choose from: the one farthest from the masked pixels' mean colour is used, so
/// that a blue mask on a blue mug still shows.
const TINTS: [[u8; 3]; 4] = [[30, 144, 255], [255, 0, 200], [255, 210, 0], [0, 230, 230]];
const POSITIVE: [u8; 3] = [0, 200, 70];
const NEGATIVE: [u8; 3] = [230, 30, 30];

fn blend(p: &mut Rgb<u8>, c: [u8; 3], alpha: f32) {
    for (v, &t) in p.0.iter_mut().zip(&c) {
        *v = (*v as f32 * (1.0 - alpha) + t as f32 * alpha).round() as u8;
    }
}

/// Draws a filled disc with a white rim.
pub fn draw_disc(img: &mut RgbImage, cx: f64, cy: f64, radius: f64, colour: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let r = radius + 1.5;
    for y in (cy - r).floor() as i64..=(cy + r).ceil() as i64 {
        for x in (cx - r).floor() as i64..=(cx + r).ceil() as i64 {
            if x < 0 || y < 0 || x >= w || y >= h {
                continue;
            }
            let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
            let p = img.get_pixel_mut(x as u32, y as u32);
            if d <= radius {
                *p = Rgb(colour);
            } else if d <= r {
                *p = Rgb([255, 255, 255]);
            }
        }
    }
}

/// Draws text with its top-left corner at (x, y), in `colour` with a dark outline all round, so
/// that it reads on any background.
pub fn draw_text(img: &mut RgbImage, text: &str, x: f32, y: f32, size: f32, colour: [u8; 3]) {
    let font = font();
    let scaled = font.as_scaled(PxScale::from(size));
    let (w, h) = (img.width() as i32, img.height() as i32);
    let outline = [-1.0f32, 0.0, 1.0]
        .into_iter()
        .flat_map(|dx| [-1.0f32, 0.0, 1.0].map(|dy| ((dx, dy), [0u8, 0, 0])))
        .filter(|&((dx, dy), _)| dx != 0.0 || dy != 0.0);
    for (offset, c) in outline.chain([((0.0, 0.0), colour)]) {
        let mut caret = x + offset.0;
        for ch in text.chars() {
            let glyph = scaled.scaled_glyph(ch);
            let advance = scaled.h_advance(glyph.id);
            let glyph = ab_glyph::Glyph {
                position: ab_glyph::point(caret, y + offset.1 + scaled.ascent()),
                ..glyph
            };
            if let Some(outlined) = font.outline_glyph(glyph) {
                let b = outlined.px_bounds();
                outlined.draw(|gx, gy, cov| {
                    let (px, py) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
                    if px >= 0 && py >= 0 && px < w && py < h {
                        blend(img.get_pixel_mut(px as u32, py as u32), c, cov.min(1.0));
                    }
                });
            }
            caret += advance;
        }
    }
}

/// Object pixels tinted at 45% opacity; the outline white on the object's side of its edge and
/// black on the other (a pixel is on the edge when one of its four neighbours is on the other
/// side, or, for an object pixel, off the image). Row by row on the raw bytes: this runs on
/// every live-view frame and every saved overlay.
fn tint_and_outline(out: &mut RgbImage, mask: &[bool], tint: [u8; 3]) {
    let w = out.width() as usize;
    // The tinted value of every byte, per channel: one lookup instead of a float blend.
    let tinted: [[u8; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| {
            let mut p = Rgb([v as u8; 3]);
            blend(&mut p, tint, 0.45);
            p.0[c]
        })
    });
    let rows: Vec<&[bool]> = mask.chunks_exact(w).collect();
    for (y, (row, pixels)) in rows.iter().zip(out.chunks_exact_mut(w * 3)).enumerate() {
        let up = y.checked_sub(1).map(|u| rows[u]);
        let down = rows.get(y + 1);
        for (x, (&inside, p)) in row.iter().zip(pixels.chunks_exact_mut(3)).enumerate() {
            let other = |neighbour: Option<&bool>| neighbour.map_or(inside, |&m| m != inside);
            let boundary = other(up.map(|r| &r[x]))
                || other(down.map(|r| &r[x]))
                || other(x.checked_sub(1).map(|l| &row[l]))
                || other(row.get(x + 1));
            match (inside, boundary) {
                (true, true) => p.fill(255),
                (true, false) => {
                    for (c, v) in p.iter_mut().enumerate() {
                        *v = tinted[c][*v as usize];
                    }
                }
                (false, true) => p.fill(0),
                (false, false) => {}
            }
        }
    }
}

/// The tint that contrasts most with the masked pixels' mean colour.
pub fn contrasting_tint(image: &RgbImage, mask: &[bool]) -> [u8; 3] {
    // Integer sums: exact, as the float sums were (a 2^53 limit no image reaches).
    let (mut sum, mut n) = ([0u64; 3], 0u64);
    for (p, _) in image.pixels().zip(mask).filter(|(_, m)| **m) {
        for (s, v) in sum.iter_mut().zip(p.0) {
            *s += v as u64;
        }
        n += 1;
    }
    let mean = sum.map(|s| s as f64 / (n as f64).max(1.0));
    let dist = |t: &[u8; 3]| -> f64 {
        t.iter()
            .zip(mean)
            .map(|(&a, b)| (a as f64 - b).powi(2))
            .sum()
    };
    *TINTS
        .iter()
        .max_by(|a, b| dist(a).total_cmp(&dist(b)))
        .expect("tints")
}

/// The image with the mask tinted (object pixels at 45% opacity, in [`contrasting_tint`]),
/// outlined white inside and black outside, and the prompt points drawn and numbered.
pub fn overlay(image: &RgbImage, mask: &[bool], points: &[PointRecord]) -> RgbImage {
    let mut out = image.clone();
    let (w, h) = (image.width() as usize, image.height() as usize);
    assert_eq!(mask.len(), w * h, "mask size");
    tint_and_outline(&mut out, mask, contrasting_tint(image, mask));
    let radius = (w.min(h) as f64 / 90.0).max(3.0);
    let text = (w.min(h) as f32 / 22.0).max(10.0);
    // A patch chosen several times gets one disc (the latest label) and one tag ("3,5" or "2-9").
    let mut placed: Vec<(f64, f64, PointLabel, Vec<String>)> = vec![];
    for p in points {
        let tag = if p.origin == PointOrigin::Step {
            p.step.to_string()
        } else {
            "s".into()
        };
        match placed.iter_mut().find(|q| q.0 == p.x && q.1 == p.y) {
            Some(q) => {
                q.2 = p.label;
                q.3.push(tag);
            }
            None => placed.push((p.x, p.y, p.label, vec![tag])),
        }
    }
    for (x, y, label, tags) in placed {
        let colour = if label == PointLabel::Positive {
            POSITIVE
        } else {
            NEGATIVE
        };
        draw_disc(&mut out, x, y, radius, colour);
        let tag = if tags.len() > 3 {
            format!("{}-{}", tags[0], tags[tags.len() - 1])
        } else {
            tags.join(",")
        };
        draw_text(
            &mut out,
            &tag,
            (x + radius + 2.0) as f32,
            (y - text as f64 / 2.0) as f32,
            text,
            [255, 255, 255],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tint and outline as first written, pixel by pixel: the reference the row-wise
    /// version must match byte for byte.
    fn tint_and_outline_reference(out: &mut RgbImage, mask: &[bool], tint: [u8; 3]) {
        let (w, h) = (out.width() as i64, out.height() as i64);
        let at = |x: i64, y: i64| -> Option<bool> {
            (x >= 0 && y >= 0 && x < w && y < h).then(|| mask[(y * w + x) as usize])
        };
        for y in 0..h {
            for x in 0..w {
                let inside = mask[(y * w + x) as usize];
                let boundary = [(0i64, -1i64), (0, 1), (-1, 0), (1, 0)]
                    .iter()
                    .any(|(dx, dy)| at(x + dx, y + dy).map_or(inside, |m| m != inside));
                let p = out.get_pixel_mut(x as u32, y as u32);
                match (inside, boundary) {
                    (true, true) => *p = Rgb([255, 255, 255]),
                    (true, false) => blend(p, tint, 0.45),
                    (false, true) => *p = Rgb([0, 0, 0]),
                    (false, false) => {}
                }
            }
        }
    }

    #[test]
    fn row_wise_tint_and_outline_match_the_reference_byte_for_byte() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (w, h) in [(1, 1), (1, 7), (7, 1), (2, 2), (37, 23), (64, 48)] {
            for density in [0.0, 0.1, 0.5, 0.9, 1.0] {
                let img = RgbImage::from_fn(w, h, |_, _| Rgb(rng.random::<[u8; 3]>()));
                let mask: Vec<bool> = (0..w * h).map(|_| rng.random::<f64>() < density).collect();
                let tint = contrasting_tint(&img, &mask);
                let (mut fast, mut slow) = (img.clone(), img.clone());
                tint_and_outline(&mut fast, &mask, tint);
                tint_and_outline_reference(&mut slow, &mask, tint);
                assert_eq!(fast, slow, "{w}x{h}, density {density}");
            }
        }
    }

    #[test]
    fn tints_mask_and_draws_points() {
        let img = RgbImage::from_pixel(40, 30, Rgb([100, 100, 100]));
        let mut mask = vec![false; 40 * 30];
        for y in 5..25 {
            for x in 5..20 {
                mask[y * 40 + x] = true;
            }
        }
        let pts = [PointRecord {
            step: 3,
            x: 30.0,
            y: 15.0,
            label: PointLabel::Negative,
            patch: 0,
            origin: PointOrigin::Step,
            srm_prob: 0.1,
            iou_prediction: 0.5,
        }];
        let out = overlay(&img, &mask, &pts);
        assert_eq!(
            out.get_pixel(0, 0).0,
            [100, 100, 100],
            "background untouched"
        );
        assert_ne!(
            out.get_pixel(10, 10).0,
            [100, 100, 100],
            "mask interior tinted"
        );
        assert_eq!(
            out.get_pixel(5, 10).0,
            [255, 255, 255],
            "outline white inside"
        );
        assert_eq!(out.get_pixel(4, 10).0, [0, 0, 0], "and black outside");
        assert_eq!(out.get_pixel(30, 15).0, NEGATIVE, "negative point in red");
    }

    #[test]
    fn the_tint_contrasts_with_what_the_mask_covers() {
        // A blue object gets a tint far from blue; a yellow one one far from yellow.
        let blue = RgbImage::from_pixel(4, 4, Rgb([30, 90, 240]));
        let mask = vec![true; 16];
        assert_ne!(contrasting_tint(&blue, &mask), [30, 144, 255]);
        let yellow = RgbImage::from_pixel(4, 4, Rgb([250, 220, 10]));
        assert_ne!(contrasting_tint(&yellow, &mask), [255, 210, 0]);
    }

    #[test]
    fn text_changes_pixels() {
        let mut img = RgbImage::new(30, 20);
        draw_text(&mut img, "12", 2.0, 2.0, 14.0, [255, 255, 255]);
        assert!(img.pixels().any(|p| p.0 == [255, 255, 255] || p.0[0] > 128));
    }
}
