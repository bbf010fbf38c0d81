//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded RNG.

use crate::error::{Error, Result};

/// How to pick tokens for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    pub min_p: f32,
    /// HF-style multiplicative penalty on tokens already in prompt or output (1.0 = off).
    pub repetition_penalty: f32,
    /// OpenAI-style additive penalty on tokens already generated (0 = off).
    pub presence_penalty: f32,
    /// OpenAI-style penalty per previous occurrence in the output (0 = off).
    pub frequency_penalty: f32,
    /// RNG seed: the same seed and input give the same output.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks that every parameter is in range.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|e| Error::InvalidRequest(e.to_string()))
    }

    /// Checks that every parameter is in range, naming the first offending field.
    pub fn check(&self) -> std::result::Result<(), InvalidField> {
        let bad = |field: &'static str, message: &str| {
            Err(InvalidField {
                field,
                message: message.into(),
            })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return bad("temperature", "must be in [0, 100]");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if self.top_k > 1 << 20 {
            return bad("top_k", "must be at most 1048576 (0 = off)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite()
            && self.repetition_penalty > 0.0
            && self.repetition_penalty <= 10.0)
        {
            return bad("repetition_penalty", "must be in (0, 10]");
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return bad(field, "must be in [-2, 2]");
            }
        }
        Ok(())
    }
}

/// A request field with an invalid value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The field's name as in the API.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for InvalidField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// xoshiro256** seeded through splitmix64: small, fast and reproducible across platforms.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    /// A generator seeded from the OS's per-process random hasher keys and the clock.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Self::new(h.finish())
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One token's log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    /// Token id.
    pub id: u32,
    /// Natural-log probability under the model (after penalties, before temperature).
    pub logprob: f32,
}

/// What the sampler picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub id: u32,
    /// Its log-probability under the model (when asked for).
    pub logprob: Option<f32>,
    /// The most likely tokens, highest first (empty unless asked for).
    pub top_logprobs: Vec<TokenLogprob>,
}

/// Per-request sampling state: parameters, RNG and output token counts for penalties.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (token, count) of generated tokens, for presence/frequency penalties.
    output_counts: std::collections::HashMap<u32, u32>,
    /// Tokens seen in prompt or output, for the repetition penalty.
    seen: std::collections::HashSet<u32>,
    /// Scratch: candidate (id, logit) pairs.
    candidates: Vec<(u32, f32)>,
    /// Scratch: per-token sampling weights.
    weights: Vec<f32>,
    /// Key of a device sampler's counter-based RNG: the request's seed, or a random one.
    device_seed: u64,
    /// Tokens picked so far (the device RNG's counter).
    picked: u32,
}

impl Sampler {
    /// A sampler for one request whose prompt is `prompt`. A temperature so small that its
    /// reciprocal overflows (below about 3e-39) samples greedily, its limit: the weights
    /// `(l - max) / T` would otherwise be `0 * inf = NaN` and the draw would pick token 0.
    pub fn new(mut params: SamplingParams, prompt: &[u32]) -> Self {
        if params.temperature > 0.0 && !(1.0 / params.temperature).is_finite() {
            params.temperature = 0.0;
        }
        let rng = params.seed.map(Rng::new).unwrap_or_else(Rng::from_entropy);
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        // Drawn from a separate generator so the host sampler's stream stays the same.
        let device_seed = params.seed.unwrap_or_else(|| Rng::from_entropy().next_u64());
        Self {
            params,
            rng,
            output_counts: Default::default(),
            seen,
            candidates: Vec::new(),
            weights: Vec::new(),
            device_seed,
            picked: 0,
        }
    }

    /// What a device sampler needs to pick this request's next token as this sampler would
    /// (same filters and penalties; its own counter-based draw keyed by [`Self::device_seed`]).
    pub fn device_seed(&self) -> u64 {
        self.device_seed
    }

    /// Tokens picked so far: the device draw's counter.
    pub fn picked(&self) -> u32 {
        self.picked
    }

    /// Whether any penalty is on.
    pub fn has_penalties(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
    }

    /// The penalised tokens as (id, times generated) pairs, in id order: every token seen in
    /// the prompt or output when the repetition penalty is on (count 0 when only in the
    /// prompt), and every generated token. Empty when no penalty is on.
    pub fn penalty_pairs(&self, out: &mut Vec<(u32, u32)>) {
        out.clear();
        if !self.has_penalties() {
            return;
        }
        out.extend(self.output_counts.iter().map(|(&id, &c)| (id, c)));
        out.extend(
            self.seen
                .iter()
                .filter(|id| !self.output_counts.contains_key(id))
                .map(|&id| (id, 0)),
        );
        out.sort_unstable();
    }

