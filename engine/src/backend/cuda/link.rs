//! The CUDA backend's host-device transfer path (`--cc`, docs/cc-transfer.md).
//!
//! - `off` and `hardware` copy plaintext through pinned staging buffers; under hardware CC the
//!   driver encrypts those copies through its own bounce buffers (the mode is checked at
//!   start-up by the binary, through NVML).
//! - `sealed` ([`SealedLink`]) runs Veil's AES-256-GCM channel: host-to-device the host seals
//!   into pinned staging, the frame is copied to a device scratch buffer and
//!   `veil_gcm_verify` + `veil_gcm_decrypt` open it into its destination; device-to-host
//!   `veil_gcm_seal` writes a frame the host copies back and opens. A bad tag sets the device's
//!   sticky failure word; the decrypt kernels then write nothing, and the word travels back
//!   sealed with every step's output, so a failure stops the engine at the step it happened.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice};
use veil_kernels::cuda::GcmMsg;

use super::gcm::GcmKernels;
use super::launch::Kernels;
use super::ptr;
use crate::cc::{ChannelConfig, ChannelSecret, Direction, MessageParams, Opener, Sealer, frame_len};
use crate::error::{Error, Result};

fn cuda_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        reason: format!("{what}: {e}"),
    }
}

/// The channel id of an engine's link (one link per engine and device).
const CHANNEL_ID: u32 = 0;

/// The kernels' view of a message.
pub(crate) fn gcm_msg(p: &MessageParams) -> GcmMsg {
    GcmMsg {
        channel_id: p.channel_id,
        dir: u32::from(p.direction.as_byte()),
        epoch: p.epoch,
        chunk_size: p.chunk_size,
        seq: p.seq,
        first_counter: p.first_counter,
        len: p.len,
    }
}

/// Both directions of the sealed channel between this host and one GPU.
pub(crate) struct SealedLink {
    /// Host-to-device: the host seals.
    h2d: Sealer,
    /// Device-to-host: the host mirrors the GPU's sealer (to launch it) and opens.
    d2h_mirror: Sealer,
    d2h: Opener,
    gk: GcmKernels,
    key_h2d: CudaSlice<u8>,
    key_d2h: CudaSlice<u8>,
    /// The sticky failure word of host-to-device (`u32` for the kernels; `i32` here so that it
    /// can be copied next to the step's output words).
    status: CudaSlice<i32>,
    dev_frame: CudaSlice<u8>,
    host_frame: PinnedHostSlice<u8>,
}

impl std::fmt::Debug for SealedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedLink")
            .field("chunk_size", &self.h2d.config().chunk_size)
            .finish_non_exhaustive()
    }
}

/// Grows `buf` to at least `n` bytes (in powers of two, so a growing step rarely reallocates).
fn grow_device(stream: &Arc<CudaStream>, buf: &mut CudaSlice<u8>, n: usize) -> Result<()> {
    if buf.len() < n {
        *buf = stream
            .alloc_zeros::<u8>(n.next_power_of_two())
            .map_err(|e| cuda_err("allocating a sealed-transfer buffer", e))?;
    }
    Ok(())
}

fn grow_pinned(stream: &Arc<CudaStream>, buf: &mut PinnedHostSlice<u8>, n: usize) -> Result<()> {
    if buf.len() < n {
        // SAFETY: every byte of a frame buffer is written (by sealing or by a device-to-host
        // copy) before it is read.
        *buf = unsafe { stream.context().alloc_pinned::<u8>(n.next_power_of_two()) }
            .map_err(|e| cuda_err("allocating pinned staging", e))?;
    }
    Ok(())
}

