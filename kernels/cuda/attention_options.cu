#include "kernels/cuda/attention_options.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/reduce.h"
#include "kernels/rmsnorm.h"

namespace moe::cuda {
namespace {

using internal::GridFor;
using internal::kThreads;
using internal::WarpSum;

// One warp per head vector (row i, head hi of h + hkv): hd values at stride 1.
__global__ void QkNormForwardKernel(float* qkv, float* rstd, float* raw, const float* q_weight,
                                    const float* k_weight, int64_t n, int h, int hkv, int hd, float eps) {
  const int64_t vec = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int heads = h + hkv;
  if (vec >= n * heads) return;
  const int64_t i = vec / heads;
  const int hi = static_cast<int>(vec % heads);
  float* x = qkv + i * (int64_t{h + 2 * hkv} * hd) + int64_t{hi} * hd;
  const float* w = hi < h ? q_weight : k_weight;
  float ss = 0.0f;
  for (int c = lane; c < hd; c += 32) ss += x[c] * x[c];
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf(ss / hd + eps);
  if (lane == 0) rstd[vec] = r;
  float* keep = raw != nullptr ? raw + vec * hd : nullptr;
  for (int c = lane; c < hd; c += 32) {
    const float v = x[c];
    if (keep != nullptr) keep[c] = v;
    x[c] = v * r * w[c];
  }
}

// The backward in one pass: one warp per head vector (grid-stride), d = r w dy - (dot(dy, w x)
// r^3 / hd) x in place, and the weight gradients dy x r summed per column in each lane's
// registers (columns lane + 32 j), then over the block's warps in shared memory into the block's
// partials (reduce.h; q's at partials[b hd + c], k's gridDim.x hd further), added to dq_weight and
// dk_weight in block order afterwards (partials null: no weight gradient).
constexpr int kQkMaxColumnsPerLane = 8;  // head sizes up to 256
__global__ void __launch_bounds__(kThreads) QkNormBackwardKernel(float* dqkv, float* partials,
                                                                 const float* raw, const float* rstd,
                                                                 const float* q_weight, const float* k_weight,
                                                                 int64_t n, int h, int hkv, int hd) {
  __shared__ float partial[2][kThreads / 32][32 * kQkMaxColumnsPerLane];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int heads = h + hkv;
  float acc_q[kQkMaxColumnsPerLane] = {}, acc_k[kQkMaxColumnsPerLane] = {};
  for (int64_t vec = int64_t{blockIdx.x} * warps + warp; vec < n * heads; vec += int64_t{gridDim.x} * warps) {
    const int64_t i = vec / heads;
    const int hi = static_cast<int>(vec % heads);
    float* d = dqkv + i * (int64_t{h + 2 * hkv} * hd) + int64_t{hi} * hd;
    const float* x = raw + vec * hd;
    const float* w = hi < h ? q_weight : k_weight;
    const float r = rstd[vec];
    float dv[kQkMaxColumnsPerLane], xv[kQkMaxColumnsPerLane], dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kQkMaxColumnsPerLane; ++j) {
      const int c = lane + 32 * j;
      dv[j] = c < hd ? d[c] : 0.0f;
      xv[j] = c < hd ? x[c] : 0.0f;
      dot += c < hd ? dv[j] * w[c] * xv[j] : 0.0f;
      if (hi < h) acc_q[j] += dv[j] * xv[j] * r; else acc_k[j] += dv[j] * xv[j] * r;
    }
    dot = WarpSum(dot);
    const float k = dot * r * r * r / hd;
#pragma unroll
    for (int j = 0; j < kQkMaxColumnsPerLane; ++j) {
      const int c = lane + 32 * j;
      if (c < hd) d[c] = r * w[c] * dv[j] - k * xv[j];
    }
  }
  if (partials == nullptr) return;
#pragma unroll
  for (int j = 0; j < kQkMaxColumnsPerLane; ++j) {
    partial[0][warp][lane + 32 * j] = acc_q[j];
    partial[1][warp][lane + 32 * j] = acc_k[j];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < hd; c += blockDim.x) {
    float sq = 0.0f, sk = 0.0f;
    for (int wi = 0; wi < warps; ++wi) sq += partial[0][wi][c], sk += partial[1][wi][c];
    partials[int64_t{blockIdx.x} * hd + c] = sq;
    partials[int64_t{gridDim.x + blockIdx.x} * hd + c] = sk;
  }
}

__global__ void GateForwardKernel(float* out, float* gate, const float* y, int64_t count) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    const float s = 1.0f / (1.0f + expf(-gate[i]));
    gate[i] = s;
    out[i] = y[i] * s;
  }
}

