// silu_mul.cuh: SwiGLU activation.
#pragma once
#include "common.cuh"

// veil_silu_mul: row r of gate_up is [gate: inter | up: inter];
// out[r][i] = bf16(silu(g) * u) with silu(g) = g / (1 + e^-g) in f32 (the CPU's ops::silu_mul).
// Launch: grid (n_rows), block 256 (any multiple of 32).
extern "C" __global__ void __launch_bounds__(256)
veil_silu_mul(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int n_rows, int inter) {
    const int r = blockIdx.x;
    if (r >= n_rows) return;
    const bf16* g = gate_up + (size_t)r * 2 * inter;
    const bf16* u = g + inter;
    bf16* o = out + (size_t)r * inter;
    for (int i = threadIdx.x; i < inter; i += blockDim.x) {
        const float x = bf16_to_f32(g[i]);
        o[i] = f32_to_bf16(x / (1.0f + __expf(-x)) * bf16_to_f32(u[i]));
    }
}
