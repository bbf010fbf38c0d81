// attention_prefill.cuh: flash-attention-style causal attention for prefill chunks, reading K/V
// from the paged cache.
#pragma once
#include "common.cuh"

#define VEIL_PF_THREADS 128
#define VEIL_PF_BQ 64    // queries per tile (tile_n_queries <= 64)
#define VEIL_PF_BK 32    // keys per K/V tile (one per lane)
#define VEIL_PF_KPAD 8   // bf16 padding per K row: conflict-free 16-byte loads by 32 lanes

// Dynamic shared memory, bytes: Q [64][hd] + K [32][hd+8] + V [32][hd] bf16, P [4 warps][16][32]
// f32 = 2*(64*hd + 32*(hd+8) + 32*hd) + 8192 = 256*hd + 8704 (41472 for hd 128, 74240 for 256).
VEIL_DEV unsigned veil_prefill_smem_bytes(int head_dim) { return 256u * head_dim + 8704u; }

// Warp w owns tile rows [16w, 16w+16), QW of them per pass (16/QW passes, K/V re-read per pass).
// Scores: lane = key of the K tile, a row of 16 scores per lane. P·V: lane holds dims
// {2*lane, 2*lane+1} + 64*j for j < NP. Online softmax per query row in f32.
template <int NP, int QW>
VEIL_DEV void attention_prefill_impl(bf16* __restrict__ out, const bf16* __restrict__ qkv,
                                     const bf16* __restrict__ k_cache,
                                     const bf16* __restrict__ v_cache, const int* __restrict__ bt,
                                     int fq, int nq, int fp, int n_heads, int n_kv_heads, int kvh,
                                     int hd, int block_size, int qkv_stride, float scale,
                                     unsigned char* smem) {
    const int h = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int ks = hd + VEIL_PF_KPAD;
    bf16* Qs = (bf16*)smem;
    bf16* Ks = Qs + VEIL_PF_BQ * hd;
    bf16* Vs = Ks + VEIL_PF_BK * ks;
    float* Pw = (float*)(Vs + VEIL_PF_BK * hd) + warp * 16 * VEIL_PF_BK;
    const int cpr = hd >> 3;  // 16-byte chunks per row

    for (int c = tid; c < VEIL_PF_BQ * cpr; c += blockDim.x) {
        const int r = c / cpr, cc = c - r * cpr;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < nq)
            v = *(const uint4*)(qkv + (size_t)(fq + r) * qkv_stride + (size_t)h * hd + cc * 8);
        *(uint4*)(Qs + r * hd + cc * 8) = v;
    }
    const int last_pos = fp + nq - 1;
    const int n_kt = last_pos / VEIL_PF_BK + 1;
    const size_t block_elems = (size_t)n_kv_heads * block_size * hd;
    const size_t head_off = (size_t)kvh * block_size * hd;

    for (int pass = 0; pass < 16 / QW; ++pass) {
        const int qb = warp * 16 + pass * QW;       // first tile row of this warp and pass
        const bool has = qb < nq;                    // warp-uniform
        const int wmax = fp + veil_min(qb + QW, nq) - 1;  // its last query position
        float acc[QW][2 * NP], m[QW], lp[QW];
        for (int i = 0; i < QW; ++i) {
            m[i] = -VEIL_INF;
            lp[i] = 0.0f;
            for (int j = 0; j < 2 * NP; ++j) acc[i][j] = 0.0f;
        }
        for (int kt = 0; kt < n_kt; ++kt) {
            __syncthreads();  // the previous tile is consumed (and Qs is written)
            for (int c = tid; c < VEIL_PF_BK * cpr; c += blockDim.x) {
                const int r = c / cpr, cc = c - r * cpr;
                const int p = kt * VEIL_PF_BK + r;
                uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
                if (p <= last_pos) {
                    const size_t off = (size_t)bt[p / block_size] * block_elems + head_off +
                                       (size_t)(p % block_size) * hd + cc * 8;
                    kv = *(const uint4*)(k_cache + off);
                    vv = *(const uint4*)(v_cache + off);
                }
                *(uint4*)(Ks + r * ks + cc * 8) = kv;
                *(uint4*)(Vs + r * hd + cc * 8) = vv;
            }
            __syncthreads();
            if (!has || kt * VEIL_PF_BK > wmax) continue;  // warp-uniform: nothing to see

            float s[QW];
            for (int i = 0; i < QW; ++i) s[i] = 0.0f;
            const bf16* krow = Ks + lane * ks;
            for (int c = 0; c < hd; c += 8) {
                float kf[8];
                unpack_bf16x8(*(const uint4*)(krow + c), kf);
                for (int i = 0; i < QW; ++i) {
                    float qf[8];
                    unpack_bf16x8(*(const uint4*)(Qs + (qb + i) * hd + c), qf);
                    for (int j = 0; j < 8; ++j) s[i] += qf[j] * kf[j];
                }
            }
            const int kp = kt * VEIL_PF_BK + lane;
            for (int i = 0; i < QW; ++i) {
                const bool ok = qb + i < nq && kp <= fp + qb + i;
                const float si = ok ? s[i] * scale : -VEIL_INF;
                const float m_new = fmaxf(m[i], warp_reduce(si, VeilMax()));
                float corr = 1.0f, p = 0.0f;
                if (m_new != -VEIL_INF) {
                    corr = __expf(m[i] - m_new);
                    p = __expf(si - m_new);
                }
                lp[i] = lp[i] * corr + p;
                m[i] = m_new;
                for (int j = 0; j < 2 * NP; ++j) acc[i][j] *= corr;
                Pw[i * VEIL_PF_BK + lane] = p;
            }
            __syncwarp();
            for (int k = 0; k < VEIL_PF_BK; k += 4) {
                float vf[4][2 * NP];
                for (int kk = 0; kk < 4; ++kk)
                    for (int j = 0; j < NP; ++j) {
                        const int d = 2 * lane + 64 * j;
                        unsigned w = 0u;
                        if (d < hd) w = *(const unsigned*)(Vs + (k + kk) * hd + d);
                        vf[kk][2 * j] = bf16_lo(w);
                        vf[kk][2 * j + 1] = bf16_hi(w);
                    }
                for (int i = 0; i < QW; ++i) {
                    const float4 pk = *(const float4*)(Pw + i * VEIL_PF_BK + k);
                    for (int j = 0; j < 2 * NP; ++j)
                        acc[i][j] += pk.x * vf[0][j] + pk.y * vf[1][j] + pk.z * vf[2][j] +
                                     pk.w * vf[3][j];
                }
            }
        }
        for (int i = 0; i < QW; ++i) {
            const float l = warp_reduce(lp[i], VeilSum());
            const int qi = qb + i;
            if (qi >= nq) continue;
            const float inv = 1.0f / l;
            bf16* o = out + (size_t)(fq + qi) * n_heads * hd + (size_t)h * hd;
            for (int j = 0; j < NP; ++j) {
                const int d = 2 * lane + 64 * j;
                if (d < hd) *(unsigned*)(o + d) = pack_bf16x2(acc[i][2 * j] * inv, acc[i][2 * j + 1] * inv);
            }
        }
    }
}

