//! Result sinks: masks, overlays and JSON records written to disk.

pub mod mask_png;
pub mod overlay;
pub mod record;

pub use mask_png::write_mask_png;
pub use overlay::overlay;
pub use record::ImageRecord;
