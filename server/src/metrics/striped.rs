//! A counter and a histogram for what every relayed message records, striped over cache
//! lines: a worker thread adds to its own stripe and a scrape sums them. With one atomic
//! (prometheus-client's counter) or one lock (its histogram) per metric, the readers of
//! every connection, on every worker thread, contended for the same few cache lines on
//! every message.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Stripes per metric: more than the worker threads of a typical pod; threads beyond it
/// share stripes, which only costs contention, never a count.
const STRIPES: usize = 8;

/// Bucket bounds a [`StripedHistogram`] can take (its `+Inf` bucket is one more).
const MAX_BOUNDS: usize = 11;

/// Two cache lines: adjacent-line prefetching pairs them on x86.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line<T>(T);

/// The stripe this thread records into, assigned round-robin on first use: the runtime's
/// workers start first and record most, so they get stripes of their own unless there are
/// more than [`STRIPES`] of them; threads that come later (blocking pool, tests) share.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mine = s.get();
        if mine != usize::MAX {
            return mine;
        }
        let mine = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(mine);
        mine
    })
}

/// A monotonic counter. Clones record into the same counter.
#[derive(Debug, Clone, Default)]
pub struct StripedCounter(Arc<[Line<AtomicU64>; STRIPES]>);

impl StripedCounter {
    pub fn inc(&self) {
        self.0[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, line| {
            sum.wrapping_add(line.0.load(Ordering::Relaxed))
        })
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Debug, Default)]
struct HistogramStripe {
    /// May run a few observations ahead of or behind the buckets in a scrape taken while
    /// they are recorded; the count is the buckets' total, so `_count` and `+Inf` agree.
    sum: AtomicU64,
    /// Observations per bucket, not cumulative; index `bounds.len()` is `+Inf`.
    buckets: [AtomicU64; MAX_BOUNDS + 1],
}

/// A histogram of whole numbers (bytes, recipients) over fixed upper bounds, rendered like
/// prometheus-client's. Clones record into the same histogram.
#[derive(Debug, Clone)]
pub struct StripedHistogram {
    bounds: &'static [f64],
    stripes: Arc<[Line<HistogramStripe>; STRIPES]>,
}

impl StripedHistogram {
    /// `bounds` ascending, at most [`MAX_BOUNDS`] of them (the server's own constants; a
    /// longer list is a programming error, caught at start-up).
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() <= MAX_BOUNDS, "too many histogram bounds");
        StripedHistogram {
            bounds,
            stripes: Arc::default(),
        }
    }

    pub fn observe(&self, value: u64) {
        let stripe = &self.stripes[stripe()].0;
        stripe.sum.fetch_add(value, Ordering::Relaxed);
        stripe.buckets[bucket_of(self.bounds, value)].fetch_add(1, Ordering::Relaxed);
    }

    /// (sum, count, per-bucket counts with their upper bounds, `+Inf` last).
    fn totals(&self) -> (u64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|bound| (bound, 0))
            .collect();
        let mut sum = 0u64;
        for line in self.stripes.iter() {
            let stripe = &line.0;
            sum = sum.wrapping_add(stripe.sum.load(Ordering::Relaxed));
            for (total, n) in buckets.iter_mut().zip(&stripe.buckets) {
                total.1 = total.1.wrapping_add(n.load(Ordering::Relaxed));
            }
        }
        let count = buckets
            .iter()
            .fold(0u64, |count, (_, n)| count.wrapping_add(*n));
        (sum, count, buckets)
    }
}

/// The index of the first bucket whose upper bound holds `value` (`bounds.len()`: `+Inf`).
fn bucket_of(bounds: &[f64], value: u64) -> usize {
    // Exact for every value a bound can name (bounds are whole numbers below 2^53).
    let v = value as f64;
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

impl TypedMetric for StripedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for StripedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum as f64, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket() {
        let bounds = [0.0, 1.0, 5.0];
        assert_eq!(bucket_of(&bounds, 0), 0);
        assert_eq!(bucket_of(&bounds, 1), 1);
        assert_eq!(bucket_of(&bounds, 2), 2);
        assert_eq!(bucket_of(&bounds, 5), 2);
        assert_eq!(bucket_of(&bounds, 6), 3);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        static BOUNDS: [f64; 2] = [10.0, 100.0];
        let counter = StripedCounter::default();
        let histogram = StripedHistogram::new(&BOUNDS);
        std::thread::scope(|s| {
            for t in 0..12u64 {
                let (counter, histogram) = (counter.clone(), histogram.clone());
                s.spawn(move || {
                    for i in 0..1000 {
                        counter.inc();
                        histogram.observe(t * 10 + i % 3);
                    }
                });
            }
        });
        assert_eq!(counter.get(), 12_000);
        let (sum, count, buckets) = histogram.totals();
        assert_eq!(count, 12_000);
        // Thread t observes t*10, t*10+1 and t*10+2 (334, 333 and 333 times): at most 10
        // are thread 0's and thread 1's 10s; over 100 are thread 10's 101s and 102s and all
        // of thread 11's.
        let per_thread: u64 = (0..1000).map(|i| i % 3).sum();
        assert_eq!(
            sum,
            (0..12).map(|t| t * 10 * 1000).sum::<u64>() + 12 * per_thread
        );
        assert_eq!(buckets[0], (10.0, 1000 + 334));
        assert_eq!(buckets[1], (100.0, 666 + 8 * 1000 + 334));
        assert_eq!(buckets[2], (f64::INFINITY, 666 + 1000));
    }
}
