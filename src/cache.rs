//! The embedding cache: SAM is frozen, so each training or evaluation image is encoded once and
//! its embedding kept on disk (f16), keyed by the encoder and the image's content.
//!
//! Layout: `DIR/<key of encoder + preprocessing>/<sha256 of the image file>.safetensors`, each
//! file holding `embedding` (f16, `[1, C, H, W]`) and the image size in its metadata. Files are
//! written to a temporary name and renamed, so an interrupted run leaves only whole entries and
//! the next run resumes where it stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use half::f16;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use sha2::{Digest, Sha256};

use crate::bundle::Manifest;
use crate::engine::{Precision, Tensor};
use crate::sam::{Embedding, FrameGeometry, Sam};
use crate::source::InputLimits;

/// A directory of cached embeddings for one encoder and preprocessing.
#[derive(Clone, Debug)]
pub struct EmbeddingCache {
    dir: PathBuf,
    frame: usize,
    shape: [usize; 3],
    limits: InputLimits,
}

/// What a fill did.
#[derive(Debug, Default)]
pub struct FillStats {
    /// Embeddings found in the cache.
    pub hits: usize,
    /// Embeddings computed and stored.
    pub computed: usize,
    /// Per image, in order: the error that kept it out of the cache (None: it is there).
    pub errors: Vec<Option<anyhow::Error>>,
}

/// Room for an entry's safetensors header (tensor names, shapes, the frame geometry).
const ENTRY_HEADER_BYTES: u64 = 1 << 16;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default cache location: `$XDG_CACHE_HOME/alignsam/embeddings`, or `~/.cache/...`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("alignsam").join("embeddings")
}

