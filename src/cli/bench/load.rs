//! The load side of `veil bench`: a seeded random generator, request lengths, synthetic prompts
//! and Poisson arrival times. Everything here is deterministic for a given seed, so two runs
//! send the same workload.

use std::fmt;
use std::str::FromStr;

/// A small seeded pseudo-random generator (SplitMix64): fast, reproducible, good enough for
/// workload generation. Not for cryptography.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `lo..=hi` (`lo <= hi`).
    pub(crate) fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        let span = (hi - lo).wrapping_add(1);
        if span == 0 {
            // The full u64 range.
            return self.next_u64();
        }
        // Multiply-shift: the bias is below 2^-64 * span, negligible here.
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u64
    }

    /// An exponentially distributed value with the given rate (mean `1 / rate`).
    pub(crate) fn exponential(&mut self, rate: f64) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        -(1.0 - self.next_f64()).ln() / rate
    }
}

/// A token count: fixed (`128`) or drawn uniformly from an inclusive range (`64..256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LengthSpec {
    /// Always this many.
    Fixed(u32),
    /// Uniform in `lo..=hi`.
    Range(u32, u32),
}

impl LengthSpec {
    /// The largest length this spec can give.
    pub(crate) fn max(self) -> u32 {
        match self {
            Self::Fixed(n) => n,
            Self::Range(_, hi) => hi,
        }
    }

    /// Draws one length.
    pub(crate) fn sample(self, rng: &mut Rng) -> u32 {
        match self {
            Self::Fixed(n) => n,
            Self::Range(lo, hi) => rng.range_inclusive(u64::from(lo), u64::from(hi)) as u32,
        }
    }
}

impl FromStr for LengthSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |t: &str| -> Result<u32, String> {
            let n: u32 = t
                .trim()
                .parse()
                .map_err(|_| format!("{t:?} is not a token count"))?;
            if n == 0 {
                return Err("a token count must be at least 1".into());
            }
            Ok(n)
        };
        let spec = match s.split_once("..") {
            None => Self::Fixed(num(s)?),
            Some((lo, hi)) => {
                let hi = hi.strip_prefix('=').unwrap_or(hi);
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(format!("empty range {lo}..{hi}"));
                }
                if lo == hi {
                    Self::Fixed(lo)
                } else {
                    Self::Range(lo, hi)
                }
            }
        };
        Ok(spec)
    }
}

impl fmt::Display for LengthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Range(lo, hi) => write!(f, "{lo}..{hi}"),
        }
    }
}

/// One request of the workload.
#[derive(Debug, Clone)]
pub(crate) struct RequestSpec {
    /// The prompt's token ids.
    pub(crate) prompt: Vec<u32>,
    /// `max_tokens` for the request.
    pub(crate) max_tokens: u32,
    /// The request's sampling seed.
    pub(crate) seed: u64,
}

/// A deterministic stream of synthetic requests: request `i` depends only on the seed and `i`,
/// not on the order in which clients pick requests up.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    seed: u64,
    prompt: LengthSpec,
    output: LengthSpec,
    /// Prompt ids are drawn uniformly from `id_lo..id_hi`.
    id_lo: u32,
    id_hi: u32,
}

impl Workload {
    /// A workload over a vocabulary of `vocab_size` ids. Prompts use ordinary vocabulary ids:
    /// the low ids of most tokenizers are special or control tokens (SmolLM2: below 17), so
    /// ids are drawn from 1000 up when the vocabulary is large enough.
    pub(crate) fn new(seed: u64, prompt: LengthSpec, output: LengthSpec, vocab_size: u32) -> Self {
        let id_lo = 1000.min(vocab_size / 2);
        Self {
            seed,
            prompt,
            output,
            id_lo,
            id_hi: vocab_size.max(id_lo + 1),
        }
    }

    /// The same workload (lengths, vocabulary) under another seed.
    pub(crate) fn reseeded(&self, seed: u64) -> Self {
        Self { seed, ..self.clone() }
    }

    /// Request number `index`.
    pub(crate) fn request(&self, index: u64) -> RequestSpec {
        // Derive an independent stream per request from (seed, index).
        let mut rng = Rng::new(Rng::new(self.seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64());
        let prompt_len = self.prompt.sample(&mut rng);
        let max_tokens = self.output.sample(&mut rng);
        let seed = rng.next_u64();
        let prompt = (0..prompt_len)
            .map(|_| rng.range_inclusive(u64::from(self.id_lo), u64::from(self.id_hi - 1)) as u32)
            .collect();
        RequestSpec {
            prompt,
            max_tokens,
            seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let f = a.next_f64();
            assert!((0.0..1.0).contains(&f));
            b.next_f64();
            let r = a.range_inclusive(3, 5);
            assert!((3..=5).contains(&r));
            b.range_inclusive(3, 5);
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn range_covers_both_ends() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            seen[rng.range_inclusive(10, 13) as usize - 10] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.range_inclusive(5, 5), 5);
    }

    #[test]
    fn exponential_has_the_right_mean() {
        let mut rng = Rng::new(42);
        let n = 100_000;
        let mean = (0..n).map(|_| rng.exponential(4.0)).sum::<f64>() / f64::from(n);
        assert!((mean - 0.25).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn length_spec_parses() {
        assert_eq!("128".parse::<LengthSpec>(), Ok(LengthSpec::Fixed(128)));
        assert_eq!("64..256".parse::<LengthSpec>(), Ok(LengthSpec::Range(64, 256)));
        assert_eq!("64..=256".parse::<LengthSpec>(), Ok(LengthSpec::Range(64, 256)));
        assert_eq!("8..8".parse::<LengthSpec>(), Ok(LengthSpec::Fixed(8)));
        assert!("0".parse::<LengthSpec>().is_err());
        assert!("9..3".parse::<LengthSpec>().is_err());
        assert!("x".parse::<LengthSpec>().is_err());
        assert!("1..".parse::<LengthSpec>().is_err());
        assert_eq!(LengthSpec::Range(64, 256).to_string(), "64..256");
        assert_eq!(LengthSpec::Range(64, 256).max(), 256);
    }

    #[test]
    fn workload_is_exact_and_reproducible() {
        let w = Workload::new(3, LengthSpec::Range(16, 32), LengthSpec::Fixed(8), 49152);
        for i in 0..50 {
            let r = w.request(i);
            assert!((16..=32).contains(&r.prompt.len()));
            assert_eq!(r.max_tokens, 8);
            assert!(r.prompt.iter().all(|&t| (1000..49152).contains(&t)));
            assert_eq!(r.prompt, w.request(i).prompt);
            assert_eq!(r.seed, w.request(i).seed);
        }
        assert_ne!(w.request(0).prompt, w.request(1).prompt);
        // A tiny vocabulary still gives valid ids.
        let tiny = Workload::new(0, LengthSpec::Fixed(64), LengthSpec::Fixed(1), 10);
        assert!(tiny.request(0).prompt.iter().all(|&t| (5..10).contains(&t)));
    }
}
