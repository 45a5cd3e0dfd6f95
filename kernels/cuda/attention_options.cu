#include "kernels/cuda/attention_options.h"

#include "kernels/cuda/device.cuh"
#include "kernels/rmsnorm.h"

namespace moe::cuda {
namespace {

using internal::GridFor;
using internal::kThreads;
using internal::WarpSum;

// One warp per head vector (row i, head hi of h + hkv): hd values at stride 1.
__global__ void QkNormForwardKernel(float* qkv, float* rstd, float* raw, const float* q_weight,
                                    const float* k_weight, int64_t n, int h, int hkv, int hd) {
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
  const float r = 1.0f / sqrtf(ss / hd + kernels::kRmsNormEps);
  if (lane == 0) rstd[vec] = r;
  float* keep = raw != nullptr ? raw + vec * hd : nullptr;
  for (int c = lane; c < hd; c += 32) {
    const float v = x[c];
    if (keep != nullptr) keep[c] = v;
    x[c] = v * r * w[c];
  }
}

// One warp per head vector; the weight gradients by atomics (q: dw[0, hd), k: dw[hd, 2 hd)).
__global__ void QkNormBackwardKernel(float* dqkv, float* dq_weight, float* dk_weight, const float* raw,
                                     const float* rstd, const float* q_weight, const float* k_weight, int64_t n,
                                     int h, int hkv, int hd) {
  const int64_t vec = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int heads = h + hkv;
  if (vec >= n * heads) return;
  const int64_t i = vec / heads;
  const int hi = static_cast<int>(vec % heads);
  float* d = dqkv + i * (int64_t{h + 2 * hkv} * hd) + int64_t{hi} * hd;
  const float* x = raw + vec * hd;
  const float* w = hi < h ? q_weight : k_weight;
  float* dw = hi < h ? dq_weight : dk_weight;
  const float r = rstd[vec];
  float dot = 0.0f;
  for (int c = lane; c < hd; c += 32) dot += d[c] * w[c] * x[c];
  dot = WarpSum(dot);
  const float k = dot * r * r * r / hd;
  for (int c = lane; c < hd; c += 32) {
    const float dy = d[c];
    if (dw != nullptr) atomicAdd(dw + c, dy * x[c] * r);
    d[c] = r * w[c] * dy - k * x[c];
  }
}

__global__ void GateForwardKernel(float* out, float* gate, const float* y, int64_t count) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    const float s = 1.0f / (1.0f + expf(-gate[i]));
    gate[i] = s;
    out[i] = y[i] * s;
  }
}

__global__ void GateApplyKernel(float* out, const float* y, const float* gate, int64_t count) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = y[i] * gate[i];
  }
}

__global__ void GateBackwardKernel(float* dy, float* dlogits, const float* dout, const float* y, const float* gate,
                                   int64_t count) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    const float s = gate[i];
    dy[i] += dout[i] * s;
    dlogits[i] = dout[i] * y[i] * s * (1.0f - s);
  }
}

unsigned WarpBlocks(int64_t warps) { return BlocksFor(warps * 32, kThreads); }

}  // namespace

void QkNormForward(float* qkv, float* rstd, float* raw, const float* q_weight, const float* k_weight, int64_t n,
                   int h, int hkv, int hd, cudaStream_t stream) {
  if (n == 0) return;
  QkNormForwardKernel<<<WarpBlocks(n * (h + hkv)), kThreads, 0, stream>>>(qkv, rstd, raw, q_weight, k_weight, n, h,
                                                                         hkv, hd);
  MOE_CUDA_LAUNCH_CHECK();
}

void QkNormBackward(float* dqkv, float* dq_weight, float* dk_weight, const float* raw, const float* rstd,
                    const float* q_weight, const float* k_weight, int64_t n, int h, int hkv, int hd,
                    cudaStream_t stream) {
  if (n == 0) return;
  QkNormBackwardKernel<<<WarpBlocks(n * (h + hkv)), kThreads, 0, stream>>>(dqkv, dq_weight, dk_weight, raw, rstd,
                                                                          q_weight, k_weight, n, h, hkv, hd);
  MOE_CUDA_LAUNCH_CHECK();
}

void AttentionGateForward(float* out, float* gate, const float* y, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  GateForwardKernel<<<GridFor(count), kThreads, 0, stream>>>(out, gate, y, count);
  MOE_CUDA_LAUNCH_CHECK();
}

void AttentionGateApply(float* out, const float* y, const float* gate, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  GateApplyKernel<<<GridFor(count), kThreads, 0, stream>>>(out, y, gate, count);
  MOE_CUDA_LAUNCH_CHECK();
}

void AttentionGateBackward(float* dy, float* dlogits, const float* dout, const float* y, const float* gate,
                           int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  GateBackwardKernel<<<GridFor(count), kThreads, 0, stream>>>(dy, dlogits, dout, y, gate, count);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
