#include "kernels/cuda/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/device.cuh"

namespace moe::cuda {
namespace {

using internal::kThreads;

// One block per row. Pass 1: each thread's online max and sum of exponentials over its columns
// (four at a time when kVec4: v % 4 == 0 and the rows 16-byte aligned), then the block's. With
// kGrad, pass 2 writes the bf16 dlogits = scale * (softmax - onehot) while the row is still in L2,
// so the backward never reads the fp32 logits again.
template <bool kVec4, bool kGrad>
__global__ void __launch_bounds__(kThreads) CrossEntropyRowKernel(float* losses, float* lse, bf16* dlogits,
                                                                  const float* logits, const int32_t* targets,
                                                                  float scale, int v) {
  const int64_t row = blockIdx.x;
  const float* z = logits + row * v;
  float mx = -INFINITY, sum = 0.0f;
  auto add = [&](float x) {
    if (x > mx) {
      sum = sum * expf(mx - x) + 1.0f;
      mx = x;
    } else {
      sum += expf(x - mx);
    }
  };
  if constexpr (kVec4) {
    for (int c = threadIdx.x * 4; c < v; c += blockDim.x * 4) {
      const float4 x = *reinterpret_cast<const float4*>(z + c);
      add(x.x), add(x.y), add(x.z), add(x.w);
    }
  } else {
    for (int c = threadIdx.x; c < v; c += blockDim.x) add(z[c]);
  }
  auto merge = [&](float omx, float osum) {
    const float m = fmaxf(mx, omx);
    sum = (mx == -INFINITY ? 0.0f : sum * expf(mx - m)) + (omx == -INFINITY ? 0.0f : osum * expf(omx - m));
    mx = m;
  };
  for (int o = 16; o > 0; o >>= 1) {
    merge(__shfl_xor_sync(0xffffffffu, mx, o), __shfl_xor_sync(0xffffffffu, sum, o));
  }
  __shared__ float warp_mx[kThreads / 32], warp_sum[kThreads / 32], row_lse;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_mx[warp] = mx, warp_sum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) merge(warp_mx[w], warp_sum[w]);
    const float l = mx + logf(sum);
    const int32_t tgt = targets[row];
    lse[row] = l;
    losses[row] = tgt >= 0 ? l - z[tgt] : 0.0f;
    row_lse = l;
  }
  if constexpr (kGrad) {
    __syncthreads();
    const float l = row_lse;
    const int32_t tgt = targets[row];
    bf16* dz = dlogits + row * v;
    auto grad = [&](float x, int c) {
      if (tgt < 0) return 0.0f;
      const float g = scale * expf(x - l);
      return c == tgt ? g - scale : g;
    };
    if constexpr (kVec4) {
      for (int c = threadIdx.x * 4; c < v; c += blockDim.x * 4) {
        const float4 x = *reinterpret_cast<const float4*>(z + c);
        internal::StoreBf16x4(dz + c,
                              make_float4(grad(x.x, c), grad(x.y, c + 1), grad(x.z, c + 2), grad(x.w, c + 3)));
      }
    } else {
      for (int c = threadIdx.x; c < v; c += blockDim.x) dz[c] = __float2bfloat16(grad(z[c], c));
    }
  }
}

// The fp32 path's backward, in place: grid.y walks the rows, grid.x and the threads a row's
// columns, four at a time when kVec4 (v % 4 == 0: every row starts 16-byte aligned).
template <bool kVec4>
__global__ void CrossEntropyBackwardKernel(float* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, float scale, int n, int v) {
  const int step = kVec4 ? 4 : 1;
  for (int row = blockIdx.y; row < n; row += gridDim.y) {
    const int32_t tgt = targets[row];
    const float l = lse[row];
    const float* z = logits + int64_t{row} * v;
    float* dz = dlogits + int64_t{row} * v;
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
      if constexpr (kVec4) {
        *reinterpret_cast<float4*>(dz + c) = make_float4(g[0], g[1], g[2], g[3]);
      } else {
        dz[c] = g[0];
      }
    }
  }
}

// Both entry points: one block per row (n of them), pass 2 only with dlogits.
void LaunchCrossEntropyRows(float* losses, float* lse, bf16* dlogits, const float* logits,
                            const int32_t* targets, float scale, int n, int v, cudaStream_t stream) {
  if (n <= 0) return;
  const bool vec4 = v % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
                    (dlogits == nullptr || reinterpret_cast<uintptr_t>(dlogits) % 8 == 0);
  const dim3 grid(static_cast<unsigned>(n));
  if (dlogits == nullptr && vec4) {
    CrossEntropyRowKernel<true, false><<<grid, kThreads, 0, stream>>>(losses, lse, dlogits, logits, targets, scale, v);
  } else if (dlogits == nullptr) {
    CrossEntropyRowKernel<false, false><<<grid, kThreads, 0, stream>>>(losses, lse, dlogits, logits, targets, scale, v);
  } else if (vec4) {
    CrossEntropyRowKernel<true, true><<<grid, kThreads, 0, stream>>>(losses, lse, dlogits, logits, targets, scale, v);
  } else {
    CrossEntropyRowKernel<false, true><<<grid, kThreads, 0, stream>>>(losses, lse, dlogits, logits, targets, scale, v);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

void CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets, int n,
                         int v, cudaStream_t stream) {
  LaunchCrossEntropyRows(losses, lse, nullptr, logits, targets, 0.0f, n, v, stream);
}

void CrossEntropyForwardBackwardBf16(float* losses, float* lse, bf16* dlogits, const float* logits,
                                     const int32_t* targets, float scale, int n, int v, cudaStream_t stream) {
  LaunchCrossEntropyRows(losses, lse, dlogits, logits, targets, scale, n, v, stream);
}

void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                          float scale, int n, int v, cudaStream_t stream) {
  if (n <= 0 || v <= 0) return;
  const bool vec4 = v % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(dlogits) % 16 == 0;
  const int per_thread = vec4 ? 4 : 1;
  const dim3 grid(std::max(1u, std::min<unsigned>(BlocksFor((v + per_thread - 1) / per_thread, kThreads), 64)),
                  std::min(n, 65535));
  if (vec4) {
    CrossEntropyBackwardKernel<true><<<grid, kThreads, 0, stream>>>(dlogits, logits, lse, targets, scale, n, v);
  } else {
    CrossEntropyBackwardKernel<false><<<grid, kThreads, 0, stream>>>(dlogits, logits, lse, targets, scale, n, v);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
