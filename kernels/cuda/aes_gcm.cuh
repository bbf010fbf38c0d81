// aes_gcm.cuh: the device end of the sealed CC transfer channel (docs/cc-transfer.md, "The
// sealed channel, byte by byte (version 1)"): chunked AES-256-GCM (NIST SP 800-38D) with the
// channel's IVs and 32-byte associated data. Three kernels:
//
//   veil_gcm_verify   checks every chunk's tag of a host-to-device frame, sets a sticky
//                     failure word on a mismatch;
//   veil_gcm_decrypt  AES-CTR of the frame into the destination, only if the word is clear;
//   veil_gcm_seal     device-to-host: encrypts and tags a source buffer into a frame.
//
// Layout of a message of `len` bytes cut into n = max(1, ceil(len / chunk_size)) chunks: the
// frame is the ciphertext (chunk i at byte i * chunk_size, the last one shorter) followed by the
// n tags of 16 bytes. Chunk i of the message uses
//   IV   = channel_id (BE32) || first_counter + i (BE64)
//   J0   = IV || 00000001, counter block of its 16-byte block b: IV || BE32(2 + b)
//   AAD  = "VCC1" || dir (u8) || last (u8) || 0x0000 || epoch (BE32) || seq (BE64) || i (BE32)
//          || len (BE64)                                                           (32 bytes)
//   tag  = E_K(J0) ^ GHASH_H(AAD || ciphertext || 0-pad || BE64(256) || BE64(8 * chunk len)).
//
// Implementation notes (why it looks the way it does):
// * AES-256 with one T-table (Te0 of the reference "rijndael-alg-fst.c"; Te1..Te3 are its byte
//   rotations) in shared memory, replicated 32 times so that lane l reads only bank l: the
//   lookups of a warp never conflict, whatever the data (fast, and no data-dependent bank
//   conflicts for timing to reveal). 32 KiB per block, built from the S-box at block start.
// * GHASH multiplications in GF(2^128) on 64-bit halves in "natural" bit order (bit k of the
//   128-bit value is the coefficient of x^k: GCM's bit-reflected bytes, bit-reversed on load),
//   carry-less products by integer multiplication with 3-bit holes between the data bits (the
//   trick of BearSSL's ghash_ctmul: no carry can reach the next data bit), Karatsuba on 32- and
//   64-bit halves, then reduction by x^128 = x^7 + x^2 + x + 1. Constant time, no tables.
// * GHASH of a chunk is parallel within the block: of the m = 2 + ceil(chunk len / 16) + 1
//   blocks (AAD, ciphertext, lengths), thread t takes blocks t, t+T, t+2T, ... (T = blockDim.x:
//   each step of a warp reads 512 contiguous bytes), sums them by Horner in H^T, multiplies by
//   H^(m - its last block) and the block XOR-reduces. H^1..H^T are computed once per block.
// * Blocks loop over chunks (grid-stride), so the per-block setup (T-table, key schedule, H and
//   its powers) is paid once per resident block, not once per chunk.
// * Byte pointers: 16-byte loads and stores when frame/src/dst are 16-byte aligned (the backend's
//   buffers are 256-byte aligned), byte accesses otherwise and for the last partial block. The
//   tags start at frame + len, so they are read and written bytewise.
#pragma once
#include "common.cuh"

// Message parameters, passed by value (veil_kernels::cuda::GcmMsg): 40 bytes, 8-byte aligned,
// no padding.
struct VeilGcmMsg {
    unsigned channel_id;     // IV bytes 0..3 (BE)
    unsigned dir;            // AAD byte 4 (its low byte): 0 host-to-device, 1 device-to-host
    unsigned epoch;          // AAD bytes 8..11 (BE)
    unsigned chunk_size;     // multiple of 16, 16 ..= 16 MiB
    u64 seq;                 // AAD bytes 12..19 (BE): messages sent before in this epoch
    u64 first_counter;       // chunk i has IV counter first_counter + i
    u64 len;                 // plaintext bytes of the message (frame: len + 16 n)
};
static_assert(sizeof(VeilGcmMsg) == 40, "VeilGcmMsg is 40 bytes (kernels/cuda/ABI.md)");

