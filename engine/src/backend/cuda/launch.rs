//! The PTX module of our kernels (`kernels/cuda`, ABI in `kernels/cuda/ABI.md`) and launching
//! them with raw device pointers.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

/// One kernel argument, by value (device pointers are plain 64-bit addresses).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    /// A device pointer (0 for NULL).
    Ptr(u64),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
    /// A `VeilGcmMsg` struct, by value (the `veil_gcm_*` kernels).
    GcmMsg(GcmMsgArg),
}

/// [`veil_kernels::cuda::GcmMsg`] as a kernel argument: the driver copies its 40 bytes into the
/// kernel's parameter space.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub(crate) struct GcmMsgArg(pub(crate) veil_kernels::cuda::GcmMsg);

// SAFETY: GcmMsg is `#[repr(C)]` plain data (bytemuck::Pod: no padding, no pointers) laid out
// exactly as the kernels' `VeilGcmMsg` (veil_kernels checks size, alignment and offsets), and
// `repr(transparent)` keeps that layout.
unsafe impl DeviceRepr for GcmMsgArg {}

/// The loaded module and its functions.
pub(crate) struct Kernels {
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("functions", &self.functions.len())
            .finish()
    }
}

fn cuda_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        reason: format!("{what}: {e}"),
    }
}

impl Kernels {
    /// Loads the PTX built for this GPU: the sm_90a build on Hopper (compute capability 9.0),
    /// the sm_80 build elsewhere (the driver JIT-compiles PTX for newer GPUs).
    pub(crate) fn load(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<Self> {
        let (arch, ptx) = if cc == (9, 0) {
            ("sm_90a", veil_kernels::cuda::PTX_SM90A)
        } else {
            ("sm_80", veil_kernels::cuda::PTX_SM80)
        };
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| cuda_err(format!("loading the {arch} PTX"), e))?;
        let mut functions = HashMap::new();
        for &name in veil_kernels::cuda::KERNELS {
            let f = module
                .load_function(name)
                .map_err(|e| cuda_err(format!("kernel {name}"), e))?;
            functions.insert(name, f);
        }
        // The prefill tile needs more than the default 48 KiB of dynamic shared memory for
        // head dimensions above 158; allow the largest head dimension the kernels support.
        if let Some(f) = functions.get("veil_attention_prefill") {
            let bytes = veil_kernels::cuda::prefill_shared_bytes(veil_kernels::cuda::MAX_HEAD_DIM);
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                i32::try_from(bytes).unwrap_or(i32::MAX),
            )
            .map_err(|e| cuda_err("raising the prefill kernel's shared memory limit", e))?;
        }
        Ok(Self {
            _module: module,
            functions,
        })
    }

    /// Blocks of `block` threads of kernel `name` that fit on the whole GPU at once (multiprocessors
    /// times the blocks per multiprocessor that its registers and shared memory allow); at least 1.
    pub(crate) fn resident_blocks(&self, stream: &CudaStream, name: &str, block: u32) -> Result<u32> {
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| cuda_err("unknown kernel", name))?;
        let per_sm = f
            .occupancy_max_active_blocks_per_multiprocessor(block, 0, None)
            .map_err(|e| cuda_err(format!("occupancy of {name}"), e))?;
        let sms = stream
            .context()
            .attribute(cudarc::driver::sys::CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| cuda_err("multiprocessor count", e))?;
        Ok(per_sm.saturating_mul(u32::try_from(sms).unwrap_or(1)).max(1))
    }

    /// Enqueues kernel `name` on `stream` with `grid` blocks of `block` threads and `smem`
    /// bytes of dynamic shared memory.
    pub(crate) fn launch(
        &self,
        stream: &CudaStream,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| cuda_err("unknown kernel", name))?;
        let mut b = stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::GcmMsg(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: every call site passes the arguments of `name` in the order and with the
        // types of kernels/cuda/ABI.md, with pointers into live device allocations of the sizes
        // the ABI requires for the given counts; `args` outlives the launch call, which copies
        // the argument values.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| cuda_err(format!("launching {name}"), e))
    }
}
