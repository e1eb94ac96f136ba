//! `alignsam bench --compare tract:fp32,rten:int8,...`: the whole prompting loop on several
//! backend x precision candidates, frames interleaved across them (so that machine load falls on
//! every candidate alike), with each candidate's frame time as a ratio of the first's.

use std::time::Instant;

use anyhow::{Result, anyhow};
use image::RgbImage;
use serde::Serialize;

use super::EngineArgs;
use super::bench::{StepCountReport, collect};
use crate::agent::{Agent, LoopOptions};
use crate::engine::{BackendKind, EngineOptions, Precision};
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

/// One candidate's measurements.
#[derive(Debug, Serialize)]
pub struct CandidateReport {
    /// `backend:precision`.
    pub candidate: String,
    /// Load time of its four models, milliseconds.
    pub load_ms: f64,
    /// One report per step count.
    pub runs: Vec<StepCountReport>,
}

/// Measures every candidate; frames are interleaved across candidates.
pub fn run(
    candidates: &[Candidate],
    bundle_dir: &std::path::Path,
    engine: &EngineArgs,
    frames: &[RgbImage],
    steps: &[usize],
    (warmup, measured): (usize, usize),
) -> Result<Vec<CandidateReport>> {
    let options = EngineOptions {
        threads: engine.threads,
    };
    let mut agents = vec![];
    for c in candidates {
        let bundle = engine
            .open_bundle(bundle_dir)?
            .with_precision(c.precision)?;
        let backend = c.backend.create(&options)?;
        let t = Instant::now();
        let agent = Agent::load(&bundle, backend.as_ref()).map_err(|e| anyhow!("{c}: {e:#}"))?;
        agents.push((agent, ms(t.elapsed()), backend));
    }
    let mut reports: Vec<CandidateReport> = candidates
        .iter()
        .zip(&agents)
        .map(|(c, (_, load_ms, _))| CandidateReport {
            candidate: c.to_string(),
            load_ms: *load_ms,
            runs: vec![],
        })
        .collect();
    for &t in steps {
        let options = LoopOptions::fixed_steps(t);
        let mut results = vec![vec![]; agents.len()];
        for i in 0..warmup + measured {
            let frame = &frames[i % frames.len()];
            for (k, (agent, _, _)) in agents.iter().enumerate() {
                let r = agent.segment(frame, &options)?;
                if i >= warmup {
                    results[k].push(r);
                }
            }
        }
        for (report, r) in reports.iter_mut().zip(&results) {
            report.runs.push(collect(t, r));
        }
    }
    Ok(reports)
}

/// Prints one table per step count: frame, encoder and decoder-step medians and the frame time
/// as a ratio of the first candidate's.
pub fn print_table(
    reports: &[CandidateReport],
    threads: usize,
    frames: usize,
    warmup: usize,
) -> Result<()> {
    outln!(
        "alignsam bench --compare: {threads} threads, {frames} frames per candidate (+{warmup} warm-up), interleaved"
    );
    let Some(first) = reports.first() else {
        return Ok(());
    };
    for (i, run) in first.runs.iter().enumerate() {
        outln!();
        outln!("T = {} steps", run.steps);
        outln!(
            "  {:<16} {:>9} {:>12} {:>12} {:>14} {:>10}",
            "candidate",
            "load ms",
            "frame p50",
            "encoder p50",
            "decoder p50",
            "vs first"
        );
        for r in reports {
            let s = &r.runs[i];
            outln!(
                "  {:<16} {:>9.0} {:>12.1} {:>12.1} {:>14.2} {:>9.2}x",
                r.candidate,
                r.load_ms,
                s.frame.p50,
                s.encoder.p50,
                s.decoder.p50,
                s.frame.p50 / run.frame.p50
            );
        }
    }
    Ok(())
}
