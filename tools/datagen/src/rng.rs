//! A small deterministic pseudo-random number generator.
//!
//! The generator is written here rather than taken from the `rand` crate so
//! that a dataset produced for a seed never changes with a dependency upgrade.
//! [`SplitMix64`] expands a seed into state words; [`Rng`] is xoshiro256**
//! (Blackman and Vigna), fast and of good statistical quality for this use.

/// SplitMix64: a 64-bit generator used only to turn seeds into state words.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A SplitMix64 stream starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64-bit output of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }
}

/// The SplitMix64 finaliser: a bijective 64-bit mixing function.
pub fn mix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256**: the generator behind every random choice of the dataset.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose state is expanded from `seed` with SplitMix64.
    pub fn from_seed(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        // SplitMix64 outputs are a bijection of distinct counters, so the four
        // words cannot all be zero (the one state xoshiro must avoid).
        Self { s }
    }

    /// The generator of one item (a profile) of a dataset: it depends on the
    /// dataset `seed` and the item `index` only, so items can be generated in
    /// any order and on any thread.
    pub fn for_item(seed: u64, index: u64) -> Self {
        Self::from_seed(mix64(seed ^ 0xC0A0_27D5_EED5_0000) ^ mix64(index.wrapping_add(1)))
    }

    /// The next 64-bit output.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..n` (Lemire's multiply-shift; the bias, at most
    /// n / 2^64, is irrelevant here). `n` must be non-zero.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform integer in `lo..=hi`.
    #[inline]
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    #[inline]
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// A standard normal deviate (Box-Muller; one of the pair is dropped to
    /// keep the generator stateless beyond its four words).
    pub fn normal(&mut self) -> f64 {
        // 1 - f64() is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A log-normal deviate with the given median and shape `sigma`.
    pub fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// A Zipf-like rank in `0..n` with exponent 1: rank k has probability
    /// `ln((k + 2) / (k + 1)) / ln(n + 1)`, close to `1 / ((k + 1) ln n)`.
    /// Uses no table, so it suits large or many distributions.
    pub fn zipf(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let x = ((n as f64 + 1.0).ln() * self.f64()).exp();
        // x is in [1, n + 1); floor(x) - 1 is in [0, n - 1] except for the
        // rounding of exp at the top, which the min guards against.
        ((x as u64).saturating_sub(1)).min(n - 1)
    }

    /// An index into `cumulative`, a non-decreasing table of cumulative
    /// weights whose last entry is the total.
    pub fn weighted(&mut self, cumulative: &[f64]) -> usize {
        let total = cumulative[cumulative.len() - 1];
        let x = self.f64() * total;
        cumulative.partition_point(|&c| c <= x).min(cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_reference_values() {
        // Reference: the C implementation seeded with s = {1, 2, 3, 4}.
        let mut r = Rng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240]);
    }

    #[test]
    fn splitmix_reference_value() {
        // First output of SplitMix64 seeded with 0 (public test vector).
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn items_are_independent_of_order() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_item(7, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::for_item(7, 3).next_u64(), Rng::for_item(7, 4).next_u64());
        assert_ne!(Rng::for_item(7, 3).next_u64(), Rng::for_item(8, 3).next_u64());
    }

    #[test]
    fn helpers_stay_in_range() {
        let mut r = Rng::from_seed(1);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let v = r.range_inclusive(10, 20);
            assert!((10..=20).contains(&v));
            let f = r.f64();
            assert!((0.0..1.0).contains(&f));
            assert!(r.zipf(5) < 5);
            assert!(r.weighted(&[1.0, 3.0, 6.0]) < 3);
        }
    }
}
