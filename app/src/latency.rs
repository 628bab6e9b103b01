//! Lock-free counters and a fixed-memory latency histogram, shared by the relay, the demo and the
//! bench. (Prometheus metrics are emitted separately through the `metrics` facade.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets grow by 2^(1/8) (~9%) from 1 µs: 8 per doubling, 36 doublings reach ~19 hours.
const PER_DOUBLING: f64 = 8.0;
const BUCKETS: usize = 36 * 8;

/// A latency histogram of constant size (~2 KiB), whatever the number of samples: percentiles are
/// accurate to one bucket (~9%).
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    let index = ((micros as f64).log2() * PER_DOUBLING).floor() as usize;
    index.min(BUCKETS - 1)
}

fn upper_bound_micros(bucket: usize) -> f64 {
    2f64.powf((bucket as f64 + 1.0) / PER_DOUBLING)
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros.load(Ordering::Relaxed))
    }

    /// The `q` quantile (0.0–1.0), as the upper bound of its bucket (never above the max).
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                let micros =
                    upper_bound_micros(i).min(self.max_micros.load(Ordering::Relaxed) as f64);
                return Duration::from_secs_f64(micros / 1e6);
            }
        }
        self.max()
    }

    /// Forgets every sample.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.max_micros.store(0, Ordering::Relaxed);
    }

    /// "p50 … p99 … max …" in milliseconds.
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            ms(self.quantile(0.50)),
            ms(self.quantile(0.99)),
            ms(self.max()),
            self.count()
        )
    }
}

/// A duration in milliseconds, for display.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i * 10));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1e6;
        assert!((5000.0..5500.0).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).as_secs_f64() * 1e6;
        assert!((9900.0..10_000.1).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_micros(10_000));
        assert_eq!(h.count(), 1000);
        h.record(Duration::from_secs(1_000_000));
        h.reset();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
    }
}
