// sample.cuh: token sampling on the GPU (the CPU sampler's semantics, engine/src/sampling.rs).
#pragma once
#include "common.cuh"
#include "philox.cuh"

// One row's parameters; 13 fields of 4 bytes, 52 bytes (veil_kernels::cuda::SampleParams).
struct VeilSampleParams {
    float temperature;         // 0 = greedy
    int top_k;                 // <= 0 = off
    float top_p;               // >= 1 = off
    float min_p;               // <= 0 = off
    float repetition_penalty;  // 1 = off
    float presence_penalty;
    float frequency_penalty;
    unsigned seed_lo;          // Philox key
    unsigned seed_hi;
    unsigned counter;          // Philox counter word 0 (tokens drawn before by this request)
    int n_top_logprobs;        // < 0: no log-probabilities
    int penalty_offset;        // first entry of this row in penalty_ids / penalty_counts
    int n_penalty;             // entries of this row
};

#define VEIL_SAMPLE_THREADS 1024
// Fixed-point scale of the top-p masses (weights relative to the most likely token, in (0, 1]).
#define VEIL_MASS_SCALE 1099511627776.0f  // 2^40

// Monotone map float -> uint (larger float, larger key; -0 < +0 like f32::total_cmp).
VEIL_DEV unsigned okey(float f) {
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
VEIL_DEV float okey_to_float(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k ^ 0x80000000u) : ~k);
}

// Sampling weight relative to the most likely token: e^((l - max) / T), in f32 like the CPU.
VEIL_DEV float sample_weight(float l, float mx, float inv_t) { return expf((l - mx) * inv_t); }
VEIL_DEV u64 mass_fixed(float l, float mx, float inv_t) {
    return (u64)(sample_weight(l, mx, inv_t) * VEIL_MASS_SCALE);
}

// First-level digit of the selections: the scaled distance below the max, x = (max - l) / T, in
// steps of 1/8, highest values in digit 255; digit 0 collects x >= 31.875 (weights below
// e^-31.875, whose fixed-point mass is 0). Spreading the bulk of the vocabulary over many bins
// keeps shared-memory atomics nearly conflict-free.
VEIL_DEV int coarse_digit(float l, float mx, float inv_t) {
    const float x = fminf((mx - l) * inv_t * 8.0f, 255.0f);  // NaN/inf -> 255
    return 255 - (int)x;
}

// Ordered max with ties to the lower index.
VEIL_DEV bool better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

