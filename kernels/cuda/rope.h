// Rotary position embeddings on the GPU, twin of kernels/rope.h: the tables (built on the host)
// and the rotation in place on the fused qkv buffer, forward and backward.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// cos, sin tables (t, hd/2) on the host, computed exactly as kernels/rope.cc does.
void RopeTablesHost(float* cos_t, float* sin_t, int t, int hd);
// In place on qkv (b, t, (h + 2 hkv) hd); cos_t, sin_t (t, hd/2) device tables.
void RopeForward(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                 int hd, cudaStream_t stream);
void RopeBackward(float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                  int hd, cudaStream_t stream);

}  // namespace moe::cuda