// The gated output in bf16 for the wo product alone (rounded as CastToBf16 rounds): with the logits
// in, gate becomes their sigmoid (the forward); with kLogits false it already is (the backward's
// recomputation).
template <bool kLogits>
__global__ void GateToBf16Kernel(bf16* out, float* gate, const float* y, int64_t count) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    float s = gate[i];
    if constexpr (kLogits) {
      s = 1.0f / (1.0f + expf(-s));
      gate[i] = s;
    }
    out[i] = __float2bfloat16(y[i] * s);
  }
}

__global__ void GateApplyKernel(float* out, const float* y, const float* gate, int64_t count) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = y[i] * gate[i];
  }
}

template <bool kAccumulate>
__global__ void GateBackwardKernel(float* dy, float* dlogits, const float* dout, const float* y, const float* gate,
                                   int64_t count) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    const float s = gate[i];
    if constexpr (kAccumulate) {
      dy[i] += dout[i] * s;
    } else {
      dy[i] = dout[i] * s;
    }
    dlogits[i] = dout[i] * y[i] * s * (1.0f - s);
  }
}

// Blocks of QkNormBackwardKernel: about eight per SM of an H100/H200 (enough warps in flight for
// the bandwidth), few partials per column.
constexpr int64_t kQkBackwardBlocks = kPartialBlocks;

unsigned WarpBlocks(int64_t warps) { return BlocksFor(warps * 32, kThreads); }

}  // namespace

void QkNormForward(float* qkv, float* rstd, float* raw, const float* q_weight, const float* k_weight, int64_t n,
                   int h, int hkv, int hd, float eps, cudaStream_t stream) {
  if (n == 0) return;
  QkNormForwardKernel<<<WarpBlocks(n * (h + hkv)), kThreads, 0, stream>>>(qkv, rstd, raw, q_weight, k_weight, n, h,
                                                                         hkv, hd, eps);
  MOE_CUDA_LAUNCH_CHECK();
}

void QkNormBackward(float* dqkv, float* dq_weight, float* dk_weight, const float* raw, const float* rstd,
                    const float* q_weight, const float* k_weight, int64_t n, int h, int hkv, int hd,
                    float* partials, cudaStream_t stream) {
  if (n == 0) return;
  if (hd > 32 * kQkMaxColumnsPerLane) {
    std::fprintf(stderr, "QkNormBackward: head size %d over the kernel's %d\n", hd, 32 * kQkMaxColumnsPerLane);
    std::abort();
  }
  const int64_t blocks = std::min<int64_t>(WarpBlocks(n * (h + hkv)), kQkBackwardBlocks);
  const bool weights = dq_weight != nullptr || dk_weight != nullptr;
  QkNormBackwardKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      dqkv, weights ? partials : nullptr, raw, rstd, q_weight, k_weight, n, h, hkv, hd);
  MOE_CUDA_LAUNCH_CHECK();
  const int b = static_cast<int>(blocks);
  if (dq_weight != nullptr) AddColumnPartials(dq_weight, partials, b, hd, stream);
  if (dk_weight != nullptr) AddColumnPartials(dk_weight, partials + int64_t{b} * hd, b, hd, stream);
}

void AttentionGateForward(float* out, float* gate, const float* y, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  GateForwardKernel<<<GridFor(count), kThreads, 0, stream>>>(out, gate, y, count);
  MOE_CUDA_LAUNCH_CHECK();
}

void AttentionGateForwardBf16(bf16* out, float* gate, const float* y, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  GateToBf16Kernel<true><<<GridFor(count), kThreads, 0, stream>>>(out, gate, y, count);
  MOE_CUDA_LAUNCH_CHECK();
}

void AttentionGateApplyBf16(bf16* out, const float* y, const float* gate, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  GateToBf16Kernel<false><<<GridFor(count), kThreads, 0, stream>>>(out, const_cast<float*>(gate), y, count);
  MOE_CUDA_LAUNCH_CHECK();
}

void AttentionGateApply(float* out, const float* y, const float* gate, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  GateApplyKernel<<<GridFor(count), kThreads, 0, stream>>>(out, y, gate, count);
  MOE_CUDA_LAUNCH_CHECK();
}

void AttentionGateBackward(float* dy, float* dlogits, const float* dout, const float* y, const float* gate,
                           int64_t count, cudaStream_t stream, bool accumulate) {
  if (count == 0) return;
  if (accumulate) {
    GateBackwardKernel<true><<<GridFor(count), kThreads, 0, stream>>>(dy, dlogits, dout, y, gate, count);
  } else {
    GateBackwardKernel<false><<<GridFor(count), kThreads, 0, stream>>>(dy, dlogits, dout, y, gate, count);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
