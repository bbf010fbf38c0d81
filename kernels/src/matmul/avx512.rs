//! AVX-512F kernels: one 16-lane `zmm` per panel column.

// Register-tile loops index several accumulator arrays in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::Args;

/// Panels in flight in the GEMV (2 accumulators each: 8 independent FMA chains).
const GEMV_PANELS: usize = 4;
/// Tokens per GEMM register tile (× 2 panels = 16 accumulators).
const GEMM_TOKENS: usize = 8;

/// Loads the 16 weights at element offset `idx` as f32 (bf16 widened by a 16-bit shift).
///
/// # Safety
/// `w + idx` must be valid for 16 elements of the weight type.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_w<const BF16: bool>(w: *const u8, idx: usize) -> __m512 {
    if BF16 {
        // SAFETY: 16 bf16 = 32 readable bytes at `w + 2 * idx` (caller contract).
        let raw = unsafe { _mm256_loadu_si256(w.add(idx * 2).cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: 16 f32 = 64 readable bytes at `w + 4 * idx` (caller contract).
        unsafe { _mm512_loadu_ps(w.add(idx * 4).cast()) }
    }
}

/// Adds the bias and stores the 16 outputs of `panel` for token `t`, masking padding rows.
///
/// # Safety
/// `a` must be valid, `panel` within the matrix and `t < a.m`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_panel(a: &Args, t: usize, panel: usize, mut v: __m512) {
    let n0 = panel * super::PANEL;
    let mask: __mmask16 = ((1u32 << a.valid_rows(panel)) - 1) as __mmask16;
    // SAFETY: masked lanes are neither read nor written, so only `bias[n0..n0 + valid]` and
    // `y[t * n + n0..][..valid]` are touched, all in bounds (caller contract).
    unsafe {
        if !a.bias.is_null() {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.bias.add(n0)));
        }
        _mm512_mask_storeu_ps(a.y.add(t * a.n + n0), mask, v);
    }
}

/// Computes the output panels in `panels` for all tokens.
///
/// # Safety
/// `a` must describe valid buffers and `panels` lie within the matrix; the CPU must support
/// AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
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
#[target_feature(enable = "avx512f,fma")]
unsafe fn gemv<const BF16: bool>(a: &Args, panels: Range<usize>) {
    let mut p = panels.start;
    // SAFETY: every block lies within `panels` (caller contract).
    unsafe {
        while p + GEMV_PANELS <= panels.end {
            gemv_block::<BF16, GEMV_PANELS>(a, p);
            p += GEMV_PANELS;
        }
        match panels.end - p {
            3 => gemv_block::<BF16, 3>(a, p),
            2 => gemv_block::<BF16, 2>(a, p),
            1 => gemv_block::<BF16, 1>(a, p),
            _ => {}
        }
    }
}

/// GEMV for the `P` panels starting at `p0`: two accumulators per panel (even / odd `k`).
///
/// # Safety
/// As [`gemv`], with `p0 + P` within the matrix.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn gemv_block<const BF16: bool, const P: usize>(a: &Args, p0: usize) {
    let (k, pe) = (a.k, a.panel_elems());
    let mut acc0 = [_mm512_setzero_ps(); P];
    let mut acc1 = [_mm512_setzero_ps(); P];
    let base = p0 * pe;
    let mut kk = 0;
    // SAFETY: `kk + 1 < k` inside the loop, so x[kk + 1] and the weights at panel offset
    // `(kk + 1) * 16 + 15 < pe` are in bounds for every panel `p0 + j < p0 + P`.
    unsafe {
        while kk + 2 <= k {
            let x0 = _mm512_set1_ps(*a.x.add(kk));
            let x1 = _mm512_set1_ps(*a.x.add(kk + 1));
            for j in 0..P {
                let off = base + j * pe + kk * 16;
                acc0[j] = _mm512_fmadd_ps(load_w::<BF16>(a.w, off), x0, acc0[j]);
                acc1[j] = _mm512_fmadd_ps(load_w::<BF16>(a.w, off + 16), x1, acc1[j]);
            }
            kk += 2;
        }
        if kk < k {
            let x0 = _mm512_set1_ps(*a.x.add(kk));
            for j in 0..P {
                acc0[j] = _mm512_fmadd_ps(load_w::<BF16>(a.w, base + j * pe + kk * 16), x0, acc0[j]);
            }
        }
        for j in 0..P {
            store_panel(a, 0, p0 + j, _mm512_add_ps(acc0[j], acc1[j]));
        }
    }
}

/// GEMM over a panel range: panel pairs outer, token blocks of [`GEMM_TOKENS`] inner, so a
/// panel pair is streamed from memory once and then reused from cache.
///
/// # Safety
/// As [`matmul_panels`].
#[target_feature(enable = "avx512f,fma")]
unsafe fn gemm<const BF16: bool>(a: &Args, panels: Range<usize>) {
    let mut p = panels.start;
    while p < panels.end {
        let np = (panels.end - p).min(2);
        let mut t = 0;
        while t < a.m {
            let mt = (a.m - t).min(GEMM_TOKENS);
            // SAFETY: panels `p..p + np` and tokens `t..t + mt` are within the call's shape.
            unsafe { gemm_tile_fn::<BF16>(np, mt)(a, p, t) };
            t += mt;
        }
        p += np;
    }
}

/// A GEMM tile kernel: `(args, first panel, first token)`.
type TileFn = unsafe fn(&Args, usize, usize);

/// Picks the register-tile kernel for `np` panels (1 or 2) × `mt` tokens (1..=8).
fn gemm_tile_fn<const BF16: bool>(np: usize, mt: usize) -> TileFn {
    macro_rules! pick {
        ($($mm:literal),*) => {
            match (np, mt) {
                $( (2, $mm) => gemm_tile::<BF16, 2, $mm> as TileFn,
                   (_, $mm) => gemm_tile::<BF16, 1, $mm> as TileFn, )*
                _ => unreachable!("no GEMM tile for {np} panels x {mt} tokens"),
            }
        };
    }
    pick!(1, 2, 3, 4, 5, 6, 7, 8)
}

/// Register tile: `P` panels × `M` tokens, accumulated over all of `k`.
///
/// # Safety
/// As [`gemm`], with panels `p0..p0 + P` and tokens `t0..t0 + M` in bounds.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn gemm_tile<const BF16: bool, const P: usize, const M: usize>(a: &Args, p0: usize, t0: usize) {
    let (k, pe) = (a.k, a.panel_elems());
    let mut acc = [[_mm512_setzero_ps(); P]; M];
    // SAFETY: `t0 + M <= m`, so rows `t0..t0 + M` of x exist (k elements each).
    let x = unsafe { a.x.add(t0 * k) };
    let base = p0 * pe;
    // SAFETY: `kk < k`: weight offsets stay within panels `p0..p0 + P`, x offsets within the
    // token rows of the tile.
    unsafe {
        for kk in 0..k {
            let mut wv = [_mm512_setzero_ps(); P];
            for (j, w) in wv.iter_mut().enumerate() {
                *w = load_w::<BF16>(a.w, base + j * pe + kk * 16);
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*x.add(t * k + kk));
                for j in 0..P {
                    acc_t[j] = _mm512_fmadd_ps(wv[j], xb, acc_t[j]);
                }
            }
        }
        for (t, acc_t) in acc.iter().enumerate() {
            for (j, &v) in acc_t.iter().enumerate() {
                store_panel(a, t0 + t, p0 + j, v);
            }
        }
    }
}
