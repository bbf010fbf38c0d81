//! Element-wise transformer ops on f32 rows: RMSNorm, RoPE, SiLU·up, softmax, residual add.
//!
//! Each op is written as plain loops over fixed-width lane arrays that the compiler
//! auto-vectorises, compiled three times (baseline, AVX2+FMA, AVX-512) and dispatched on the ISA
//! selected once per process.

#[cfg(target_arch = "x86_64")]
use crate::isa::{self, Isa};
use crate::math::exp_approx;

/// Lanes of the partial sums (one `zmm`); keeps reductions vectorisable and deterministic.
const LANES: usize = 16;

/// Defines `pub fn $name` dispatching to AVX-512 / AVX2 builds of the inline body `$body`.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn v512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v256($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match isa::selected() {
                    Isa::Avx512 => {
                        // SAFETY: the selected ISA was checked to be available on this CPU.
                        return unsafe { v512($($arg),*) };
                    }
                    Isa::Avx2 => {
                        // SAFETY: the selected ISA was checked to be available on this CPU.
                        return unsafe { v256($($arg),*) };
                    }
                    Isa::Scalar => {}
                }
            }
            $body($($arg),*)
        }
    };
}

/// Sum of squares with [`LANES`] partial sums.
#[inline(always)]
fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += v * v;
    }
    acc.iter().sum()
}

#[inline(always)]
fn rms_norm_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        weight.len() == x.len() && out.len() == x.len(),
        "rms_norm: length mismatch"
    );
    if x.is_empty() {
        return;
    }
    let inv = 1.0 / (sum_squares(x) / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}

multiversion! {
    /// RMSNorm of one row: `out[i] = x[i] / sqrt(mean(x²) + eps) · weight[i]` (call once per
    /// token).
    ///
    /// # Panics
    /// If `weight` or `out` differ in length from `x`.
    pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) => rms_norm_body
}

#[inline(always)]
fn silu_mul_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        up.len() == gate.len() && out.len() == gate.len(),
        "silu_mul: length mismatch"
    );
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_approx(-g)) * u;
    }
}

multiversion! {
    /// SwiGLU activation: `out[i] = silu(gate[i]) · up[i]` with `silu(g) = g / (1 + e^-g)`.
    ///
    /// # Panics
    /// If `up` or `out` differ in length from `gate`.
    pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) => silu_mul_body
}

#[inline(always)]
fn softmax_body(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let mut mx = [f32::NEG_INFINITY; LANES];
    for c in x.chunks(LANES) {
        for (m, &v) in mx.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if max == f32::NEG_INFINITY {
        // Every entry is -inf: no information, return the uniform distribution.
        x.fill(1.0 / x.len() as f32);
        return;
    }
    let mut sum = [0.0f32; LANES];
    for c in x.chunks_mut(LANES) {
        for (s, v) in sum.iter_mut().zip(c) {
            *v = exp_approx(*v - max);
            *s += *v;
        }
    }
    let inv = 1.0 / sum.iter().sum::<f32>();
    for v in x.iter_mut() {
        *v *= inv;
    }
}

multiversion! {
    /// Numerically stable softmax of `x` in place (max subtracted first). An all `-inf` row
    /// becomes uniform; empty input is a no-op.
    pub fn softmax_inplace(x: &mut [f32]) => softmax_body
}

#[inline(always)]
fn add_body(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_inplace: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

multiversion! {
    /// Residual add: `dst[i] += src[i]`.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn add_inplace(dst: &mut [f32], src: &[f32]) => add_body
}

/// Rotary position embedding tables (`cos` / `sin` of `pos · inv_freq[j]`) for NeoX / Hugging
/// Face `rotate_half` style RoPE, where dimension `j` pairs with `j + head_dim / 2`.
pub struct RopeTable {
    head_dim: usize,
    max_pos: usize,
    /// `max_pos × head_dim / 2` cosines.
    cos: Vec<f32>,
    /// `max_pos × head_dim / 2` sines.
    sin: Vec<f32>,
}

impl std::fmt::Debug for RopeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RopeTable")
            .field("head_dim", &self.head_dim)
            .field("max_pos", &self.max_pos)
            .finish()
    }
}

impl RopeTable {
    /// The cosines, `max_pos × head_dim / 2`, row-major by position.
    pub fn cos(&self) -> &[f32] {
        &self.cos
    }

    /// The sines, laid out like [`RopeTable::cos`].
    pub fn sin(&self) -> &[f32] {
        &self.sin
    }

