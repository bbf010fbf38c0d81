// embed.cuh: token embedding lookup.
#pragma once
#include "common.cuh"

// veil_embed: out[t][i] = f32(table[tokens[t]][i]) for t < n_tokens, i < hidden.
// Launch: grid (n_tokens), block 256 (any multiple of 32 works). Token ids must be valid rows
// of `table` (the host checks them).
extern "C" __global__ void __launch_bounds__(256)
veil_embed(const bf16* __restrict__ table, const int* __restrict__ tokens, float* __restrict__ out,
           int n_tokens, int hidden) {
    const int t = blockIdx.x;
    if (t >= n_tokens) return;
    const bf16* row = table + (size_t)tokens[t] * hidden;
    float* o = out + (size_t)t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = bf16_to_f32(row[i]);
}
