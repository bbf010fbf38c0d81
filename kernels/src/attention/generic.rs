//! Portable attention kernel (any head size), also compiled for AVX2 and AVX-512.

use super::{Ctx, MAX_HEAD_DIM, RowJob, TILE, tile_offsets};
use crate::math::exp_approx;

/// Query heads one call handles.
pub(super) const MAX_GROUP: usize = 8;

/// [`attend`] compiled for AVX-512.
///
/// # Safety
/// As [`attend`], and the CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn attend_avx512(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    // SAFETY: forwarded.
    unsafe { attend(ctx, job) }
}

/// [`attend`] compiled for AVX2.
///
/// # Safety
/// As [`attend`], and the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn attend_avx2(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    // SAFETY: forwarded.
    unsafe { attend(ctx, job) }
}

/// Streaming-softmax attention of up to [`MAX_GROUP`] heads over `job.pos`.
///
/// # Safety
/// `job.out` (or the partial slot) must be valid for exclusive writes of this chunk's results,
/// `job.n_g <= MAX_GROUP`, and the block table must have been validated against the cache.
#[inline(always)]
pub(super) unsafe fn attend(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    let hd = ctx.kv.head_dim;
    let n_g = job.n_g;
    let mut q = [0.0f32; MAX_GROUP * MAX_HEAD_DIM];
    let mut acc = [0.0f32; MAX_GROUP * MAX_HEAD_DIM];
    for (d, &s) in q.iter_mut().zip(job.q) {
        *d = s * ctx.scale;
    }
    let mut m = [f32::NEG_INFINITY; MAX_GROUP];
    let mut l = [0.0f32; MAX_GROUP];
    let mut offs = [0usize; TILE];
    let mut p = [[0.0f32; TILE]; MAX_GROUP];
    let mut pos = job.pos.start;
    while pos < job.pos.end {
        let tn = (job.pos.end - pos).min(TILE);
        tile_offsets(ctx, job, pos, tn, &mut offs);
        for g in 0..n_g {
            let qg = &q[g * hd..(g + 1) * hd];
            let pg = &mut p[g];
            for (s, &o) in pg.iter_mut().zip(&offs).take(tn) {
                *s = dot(qg, &ctx.kv.k[o..o + hd]);
            }
            let tmax = pg[..tn].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let m_new = m[g].max(tmax);
            let corr = exp_approx(m[g] - m_new);
            let mut sum = 0.0;
            for s in pg[..tn].iter_mut() {
                *s = exp_approx(*s - m_new);
                sum += *s;
            }
            l[g] = l[g] * corr + sum;
            m[g] = m_new;
            if corr != 1.0 {
                for a in &mut acc[g * hd..(g + 1) * hd] {
                    *a *= corr;
                }
            }
        }
        for (i, &o) in offs.iter().enumerate().take(tn) {
            let vr = &ctx.kv.v[o..o + hd];
            for (g, pg) in p.iter().enumerate().take(n_g) {
                let w = pg[i];
                for (a, &v) in acc[g * hd..(g + 1) * hd].iter_mut().zip(vr) {
                    *a += w * v;
                }
            }
        }
        pos += tn;
    }
    if let Some(part) = job.partial {
        // SAFETY: the partial slot holds `n_g × hd` accumulators and `n_g` maxima and
        // denominators for this chunk, exclusively ours (caller contract).
        unsafe {
            std::ptr::copy_nonoverlapping(acc.as_ptr(), part.acc, n_g * hd);
            std::ptr::copy_nonoverlapping(m.as_ptr(), part.m, n_g);
            std::ptr::copy_nonoverlapping(l.as_ptr(), part.l, n_g);
        }
        return;
    }
    // SAFETY: `out` is valid for `n_g × hd` exclusive writes (caller contract).
    let out = unsafe { std::slice::from_raw_parts_mut(job.out, n_g * hd) };
    for g in 0..n_g {
        let inv = 1.0 / l[g];
        for (o, &a) in out[g * hd..(g + 1) * hd].iter_mut().zip(&acc[g * hd..]) {
            *o = a * inv;
        }
    }
}

/// Dot product with 8 partial sums (vectorisable).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
