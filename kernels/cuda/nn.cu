#include "kernels/cuda/nn.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

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

// One warp per row. The general kernel: any d, any alignment.
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

// The register-resident RMSNorm kernels, for d % 4 == 0, 16-byte aligned pointers and
// d <= 128 * kRmsMaxVecs: one warp per row, lane l holding the row's float4 vectors l, l + 32,
// ..., l + 32 (kVecs - 1) in registers (those past d / 4 are zeros and never stored), so each
// row is read from memory once.
constexpr int kRmsMaxVecs = 8;

__device__ __forceinline__ float4 Zero4() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }

// One warp per row, as RmsNormForwardKernel, the row held in registers.
template <int kVecs>
__global__ void __launch_bounds__(kThreads) RmsNormForwardVecKernel(float* out, float* rstd,
                                                                    const float* inp,
                                                                    const float* weight, int n,
                                                                    int d) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, d4 = d / 4;
  if (row >= n) return;
  const float4* x4 = reinterpret_cast<const float4*>(inp + int64_t{row} * d);
  float4 x[kVecs];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int v = k * 32 + lane;
    x[k] = v < d4 ? x4[v] : Zero4();
    ss += x[k].x * x[k].x;
    ss += x[k].y * x[k].y;
    ss += x[k].z * x[k].z;
    ss += x[k].w * x[k].w;
  }
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf(ss / d + kernels::kRmsNormEps);
  if (lane == 0) rstd[row] = r;
  const float4* w4 = reinterpret_cast<const float4*>(weight);
  float4* y4 = reinterpret_cast<float4*>(out + int64_t{row} * d);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int v = k * 32 + lane;
    if (v < d4) {
      const float4 w = w4[v];
      y4[v] = make_float4(x[k].x * r * w.x, x[k].y * r * w.y, x[k].z * r * w.z, x[k].w * r * w.w);
    }
  }
}

// The general backward kernel (any d, any alignment). A block of 8 warps takes kRowsPerBlock
// rows, one warp per row at a time; dweight is summed per block in shared memory (d floats) and
// then added to the output once per block.
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

// Register-resident backward: warps walk rows grid-stride (row = global warp, + all warps), one
// row per warp at a time, the row's x and dy in registers. Each lane keeps its columns' dweight
// partial sums in registers across all its rows; at the end the warps' partials meet in shared
// memory (warps, d) and the block adds their sum to dweight with one atomicAdd per column.
template <int kVecs>
__global__ void __launch_bounds__(kThreads) RmsNormBackwardVecKernel(
    float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
    const float* rstd, int n, int d) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int d4 = d / 4;
  const float4* w4 = reinterpret_cast<const float4*>(weight);
  float4 dw[kVecs];
#pragma unroll
  for (int k = 0; k < kVecs; ++k) dw[k] = Zero4();
  for (int row = blockIdx.x * warps + warp; row < n; row += gridDim.x * warps) {
    const float4* x4 = reinterpret_cast<const float4*>(inp + int64_t{row} * d);
    const float4* dy4 = reinterpret_cast<const float4*>(dout + int64_t{row} * d);
    const float r = rstd[row];
    float4 x[kVecs], dy[kVecs];
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int v = k * 32 + lane;
      x[k] = v < d4 ? x4[v] : Zero4();
      dy[k] = v < d4 ? dy4[v] : Zero4();
    }
    if (dinp != nullptr) {
      // dx_c += r w_c dy_c - x_c r^3 / d * sum_j dy_j w_j x_j (zero padding adds nothing).
      float dot = 0.0f;
#pragma unroll
      for (int k = 0; k < kVecs; ++k) {
        const int v = k * 32 + lane;
        const float4 w = v < d4 ? w4[v] : Zero4();
        dot += dy[k].x * w.x * x[k].x;
        dot += dy[k].y * w.y * x[k].y;
        dot += dy[k].z * w.z * x[k].z;
        dot += dy[k].w * w.w * x[k].w;
      }
      dot = WarpSum(dot);
      const float kk = dot * r * r * r / d;
      float4* dx4 = reinterpret_cast<float4*>(dinp + int64_t{row} * d);
#pragma unroll
      for (int k = 0; k < kVecs; ++k) {
        const int v = k * 32 + lane;
        if (v < d4) {
          const float4 w = w4[v];
          float4 o = dx4[v];
          o.x += r * w.x * dy[k].x - kk * x[k].x;
          o.y += r * w.y * dy[k].y - kk * x[k].y;
          o.z += r * w.z * dy[k].z - kk * x[k].z;
          o.w += r * w.w * dy[k].w - kk * x[k].w;
          dx4[v] = o;
        }
      }
    }
    if (dweight != nullptr) {
#pragma unroll
      for (int k = 0; k < kVecs; ++k) {
        dw[k].x += dy[k].x * x[k].x * r;
        dw[k].y += dy[k].y * x[k].y * r;
        dw[k].z += dy[k].z * x[k].z * r;
        dw[k].w += dy[k].w * x[k].w * r;
      }
    }
  }
  if (dweight == nullptr) return;  // the same for the whole block
  extern __shared__ float4 dw_shared4[];  // (warps, d / 4)
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int v = k * 32 + lane;
    if (v < d4) dw_shared4[warp * d4 + v] = dw[k];
  }
  __syncthreads();
  const float* dw_shared = reinterpret_cast<const float*>(dw_shared4);
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) sum += dw_shared[w * d + c];
    atomicAdd(dweight + c, sum);
  }
}