impl SealedLink {
    /// A new channel (fresh secret) to the stream's GPU.
    pub(crate) fn new(stream: &Arc<CudaStream>, kernels: &Kernels, cfg: &ChannelConfig) -> Result<Self> {
        cfg.validate()?;
        let secret = ChannelSecret::generate()?;
        let h2d = Sealer::new(&secret, CHANNEL_ID, Direction::HostToDevice, cfg.clone())?;
        let d2h_mirror = Sealer::new(&secret, CHANNEL_ID, Direction::DeviceToHost, cfg.clone())?;
        let d2h = Opener::new(&secret, CHANNEL_ID, Direction::DeviceToHost, cfg.clone())?;
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<u8>(n)
                .map_err(|e| cuda_err("allocating the sealed channel", e))
        };
        let status = stream
            .alloc_zeros::<i32>(1)
            .map_err(|e| cuda_err("allocating the sealed channel", e))?;
        // SAFETY: as in `grow_pinned`.
        let host_frame = unsafe { stream.context().alloc_pinned::<u8>(1 << 16) }
            .map_err(|e| cuda_err("allocating pinned staging", e))?;
        Ok(Self {
            h2d,
            d2h_mirror,
            d2h,
            gk: GcmKernels::new(kernels, stream)?,
            key_h2d: alloc(32)?,
            key_d2h: alloc(32)?,
            status,
            dev_frame: alloc(1 << 16)?,
            host_frame,
        })
    }

    /// The channel's settings.
    pub(crate) fn config(&self) -> &ChannelConfig {
        self.h2d.config()
    }

    /// The host-to-device sealer and the device end, apart (the weight-loading pipeline seals
    /// on one thread while this one drives the device).
    pub(crate) fn split(&mut self) -> (&mut Sealer, H2dDevice<'_>) {
        (
            &mut self.h2d,
            H2dDevice {
                gk: &self.gk,
                key: &mut self.key_h2d,
                status: &self.status,
            },
        )
    }

    /// Seals `plain` and enqueues its transfer into `dst` (device memory, at least
    /// `plain.len()` bytes). Returns once the frame's copy has completed (the pinned staging
    /// buffer is reused by the next call); the decrypt may still be running.
    pub(crate) fn upload(
        &mut self,
        k: &Kernels,
        stream: &Arc<CudaStream>,
        plain: &[u8],
        dst: u64,
    ) -> Result<()> {
        let n = frame_len(plain.len(), self.config().chunk_size);
        grow_pinned(stream, &mut self.host_frame, n)?;
        grow_device(stream, &mut self.dev_frame, n)?;
        let host = self
            .host_frame
            .as_mut_slice()
            .map_err(|e| cuda_err("pinned staging", e))?;
        let frame = host
            .get_mut(..n)
            .ok_or_else(|| cuda_err("pinned staging", "too small"))?;
        let params = self.h2d.seal(plain, frame)?;
        let (sealer, mut device) = (
            &self.h2d,
            H2dDevice {
                gk: &self.gk,
                key: &mut self.key_h2d,
                status: &self.status,
            },
        );
        if params.starts_epoch() {
            device.upload_key(stream, &sealer.key_for_device())?;
        }
        let mut dev = self.dev_frame.slice_mut(..n);
        stream
            .memcpy_htod(&*frame, &mut dev)
            .map_err(|e| cuda_err("copying a sealed frame", e))?;
        let dev_ptr = ptr(&self.dev_frame, stream);
        device.open(k, stream, dev_ptr, dst, &params)?;
        // The staging buffer is written again by the next call.
        stream
            .synchronize()
            .map_err(|e| cuda_err("copying a sealed frame", e))
    }

    /// Brings the failure word back, sealed, and fails if it is set.
    pub(crate) fn check(&mut self, k: &Kernels, stream: &Arc<CudaStream>) -> Result<()> {
        let mut word = [0u8; 4];
        let src = ptr(&self.status, stream);
        self.download(k, stream, src, &mut word)?;
        check_status(i32::from_le_bytes(word))
    }

    /// Copies the failure word after `words[..n]` (which must have room for it), so that it
    /// travels back sealed with them.
    pub(crate) fn append_status(
        &self,
        stream: &Arc<CudaStream>,
        words: &mut CudaSlice<i32>,
        n: usize,
    ) -> Result<()> {
        let mut dst = words.slice_mut(n..n + 1);
        stream
            .memcpy_dtod(&self.status, &mut dst)
            .map_err(|e| cuda_err("reading the channel's failure word", e))
    }

    /// Seals `len` bytes at `src` (device memory) on the GPU, copies the frame back and opens
    /// it into `out` (exactly `len` bytes). Synchronous.
    pub(crate) fn download(
        &mut self,
        k: &Kernels,
        stream: &Arc<CudaStream>,
        src: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let len = out.len();
        let n = frame_len(len, self.config().chunk_size);
        grow_pinned(stream, &mut self.host_frame, n)?;
        grow_device(stream, &mut self.dev_frame, n)?;
        let params = self.d2h_mirror.next_params(len)?;
        if params.starts_epoch() {
            let key = self.d2h_mirror.key_for_device();
            stream
                .memcpy_htod(&key[..], &mut self.key_d2h)
                .map_err(|e| cuda_err("uploading the channel key", e))?;
        }
        let msg = gcm_msg(&params);
        let key = ptr(&self.key_d2h, stream);
        let dev_ptr = ptr(&self.dev_frame, stream);
        self.gk.seal(k, stream, key, src, dev_ptr, &msg)?;
        {
            let host = self
                .host_frame
                .as_mut_slice()
                .map_err(|e| cuda_err("pinned staging", e))?;
            let host = host
                .get_mut(..n)
                .ok_or_else(|| cuda_err("pinned staging", "too small"))?;
            stream
                .memcpy_dtoh(&self.dev_frame.slice(..n), host)
                .map_err(|e| cuda_err("copying a sealed frame back", e))?;
        }
        stream
            .synchronize()
            .map_err(|e| cuda_err("copying a sealed frame back", e))?;
        let host = self
            .host_frame
            .as_slice()
            .map_err(|e| cuda_err("pinned staging", e))?;
        let frame = host
            .get(..n)
            .ok_or_else(|| cuda_err("pinned staging", "too small"))?;
        self.d2h.open(frame, out)?;
        Ok(())
    }
}

