//! Percentiles, by nearest rank (the same definition as `duckdb_mix.py`).

/// The `p`-th percentile (0–100) of `samples` by nearest rank; 0 when empty.
pub fn percentile(samples: &[u64], p: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// p50 and p99 in microseconds of samples in nanoseconds.
pub fn p50_p99_us(samples_ns: &[u64]) -> (f64, f64) {
    (percentile(samples_ns, 50.0) as f64 / 1e3, percentile(samples_ns, 99.0) as f64 / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let xs: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&xs, 50.0), 50);
        assert_eq!(percentile(&xs, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