#define VEIL_GCM_MAX_THREADS 256
#define VEIL_GCM_MAX_CHUNK (16u << 20)
// Words of the replicated T-table: 256 entries x 32 lanes.
#define VEIL_AES_TABLE_WORDS (256 * 32)
// H^(2^k) for k < VEIL_GCM_SQUARES covers every exponent up to VEIL_GCM_MAX_THREADS.
#define VEIL_GCM_SQUARES 9

// The AES S-box (FIPS-197, figure 7).
__constant__ unsigned char veil_aes_sbox[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
};

// ---- AES-256 --------------------------------------------------------------------------------

VEIL_DEV unsigned veil_bswap32(unsigned w) { return __byte_perm(w, 0u, 0x0123u); }
VEIL_DEV unsigned veil_rotr32(unsigned x, int n) { return (x >> n) | (x << (32 - n)); }
VEIL_DEV unsigned veil_xtime(unsigned b) { return ((b << 1) ^ ((b >> 7) * 0x1bu)) & 0xffu; }

// Te0[x] = (2·S[x], S[x], S[x], 3·S[x]) as a big-endian word (MixColumns' first column).
VEIL_DEV unsigned veil_aes_te0(unsigned x) {
    const unsigned s = veil_aes_sbox[x], s2 = veil_xtime(s);
    return (s2 << 24) | (s << 16) | (s << 8) | (s2 ^ s);
}

VEIL_DEV unsigned veil_aes_subword(unsigned w) {
    return ((unsigned)veil_aes_sbox[w >> 24] << 24) | ((unsigned)veil_aes_sbox[(w >> 16) & 0xff] << 16) |
           ((unsigned)veil_aes_sbox[(w >> 8) & 0xff] << 8) | (unsigned)veil_aes_sbox[w & 0xff];
}

// FIPS-197 key expansion for a 32-byte key: 60 round-key words (big-endian words of the key
// schedule). Serial: one thread runs it.
VEIL_DEV void veil_aes256_expand(const unsigned char* key, unsigned* rk) {
    for (int i = 0; i < 8; ++i)
        rk[i] = ((unsigned)key[4 * i] << 24) | ((unsigned)key[4 * i + 1] << 16) |
                ((unsigned)key[4 * i + 2] << 8) | (unsigned)key[4 * i + 3];
    unsigned rcon = 1;
    for (int i = 8; i < 60; ++i) {
        unsigned t = rk[i - 1];
        if (i % 8 == 0) {
            t = veil_aes_subword((t << 8) | (t >> 24)) ^ (rcon << 24);
            rcon = veil_xtime(rcon);
        } else if (i % 8 == 4) {
            t = veil_aes_subword(t);
        }
        rk[i] = rk[i - 8] ^ t;
    }
}

// Fills the replicated T-table (table[x * 32 + lane] = Te0[x]; consecutive threads write
// consecutive words, so the fill is conflict-free too) and, on thread 0, the key schedule.
// Every thread of the block must call it (it ends with a barrier).
VEIL_DEV void veil_aes_setup(const unsigned char* key, unsigned* table, unsigned* rk) {
    for (int i = threadIdx.x; i < VEIL_AES_TABLE_WORDS; i += blockDim.x) table[i] = veil_aes_te0(i >> 5);
    if (threadIdx.x == 0) veil_aes256_expand(key, rk);
    __syncthreads();
}

