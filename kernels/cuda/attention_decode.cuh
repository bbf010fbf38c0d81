// attention_decode.cuh: split-K paged attention for single-token queries, and the reduction of
// the splits.
#pragma once
#include "common.cuh"

#define VEIL_DECODE_THREADS 128
#define VEIL_DECODE_WARPS (VEIL_DECODE_THREADS / 32)
#define VEIL_MAX_HEAD_DIM 256
// Key steps each warp loads before computing (memory-level parallelism).
#define VEIL_DECODE_UNROLL 4

// One block = one (query, head, split). A group of G lanes handles one key: lane gl of the
// group holds dims [8*gl, 8*gl+8) (one 16-byte load of K and of V). A warp handles 32/G keys
// per step; each group keeps its own online-softmax state, merged at the end across the
// groups of a warp (shuffles) and across warps (shared memory).
template <int G>
VEIL_DEV void attention_decode_impl(float* __restrict__ part_acc, float* __restrict__ part_ml,
                                    const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
                                    const bf16* __restrict__ v_cache,
                                    const int* __restrict__ block_tables, int seq, int qpos,
                                    int n_heads, int n_kv_heads, int head_dim, int block_size,
                                    int max_blocks_per_seq, int qkv_stride, int n_splits,
                                    int split_len, float scale) {
    constexpr int KPW = 32 / G;  // keys per warp step
    __shared__ float s_m[VEIL_DECODE_WARPS], s_l[VEIL_DECODE_WARPS];
    __shared__ __align__(16) float s_acc[VEIL_DECODE_WARPS][VEIL_MAX_HEAD_DIM];

    const int q = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gl = lane % G, gi = lane / G;
    const int kvh = h / (n_heads / n_kv_heads);
    const int start = split * split_len;
    const int end = veil_min(start + split_len, qpos + 1);
    const bool active = gl * 8 < head_dim;  // this lane holds 8 dims

    // q (already rotated), pre-scaled like the CPU kernel.
    float qf[8];
    if (active) {
        const uint4 w =
            *(const uint4*)(qkv + (size_t)q * qkv_stride + (size_t)h * head_dim + gl * 8);
        unpack_bf16x8(w, qf);
        for (int i = 0; i < 8; ++i) qf[i] *= scale;
    } else {
        for (int i = 0; i < 8; ++i) qf[i] = 0.0f;
    }

    float m = -VEIL_INF, l = 0.0f, acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    const int* bt = block_tables + (size_t)seq * max_blocks_per_seq;
    const size_t head_off = (size_t)kvh * block_size * head_dim + gl * 8;
    const size_t block_elems = (size_t)n_kv_heads * block_size * head_dim;

    constexpr int STEP = VEIL_DECODE_WARPS * KPW;  // keys per block step
    for (int p0 = start + warp * KPW; p0 < end; p0 += STEP * VEIL_DECODE_UNROLL) {
        uint4 kw[VEIL_DECODE_UNROLL], vw[VEIL_DECODE_UNROLL];
        bool valid[VEIL_DECODE_UNROLL];
        for (int u = 0; u < VEIL_DECODE_UNROLL; ++u) {
            const int p = p0 + u * STEP + gi;
            valid[u] = p < end;
            if (valid[u] && active) {
                const int blk = bt[p / block_size];
                const size_t off =
                    (size_t)blk * block_elems + head_off + (size_t)(p % block_size) * head_dim;
                kw[u] = *(const uint4*)(k_cache + off);
                vw[u] = *(const uint4*)(v_cache + off);
            } else {
                kw[u] = make_uint4(0u, 0u, 0u, 0u);
                vw[u] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        for (int u = 0; u < VEIL_DECODE_UNROLL; ++u) {
            float kf[8];
            unpack_bf16x8(kw[u], kf);
            float s = 0.0f;
            for (int i = 0; i < 8; ++i) s += qf[i] * kf[i];
            // Sum over the G lanes of the group (groups are aligned blocks of G lanes).
            for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(VEIL_FULL_MASK, s, o);
            if (valid[u]) {
                const float m_new = fmaxf(m, s);
                const float corr = __expf(m - m_new);  // 0 while m is -inf
                const float pw = __expf(s - m_new);
                float vf[8];
                unpack_bf16x8(vw[u], vf);
                l = l * corr + pw;
                for (int i = 0; i < 8; ++i) acc[i] = acc[i] * corr + pw * vf[i];
                m = m_new;
            }
        }
    }

    // Merge the groups of this warp: lanes with the same gl, different gi.
    for (int o = G; o < 32; o <<= 1) {
        const float m_o = __shfl_xor_sync(VEIL_FULL_MASK, m, o);
        const float l_o = __shfl_xor_sync(VEIL_FULL_MASK, l, o);
        float acc_o[8];
        for (int i = 0; i < 8; ++i) acc_o[i] = __shfl_xor_sync(VEIL_FULL_MASK, acc[i], o);
        const float mm = fmaxf(m, m_o);
        if (mm != -VEIL_INF) {
            const float a = __expf(m - mm), b = __expf(m_o - mm);
            l = l * a + l_o * b;
            for (int i = 0; i < 8; ++i) acc[i] = acc[i] * a + acc_o[i] * b;
            m = mm;
        }
    }
    if (gi == 0 && active)
        for (int i = 0; i < 8; ++i) s_acc[warp][gl * 8 + i] = acc[i];
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
    __syncthreads();

    // Merge the warps.
    float mm = -VEIL_INF;
    for (int w = 0; w < VEIL_DECODE_WARPS; ++w) mm = fmaxf(mm, s_m[w]);
    float wt[VEIL_DECODE_WARPS];
    float ll = 0.0f;
#pragma unroll
    for (int w = 0; w < VEIL_DECODE_WARPS; ++w) {
        wt[w] = s_m[w] == -VEIL_INF ? 0.0f : __expf(s_m[w] - mm);
        ll += s_l[w] * wt[w];
    }
    const size_t part = ((size_t)q * n_heads + h) * n_splits + split;
    float* pa = part_acc + part * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < VEIL_DECODE_WARPS; ++w) a += s_acc[w][d] * wt[w];
        pa[d] = a;
    }
    if (threadIdx.x == 0) {
        part_ml[part * 2] = mm;
        part_ml[part * 2 + 1] = mm == -VEIL_INF ? 0.0f : ll;
    }
}