VEIL_DEV void block_argmax(float* v, int* idx, float* sf, int* si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float bv = *v;
    int bi = *idx;
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(VEIL_FULL_MASK, bv, o);
        const int oi = __shfl_xor_sync(VEIL_FULL_MASK, bi, o);
        if (better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        sf[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    bv = sf[0];
    bi = si[0];
    for (int w = 1; w < nw; ++w)
        if (better(sf[w], si[w], bv, bi)) {
            bv = sf[w];
            bi = si[w];
        }
    *v = bv;
    *idx = bi;
}

// Shared state of the selections.
struct SampleSmem {
    u64 hist[256];
    float f[32];
    int i[32];
    double d[32];
    u64 u[32];
    u64 above;
    int bin;
    int pick;
};

// Warp 0 finds the digit b (scanning from 255 down) with above < rem <= above + hist[b],
// above = sum of hist over digits > b. Ends with __syncthreads.
VEIL_DEV void select_bin(SampleSmem* sm, u64 rem) {
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        u64 sum = 0;
        for (int j = 0; j < 8; ++j) sum += sm->hist[255 - lane * 8 - j];
        u64 incl = sum;
        for (int o = 1; o < 32; o <<= 1) {
            const u64 n = __shfl_up_sync(VEIL_FULL_MASK, incl, o);
            if (lane >= o) incl += n;
        }
        u64 above = incl - sum;
        if (above < rem && rem <= incl) {
            for (int j = 0; j < 8; ++j) {
                const int b = 255 - lane * 8 - j;
                const u64 c = sm->hist[b];
                if (rem <= above + c) {
                    sm->bin = b;
                    sm->above = above;
                    break;
                }
                above += c;
            }
        }
        if (lane == 31 && rem > incl) {  // cannot happen (rem <= total); keeps the state defined
            sm->bin = 0;
            sm->above = incl - sm->hist[0];
        }
    }
    __syncthreads();
}

// Value of each element in a selection (0 = not counted).
struct CountAll {
    VEIL_DEV u64 operator()(float) const { return 1; }
};
struct MassAbove {  // fixed-point mass of the elements with key > cut_key (all if !cut)
    float mx, inv_t;
    bool cut;
    unsigned cut_key;
    VEIL_DEV u64 operator()(float l) const {
        return (!cut || okey(l) > cut_key) ? mass_fixed(l, mx, inv_t) : 0;
    }
};

// Weighted selection of a key: with S(c) = sum of val over the elements with key c (plus the
// amount xv at key xk), finds K with sum_{c > K} S(c) < target <= sum_{c >= K} S(c) and sets
// *rem = target - sum_{c > K} S(c). `total` = sum of all S; 1 <= target <= total. One pass on the
// coarse digit (the capped digit 0 is total minus the rest, no atomics), then four on the key
// bytes of the elements in the chosen coarse digit. Deterministic (integer atomics).
template <class F>
VEIL_DEV unsigned radix_select(const float* row, int vocab, float mx, float inv_t, u64 target,
                               u64 total, F val, unsigned xk, u64 xv, SampleSmem* sm, u64* rem) {
    const int tid = threadIdx.x, nt = blockDim.x;
    const int xcd = coarse_digit(okey_to_float(xk), mx, inv_t);
    for (int b = tid; b < 256; b += nt) sm->hist[b] = 0;
    __syncthreads();
    for (int i = tid; i < vocab; i += nt) {
        const float l = row[i];
        const u64 v = val(l);
        const int cd = coarse_digit(l, mx, inv_t);
        if (v != 0 && cd != 0) atomicAdd(&sm->hist[cd], v);
    }
    if (tid == 0 && xv != 0 && xcd != 0) atomicAdd(&sm->hist[xcd], xv);
    __syncthreads();
    if (tid == 0) {
        u64 s = 0;
        for (int b = 1; b < 256; ++b) s += sm->hist[b];
        sm->hist[0] = total - s;
    }
    __syncthreads();
    select_bin(sm, target);
    const int cb = sm->bin;
    u64 r = target - sm->above;
    unsigned prefix = 0u, mask = 0u;
    for (int shift = 24; shift >= 0; shift -= 8) {
        __syncthreads();  // everyone has read bin / above
        for (int b = tid; b < 256; b += nt) sm->hist[b] = 0;
        __syncthreads();
        for (int i = tid; i < vocab; i += nt) {
            const float l = row[i];
            if (coarse_digit(l, mx, inv_t) != cb) continue;
            const unsigned k = okey(l);
            if ((k & mask) != prefix) continue;
            const u64 v = val(l);
            if (v != 0) atomicAdd(&sm->hist[(k >> shift) & 255u], v);
        }
        if (tid == 0 && xv != 0 && xcd == cb && (xk & mask) == prefix)
            atomicAdd(&sm->hist[(xk >> shift) & 255u], xv);
        __syncthreads();
        select_bin(sm, r);
        r -= sm->above;
        prefix |= (unsigned)sm->bin << shift;
        mask |= 255u << shift;
    }
    *rem = r;
    return prefix;
}

// The kept set: keys above cut_key, the first n_eq elements (by id: ids <= id_bound) with
// key == cut_key, and (min_p > 0) weights >= min_p.
struct Kept {
    bool cut;
    unsigned cut_key;
    int id_bound;
    float mx, inv_t, min_p;
    VEIL_DEV float weight(int i, float l) const {
        if (cut) {
            const unsigned k = okey(l);
            if (k < cut_key || (k == cut_key && i > id_bound)) return 0.0f;
        }
        const float w = sample_weight(l, mx, inv_t);
        return (min_p > 0.0f && !(w >= min_p)) ? 0.0f : w;
    }
};

// Temperature > 0 draw; returns the chosen id (same value in every thread).
VEIL_DEV int sample_stochastic(const float* row, int vocab, const VeilSampleParams& P, float mx,
                               SampleSmem* sm) {
    const int tid = threadIdx.x, nt = blockDim.x;
    const float inv_t = 1.0f / P.temperature;
    Kept kept = {false, 0u, vocab, mx, inv_t, P.min_p};
    u64 n_eq = 0;  // elements with key == cut_key to keep
    if (P.top_k > 0 && P.top_k < vocab) {
        u64 rem = 0;
        kept.cut_key = radix_select(row, vocab, mx, inv_t, (u64)P.top_k, (u64)vocab, CountAll(),
                                    0u, 0, sm, &rem);
        kept.cut = true;
        n_eq = rem;
    }
    if (P.top_p < 1.0f) {
        // Mass of the top-k set: keys above the cut, plus n_eq elements at the cut.
        const MassAbove val = {mx, inv_t, kept.cut, kept.cut_key};
        const u64 xv = kept.cut ? n_eq * mass_fixed(okey_to_float(kept.cut_key), mx, inv_t) : 0;
        u64 s = 0;
        for (int i = tid; i < vocab; i += nt) s += val(row[i]);
        const u64 total = block_reduce(s, VeilSum(), sm->u) + xv;
        double t = ceil((double)P.top_p * (double)total);
        u64 target = t < 1.0 ? 1 : (t >= (double)total ? total : (u64)t);
        u64 rem = 0;
        const unsigned kp =
            radix_select(row, vocab, mx, inv_t, target, total, val, kept.cut_key, xv, sm, &rem);
        const u64 w = mass_fixed(okey_to_float(kp), mx, inv_t);  // > 0: its digit held mass
        kept.cut = true;
        kept.cut_key = kp;
        n_eq = (rem + w - 1) / w;
    }
    const int chunk = (vocab + nt - 1) / nt;
    const int lo = veil_min(tid * chunk, vocab), hi = veil_min(lo + chunk, vocab);
    if (kept.cut) {
        // Ties at the cut: keep the n_eq lowest ids (the CPU sorts by logit, then id).
        int c = 0;
        for (int i = lo; i < hi; ++i) c += okey(row[i]) == kept.cut_key;
        int excl = 0, tot = 0;
        const int incl = block_scan(c, &excl, &tot, sm->i);
        if ((u64)tot > n_eq) {
            if ((u64)excl < n_eq && n_eq <= (u64)incl) {
                int need = (int)(n_eq - (u64)excl);
                for (int i = lo; i < hi; ++i)
                    if (okey(row[i]) == kept.cut_key && --need == 0) {
                        sm->pick = i;
                        break;
                    }
            }
            __syncthreads();
            kept.id_bound = sm->pick;
        }
    }
    // Draw: a thread-ordered prefix scan of chunk sums, then a walk inside one chunk.
    double cs = 0.0;
    for (int i = lo; i < hi; ++i) cs += (double)kept.weight(i, row[i]);
    double excl = 0.0, total = 0.0;
    const double incl = block_scan(cs, &excl, &total, sm->d);
    const double r = veil_uniform(P.seed_lo, P.seed_hi, P.counter) * total;
    int owner = block_reduce((cs > 0.0 && r < incl) ? tid : nt, VeilMin(), sm->i);
    const bool overflow = owner == nt;  // r >= every prefix (rounding): take the last kept token
    if (overflow) owner = block_reduce(cs > 0.0 ? tid : -1, VeilMax(), sm->i);
    if (tid == owner) {
        double x = overflow ? total : r - excl;
        if (x < 0.0) x = 0.0;
        int pick = -1;
        for (int i = lo; i < hi; ++i) {
            const float w = kept.weight(i, row[i]);
            if (w > 0.0f) {
                if (!overflow && x < (double)w) {
                    pick = i;
                    break;
                }
                x -= (double)w;
                pick = i;
            }
        }
        sm->pick = pick;
    }
    __syncthreads();
    return sm->pick;
}

// veil_sample: one block per row r < n_rows of logits (f32, row stride vocab, modified in place
// by the penalties), parameters params[r]. (a) Penalties for j in [penalty_offset,
// penalty_offset + n_penalty): id = penalty_ids[j] (ids outside the vocabulary are skipped; each
// id at most once per row), c = penalty_counts[j]: if repetition_penalty != 1,
// l = l > 0 ? min(l / rp, FLT_MAX) : max(l * rp, -FLT_MAX); if c > 0,
// l -= presence + frequency * c. (b) If n_top_logprobs
// >= 0: out_logprobs[r] = log-softmax of the penalised logits at the chosen token, and for
// j < min(n_top_logprobs, max_top): out_top_ids / out_top_logprobs[r*max_top + j] = the j-th
// most likely token (ties: lower id first) and its log-softmax (-1 / -inf past the vocabulary).
// (c) temperature == 0 (or no finite logit): argmax, first index on ties. Otherwise weights
// e^((l - max)/T); top_k (> 0) keeps the k largest logits (ties: lower ids); top_p (< 1) keeps
// the shortest prefix, in (logit desc, id asc) order, of the top-k set whose mass reaches top_p
// of the set's mass; min_p (> 0) drops weights < min_p (relative to the most likely token);
// one draw u = veil_uniform(seed_lo, seed_hi, counter) picks the token whose cumulative weight
// interval, in id order, contains u * (kept mass). out_ids[r] = the chosen id.
// Logits must not be NaN. Launch: grid (n_rows), block 1024 (any multiple of 32 works).
extern "C" __global__ void __launch_bounds__(VEIL_SAMPLE_THREADS)
veil_sample(float* __restrict__ logits, const VeilSampleParams* __restrict__ params,
            const int* __restrict__ penalty_ids, const int* __restrict__ penalty_counts,
            int* __restrict__ out_ids, float* __restrict__ out_logprobs,
            int* __restrict__ out_top_ids, float* __restrict__ out_top_logprobs, int n_rows,
            int vocab, int max_top) {
    __shared__ SampleSmem sm;
    const int r = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    if (r >= n_rows) return;
    const VeilSampleParams P = params[r];
    float* row = logits + (size_t)r * vocab;

    // (a) penalties
    for (int j = tid; j < P.n_penalty; j += nt) {
        const int id = penalty_ids[P.penalty_offset + j];
        const int c = penalty_counts[P.penalty_offset + j];
        if (id < 0 || id >= vocab) continue;
        float l = row[id];
        // Kept finite (as the host sampler does): a tiny penalty would push a logit to
        // infinity, and the weights l - max of an infinite maximum are NaN.
        if (P.repetition_penalty != 1.0f)
            l = l > 0.0f ? fminf(l / P.repetition_penalty, VEIL_FLT_MAX)
                         : fmaxf(l * P.repetition_penalty, -VEIL_FLT_MAX);
        if (c > 0) l -= P.presence_penalty + P.frequency_penalty * (float)c;
        row[id] = l;
    }
    __syncthreads();

    float mx = -VEIL_INF;
    int amax = 0x7fffffff;
    for (int i = tid; i < vocab; i += nt)
        if (better(row[i], i, mx, amax)) {
            mx = row[i];
            amax = i;
        }
    block_argmax(&mx, &amax, sm.f, sm.i);
    if (amax == 0x7fffffff) amax = 0;

    // (b) normaliser and most likely tokens
    float log_z = 0.0f;
    if (P.n_top_logprobs >= 0) {
        float s = 0.0f;
        for (int i = tid; i < vocab; i += nt) s += expf(row[i] - mx);
        log_z = mx + logf(block_reduce(s, VeilSum(), sm.f));
        const int n = veil_min(P.n_top_logprobs, max_top);
        float pv = VEIL_INF;
        int pi = -1;
        for (int j = 0; j < n; ++j) {
            float bv = -VEIL_INF;
            int bi = 0x7fffffff;
            for (int i = tid; i < vocab; i += nt) {
                const float l = row[i];
                if ((l < pv || (l == pv && i > pi)) && better(l, i, bv, bi)) {
                    bv = l;
                    bi = i;
                }
            }
            block_argmax(&bv, &bi, sm.f, sm.i);
            if (tid == 0) {
                const bool found = bi != 0x7fffffff;
                out_top_ids[(size_t)r * max_top + j] = found ? bi : -1;
                out_top_logprobs[(size_t)r * max_top + j] = found ? bv - log_z : -VEIL_INF;
            }
            pv = bv;
            pi = bi;
        }
    }

    // (c) choice
    int choice = amax;
    if (P.temperature > 0.0f && mx > -VEIL_INF && mx < VEIL_INF)
        choice = sample_stochastic(row, vocab, P, mx, &sm);
    if (tid == 0) {
        out_ids[r] = choice;
        if (P.n_top_logprobs >= 0) out_logprobs[r] = row[choice] - log_z;
    }
}