// Encrypts one block in place: s0..s3 are the big-endian words of the 16 bytes. `tl` is
// table + (lane of the calling thread): entry x of this lane's copy is tl[x * 32].
VEIL_DEV void veil_aes256_encrypt(const unsigned* rk, const unsigned* tl, unsigned& s0, unsigned& s1,
                                  unsigned& s2, unsigned& s3) {
    s0 ^= rk[0];
    s1 ^= rk[1];
    s2 ^= rk[2];
    s3 ^= rk[3];
#pragma unroll
    for (int r = 1; r < 14; ++r) {
        const unsigned* k = rk + 4 * r;
        const unsigned t0 = tl[(s0 >> 24) << 5] ^ veil_rotr32(tl[((s1 >> 16) & 0xff) << 5], 8) ^
                            veil_rotr32(tl[((s2 >> 8) & 0xff) << 5], 16) ^
                            veil_rotr32(tl[(s3 & 0xff) << 5], 24) ^ k[0];
        const unsigned t1 = tl[(s1 >> 24) << 5] ^ veil_rotr32(tl[((s2 >> 16) & 0xff) << 5], 8) ^
                            veil_rotr32(tl[((s3 >> 8) & 0xff) << 5], 16) ^
                            veil_rotr32(tl[(s0 & 0xff) << 5], 24) ^ k[1];
        const unsigned t2 = tl[(s2 >> 24) << 5] ^ veil_rotr32(tl[((s3 >> 16) & 0xff) << 5], 8) ^
                            veil_rotr32(tl[((s0 >> 8) & 0xff) << 5], 16) ^
                            veil_rotr32(tl[(s1 & 0xff) << 5], 24) ^ k[2];
        const unsigned t3 = tl[(s3 >> 24) << 5] ^ veil_rotr32(tl[((s0 >> 16) & 0xff) << 5], 8) ^
                            veil_rotr32(tl[((s1 >> 8) & 0xff) << 5], 16) ^
                            veil_rotr32(tl[(s2 & 0xff) << 5], 24) ^ k[3];
        s0 = t0;
        s1 = t1;
        s2 = t2;
        s3 = t3;
    }
    // Last round (no MixColumns): S[x] is byte 1 and byte 2 of Te0[x].
#define VEIL_AES_LAST(a, b, c, d)                                                                  \
    (((tl[(a >> 24) << 5] << 8) & 0xff000000u) | (tl[((b >> 16) & 0xff) << 5] & 0x00ff0000u) |    \
     (tl[((c >> 8) & 0xff) << 5] & 0x0000ff00u) | ((tl[(d & 0xff) << 5] >> 8) & 0xffu))
    const unsigned o0 = VEIL_AES_LAST(s0, s1, s2, s3) ^ rk[56];
    const unsigned o1 = VEIL_AES_LAST(s1, s2, s3, s0) ^ rk[57];
    const unsigned o2 = VEIL_AES_LAST(s2, s3, s0, s1) ^ rk[58];
    const unsigned o3 = VEIL_AES_LAST(s3, s0, s1, s2) ^ rk[59];
#undef VEIL_AES_LAST
    s0 = o0;
    s1 = o1;
    s2 = o2;
    s3 = o3;
}

// ---- GF(2^128) ------------------------------------------------------------------------------

// An element of GCM's field in natural order: bit k (of lo for k < 64, of hi for k >= 64) is
// the coefficient of x^k. GCM's byte string b[0..16] maps to it by bit-reversing each
// big-endian 64-bit half (b[0]'s most significant bit is x^0).
struct VeilGf {
    u64 lo, hi;
};

VEIL_DEV VeilGf veil_gf_from_be(unsigned w0, unsigned w1, unsigned w2, unsigned w3) {
    VeilGf r;
    r.lo = (u64)__brev(w0) | ((u64)__brev(w1) << 32);
    r.hi = (u64)__brev(w2) | ((u64)__brev(w3) << 32);
    return r;
}

// The inverse of veil_gf_from_be: big-endian words of GCM's byte string.
VEIL_DEV void veil_gf_to_be(VeilGf a, unsigned* w) {
    w[0] = __brev((unsigned)a.lo);
    w[1] = __brev((unsigned)(a.lo >> 32));
    w[2] = __brev((unsigned)a.hi);
    w[3] = __brev((unsigned)(a.hi >> 32));
}

