#include "kernels/cuda/elementwise.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/device.cuh"

namespace moe::cuda {
namespace {

using internal::GridFor;
using internal::kThreads;

using internal::SplitMix64;
// kernels::CounterUniform, bit for bit (device.cuh).
__device__ __forceinline__ float CounterUniform(uint64_t mixed_seed, uint64_t counter) {
  return internal::CounterUniformMixed(mixed_seed, counter);
}

template <typename W>
__global__ void EmbeddingForwardKernel(float* out, const int32_t* idx, const W* wte, int n, int d) {
  MOE_GRID_STRIDE(i, int64_t{n} * d) {
    const int64_t row = i / d;
    out[i] = static_cast<float>(wte[int64_t{idx[row]} * d + (i - row * d)]);
  }
}
// grid.x = run (one token id), threads and grid.y its columns: the run's rows summed in order,
// then added to the id's row once (no atomics: the same bits every run).
__global__ void EmbeddingBackwardKernel(float* dwte, const float* dout, const int32_t* order, const int32_t* starts,
                                        const int32_t* ids, int d) {
  const int run = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float acc = 0.0f;
  for (int p = starts[run]; p < starts[run + 1]; ++p) acc += dout[int64_t{order[p]} * d + c];
  dwte[int64_t{ids[run]} * d + c] += acc;
}

__global__ void DropoutForwardKernel(float* out, const float* in, int64_t n, float p, float scale,
                                     uint64_t mixed_seed, uint64_t offset) {
  MOE_GRID_STRIDE(i, n) {
    out[i] = CounterUniform(mixed_seed, offset + i) >= p ? in[i] * scale : 0.0f;
  }
}
__global__ void DropoutBackwardKernel(float* din, const float* dout, int64_t n, float p, float scale,
                                      uint64_t mixed_seed, uint64_t offset) {
  MOE_GRID_STRIDE(i, n) {
    if (p == 0.0f) {
      din[i] += dout[i];
    } else if (CounterUniform(mixed_seed, offset + i) >= p) {
      din[i] += __fmul_rn(dout[i], scale);  // no fused multiply-add: round as the CPU does
    }
  }
}

// Four elements a thread where every pointer is 16-byte aligned (the last n % 4 by block 0), each
// element's mask drawn from its own counter as the scalar kernels draw it.
__device__ __forceinline__ float Dropped(float y, float p, float scale, uint64_t mixed_seed, uint64_t counter) {
  return CounterUniform(mixed_seed, counter) >= p ? __fmul_rn(y, scale) : 0.0f;
}
__global__ void DropoutAddOutKernel(float* out, const float* x, const float* y, int64_t n, float p, float scale,
                                    uint64_t mixed_seed, uint64_t offset) {
  MOE_GRID_STRIDE(i, n) { out[i] = __fadd_rn(x[i], Dropped(y[i], p, scale, mixed_seed, offset + i)); }
}
__global__ void DropoutAddOutVec4Kernel(float* out, const float* x, const float* y, int64_t n, float p, float scale,
                                        uint64_t mixed_seed, uint64_t offset) {
  const int64_t n4 = n / 4;
  MOE_GRID_STRIDE(i, n4) {
    const float4 a = reinterpret_cast<const float4*>(x)[i], b = reinterpret_cast<const float4*>(y)[i];
    const uint64_t c = offset + 4 * i;
    reinterpret_cast<float4*>(out)[i] =
        make_float4(__fadd_rn(a.x, Dropped(b.x, p, scale, mixed_seed, c)),
                    __fadd_rn(a.y, Dropped(b.y, p, scale, mixed_seed, c + 1)),
                    __fadd_rn(a.z, Dropped(b.z, p, scale, mixed_seed, c + 2)),
                    __fadd_rn(a.w, Dropped(b.w, p, scale, mixed_seed, c + 3)));
  }
  const int64_t t = n4 * 4 + threadIdx.x;
  if (blockIdx.x == 0 && t < n) out[t] = __fadd_rn(x[t], Dropped(y[t], p, scale, mixed_seed, offset + t));
}
__global__ void DropoutBackwardToKernel(float* din, const float* dout, int64_t n, float p, float scale,
                                        uint64_t mixed_seed, uint64_t offset) {
  MOE_GRID_STRIDE(i, n) { din[i] = __fadd_rn(0.0f, Dropped(dout[i], p, scale, mixed_seed, offset + i)); }
}
__global__ void DropoutBackwardToVec4Kernel(float* din, const float* dout, int64_t n, float p, float scale,
                                            uint64_t mixed_seed, uint64_t offset) {
  const int64_t n4 = n / 4;
  MOE_GRID_STRIDE(i, n4) {
    const float4 b = reinterpret_cast<const float4*>(dout)[i];
    const uint64_t c = offset + 4 * i;
    reinterpret_cast<float4*>(din)[i] =
        make_float4(__fadd_rn(0.0f, Dropped(b.x, p, scale, mixed_seed, c)),
                    __fadd_rn(0.0f, Dropped(b.y, p, scale, mixed_seed, c + 1)),
                    __fadd_rn(0.0f, Dropped(b.z, p, scale, mixed_seed, c + 2)),
                    __fadd_rn(0.0f, Dropped(b.w, p, scale, mixed_seed, c + 3)));
  }
  const int64_t t = n4 * 4 + threadIdx.x;
  if (blockIdx.x == 0 && t < n) din[t] = __fadd_rn(0.0f, Dropped(dout[t], p, scale, mixed_seed, offset + t));
}

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void SwigluForwardKernel(float* h, const float* g, const float* u, int64_t n) {
  MOE_GRID_STRIDE(i, n) { h[i] = g[i] * Sigmoid(g[i]) * u[i]; }
}
__global__ void SwigluBackwardKernel(float* dg, float* du, const float* dh, const float* g,
                                     const float* u, int64_t n, bool accumulate) {
  MOE_GRID_STRIDE(i, n) {
    const float s = Sigmoid(g[i]);
    const float d = dh[i];
    const float dgi = d * u[i] * s * (1.0f + g[i] * (1.0f - s));
    const float dui = d * g[i] * s;
    if (accumulate) {
      if (dg != nullptr) dg[i] += dgi;
      if (du != nullptr) du[i] += dui;
    } else {
      if (dg != nullptr) dg[i] = dgi;
      if (du != nullptr) du[i] = dui;
    }
  }
}

// out = x + y four at a time (16-byte aligned pointers), the n % 4 tail by block 0.
__global__ void AddOutVec4Kernel(float* out, const float* x, const float* y, int64_t n) {
  const int64_t n4 = n / 4;
  MOE_GRID_STRIDE(i, n4) {
    const float4 a = reinterpret_cast<const float4*>(x)[i], b = reinterpret_cast<const float4*>(y)[i];
    reinterpret_cast<float4*>(out)[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
  }
  if (blockIdx.x == 0 && threadIdx.x < n - n4 * 4) out[n4 * 4 + threadIdx.x] = x[n4 * 4 + threadIdx.x] + y[n4 * 4 + threadIdx.x];
}

__global__ void AddOutKernel(float* out, const float* x, const float* y, int64_t n) {
  MOE_GRID_STRIDE(i, n) { out[i] = x[i] + y[i]; }
}

}  // namespace

void EmbeddingForward(float* out, const int32_t* idx, const float* wte, int n, int d, cudaStream_t stream) {
  if (n <= 0) return;
  EmbeddingForwardKernel<<<GridFor(int64_t{n} * d), kThreads, 0, stream>>>(out, idx, wte, n, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void EmbeddingForwardBf16(float* out, const int32_t* idx, const bf16* wte, int n, int d, cudaStream_t stream) {
  if (n <= 0) return;
  EmbeddingForwardKernel<<<GridFor(int64_t{n} * d), kThreads, 0, stream>>>(out, idx, wte, n, d);
  MOE_CUDA_LAUNCH_CHECK();
}

TokenRuns GroupTokensById(const int32_t* idx, int n, int vocab) {
  TokenRuns r;
  std::vector<int32_t> first(static_cast<size_t>(vocab) + 1, 0);
  for (int i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= vocab) {
      throw std::out_of_range("GroupTokensById: token " + std::to_string(i) + " has id " + std::to_string(idx[i]) +
                              ", outside the vocabulary of " + std::to_string(vocab));
    }
    ++first[idx[i] + 1];
  }
  for (int v = 0; v < vocab; ++v) {
    if (first[v + 1] > 0) r.ids.push_back(v);
    first[v + 1] += first[v];
  }
  r.order.resize(n);
  for (int i = 0; i < n; ++i) r.order[first[idx[i]]++] = i;  // stable: each id's rows in order
  r.starts.reserve(r.ids.size() + 1);
  r.starts.push_back(0);
  for (int32_t v : r.ids) r.starts.push_back(first[v]);
  return r;
}

void EmbeddingBackward(float* dwte, const float* dout, const int32_t* order, const int32_t* starts, const int32_t* ids,
                       int runs, int d, cudaStream_t stream) {
  if (runs <= 0 || d <= 0) return;
  const dim3 grid(static_cast<unsigned>(runs), BlocksFor(d, kThreads));
  EmbeddingBackwardKernel<<<grid, kThreads, 0, stream>>>(dwte, dout, order, starts, ids, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void DropoutForward(float* out, const float* in, int64_t n, float p, uint64_t seed, uint64_t offset,
                    cudaStream_t stream) {
  if (n <= 0) return;
  if (p == 0.0f) {
    if (out != in) MOE_CUDA_CHECK(cudaMemcpyAsync(out, in, sizeof(float) * n, cudaMemcpyDeviceToDevice, stream));
    return;
  }
  DropoutForwardKernel<<<GridFor(n), kThreads, 0, stream>>>(out, in, n, p, 1.0f / (1.0f - p),
                                                            SplitMix64(seed), offset);
  MOE_CUDA_LAUNCH_CHECK();
}

void DropoutBackward(float* din, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream) {
  if (n <= 0) return;
  DropoutBackwardKernel<<<GridFor(n), kThreads, 0, stream>>>(din, dout, n, p, 1.0f / (1.0f - p),
                                                             SplitMix64(seed), offset);
  MOE_CUDA_LAUNCH_CHECK();
}

void DropoutAddOut(float* out, const float* x, const float* y, int64_t n, float p, uint64_t seed, uint64_t offset,
                   cudaStream_t stream) {
  if (n <= 0) return;
  if (p == 0.0f) {
    AddOut(out, x, y, n, stream);
    return;
  }
  const float scale = 1.0f / (1.0f - p);
  if (Aligned(16, {out, x, y})) {
    DropoutAddOutVec4Kernel<<<GridFor(std::max<int64_t>(1, n / 4)), kThreads, 0, stream>>>(out, x, y, n, p, scale,
                                                                                          SplitMix64(seed), offset);
  } else {
    DropoutAddOutKernel<<<GridFor(n), kThreads, 0, stream>>>(out, x, y, n, p, scale, SplitMix64(seed), offset);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void DropoutBackwardTo(float* din, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset,
                       cudaStream_t stream) {
  if (n <= 0) return;
  const float scale = 1.0f / (1.0f - p);  // p 0: every element kept, times 1
  if (Aligned(16, {din, dout})) {
    DropoutBackwardToVec4Kernel<<<GridFor(std::max<int64_t>(1, n / 4)), kThreads, 0, stream>>>(
        din, dout, n, p, scale, SplitMix64(seed), offset);
  } else {
    DropoutBackwardToKernel<<<GridFor(n), kThreads, 0, stream>>>(din, dout, n, p, scale, SplitMix64(seed), offset);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void SwigluForward(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  SwigluForwardKernel<<<GridFor(n), kThreads, 0, stream>>>(h, g, u, n);
  MOE_CUDA_LAUNCH_CHECK();
}

void SwigluBackward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                    bool accumulate, cudaStream_t stream) {
  if (n <= 0) return;
  SwigluBackwardKernel<<<GridFor(n), kThreads, 0, stream>>>(dg, du, dh, g, u, n, accumulate);
  MOE_CUDA_LAUNCH_CHECK();
}

namespace {

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi), as kernels/experts.cc
constexpr float kGeluA = 0.044715f;

__device__ __forceinline__ float ActF(bool relu2, float x) {
  if (relu2) {
    const float r = x > 0.0f ? x : 0.0f;
    return r * r;
  }
  return 0.5f * x * (1.0f + tanhf(kGeluC * (x + kGeluA * x * x * x)));
}

__device__ __forceinline__ float ActGrad(bool relu2, float x) {
  if (relu2) return x > 0.0f ? 2.0f * x : 0.0f;
  const float t = tanhf(kGeluC * (x + kGeluA * x * x * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * kGeluA * x * x);
}

__global__ void ActivationForwardKernel(float* h, const float* g, int64_t n, bool relu2) {
  MOE_GRID_STRIDE(i, n) { h[i] = ActF(relu2, g[i]); }
}
__global__ void ActivationBackwardKernel(float* dg, const float* dh, const float* g, int64_t n, bool relu2,
                                         bool accumulate) {
  MOE_GRID_STRIDE(i, n) {
    const float v = dh[i] * ActGrad(relu2, g[i]);
    dg[i] = accumulate ? dg[i] + v : v;
  }
}
__global__ void ActivationForwardBf16Kernel(bf16* h, const bf16* g, int64_t n, bool relu2) {
  MOE_GRID_STRIDE(i, n) { h[i] = __float2bfloat16(ActF(relu2, __bfloat162float(g[i]))); }
}
__global__ void ActivationBackwardBf16Kernel(bf16* dg, const bf16* dh, const bf16* g, int64_t n, bool relu2) {
  MOE_GRID_STRIDE(i, n) {
    dg[i] = __float2bfloat16(__bfloat162float(dh[i]) * ActGrad(relu2, __bfloat162float(g[i])));
  }
}

__global__ void AddInPlaceKernel(float* out, const float* x, int64_t n) {
  MOE_GRID_STRIDE(i, n) { out[i] += x[i]; }
}

}  // namespace

void AddInPlace(float* out, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  AddInPlaceKernel<<<GridFor(n), kThreads, 0, stream>>>(out, x, n);
  MOE_CUDA_LAUNCH_CHECK();
}

void ActivationForward(kernels::ExpertActivation act, float* h, const float* g, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  ActivationForwardKernel<<<GridFor(n), kThreads, 0, stream>>>(h, g, n, act == kernels::ExpertActivation::kRelu2);
  MOE_CUDA_LAUNCH_CHECK();
}

void ActivationBackward(kernels::ExpertActivation act, float* dg, const float* dh, const float* g, int64_t n,
                        bool accumulate, cudaStream_t stream) {
  if (n <= 0) return;
  ActivationBackwardKernel<<<GridFor(n), kThreads, 0, stream>>>(dg, dh, g, n,
                                                                act == kernels::ExpertActivation::kRelu2, accumulate);
  MOE_CUDA_LAUNCH_CHECK();
}

void ActivationForwardBf16(kernels::ExpertActivation act, bf16* h, const bf16* g, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  ActivationForwardBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(h, g, n, act == kernels::ExpertActivation::kRelu2);
  MOE_CUDA_LAUNCH_CHECK();
}

void ActivationBackwardBf16(kernels::ExpertActivation act, bf16* dg, const bf16* dh, const bf16* g, int64_t n,
                            cudaStream_t stream) {
  if (n <= 0) return;
  ActivationBackwardBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(dg, dh, g, n,
                                                                    act == kernels::ExpertActivation::kRelu2);
  MOE_CUDA_LAUNCH_CHECK();
}

void AddOut(float* out, const float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (Aligned(16, {out, x, y})) {
    AddOutVec4Kernel<<<GridFor(std::max<int64_t>(1, n / 4)), kThreads, 0, stream>>>(out, x, y, n);
  } else {
    AddOutKernel<<<GridFor(n), kThreads, 0, stream>>>(out, x, y, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
