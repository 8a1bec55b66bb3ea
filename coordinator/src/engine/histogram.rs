//! Decaying histograms with exponential buckets: the data structure the Kubernetes VPA
//! recommender keeps per container, and the one this engine keeps per VM and resource.
//!
//! What it is for: a percentile over an unbounded history in constant memory, where a
//! sample's weight halves every `half_life`. Buckets grow geometrically (`first`,
//! `first·ratio`, ...), so the relative error of a percentile is bounded by `ratio − 1`
//! at every scale, from 10 millicores to 1000 cores. Decay is implemented as VPA does it:
//! instead of shrinking old weights, new samples get weight `2^((t − ref)/half_life)`,
//! and the reference time moves forward (rescaling every bucket once) before the factor
//! can overflow. [`DecayingHistogram::percentile`] returns the *end* of the bucket that
//! holds the percentile, exactly as VPA's `histogram.Percentile` does.
//!
//! What it is not: a policy. It knows no margins, targets or resources.

/// Bucket layout of an exponential histogram (VPA's `NewExponentialHistogramOptions`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buckets {
    /// Width of the first bucket.
    pub first: f64,
    /// Each bucket is `ratio` times wider than the previous one.
    pub ratio: f64,
    /// Values at or above the start of the last bucket land in it.
    pub max_value: f64,
}

impl Buckets {
    /// VPA's CPU layout: 0.01 cores first bucket, 5% growth, up to 1000 cores.
    pub const VPA_CPU: Buckets = Buckets {
        first: 0.01,
        ratio: 1.05,
        max_value: 1000.0,
    };
    /// VPA's memory layout in bytes: 10 MB first bucket, 5% growth, up to 1 TB.
    pub const VPA_MEMORY_BYTES: Buckets = Buckets {
        first: 1e7,
        ratio: 1.05,
        max_value: 1e12,
    };
    /// The same layout in GiB, which the engine uses for memory.
    pub const MEMORY_GIB: Buckets = Buckets {
        first: 1e7 / 1073741824.0,
        ratio: 1.05,
        max_value: 1e12 / 1073741824.0,
    };

    /// Number of buckets (VPA: `ceil(log(max·(r−1)/first + 1) / log r) + 1`).
    pub fn count(&self) -> usize {
        let n = ((self.max_value * (self.ratio - 1.0) / self.first + 1.0).ln() / self.ratio.ln())
            .ceil() as usize;
        n + 1
    }

    /// Where bucket `b` starts.
    pub fn start(&self, b: usize) -> f64 {
        if b == 0 {
            return 0.0;
        }
        self.first * (self.ratio.powi(b as i32) - 1.0) / (self.ratio - 1.0)
    }

    /// The bucket holding `v`.
    pub fn find(&self, v: f64) -> usize {
        if v.is_nan() || v < self.first {
            return 0;
        }
        let b = ((v * (self.ratio - 1.0) / self.first + 1.0).ln() / self.ratio.ln()) as usize;
        b.min(self.count() - 1)
    }
}

/// Weights below this count as empty (VPA's `epsilon`).
const EPSILON: f64 = 1e-4;
/// The reference time moves before `2^exponent` could lose precision (VPA: 100).
const MAX_DECAY_EXPONENT: f64 = 100.0;

/// A histogram whose samples lose half their weight every `half_life_s`.
#[derive(Debug, Clone)]
pub struct DecayingHistogram {
    buckets: Buckets,
    weights: Vec<f64>,
    total: f64,
    half_life_s: f64,
    /// Time (s) at which a new sample has weight factor 1.
    reference_s: f64,
    min_bucket: usize,
    max_bucket: usize,
}

