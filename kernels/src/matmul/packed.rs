//! [`PackedMatrix`]: weights repacked at load time into 16-row, k-major panels.

use half::bf16;

use crate::aligned::AlignedBuf;
use crate::error::KernelError;

/// Rows (output features) per panel: one `zmm` register of f32 lanes.
pub const PANEL: usize = 16;

/// Storage type of packed weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    /// 32-bit floats, 64 bytes per panel column.
    F32,
    /// bfloat16 (round-to-nearest-even from f32), 32 bytes per panel column, expanded to f32 in
    /// the kernels.
    Bf16,
}

impl WeightDtype {
    /// Bytes per stored weight.
    pub fn size_bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 => 2,
        }
    }
}

/// A weight matrix `W` of `rows` output features × `cols` input features, repacked for the
/// matmul kernels.
///
/// Layout: `ceil(rows / 16)` panels of 16 rows each; panel `p` stores, for `k` in `0..cols`, the
/// 16 values `W[p*16 + r][k]` (`r` in `0..16`) contiguously, so a kernel streams one panel
/// linearly and gets one 16-lane vector per `k`. The last panel is zero-padded. The data lives in
/// an [`AlignedBuf`] (huge-page backed when large).
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    dtype: WeightDtype,
    buf: AlignedBuf,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Checks the shape and returns the number of panels.
fn check_shape(rows: usize, cols: usize, got: usize) -> Result<usize, KernelError> {
    let n = rows.checked_mul(cols).filter(|_| rows > 0 && cols > 0);
    let Some(n) = n else {
        return Err(KernelError::InvalidShape { rows, cols });
    };
    if n != got {
        return Err(KernelError::ShapeMismatch { rows, cols, got });
    }
    let panels = rows.div_ceil(PANEL);
    panels
        .checked_mul(PANEL * cols * 4)
        .map(|_| panels)
        .ok_or(KernelError::InvalidShape { rows, cols })
}

/// Scatters row-major `src` (`rows × cols`) into the panel layout `dst`, converting each value.
fn pack_into<S: Copy, D: Copy>(src: &[S], rows: usize, cols: usize, dst: &mut [D], conv: impl Fn(S) -> D) {
    for (p, panel) in dst.chunks_exact_mut(PANEL * cols).enumerate() {
        let r_end = PANEL.min(rows - p * PANEL);
        for r in 0..r_end {
            let row = &src[(p * PANEL + r) * cols..][..cols];
            for (k, &v) in row.iter().enumerate() {
                panel[k * PANEL + r] = conv(v);
            }
        }
    }
}

impl PackedMatrix {
    /// Packs a row-major f32 matrix (`data.len() == rows * cols`), rounding to bf16
    /// (nearest-even) when `dtype` is [`WeightDtype::Bf16`].
    pub fn from_f32(rows: usize, cols: usize, data: &[f32], dtype: WeightDtype) -> Result<Self, KernelError> {
        let panels = check_shape(rows, cols, data.len())?;
        let mut buf = AlignedBuf::zeroed(panels * PANEL * cols * dtype.size_bytes());
        match dtype {
            WeightDtype::F32 => pack_into(data, rows, cols, buf.as_mut_slice::<f32>(), |v| v),
            WeightDtype::Bf16 => pack_into(data, rows, cols, buf.as_mut_slice::<bf16>(), bf16::from_f32),
        }
        Ok(PackedMatrix {
            rows,
            cols,
            dtype,
            buf,
        })
    }

    /// Packs a row-major bf16 matrix (`data.len() == rows * cols`), widening exactly to f32 when
    /// `dtype` is [`WeightDtype::F32`].
    pub fn from_bf16(
        rows: usize,
        cols: usize,
        data: &[bf16],
        dtype: WeightDtype,
    ) -> Result<Self, KernelError> {
        let panels = check_shape(rows, cols, data.len())?;
        let mut buf = AlignedBuf::zeroed(panels * PANEL * cols * dtype.size_bytes());
        match dtype {
            WeightDtype::F32 => pack_into(data, rows, cols, buf.as_mut_slice::<f32>(), bf16::to_f32),
            WeightDtype::Bf16 => pack_into(data, rows, cols, buf.as_mut_slice::<bf16>(), |v| v),
        }
        Ok(PackedMatrix {
            rows,
            cols,
            dtype,
            buf,
        })
    }

