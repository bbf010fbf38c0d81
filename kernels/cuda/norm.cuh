// norm.cuh: RMSNorm (with the residual add fused in) on f32 residual rows, bf16 output.
#pragma once
#include "common.cuh"

// out = bf16(x[i] * rsqrt(mean(x^2) + eps) * weight[i]); statistics in f32 (the CPU's
// ops::rms_norm: v * inv * w). Every thread of the block must call it.
VEIL_DEV void rmsnorm_row(const float* x, const bf16* __restrict__ weight, bf16* __restrict__ out,
                          int hidden, float eps, float* scratch) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += x[i] * x[i];
    ss = block_reduce(ss, VeilSum(), scratch);
    const float inv = rsqrtf(ss / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[i] = f32_to_bf16(x[i] * inv * bf16_to_f32(weight[i]));
}

// veil_add_rmsnorm: for each row r < n_rows: if delta != NULL, residual[r][i] += f32(delta[r][i])
// (written back); then out[r] = RMSNorm(residual[r]) * weight as bf16.
// Launch: grid (n_rows), block 256 (any multiple of 32 up to 1024).
extern "C" __global__ void __launch_bounds__(256)
veil_add_rmsnorm(float* __restrict__ residual, const bf16* __restrict__ delta,
                 const bf16* __restrict__ weight, bf16* __restrict__ out, int n_rows, int hidden,
                 float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= n_rows) return;
    float* x = residual + (size_t)r * hidden;
    if (delta != 0) {
        const bf16* d = delta + (size_t)r * hidden;
        // Each thread later re-reads only the elements it wrote here.
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[i] += bf16_to_f32(d[i]);
    }
    rmsnorm_row(x, weight, out + (size_t)r * hidden, hidden, eps, scratch);
}

// veil_rmsnorm_rows: out[i] = RMSNorm(residual[rows[i]]) * weight as bf16, for i < n_rows
// (the rows whose logits are wanted). Launch: grid (n_rows), block 256.
extern "C" __global__ void __launch_bounds__(256)
veil_rmsnorm_rows(const float* __restrict__ residual, const int* __restrict__ rows,
                  const bf16* __restrict__ weight, bf16* __restrict__ out, int n_rows, int hidden,
                  float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= n_rows) return;
    rmsnorm_row(residual + (size_t)rows[r] * hidden, weight, out + (size_t)r * hidden, hidden, eps,
                scratch);
}
