//! Portable kernels over the same panel layout (the compiler may auto-vectorise the 16 lanes).

use std::ops::Range;

use super::{Args, PANEL};

/// Widens a bf16 bit pattern to f32 (exact).
#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Computes the output panels in `panels` for all tokens, one 16-row accumulator per token.
///
/// # Safety
/// `a` must describe valid buffers and `panels` lie within the matrix.
pub(super) unsafe fn matmul_panels(a: &Args, panels: Range<usize>) {
    let (k, pe) = (a.k, a.panel_elems());
    // SAFETY: the caller guarantees `m × k` activations behind `x`.
    let x = unsafe { std::slice::from_raw_parts(a.x, a.m * k) };
    let bias =
        // SAFETY: a non-null bias holds `n` values (caller contract).
        if a.bias.is_null() { None } else { Some(unsafe { std::slice::from_raw_parts(a.bias, a.n) }) };
    for p in panels {
        // SAFETY: panel `p` lies within the packed buffer: `pe` elements at offset `p * pe`.
        let (w16, w32) = unsafe {
            if a.bf16 {
                (
                    std::slice::from_raw_parts(a.w.cast::<u16>().add(p * pe), pe),
                    &[][..],
                )
            } else {
                (
                    &[][..],
                    std::slice::from_raw_parts(a.w.cast::<f32>().add(p * pe), pe),
                )
            }
        };
        let valid = a.valid_rows(p);
        for t in 0..a.m {
            let xt = &x[t * k..(t + 1) * k];
            let mut acc = [0.0f32; PANEL];
            if a.bf16 {
                for (&xv, col) in xt.iter().zip(w16.chunks_exact(PANEL)) {
                    for (acc_r, &w) in acc.iter_mut().zip(col) {
                        *acc_r += xv * bf16_to_f32(w);
                    }
                }
            } else {
                for (&xv, col) in xt.iter().zip(w32.chunks_exact(PANEL)) {
                    for (acc_r, &w) in acc.iter_mut().zip(col) {
                        *acc_r += xv * w;
                    }
                }
            }
            let n0 = p * PANEL;
            for (r, &v) in acc.iter().enumerate().take(valid) {
                let b = bias.map_or(0.0, |b| b[n0 + r]);
                // SAFETY: `t < m` and `n0 + r < n`; this thread owns panel `p` of every row.
                unsafe { *a.y.add(t * a.n + n0 + r) = v + b };
            }
        }
    }
}