impl EmbeddingCache {
    /// The cache for a bundle's encoder under `root`. The key covers the encoder's checksum (the
    /// variant's, at another precision than fp32) and everything in preprocessing that changes
    /// the embedding (frame size, pixel mean and std). Images are read within `limits`.
    pub fn new(
        root: &Path,
        manifest: &Manifest,
        precision: Precision,
        limits: InputLimits,
    ) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(manifest.models.encoder.sha256.as_bytes());
        if precision != Precision::Fp32 {
            h.update(precision.name().as_bytes());
            if let Some(v) = manifest.models.encoder.variants.get(precision.name()) {
                h.update(v.sha256.as_bytes());
            }
        }
        h.update(manifest.image.size.to_le_bytes());
        for v in manifest
            .image
            .pixel_mean
            .iter()
            .chain(&manifest.image.pixel_std)
        {
            h.update(v.to_le_bytes());
        }
        let key = hex(&h.finalize()[..12]);
        let dir = root.join(key);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create the embedding cache", dir.display()))?;
        Ok(EmbeddingCache {
            dir,
            frame: manifest.image.size,
            shape: manifest.embedding.shape,
            limits,
        })
    }

    /// The directory entries go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, image: &Path) -> Result<PathBuf> {
        let bytes = self.limits.read_file(image, "image")?;
        Ok(self
            .dir
            .join(format!("{}.safetensors", hex(&Sha256::digest(&bytes)))))
    }

    /// The cached embedding of an image file, if present and whole.
    pub fn get(&self, image: &Path) -> Result<Option<(Embedding, FrameGeometry)>> {
        let path = self.entry_path(image)?;
        if !path.exists() {
            return Ok(None);
        }
        match self.read_entry(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                // A damaged entry is recomputed rather than trusted.
                log::warn!("{}: ignoring a damaged cache entry ({e:#})", path.display());
                Ok(None)
            }
        }
    }

    fn read_entry(&self, path: &Path) -> Result<(Embedding, FrameGeometry)> {
        // An entry is a regular file of the size its tensor takes (f16) plus a small header: a
        // symbolic link to /dev/zero or a FIFO put in the cache is refused, not read until
        // memory runs out or forever.
        let [c, h, w] = self.shape;
        let limit = (c * h * w * 2) as u64 + ENTRY_HEADER_BYTES;
        let bytes = crate::safe_read::read_regular(path, "embedding cache entry", limit)?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)?;
        let st = SafeTensors::deserialize(&bytes)?;
        let t = st.tensor("embedding")?;
        if t.dtype() != Dtype::F16 || t.shape() != [1, c, h, w] {
            bail!("unexpected tensor {:?} {:?}", t.dtype(), t.shape());
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let md = meta.metadata().clone().unwrap_or_default();
        let size = |k: &str| -> Result<usize> {
            md.get(k)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("metadata {k} missing"))
        };
        let geometry = FrameGeometry::checked(size("height")?, size("width")?, self.frame)?;
        Ok((Embedding(Tensor::new(vec![1, c, h, w], data)?), geometry))
    }

    /// Stores an embedding for an image file (atomically: temporary file, then rename).
    pub fn put(&self, image: &Path, embedding: &Embedding, geometry: &FrameGeometry) -> Result<()> {
        let path = self.entry_path(image)?;
        let bytes: Vec<u8> = embedding
            .0
            .data()
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F16, embedding.0.shape().to_vec(), &bytes)?;
        let metadata: HashMap<String, String> = [
            ("height".to_string(), geometry.original.0.to_string()),
            ("width".to_string(), geometry.original.1.to_string()),
            ("source".to_string(), image.display().to_string()),
        ]
        .into();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        safetensors::serialize_to_file([("embedding", view)], Some(metadata), &tmp)
            .with_context(|| format!("{}: cannot write cache entry", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("{}: cannot write cache entry", path.display()))?;
        Ok(())
    }

    /// The embedding of an image file: from the cache, or computed with `sam` and stored.
    /// The flag says whether it was a cache hit.
    pub fn get_or_compute(
        &self,
        sam: &Sam,
        image: &Path,
    ) -> Result<(Embedding, FrameGeometry, bool)> {
        if let Some((e, g)) = self.get(image)? {
            return Ok((e, g, true));
        }
        let rgb = self.limits.load_rgb(image)?;
        let (e, g) = sam.embed(&rgb)?;
        self.put(image, &e, &g)?;
        Ok((e, g, false))
    }

    /// Makes sure every image has an entry. An image that cannot be read or encoded is recorded
    /// in [`FillStats::errors`] and the others go on (the caller decides whether one failure
    /// stops it). `progress` is called after each image with its index + 1 and whether it was a
    /// cache hit, or its error. The one way every command fills the cache.
    pub fn fill(
        &self,
        sam: &Sam,
        images: &[PathBuf],
        mut progress: impl FnMut(usize, Result<bool, &anyhow::Error>),
    ) -> FillStats {
        let mut stats = FillStats::default();
        for (i, image) in images.iter().enumerate() {
            match self.get_or_compute(sam, image) {
                Ok((_, _, hit)) => {
                    if hit {
                        stats.hits += 1;
                    } else {
                        stats.computed += 1;
                    }
                    progress(i + 1, Ok(hit));
                    stats.errors.push(None);
                }
                Err(e) => {
                    progress(i + 1, Err(&e));
                    stats.errors.push(Some(e));
                }
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Manifest;

    /// The manifest tests' sample with a 2x4x4 embedding and the given encoder checksum.
    fn manifest(encoder_sha: &str) -> Manifest {
        let mut m = Manifest::parse(
            crate::bundle::manifest::tests::SAMPLE,
            Path::new("bundle.toml"),
        )
        .unwrap();
        m.embedding.shape = [2, 4, 4];
        m.models.encoder.sha256 = encoder_sha.to_string();
        m
    }

    /// An empty cache in `tmp/c` for an encoder with checksum `encoder_sha`.
    fn cache_in(tmp: &Path, encoder_sha: &str) -> EmbeddingCache {
        EmbeddingCache::new(
            &tmp.join("c"),
            &manifest(encoder_sha),
            Precision::Fp32,
            InputLimits::default(),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_in_f16_and_keys_by_encoder_and_content() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("a.png");
        std::fs::write(&img, b"pixels").unwrap();
        let cache = cache_in(tmp.path(), &"a".repeat(64));
        assert!(cache.get(&img).unwrap().is_none());
        let values: Vec<f32> = (0..32).map(|v| v as f32 * 0.1 - 1.0).collect();
        let e = Embedding(Tensor::new(vec![1, 2, 4, 4], values.clone()).unwrap());
        let g = FrameGeometry::new(30, 40, 1024);
        cache.put(&img, &e, &g).unwrap();
        let (e2, g2) = cache.get(&img).unwrap().unwrap();
        assert_eq!(g2, g);
        for (a, b) in e2.0.data().iter().zip(&values) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
        }
        // Same bytes under another name: a hit. Other content: a miss.
        let copy = tmp.path().join("copy.png");
        std::fs::write(&copy, b"pixels").unwrap();
        assert!(cache.get(&copy).unwrap().is_some());
        std::fs::write(&copy, b"other").unwrap();
        assert!(cache.get(&copy).unwrap().is_none());
        // Another encoder: another directory, so a miss.
        let other = cache_in(tmp.path(), &"b".repeat(64));
        assert_ne!(other.dir(), cache.dir());
        assert!(other.get(&img).unwrap().is_none());
    }

    #[test]
    fn damaged_entries_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("a.png");
        std::fs::write(&img, b"pixels").unwrap();
        let cache = cache_in(tmp.path(), &"a".repeat(64));
        let e = Embedding(Tensor::zeros(vec![1, 2, 4, 4]));
        cache
            .put(&img, &e, &FrameGeometry::new(3, 4, 1024))
            .unwrap();
        let entry = std::fs::read_dir(cache.dir())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&entry, b"truncated").unwrap();
        assert!(cache.get(&img).unwrap().is_none());
    }
}
