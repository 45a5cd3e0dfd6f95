// Rotary position embeddings on the GPU, twin of kernels/rope.h: the rotation in place on the
// fused qkv buffer, forward and backward, from device copies of kernels::RopeTables' tables.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// In place on qkv (b, t, (h + 2 hkv) hd); cos_t, sin_t (t, hd/2) device tables.
void RopeForward(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                 int hd, cudaStream_t stream);
void RopeBackward(float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                  int hd, cudaStream_t stream);

}  // namespace moe::cuda