// veil_attention_prefill: causal attention of prefill tiles over the paged cache. Tile
// i = blockIdx.x holds nq = tile_n_queries[i] (1..64) consecutive query tokens of sequence
// s = tile_seq[i]: qkv rows tile_first_query[i] + j (q of head h at column h*head_dim, row
// stride qkv_stride) at positions tile_first_pos[i] + j. Each query attends to positions
// 0..=its position of s, read from the cache (block_tables[s*max_blocks_per_seq + p/block_size],
// offset p%block_size, layout [block][kv_head][offset][head_dim]); the chunk's own K/V must
// already be there (veil_rope_kv). kv head h / (n_heads/n_kv_heads); scores scale*dot(q,k) and
// online softmax in f32. Output bf16 at out[(tile_first_query[i]+j)*n_heads*head_dim +
// h*head_dim + d].
// Requires head_dim % 8 == 0, head_dim <= 256, qkv_stride % 8 == 0, 16-byte aligned buffers.
// Launch: grid (n_tiles, n_heads), block 128 (exactly), dynamic shared memory
// 256*head_dim + 8704 bytes (above 48 KiB, i.e. head_dim > 158, the host must first raise
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES). The kernel traps (launch error) if given
// less, or on a head_dim or tile size it does not support.
extern "C" __global__ void __launch_bounds__(VEIL_PF_THREADS)
veil_attention_prefill(bf16* __restrict__ out, const bf16* __restrict__ qkv,
                       const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache,
                       const int* __restrict__ block_tables, const int* __restrict__ tile_seq,
                       const int* __restrict__ tile_first_query,
                       const int* __restrict__ tile_n_queries,
                       const int* __restrict__ tile_first_pos, int n_heads, int n_kv_heads,
                       int head_dim, int block_size, int max_blocks_per_seq, int qkv_stride,
                       float scale) {
    VEIL_DYNAMIC_SMEM(smem);
    if ((head_dim & 7) != 0 || head_dim > 256 ||
        veil_dynamic_smem_size() < veil_prefill_smem_bytes(head_dim))
        __trap();
    const int tile = blockIdx.x, h = blockIdx.y;
    const int nq = tile_n_queries[tile];
    if (nq > VEIL_PF_BQ) __trap();
    if (nq <= 0) return;
    const int* bt = block_tables + (size_t)tile_seq[tile] * max_blocks_per_seq;
    const int fq = tile_first_query[tile], fp = tile_first_pos[tile];
    const int kvh = h / (n_heads / n_kv_heads);
    if (head_dim <= 64)
        attention_prefill_impl<1, 16>(out, qkv, k_cache, v_cache, bt, fq, nq, fp, n_heads,
                                      n_kv_heads, kvh, head_dim, block_size, qkv_stride, scale,
                                      smem);
    else if (head_dim <= 128)
        attention_prefill_impl<2, 16>(out, qkv, k_cache, v_cache, bt, fq, nq, fp, n_heads,
                                      n_kv_heads, kvh, head_dim, block_size, qkv_stride, scale,
                                      smem);
    else
        attention_prefill_impl<4, 8>(out, qkv, k_cache, v_cache, bt, fq, nq, fp, n_heads,
                                     n_kv_heads, kvh, head_dim, block_size, qkv_stride, scale,
                                     smem);
}
