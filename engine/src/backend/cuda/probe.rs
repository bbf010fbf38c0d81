//! Finding a usable CUDA device without panicking on machines that have none.
//!
//! cudarc loads the CUDA libraries at run time; creating a context when `libcuda.so` is
//! missing panics instead of returning an error, and so does a symbol missing from an old
//! driver. So the probe first asks whether each library can be loaded at all, and runs the
//! first driver calls under `catch_unwind`, turning any panic into a plain "no CUDA device".

use std::sync::Arc;

use cudarc::driver::CudaContext;

use crate::error::{Error, Result};

/// The oldest compute capability the kernels are built for (Ampere, sm_80).
pub(crate) const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// A usable CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Product name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Total device memory in bytes.
    pub total_memory: usize,
}

impl std::fmt::Display for CudaDeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} {} (sm_{}{}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

pub(crate) fn no_cuda(reason: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda",
        reason: format!("no CUDA device: {}", reason.into()),
    }
}

/// Whether the driver, cuBLAS and cuBLASLt libraries can be loaded.
fn libraries_present() -> Result<()> {
    // SAFETY: each call only attempts to dlopen the library (and closes it again); no CUDA
    // function is called.
    let (driver, cublas, cublaslt) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::cublaslt::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(no_cuda(
            "the NVIDIA driver library (libcuda.so.1) is not installed",
        ));
    }
    if !cublas || !cublaslt {
        return Err(no_cuda(
            "the cuBLAS libraries (libcublas.so.12, libcublasLt.so.12) are not installed",
        ));
    }
    Ok(())
}

/// Opens a context on `ordinal` after checking that it exists and is new enough.
pub(crate) fn open(ordinal: usize) -> Result<(Arc<CudaContext>, CudaDeviceInfo)> {
    libraries_present()?;
    let attempt = std::panic::catch_unwind(move || -> Result<(Arc<CudaContext>, CudaDeviceInfo)> {
        let driver = |what: &str, e: cudarc::driver::DriverError| no_cuda(format!("{what}: {e}"));
        let count = CudaContext::device_count().map_err(|e| driver("initialising the driver", e))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(no_cuda(format!(
                "cuda:{ordinal} asked for, but the driver sees {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver("creating a context", e))?;
        let info = CudaDeviceInfo {
            ordinal,
            name: ctx.name().map_err(|e| driver("reading the device name", e))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(|e| driver("reading the compute capability", e))?,
            total_memory: ctx
                .total_mem()
                .map_err(|e| driver("reading the memory size", e))?,
        };
        if info.compute_capability < MIN_COMPUTE_CAPABILITY {
            return Err(no_cuda(format!(
                "{info} has compute capability {}.{}; the CUDA backend needs {}.{} or newer",
                info.compute_capability.0,
                info.compute_capability.1,
                MIN_COMPUTE_CAPABILITY.0,
                MIN_COMPUTE_CAPABILITY.1
            )));
        }
        Ok((ctx, info))
    });
    attempt.unwrap_or_else(|_| {
        Err(no_cuda(
            "the CUDA driver library failed while loading (a driver older than CUDA 12.8 lacks \
             symbols the backend needs)",
        ))
    })
}

/// Checks that CUDA device `ordinal` is usable and describes it.
pub fn probe(ordinal: usize) -> Result<CudaDeviceInfo> {
    open(ordinal).map(|(_, info)| info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_never_panics() {
        // On a machine without CUDA this is an error naming what is missing; with a GPU it
        // describes the device. Either way it returns.
        match probe(0) {
            Ok(info) => assert!(info.compute_capability >= MIN_COMPUTE_CAPABILITY),
            Err(e) => assert!(e.to_string().contains("no CUDA device"), "{e}"),
        }
        assert!(probe(1 << 20).is_err());
    }
}
