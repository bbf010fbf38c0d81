// rope_kv.cuh: QKV bias, rotary embedding of q and k, and the paged KV-cache write.
#pragma once
#include "common.cuh"

// veil_rope_kv: row t < n_tokens of qkv is [q: n_heads*head_dim | k: n_kv_heads*head_dim |
// v: n_kv_heads*head_dim] (bf16). In place:
//   1. if qkv_bias != NULL, add it (same row layout; summed in f32, rounded once at the end);
//   2. rotate every q and k head, Hugging Face "rotate_half" RoPE: for d < half = head_dim/2,
//      c = rope_cos[pos*half + d], s = rope_sin[pos*half + d], pos = positions[t]:
//      (x[d], x[d+half]) <- (x[d]*c - x[d+half]*s, x[d+half]*c + x[d]*s), in f32;
//   3. if slots[t] >= 0, write the rotated k and the v of each kv head h to the paged caches at
//      ((slot/block_size * n_kv_heads + h) * block_size + slot%block_size) * head_dim + d.
// Each element is read and written by exactly one thread, so no synchronisation is needed.
// head_dim must be even. Launch: grid (n_tokens), block 128 (any size works).
extern "C" __global__ void __launch_bounds__(128)
veil_rope_kv(bf16* __restrict__ qkv, const bf16* __restrict__ qkv_bias,
             const int* __restrict__ positions, const float* __restrict__ rope_cos,
             const float* __restrict__ rope_sin, bf16* __restrict__ k_cache,
             bf16* __restrict__ v_cache, const int* __restrict__ slots, int n_tokens, int n_heads,
             int n_kv_heads, int head_dim, int block_size) {
    const int t = blockIdx.x;
    if (t >= n_tokens) return;
    const int half = head_dim >> 1;
    const int row_len = (n_heads + 2 * n_kv_heads) * head_dim;
    bf16* x = qkv + (size_t)t * row_len;
    const int pos = positions[t];
    const float* cs = rope_cos + (size_t)pos * half;
    const float* sn = rope_sin + (size_t)pos * half;
    const int slot = slots[t];
    size_t cache_base = 0;  // element offset of (block, kv head 0, offset in block, d = 0)
    if (slot >= 0)
        cache_base = ((size_t)(slot / block_size) * n_kv_heads * block_size + slot % block_size) *
                     head_dim;
    const size_t head_stride = (size_t)block_size * head_dim;  // between kv heads in a block

    // q and k heads: one thread per rotation pair.
    const int n_pairs = (n_heads + n_kv_heads) * half;
    for (int i = threadIdx.x; i < n_pairs; i += blockDim.x) {
        const int head = i / half, d = i - head * half;
        const int e1 = head * head_dim + d, e2 = e1 + half;
        float x1 = bf16_to_f32(x[e1]), x2 = bf16_to_f32(x[e2]);
        if (qkv_bias != 0) {
            x1 += bf16_to_f32(qkv_bias[e1]);
            x2 += bf16_to_f32(qkv_bias[e2]);
        }
        const float c = cs[d], s = sn[d];
        const bf16 y1 = f32_to_bf16(x1 * c - x2 * s);
        const bf16 y2 = f32_to_bf16(x2 * c + x1 * s);
        x[e1] = y1;
        x[e2] = y2;
        if (slot >= 0 && head >= n_heads) {
            bf16* kc = k_cache + cache_base + (size_t)(head - n_heads) * head_stride;
            kc[d] = y1;
            kc[d + half] = y2;
        }
    }
    // v heads: bias and cache copy.
    if (qkv_bias == 0 && slot < 0) return;
    const int v0 = (n_heads + n_kv_heads) * head_dim;
    const int n_v = n_kv_heads * head_dim;
    for (int i = threadIdx.x; i < n_v; i += blockDim.x) {
        bf16 v = x[v0 + i];
        if (qkv_bias != 0) {
            v = f32_to_bf16(bf16_to_f32(v) + bf16_to_f32(qkv_bias[v0 + i]));
            x[v0 + i] = v;
        }
        if (slot >= 0) {
            const int h = i / head_dim, d = i - h * head_dim;
            v_cache[cache_base + (size_t)h * head_stride + d] = v;
        }
    }
}
