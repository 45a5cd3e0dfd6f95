// AdamW on the GPU, twin of kernels/adamw.h, and the double-precision sums around the step
// (squared norms for gradient clipping, the loss sum).
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// AdamW as kernels::AdamWUpdate (bc1, bc2 = 1 - beta^step, computed by the caller in double then
// rounded to float as the CPU does). param_bf16 (n), when not null, gets the updated weights in
// bf16 (the copy the bf16 products read).
void AdamWUpdate(float* param, bf16* param_bf16, const float* grad, float* m, float* v, int64_t n,
                 float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
                 float grad_scale, cudaStream_t stream);

// *out += sum of x^2 (double; out is one device double), the same bits every run: partials is
// scratch for kPartialBlocks doubles (reduce.h), free when the call is queued.
void SquaredNorm(double* out, const float* x, int64_t n, double* partials, cudaStream_t stream);
void SquaredNorm(double* out, const bf16* x, int64_t n, double* partials, cudaStream_t stream);
// *out += sum of x (double), as SquaredNorm.
void Sum(double* out, const float* x, int64_t n, double* partials, cudaStream_t stream);

}  // namespace moe::cuda
