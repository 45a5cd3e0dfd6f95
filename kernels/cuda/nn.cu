#include "kernels/cuda/nn.h"

#include <algorithm>
#include <cmath>

#include "kernels/rmsnorm.h"
#include "kernels/rope.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;

// Grid-stride loops over at most this many blocks.
unsigned GridFor(int64_t n) { return std::min<unsigned>(BlocksFor(n, kThreads), 65535u); }

#define MOE_GRID_STRIDE(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// kernels::CounterUniform, bit for bit: splitmix64 mixes and the top 24 bits as a float.
__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
__device__ __forceinline__ float CounterUniform(uint64_t mixed_seed, uint64_t counter) {
  const uint64_t bits = SplitMix64(mixed_seed ^ counter);
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}
uint64_t SplitMix64Host(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double WarpSumD(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void EmbeddingForwardKernel(float* out, const int32_t* idx, const float* wte, int n, int d) {
  MOE_GRID_STRIDE(i, int64_t{n} * d) {
    const int64_t row = i / d;
    out[i] = wte[int64_t{idx[row]} * d + (i - row * d)];
  }
}
__global__ void EmbeddingBackwardKernel(float* dwte, const float* dout, const int32_t* idx, int n, int d) {
  MOE_GRID_STRIDE(i, int64_t{n} * d) {
    const int64_t row = i / d;
    atomicAdd(dwte + int64_t{idx[row]} * d + (i - row * d), dout[i]);
  }
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

// One warp per row.
__global__ void RmsNormForwardKernel(float* out, float* rstd, const float* inp, const float* weight,
                                     int n, int d) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* x = inp + int64_t{row} * d;
  float ss = 0.0f;
  for (int c = lane; c < d; c += 32) ss += x[c] * x[c];
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf(ss / d + kernels::kRmsNormEps);
  if (lane == 0) rstd[row] = r;
  float* y = out + int64_t{row} * d;
  for (int c = lane; c < d; c += 32) y[c] = x[c] * r * weight[c];
}

// A block of 8 warps takes kRowsPerBlock rows, one warp per row at a time; dweight is summed per
// block in shared memory (d floats) and then added to the output once per block.
constexpr int kRmsRowsPerBlock = 64;
// dweight: each warp sums its rows into its own shared slice (no atomics inside the block),
// then the block adds the slices to dweight.
__global__ void RmsNormBackwardKernel(float* dinp, float* dweight, const float* dout,
                                      const float* inp, const float* weight, const float* rstd,
                                      int n, int d) {
  extern __shared__ float dw_shared[];  // (warps, d)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float* dw_warp = dw_shared + int64_t{warp} * d;
  if (dweight != nullptr) {
    for (int c = threadIdx.x; c < warps * d; c += blockDim.x) dw_shared[c] = 0.0f;
    __syncthreads();
  }
  const int row0 = blockIdx.x * kRmsRowsPerBlock;
  for (int row = row0 + warp; row < min(n, row0 + kRmsRowsPerBlock); row += warps) {
    const float* x = inp + int64_t{row} * d;
    const float* dy = dout + int64_t{row} * d;
    const float r = rstd[row];
    if (dinp != nullptr) {
      float dot = 0.0f;
      for (int c = lane; c < d; c += 32) dot += dy[c] * weight[c] * x[c];
      dot = WarpSum(dot);
      const float k = dot * r * r * r / d;
      float* dx = dinp + int64_t{row} * d;
      for (int c = lane; c < d; c += 32) dx[c] += r * weight[c] * dy[c] - k * x[c];
    }
    if (dweight != nullptr) {
      for (int c = lane; c < d; c += 32) dw_warp[c] += dy[c] * x[c] * r;
    }
  }
  if (dweight != nullptr) {
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float sum = 0.0f;
      for (int w = 0; w < warps; ++w) sum += dw_shared[int64_t{w} * d + c];
      atomicAdd(dweight + c, sum);
    }
  }
}

// One thread per (row, rotated head, pair i).
__global__ void RopeKernel(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h,
                           int hkv, int hd, float sign) {
  const int half = hd / 2, heads = h + hkv;
  const int64_t row_len = int64_t{h + 2 * hkv} * hd;
  MOE_GRID_STRIDE(idx, int64_t{b} * t * heads * half) {
    const int i = static_cast<int>(idx % half);
    const int64_t rh = idx / half;
    const int head = static_cast<int>(rh % heads);
    const int64_t r = rh / heads;
    const int pos = static_cast<int>(r % t);
    float* v = qkv + r * row_len + int64_t{head} * hd;
    const float cs = cos_t[int64_t{pos} * half + i], s = sign * sin_t[int64_t{pos} * half + i];
    const float a = v[i], c = v[i + half];
    v[i] = a * cs - c * s;
    v[i + half] = a * s + c * cs;
  }
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

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  MOE_GRID_STRIDE(i, n) { x[i] += y[i]; }
}

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

template <typename T>
__global__ void CrossEntropyBackwardKernel(T* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, float scale, int n, int v) {
  MOE_GRID_STRIDE(i, int64_t{n} * v) {
    const int64_t row = i / v;
    const int c = static_cast<int>(i - row * v);
    const int32_t tgt = targets[row];
    float g = 0.0f;
    if (tgt >= 0) {
      g = scale * expf(logits[i] - lse[row]);
      if (c == tgt) g -= scale;
    }
    if constexpr (sizeof(T) == 2) {
      dlogits[i] = __float2bfloat16(g);
    } else {
      dlogits[i] = g;
    }
  }
}

__global__ void AdamWKernel(float* param, bf16* param_bf16, const float* grad, float* m, float* v,
                            int64_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                            float bc2, float grad_scale) {
  MOE_GRID_STRIDE(i, n) {
    const float gi = grad[i] * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bc1;
    const float v_hat = vi / bc2;
    const float p = param[i] - lr * (m_hat / (sqrtf(v_hat) + eps) + wd * param[i]);
    param[i] = p;
    if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16(p);
  }
}

template <bool kSquare>
__global__ void SumKernel(double* out, const float* x, int64_t n) {
  double acc = 0.0;
  MOE_GRID_STRIDE(i, n) { acc += kSquare ? double{x[i]} * x[i] : double{x[i]}; }
  acc = WarpSumD(acc);
  __shared__ double partial[kThreads / 32];
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    double v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0;
    v = WarpSumD(v);
    if (threadIdx.x == 0) atomicAdd(out, v);
  }
}

}  // namespace

