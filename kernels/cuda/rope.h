// Rotary position embeddings on the GPU, twin of kernels/rope.h: the rotation in place on the
// fused qkv buffer, forward and backward, from device copies of kernels::RopeTables' tables.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// In place on qkv (b, t, (h + 2 hkv) hd); cos_t, sin_t (t, hd/2) device tables.
void RopeForward(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                 int hd, cudaStream_t stream);
// The forward into bf16: qkv16 = bf16(RopeForward(qkv)), q, k rotated and v copied, the same
// values as RopeForward then CastToBf16; qkv (fp32) is left as it is.
void RopeForwardToBf16(bf16* qkv16, const float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h,
                       int hkv, int hd, cudaStream_t stream);
// And the backward so: dqkv16 = bf16(RopeBackward(dqkv)), dqkv left as it is.
void RopeBackwardToBf16(bf16* dqkv16, const float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h,
                        int hkv, int hd, cudaStream_t stream);
// RoPE's backward in place on bf16 (q and k heads rotated back, v left): the bf16 gradients
// cuDNN's attention backward writes (cudnn_sdpa.h).
void RopeBackwardBf16(bf16* dqkv16, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv, int hd,
                      cudaStream_t stream);
void RopeBackward(float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                  int hd, cudaStream_t stream);

}  // namespace moe::cuda
