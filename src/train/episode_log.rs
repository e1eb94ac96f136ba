//! The per-episode training log (`train_log.csv`) and the moving averages shown while training.
//!
//! The CSV holds only what the seed determines (no timings), so that two runs with the same seed
//! write byte-identical files.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// What one episode did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EpisodeRecord {
    /// 0-based episode index.
    pub episode: usize,
    /// The image's id.
    pub image: String,
    /// Sum of the step rewards.
    pub reward: f32,
    /// Fraction of the steps whose point fell on the object.
    pub hit_rate: f32,
    /// Mean SRM loss (Dice + BCE) over the episode's updates, before each update.
    pub srm_loss: f32,
    /// Mean IoU of the SRM's map (before each update) with the target map.
    pub srm_iou: f32,
    /// Fraction of the step labels that agree with the ground truth.
    pub label_accuracy: f32,
    /// IoU of the decoder's final mask with the ground truth, at the image's size.
    pub mask_iou: f32,
    /// PPO's policy term (first epoch).
    pub policy_loss: f32,
    /// PPO's value term (first epoch).
    pub value_loss: f32,
    /// The policy's mean entropy over the episode's states (first epoch), in nats.
    pub entropy: f32,
}

/// The CSV columns.
pub const CSV_HEADER: &str = "episode,image,reward,hit_rate,srm_loss,srm_iou,label_accuracy,mask_iou,policy_loss,value_loss,entropy";

impl EpisodeRecord {
    /// One CSV line (no newline). Ids with commas or quotes are quoted.
    pub fn csv_row(&self) -> String {
        let id = if self.image.contains([',', '"', '\n']) {
            format!("\"{}\"", self.image.replace('"', "\"\""))
        } else {
            self.image.clone()
        };
        format!(
            "{},{id},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}",
            self.episode,
            self.reward,
            self.hit_rate,
            self.srm_loss,
            self.srm_iou,
            self.label_accuracy,
            self.mask_iou,
            self.policy_loss,
            self.value_loss,
            self.entropy
        )
    }
}

/// The whole log as CSV text.
pub fn csv(records: &[EpisodeRecord]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in records {
        let _ = writeln!(out, "{}", r.csv_row());
    }
    out
}

/// Writes `train_log.csv` at once.
pub fn write_csv(path: &Path, records: &[EpisodeRecord]) -> Result<()> {
    crate::sink::write_bytes_atomic(path, csv(records).as_bytes())
}

/// `train_log.csv` written as episodes finish (each line flushed).
pub struct CsvLog {
    file: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
}

impl CsvLog {
    /// Creates (or truncates) the file and writes the header.
    pub fn create(path: &Path) -> Result<Self> {
        let file = crate::sink::create_streamed(path)?;
        let mut log = CsvLog {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
        };
        log.line(CSV_HEADER)?;
        Ok(log)
    }

    /// Appends one episode.
    pub fn append(&mut self, record: &EpisodeRecord) -> Result<()> {
        self.line(&record.csv_row())
    }

    fn line(&mut self, text: &str) -> Result<()> {
        use std::io::Write;
        writeln!(self.file, "{text}")
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: cannot write the training log", self.path.display()))
    }
}

/// The trailing moving average of `values` over `window` (shorter at the start).
pub fn moving_average(values: &[f32], window: usize) -> Vec<f32> {
    let window = window.max(1);
    let mut out = Vec::with_capacity(values.len());
    let mut acc = 0f64;
    for (i, &v) in values.iter().enumerate() {
        acc += v as f64;
        if i >= window {
            acc -= values[i - window] as f64;
        }
        out.push((acc / (i + 1).min(window) as f64) as f32);
    }
    out
}

/// Mean of one field over the last `n` records (all if fewer); NaN when empty.
pub fn tail_mean(
    records: &[EpisodeRecord],
    n: usize,
    field: impl Fn(&EpisodeRecord) -> f32,
) -> f32 {
    let tail = &records[records.len().saturating_sub(n)..];
    if tail.is_empty() {
        return f32::NAN;
    }
    tail.iter().map(&field).sum::<f32>() / tail.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_and_rows() {
        assert_eq!(
            moving_average(&[1.0, 3.0, 5.0, 7.0], 2),
            vec![1.0, 2.0, 4.0, 6.0]
        );
        let r = EpisodeRecord {
            episode: 3,
            image: "a,b".into(),
            reward: -3.0,
            hit_rate: 0.4,
            srm_loss: 1.25,
            srm_iou: 0.5,
            label_accuracy: 0.75,
            mask_iou: 0.1,
            policy_loss: -0.01,
            value_loss: 2.0,
            entropy: 4.6,
        };
        assert_eq!(
            r.csv_row(),
            "3,\"a,b\",-3,0.400000,1.250000,0.500000,0.750000,0.100000,-0.010000,2.000000,4.600000"
        );
        assert_eq!(tail_mean(&[r.clone(), r], 5, |r| r.hit_rate), 0.4);
    }
}
