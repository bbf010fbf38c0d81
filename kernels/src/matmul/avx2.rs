//! AVX2 + FMA kernels: each 16-row panel column is two 8-lane `ymm` halves.

// Register-tile loops index several accumulator arrays in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Args, PANEL};

/// Panels in flight in the GEMV (2 halves × 2 accumulators each: 8 FMA chains).
const GEMV_PANELS: usize = 2;
/// Tokens per GEMM register tile (× 1 panel × 2 halves = 12 accumulators).
const GEMM_TOKENS: usize = 6;

/// Loads 8 weights at element offset `idx` as f32 (bf16 widened by a 16-bit shift).
///
/// # Safety
/// `w + idx` must be valid for 8 elements of the weight type.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_w<const BF16: bool>(w: *const u8, idx: usize) -> __m256 {
    if BF16 {
        // SAFETY: 8 bf16 = 16 readable bytes at `w + 2 * idx` (caller contract).
        let raw = unsafe { _mm_loadu_si128(w.add(idx * 2).cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: 8 f32 = 32 readable bytes at `w + 4 * idx` (caller contract).
        unsafe { _mm256_loadu_ps(w.add(idx * 4).cast()) }
    }
}

/// Adds the bias and stores the outputs of `panel` (two halves) for token `t`; the padding rows
/// of a tail panel go through a stack array and are dropped.
///
/// # Safety
/// `a` must be valid, `panel` within the matrix and `t < a.m`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_panel(a: &Args, t: usize, panel: usize, lo: __m256, hi: __m256) {
    let n0 = panel * PANEL;
    let valid = a.valid_rows(panel);
    // SAFETY: with a full panel, `y[t * n + n0..][..16]` and `bias[n0..][..16]` are in bounds.
    unsafe {
        let y = a.y.add(t * a.n + n0);
        if valid == PANEL {
            let (mut lo, mut hi) = (lo, hi);
            if !a.bias.is_null() {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(a.bias.add(n0)));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(a.bias.add(n0 + 8)));
            }
            _mm256_storeu_ps(y, lo);
            _mm256_storeu_ps(y.add(8), hi);
            return;
        }
    }
    let mut tmp = [0.0f32; PANEL];
    // SAFETY: `tmp` holds 16 f32.
    unsafe {
        _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
    }
    for (r, &v) in tmp.iter().enumerate().take(valid) {
        // SAFETY: `r < valid`, so `n0 + r < n` indexes existing bias and output elements.
        unsafe {
            let b = if a.bias.is_null() {
                0.0
            } else {
                *a.bias.add(n0 + r)
            };
            *a.y.add(t * a.n + n0 + r) = v + b;
        }
    }
}

/// Computes the output panels in `panels` for all tokens.
///
/// # Safety
/// `a` must describe valid buffers and `panels` lie within the matrix; the CPU must support
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn matmul_panels(a: &Args, panels: Range<usize>) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match (a.m == 1, a.bf16) {
            (true, true) => gemv::<true>(a, panels),
            (true, false) => gemv::<false>(a, panels),
            (false, true) => gemm::<true>(a, panels),
            (false, false) => gemm::<false>(a, panels),
        }
    }
}

/// GEMV over a panel range, [`GEMV_PANELS`] at a time.
///
/// # Safety
/// As [`matmul_panels`], with `a.m == 1`.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv<const BF16: bool>(a: &Args, panels: Range<usize>) {
    let mut p = panels.start;
    // SAFETY: every block lies within `panels` (caller contract).
    unsafe {
        while p + GEMV_PANELS <= panels.end {
            gemv_block::<BF16, GEMV_PANELS>(a, p);
            p += GEMV_PANELS;
        }
        if p < panels.end {
            gemv_block::<BF16, 1>(a, p);
        }
    }
}

