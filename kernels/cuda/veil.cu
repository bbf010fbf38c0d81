// veil.cu: the one translation unit of Veil's CUDA kernels, compiled to PTX by
// scripts/gen_ptx.py (NVRTC; the headers are passed to NVRTC by name). The ABI, launch
// configurations included, is in ABI.md; each kernel's contract is in the comment above it.
#include "common.cuh"
#include "embed.cuh"
#include "norm.cuh"
#include "rope_kv.cuh"
#include "attention_decode.cuh"
#include "attention_prefill.cuh"
#include "silu_mul.cuh"
#include "sample.cuh"
#include "aes_gcm.cuh"
