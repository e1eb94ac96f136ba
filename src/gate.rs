//! The accuracy gate: does a precision variant (or another backend, or another CPU) give the
//! masks the fp32 reference gives?
//!
//! The reference runs the whole prompting loop in fp32 on real images and keeps, per image, the
//! embedding, the prompts the agent chose and the final low-resolution logits. A candidate
//! (precision x backend) encodes the same images and replays the same prompts, step by step, with
//! its own previous logits fed back as SAM's mask input, exactly as the loop does. It is scored by
//!
//! - the cosine similarity of its embedding to the reference's,
//! - the mean absolute difference of its final low-resolution logits, and
//! - the IoU of its final mask (at the image size) with the reference's mask,
//!
//! and passes when the mean mask IoU is at least [`GATE_MIN_MASK_IOU`]. Replaying the reference's
//! prompts isolates the numerics: a variant is not blamed for the agent choosing another point.
//!
//! The reference can be saved ([`Reference::save`]) and replayed on another machine: the
//! aarch64 check under qemu compares against the x86-64 fp32 reference this way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::Serialize;

use crate::agent::ground_truth::binary_iou;
use crate::agent::{Agent, LoopOptions, record::PointRecord};
pub use crate::bundle::GATE_MIN_MASK_IOU;
use crate::bundle::{Bundle, GateRecord, MANIFEST_FILE, Manifest};
use crate::dataset::Dataset;
use crate::engine::{Backend, Precision, Tensor};
use crate::sam::{Embedding, Map, PointLabel, PromptPoint, Sam, postprocess, preprocess};
use crate::source::InputLimits;

/// One image of the reference.
#[derive(Clone, Debug)]
pub struct ReferenceImage {
    /// The sample id in the dataset split.
    pub id: String,
    /// The fp32 embedding.
    pub embedding: Tensor,
    /// Every prompt point of the loop, start points first.
    pub prompt: Vec<PromptPoint>,
    /// How many of them are start points (decoded together before the first step).
    pub start_points: usize,
    /// The final low-resolution logits.
    pub low_res: Map,
}

/// The fp32 reference of a gate run.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The bundle's name.
    pub bundle: String,
    /// The checksum of the fp32 encoder it came from (a reference only fits that model).
    pub encoder_sha256: String,
    /// `DATASET:SPLIT:COUNT images:STEPS steps`.
    pub images: String,
    /// Backend and CPU architecture it ran on.
    pub backend: String,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// Per image.
    pub items: Vec<ReferenceImage>,
}

/// How one candidate compared with the reference.
#[derive(Clone, Debug, Serialize)]
pub struct GateResult {
    /// The precision's name.
    pub precision: String,
    /// The backend's name.
    pub backend: String,
    /// Mean embedding cosine similarity.
    pub embedding_cosine: f64,
    /// Mean absolute difference of the final low-resolution logits.
    pub logit_mae: f64,
    /// Mean IoU of the final masks.
    pub mask_iou: f64,
    /// Lowest IoU of one image.
    pub min_mask_iou: f64,
    /// Images compared.
    pub images: usize,
    /// The matrix kernels the backend chose for the encoder and decoder on this CPU.
    pub kernels: Vec<String>,
    /// Seconds spent encoding and replaying the loop, over every image (loading excluded).
    pub seconds: f64,
}

impl GateResult {
    /// Whether the candidate may be used by default.
    pub fn passed(&self) -> bool {
        self.mask_iou >= GATE_MIN_MASK_IOU
    }

    /// The record `alignsam gate --record` writes into bundle.toml; `fp32_seconds` is the same
    /// work's time in fp32 on the same backend in the same run, for the speed-up.
    pub fn record(&self, reference: &Reference, fp32_seconds: Option<f64>) -> GateRecord {
        GateRecord {
            precision: self.precision.clone(),
            backend: self.backend.clone(),
            arch: std::env::consts::ARCH.into(),
            cpu: Some(crate::bundle::cpu_class().into()),
            images: reference.images.clone(),
            embedding_cosine: round(self.embedding_cosine, 5),
            logit_mae: round(self.logit_mae, 5),
            mask_iou: round(self.mask_iou, 4),
            min_mask_iou: round(self.min_mask_iou, 4),
            speedup: fp32_seconds.map(|f| round(f / self.seconds.max(1e-9), 3)),
        }
    }
}

