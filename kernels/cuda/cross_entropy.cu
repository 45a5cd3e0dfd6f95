#include "kernels/cuda/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/device.cuh"

namespace moe::cuda {
namespace {

using internal::kThreads;

// One warp per row: an online max / sum of exponentials in one pass over the logits.
__global__ void CrossEntropyForwardKernel(float* losses, float* lse, const float* logits,
                                          const int32_t* targets, int n, int v) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* z = logits + int64_t{row} * v;
  float mx = -INFINITY, sum = 0.0f;
  for (int c = lane; c < v; c += 32) {
    const float x = z[c];
    if (x > mx) {
      sum = sum * expf(mx - x) + 1.0f;
      mx = x;
    } else {
      sum += expf(x - mx);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float omx = __shfl_xor_sync(0xffffffffu, mx, o);
    const float osum = __shfl_xor_sync(0xffffffffu, sum, o);
    const float m = fmaxf(mx, omx);
    sum = (mx == -INFINITY ? 0.0f : sum * expf(mx - m)) + (omx == -INFINITY ? 0.0f : osum * expf(omx - m));
    mx = m;
  }
  if (lane == 0) {
    const float l = mx + logf(sum);
    lse[row] = l;
    const int32_t tgt = targets[row];
    losses[row] = tgt >= 0 ? l - z[tgt] : 0.0f;
  }
}

// grid.y walks the rows, grid.x and the threads a row's columns, four at a time when kVec4
// (v % 4 == 0: every row starts 16-byte aligned): no per-element division, the row's target
// and lse loaded once per thread.
template <typename T, bool kVec4>
__global__ void CrossEntropyBackwardKernel(T* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, float scale, int n, int v) {
  const int step = kVec4 ? 4 : 1;
  for (int row = blockIdx.y; row < n; row += gridDim.y) {
    const int32_t tgt = targets[row];
    const float l = lse[row];
    const float* z = logits + int64_t{row} * v;
    T* dz = dlogits + int64_t{row} * v;
    for (int c = (blockIdx.x * blockDim.x + threadIdx.x) * step; c < v; c += gridDim.x * blockDim.x * step) {
      float g[4];
      if constexpr (kVec4) {
        const float4 x = *reinterpret_cast<const float4*>(z + c);
        g[0] = x.x, g[1] = x.y, g[2] = x.z, g[3] = x.w;
      } else {
        g[0] = z[c];
      }
#pragma unroll
      for (int e = 0; e < step; ++e) {
        float ge = 0.0f;
        if (tgt >= 0) {
          ge = scale * expf(g[e] - l);
          if (c + e == tgt) ge -= scale;
        }
        g[e] = ge;
      }
      if constexpr (kVec4 && sizeof(T) == 2) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(g[0], g[1]), hi = __floats2bfloat162_rn(g[2], g[3]);
        uint2 bits;
        memcpy(&bits.x, &lo, 4);
        memcpy(&bits.y, &hi, 4);
        *reinterpret_cast<uint2*>(dz + c) = bits;
      } else if constexpr (kVec4) {
        *reinterpret_cast<float4*>(dz + c) = make_float4(g[0], g[1], g[2], g[3]);
      } else if constexpr (sizeof(T) == 2) {
        dz[c] = __float2bfloat16(g[0]);
      } else {
        dz[c] = g[0];
      }
    }
  }
}

}  // namespace

void CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets, int n,
                         int v, cudaStream_t stream) {
  if (n <= 0) return;
  CrossEntropyForwardKernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(losses, lse, logits,
                                                                                 targets, n, v);
  MOE_CUDA_LAUNCH_CHECK();
}

template <typename T>
void LaunchCrossEntropyBackward(T* dlogits, const float* logits, const float* lse, const int32_t* targets,
                                float scale, int n, int v, cudaStream_t stream) {
  if (n <= 0 || v <= 0) return;
  const bool vec4 = v % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(dlogits) % (4 * sizeof(T)) == 0;
  const int per_thread = vec4 ? 4 : 1;
  const dim3 grid(std::max(1u, std::min<unsigned>(BlocksFor((v + per_thread - 1) / per_thread, kThreads), 64)),
                  std::min(n, 65535));
  if (vec4) {
    CrossEntropyBackwardKernel<T, true><<<grid, kThreads, 0, stream>>>(dlogits, logits, lse, targets, scale, n, v);
  } else {
    CrossEntropyBackwardKernel<T, false><<<grid, kThreads, 0, stream>>>(dlogits, logits, lse, targets, scale, n, v);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                          float scale, int n, int v, cudaStream_t stream) {
  LaunchCrossEntropyBackward(dlogits, logits, lse, targets, scale, n, v, stream);
}

void CrossEntropyBackwardBf16(bf16* dlogits, const float* logits, const float* lse,
                              const int32_t* targets, float scale, int n, int v, cudaStream_t stream) {
  LaunchCrossEntropyBackward(dlogits, logits, lse, targets, scale, n, v, stream);
}

}  // namespace moe::cuda
