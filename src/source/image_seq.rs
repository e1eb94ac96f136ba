//! Image sequences: a directory or glob of image files, in natural order, played as video.
//!
//! Files are decoded one at a time, when their frame is asked for. A file that cannot be
//! decoded costs its frame only: [`ImageSequence::next_frame`] returns a [`SourceError`] naming
//! the file, and the next call goes on with the following file (see [`SourceError`] for the
//! rule every source follows).

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Result, bail};

use super::pace::Pacer;
use super::{Frame, FrameSource, SourceError, SourceOptions, paths};
use crate::safe_read::InputLimits;

/// A [`FrameSource`] over image files.
pub struct ImageSequence {
    name: String,
    files: Vec<PathBuf>,
    /// Position of the next file in `files`.
    pos: usize,
    /// Index of the next frame (counts bad files, continues across loops).
    next_index: u64,
    pacer: Option<Pacer>,
    looping: bool,
    limits: InputLimits,
    /// Frames decoded during the current pass, to stop looping over a sequence where nothing
    /// decodes.
    good_this_pass: u64,
}

impl ImageSequence {
    /// The image files of `spec` (a directory, a glob pattern or one file; see
    /// [`paths::expand_inputs`]). With `options.fps`, frames are released at that rate (a camera
    /// stand-in); without, as fast as they decode. With `options.looping`, the sequence starts
    /// over at its end. Each file is read within `options.limits`.
    pub fn open(spec: &str, options: &SourceOptions) -> Result<Self> {
        let files = paths::expand_inputs(&[spec.to_string()])?;
        Self::from_files(spec, files, options)
    }

    /// A sequence over the given files, in the given order (`name` for messages).
    pub fn from_files(name: &str, files: Vec<PathBuf>, options: &SourceOptions) -> Result<Self> {
        if files.is_empty() {
            bail!("{name}: no image files");
        }
        Ok(ImageSequence {
            name: name.to_string(),
            files,
            pos: 0,
            next_index: 0,
            pacer: options.fps.map(Pacer::new).transpose()?,
            looping: options.looping,
            limits: options.limits,
            good_this_pass: 0,
        })
    }

    /// Number of files in one pass.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the sequence is empty (never: [`ImageSequence::open`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for ImageSequence {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.pos == self.files.len() {
            if !self.looping {
                return Ok(None);
            }
            if self.good_this_pass == 0 {
                return Err(SourceError::gone(format!(
                    "{}: none of the {} files decodes; stopping instead of looping over them",
                    self.name,
                    self.files.len()
                )));
            }
            self.pos = 0;
            self.good_this_pass = 0;
        }
        let path = &self.files[self.pos];
        let index = self.next_index;
        self.pos += 1;
        self.next_index += 1;
        if let Some(p) = &mut self.pacer {
            p.wait();
        }
        // The frame "exists" when it is due; decoding is part of its latency, as a camera's
        // transfer and decoding are.
        let captured = SystemTime::now();
        match self.limits.load_rgb(path) {
            Ok(image) => {
                self.good_this_pass += 1;
                Ok(Some(Frame {
                    index,
                    captured,
                    image,
                }))
            }
            Err(e) => Err(SourceError::frame_lost(index, format!("{e:#}"))),
        }
    }

    fn describe(&self) -> String {
        format!(
            "image sequence {} ({} files{}{})",
            self.name,
            self.files.len(),
            match &self.pacer {
                Some(p) => format!(", {} fps", p.fps()),
                None => ", as fast as possible".into(),
            },
            if self.looping { ", looping" } else { "" }
        )
    }

    fn is_live(&self) -> bool {
        self.pacer.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(fps: Option<f64>, looping: bool) -> SourceOptions {
        SourceOptions {
            fps,
            looping,
            ..SourceOptions::default()
        }
    }

    fn write_png(path: &std::path::Path, v: u8) {
        image::RgbImage::from_pixel(4, 3, image::Rgb([v, v, v]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn plays_in_natural_order_and_survives_a_bad_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_png(&d.join("f1.png"), 10);
        write_png(&d.join("f10.png"), 100);
        std::fs::write(d.join("f2.png"), b"not a png").unwrap();
        write_png(&d.join("f3.png"), 30);
        let mut seq = ImageSequence::open(&d.to_string_lossy(), &options(None, false)).unwrap();
        assert_eq!(seq.len(), 4);
        let f = seq.next_frame().unwrap().unwrap();
        assert_eq!((f.index, f.image.get_pixel(0, 0).0[0]), (0, 10));
        let fe = seq.next_frame().unwrap_err();
        assert!(fe.is_frame_lost(), "a per-frame error");
        assert_eq!(fe.frame_index(), Some(1));
        assert!(
            fe.to_string()
                .contains("f2.png: corrupt or unsupported image"),
            "{fe}"
        );
        let f = seq.next_frame().unwrap().unwrap();
        assert_eq!((f.index, f.image.get_pixel(0, 0).0[0]), (2, 30));
        let f = seq.next_frame().unwrap().unwrap();
        assert_eq!((f.index, f.image.get_pixel(0, 0).0[0]), (3, 100));
        assert!(seq.next_frame().unwrap().is_none());
        assert!(seq.next_frame().unwrap().is_none());
    }

    #[test]
    fn loops_with_increasing_indices_and_paces() {
        let tmp = tempfile::tempdir().unwrap();
        write_png(&tmp.path().join("a.png"), 1);
        write_png(&tmp.path().join("b.png"), 2);
        let pattern = format!("{}/*.png", tmp.path().display());
        let mut seq = ImageSequence::open(&pattern, &options(Some(100.0), true)).unwrap();
        assert!(seq.is_live());
        assert!(
            seq.describe().contains("2 files, 100 fps, looping"),
            "{}",
            seq.describe()
        );
        let t = std::time::Instant::now();
        let idx: Vec<(u64, u8)> = (0..5)
            .map(|_| {
                let f = seq.next_frame().unwrap().unwrap();
                (f.index, f.image.get_pixel(0, 0).0[0])
            })
            .collect();
        assert_eq!(idx, [(0, 1), (1, 2), (2, 1), (3, 2), (4, 1)]);
        assert!(t.elapsed() >= std::time::Duration::from_millis(40));
    }

    #[test]
    fn looping_over_nothing_decodable_stops() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.png"), b"junk").unwrap();
        let mut seq =
            ImageSequence::open(&tmp.path().to_string_lossy(), &options(None, true)).unwrap();
        assert!(seq.next_frame().unwrap_err().is_frame_lost());
        let e = seq.next_frame().unwrap_err();
        assert!(!e.is_frame_lost());
        assert!(e.to_string().contains("none of the 1 files decodes"), "{e}");
    }
}
