// common.cuh: types and helpers shared by every Veil kernel.
//
// NVRTC-only: no CUDA toolkit headers. bf16 travels as `unsigned short` and is converted by
// hand. The reductions and scans below assume blockDim.x is a multiple of 32 (at most 1024)
// and that every thread of the block calls them (they contain __syncthreads).
//
// Built with -DVEIL_EMU (see emu/emu.h) the same sources compile as host C++ for the CPU
// emulation tests; the #ifdef below is the only difference.
#pragma once

typedef unsigned short bf16;
typedef unsigned long long u64;

#define VEIL_FULL_MASK 0xffffffffu

#ifndef VEIL_EMU
#define VEIL_DEV __device__ __forceinline__
// Dynamic shared memory of the calling kernel (16-byte aligned).
#define VEIL_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
// Bytes of dynamic shared memory the block was launched with.
__device__ __forceinline__ unsigned veil_dynamic_smem_size() {
    unsigned r;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}
#endif

#define VEIL_INF __int_as_float(0x7f800000)
// The largest finite float (FLT_MAX; NVRTC has no <cfloat>).
#define VEIL_FLT_MAX __int_as_float(0x7f7fffff)

VEIL_DEV int veil_min(int a, int b) { return a < b ? a : b; }
VEIL_DEV int veil_max(int a, int b) { return a > b ? a : b; }

// ---- bf16 <-> f32 ---------------------------------------------------------------------------

VEIL_DEV float bf16_to_f32(bf16 u) { return __uint_as_float(((unsigned)u) << 16); }

// Round to nearest even; NaN stays NaN (quiet, sign kept); overflow rounds to +-inf.
VEIL_DEV bf16 f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Two bf16 packed in a 32-bit word (element 0 in the low half, as in memory).
VEIL_DEV float bf16_lo(unsigned w) { return __uint_as_float(w << 16); }
VEIL_DEV float bf16_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
VEIL_DEV unsigned pack_bf16x2(float lo, float hi) {
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

// Eight bf16 (one 16-byte load) to f32.
VEIL_DEV void unpack_bf16x8(uint4 v, float* f) {
    f[0] = bf16_lo(v.x); f[1] = bf16_hi(v.x);
    f[2] = bf16_lo(v.y); f[3] = bf16_hi(v.y);
    f[4] = bf16_lo(v.z); f[5] = bf16_hi(v.z);
    f[6] = bf16_lo(v.w); f[7] = bf16_hi(v.w);
}

// ---- reductions -----------------------------------------------------------------------------

struct VeilSum {
    template <class T> VEIL_DEV T operator()(T a, T b) const { return a + b; }
};
struct VeilMax {
    VEIL_DEV float operator()(float a, float b) const { return fmaxf(a, b); }
    VEIL_DEV int operator()(int a, int b) const { return a > b ? a : b; }
};
struct VeilMin {
    VEIL_DEV int operator()(int a, int b) const { return a < b ? a : b; }
};

template <class T, class Op> VEIL_DEV T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(VEIL_FULL_MASK, v, o));
    return v;
}

// Every thread gets the block-wide result. `scratch` holds 32 T in shared memory. The order of
// the operations is fixed (warp butterflies, then warps in order), so results are
// deterministic.
template <class T, class Op> VEIL_DEV T block_reduce(T v, Op op, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // a previous call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T r = scratch[0];
    for (int i = 1; i < nw; ++i) r = op(r, scratch[i]);
    return r;
}

// Block-wide prefix sums in thread order: returns the inclusive sum, sets *excl to the
// exclusive sum (excl of thread t+1 equals incl of thread t bit for bit) and *total.
template <class T> VEIL_DEV T block_scan(T v, T* excl, T* total, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    T incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        T n = __shfl_up_sync(VEIL_FULL_MASK, incl, o);
        if (lane >= o) incl = incl + n;
    }
    T before = __shfl_up_sync(VEIL_FULL_MASK, incl, 1);
    __syncthreads();
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    T off = (T)0;
    for (int i = 0; i < warp; ++i) off = off + scratch[i];
    T tot = off;
    for (int i = warp; i < nw; ++i) tot = tot + scratch[i];
    *excl = lane == 0 ? off : before + off;
    *total = tot;
    return incl + off;
}
