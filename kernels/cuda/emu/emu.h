// emu.h: a CPU emulation of the CUDA features the Veil kernels use, so that the unmodified
// kernel sources (compiled as host C++ with VEIL_EMU) can be tested for logic errors on a
// machine without a GPU. Every CUDA thread of a block is a std::thread; __syncthreads and the
// warp shuffles are barriers; blocks run one after another, so `__shared__` maps to `static`.
// Divergent barriers or shuffles deadlock here as they would misbehave on a GPU. This checks
// semantics only: nothing about timing, memory coalescing or the real compiler.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define VEIL_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __constant__
#define __align__(n) __attribute__((aligned(n)))
#define VEIL_DEV inline

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace emu {
struct Warp {
    std::barrier<> bar{32};
    uint64_t slot[32];
};
struct Block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    unsigned dyn_smem = 0;
};
inline thread_local Block* cur = nullptr;
alignas(16) inline unsigned char dyn_smem_buf[256 * 1024];
}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define VEIL_DYNAMIC_SMEM(name) unsigned char* name = emu::dyn_smem_buf
inline unsigned veil_dynamic_smem_size() { return emu::cur->dyn_smem; }

inline void __trap() {
    std::fprintf(stderr, "emu: __trap() in block (%u,%u,%u) thread %u\n", blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x);
    std::abort();
}
inline void __syncthreads() { emu::cur->bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
    emu::cur->warps[threadIdx.x / 32]->bar.arrive_and_wait();
}

template <class T> T emu_shuffle(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    emu::Warp& w = *emu::cur->warps[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[lane] = bits;
    w.bar.arrive_and_wait();
    T r = v;
    if (src >= 0 && src < 32) std::memcpy(&r, &w.slot[src], sizeof(T));
    w.bar.arrive_and_wait();
    return r;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int m) {
    return emu_shuffle(v, (int)(threadIdx.x % 32) ^ m);
}
template <class T> T __shfl_up_sync(unsigned, T v, int d) {
    return emu_shuffle(v, (int)(threadIdx.x % 32) - d);
}
template <class T> T __shfl_sync(unsigned, T v, int src) { return emu_shuffle(v, src); }

template <class T> T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <class T> T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
// Byte i of the result is byte (s >> 4i) & 7 of the 8 bytes y:x (x = bytes 0..3); the
// sign-replicate mode (selector bit 3) is not emulated.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t b = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((b >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}

namespace emu {
// Runs kernel(args...) on every block of `grid`, `block.x` threads each (1-D blocks).
template <class K, class... A>
void launch(K kernel, dim3 grid, dim3 block, unsigned smem, A... args) {
    if (block.x % 32 != 0 || block.y != 1 || block.z != 1) {
        std::fprintf(stderr, "emu: blocks must be 1-D multiples of 32\n");
        std::abort();
    }
    if (smem > sizeof(dyn_smem_buf)) {
        std::fprintf(stderr, "emu: too much dynamic shared memory\n");
        std::abort();
    }
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                Block b;
                b.bar = std::make_unique<std::barrier<>>(block.x);
                for (unsigned w = 0; w < block.x / 32; ++w) b.warps.push_back(std::make_unique<Warp>());
                b.dyn_smem = smem;
                // Garbage in shared memory, as on a GPU.
                std::memset(dyn_smem_buf, 0xA5, smem);
                std::vector<std::thread> ts;
                ts.reserve(block.x);
                for (unsigned t = 0; t < block.x; ++t)
                    ts.emplace_back([&, t] {
                        cur = &b;
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        kernel(args...);
                        // An exited thread no longer takes part in barriers (as on a GPU).
                        b.warps[t / 32]->bar.arrive_and_drop();
                        b.bar->arrive_and_drop();
                    });
                for (auto& t : ts) t.join();
            }
}
}  // namespace emu
