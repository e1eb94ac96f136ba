//! What the live view costs per frame: the overlay, then the JPEG (jpeg-encoder, as served),
//! beside the `image` crate's JPEG encoder for comparison; medians of 25 runs.
//!
//! ```sh
//! cargo run --release --example view_cost -- demo/images/leaf.png
//! ```

use std::time::Instant;

use alignsam::sink::live::view_jpeg;
use alignsam::sink::overlay;
use alignsam::source::load_rgb;

fn median_ms(mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..25)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or("demo/images/leaf.png".into());
    let image = load_rgb(path.as_ref())?;
    let (w, h) = image.dimensions();
    // The left half as the mask: a long outline and half the pixels tinted.
    let mask: Vec<bool> = (0..w * h).map(|i| i % w < w / 2).collect();
    let shown = overlay(&image, &mask, &[]);
    let overlay_ms = median_ms(|| drop(overlay(&image, &mask, &[])));
    let served_ms = median_ms(|| drop(view_jpeg(&image, &mask, &[])));
    let image_crate_ms = median_ms(|| {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80)
            .encode_image(&shown)
            .expect("encodes");
    });
    println!(
        "{path} ({w}x{h}): overlay {overlay_ms:.2} ms; overlay + JPEG as served {served_ms:.2} ms; the image crate's JPEG alone {image_crate_ms:.2} ms"
    );
    Ok(())
}
