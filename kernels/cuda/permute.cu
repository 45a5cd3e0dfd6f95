#include "kernels/cuda/permute.h"

#include <cstdint>

#include "kernels/cuda/device.cuh"

namespace moe::cuda {
namespace {

using internal::kThreads;
using internal::WarpSum;

// One warp per assignment or token.

__global__ void PermuteForwardKernel(float* xs, const float* x, const int32_t* a2s, int n, int k, int d) {
  const int a = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (a >= n * k) return;
  const int s = a2s[a];
  if (s < 0) return;
  const float* src = x + int64_t{a / k} * d;
  float* dst = xs + int64_t{s} * d;
  for (int c = lane; c < d; c += 32) dst[c] = src[c];
}

__global__ void PermuteBackwardKernel(float* dx, const float* dxs, const int32_t* a2s, int n, int k, int d) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= n) return;
  float* dst = dx + int64_t{t} * d;
  for (int j = 0; j < k; ++j) {
    const int s = a2s[int64_t{t} * k + j];
    if (s < 0) continue;
    const float* src = dxs + int64_t{s} * d;
    for (int c = lane; c < d; c += 32) dst[c] += src[c];
  }
}

// ys: fp32, or bf16 (the values the bf16 experts produce, read as the same floats).
__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const bf16* p) { return __bfloat162float(*p); }

template <typename Y>
__global__ void UnpermuteForwardKernel(float* out, const Y* ys, const float* weights, const int32_t* a2s, int n,
                                       int k, int d, const float* residual) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= n) return;
  float* dst = out + int64_t{t} * d;
  for (int c = lane; c < d; c += 32) dst[c] = 0.0f;
  for (int j = 0; j < k; ++j) {
    const int64_t a = int64_t{t} * k + j;
    const int s = a2s[a];
    if (s < 0) continue;
    const float w = weights[a];
    const Y* src = ys + int64_t{s} * d;
    for (int c = lane; c < d; c += 32) dst[c] += w * Load(src + c);
  }
  if (residual == nullptr) return;
  const float* r = residual + int64_t{t} * d;
  for (int c = lane; c < d; c += 32) dst[c] = r[c] + dst[c];
}

// The same over bf16 ys, four columns per lane (d % 4 == 0, out 16-byte and ys 8-byte aligned):
// each element's sum in the same order, so the same bits.
__global__ void UnpermuteForwardBf16Vec4Kernel(float* out, const bf16* ys, const float* weights, const int32_t* a2s,
                                              int n, int k, int d, const float* residual) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= n) return;
  float* dst = out + int64_t{t} * d;
  for (int c = 4 * lane; c < d; c += 128) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = 0; j < k; ++j) {
      const int64_t a = int64_t{t} * k + j;
      const int s = a2s[a];
      if (s < 0) continue;
      const float w = weights[a];
      const float4 y = internal::LoadBf16x4(ys + int64_t{s} * d + c);
      acc.x += w * y.x;
      acc.y += w * y.y;
      acc.z += w * y.z;
      acc.w += w * y.w;
    }
    if (residual != nullptr) {  // 16-byte aligned as out is
      const float4 r = *reinterpret_cast<const float4*>(residual + int64_t{t} * d + c);
      acc = make_float4(r.x + acc.x, r.y + acc.y, r.z + acc.z, r.w + acc.w);
    }
    *reinterpret_cast<float4*>(dst + c) = acc;
  }
}

template <typename Y>
__global__ void UnpermuteBackwardKernel(float* dys, float* dweights, const float* dout, const Y* ys,
                                        const float* weights, const int32_t* a2s, int n, int k, int d) {
  const int a = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (a >= n * k) return;
  const int s = a2s[a];
  if (s < 0) return;
  const float* g = dout + int64_t{a / k} * d;
  if (dys != nullptr) {
    const float w = weights[a];
    float* dst = dys + int64_t{s} * d;
    for (int c = lane; c < d; c += 32) dst[c] += w * g[c];
  }
  if (dweights != nullptr) {
    const Y* y = ys + int64_t{s} * d;
    float dot = 0.0f;
    for (int c = lane; c < d; c += 32) dot += g[c] * Load(y + c);
    dot = WarpSum(dot);
    if (lane == 0) dweights[a] += dot;
  }
}

template <typename Y>
void LaunchUnpermuteForward(float* out, const Y* ys, const float* weights, const int32_t* a2s, int n, int k, int d,
                            const float* residual, cudaStream_t stream) {
  if (n <= 0) return;
  UnpermuteForwardKernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(out, ys, weights, a2s, n, k, d,
                                                                               residual);
  MOE_CUDA_LAUNCH_CHECK();
}

template <typename Y>
void LaunchUnpermuteBackward(float* dys, float* dweights, const float* dout, const Y* ys, const float* weights,
                             const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  if (n * k <= 0) return;
  UnpermuteBackwardKernel<<<BlocksFor(int64_t{n} * k, kThreads / 32), kThreads, 0, stream>>>(
      dys, dweights, dout, ys, weights, a2s, n, k, d);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

void PermuteForward(float* xs, const float* x, const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  if (n * k <= 0) return;
  PermuteForwardKernel<<<BlocksFor(int64_t{n} * k, kThreads / 32), kThreads, 0, stream>>>(xs, x, a2s, n, k, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void PermuteBackward(float* dx, const float* dxs, const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  if (n <= 0) return;
  PermuteBackwardKernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(dx, dxs, a2s, n, k, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void UnpermuteForward(float* out, const float* ys, const float* weights, const int32_t* a2s, int n, int k,
                      int d, cudaStream_t stream, const float* residual) {
  LaunchUnpermuteForward(out, ys, weights, a2s, n, k, d, residual, stream);
}

void UnpermuteForward(float* out, const bf16* ys, const float* weights, const int32_t* a2s, int n, int k, int d,
                      cudaStream_t stream, const float* residual) {
  if (n > 0 && d % 4 == 0 && Aligned(16, {out, residual}) && Aligned(8, {ys})) {
    UnpermuteForwardBf16Vec4Kernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(out, ys, weights, a2s, n, k,
                                                                                        d, residual);
    MOE_CUDA_LAUNCH_CHECK();
    return;
  }
  LaunchUnpermuteForward(out, ys, weights, a2s, n, k, d, residual, stream);
}

void UnpermuteBackward(float* dys, float* dweights, const float* dout, const float* ys, const float* weights,
                       const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  LaunchUnpermuteBackward(dys, dweights, dout, ys, weights, a2s, n, k, d, stream);
}

void UnpermuteBackward(float* dys, float* dweights, const float* dout, const bf16* ys, const float* weights,
                       const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  LaunchUnpermuteBackward(dys, dweights, dout, ys, weights, a2s, n, k, d, stream);
}

}  // namespace moe::cuda