    /// Records a token picked elsewhere (by a device sampler), for later penalties.
    pub fn record_picked(&mut self, id: u32) {
        self.record(id);
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place by penalties), recording it for
    /// later penalties. `logprobs` asks for the token's log-probability plus that many most
    /// likely alternatives; `None` skips the (vocabulary-wide) normalisation.
    pub fn sample(&mut self, logits: &mut [f32], logprobs: Option<usize>) -> Sampled {
        self.apply_penalties(logits);
        let id = if self.params.temperature == 0.0 {
            argmax(logits)
        } else {
            self.sample_stochastic(logits)
        };
        self.record(id);
        let Some(top_n_wanted) = logprobs else {
            return Sampled {
                id,
                logprob: None,
                top_logprobs: Vec::new(),
            };
        };
        // log-softmax normaliser of the model distribution.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let log_z = max + sum.ln() as f32;
        let top_logprobs = top_n(logits, top_n_wanted)
            .into_iter()
            .map(|(id, l)| TokenLogprob {
                id,
                logprob: l - log_z,
            })
            .collect();
        Sampled {
            id,
            logprob: Some(logits[id as usize] - log_z),
            top_logprobs,
        }
    }

    fn record(&mut self, id: u32) {
        self.picked = self.picked.saturating_add(1);
        *self.output_counts.entry(id).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(id);
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &id in &self.seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    // Kept finite: a tiny penalty would push a logit to infinity, and the
                    // weights `l - max` of an infinite maximum are NaN.
                    *l = if *l > 0.0 {
                        (*l / p.repetition_penalty).min(f32::MAX)
                    } else {
                        (*l * p.repetition_penalty).max(f32::MIN)
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }

    fn sample_stochastic(&mut self, logits: &[f32]) -> u32 {
        if self.params.top_k == 0 && self.params.top_p >= 1.0 {
            return self.sample_unsorted(logits);
        }
        self.sample_sorted(logits)
    }

    /// Temperature (and min-p) only: one pass over the vocabulary in id order, no sorting.
    /// Draws the same distribution as the sorted path, in O(vocab).
    fn sample_unsorted(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Weights relative to the most likely token (whose weight is exp(0) = 1), computed once
        // in f32 into a reused buffer; min-p drops those below its threshold.
        let threshold = p.min_p;
        self.weights.clear();
        self.weights.extend(logits.iter().map(|&l| {
            let w = ((l - max) * inv_t).exp();
            if w >= threshold { w } else { 0.0 }
        }));
        let total: f64 = self.weights.iter().map(|&w| w as f64).sum();
        let mut r = self.rng.next_f64() * total;
        let mut last = 0;
        for (i, &w) in self.weights.iter().enumerate() {
            if w > 0.0 {
                let w = w as f64;
                if r < w {
                    return i as u32;
                }
                r -= w;
                last = i;
            }
        }
        last as u32
    }

    /// Top-k and/or top-p: the smallest sorted candidate window the filters can need.
    fn sample_sorted(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        // Candidates sorted by logit, highest first. Only as many as the filters can keep are
        // sorted: top-k bounds them directly; top-p grows the window until it holds mass p.
        let n = logits.len();
        let limit = if p.top_k > 0 { p.top_k.min(n) } else { n };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = logits.iter().map(|&l| (((l - max) * inv_t) as f64).exp()).sum();
        let mut window = if p.top_p < 1.0 { limit.min(64) } else { limit };
        loop {
            self.candidates.clear();
            self.candidates
                .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
            if window < n {
                self.candidates
                    .select_nth_unstable_by(window - 1, |a, b| b.1.total_cmp(&a.1));
                self.candidates.truncate(window);
            }
            self.candidates
                .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if window >= limit || p.top_p >= 1.0 {
                break;
            }
            let mass: f64 = self
                .candidates
                .iter()
                .map(|&(_, l)| (((l - max) * inv_t) as f64).exp())
                .sum::<f64>()
                / total;
            if mass >= p.top_p as f64 {
                break;
            }
            window = (window * 4).min(limit);
        }
        // Probabilities relative to the full distribution (top-p is measured against it).
        let mut probs: Vec<f64> = self
            .candidates
            .iter()
            .map(|&(_, l)| (((l - max) * inv_t) as f64).exp() / total)
            .collect();
        if p.top_k > 0 {
            // After top-k, top-p applies to the renormalised top-k distribution (HF order).
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &x) in probs.iter().enumerate() {
                acc += x;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let threshold = probs[0] * p.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&x| x >= threshold).count().max(1));
        }
        let probs = &probs[..keep.max(1)];
        let sum: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * sum;
        for (i, &x) in probs.iter().enumerate() {
            if r < x {
                return self.candidates[i].0;
            }
            r -= x;
        }
        self.candidates[probs.len() - 1].0
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The `n` largest logits, highest first.
pub fn top_n(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let n = n.min(v.len());
    if n == 0 {
        return Vec::new();
    }
    if n < v.len() {
        v.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
        v.truncate(n);
    }
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9, -1.0]
    }

    #[test]
    fn greedy_picks_argmax_and_reports_logprobs() {
        let mut s = Sampler::new(SamplingParams::default(), &[]);
        let out = s.sample(&mut logits(), Some(3));
        assert_eq!(out.id, 1);
        assert_eq!(
            out.top_logprobs.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![1, 4, 2]
        );
        let z: f32 = logits().iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!((out.logprob.expect("asked") - (3.0 - z)).abs() < 1e-5);
    }

    #[test]
    fn same_seed_same_tokens() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(params.clone(), &[]);
            (0..50)
                .map(|_| s.sample(&mut logits(), None).id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert!(run().iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_k_and_top_p_and_min_p_restrict() {
        for params in [
            SamplingParams {
                temperature: 1.0,
                top_k: 2,
                seed: Some(1),
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 0.6,
                seed: Some(1),
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                min_p: 0.5,
                seed: Some(1),
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params.clone(), &[]);
            for _ in 0..200 {
                let id = s.sample(&mut logits(), None).id;
                assert!(id == 1 || id == 4, "{params:?} gave {id}");
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                seed: Some(3),
                ..Default::default()
            },
            &[],
        );
        let l = [0.0f32, (3.0f32).ln()];
        let ones = (0..4000)
            .filter(|_| s.sample(&mut l.clone(), None).id == 1)
            .count();
        assert!((2800..3200).contains(&ones), "{ones}");
    }

    #[test]
    fn penalties_change_logits() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        };
        let mut s = Sampler::new(params, &[0, 5]);
        let mut l = logits();
        assert_eq!(s.sample(&mut l, None).id, 1);
        assert_eq!(l[0], 0.5);
        assert_eq!(l[5], -2.0);
        let mut l = logits();
        s.sample(&mut l, None);
        // token 1: repetition 3/2 = 1.5, then presence 0.5 + frequency 0.25 * 1.
        assert!((l[1] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn extreme_temperature_and_penalty_stay_finite() {
        // A temperature whose reciprocal overflows is greedy (before: NaN weights, token 0),
        // on the unsorted and the sorted path, and for a device sampler (its params).
        for top_k in [0, 3] {
            for temperature in [f32::from_bits(1), 1e-39] {
                let params = SamplingParams {
                    temperature,
                    top_k,
                    seed: Some(1),
                    ..Default::default()
                };
                let mut s = Sampler::new(params, &[]);
                assert_eq!(s.params().temperature, 0.0);
                for _ in 0..20 {
                    let out = s.sample(&mut logits(), Some(2));
                    assert_eq!(out.id, 1, "temperature {temperature:e}, top_k {top_k}");
                }
            }
        }
        // The smallest temperatures that do not overflow still sample (and pick the argmax).
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1e-37,
                seed: Some(1),
                ..Default::default()
            },
            &[],
        );
        assert_eq!(s.params().temperature, 1e-37);
        assert_eq!(s.sample(&mut logits(), None).id, 1);
        // A repetition penalty so small that a penalised logit overflows: the logit becomes
        // the largest finite one and wins (before: an infinite maximum, NaN weights, token 0),
        // and log-probabilities stay finite.
        for top_k in [0, 3] {
            let params = SamplingParams {
                temperature: 1.0,
                top_k,
                repetition_penalty: f32::from_bits(1),
                seed: Some(2),
                ..Default::default()
            };
            let mut s = Sampler::new(params, &[2, 5]);
            for _ in 0..20 {
                let out = s.sample(&mut logits(), Some(2));
                assert_eq!(out.id, 2, "top_k {top_k}");
                assert!(out.logprob.is_some_and(f32::is_finite), "{out:?}");
                assert!(out.top_logprobs.iter().all(|t| t.logprob.is_finite()), "{out:?}");
            }
        }
    }

    #[test]
    fn validation_rejects_out_of_range() {
        assert!(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
