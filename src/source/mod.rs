//! Frame sources: where images come from. Still images from files today; cameras (V4L2),
//! Y4M video streams and image sequences as [`FrameSource`]s.

pub mod image_file;
pub mod paths;

pub use image_file::load_rgb;
pub use paths::expand_inputs;
