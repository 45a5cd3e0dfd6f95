#include "kernels/cuda/attention_options.h"

#include <algorithm>

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

// One warp per head vector: d = r w dy - (dot(dy, w x) r^3 / hd) x in place (the weight
// gradients are QkNormWeightGradKernel's, which reads dy first).
__global__ void QkNormBackwardKernel(float* dqkv, const float* raw, const float* rstd, const float* q_weight,
                                     const float* k_weight, int64_t n, int h, int hkv, int hd) {
  const int64_t vec = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int heads = h + hkv;
  if (vec >= n * heads) return;
  const int64_t i = vec / heads;
  const int hi = static_cast<int>(vec % heads);
  float* d = dqkv + i * (int64_t{h + 2 * hkv} * hd) + int64_t{hi} * hd;
  const float* x = raw + vec * hd;
  const float* w = hi < h ? q_weight : k_weight;
  const float r = rstd[vec];
  float dot = 0.0f;
  for (int c = lane; c < hd; c += 32) dot += d[c] * w[c] * x[c];
  dot = WarpSum(dot);
  const float k = dot * r * r * r / hd;
  for (int c = lane; c < hd; c += 32) d[c] = r * w[c] * d[c] - k * x[c];
}

// dq_weight[c] += sum of dy[c] x[c] r over the q head vectors, dk_weight over the k ones. Each
// block sums a contiguous run of vectors (thread: column t % hd, row lane t / hd) and adds one
// value per column: one atomic per column and block, where one per element (every token's
// every head onto the same hd addresses) serialised in L2.
__global__ void QkNormWeightGradKernel(float* dq_weight, float* dk_weight, const float* dqkv, const float* raw,
                                       const float* rstd, int64_t n, int h, int hkv, int hd, int64_t per_block) {
  extern __shared__ float partial[];  // (2, blockDim.x): q then k
  const int heads = h + hkv, lanes = blockDim.x / hd;
  const int t = threadIdx.x, c = t % hd, lane = t / hd;
  const int64_t vectors = n * heads, begin = int64_t{blockIdx.x} * per_block;
  const int64_t end = begin + per_block < vectors ? begin + per_block : vectors;
  float acc_q = 0.0f, acc_k = 0.0f;
  if (lane < lanes) {
    for (int64_t vec = begin + lane; vec < end; vec += lanes) {
      const int64_t i = vec / heads;
      const int hi = static_cast<int>(vec % heads);
      const float g = dqkv[i * (int64_t{h + 2 * hkv} * hd) + int64_t{hi} * hd + c] * raw[vec * hd + c] * rstd[vec];
      if (hi < h) acc_q += g; else acc_k += g;
    }
  }
  partial[t] = acc_q;
  partial[blockDim.x + t] = acc_k;
  __syncthreads();
  if (lane != 0) return;
  float sq = 0.0f, sk = 0.0f;
  for (int l = 0; l < lanes; ++l) {
    sq += partial[l * hd + c];
    sk += partial[blockDim.x + l * hd + c];
  }
  if (dq_weight != nullptr) atomicAdd(dq_weight + c, sq);
  if (dk_weight != nullptr) atomicAdd(dk_weight + c, sk);
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

// Blocks of QkNormWeightGradKernel: two per SM of an H100/H200, enough runs of vectors to fill
// any GPU, few atomics per column.
constexpr int64_t kQkGradBlocks = 264;

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
  if (dq_weight != nullptr || dk_weight != nullptr) {
    // Threads: a multiple of hd of at least 256 (head sizes go to 256; larger ones get one lane).
    const int threads = hd >= 256 ? (hd + 31) / 32 * 32 : 256 / hd * hd;
    const int64_t vectors = n * (h + hkv);
    const int64_t blocks = std::min<int64_t>((vectors + 63) / 64, kQkGradBlocks);
    const int64_t per_block = (vectors + blocks - 1) / blocks;
    QkNormWeightGradKernel<<<static_cast<unsigned>(blocks), threads, 2 * threads * sizeof(float), stream>>>(
        dq_weight, dk_weight, dqkv, raw, rstd, n, h, hkv, hd, per_block);
    MOE_CUDA_LAUNCH_CHECK();
  }
  QkNormBackwardKernel<<<WarpBlocks(n * (h + hkv)), kThreads, 0, stream>>>(dqkv, raw, rstd, q_weight, k_weight, n, h,
                                                                          hkv, hd);
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
