// RMSNorm on the GPU, twin of kernels/rmsnorm.h (eps given the same way, backward accumulates).
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// out (n, d), rstd (n) ; dinp (n, d) += , dweight (d) += (either may be null). dweight is summed
// over the rows in a fixed order (reduce.h): partials is scratch for PartialsFloats(d) floats,
// free when the call is queued (unread when dweight is null). out16 (n, d), when given: out's
// values rounded to bf16 as well, in the same pass (as CastToBf16 of out would round them).
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int n, int d, float eps,
                    cudaStream_t stream, bf16* out16 = nullptr);
// The same with the output in bf16 alone (each value rounded as CastToBf16 rounds the fp32 one):
// the operand of a bf16 product, with no fp32 copy and no cast pass.
void RmsNormForwardBf16(bf16* out, float* rstd, const float* inp, const float* weight, int n, int d, float eps,
                        cudaStream_t stream);
void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d, float* partials,
                     cudaStream_t stream);

}  // namespace moe::cuda
