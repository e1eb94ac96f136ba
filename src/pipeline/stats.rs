//! Latency statistics in constant memory, for runs that last days.
//!
//! Durations go into logarithmic buckets 1 % wide, from 1 µs to 1000 s (about 2,100 counters,
//! 17 KB). A percentile is the middle of its bucket, so it is within 0.5 % of the true value,
//! and never outside the smallest and largest durations seen (which are kept exactly, so a run
//! of identical latencies reports that latency exactly).

use std::time::Duration;

/// Lower bound of the first bucket, in nanoseconds.
const MIN_NS: f64 = 1_000.0;
/// Each bucket is this much wider than the previous one.
const RATIO: f64 = 1.01;
/// Buckets from 1 µs to 1000 s, plus one below and one above.
const BUCKETS: usize = 2_085;

/// A latency histogram.
#[derive(Clone, Debug)]
pub struct LatencyStats {
    buckets: Vec<u64>,
    count: u64,
    sum: Duration,
    min: Duration,
    max: Duration,
}

impl Default for LatencyStats {
    fn default() -> Self {
        LatencyStats {
            buckets: vec![0; BUCKETS],
            count: 0,
            sum: Duration::ZERO,
            min: Duration::MAX,
            max: Duration::ZERO,
        }
    }
}

fn bucket(d: Duration) -> usize {
    let ns = d.as_nanos() as f64;
    if ns < MIN_NS {
        return 0;
    }
    (((ns / MIN_NS).ln() / RATIO.ln()) as usize + 1).min(BUCKETS - 1)
}

/// The middle (geometric) of bucket `i`.
fn bucket_value(i: usize) -> Duration {
    if i == 0 {
        return Duration::from_nanos(MIN_NS as u64 / 2);
    }
    let lo = MIN_NS * RATIO.powi(i as i32 - 1);
    Duration::from_nanos((lo * RATIO.sqrt()) as u64)
}

impl LatencyStats {
    /// Adds one latency.
    pub fn record(&mut self, d: Duration) {
        self.buckets[bucket(d)] += 1;
        self.count += 1;
        self.sum += d;
        self.min = self.min.min(d);
        self.max = self.max.max(d);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1), e.g. 0.5 for the median; `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        // The smallest value with at least q * count values at or below it.
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min);
        }
        if rank == self.count {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The mean; `None` when nothing was recorded.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0)
            .then(|| Duration::from_secs_f64(self.sum.as_secs_f64() / self.count as f64))
    }

    /// The largest latency; `None` when nothing was recorded.
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then_some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Option<Duration>) -> f64 {
        crate::util::ms(d.unwrap())
    }

    #[test]
    fn percentiles_within_half_a_percent() {
        let mut s = LatencyStats::default();
        for i in 1..=1000 {
            s.record(Duration::from_millis(i));
        }
        assert_eq!(s.count(), 1000);
        for (q, want) in [(0.5, 500.0), (0.99, 990.0), (0.9, 900.0), (0.01, 10.0)] {
            let got = ms(s.quantile(q));
            assert!((got - want).abs() <= want * 0.006, "q{q}: {got} vs {want}");
        }
        assert_eq!(ms(s.quantile(1.0)), 1000.0);
        assert_eq!(ms(s.quantile(0.0)), 1.0);
        assert!((ms(s.mean()) - 500.5).abs() < 1e-6);
        assert_eq!(ms(s.max()), 1000.0);
    }

    #[test]
    fn constant_latency_is_exact_and_extremes_are_clamped() {
        let mut s = LatencyStats::default();
        for _ in 0..10 {
            s.record(Duration::from_micros(33_333));
        }
        assert_eq!(s.quantile(0.5), Some(Duration::from_micros(33_333)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_micros(33_333)));
        let mut s = LatencyStats::default();
        s.record(Duration::from_nanos(10));
        s.record(Duration::from_secs(5000));
        assert_eq!(s.quantile(0.0), Some(Duration::from_nanos(10)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_secs(5000)));
        assert_eq!(LatencyStats::default().quantile(0.5), None);
        assert_eq!(LatencyStats::default().mean(), None);
        // The last bucket holds 1000 s.
        assert!(bucket(Duration::from_secs(999)) < BUCKETS - 1);
    }
}
