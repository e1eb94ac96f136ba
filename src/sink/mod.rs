//! Result sinks: masks, overlays and JSON records written to disk, every file atomically
//! ([`atomic`]), each output path checked before the run starts ([`guard`]).

/// The atomic writer, kept under its old path ([`crate::safe_write`]).
pub use crate::safe_write as atomic;
pub mod guard;
#[cfg(feature = "serve")]
pub mod live;
pub mod mask_png;
#[cfg(feature = "mcap")]
pub mod mcap_record;
pub mod overlay;
pub mod record;

pub use atomic::{create_streamed, save_png_atomic, write_atomic, write_bytes_atomic};
pub use guard::{OutputLock, OutputPlan};
pub use mask_png::write_mask_png;
pub use overlay::overlay;
pub use record::ImageRecord;