    /// Output features (`N`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (`K`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Storage type.
    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// Number of 16-row panels (`ceil(rows / 16)`).
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// Bytes of packed weights (padding included): what one matmul streams.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether the weights sit in a huge-page-advised mapping.
    pub fn is_huge_page_advised(&self) -> bool {
        self.buf.is_huge_page_advised()
    }

    /// Pointer to the packed data (panel 0, k 0, row 0).
    pub(crate) fn data_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }

    /// Unpacks to a row-major f32 matrix (`rows * cols`), e.g. for tests or debugging.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        let cols = self.cols;
        let get = |idx: usize| match self.dtype {
            WeightDtype::F32 => self.buf.as_slice::<f32>()[idx],
            WeightDtype::Bf16 => self.buf.as_slice::<bf16>()[idx].to_f32(),
        };
        for (i, row) in out.chunks_exact_mut(cols).enumerate() {
            let (p, r) = (i / PANEL, i % PANEL);
            for (k, v) in row.iter_mut().enumerate() {
                *v = get((p * cols + k) * PANEL + r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0).collect()
    }

    #[test]
    fn round_trip_f32_exact() {
        for (rows, cols) in [(1, 1), (15, 3), (16, 5), (17, 64), (100, 7)] {
            let d = data(rows * cols);
            let m = PackedMatrix::from_f32(rows, cols, &d, WeightDtype::F32).expect("pack");
            assert_eq!((m.rows(), m.cols(), m.dtype()), (rows, cols, WeightDtype::F32));
            assert_eq!(m.size_bytes(), rows.div_ceil(16) * 16 * cols * 4);
            assert_eq!(m.to_f32(), d);
        }
    }

    #[test]
    fn round_trip_bf16_rounds_nearest_even() {
        let (rows, cols) = (33, 9);
        let d = data(rows * cols);
        let m = PackedMatrix::from_f32(rows, cols, &d, WeightDtype::Bf16).expect("pack");
        let want: Vec<f32> = d.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(m.to_f32(), want);
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
        let tie = PackedMatrix::from_f32(1, 1, &[1.0 + 1.0 / 256.0], WeightDtype::Bf16).expect("pack");
        assert_eq!(tie.to_f32(), vec![1.0]);
        let b: Vec<bf16> = d.iter().map(|&v| bf16::from_f32(v)).collect();
        for dt in [WeightDtype::F32, WeightDtype::Bf16] {
            let m2 = PackedMatrix::from_bf16(rows, cols, &b, dt).expect("pack");
            assert_eq!(m2.to_f32(), want);
        }
    }

    #[test]
    fn padding_is_zero_and_layout_is_k_major() {
        let (rows, cols) = (17, 3);
        let d = data(rows * cols);
        let m = PackedMatrix::from_f32(rows, cols, &d, WeightDtype::F32).expect("pack");
        let raw = m.buf.as_slice::<f32>();
        // panel 1 holds row 16 only; rows 17..32 of it are padding.
        for k in 0..cols {
            assert_eq!(raw[(cols + k) * 16], d[16 * cols + k]);
            assert!(
                raw[(cols + k) * 16 + 1..(cols + k + 1) * 16]
                    .iter()
                    .all(|&v| v == 0.0)
            );
            for r in 0..16 {
                assert_eq!(raw[k * 16 + r], d[r * cols + k]);
            }
        }
    }

    #[test]
    fn shape_errors() {
        assert_eq!(
            PackedMatrix::from_f32(2, 3, &[0.0; 5], WeightDtype::F32).err(),
            Some(KernelError::ShapeMismatch {
                rows: 2,
                cols: 3,
                got: 5
            })
        );
        assert!(PackedMatrix::from_f32(0, 3, &[], WeightDtype::F32).is_err());
        assert!(PackedMatrix::from_bf16(usize::MAX, 3, &[], WeightDtype::Bf16).is_err());
    }
}