// Carry-less 32 x 32 -> 64-bit product. Each operand is split into 4 parts holding every
// fourth bit; an integer product of two parts has, at each bit position of its residue class,
// a column sum of at most 8 terms, which fits in the 4 bits up to the next position of the
// class, so no carry corrupts the parities that are kept.
VEIL_DEV u64 veil_clmul32(unsigned x, unsigned y) {
    const unsigned x0 = x & 0x11111111u, x1 = x & 0x22222222u, x2 = x & 0x44444444u,
                   x3 = x & 0x88888888u;
    const unsigned y0 = y & 0x11111111u, y1 = y & 0x22222222u, y2 = y & 0x44444444u,
                   y3 = y & 0x88888888u;
    const u64 z0 = ((u64)x0 * y0) ^ ((u64)x1 * y3) ^ ((u64)x2 * y2) ^ ((u64)x3 * y1);
    const u64 z1 = ((u64)x0 * y1) ^ ((u64)x1 * y0) ^ ((u64)x2 * y3) ^ ((u64)x3 * y2);
    const u64 z2 = ((u64)x0 * y2) ^ ((u64)x1 * y1) ^ ((u64)x2 * y0) ^ ((u64)x3 * y3);
    const u64 z3 = ((u64)x0 * y3) ^ ((u64)x1 * y2) ^ ((u64)x2 * y1) ^ ((u64)x3 * y0);
    return (z0 & 0x1111111111111111ull) | (z1 & 0x2222222222222222ull) |
           (z2 & 0x4444444444444444ull) | (z3 & 0x8888888888888888ull);
}

// Carry-less 64 x 64 -> 128-bit product (Karatsuba: 3 products of 32-bit halves).
VEIL_DEV void veil_clmul64(u64 a, u64 b, u64& lo, u64& hi) {
    const unsigned a0 = (unsigned)a, a1 = (unsigned)(a >> 32);
    const unsigned b0 = (unsigned)b, b1 = (unsigned)(b >> 32);
    const u64 z0 = veil_clmul32(a0, b0), z2 = veil_clmul32(a1, b1);
    const u64 z1 = veil_clmul32(a0 ^ a1, b0 ^ b1) ^ z0 ^ z2;
    lo = z0 ^ (z1 << 32);
    hi = z2 ^ (z1 >> 32);
}

// a·b in GF(2^128) = GF(2)[x] / (x^128 + x^7 + x^2 + x + 1).
VEIL_DEV VeilGf veil_gf_mul(VeilGf a, VeilGf b) {
    u64 l0, l1, h0, h1, m0, m1;
    veil_clmul64(a.lo, b.lo, l0, l1);
    veil_clmul64(a.hi, b.hi, h0, h1);
    veil_clmul64(a.lo ^ a.hi, b.lo ^ b.hi, m0, m1);
    m0 ^= l0 ^ h0;
    m1 ^= l1 ^ h1;
    // The 256-bit product r3:r2:r1:r0; fold the high half h = r3:r2 with x^128 = x^7+x^2+x+1:
    // h·(1 + x + x^2 + x^7) overflows bit 127 by t = h >> 127 ^ h >> 126 ^ h >> 121 (at most
    // 7 bits), which folds once more without overflowing.
    const u64 r0 = l0, r1 = l1 ^ m0, r2 = h0 ^ m1, r3 = h1;
    const u64 t = (r3 >> 63) ^ (r3 >> 62) ^ (r3 >> 57);
    VeilGf r;
    r.lo = r0 ^ r2 ^ (r2 << 1) ^ (r2 << 2) ^ (r2 << 7) ^ t ^ (t << 1) ^ (t << 2) ^ (t << 7);
    r.hi = r1 ^ r3 ^ ((r3 << 1) | (r2 >> 63)) ^ ((r3 << 2) | (r2 >> 62)) ^ ((r3 << 7) | (r2 >> 57));
    return r;
}

