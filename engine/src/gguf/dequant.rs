//! Dequantization of ggml tensor data to `f32`.
//!
//! Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (the reference formulas of
//! ggml's `ggml-quants.c`). Anything else is an [`Error::Unsupported`] naming
//! the type.

use half::f16;

use super::reader::GgmlType;
use crate::error::{Error, Result};

/// Whether [`dequantize_into`] implements `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
    )
}

/// Dequantizes `data` (the raw bytes of `n_elements` values of type `ty`).
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    // Check before allocating so a bogus count cannot allocate.
    check_len(ty, data, n_elements)?;
    let mut out = vec![0f32; n_elements];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

fn check_len(ty: GgmlType, data: &[u8], n: usize) -> Result<()> {
    if !is_supported(ty) {
        return Err(Error::Unsupported {
            what: "GGUF tensor type for dequantization",
            name: ty.to_string(),
        });
    }
    let want = ty.row_size(n as u64).ok_or_else(|| {
        Error::format(
            "GGUF",
            format!(
                "{n} {ty} elements is not a whole number of {}-element blocks",
                ty.block_size()
            ),
        )
    })?;
    if data.len() as u64 != want {
        return Err(Error::format(
            "GGUF",
            format!("{n} {ty} elements need {want} bytes, got {}", data.len()),
        ));
    }
    Ok(())
}

#[inline]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `data` into `out` (whose length is the element count).
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    check_len(ty, data, out.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        GgmlType::Q8_0 => {
            // block: f16 d; i8 qs[32]
            for (y, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(34)) {
                let d = half_at(b, 0);
                for (o, &q) in y.iter_mut().zip(&b[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            // block: f16 d; u8 qs[16]; low nibbles = elements 0..16, high = 16..32
            for (y, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(18)) {
                let d = half_at(b, 0);
                let (lo, hi) = y.split_at_mut(16);
                for j in 0..16 {
                    let q = b[2 + j];
                    lo[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
                    hi[j] = (i32::from(q >> 4) - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            // block: f16 d; f16 m; u8 qs[16]; y = q*d + m, same nibble halves
            for (y, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(20)) {
                let d = half_at(b, 0);
                let m = half_at(b, 2);
                let (lo, hi) = y.split_at_mut(16);
                for j in 0..16 {
                    let q = b[4 + j];
                    lo[j] = f32::from(q & 0x0F) * d + m;
                    hi[j] = f32::from(q >> 4) * d + m;
                }
            }
        }
        // Rejected by check_len above.
        _ => {
            return Err(Error::Unsupported {
                what: "GGUF tensor type for dequantization",
                name: ty.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn plain_types() {
        let v = [1.0f32, -2.5, 3.25];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &bytes, 3).ok(), Some(v.to_vec()));

        let bytes: Vec<u8> = v.iter().flat_map(|&x| h(x)).collect();
        assert_eq!(dequantize(GgmlType::F16, &bytes, 3).ok(), Some(v.to_vec()));

        let bytes: Vec<u8> = v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &bytes, 3).ok(), Some(v.to_vec()));
    }

    #[test]
    fn q8_0() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.5));
        for i in 0..32 {
            b.push((i as i8 - 16) as u8);
        }
        let y = dequantize(GgmlType::Q8_0, &b, 32).expect("q8_0");
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_and_q4_1_nibble_halves() {
        // qs[j] = low nibble j, high nibble 15 - j.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();

        let mut b = Vec::new();
        b.extend_from_slice(&h(2.0));
        b.extend_from_slice(&qs);
        let y = dequantize(GgmlType::Q4_0, &b, 32).expect("q4_0");
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 2.0, "low {j}");
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 2.0, "high {j}");
        }

        let mut b = Vec::new();
        b.extend_from_slice(&h(0.25));
        b.extend_from_slice(&h(-1.0));
        b.extend_from_slice(&qs);
        // Two blocks, the second with other scales.
        b.extend_from_slice(&h(1.0));
        b.extend_from_slice(&h(0.5));
        b.extend_from_slice(&qs);
        let y = dequantize(GgmlType::Q4_1, &b, 64).expect("q4_1");
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.25 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.25 - 1.0);
            assert_eq!(y[32 + j], j as f32 + 0.5);
            assert_eq!(y[48 + j], (15 - j) as f32 + 0.5);
        }
    }

    #[test]
    fn length_and_type_errors() {
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 19], 32).is_err());
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 20], 16).is_err());
        assert!(dequantize(GgmlType::F32, &[0u8; 4], usize::MAX).is_err());
        let e = dequantize(GgmlType::Q6_K, &[0u8; 210], 256).expect_err("q6_k");
        assert!(matches!(e, Error::Unsupported { .. }));
        assert!(e.to_string().contains("Q6_K"), "{e}");
    }
}