void EmbeddingForward(float* out, const int32_t* idx, const float* wte, int n, int d, cudaStream_t stream) {
  if (n <= 0) return;
  EmbeddingForwardKernel<<<GridFor(int64_t{n} * d), kThreads, 0, stream>>>(out, idx, wte, n, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void EmbeddingBackward(float* dwte, const float* dout, const int32_t* idx, int n, int d, cudaStream_t stream) {
  if (n <= 0) return;
  EmbeddingBackwardKernel<<<GridFor(int64_t{n} * d), kThreads, 0, stream>>>(dwte, dout, idx, n, d);
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
                                                            SplitMix64Host(seed), offset);
  MOE_CUDA_LAUNCH_CHECK();
}

void DropoutBackward(float* din, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream) {
  if (n <= 0) return;
  DropoutBackwardKernel<<<GridFor(n), kThreads, 0, stream>>>(din, dout, n, p, 1.0f / (1.0f - p),
                                                             SplitMix64Host(seed), offset);
  MOE_CUDA_LAUNCH_CHECK();
}

void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int n, int d,
                    cudaStream_t stream) {
  if (n <= 0) return;
  RmsNormForwardKernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(out, rstd, inp, weight, n, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d, cudaStream_t stream) {
  if (n <= 0) return;
  const size_t smem = dweight != nullptr ? sizeof(float) * d * (kThreads / 32) : 0;
  if (smem > 48 * 1024) {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(RmsNormBackwardKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  RmsNormBackwardKernel<<<BlocksFor(n, kRmsRowsPerBlock), kThreads, smem, stream>>>(
      dinp, dweight, dout, inp, weight, rstd, n, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void RopeTablesHost(float* cos_t, float* sin_t, int t, int hd) {
  // The same fp32 arithmetic as kernels/rope.cc's RopeTables.
  const int half = hd / 2;
  for (int i = 0; i < half; ++i) {
    const float inv_freq = 1.0f / std::pow(kernels::kRopeTheta, static_cast<float>(2 * i) / hd);
    for (int pos = 0; pos < t; ++pos) {
      const float angle = static_cast<float>(pos) * inv_freq;
      cos_t[int64_t{pos} * half + i] = std::cos(angle);
      sin_t[int64_t{pos} * half + i] = std::sin(angle);
    }
  }
}

void RopeForward(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                 int hd, cudaStream_t stream) {
  const int64_t total = int64_t{b} * t * (h + hkv) * (hd / 2);
  if (total <= 0) return;
  RopeKernel<<<GridFor(total), kThreads, 0, stream>>>(qkv, cos_t, sin_t, b, t, h, hkv, hd, 1.0f);
  MOE_CUDA_LAUNCH_CHECK();
}

void RopeBackward(float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                  int hd, cudaStream_t stream) {
  const int64_t total = int64_t{b} * t * (h + hkv) * (hd / 2);
  if (total <= 0) return;
  RopeKernel<<<GridFor(total), kThreads, 0, stream>>>(dqkv, cos_t, sin_t, b, t, h, hkv, hd, -1.0f);
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

void Add(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  AddKernel<<<GridFor(n), kThreads, 0, stream>>>(x, y, n);
  MOE_CUDA_LAUNCH_CHECK();
}

void CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets, int n,
                         int v, cudaStream_t stream) {
  if (n <= 0) return;
  CrossEntropyForwardKernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(losses, lse, logits,
                                                                                 targets, n, v);
  MOE_CUDA_LAUNCH_CHECK();
}

void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                          float scale, int n, int v, cudaStream_t stream) {
  if (n <= 0) return;
  CrossEntropyBackwardKernel<float><<<GridFor(int64_t{n} * v), kThreads, 0, stream>>>(
      dlogits, logits, lse, targets, scale, n, v);
  MOE_CUDA_LAUNCH_CHECK();
}

void CrossEntropyBackwardBf16(bf16* dlogits, const float* logits, const float* lse,
                              const int32_t* targets, float scale, int n, int v, cudaStream_t stream) {
  if (n <= 0) return;
  CrossEntropyBackwardKernel<bf16><<<GridFor(int64_t{n} * v), kThreads, 0, stream>>>(
      dlogits, logits, lse, targets, scale, n, v);
  MOE_CUDA_LAUNCH_CHECK();
}

void AdamWUpdate(float* param, bf16* param_bf16, const float* grad, float* m, float* v, int64_t n,
                 float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
                 float grad_scale, cudaStream_t stream) {
  if (n <= 0) return;
  AdamWKernel<<<GridFor(n), kThreads, 0, stream>>>(param, param_bf16, grad, m, v, n, lr, beta1, beta2,
                                                   eps, weight_decay, bc1, bc2, grad_scale);
  MOE_CUDA_LAUNCH_CHECK();
}

void SquaredNorm(double* out, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  SumKernel<true><<<std::min<unsigned>(GridFor(n), 1024), kThreads, 0, stream>>>(out, x, n);
  MOE_CUDA_LAUNCH_CHECK();
}

void Sum(double* out, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  SumKernel<false><<<std::min<unsigned>(GridFor(n), 1024), kThreads, 0, stream>>>(out, x, n);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