    /// Builds tables for positions `0..max_pos`. `inv_freq` has `head_dim / 2` entries
    /// (`1 / base^(2j / head_dim)`, possibly rescaled, e.g. llama3 scaling, by the caller). The
    /// angle `pos · inv_freq[j]` is rounded to f32 like the Hugging Face reference, then its
    /// cosine and sine are taken in f64.
    ///
    /// # Panics
    /// If `head_dim` is odd or `inv_freq.len() != head_dim / 2`.
    pub fn new(head_dim: usize, max_pos: usize, inv_freq: &[f32]) -> RopeTable {
        assert!(
            head_dim.is_multiple_of(2),
            "RopeTable: head_dim {head_dim} must be even"
        );
        let half = head_dim / 2;
        assert_eq!(
            inv_freq.len(),
            half,
            "RopeTable: inv_freq must have head_dim / 2 entries"
        );
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for pos in 0..max_pos {
            for &f in inv_freq {
                let angle = f64::from(pos as f32 * f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable {
            head_dim,
            max_pos,
            cos,
            sin,
        }
    }

    /// Head dimension the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Number of positions covered (`0..max_pos`).
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// Rotates `n_heads` consecutive heads of `x` (`n_heads × head_dim`) in place for position
    /// `pos`: `(a, b) ← (a·cos − b·sin, b·cos + a·sin)` for each pair `(j, j + head_dim / 2)`.
    ///
    /// # Panics
    /// If `pos >= max_pos` or `x` is shorter than `n_heads × head_dim`.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos: usize) {
        assert!(
            pos < self.max_pos,
            "RopeTable: position {pos} >= max_pos {}",
            self.max_pos
        );
        let half = self.head_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        rope_heads(&mut x[..n_heads * self.head_dim], cos, sin);
    }
}

#[inline(always)]
fn rope_body(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    if half == 0 {
        return;
    }
    for head in x.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            let (x1, x2) = (*a, *b);
            *a = x1 * c - x2 * s;
            *b = x2 * c + x1 * s;
        }
    }
}

multiversion! {
    /// Applies one position's rotation to every head in `x`.
    pub fn rope_heads(x: &mut [f32], cos: &[f32], sin: &[f32]) => rope_body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 250.0 - 4.0)
            .collect()
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn rms_norm_matches_naive() {
        for n in [1usize, 5, 16, 17, 576] {
            let x = vals(n, 1);
            let w = vals(n, 2);
            let mut out = vec![0.0; n];
            rms_norm(&x, &w, 1e-5, &mut out);
            let ms: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            for i in 0..n {
                let want = (f64::from(x[i]) * inv * f64::from(w[i])) as f32;
                assert!(close(out[i], want, 1e-5), "{n} {i}: {} vs {want}", out[i]);
            }
        }
    }

    #[test]
    fn silu_mul_matches_naive() {
        let n = 1536 + 3;
        let g = vals(n, 3).iter().map(|v| v * 5.0).collect::<Vec<_>>();
        let u = vals(n, 4);
        let mut out = vec![0.0; n];
        silu_mul(&g, &u, &mut out);
        for i in 0..n {
            let gi = f64::from(g[i]);
            let want = (gi / (1.0 + (-gi).exp()) * f64::from(u[i])) as f32;
            assert!(close(out[i], want, 1e-6), "{i}: {} vs {want}", out[i]);
        }
        let mut o = [0.0; 2];
        silu_mul(&[-200.0, 200.0], &[1.0, 1.0], &mut o);
        assert_eq!(o, [0.0, 200.0]);
    }

    #[test]
    fn softmax_matches_naive() {
        for n in [1usize, 3, 16, 33, 1000] {
            let mut x: Vec<f32> = vals(n, 5).iter().map(|v| v * 10.0).collect();
            if n > 2 {
                x[1] = f32::NEG_INFINITY;
            }
            let mx = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
            let e: Vec<f64> = x.iter().map(|&v| (f64::from(v) - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            softmax_inplace(&mut x);
            for i in 0..n {
                assert!(close(x[i], (e[i] / s) as f32, 1e-6), "{n} {i}");
            }
            if n > 2 {
                assert_eq!(x[1], 0.0);
            }
        }
        let mut all_masked = [f32::NEG_INFINITY; 4];
        softmax_inplace(&mut all_masked);
        assert_eq!(all_masked, [0.25; 4]);
        softmax_inplace(&mut []);
    }

    #[test]
    fn add_inplace_adds() {
        let mut a = vals(37, 6);
        let b = vals(37, 7);
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        add_inplace(&mut a, &b);
        assert_eq!(a, want);
    }

    #[test]
    fn rope_matches_naive_rotate_half() {
        let (hd, nh, max_pos) = (64usize, 3usize, 50usize);
        let inv: Vec<f32> = (0..hd / 2)
            .map(|j| 1.0 / 10000f32.powf(2.0 * j as f32 / hd as f32))
            .collect();
        let table = RopeTable::new(hd, max_pos, &inv);
        assert_eq!((table.head_dim(), table.max_pos()), (hd, max_pos));
        for pos in [0usize, 1, 17, 49] {
            let x = vals(nh * hd, pos as u32);
            let mut got = x.clone();
            table.apply(&mut got, nh, pos);
            for h in 0..nh {
                let q = &x[h * hd..(h + 1) * hd];
                for i in 0..hd {
                    // HF: q * cos + rotate_half(q) * sin, cos/sin = cat(freqs, freqs).
                    let j = i % (hd / 2);
                    let ang = f64::from(pos as f32 * inv[j]);
                    let rot = if i < hd / 2 {
                        -f64::from(q[i + hd / 2])
                    } else {
                        f64::from(q[i - hd / 2])
                    };
                    let want = (f64::from(q[i]) * ang.cos() + rot * ang.sin()) as f32;
                    assert!(close(got[h * hd + i], want, 1e-6), "pos {pos} h {h} i {i}");
                }
            }
        }
    }
}
