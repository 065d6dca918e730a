//! Fixed log-scale histogram buckets of durations, shared by every window and the Prometheus
//! histogram, so that windows add up bucket by bucket.
//!
//! Bucket `i` (1..=54) holds (B(i-1), B(i)] with B(i) = 0.5 ms · 2^(i/3): three buckets per
//! doubling, 0.5 ms to 131 s. Bucket 0 holds [0, 0.5 ms] (nginx writes whole milliseconds, so
//! `0.000` lands there), bucket 55 everything over 131 s. A quantile is reported as the geometric
//! middle of its bucket, within 2^(1/6) - 1 = 12.2 % of any value in that bucket.

/// The number of buckets.
pub const BUCKETS: usize = 56;

/// B(i) in microseconds, i = 0..=54: the upper bound of bucket i.
pub const UPPER_US: [u64; BUCKETS - 1] = upper_bounds();

const fn upper_bounds() -> [u64; BUCKETS - 1] {
    // 2^(0/3), 2^(1/3), 2^(2/3) in millionths.
    const ROOT: [u64; 3] = [1_000_000, 1_259_921, 1_587_401];
    let mut out = [0u64; BUCKETS - 1];
    let mut i = 0;
    while i < BUCKETS - 1 {
        out[i] = ((500u64 << (i / 3)) * ROOT[i % 3]).div_ceil(1_000_000);
        i += 1;
    }
    out
}

/// The bucket of a duration.
pub fn bucket(us: u64) -> usize {
    UPPER_US.partition_point(|&b| b < us)
}

/// The value reported for a bucket, in milliseconds: the geometric middle of its bounds (half the
/// first bound for bucket 0, the last bound for the open-ended bucket).
pub fn representative_ms(bucket: usize) -> f64 {
    let ms = |i: usize| UPPER_US[i] as f64 / 1000.0;
    match bucket {
        0 => ms(0) / 2.0,
        b if b >= BUCKETS - 1 => ms(BUCKETS - 2),
        b => (ms(b - 1) * ms(b)).sqrt(),
    }
}

/// The `q` quantile (0 < q ≤ 1) of counts per bucket in milliseconds; `None` without any count.
pub fn quantile_ms<C: Copy + Into<u64>>(counts: &[C; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().map(|&c| c.into()).sum();
    if total == 0 {
        return None;
    }
    // The smallest value with at least q of the counts at or under it (nearest rank).
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += c.into();
        if seen >= rank {
            return Some(representative_ms(i));
        }
    }
    Some(representative_ms(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds() {
        assert_eq!(UPPER_US[0], 500);
        assert_eq!(UPPER_US[3], 1000);
        assert_eq!(UPPER_US[6], 2000);
        assert_eq!(UPPER_US[54], 131_072_000);
        assert!(UPPER_US.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(500), 0);
        assert_eq!(bucket(501), 1);
        assert_eq!(bucket(1000), 3);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        let mut counts = [0u32; BUCKETS];
        assert_eq!(quantile_ms(&counts, 0.5), None);
        counts[bucket(100_000)] = 99;
        counts[bucket(5_000_000)] = 1;
        assert!((quantile_ms(&counts, 0.5).unwrap() - 100.0).abs() < 12.3);
        assert!((quantile_ms(&counts, 1.0).unwrap() - 5000.0).abs() < 5000.0 * 0.123);
    }

    proptest! {
        #[test]
        fn the_relative_error_is_bounded(us in 501u64..131_072_000) {
            let got = representative_ms(bucket(us));
            let want = us as f64 / 1000.0;
            prop_assert!((got - want).abs() <= want * 0.1225, "{us} µs reported as {got} ms");
        }
    }
}