/// Writes the variants among `results` into the bundle's manifest as `[[gate]]` records (fp32
/// needs none: it is the reference the runtime always accepts), each replacing an earlier
/// record of the same measurement. A variant's speed-up is against fp32's result on the same
/// backend when `results` has one. Returns the manifest's path.
pub fn record_results(
    bundle_dir: &Path,
    reference: &Reference,
    results: &[&GateResult],
) -> Result<PathBuf> {
    let path = bundle_dir.join(MANIFEST_FILE);
    let mut manifest = Manifest::read(&path)?;
    let fp32 = Precision::Fp32.name();
    for r in results.iter().filter(|r| r.precision != fp32) {
        let fp32_seconds = results
            .iter()
            .find(|f| f.backend == r.backend && f.precision == fp32)
            .map(|f| f.seconds);
        manifest.record_gate(r.record(reference, fp32_seconds));
    }
    manifest.write(&path)?;
    Ok(path)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

impl Reference {
    /// Runs the agent's loop (greedy policy, `steps` steps, no early stop) in the bundle's fp32
    /// precision on the first `count` images of `data`. The gate proper uses the bundle's step
    /// limit; fewer steps make a quicker check (emulated CPUs).
    pub fn compute(
        bundle: &Bundle,
        backend: &dyn Backend,
        data: &Dataset,
        count: usize,
        steps: usize,
    ) -> Result<Reference> {
        if bundle.precision != crate::engine::Precision::Fp32 {
            bail!(
                "the gate's reference runs in fp32, not {}",
                bundle.precision
            );
        }
        let agent = Agent::load(bundle, backend)?;
        let options = LoopOptions::fixed_steps(steps);
        let data = data.take(count);
        let mut items = vec![];
        for sample in data.items() {
            let (image, _) = sample.load()?;
            let encoded = agent.encode(&image)?;
            let result = agent.run_on_embedding(
                &encoded.embedding,
                &encoded.geometry,
                &options,
                Default::default(),
            )?;
            // The points that made the kept mask (the keep-best guard may keep an earlier one
            // than the last), so that replaying them gives the mask the reference holds.
            let kept = result.kept_points();
            items.push(ReferenceImage {
                id: sample.id.clone(),
                embedding: encoded.embedding.0,
                start_points: kept.iter().filter(|p| p.step == 0).count(),
                prompt: kept.iter().map(PointRecord::prompt).collect(),
                low_res: result.low_res,
            });
        }
        Ok(Reference {
            bundle: bundle.manifest.name.clone(),
            encoder_sha256: bundle.manifest.models.encoder.sha256.clone(),
            images: format!(
                "{}:{}:{} images:{steps} steps",
                data.dir().display(),
                data.split(),
                items.len()
            ),
            backend: backend.name().into(),
            arch: std::env::consts::ARCH.into(),
            items,
        })
    }

    /// Checks that the reference belongs to this bundle's fp32 encoder.
    pub fn check_fits(&self, bundle: &Bundle) -> Result<()> {
        if self.encoder_sha256 != bundle.manifest.models.encoder.sha256 {
            bail!(
                "the reference was computed with another encoder (sha256 {}) than {}'s ({})",
                self.encoder_sha256,
                bundle.dir.display(),
                bundle.manifest.models.encoder.sha256
            );
        }
        Ok(())
    }

    /// Compares a candidate, already opened at its precision, on `backend`, with the reference.
    /// `data` must be the dataset split the reference was computed on.
    pub fn compare(
        &self,
        bundle: &Bundle,
        backend: &dyn Backend,
        data: &Dataset,
    ) -> Result<GateResult> {
        self.check_fits(bundle)?;
        let sam = Sam::load(bundle, backend)?;
        let (mut cosine, mut mae, mut iou, mut min_iou) = (0.0, 0.0, 0.0, f64::INFINITY);
        let mut seconds = 0.0;
        for item in &self.items {
            let sample = data
                .items()
                .iter()
                .find(|s| s.id == item.id)
                .with_context(|| {
                    format!("image {} of the reference is not in the dataset", item.id)
                })?;
            let (image, _) = sample.load()?;
            let (input, geometry) = preprocess::preprocess(&image, &sam.preprocess)?;
            let t = std::time::Instant::now();
            let embedding = sam.encoder.encode(&input)?;
            let low_res = replay(&sam, &embedding, &geometry, item)?;
            seconds += t.elapsed().as_secs_f64();
            cosine += cosine_similarity(embedding.0.data(), item.embedding.data());
            mae += mean_abs_diff(&low_res.data, &item.low_res.data);
            let mask = |m: &Map| postprocess::threshold(&postprocess::upscale_logits(m, &geometry));
            let i = binary_iou(mask(&low_res).into_iter().zip(mask(&item.low_res))) as f64;
            iou += i;
            min_iou = min_iou.min(i);
        }
        let n = self.items.len().max(1) as f64;
        Ok(GateResult {
            precision: bundle.precision.name().into(),
            backend: backend.name().into(),
            embedding_cosine: cosine / n,
            logit_mae: mae / n,
            mask_iou: iou / n,
            min_mask_iou: if self.items.is_empty() { 0.0 } else { min_iou },
            images: self.items.len(),
            kernels: kernels_of(&sam),
            seconds,
        })
    }

    /// Writes the reference as a safetensors file (embeddings, prompts, logits; the rest in its
    /// metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
        for (i, item) in self.items.iter().enumerate() {
            let points: Vec<f32> = item
                .prompt
                .iter()
                .flat_map(|p| [p.x as f32, p.y as f32, p.label.value()])
                .collect();
            blobs.push((
                format!("embedding.{i}"),
                item.embedding.shape().to_vec(),
                le(item.embedding.data()),
            ));
            blobs.push((
                format!("points.{i}"),
                vec![item.prompt.len(), 3],
                le(&points),
            ));
            blobs.push((
                format!("low_res.{i}"),
                vec![item.low_res.height, item.low_res.width],
                le(&item.low_res.data),
            ));
        }
        let views = blobs
            .iter()
            .map(|(name, shape, bytes)| {
                Ok((
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), bytes)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let ids: Vec<&str> = self.items.iter().map(|i| i.id.as_str()).collect();
        let starts: Vec<usize> = self.items.iter().map(|i| i.start_points).collect();
        let metadata: HashMap<String, String> = [
            ("bundle", self.bundle.clone()),
            ("encoder_sha256", self.encoder_sha256.clone()),
            ("images", self.images.clone()),
            ("backend", self.backend.clone()),
            ("arch", self.arch.clone()),
            ("ids", serde_json::to_string(&ids)?),
            ("start_points", serde_json::to_string(&starts)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::serialize(views, Some(metadata))
            .with_context(|| format!("{}: cannot encode the gate reference", path.display()))?;
        crate::sink::write_bytes_atomic(path, &bytes)
    }

    /// Reads a reference written by [`Reference::save`], of at most `limits.max_file_bytes`;
    /// errors name the file.
    pub fn load(path: &Path, limits: &InputLimits) -> Result<Reference> {
        let bytes = limits.read_file(path, "gate reference")?;
        Self::parse(&bytes).with_context(|| format!("{}: not a gate reference", path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<Reference> {
        let (_, meta) = SafeTensors::read_metadata(bytes)?;
        let st = SafeTensors::deserialize(bytes)?;
        let md = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            md.get(k)
                .cloned()
                .with_context(|| format!("metadata '{k}' missing"))
        };
        let ids: Vec<String> = serde_json::from_str(&get("ids")?)?;
        let starts: Vec<usize> = serde_json::from_str(&get("start_points")?)?;
        if ids.len() != starts.len() {
            bail!("{} ids but {} start counts", ids.len(), starts.len());
        }
        let tensor = |name: String| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st.tensor(&name)?;
            if t.dtype() != Dtype::F32 {
                bail!("tensor {name} is {:?}, not F32", t.dtype());
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((t.shape().to_vec(), data))
        };
        let mut items = vec![];
        for (i, (id, start_points)) in ids.into_iter().zip(starts).enumerate() {
            let (shape, data) = tensor(format!("embedding.{i}"))?;
            let embedding = Tensor::new(shape, data)?;
            let (shape, data) = tensor(format!("points.{i}"))?;
            if shape.len() != 2 || shape[1] != 3 || start_points > shape[0] {
                bail!("points.{i} has shape {shape:?} (with {start_points} start points)");
            }
            let prompt = data
                .chunks_exact(3)
                .map(|p| PromptPoint {
                    x: p[0] as f64,
                    y: p[1] as f64,
                    label: if p[2] > 0.5 {
                        PointLabel::Positive
                    } else {
                        PointLabel::Negative
                    },
                })
                .collect();
            let (shape, data) = tensor(format!("low_res.{i}"))?;
            let [height, width] = shape[..] else {
                bail!("low_res.{i} has shape {shape:?}");
            };
            items.push(ReferenceImage {
                id,
                embedding,
                prompt,
                start_points,
                low_res: Map {
                    height,
                    width,
                    data,
                },
            });
        }
        Ok(Reference {
            bundle: get("bundle")?,
            encoder_sha256: get("encoder_sha256")?,
            images: get("images")?,
            backend: get("backend")?,
            arch: get("arch")?,
            items,
        })
    }
}

/// The loop's decoder calls again with the reference's prompts: the start points together, then
/// one more point per step, each time with the previous logits as the mask input.
fn replay(
    sam: &Sam,
    embedding: &Embedding,
    geometry: &crate::sam::FrameGeometry,
    item: &ReferenceImage,
) -> Result<Map> {
    let start = item.start_points.max(1).min(item.prompt.len());
    let mut current: Option<Map> = None;
    for n in start..=item.prompt.len() {
        let low = sam
            .decoder
            .decode(embedding, &item.prompt[..n], current.as_ref(), geometry)?;
        current = Some(low.logits);
    }
    current.context("the reference image has no prompt points")
}

/// The distinct kernels of the encoder and decoder.
fn kernels_of(sam: &Sam) -> Vec<String> {
    let mut k = sam.encoder.model().kernels();
    k.extend(sam.decoder.model().kernels());
    k.sort();
    k.dedup();
    k
}

fn le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Cosine similarity of two vectors (1.0 for two zero vectors).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        return 1.0;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().max(1) as f64;
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_one_for_parallel_and_zero_for_orthogonal_vectors() {
        assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine_similarity(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert!((cosine_similarity(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_reference_survives_a_save_and_a_load() {
        let reference = Reference {
            bundle: "b".into(),
            encoder_sha256: "e".repeat(64),
            images: "demo:eval:1".into(),
            backend: "tract".into(),
            arch: "x86_64".into(),
            items: vec![ReferenceImage {
                id: "ball".into(),
                embedding: Tensor::new(vec![1, 2, 2, 2], (0..8).map(|v| v as f32).collect())
                    .unwrap(),
                prompt: vec![
                    PromptPoint {
                        x: 1.5,
                        y: 2.5,
                        label: PointLabel::Positive,
                    },
                    PromptPoint {
                        x: 3.0,
                        y: 4.0,
                        label: PointLabel::Negative,
                    },
                    PromptPoint {
                        x: 5.0,
                        y: 6.0,
                        label: PointLabel::Positive,
                    },
                ],
                start_points: 2,
                low_res: Map {
                    height: 2,
                    width: 3,
                    data: vec![-1.0, 0.5, 2.0, 3.0, -4.0, 0.0],
                },
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.safetensors");
        reference.save(&path).unwrap();
        let back = Reference::load(&path, &InputLimits::default()).unwrap();
        assert_eq!(back.encoder_sha256, reference.encoder_sha256);
        assert_eq!(back.images, "demo:eval:1");
        let (a, b) = (&back.items[0], &reference.items[0]);
        assert_eq!((a.id.as_str(), a.start_points), ("ball", 2));
        assert_eq!(a.embedding.data(), b.embedding.data());
        assert_eq!(a.prompt, b.prompt);
        assert_eq!(a.low_res, b.low_res);

        std::fs::write(&path, b"not safetensors").unwrap();
        let err = format!(
            "{:#}",
            Reference::load(&path, &InputLimits::default()).unwrap_err()
        );
        assert!(
            err.contains("ref.safetensors") && err.contains("not a gate reference"),
            "{err}"
        );
    }
}