VEIL_DEV VeilGf veil_gf_xor(VeilGf a, VeilGf b) {
    VeilGf r;
    r.lo = a.lo ^ b.lo;
    r.hi = a.hi ^ b.hi;
    return r;
}

// XOR of `v` over the block, returned to every thread. `scratch` holds 32 VeilGf in shared
// memory. Every thread must call it (barriers).
VEIL_DEV VeilGf veil_gf_block_xor(VeilGf v, VeilGf* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        v.lo ^= __shfl_xor_sync(VEIL_FULL_MASK, v.lo, o);
        v.hi ^= __shfl_xor_sync(VEIL_FULL_MASK, v.hi, o);
    }
    __syncthreads();  // a previous call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    VeilGf r = scratch[0];
    for (int i = 1; i < nw; ++i) r = veil_gf_xor(r, scratch[i]);
    return r;
}

// ---- the channel's chunks -------------------------------------------------------------------

// Traps on parameters the host must never send (a zero chunk size would loop forever).
VEIL_DEV void veil_gcm_check(const VeilGcmMsg& msg) {
    if (msg.chunk_size == 0 || msg.chunk_size % 16 != 0 || msg.chunk_size > VEIL_GCM_MAX_CHUNK ||
        blockDim.x > VEIL_GCM_MAX_THREADS || blockDim.x % 32 != 0)
        __trap();
}

// n = max(1, ceil(len / chunk_size)).
VEIL_DEV u64 veil_gcm_chunks(const VeilGcmMsg& msg) {
    return msg.len == 0 ? 1 : (msg.len + msg.chunk_size - 1) / msg.chunk_size;
}

// Bytes of chunk c (the last one may be shorter, or empty when len = 0).
VEIL_DEV unsigned veil_gcm_chunk_len(const VeilGcmMsg& msg, u64 c) {
    const u64 off = c * msg.chunk_size;
    const u64 rest = msg.len > off ? msg.len - off : 0;
    return rest < msg.chunk_size ? (unsigned)rest : msg.chunk_size;
}

// E_K(IV(c) || ctr) as big-endian words, IV(c) = channel_id || first_counter + c.
VEIL_DEV void veil_gcm_counter_block(const VeilGcmMsg& msg, u64 c, unsigned ctr, const unsigned* rk,
                                     const unsigned* tl, unsigned* o) {
    const u64 iv_ctr = msg.first_counter + c;
    o[0] = msg.channel_id;
    o[1] = (unsigned)(iv_ctr >> 32);
    o[2] = (unsigned)iv_ctr;
    o[3] = ctr;
    veil_aes256_encrypt(rk, tl, o[0], o[1], o[2], o[3]);
}