/// GEMV for the `P` panels starting at `p0`: per panel two halves × (even / odd `k`).
///
/// # Safety
/// As [`gemv`], with `p0 + P` within the matrix.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn gemv_block<const BF16: bool, const P: usize>(a: &Args, p0: usize) {
    let (k, pe) = (a.k, a.panel_elems());
    let z = _mm256_setzero_ps();
    let mut acc0 = [[z; 2]; P];
    let mut acc1 = [[z; 2]; P];
    let base = p0 * pe;
    let mut kk = 0;
    // SAFETY: `kk + 1 < k` inside the loop (`kk < k` in the tail), so every x and weight
    // offset stays within the row of x and the panels `p0..p0 + P`.
    unsafe {
        while kk + 2 <= k {
            let x0 = _mm256_set1_ps(*a.x.add(kk));
            let x1 = _mm256_set1_ps(*a.x.add(kk + 1));
            for j in 0..P {
                let off = base + j * pe + kk * 16;
                for h in 0..2 {
                    acc0[j][h] = _mm256_fmadd_ps(load_w::<BF16>(a.w, off + 8 * h), x0, acc0[j][h]);
                    acc1[j][h] = _mm256_fmadd_ps(load_w::<BF16>(a.w, off + 16 + 8 * h), x1, acc1[j][h]);
                }
            }
            kk += 2;
        }
        if kk < k {
            let x0 = _mm256_set1_ps(*a.x.add(kk));
            for j in 0..P {
                let off = base + j * pe + kk * 16;
                for h in 0..2 {
                    acc0[j][h] = _mm256_fmadd_ps(load_w::<BF16>(a.w, off + 8 * h), x0, acc0[j][h]);
                }
            }
        }
        for j in 0..P {
            let lo = _mm256_add_ps(acc0[j][0], acc1[j][0]);
            let hi = _mm256_add_ps(acc0[j][1], acc1[j][1]);
            store_panel(a, 0, p0 + j, lo, hi);
        }
    }
}

/// A GEMM tile kernel: `(args, panel, first token)`.
type TileFn = unsafe fn(&Args, usize, usize);

/// Picks the register-tile kernel for `mt` tokens (1..=6).
fn gemm_tile_fn<const BF16: bool>(mt: usize) -> TileFn {
    match mt {
        1 => gemm_tile::<BF16, 1>,
        2 => gemm_tile::<BF16, 2>,
        3 => gemm_tile::<BF16, 3>,
        4 => gemm_tile::<BF16, 4>,
        5 => gemm_tile::<BF16, 5>,
        6 => gemm_tile::<BF16, 6>,
        _ => unreachable!("no GEMM tile for {mt} tokens"),
    }
}

/// GEMM over a panel range: panels outer, token blocks of [`GEMM_TOKENS`] inner.
///
/// # Safety
/// As [`matmul_panels`].
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm<const BF16: bool>(a: &Args, panels: Range<usize>) {
    for p in panels {
        let mut t = 0;
        while t < a.m {
            let mt = (a.m - t).min(GEMM_TOKENS);
            // SAFETY: panel `p` and tokens `t..t + mt` are within the call's shape.
            unsafe { gemm_tile_fn::<BF16>(mt)(a, p, t) };
            t += mt;
        }
    }
}

/// Register tile: one panel (2 halves) × `M` tokens, accumulated over all of `k`.
///
/// # Safety
/// As [`gemm`], with panel `p` and tokens `t0..t0 + M` in bounds.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn gemm_tile<const BF16: bool, const M: usize>(a: &Args, p: usize, t0: usize) {
    let (k, pe) = (a.k, a.panel_elems());
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    // SAFETY: `t0 + M <= m`, so rows `t0..t0 + M` of x exist (k elements each).
    let x = unsafe { a.x.add(t0 * k) };
    let base = p * pe;
    // SAFETY: `kk < k`: weight offsets stay within panel `p`, x offsets within the tile's rows.
    unsafe {
        for kk in 0..k {
            let w0 = load_w::<BF16>(a.w, base + kk * 16);
            let w1 = load_w::<BF16>(a.w, base + kk * 16 + 8);
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let xb = _mm256_set1_ps(*x.add(t * k + kk));
                acc_t[0] = _mm256_fmadd_ps(w0, xb, acc_t[0]);
                acc_t[1] = _mm256_fmadd_ps(w1, xb, acc_t[1]);
            }
        }
        for (t, acc_t) in acc.iter().enumerate() {
            store_panel(a, t0 + t, p, acc_t[0], acc_t[1]);
        }
    }
}
