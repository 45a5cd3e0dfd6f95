// Permute and unpermute on the GPU: tokens to their experts' slots of the routing plan and the
// weighted combine back, forward and backward.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// xs[slot] = x[token of slot] ; dx (n, d) += gathered dxs.
void PermuteForward(float* xs, const float* x, const int32_t* assignment_to_slot, int n, int k, int d,
                    cudaStream_t stream);
void PermuteBackward(float* dx, const float* dxs, const int32_t* assignment_to_slot, int n, int k, int d,
                     cudaStream_t stream);
// out (n, d) = sum over kept j of weights[t, j] ys[slot] (then residual + that sum, when a residual
// (n, d) is given) ; dys += , dweights += (either may be null).
void UnpermuteForward(float* out, const float* ys, const float* weights, const int32_t* assignment_to_slot,
                      int n, int k, int d, cudaStream_t stream, const float* residual = nullptr);
void UnpermuteBackward(float* dys, float* dweights, const float* dout, const float* ys, const float* weights,
                       const int32_t* assignment_to_slot, int n, int k, int d, cudaStream_t stream);
// The same over bf16 ys (the bf16 experts' output rows, kept so for the backward: each value is
// read as the float it is, so the results are those of the fp32 ys holding the same values).
void UnpermuteForward(float* out, const bf16* ys, const float* weights, const int32_t* assignment_to_slot, int n,
                      int k, int d, cudaStream_t stream, const float* residual = nullptr);
void UnpermuteBackward(float* dys, float* dweights, const float* dout, const bf16* ys, const float* weights,
                       const int32_t* assignment_to_slot, int n, int k, int d, cudaStream_t stream);

}  // namespace moe::cuda
