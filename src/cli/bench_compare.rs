//! `alignsam bench --compare tract:fp32,rten:int8,...`: the whole prompting loop on several
//! backend x precision candidates, frames interleaved across them (so that machine load falls on
//! every candidate alike), with each candidate's frame time as a ratio of the first's.

use std::time::Instant;

use anyhow::{Result, anyhow};
use image::RgbImage;
use serde::Serialize;

use super::args::EngineArgs;
use crate::agent::Agent;
use crate::bench::{Candidate, FrameCounts, StepCountReport, measure_interleaved, summarise};
use crate::engine::EngineOptions;
use crate::util::ms;

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
    let counts = FrameCounts { warmup, measured };
    let loaded: Vec<&Agent> = agents.iter().map(|(agent, _, _)| agent).collect();
    for &t in steps {
        let results = measure_interleaved(&loaded, frames, t, counts)?;
        for (report, r) in reports.iter_mut().zip(&results) {
            report.runs.push(summarise(t, r));
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
