//! Pacing a file source to a frame rate, so that it stands in for a camera.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Releases frames at a fixed rate. Frame `n` is due `n / fps` seconds after the first; the
/// schedule is computed from the start rather than from the previous frame, so it never drifts.
/// A frame that is already late is released at once (frames are not skipped: that is the
/// pipeline's job, which sees how far behind processing is).
#[derive(Clone, Debug)]
pub struct Pacer {
    fps: f64,
    start: Option<Instant>,
    frames: u64,
}

impl Pacer {
    /// A pacer at `fps` frames per second (finite and positive).
    pub fn new(fps: f64) -> Result<Self> {
        if !(fps.is_finite() && fps > 0.0) {
            bail!("frame rate {fps} should be a positive number of frames per second");
        }
        Ok(Pacer {
            fps,
            start: None,
            frames: 0,
        })
    }

    /// The rate.
    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// When frame `n` is due, for a schedule that started at `start`.
    pub fn due(&self, start: Instant, n: u64) -> Instant {
        start + Duration::from_secs_f64(n as f64 / self.fps)
    }

    /// Sleeps until the next frame is due (the first is due at once) and counts it.
    pub fn wait(&mut self) {
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        let due = self.due(start, self.frames);
        if due > now {
            std::thread::sleep(due - now);
        }
        self.frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_rate_without_drift() {
        let mut p = Pacer::new(200.0).unwrap();
        let t0 = Instant::now();
        for _ in 0..11 {
            p.wait();
        }
        // Ten intervals of 5 ms: at least 50 ms, and well under what per-frame sleeps that
        // accumulate their overshoot would give on a loaded machine.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        // Due times come from the start, not from the previous frame.
        let s = Instant::now();
        assert_eq!(p.due(s, 200), s + Duration::from_secs(1));
    }

    #[test]
    fn late_frames_are_not_delayed() {
        let mut p = Pacer::new(1000.0).unwrap();
        p.wait();
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        for _ in 0..5 {
            p.wait();
        }
        assert!(t.elapsed() < Duration::from_millis(20));
    }

    #[test]
    fn rejects_bad_rates() {
        for fps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Pacer::new(fps).is_err(), "{fps}");
        }
    }
}
