//! Soak test of `alignsam run`: a looped stream for many frames, watching the process from the
//! outside. Reports resident memory and open file descriptors at the start and the end, and the
//! frame time (p50/p99) per thousand frames, from the run's own JSON lines. Memory must stay flat
//! and descriptors must not grow. Linux only (reads /proc).
//!
//! ```sh
//! cargo build --release && cargo run --release --example soak -- \
//!     --bundle models/tiny --input demo/images --frames 10000
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// (resident kB, open descriptors) of a process, from /proc.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bundle = arg(&args, "--bundle", "models/tiny");
    let input = arg(&args, "--input", "demo/images");
    let frames: usize = arg(&args, "--frames", "10000").parse()?;
    let exe = PathBuf::from(arg(&args, "--exe", "target/release/alignsam"));
    let start = Instant::now();
    let mut child = Command::new(&exe)
        .args([
            "run",
            "--bundle",
            &bundle,
            "--input",
            &input,
            "--loop",
            "--threads",
            "1",
        ])
        .args(["--max-frames", &frames.to_string(), "--reuse"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("{}: cannot start: {e} (build it first)", exe.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let mut times: Vec<f64> = vec![];
    let mut samples: Vec<(usize, u64, usize)> = vec![];
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if let Some(ms) = v["ms"]["total_ms"].as_f64() {
            times.push(ms);
        }
        let n = times.len();
        if (n == 10 || n.is_multiple_of(1000) || last_sample.elapsed() > Duration::from_secs(5))
            && let Some((rss, fds)) = sample(pid)
        {
            samples.push((n, rss, fds));
            last_sample = Instant::now();
        }
    }
    let status = child.wait()?;
    println!(
        "alignsam run over {input} (looped), bundle {bundle}: {} frames in {:.0} s, exit {status}",
        times.len(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "{:>12} {:>12} {:>12} {:>10} {:>5}",
        "frames", "frame p50 ms", "frame p99 ms", "RSS MB", "fds"
    );
    for (k, chunk) in times.chunks(1000).enumerate() {
        let mut c = chunk.to_vec();
        c.sort_by(f64::total_cmp);
        let end = k * 1000 + chunk.len();
        // The last sample taken within this block.
        let (rss, fds) = samples
            .iter()
            .rev()
            .find(|s| s.0 <= end)
            .map_or((0, 0), |s| (s.1, s.2));
        println!(
            "{:>12} {:>12.1} {:>12.1} {:>10.1} {:>5}",
            format!("{}-{}", k * 1000 + 1, end),
            percentile(&c, 0.5),
            percentile(&c, 0.99),
            rss as f64 / 1024.0,
            fds
        );
    }
    let first = samples.first().copied();
    let last = samples.last().copied();
    if let (Some((n0, r0, f0)), Some((n1, r1, f1))) = (first, last) {
        let growth = (r1 as f64 - r0 as f64) / r0 as f64 * 100.0;
        println!(
            "resident memory {:.1} MB at frame {n0}, {:.1} MB at frame {n1} ({growth:+.1}%); open descriptors {f0} -> {f1}",
            r0 as f64 / 1024.0,
            r1 as f64 / 1024.0
        );
        let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
        println!(
            "peak sampled resident memory {:.1} MB over {} samples",
            peak as f64 / 1024.0,
            samples.len()
        );
        if growth.abs() > 5.0 || f1 > f0 {
            println!("FAIL: memory moved by more than 5% or descriptors grew");
            std::process::exit(1);
        }
        println!("OK: memory flat within 5%, no descriptor leak");
    }
    Ok(())
}
