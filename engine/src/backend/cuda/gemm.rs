//! Matrix products on tensor cores through cuBLASLt: `Y[n×m] = X[n×k] · W[m×k]ᵀ` with bf16
//! inputs, f32 accumulation and a bf16 or f32 output (row-major, as the model stores `W`).
//!
//! cuBLASLt is column-major: row-major `Y = X·Wᵀ` is column-major `Yᵀ = W·Xᵀ` with `W`
//! transposed, so `m` = output features, `n` = tokens, `k` = input features. The descriptors
//! and the heuristic's algorithm are made once per shape and cached, so a step (and a CUDA
//! graph capture) only enqueues the products.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::error::{Error, Result};

/// cuBLASLt workspace: 32 MiB, what NVIDIA recommends for Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

fn lt_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Backend {
        backend: "cuda",
        reason: format!("cuBLASLt {what}: {e:?}"),
    }
}

/// Output element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OutType {
    /// bf16 activations.
    Bf16,
    /// f32 (logits).
    F32,
}

/// The shape of one product: `m` output features, `n` tokens, `k` input features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) out: OutType,
}

/// Descriptors and algorithm for one shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the handles were created by this plan and are destroyed exactly once; no
        // enqueued product still needs them after the stream synchronised (the backend
        // synchronises every step before plans can be dropped).
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// The products of one stream.
pub(crate) struct Gemm {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    plans: HashMap<(usize, usize, usize, OutType), Plan>,
}

impl std::fmt::Debug for Gemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemm").field("plans", &self.plans.len()).finish()
    }
}

// SAFETY: the cuBLASLt handle and descriptors are plain handles used from one thread at a
// time (the backend is driven by the engine thread; `Backend: Send`, not `Sync`).
unsafe impl Send for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handle was created in `new` and is destroyed once, after its plans.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn layout(ty: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> Result<sys::cublasLtMatrixLayout_t> {
    lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(|e| lt_err("layout", e))
}

impl Gemm {
    pub(crate) fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let handle = lt::create_handle().map_err(|e| lt_err("create", e))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| lt_err("workspace", e))?;
        Ok(Self {
            handle,
            stream,
            workspace,
            plans: HashMap::new(),
        })
    }

    /// Makes the plan of a shape unless it is cached.
    fn ensure_plan(&mut self, key: (usize, usize, usize, OutType)) -> Result<()> {
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(key.0, key.1, key.2, key.3)?;
            self.plans.insert(key, plan);
        }
        Ok(())
    }

    fn make_plan(&self, m: usize, n: usize, k: usize, out: OutType) -> Result<Plan> {
        let bf16 = sys::cudaDataType_t::CUDA_R_16BF;
        let out_ty = match out {
            OutType::Bf16 => bf16,
            OutType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        };
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(|e| lt_err("descriptor", e))?;
        // cublasOperation_t: CUBLAS_OP_T = 1 (a 32-bit enum).
        let trans: i32 = 1;
        // SAFETY: `desc` is a live descriptor; the attribute takes a 32-bit cublasOperation_t.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans) as *const _ as *const c_void,
                std::mem::size_of::<i32>(),
            )
            .map_err(|e| lt_err("transpose", e))?;
        }
        // A = W stored k×m column-major (the row-major m×k weight), transposed by the op.
        let a = layout(bf16, k, m, k)?;
        let b = layout(bf16, k, n, k)?;
        let c = layout(out_ty, m, n, m)?;
        let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
        let size = WORKSPACE_BYTES;
        // SAFETY: `pref` is live; the attribute takes a size_t.
        let heuristic = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&size) as *const _ as *const c_void,
                std::mem::size_of::<usize>(),
            )
            .map_err(|e| lt_err("workspace preference", e))?;
            let h = lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref);
            let _ = lt::destroy_matmul_pref(pref);
            h.map_err(|e| lt_err(&format!("no algorithm for m={m} n={n} k={k}"), e))?
        };
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo: heuristic.algo,
        })
    }

    /// Enqueues `y = x · wᵀ` on the stream: `x` is `n×k` bf16, `w` is `m×k` bf16 (row-major),
    /// `y` is `n×m` of `out`. All three are raw device pointers into live allocations of at
    /// least those sizes.
    pub(crate) fn matmul(&mut self, y: u64, x: u64, w: u64, shape: Shape) -> Result<()> {
        let Shape { m, n, k, out } = shape;
        if n == 0 {
            return Ok(());
        }
        let key = (m, n, k, out);
        self.ensure_plan(key)?;
        let plan = self.plans.get(&key).ok_or_else(|| lt_err("plan", "missing"))?;
        let handle = self.handle;
        let stream = self.stream.cu_stream();
        let (ws, _sync) = self.workspace.device_ptr(&self.stream);
        let ws = ws as *mut c_void;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the plan's descriptors match these shapes and types; the caller guarantees
        // the pointers address allocations of the documented sizes; the workspace is this
        // object's own buffer of WORKSPACE_BYTES; everything is enqueued on `stream`.
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                w as *const c_void,
                plan.a,
                x as *const c_void,
                plan.b,
                y as *const c_void,
                plan.c,
                y as *mut c_void,
                plan.c,
                &plan.algo,
                ws,
                WORKSPACE_BYTES,
                stream as *mut _,
            )
        }
        .map_err(|e| lt_err(&format!("matmul m={m} n={n} k={k}"), e))
    }
}
