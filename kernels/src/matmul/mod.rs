//! `y = x · Wᵀ (+ bias)` over [`PackedMatrix`] weights, with per-ISA kernels.
//!
//! Activations are f32 throughout; bf16 weights are widened to f32 in registers (`vpmovzxwd` +
//! `vpslld 16`) and multiplied with FMA, which keeps activations exact and, measured on the
//! target CPU, beats `vdpbf16ps` once weights are reused across tokens.
//!
//! * `m == 1` (decode GEMV): several panels in flight with two accumulators each (8 independent
//!   FMA chains for AVX-512), each panel streamed linearly, no horizontal reductions: every
//!   accumulator lane is one output row.
//! * `m > 1` (prefill, batched decode): a register tile of 2 panels (32 rows) × up to 8 tokens
//!   (16 `zmm` accumulators); a panel pair stays in L1/L2 while every token block uses it.
//!
//! Threads split the panels into contiguous ranges. The kernel is chosen once per process (see
//! [`kernel_name`]); `VEIL_KERNEL=scalar|avx2|avx512` forces a lower one.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod packed;
mod scalar;

pub use packed::{PANEL, PackedMatrix, WeightDtype};

use crate::isa::{self, Isa};
use crate::pool::{ThreadPool, split_range};

/// Everything a kernel needs for one call, as raw pointers so threads can share it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Args {
    /// Packed weights (panel 0).
    w: *const u8,
    /// Whether the weights are bf16 (otherwise f32).
    bf16: bool,
    /// Input features.
    k: usize,
    /// Output features (row stride of `y`).
    n: usize,
    /// Tokens.
    m: usize,
    /// `m × k` activations, row-major.
    x: *const f32,
    /// `n` biases, or null.
    bias: *const f32,
    /// `m × n` outputs, row-major.
    y: *mut f32,
}

// SAFETY: `Args` is only built by `matmul_with_isa` from borrows that outlive the pool job; the
// threads read `w`, `x`, `bias` and write disjoint panel columns of `y`.
unsafe impl Send for Args {}
// SAFETY: as for `Send`.
unsafe impl Sync for Args {}

impl Args {
    /// Elements per packed panel.
    #[inline(always)]
    fn panel_elems(&self) -> usize {
        self.k * PANEL
    }

    /// Valid output rows of `panel` (16 except for the last panel).
    #[inline(always)]
    fn valid_rows(&self, panel: usize) -> usize {
        PANEL.min(self.n - panel * PANEL)
    }
}

/// Name of the kernel ISA in use: `"avx512"`, `"avx2"` or `"scalar"`.
pub fn kernel_name() -> &'static str {
    isa::selected().name()
}

/// Computes `y[i][n] = Σ_k x[i][k] · W[n][k] (+ bias[n])` for `i` in `0..m`, splitting the work
/// over `pool`.
///
/// `x` is `m × w.cols()` and `y` is `m × w.rows()`, both row-major f32 (only the first `m` rows
/// are read/written; `y` is overwritten). Allocates nothing.
///
/// # Panics
/// If `x`, `y` or `bias` are shorter than the shapes require.
pub fn matmul(pool: &ThreadPool, x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    matmul_with_isa(isa::selected(), pool, x, m, w, bias, y);
}

/// [`matmul`] with an explicit ISA (must be available on this CPU).
pub(crate) fn matmul_with_isa(
    isa: Isa,
    pool: &ThreadPool,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (n, k) = (w.rows(), w.cols());
    assert!(
        x.len() >= m * k,
        "matmul: x has {} elements, need {m} x {k}",
        x.len()
    );
    assert!(
        y.len() >= m * n,
        "matmul: y has {} elements, need {m} x {n}",
        y.len()
    );
    if let Some(b) = bias {
        assert!(b.len() >= n, "matmul: bias has {} elements, need {n}", b.len());
    }
    assert!(isa.is_available(), "matmul: ISA {} not available", isa.name());
    if m == 0 {
        return;
    }
    let args = Args {
        w: w.data_ptr(),
        bf16: w.dtype() == WeightDtype::Bf16,
        k,
        n,
        m,
        x: x.as_ptr(),
        bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
        y: y.as_mut_ptr(),
    };
    let panels = w.panels();
    // GEMM tiles take panel pairs; keep pairs on one thread.
    let align = if m == 1 { 1 } else { 2 };
    pool.run(|idx, n_threads| {
        let range = split_range(panels, n_threads, idx, align);
        if range.is_empty() {
            return;
        }
        // SAFETY: the pointers in `args` come from borrows that are alive for this whole call
        // and were bounds-checked above against the packed shape; each thread gets a disjoint
        // panel range, so the writes to `y` do not overlap; `isa` is available (asserted).
        unsafe { run_kernel(isa, &args, range) }
    });
}

/// Runs the kernel of `isa` on a panel range.
///
/// # Safety
/// `args` must describe valid buffers for its shape, `panels` must lie within the matrix, and
/// `isa` must be available on this CPU.
unsafe fn run_kernel(isa: Isa, args: &Args, panels: std::ops::Range<usize>) {
    match isa {
        // SAFETY: forwarded from the caller; AVX-512F + FMA are available.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::matmul_panels(args, panels) },
        // SAFETY: forwarded from the caller; AVX2 + FMA are available.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::matmul_panels(args, panels) },
        // SAFETY: forwarded from the caller.
        _ => unsafe { scalar::matmul_panels(args, panels) },
    }
}

/// Naive reference: `y[i][j] = Σ_k x[i][k] · w[j][k] (+ bias[j])` with `w` row-major `n × k`,
/// accumulated in f64 and rounded once. Used by tests and benches.
///
/// # Panics
/// If a slice is shorter than its shape.
pub fn matmul_reference(
    x: &[f32],
    m: usize,
    w_rowmajor: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w_rowmajor[j * k..(j + 1) * k];
            let mut acc: f64 = xr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            if let Some(b) = bias {
                acc += f64::from(b[j]);
            }
            y[i * n + j] = acc as f32;
        }
    }
}

#[cfg(test)]
mod tests;
