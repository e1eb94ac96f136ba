//! The learning curves as a PNG (`curves.png`): one panel per logged quantity, the per-episode
//! values in a light colour and their moving average over it.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::episode_log::{EpisodeRecord, moving_average};

/// DejaVu Sans Mono Bold, subset to printable ASCII (the same file as the overlays').
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono-Bold-subset.ttf");
const FONT_NAME: &str = "alignsam-dejavu";

fn font_ready() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| register_font(FONT_NAME, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "the bundled font cannot be registered with plotters"
        ))
    }
}

/// The panels: title and field.
type Panel = (&'static str, fn(&EpisodeRecord) -> f32);

const PANELS: [Panel; 6] = [
    ("episode reward", |r| r.reward),
    ("hit rate", |r| r.hit_rate),
    ("SRM loss (Dice + BCE)", |r| r.srm_loss),
    ("SRM map IoU", |r| r.srm_iou),
    ("label accuracy", |r| r.label_accuracy),
    ("mask IoU (end of episode)", |r| r.mask_iou),
];

/// Draws the curves of `records` into a `width x height` PNG, with a moving average over
/// `window` episodes.
pub fn draw_curves(
    path: &Path,
    records: &[EpisodeRecord],
    window: usize,
    title: &str,
) -> Result<()> {
    font_ready()?;
    let err = |e: &dyn std::fmt::Display| {
        anyhow!("{}: cannot draw the learning curves: {e}", path.display())
    };
    render_png(path, (1200, 960), |root| {
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root.titled(title, (FONT_NAME, 20)).map_err(|e| err(&e))?;
        let n = records.len().max(2);
        for (area, (name, field)) in root.split_evenly((3, 2)).iter().zip(PANELS) {
            let raw: Vec<f32> = records.iter().map(field).collect();
            let avg = moving_average(&raw, window);
            let finite = raw.iter().copied().filter(|v| v.is_finite());
            let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
            let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
            let pad = ((hi - lo) * 0.05).max(1e-3);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{name} (moving average over {window})"),
                    (FONT_NAME, 15),
                )
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(48)
                .build_cartesian_2d(0f32..(n - 1) as f32, (lo - pad)..(hi + pad))
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("episode")
                .label_style((FONT_NAME, 12))
                .axis_desc_style((FONT_NAME, 12))
                .draw()
                .map_err(|e| err(&e))?;
            let light = RGBColor(160, 190, 230);
            chart
                .draw_series(LineSeries::new(
                    raw.iter().enumerate().map(|(i, &v)| (i as f32, v)),
                    light,
                ))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(LineSeries::new(
                    avg.iter().enumerate().map(|(i, &v)| (i as f32, v)),
                    BLUE.stroke_width(2),
                ))
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))
    })
}

/// Draws a `width x height` picture with `draw` in memory, then writes it as a PNG at `path`
/// atomically (a reader never sees half a picture; an interrupted run leaves the old one).
fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    draw(BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area())?;
    let picture = image::RgbImage::from_raw(width, height, pixels).expect("the buffer's size");
    crate::safe_write::save_png_atomic(path, &picture)
}

/// A named series of (x, y) points.
pub type Series<'a> = (&'a str, Vec<(f32, f32)>);

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    series: &[Series<'_>],
    err: &dyn Fn(&dyn std::fmt::Display) -> anyhow::Error,
) -> Result<()> {
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x_hi, mut lo, mut hi) = (1f32, f32::INFINITY, f32::NEG_INFINITY);
    for &(x, y) in points.filter(|(_, y)| y.is_finite()) {
        x_hi = x_hi.max(x);
        lo = lo.min(y);
        hi = hi.max(y);
    }
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT_NAME, 15))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(48)
        .build_cartesian_2d(0f32..x_hi, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .label_style((FONT_NAME, 12))
        .axis_desc_style((FONT_NAME, 12))
        .draw()
        .map_err(|e| err(&e))?;
    let colours = [
        BLUE,
        RED,
        RGBColor(0, 140, 0),
        RGBColor(200, 120, 0),
        MAGENTA,
        BLACK,
    ];
    for (i, (name, s)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .label_font((FONT_NAME, 11))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

/// One panel of a [`draw_panel_grid`]: its title, the x axis's name, and named series.
pub struct GridPanel<'a> {
    /// Shown above the panel.
    pub title: &'a str,
    /// The x axis's name.
    pub x_desc: &'a str,
    /// Named series of (x, y) points.
    pub series: Vec<Series<'a>>,
}

/// Four panels in a 2x2 grid under a title, as a PNG at `path` (the clicker's curves: the
/// training modules build the panels, this module only draws).
pub fn draw_panel_grid(path: &Path, title: &str, panels: &[GridPanel<'_>; 4]) -> Result<()> {
    font_ready()?;
    let err = |e: &dyn std::fmt::Display| {
        anyhow!("{}: cannot draw the learning curves: {e}", path.display())
    };
    render_png(path, (1200, 800), |root| {
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root.titled(title, (FONT_NAME, 20)).map_err(|e| err(&e))?;
        let areas = root.split_evenly((2, 2));
        for (area, p) in areas.iter().zip(panels) {
            panel(area, p.title, p.x_desc, &p.series, &err)?;
        }
        root.present().map_err(|e| err(&e))
    })
}
