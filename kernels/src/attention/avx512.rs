//! AVX-512 attention kernel: `G` query heads × `C` 16-lane chunks of the head dimension, all
//! accumulators in registers.

// Register-tile loops index several accumulator arrays in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{Ctx, RowJob, TILE, tile_offsets};
use crate::math::{exp_approx, exp512};

/// 16-position score vectors per softmax update.
const SUB: usize = 4;
/// Positions per softmax update (amortises its latency chain).
const BIG: usize = TILE * SUB;

/// Signature of a monomorphised kernel.
pub(super) type AttendFn = unsafe fn(&Ctx<'_>, &RowJob<'_>);

/// Heads per call for a head size this module has kernels for (accumulators fit in 16 `zmm`).
pub(super) fn max_group(head_dim: usize) -> Option<usize> {
    match head_dim {
        32 | 64 => Some(4),
        128 => Some(2),
        _ => None,
    }
}

/// The kernel for `n_g` heads of `head_dim`, if there is one.
pub(super) fn kernel(head_dim: usize, n_g: usize) -> Option<AttendFn> {
    Some(match (head_dim, n_g) {
        (32, 1) => attend::<1, 2>,
        (32, 2) => attend::<2, 2>,
        (32, 3) => attend::<3, 2>,
        (32, 4) => attend::<4, 2>,
        (64, 1) => attend::<1, 4>,
        (64, 2) => attend::<2, 4>,
        (64, 3) => attend::<3, 4>,
        (64, 4) => attend::<4, 4>,
        (128, 1) => attend::<1, 8>,
        (128, 2) => attend::<2, 8>,
        _ => return None,
    })
}

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
/// many exclusive writes (or the partial slot for `G` heads), and the block table was validated
/// against the cache.
#[target_feature(enable = "avx512f,fma")]
unsafe fn attend<const G: usize, const C: usize>(ctx: &Ctx<'_>, job: &RowJob<'_>) {
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
    let mut offs = [0usize; BIG];
    let mut p = [[0.0f32; BIG]; G];
    let mut pos = job.pos.start;
    while pos < job.pos.end {
        let tn = (job.pos.end - pos).min(BIG);
        tile_offsets(ctx, job, pos, tn, &mut offs);
        let n_sub = tn.div_ceil(TILE);
        let mut masks = [0 as __mmask16; SUB];
        for (j, mk) in masks.iter_mut().enumerate().take(n_sub) {
            *mk = ((1u32 << (tn - j * TILE).min(TILE)) - 1) as __mmask16;
        }
        for g in 0..G {
            // Scores of up to `BIG` positions, 16 per vector (masked lanes are -inf).
            let mut sv = [_mm512_set1_ps(f32::NEG_INFINITY); SUB];
            for j in 0..n_sub {
                let mut d = [_mm512_setzero_ps(); TILE];
                for (di, &o) in d.iter_mut().zip(&offs[j * TILE..(j + 1) * TILE]) {
                    // SAFETY: `o` is the offset of a K row inside the validated cache (entries
                    // past `tn` repeat the first row), `hd` values long.
                    let k = unsafe { kp.add(o) };
                    let mut s = _mm512_setzero_ps();
                    for (c, &qc) in q[g].iter().enumerate() {
                        // SAFETY: see above; `16 * c + 16 <= hd`.
                        s = _mm512_fmadd_ps(qc, unsafe { _mm512_loadu_ps(k.add(16 * c)) }, s);
                    }
                    *di = s;
                }
                sv[j] = _mm512_mask_mov_ps(sv[j], masks[j], hsum16(&d));
            }
            let tmax = _mm512_max_ps(_mm512_max_ps(sv[0], sv[1]), _mm512_max_ps(sv[2], sv[3]));
            let m_new = m[g].max(_mm512_reduce_max_ps(tmax));
            let corr = exp_approx(m[g] - m_new);
            let mv = _mm512_set1_ps(m_new);
            let mut lsum = _mm512_setzero_ps();
            for j in 0..n_sub {
                let pv = _mm512_maskz_mov_ps(masks[j], exp512(_mm512_sub_ps(sv[j], mv)));
                lsum = _mm512_add_ps(lsum, pv);
                // SAFETY: `p[g]` holds `BIG = 16 · SUB` floats and `j < SUB`.
                unsafe { _mm512_storeu_ps(p[g].as_mut_ptr().add(j * TILE), pv) };
            }
            l[g] = l[g] * corr + _mm512_reduce_add_ps(lsum);
            m[g] = m_new;
            if corr != 1.0 {
                let cv = _mm512_set1_ps(corr);
                for a in acc[g].iter_mut() {
                    *a = _mm512_mul_ps(*a, cv);
                }
            }
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
    if let Some(part) = job.partial {
        for g in 0..G {
            // SAFETY: the partial slot holds `G × hd` accumulators and `G` maxima and
            // denominators, exclusively ours (caller contract).
            unsafe {
                for c in 0..C {
                    _mm512_storeu_ps(part.acc.add(g * hd + 16 * c), acc[g][c]);
                }
                *part.m.add(g) = m[g];
                *part.l.add(g) = l[g];
            }
        }
        return;
    }
    for g in 0..G {
        let inv = _mm512_set1_ps(1.0 / l[g]);
        for c in 0..C {
            // SAFETY: `job.out` is valid for `G × hd` exclusive writes (caller contract).
            unsafe { _mm512_storeu_ps(job.out.add(g * hd + 16 * c), _mm512_mul_ps(acc[g][c], inv)) };
        }
    }
}
