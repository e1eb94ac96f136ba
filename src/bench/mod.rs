//! Benchmarks as library calls: the prompting loop timed per stage over frames
//! ([`measure_loop`], [`measure_interleaved`]), the two decoder uses compared on the same prompts
//! ([`compare_decoders`]), deterministic inputs ([`synthetic_frame`], [`spread_points`]), and
//! latency statistics ([`stats`]). `alignsam bench`, `bench-models` and `profile` are thin
//! layers over these.

pub mod stats;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use image::RgbImage;
use serde::Serialize;

pub use stats::{Stats, peak_rss_bytes, percentile};

use crate::agent::{Agent, LoopOptions, LoopResult};
use crate::engine::{BackendKind, Precision};
use crate::sam::{Decoder, FullResDecoder, PointLabel, PromptPoint, preprocess};
use crate::util::ms;

/// A backend at a precision, as `backend:precision` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The engine.
    pub backend: BackendKind,
    /// The precision variant.
    pub precision: Precision,
}

impl std::str::FromStr for Candidate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (b, p) = s.split_once(':').unwrap_or((s, "fp32"));
        Ok(Candidate {
            backend: b.parse()?,
            precision: p.parse()?,
        })
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.backend, self.precision)
    }
}

/// Latency of each stage for one step count.
#[derive(Debug, Serialize)]
pub struct StepCountReport {
    /// The step budget per frame.
    pub steps: usize,
    /// Steps run per frame on average (fewer than the budget when the agent stops).
    pub mean_steps: f64,
    /// Frames measured.
    pub frames: usize,
    /// Resize, normalise, pad.
    pub preprocess: Stats,
    /// The image encoder.
    pub encoder: Stats,
    /// One SRM run (start and every step).
    pub srm: Stats,
    /// One run of the agent's network (the paper's policy or the clicker).
    pub policy: Stats,
    /// One decoder run (start and every step), low-resolution outputs.
    pub decoder: Stats,
    /// Final upscaling and threshold.
    pub postprocess: Stats,
    /// The whole frame.
    pub frame: Stats,
    /// Frames per second (frames / total frame time).
    pub fps: f64,
    /// Median share of the frame spent in the encoder.
    pub encoder_share: f64,
}

/// Per-step decoder time of the two decoder uses, on the same prompts.
#[derive(Debug, Serialize)]
pub struct DecoderComparison {
    /// The decoder file as the loop runs it (low-res outputs; a standard file is pruned).
    pub loop_decoder: Stats,
    /// A standard decoder computing its full-size `masks` output.
    pub standard_full_size: Stats,
    /// Which files.
    pub loop_decoder_file: PathBuf,
    /// Which files.
    pub standard_file: PathBuf,
}

/// How many frames to run: `warmup` unmeasured, then `measured`; frames are cycled.
#[derive(Clone, Copy, Debug)]
pub struct FrameCounts {
    /// Unmeasured frames first.
    pub warmup: usize,
    /// Measured frames.
    pub measured: usize,
}

/// A deterministic 640x480 frame with smooth structure (no file needed).
pub fn synthetic_frame() -> RgbImage {
    RgbImage::from_fn(640, 480, |x, y| {
        let (fx, fy) = (x as f32 / 640.0, y as f32 / 480.0);
        let disc = ((fx - 0.45).powi(2) + (fy - 0.5).powi(2)).sqrt() < 0.2;
        if disc {
            image::Rgb([200, 60 + (fy * 80.0) as u8, 40])
        } else {
            image::Rgb([(fx * 120.0) as u8 + 60, (fy * 150.0) as u8 + 50, 140])
        }
    })
}

/// Deterministic prompt points spread over the image, alternating labels (benchmarks, profiles).
pub fn spread_points(n: usize, w: usize, h: usize) -> Vec<PromptPoint> {
    (0..n)
        .map(|i| {
            let f = (i as f64 + 0.5) / n as f64;
            PromptPoint {
                x: f * w as f64,
                y: (0.3 + 0.4 * f) * h as f64,
                label: if i % 2 == 0 {
                    PointLabel::Positive
                } else {
                    PointLabel::Negative
                },
            }
        })
        .collect()
}

