//! Vectorisable `exp` approximations (Cephes `expf` polynomial, about 1–2 ulp).
//!
//! `exp(x) = 2^n · e^r` with `n = round(x · log2 e)` and `|r| ≤ ln2 / 2`; `e^r` is a degree-7
//! polynomial. The portable version is branch-free so loops over it auto-vectorise.

/// Below this `exp` underflows to 0 (the smallest normal f32 is `e^-87.34`).
const EXP_LO: f32 = -87.336_55;
/// Above this the portable version returns +inf (`2^n` would need `n > 127`).
const EXP_HI: f32 = 88.376_26;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in a part with few mantissa bits (exact products) and a correction.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P0: f32 = 1.987_569_1e-4;
const P1: f32 = 1.398_2e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5;

/// `e^x` for f32, written to auto-vectorise (no branches, no libm call).
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    let xc = x.clamp(EXP_LO, EXP_HI);
    // Round to nearest with the 1.5·2^23 trick; the low mantissa bits of `t` hold `n`.
    let t = xc * LOG2E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = P0;
    p = p * r + P1;
    p = p * r + P2;
    p = p * r + P3;
    p = p * r + P4;
    p = p * r + P5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let e = y * scale;
    let e = if x < EXP_LO { 0.0 } else { e };
    let e = if x > EXP_HI { f32::INFINITY } else { e };
    // NaN in, NaN out (the clamps above would hide it).
    if x.is_nan() { x } else { e }
}

/// 16-lane `e^x` with AVX-512 (`vscalefps` applies `2^n`, so the full range works: large
/// inputs overflow to +inf, small ones underflow to 0 or a denormal).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0)), _mm512_set1_ps(89.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        xc,
        _mm512_set1_ps(LOG2E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(P0);
    for c in [P1, P2, P3, P4, P5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(a: f32, b: f32) -> f32 {
        if a == b {
            0.0
        } else {
            (a - b).abs() / b.abs().max(f32::MIN_POSITIVE)
        }
    }

    #[test]
    fn exp_approx_accuracy() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            assert!(
                rel_err(exp_approx(x), want) < 3e-7,
                "x {x}: {} vs {want}",
                exp_approx(x)
            );
            x += 0.0137;
        }
        assert_eq!(exp_approx(0.0), 1.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-1000.0), 0.0);
        assert_eq!(exp_approx(f32::INFINITY), f32::INFINITY);
        assert!(exp_approx(f32::NAN).is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp512_accuracy() {
        use std::arch::x86_64::*;
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let xs: Vec<f32> = (0..16 * 800).map(|i| -87.0 + i as f32 * 0.0137).collect();
        for chunk in xs.chunks_exact(16) {
            let mut out = [0.0f32; 16];
            // SAFETY: AVX-512F was detected; `chunk` and `out` hold 16 f32 each.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &e) in chunk.iter().zip(&out) {
                let want = (x as f64).exp() as f32;
                assert!(rel_err(e, want) < 3e-7, "x {x}: {e} vs {want}");
            }
        }
        let mut out = [0.0f32; 16];
        // SAFETY: AVX-512F was detected; `out` holds 16 f32.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_set1_ps(f32::NEG_INFINITY)));
        }
        assert!(out[0] < 1e-44);
    }
}