// veil_attention_decode: split-K causal attention of single-token queries over the paged cache.
// Query q < n_queries, head h, split i: q's vector is qkv[q*qkv_stride + h*head_dim ..] (bf16,
// rotated); kv head h / (n_heads / n_kv_heads); sequence s = query_seq[q]; positions
// [i*split_len, min((i+1)*split_len, query_pos[q]+1)), position p at cache block
// block_tables[s*max_blocks_per_seq + p/block_size], offset p%block_size (cache layout
// [block][kv_head][offset][head_dim], bf16). Scores scale*dot(q,k) in f32. Writes
// m = max score, l = sum exp(score - m) to part_ml[((q*n_heads+h)*n_splits+i)*2 + {0,1}] and
// sum exp(score - m) * v to part_acc[((q*n_heads+h)*n_splits+i)*head_dim + d]; an empty split
// writes m = -inf, l = 0, acc = 0.
// Requires head_dim % 8 == 0, head_dim <= 256, qkv_stride % 8 == 0, 16-byte aligned buffers.
// Launch: grid (n_queries, n_heads, n_splits), block 128 (exactly), no dynamic shared memory.
// Traps (launch error) on an unsupported head_dim. (__maxnreg__ rather than __launch_bounds__,
// which cannot be combined: without it ptxas caps sm_80 at 64 registers and spills.)
extern "C" __global__ void __maxnreg__(96)
veil_attention_decode(float* __restrict__ part_acc, float* __restrict__ part_ml,
                      const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
                      const bf16* __restrict__ v_cache, const int* __restrict__ block_tables,
                      const int* __restrict__ query_seq, const int* __restrict__ query_pos,
                      int n_queries, int n_heads, int n_kv_heads, int head_dim, int block_size,
                      int max_blocks_per_seq, int qkv_stride, int n_splits, int split_len,
                      float scale) {
    if ((head_dim & 7) != 0 || head_dim > VEIL_MAX_HEAD_DIM) __trap();
    const int q = blockIdx.x;
    if (q >= n_queries) return;
    const int seq = query_seq[q], qpos = query_pos[q];
    if (head_dim <= 64)
        attention_decode_impl<8>(part_acc, part_ml, qkv, k_cache, v_cache, block_tables, seq, qpos,
                                 n_heads, n_kv_heads, head_dim, block_size, max_blocks_per_seq,
                                 qkv_stride, n_splits, split_len, scale);
    else if (head_dim <= 128)
        attention_decode_impl<16>(part_acc, part_ml, qkv, k_cache, v_cache, block_tables, seq,
                                  qpos, n_heads, n_kv_heads, head_dim, block_size,
                                  max_blocks_per_seq, qkv_stride, n_splits, split_len, scale);
    else
        attention_decode_impl<32>(part_acc, part_ml, qkv, k_cache, v_cache, block_tables, seq,
                                  qpos, n_heads, n_kv_heads, head_dim, block_size,
                                  max_blocks_per_seq, qkv_stride, n_splits, split_len, scale);
}

// veil_attention_reduce: combines the n_splits partial states of each (query, head) written by
// veil_attention_decode: M = max_i m_i, out = sum_i e^(m_i-M) acc_i / sum_i e^(m_i-M) l_i,
// stored as bf16 at out[q*n_heads*head_dim + h*head_dim + d] (0 if every split was empty).
// Launch: grid (n_queries, n_heads), block 128 (any size works).
extern "C" __global__ void __launch_bounds__(128)
veil_attention_reduce(bf16* __restrict__ out, const float* __restrict__ part_acc,
                      const float* __restrict__ part_ml, int n_queries, int n_heads, int head_dim,
                      int n_splits) {
    const int q = blockIdx.x, h = blockIdx.y;
    if (q >= n_queries) return;
    const size_t base = ((size_t)q * n_heads + h) * n_splits;
    const float* ml = part_ml + base * 2;
    const float* acc = part_acc + base * head_dim;
    float mm = -VEIL_INF;
    for (int i = 0; i < n_splits; ++i) mm = fmaxf(mm, ml[2 * i]);
    float denom = 0.0f;
    for (int i = 0; i < n_splits; ++i)
        if (ml[2 * i] != -VEIL_INF) denom += __expf(ml[2 * i] - mm) * ml[2 * i + 1];
    const float inv = denom > 0.0f ? 1.0f / denom : 0.0f;
    bf16* o = out + (size_t)q * n_heads * head_dim + (size_t)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        for (int i = 0; i < n_splits; ++i)
            if (ml[2 * i] != -VEIL_INF) a += __expf(ml[2 * i] - mm) * acc[(size_t)i * head_dim + d];
        o[d] = f32_to_bf16(a * inv);
    }
}