/// The device end of host-to-device: its key and failure word.
pub(crate) struct H2dDevice<'a> {
    gk: &'a GcmKernels,
    key: &'a mut CudaSlice<u8>,
    status: &'a CudaSlice<i32>,
}

impl H2dDevice<'_> {
    /// Uploads the device end's key: at the first message of each epoch. The key crosses in
    /// the clear (the channel is no confidentiality boundary without hardware CC).
    pub(crate) fn upload_key(&mut self, stream: &Arc<CudaStream>, key: &[u8; 32]) -> Result<()> {
        stream
            .memcpy_htod(&key[..], self.key)
            .map_err(|e| cuda_err("uploading the channel key", e))
    }

    /// Enqueues the device end of one message whose frame is at `frame` in device memory:
    /// verify every tag, then decrypt into `dst` unless the failure word is set.
    pub(crate) fn open(
        &self,
        k: &Kernels,
        stream: &Arc<CudaStream>,
        frame: u64,
        dst: u64,
        params: &MessageParams,
    ) -> Result<()> {
        let msg = gcm_msg(params);
        self.gk.open(
            k,
            stream,
            ptr(self.key, stream),
            frame,
            dst,
            &msg,
            ptr(self.status, stream),
        )
    }
}

/// Fails when the failure word (as it came back, authenticated) is set.
pub(crate) fn check_status(word: i32) -> Result<()> {
    if word == 0 {
        Ok(())
    } else {
        Err(Error::Backend {
            backend: "cuda",
            reason: "the GPU's end of the sealed channel rejected a transfer (a tag did not \
                     match: it was corrupted or tampered with in flight); the engine stops"
                .into(),
        })
    }
}