// 16 bytes as little-endian words (what a uint4 load gives); bytes from `nbytes` on read as 0.
VEIL_DEV uint4 veil_load16(const unsigned char* p, unsigned nbytes, bool aligned) {
    if (nbytes == 16 && aligned) return *reinterpret_cast<const uint4*>(p);
    // Unrolled with constant indices so that w stays in registers (no local memory).
    unsigned w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (unsigned i = 0; i < 16; ++i)
        if (i < nbytes) w[i >> 2] |= (unsigned)p[i] << (8 * (i & 3));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

VEIL_DEV void veil_store16(unsigned char* p, uint4 v, unsigned nbytes, bool aligned) {
    if (nbytes == 16 && aligned) {
        *reinterpret_cast<uint4*>(p) = v;
        return;
    }
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (unsigned i = 0; i < 16; ++i)
        if (i < nbytes) p[i] = (unsigned char)(w[i >> 2] >> (8 * (i & 3)));
}

// Zeroes the bytes from `nbytes` on (GHASH pads the last ciphertext block with zeros).
VEIL_DEV uint4 veil_mask16(uint4 v, unsigned nbytes) {
    if (nbytes >= 16) return v;
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned keep = nbytes > 4 * i ? nbytes - 4 * i : 0u;
        w[i] &= keep >= 4 ? 0xffffffffu : ((1u << (8 * keep)) - 1u);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

VEIL_DEV uint4 veil_xor_keystream(uint4 v, const unsigned* ks) {
    return make_uint4(v.x ^ veil_bswap32(ks[0]), v.y ^ veil_bswap32(ks[1]), v.z ^ veil_bswap32(ks[2]),
                      v.w ^ veil_bswap32(ks[3]));
}

// Per-block GHASH state: H^(2^k) (k < VEIL_GCM_SQUARES) and H^1..H^T, T = blockDim.x.
struct VeilGhashKeys {
    VeilGf sq[VEIL_GCM_SQUARES];
    VeilGf pow[VEIL_GCM_MAX_THREADS];  // pow[e - 1] = H^e
};

// H = E_K(0^128), its squares (thread 0), then H^(t+1) on thread t. Every thread must call it.
VEIL_DEV void veil_ghash_setup(const unsigned* rk, const unsigned* tl, VeilGhashKeys* g) {
    if (threadIdx.x == 0) {
        unsigned h0 = 0, h1 = 0, h2 = 0, h3 = 0;
        veil_aes256_encrypt(rk, tl, h0, h1, h2, h3);
        g->sq[0] = veil_gf_from_be(h0, h1, h2, h3);
        for (int k = 1; k < VEIL_GCM_SQUARES; ++k) g->sq[k] = veil_gf_mul(g->sq[k - 1], g->sq[k - 1]);
    }
    __syncthreads();
    const unsigned e = threadIdx.x + 1;
    VeilGf r = {1ull, 0ull};  // the field's 1; replaced by the first factor (e >= 1)
    bool one = true;
    for (int k = 0; k < VEIL_GCM_SQUARES; ++k)
        if ((e >> k) & 1u) {
            r = one ? g->sq[k] : veil_gf_mul(r, g->sq[k]);
            one = false;
        }
    g->pow[threadIdx.x] = r;
    __syncthreads();
}

// This thread's share of chunk c's GHASH: blocks j = t, t+T, ... of the chunk's
// m = ceil(clen / 16) + 3 GHASH blocks (0, 1: AAD; 2 .. m-2: ciphertext; m-1: lengths), each
// weighted by H^(m - j). `ct(b, nbytes)` returns ciphertext block b (little-endian words,
// zero-padded past nbytes); for sealing it encrypts and stores it too.
template <class Ct>
VEIL_DEV VeilGf veil_ghash_share(const VeilGcmMsg& msg, u64 c, u64 n, unsigned clen,
                                 const VeilGhashKeys* g, Ct ct) {
    const unsigned T = blockDim.x, m = (clen + 15) / 16 + 3;
    const VeilGf ht = g->pow[T - 1];
    VeilGf acc = {0ull, 0ull};
    unsigned last_j = 0;
    for (unsigned j = threadIdx.x; j < m; j += T) {
        VeilGf x;
        if (j == 0) {
            // "VCC1" || dir || last || 0x0000 || epoch || seq (high word)
            x = veil_gf_from_be(0x56434331u, ((msg.dir & 0xffu) << 24) | ((c + 1 == n ? 1u : 0u) << 16),
                                msg.epoch, (unsigned)(msg.seq >> 32));
        } else if (j == 1) {
            // seq (low word) || chunk index || len
            x = veil_gf_from_be((unsigned)msg.seq, (unsigned)c, (unsigned)(msg.len >> 32),
                                (unsigned)msg.len);
        } else if (j == m - 1) {
            // bit lengths: AAD 256, ciphertext 8 * clen
            const u64 bits = (u64)clen * 8;
            x = veil_gf_from_be(0u, 256u, (unsigned)(bits >> 32), (unsigned)bits);
        } else {
            const unsigned b = j - 2, left = clen - 16 * b;
            const uint4 v = ct(b, left < 16 ? left : 16u);
            x = veil_gf_from_be(veil_bswap32(v.x), veil_bswap32(v.y), veil_bswap32(v.z),
                                veil_bswap32(v.w));
        }
        // Horner in H^T: the block before this one (j - T) gains one more factor H^T.
        acc = veil_gf_xor(j >= T ? veil_gf_mul(acc, ht) : acc, x);
        last_j = j;
    }
    if (threadIdx.x >= m) return acc;  // no blocks: 0
    return veil_gf_mul(acc, g->pow[m - last_j - 1]);
}

// ---- kernels --------------------------------------------------------------------------------

// Checks the tags of a frame: for every chunk whose computed tag differs from the frame's (any
// bit), atomicOr(status, 1). Never clears status (sticky: the host zeroes it once per channel).
// Grid: any size (blocks loop over chunks; the backend launches min(n, resident blocks)).
// Block: 256 (any multiple of 32 up to 256). Reads only; the tags at frame + len may be
// unaligned.
extern "C" __global__ void __launch_bounds__(VEIL_GCM_MAX_THREADS)
veil_gcm_verify(const unsigned char* key, const unsigned char* frame, VeilGcmMsg msg, unsigned* status) {
    __shared__ unsigned table[VEIL_AES_TABLE_WORDS];
    __shared__ unsigned rk[60];
    __shared__ VeilGhashKeys g;
    __shared__ VeilGf scratch[32];
    __shared__ unsigned ej0[4];
    veil_gcm_check(msg);
    veil_aes_setup(key, table, rk);
    const unsigned* tl = table + (threadIdx.x & 31);
    veil_ghash_setup(rk, tl, &g);
    const u64 n = veil_gcm_chunks(msg);
    if (n > 0x100000000ull) __trap();  // the chunk index is 32 bits in the AAD
    const bool aligned = ((unsigned long long)frame & 15) == 0;
    for (u64 c = blockIdx.x; c < n; c += gridDim.x) {
        const unsigned clen = veil_gcm_chunk_len(msg, c);
        const unsigned char* ct = frame + c * msg.chunk_size;
        // E_K(J0) on the last warp, which has the fewest GHASH blocks; read after the barriers
        // of the reduction below.
        if (threadIdx.x == blockDim.x - 1) veil_gcm_counter_block(msg, c, 1u, rk, tl, ej0);
        const VeilGf share = veil_ghash_share(msg, c, n, clen, &g, [&](unsigned b, unsigned nbytes) {
            return veil_load16(ct + 16 * b, nbytes, aligned);
        });
        const VeilGf s = veil_gf_block_xor(share, scratch);
        if (threadIdx.x == 0) {
            unsigned w[4];
            veil_gf_to_be(s, w);
            const unsigned char* tag = frame + msg.len + 16 * c;
            unsigned diff = 0;  // constant time: every byte is compared
            for (int i = 0; i < 16; ++i) {
                const unsigned want = ((w[i >> 2] ^ ej0[i >> 2]) >> (24 - 8 * (i & 3))) & 0xffu;
                diff |= want ^ tag[i];
            }
            if (diff != 0) atomicOr(status, 1u);
        }
        __syncthreads();  // ej0 and scratch are reused by the next chunk
    }
}

// If *status != 0: returns at once, writing nothing. Else dst[0..len) = AES-CTR decryption of
// the frame's ciphertext (chunk c's block b with counter block IV(c) || BE32(2 + b)). Launch it
// after veil_gcm_verify on the same stream. Grid: any size (grid-stride over the 16-byte blocks;
// the backend launches min(ceil(len / 4096), resident blocks)). Block: 256 (any multiple of 32
// up to 256). frame and dst must not overlap.
extern "C" __global__ void __launch_bounds__(VEIL_GCM_MAX_THREADS)
veil_gcm_decrypt(const unsigned char* key, const unsigned char* frame, unsigned char* dst,
                 VeilGcmMsg msg, const unsigned* status) {
    __shared__ unsigned table[VEIL_AES_TABLE_WORDS];
    __shared__ unsigned rk[60];
    // Written by an earlier kernel on this stream; volatile so that it is read here, once.
    if (*(const volatile unsigned*)status != 0) return;
    veil_gcm_check(msg);
    veil_aes_setup(key, table, rk);
    const unsigned* tl = table + (threadIdx.x & 31);
    const bool aligned = (((unsigned long long)frame | (unsigned long long)dst) & 15) == 0;
    const u64 blocks = (msg.len + 15) / 16, per_chunk = msg.chunk_size / 16;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    // Block i is block b of chunk c; (c, b) advance by (stride / per_chunk, stride % per_chunk)
    // with a carry, so the loop has no 64-bit division.
    const u64 step_c = stride / per_chunk, step_b = stride % per_chunk;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 c = i / per_chunk, b = i % per_chunk;
    for (; i < blocks; i += stride) {
        const u64 left = msg.len - 16 * i;
        const unsigned nbytes = left < 16 ? (unsigned)left : 16u;
        unsigned ks[4];
        veil_gcm_counter_block(msg, c, 2u + (unsigned)b, rk, tl, ks);
        const uint4 v = veil_load16(frame + 16 * i, nbytes, aligned);
        veil_store16(dst + 16 * i, veil_xor_keystream(v, ks), nbytes, aligned);
        c += step_c;
        b += step_b;
        if (b >= per_chunk) {
            b -= per_chunk;
            ++c;
        }
    }
}

// frame[0..len) = AES-CTR encryption of src[0..len), frame[len + 16c ..][..16] = tag of chunk c.
// Grid: any size (blocks loop over chunks; the backend launches min(n, resident blocks)).
// Block: 256 (any multiple of 32 up to 256). src and frame must not overlap.
extern "C" __global__ void __launch_bounds__(VEIL_GCM_MAX_THREADS)
veil_gcm_seal(const unsigned char* key, const unsigned char* src, unsigned char* frame, VeilGcmMsg msg) {
    __shared__ unsigned table[VEIL_AES_TABLE_WORDS];
    __shared__ unsigned rk[60];
    __shared__ VeilGhashKeys g;
    __shared__ VeilGf scratch[32];
    __shared__ unsigned ej0[4];
    veil_gcm_check(msg);
    veil_aes_setup(key, table, rk);
    const unsigned* tl = table + (threadIdx.x & 31);
    veil_ghash_setup(rk, tl, &g);
    const u64 n = veil_gcm_chunks(msg);
    if (n > 0x100000000ull) __trap();
    const bool aligned = (((unsigned long long)src | (unsigned long long)frame) & 15) == 0;
    for (u64 c = blockIdx.x; c < n; c += gridDim.x) {
        const unsigned clen = veil_gcm_chunk_len(msg, c);
        const u64 off = c * msg.chunk_size;
        if (threadIdx.x == blockDim.x - 1) veil_gcm_counter_block(msg, c, 1u, rk, tl, ej0);
        // Each thread encrypts exactly the ciphertext blocks it hashes: no re-read, no barrier.
        const VeilGf share = veil_ghash_share(msg, c, n, clen, &g, [&](unsigned b, unsigned nbytes) {
            unsigned ks[4];
            veil_gcm_counter_block(msg, c, 2u + b, rk, tl, ks);
            const uint4 v = veil_xor_keystream(veil_load16(src + off + 16 * b, nbytes, aligned), ks);
            veil_store16(frame + off + 16 * b, v, nbytes, aligned);
            return veil_mask16(v, nbytes);
        });
        const VeilGf s = veil_gf_block_xor(share, scratch);
        if (threadIdx.x == 0) {
            unsigned w[4];
            veil_gf_to_be(s, w);
            unsigned char* tag = frame + msg.len + 16 * c;
            for (int i = 0; i < 16; ++i)
                tag[i] = (unsigned char)((w[i >> 2] ^ ej0[i >> 2]) >> (24 - 8 * (i & 3)));
        }
        __syncthreads();
    }
}
