//! AVX-512 attention kernel: `G` query heads × `C` 16-lane chunks of the head dimension, all
//! accumulators in registers.

// Register-tile loops index several accumulator arrays in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{Ctx, RowJob, TILE, tile_offsets};
use crate::math::{exp_approx, exp512};

/// Signature of a monomorphised kernel.
pub(super) type AttendFn = unsafe fn(&Ctx<'_>, &RowJob<'_>);

/// Reduces 16 vectors to one: lane `i` of the result is the sum of the lanes of `d[i]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn hsum16(d: &[__m512; 16]) -> __m512 {
    let mut t = [_mm512_setzero_ps(); 8];
    for (j, t) in t.iter_mut().enumerate() {
        let (a, b) = (d[2 * j], d[2 * j + 1]);
        // Per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3].
        *t = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    let mut u = [_mm512_setzero_ps(); 4];
    for (j, u) in u.iter_mut().enumerate() {
        let (a, b) = (t[2 * j], t[2 * j + 1]);
        // Per 128-bit block q: the block-q sums of d[4j], d[4j+1], d[4j+2], d[4j+3].
        *u = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
        );
    }
    let fold = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    };
    let w0 = fold(u[0], u[1]);
    let w1 = fold(u[2], u[3]);
    fold(w0, w1)
}

/// Attention of `G` query heads (head size `16 · C`) for one query row.
///
/// # Safety
/// AVX-512F and FMA must be available; `job.q` holds `G × 16C` values, `job.out` is valid for as
/// many exclusive writes, and the block table was validated against the cache.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn attend<const G: usize, const C: usize>(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    let hd = 16 * C;
    debug_assert!(job.n_g == G && ctx.kv.head_dim == hd && job.q.len() >= G * hd);
    let (kp, vp) = (ctx.kv.k.as_ptr(), ctx.kv.v.as_ptr());
    let scale = _mm512_set1_ps(ctx.scale);
    let mut q = [[_mm512_setzero_ps(); C]; G];
    for (g, qg) in q.iter_mut().enumerate() {
        for (c, qc) in qg.iter_mut().enumerate() {
            // SAFETY: `job.q` holds `G × hd` values.
            *qc = _mm512_mul_ps(
                unsafe { _mm512_loadu_ps(job.q.as_ptr().add(g * hd + 16 * c)) },
                scale,
            );
        }
    }
    let mut acc = [[_mm512_setzero_ps(); C]; G];
    let mut m = [f32::NEG_INFINITY; G];
    let mut l = [0.0f32; G];
    let mut offs = [0usize; TILE];
    let mut p = [[0.0f32; TILE]; G];
    let mut pos = 0;
    while pos < job.n_ctx {
        let tn = (job.n_ctx - pos).min(TILE);
        tile_offsets(ctx, job, pos, tn, &mut offs);
        let mask: __mmask16 = ((1u32 << tn) - 1) as __mmask16;
        for g in 0..G {
            let mut d = [_mm512_setzero_ps(); TILE];
            for (di, &o) in d.iter_mut().zip(&offs) {
                // SAFETY: `o` is the offset of a K row inside the validated cache (lanes past
                // `tn` repeat the first row), `hd` values long.
                let k = unsafe { kp.add(o) };
                let mut s = _mm512_setzero_ps();
                for (c, &qc) in q[g].iter().enumerate() {
                    // SAFETY: see above; `16 * c + 16 <= hd`.
                    s = _mm512_fmadd_ps(qc, unsafe { _mm512_loadu_ps(k.add(16 * c)) }, s);
                }
                *di = s;
            }
            let s = _mm512_mask_mov_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask, hsum16(&d));
            let m_new = m[g].max(_mm512_reduce_max_ps(s));
            let corr = exp_approx(m[g] - m_new);
            let pv = _mm512_maskz_mov_ps(mask, exp512(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
            l[g] = l[g] * corr + _mm512_reduce_add_ps(pv);
            m[g] = m_new;
            if corr != 1.0 {
                let cv = _mm512_set1_ps(corr);
                for a in acc[g].iter_mut() {
                    *a = _mm512_mul_ps(*a, cv);
                }
            }
            // SAFETY: `p[g]` holds 16 f32.
            unsafe { _mm512_storeu_ps(p[g].as_mut_ptr(), pv) };
        }
        for (i, &o) in offs.iter().enumerate().take(tn) {
            let mut v = [_mm512_setzero_ps(); C];
            for (c, vc) in v.iter_mut().enumerate() {
                // SAFETY: `o` is the offset of a V row inside the validated cache.
                *vc = unsafe { _mm512_loadu_ps(vp.add(o + 16 * c)) };
            }
            for g in 0..G {
                let w = _mm512_set1_ps(p[g][i]);
                for c in 0..C {
                    acc[g][c] = _mm512_fmadd_ps(w, v[c], acc[g][c]);
                }
            }
        }
        pos += tn;
    }
    for g in 0..G {
        let inv = _mm512_set1_ps(1.0 / l[g]);
        for c in 0..C {
            // SAFETY: `job.out` is valid for `G × hd` exclusive writes (caller contract).
            unsafe { _mm512_storeu_ps(job.out.add(g * hd + 16 * c), _mm512_mul_ps(acc[g][c], inv)) };
        }
    }
}
