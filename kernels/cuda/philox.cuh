// philox.cuh: Philox4x32-10 counter-based RNG (Salmon et al., SC'11; Random123 constants).
#pragma once
#include "common.cuh"

#define VEIL_PHILOX_M0 0xD2511F53u
#define VEIL_PHILOX_M1 0xCD9E8D57u
#define VEIL_PHILOX_W0 0x9E3779B9u
#define VEIL_PHILOX_W1 0xBB67AE85u

// Philox4x32-10 of counter c under key (k0, k1). Matches Random123's philox4x32(ctr, key) and
// veil_kernels::cuda::philox4x32_10.
VEIL_DEV uint4 philox4x32_10(uint4 c, unsigned k0, unsigned k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += VEIL_PHILOX_W0;
            k1 += VEIL_PHILOX_W1;
        }
        const unsigned hi0 = __umulhi(VEIL_PHILOX_M0, c.x), lo0 = VEIL_PHILOX_M0 * c.x;
        const unsigned hi1 = __umulhi(VEIL_PHILOX_M1, c.z), lo1 = VEIL_PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

// The sampler's uniform draw in [0, 1): x = Philox4x32-10(counter = (counter, 0, 0, 0),
// key = (seed_lo, seed_hi)); u = ((x.0 << 32 | x.1) >> 11) * 2^-53 (53 random bits).
VEIL_DEV double veil_uniform(unsigned seed_lo, unsigned seed_hi, unsigned counter) {
    const uint4 x = philox4x32_10(make_uint4(counter, 0u, 0u, 0u), seed_lo, seed_hi);
    const u64 bits = (((u64)x.x << 32) | (u64)x.y) >> 11;
    return (double)bits * (1.0 / 9007199254740992.0);
}
