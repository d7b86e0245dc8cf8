//! The soak's random numbers: SplitMix64 (Steele, Lea and Flood, 2014), seeded, so that a
//! seed replays the same fault schedule and the same hold times.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator for one part of a run (a backend, a holder slot): the seed mixed with
    /// `stream`, so that the parts draw independent sequences and a part's sequence does not
    /// depend on which other parts run.
    pub fn derive(seed: u64, stream: u64) -> SplitMix64 {
        let mut g = SplitMix64::new(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        g.next_u64();
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi` (`lo` when `hi < lo`); the modulo bias is below 2^-40 for the
    /// small ranges used here.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A stable 64-bit hash of `s` (FNV-1a), to derive a backend's stream from its name.
pub fn stream_of(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // The first outputs of the reference implementation for seed 1234567.
        let mut g = SplitMix64::new(1_234_567);
        assert_eq!(g.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(g.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn ranges_stay_inside_and_streams_differ() {
        let mut g = SplitMix64::new(7);
        for _ in 0..1000 {
            let v = g.range(20, 200);
            assert!((20..=200).contains(&v));
        }
        assert_eq!(g.range(5, 5), 5);
        let a = SplitMix64::derive(7, stream_of("redis")).next_u64();
        let b = SplitMix64::derive(7, stream_of("etcd")).next_u64();
        assert_ne!(a, b);
    }
}
