//! The prompting loop over the frames of a stream, each frame optionally warm-started from the
//! previous one (temporal reuse, beyond the paper): its last points, relabelled by the SRM, are
//! the start points, and its final logits the first mask input.

use anyhow::Result;
use image::RgbImage;

use super::chooser::PatchChooser;
use super::prompt_loop::{Agent, ImageOptions, LoopOptions};
use super::record::{LoopResult, WarmStart};
use crate::sam::{Embedding, FrameGeometry};

/// The loop applied to consecutive frames, carrying the warm start from frame to frame.
pub struct StreamSegmenter<'a> {
    agent: &'a Agent,
    options: LoopOptions,
    reuse: Option<usize>,
    previous: Option<(WarmStart, (usize, usize))>,
}

impl<'a> StreamSegmenter<'a> {
    /// A segmenter; `reuse` is the number of points to carry over, or `None` for cold starts.
    pub fn new(agent: &'a Agent, options: LoopOptions, reuse: Option<usize>) -> Self {
        StreamSegmenter {
            agent,
            options,
            reuse,
            previous: None,
        }
    }

    /// Segments one frame with the policy; returns the result and whether it was
    /// warm-started. A frame of another size than the previous one starts cold.
    pub fn segment(&mut self, image: &RgbImage) -> Result<(LoopResult, bool)> {
        let (w, h) = image.dimensions();
        let size = (h as usize, w as usize);
        let warm = self.warm_for(size);
        let warm_start = warm.is_some();
        let result = self.agent.segment_with(
            image,
            &self.options,
            ImageOptions {
                warm,
                ..ImageOptions::default()
            },
        )?;
        self.remember(&result, size);
        Ok((result, warm_start))
    }

    /// Segments one already-encoded frame with any chooser (benchmarks compare cold and warm
    /// runs on the same embeddings this way).
    pub fn segment_embedding(
        &mut self,
        embedding: &Embedding,
        geometry: &FrameGeometry,
        chooser: &mut dyn PatchChooser,
    ) -> Result<(LoopResult, bool)> {
        let warm = self.warm_for(geometry.original);
        let warm_start = warm.is_some();
        let result = self.agent.run_on_embedding(
            embedding,
            geometry,
            &self.options,
            ImageOptions {
                warm,
                chooser: Some(chooser),
                ..ImageOptions::default()
            },
        )?;
        self.remember(&result, geometry.original);
        Ok((result, warm_start))
    }

    /// Forgets the previous frame: the next one starts cold.
    pub fn reset(&mut self) {
        self.previous = None;
    }

    fn warm_for(&self, size: (usize, usize)) -> Option<&WarmStart> {
        match &self.previous {
            Some((w, dims)) if *dims == size => Some(w),
            _ => None,
        }
    }

    fn remember(&mut self, result: &LoopResult, size: (usize, usize)) {
        if let Some(k) = self.reuse {
            self.previous = Some((WarmStart::from_result(result, k), size));
        }
    }
}
