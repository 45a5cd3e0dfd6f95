// Fused softmax cross-entropy on the GPU, twin of kernels/cross_entropy.h; the gradient in fp32
// or bf16.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// losses (n), lse (n) from logits (n, v) ; a target < 0 gives loss 0.
void CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets, int n,
                         int v, cudaStream_t stream);
// dlogits (n, v) = scale * (softmax - onehot) in fp32 (may alias logits).
void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                          float scale, int n, int v, cudaStream_t stream);
// Both at once: losses, lse and the same dlogits in bf16, in one pass over the rows (the head's
// chunks with bf16 products: the fp32 logits are read again while hot in L2).
void CrossEntropyForwardBackwardBf16(float* losses, float* lse, bf16* dlogits, const float* logits,
                                     const int32_t* targets, float scale, int n, int v, cudaStream_t stream);

}  // namespace moe::cuda