/// Runs the loop with exactly `steps` steps a frame (no early stop, no budget, so that step
/// counts compare) over `frames`, cycled; returns the report and the measured frames' results.
pub fn measure_loop(
    agent: &Agent,
    frames: &[RgbImage],
    steps: usize,
    counts: FrameCounts,
) -> Result<(StepCountReport, Vec<LoopResult>)> {
    let mut results = measure_interleaved(&[agent], frames, steps, counts)?;
    let results = results.pop().unwrap_or_default();
    Ok((summarise(steps, &results), results))
}

/// Runs several agents frame by frame in turn (so that machine load falls on each alike);
/// returns each agent's measured results.
pub fn measure_interleaved(
    agents: &[&Agent],
    frames: &[RgbImage],
    steps: usize,
    counts: FrameCounts,
) -> Result<Vec<Vec<LoopResult>>> {
    let options = LoopOptions::fixed_steps(steps);
    let mut results = vec![vec![]; agents.len()];
    if frames.is_empty() {
        return Ok(results);
    }
    for i in 0..counts.warmup + counts.measured {
        let frame = &frames[i % frames.len()];
        for (k, agent) in agents.iter().enumerate() {
            let r = agent.segment(frame, &options)?;
            if i >= counts.warmup {
                results[k].push(r);
            }
        }
    }
    Ok(results)
}

/// Per-stage statistics of the loop's results for one step count.
pub fn summarise(steps: usize, results: &[LoopResult]) -> StepCountReport {
    let mut srm = vec![];
    let mut policy = vec![];
    let mut decoder = vec![];
    for r in results {
        srm.push(r.times.start_srm_ms);
        decoder.push(r.times.start_decoder_ms);
        for s in &r.times.steps {
            srm.push(s.srm_ms);
            policy.push(s.policy_ms);
            decoder.push(s.decoder_ms);
        }
    }
    let pick = |f: fn(&LoopResult) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let frame = pick(|r| r.times.total_ms);
    let shares: Vec<f64> = results
        .iter()
        .map(|r| r.times.encoder_ms / r.times.total_ms)
        .collect();
    StepCountReport {
        steps,
        mean_steps: results.iter().map(|r| r.steps as f64).sum::<f64>()
            / results.len().max(1) as f64,
        frames: results.len(),
        preprocess: Stats::of(&pick(|r| r.times.preprocess_ms)),
        encoder: Stats::of(&pick(|r| r.times.encoder_ms)),
        srm: Stats::of(&srm),
        policy: Stats::of(&policy),
        decoder: Stats::of(&decoder),
        postprocess: Stats::of(&pick(|r| r.times.postprocess_ms)),
        fps: results.len() as f64 / (frame.iter().sum::<f64>() / 1e3),
        frame: Stats::of(&frame),
        encoder_share: Stats::of(&shares).p50,
    }
}

/// Replays the prompts of `results` (the loop's results on `frames`, in order) through the
/// loop's decoder and through the standard decoder at `standard`, computing its full-size
/// masks, interleaved per prompt.
pub fn compare_decoders(
    agent: &Agent,
    backend: &dyn crate::engine::Backend,
    bundle: &crate::bundle::Bundle,
    standard: PathBuf,
    frames: &[&RgbImage],
    results: &[LoopResult],
) -> Result<DecoderComparison> {
    let mut manifest = bundle.manifest.clone();
    manifest.models.decoder.form = crate::bundle::DecoderForm::Standard;
    let full = FullResDecoder::new(backend, &standard, &manifest);
    // Check the file is a standard decoder before timing it.
    Decoder::load(backend, &standard, &manifest)?;
    let (mut a, mut b) = (vec![], vec![]);
    for (image, r) in frames.iter().zip(results) {
        let (input, geometry) = preprocess::preprocess(image, &agent.sam.preprocess)?;
        let embedding = agent.sam.encoder.encode(&input)?;
        full.prepare(&geometry)?;
        let prompt = r.prompt();
        // Replay every prefix the loop decoded: the two start points, then one more per step.
        for n in 2..=prompt.len() {
            let t = Instant::now();
            agent
                .sam
                .decoder
                .decode(&embedding, &prompt[..n], None, &geometry)?;
            a.push(ms(t.elapsed()));
            let t = Instant::now();
            full.decode(&embedding, &prompt[..n], None, &geometry)?;
            b.push(ms(t.elapsed()));
        }
    }
    Ok(DecoderComparison {
        loop_decoder: Stats::of(&a),
        standard_full_size: Stats::of(&b),
        loop_decoder_file: bundle.decoder_path(),
        standard_file: standard,
    })
}
