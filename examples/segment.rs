//! Segment one image with a bundle's prompting agent and write its mask: the library in a page.
//!
//! ```sh
//! cargo run --release --example segment -- models/small-sam demo/images/ball.png out/ball-mask.png
//! ```
//!
//! Arguments (all optional): bundle directory, image, output PNG.

use alignsam::agent::{Agent, LoopOptions};
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::engine::{BackendKind, EngineOptions};
use alignsam::sink::write_mask_png;
use alignsam::source::load_rgb;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let bundle_dir = args.next().unwrap_or_else(|| "models/tiny".into());
    let image_path = args.next().unwrap_or_else(|| "demo/images/ball.png".into());
    let out = args.next().unwrap_or_else(|| "out/example-mask.png".into());

    // Load once: the manifest is checked, every model's inputs and outputs against it.
    let bundle = Bundle::open(&bundle_dir, OpenOptions::default())?;
    let backend = BackendKind::Tract.create(&EngineOptions::default())?;
    let agent = Agent::load(&bundle, backend.as_ref())?;

    // Run many times: encode once, then the bounded loop of policy, SRM and decoder.
    let image = load_rgb(&image_path)?;
    let result = agent.segment(&image, &LoopOptions::default())?;

    let (height, width) = result.geometry.original;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_mask_png(&out, &result.mask, width, height)?;
    println!(
        "{}: {} points, {} steps ({:?}), {:.1}% foreground -> {}",
        image_path.display(),
        result.points.len(),
        result.steps,
        result.stop,
        100.0 * result.foreground_share(),
        out.display()
    );
    Ok(())
}