impl DecayingHistogram {
    pub fn new(buckets: Buckets, half_life_s: f64) -> Self {
        let n = buckets.count();
        Self {
            buckets,
            weights: vec![0.0; n],
            total: 0.0,
            half_life_s: half_life_s.max(1.0),
            reference_s: 0.0,
            min_bucket: n - 1,
            max_bucket: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total < EPSILON
    }

    /// Sum of (decayed, relative to the reference time) weights.
    pub fn total_weight(&self) -> f64 {
        self.total
    }

    fn factor(&mut self, t_s: f64) -> f64 {
        if self.is_empty() && self.total == 0.0 {
            // An empty histogram can start its clock anywhere.
            self.reference_s = (t_s / self.half_life_s).round() * self.half_life_s;
        }
        if t_s > self.reference_s + MAX_DECAY_EXPONENT * self.half_life_s {
            let new_ref = (t_s / self.half_life_s).round() * self.half_life_s;
            let scale = ((self.reference_s - new_ref) / self.half_life_s).exp2();
            for w in &mut self.weights[self.min_bucket.min(self.max_bucket)..=self.max_bucket] {
                *w *= scale;
            }
            self.total *= scale;
            self.reference_s = new_ref;
            self.refresh_bounds();
        }
        ((t_s - self.reference_s) / self.half_life_s).exp2()
    }

    /// Adds `weight` of `value` observed at `t_s` (seconds).
    pub fn add(&mut self, value: f64, weight: f64, t_s: f64) {
        if !value.is_finite() || weight.is_nan() || weight <= 0.0 {
            return;
        }
        let w = weight * self.factor(t_s);
        let b = self.buckets.find(value);
        self.weights[b] += w;
        self.total += w;
        if self.weights[b] >= EPSILON {
            self.min_bucket = self.min_bucket.min(b);
            self.max_bucket = self.max_bucket.max(b);
        }
    }

    /// Takes back a sample added earlier with the same value, weight and time.
    pub fn subtract(&mut self, value: f64, weight: f64, t_s: f64) {
        if !value.is_finite() || weight.is_nan() || weight <= 0.0 {
            return;
        }
        let w = weight * self.factor(t_s);
        let b = self.buckets.find(value);
        self.weights[b] = (self.weights[b] - w).max(0.0);
        self.total = (self.total - w).max(0.0);
        if self.weights[b] < EPSILON && (b == self.min_bucket || b == self.max_bucket) {
            self.refresh_bounds();
        }
    }

    fn refresh_bounds(&mut self) {
        let n = self.weights.len();
        self.min_bucket = (0..n)
            .find(|&b| self.weights[b] >= EPSILON)
            .unwrap_or(n - 1);
        self.max_bucket = (0..n)
            .rev()
            .find(|&b| self.weights[b] >= EPSILON)
            .unwrap_or(0);
    }

    /// The value below which fraction `p` of the weight lies: the end of the bucket that
    /// reaches it (the start of the last bucket, which has no end). 0 when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let threshold = p * self.total;
        let mut sum = 0.0;
        let mut b = self.min_bucket;
        while b < self.max_bucket {
            sum += self.weights[b];
            if sum >= threshold {
                break;
            }
            b += 1;
        }
        if b < self.weights.len() - 1 {
            self.buckets.start(b + 1)
        } else {
            self.buckets.start(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_layout_matches_vpa() {
        let b = Buckets::VPA_CPU;
        // VPA's CPU histogram has 176 buckets.
        assert_eq!(b.count(), 176);
        assert_eq!(b.find(0.0), 0);
        assert_eq!(b.find(0.0099), 0);
        assert_eq!(b.find(0.01), 1);
        for v in [0.02, 0.5, 1.0, 3.7, 64.0, 999.0] {
            let k = b.find(v);
            assert!(b.start(k) <= v + 1e-12 && v < b.start(k + 1), "{v} in {k}");
        }
        assert_eq!(b.find(1e9), b.count() - 1);
    }

    #[test]
    fn percentile_is_bucket_end_and_within_five_percent() {
        let mut h = DecayingHistogram::new(Buckets::VPA_CPU, 86400.0);
        for i in 1..=100 {
            h.add(f64::from(i) / 100.0, 1.0, 0.0);
        }
        let p90 = h.percentile(0.9);
        assert!((0.9..=0.9 * 1.051).contains(&p90), "{p90}");
        assert!(h.percentile(1.0) >= 1.0);
        assert_eq!(
            DecayingHistogram::new(Buckets::VPA_CPU, 1.0).percentile(0.5),
            0.0
        );
    }

    #[test]
    fn old_samples_lose_half_their_weight_per_half_life() {
        let mut h = DecayingHistogram::new(Buckets::VPA_CPU, 3600.0);
        h.add(1.0, 1.0, 0.0);
        // One half-life later, weight 1 of 4.0 counts twice as much as the old 1.0.
        h.add(4.0, 1.0, 3600.0);
        // 2/3 of the weight is at 4.0: the p50 is there.
        assert!(h.percentile(0.5) > 3.9);
        assert!(h.percentile(0.3) < 1.1);
        // Far in the future (beyond the decay exponent), the reference moves and the
        // old weights vanish but the histogram stays finite.
        h.add(2.0, 1.0, 3600.0 * 500.0);
        assert!(h.total_weight().is_finite());
        assert!((h.percentile(0.5) - 2.0).abs() < 0.11);
    }

    #[test]
    fn subtract_takes_back_a_sample() {
        let mut h = DecayingHistogram::new(Buckets::MEMORY_GIB, 86400.0);
        h.add(1.0, 1.0, 100.0);
        h.add(8.0, 1.0, 100.0);
        h.subtract(8.0, 1.0, 100.0);
        assert!(h.percentile(0.99) < 1.1);
    }
}
