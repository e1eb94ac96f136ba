//! The training (or held-out) images in the form the environment needs: ground-truth mask, frame
//! geometry, the SRM's target map, and the pooled embedding for measuring the input statistics.
//! Embeddings themselves stay in the [`EmbeddingCache`] and are read back once per episode (2 MB
//! of f16 for SAM), so that memory does not grow with the number of images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::RngExt;
use rand::rngs::StdRng;

use crate::agent::ground_truth::{FrameTarget, frame_target};
use crate::cache::EmbeddingCache;
use crate::dataset::{Dataset, Mask};
use crate::sam::{Embedding, FrameGeometry};

/// One image of the split, ready for episodes.
#[derive(Clone, Debug)]
pub struct TrainImage {
    /// The id in the split file.
    pub id: String,
    /// The image file (the cache key).
    pub image_path: PathBuf,
    /// The ground truth at the image's size.
    pub gt: Mask,
    /// Where the image sits in the encoder frame.
    pub geometry: FrameGeometry,
    /// The ground truth as a `P x P` map over the frame (the SRM's target).
    pub target: FrameTarget,
}

impl TrainImage {
    /// The cached embedding; an error if the entry is missing (the cache is filled first).
    pub fn embedding(&self, cache: &EmbeddingCache) -> Result<Embedding> {
        let Some((e, g)) = cache.get(&self.image_path)? else {
            bail!(
                "{}: no cached embedding (was the cache directory {} removed during training?)",
                self.image_path.display(),
                cache.dir().display()
            )
        };
        if g != self.geometry {
            bail!(
                "{}: the cached embedding is for a {}x{} image, the mask is {}x{}",
                self.image_path.display(),
                g.original.1,
                g.original.0,
                self.gt.width,
                self.gt.height
            );
        }
        Ok(e)
    }
}

/// Loads the masks of a (filled) split and builds each image's target at `map_size`.
/// `progress` is called after each image.
pub fn load_images(
    dataset: &Dataset,
    cache: &EmbeddingCache,
    map_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<TrainImage>> {
    let mut out = Vec::with_capacity(dataset.len());
    for (i, s) in dataset.items().iter().enumerate() {
        let gt = s.load_mask()?;
        let Some((_, geometry)) = cache.get(&s.image_path)? else {
            bail!(
                "{}: no cached embedding; fill the cache first",
                s.image_path.display()
            )
        };
        check_size(&s.mask_path, &gt, &s.image_path, &geometry)?;
        let target = frame_target(&gt, &geometry, map_size);
        out.push(TrainImage {
            id: s.id.clone(),
            image_path: s.image_path.clone(),
            gt,
            geometry,
            target,
        });
        progress(i + 1);
    }
    Ok(out)
}

fn check_size(
    mask_path: &Path,
    gt: &Mask,
    image_path: &Path,
    geometry: &FrameGeometry,
) -> Result<()> {
    let (h, w) = geometry.original;
    if (gt.height, gt.width) != (h, w) {
        bail!(
            "{} is {}x{} but {} is {w}x{h}",
            mask_path.display(),
            gt.width,
            gt.height,
            image_path.display()
        );
    }
    Ok(())
}

/// A point in image pixel coordinates (x, y).
pub type PixelPoint = (f64, f64);

/// A random point on the object and one on the background (pixel centres), as the paper starts
/// each training episode. Either is `None` when the mask has no pixel of that kind.
pub fn random_start_points(
    gt: &Mask,
    rng: &mut StdRng,
) -> (Option<PixelPoint>, Option<PixelPoint>) {
    let fg = gt.foreground();
    let bg = gt.data.len() - fg;
    let nth = |want: bool, k: usize| {
        let i = gt
            .data
            .iter()
            .enumerate()
            .filter(|&(_, &v)| v == want)
            .nth(k)?
            .0;
        Some(((i % gt.width) as f64 + 0.5, (i / gt.width) as f64 + 0.5))
    };
    let pos = (fg > 0)
        .then(|| rng.random_range(0..fg))
        .and_then(|k| nth(true, k));
    let neg = (bg > 0)
        .then(|| rng.random_range(0..bg))
        .and_then(|k| nth(false, k));
    (pos, neg)
}

/// The mean target over images (cells that no image covers stay 0): a location prior, used as a
/// baseline for the SRM.
pub fn mean_target(images: &[TrainImage]) -> Option<crate::sam::Map> {
    let first = images.first()?;
    let s = first.target.map.height;
    let mut sum = vec![0f32; s * s];
    let mut count = vec![0u32; s * s];
    for img in images {
        for (i, (&v, &ok)) in img
            .target
            .map
            .data
            .iter()
            .zip(&img.target.valid)
            .enumerate()
        {
            if ok {
                sum[i] += v;
                count[i] += 1;
            }
        }
    }
    let data = sum
        .iter()
        .zip(&count)
        .map(|(&a, &n)| if n == 0 { 0.0 } else { a / n as f32 })
        .collect();
    Some(crate::sam::Map {
        height: s,
        width: s,
        data,
    })
}

/// Fills the cache for a split, loading SAM's encoder only if some image is missing. Returns
/// the number of embeddings computed.
pub fn fill_cache(
    cache: &EmbeddingCache,
    dataset: &Dataset,
    bundle: &crate::bundle::Bundle,
    backend: &dyn crate::engine::Backend,
    mut progress: impl FnMut(usize, bool),
) -> Result<usize> {
    let paths: Vec<PathBuf> = dataset
        .items()
        .iter()
        .map(|s| s.image_path.clone())
        .collect();
    let mut missing = false;
    for p in &paths {
        if cache.get(p)?.is_none() {
            missing = true;
            break;
        }
    }
    if !missing {
        for i in 0..paths.len() {
            progress(i + 1, true);
        }
        return Ok(0);
    }
    let sam = crate::sam::Sam::load(bundle, backend)
        .context("loading SAM to fill the embedding cache")?;
    let stats = cache.fill(&sam, &paths, |i, r| progress(i, r.unwrap_or(false)));
    if let Some(e) = stats.errors.into_iter().flatten().next() {
        return Err(e);
    }
    Ok(stats.computed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn start_points_land_on_their_class() {
        let gt = Mask {
            width: 4,
            height: 2,
            data: vec![false, false, true, false, false, false, false, false],
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..10 {
            let (p, n) = random_start_points(&gt, &mut rng);
            assert_eq!(p, Some((2.5, 0.5)));
            let (x, y) = n.unwrap();
            assert!(!gt.get(x as usize, y as usize).unwrap());
        }
        let empty = Mask {
            width: 2,
            height: 1,
            data: vec![false, false],
        };
        assert_eq!(random_start_points(&empty, &mut rng).0, None);
    }
}