// W consecutive floats at p (16-byte aligned when W is 4): one float4 access, or W scalar ones.
template <int W>
__device__ __forceinline__ void LoadW(float (&dst)[W], const float* p) {
  if constexpr (W == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    dst[0] = q.x, dst[1] = q.y, dst[2] = q.z, dst[3] = q.w;
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) dst[j] = p[j];
  }
}
template <int W>
__device__ __forceinline__ void StoreW(float* p, const float (&src)[W]) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(src[0], src[1], src[2], src[3]);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) p[j] = src[j];
  }
}

// Rotated heads one thread loads before it stores any of them (memory-level parallelism).
constexpr int kRopeHeadsPerStep = 4;

// RoPE in place on the q and k heads (the first `heads` of each row of row_len floats), pairs
// (i, i + hd/2). Block (x, y): threadIdx.y picks one of blockDim.y rows (row = b * t + pos),
// threadIdx.x a group of W pairs i = W * threadIdx.x + j (striding by W * blockDim.x when hd / 2 is
// larger); the thread reads that group's cos/sin once and walks every rotated head of its row,
// kRopeHeadsPerStep heads at a time. W = 4 (float4 accesses) needs hd/2 % 4 == 0 and 16-byte
// aligned qkv and tables; W = 1 takes any even hd. All index math is 32-bit but the row offset.
template <int W>
__global__ void RopeKernel(float* qkv, const float* cos_t, const float* sin_t, int rows, int t,
                           int heads, int row_len, int hd, float sign) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int half = hd / 2, pos = row % t;
  float* base = qkv + int64_t{row} * row_len;
  for (int i = threadIdx.x * W; i < half; i += blockDim.x * W) {
    float cs[W], s[W];
    LoadW<W>(cs, cos_t + pos * half + i);
    LoadW<W>(s, sin_t + pos * half + i);
#pragma unroll
    for (int j = 0; j < W; ++j) s[j] *= sign;
    for (int head0 = 0; head0 < heads; head0 += kRopeHeadsPerStep) {
      float a[kRopeHeadsPerStep][W], c[kRopeHeadsPerStep][W];
#pragma unroll
      for (int u = 0; u < kRopeHeadsPerStep; ++u) {
        if (head0 + u < heads) {
          LoadW<W>(a[u], base + (head0 + u) * hd + i);
          LoadW<W>(c[u], base + (head0 + u) * hd + half + i);
        }
      }
#pragma unroll
      for (int u = 0; u < kRopeHeadsPerStep; ++u) {
        if (head0 + u < heads) {
          float na[W], nc[W];
#pragma unroll
          for (int j = 0; j < W; ++j) {
            na[j] = a[u][j] * cs[j] - c[u][j] * s[j];
            nc[j] = a[u][j] * s[j] + c[u][j] * cs[j];
          }
          StoreW<W>(base + (head0 + u) * hd + i, na);
          StoreW<W>(base + (head0 + u) * hd + half + i, nc);
        }
      }
    }
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

// One element of AdamW (kernels::AdamWStep's math); returns the new parameter.
__device__ __forceinline__ float AdamWElement(float& p, float g, float& m, float& v, float lr, float b1, float b2,
                                              float eps, float wd, float bc1, float bc2, float grad_scale) {
  const float gi = g * grad_scale;
  m = b1 * m + (1.0f - b1) * gi;
  v = b2 * v + (1.0f - b2) * gi * gi;
  const float m_hat = m / bc1;
  const float v_hat = v / bc2;
  p = p - lr * (m_hat / (sqrtf(v_hat) + eps) + wd * p);
  return p;
}

// AdamW at element i, in place (and its bf16 copy when there is one).
__device__ __forceinline__ void AdamWAt(int64_t i, float* param, bf16* param_bf16, const float* grad, float* m,
                                        float* v, float lr, float b1, float b2, float eps, float wd, float bc1,
                                        float bc2, float grad_scale) {
  float p = param[i], mi = m[i], vi = v[i];
  AdamWElement(p, grad[i], mi, vi, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
  m[i] = mi;
  v[i] = vi;
  param[i] = p;
  if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16(p);
}

__global__ void AdamWKernel(float* param, bf16* param_bf16, const float* grad, float* m, float* v,
                            int64_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                            float bc2, float grad_scale) {
  MOE_GRID_STRIDE(i, n) { AdamWAt(i, param, param_bf16, grad, m, v, lr, b1, b2, eps, wd, bc1, bc2, grad_scale); }
}

// The same four elements at a time (fp32 pointers 16-byte, the bf16 copy 8-byte aligned); the
// n % 4 tail by the first threads of block 0.
__global__ void AdamWVec4Kernel(float* param, bf16* param_bf16, const float* grad, float* m, float* v,
                                int64_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                                float bc2, float grad_scale) {
  const int64_t n4 = n / 4;
  MOE_GRID_STRIDE(i, n4) {
    float4 p = reinterpret_cast<float4*>(param)[i], mi = reinterpret_cast<float4*>(m)[i],
           vi = reinterpret_cast<float4*>(v)[i];
    const float4 g = reinterpret_cast<const float4*>(grad)[i];
    AdamWElement(p.x, g.x, mi.x, vi.x, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
    AdamWElement(p.y, g.y, mi.y, vi.y, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
    AdamWElement(p.z, g.z, mi.z, vi.z, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
    AdamWElement(p.w, g.w, mi.w, vi.w, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
    reinterpret_cast<float4*>(m)[i] = mi;
    reinterpret_cast<float4*>(v)[i] = vi;
    reinterpret_cast<float4*>(param)[i] = p;
    if (param_bf16 != nullptr) {
      __nv_bfloat162 lo = __floats2bfloat162_rn(p.x, p.y), hi = __floats2bfloat162_rn(p.z, p.w);
      uint2 bits;
      memcpy(&bits.x, &lo, 4);
      memcpy(&bits.y, &hi, 4);
      reinterpret_cast<uint2*>(param_bf16)[i] = bits;
    }
  }
  if (blockIdx.x == 0 && threadIdx.x < n - n4 * 4) {
    AdamWAt(n4 * 4 + threadIdx.x, param, param_bf16, grad, m, v, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
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


// Calls f(std::integral_constant<int, K>{}) for the smallest instantiated K >= vecs (vecs is at
// most kRmsMaxVecs): the float4 vectors per lane of the register-resident RMSNorm kernels.
template <typename F>
void WithRmsVecs(int vecs, F&& f) {
  static_assert(kRmsMaxVecs == 8, "instantiate up to kRmsMaxVecs");
  if (vecs <= 1) {
    f(std::integral_constant<int, 1>{});
  } else if (vecs <= 2) {
    f(std::integral_constant<int, 2>{});
  } else if (vecs <= 3) {
    f(std::integral_constant<int, 3>{});
  } else if (vecs <= 4) {
    f(std::integral_constant<int, 4>{});
  } else if (vecs <= 6) {
    f(std::integral_constant<int, 6>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

// Whether (d, pointers) fit the register-resident RMSNorm kernels.
bool RmsNormVectorizable(int d, std::initializer_list<const void*> ptrs) {
  return d % 4 == 0 && d <= 128 * kRmsMaxVecs && Aligned(16, ptrs);
}

// Both directions: sign = +1 rotates by the angle, -1 by minus the angle (the transpose).
void Rope(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv, int hd,
          float sign, cudaStream_t stream) {
  const int rows = b * t, heads = h + hkv, half = hd / 2;
  if (rows <= 0 || heads <= 0 || half <= 0) return;
  const int row_len = (h + 2 * hkv) * hd;
  const bool vec = half % 4 == 0 && Aligned(16, {qkv, cos_t, sin_t});
  // threadIdx.x over the pair groups of one head (at most kThreads), threadIdx.y over rows.
  const int groups = vec ? half / 4 : half;
  const dim3 block(std::min(groups, kThreads), std::max(1, kThreads / groups));
  const unsigned blocks = BlocksFor(rows, static_cast<int>(block.y));
  if (vec) {
    RopeKernel<4><<<blocks, block, 0, stream>>>(qkv, cos_t, sin_t, rows, t, heads, row_len, hd,
                                                  sign);
  } else {
    RopeKernel<1><<<blocks, block, 0, stream>>>(qkv, cos_t, sin_t, rows, t, heads, row_len, hd,
                                                  sign);
  }
  MOE_CUDA_LAUNCH_CHECK();
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
  const unsigned blocks = BlocksFor(n, kThreads / 32);
  if (RmsNormVectorizable(d, {out, inp, weight})) {
    WithRmsVecs((d / 4 + 31) / 32, [&](auto vecs) {
      RmsNormForwardVecKernel<decltype(vecs)::value><<<blocks, kThreads, 0, stream>>>(
          out, rstd, inp, weight, n, d);
    });
  } else {
    RmsNormForwardKernel<<<blocks, kThreads, 0, stream>>>(out, rstd, inp, weight, n, d);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d, cudaStream_t stream) {
  if (n <= 0 || (dinp == nullptr && dweight == nullptr)) return;
  if (RmsNormVectorizable(d, {dinp, dout, inp, weight})) {
    // As many blocks as fit on the GPU at once (no more than there are rows for their warps):
    // every block pays d atomics at its end, so fewer, longer-lived blocks.
    const size_t smem = dweight != nullptr ? sizeof(float) * d * (kThreads / 32) : 0;
    WithRmsVecs((d / 4 + 31) / 32, [&](auto vecs) {
      const auto kernel = RmsNormBackwardVecKernel<decltype(vecs)::value>;
      int device = 0, sms = 0, per_sm = 0;
      MOE_CUDA_CHECK(cudaGetDevice(&device));
      MOE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      MOE_CUDA_CHECK(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
      const unsigned blocks =
          std::max(1u, std::min<unsigned>(BlocksFor(n, kThreads / 32), unsigned(sms * per_sm)));
      kernel<<<blocks, kThreads, smem, stream>>>(dinp, dweight, dout, inp, weight, rstd, n, d);
    });
    MOE_CUDA_LAUNCH_CHECK();
    return;
  }
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
  Rope(qkv, cos_t, sin_t, b, t, h, hkv, hd, 1.0f, stream);
}

void RopeBackward(float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                  int hd, cudaStream_t stream) {
  Rope(dqkv, cos_t, sin_t, b, t, h, hkv, hd, -1.0f, stream);
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

void AddOut(float* out, const float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (Aligned(16, {out, x, y})) {
    AddOutVec4Kernel<<<GridFor(std::max<int64_t>(1, n / 4)), kThreads, 0, stream>>>(out, x, y, n);
  } else {
    AddOutKernel<<<GridFor(n), kThreads, 0, stream>>>(out, x, y, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

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

void AdamWUpdate(float* param, bf16* param_bf16, const float* grad, float* m, float* v, int64_t n,
                 float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
                 float grad_scale, cudaStream_t stream) {
  if (n <= 0) return;
  if (Aligned(16, {param, grad, m, v}) && Aligned(8, {param_bf16})) {
    AdamWVec4Kernel<<<GridFor(std::max<int64_t>(1, n / 4)), kThreads, 0, stream>>>(
        param, param_bf16, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale);
  } else {
    AdamWKernel<<<GridFor(n), kThreads, 0, stream>>>(param, param_bf16, grad, m, v, n, lr, beta1, beta2,
                                                     eps, weight_decay, bc1, bc2, grad_scale);
  }
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
