#include "kernels/cuda/rmsnorm.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/reduce.h"
#include "kernels/rmsnorm.h"

namespace moe::cuda {
namespace {

using internal::kThreads;
using internal::WarpSum;

// The normalised output in fp32, or in bf16 alone (the operand of a bf16 product).
__device__ __forceinline__ void StoreOut(float* y, int c, float v) { y[c] = v; }
__device__ __forceinline__ void StoreOut(bf16* y, int c, float v) { y[c] = __float2bfloat16(v); }
__device__ __forceinline__ void StoreOut4(float* y, int v, float4 o) { reinterpret_cast<float4*>(y)[v] = o; }
__device__ __forceinline__ void StoreOut4(bf16* y, int v, float4 o) { internal::StoreBf16x4(y + 4 * v, o); }

// One warp per row. The general kernel: any d, any alignment.
template <typename Out>
__global__ void RmsNormForwardKernel(Out* out, bf16* out16, float* rstd, const float* inp, const float* weight,
                                     int n, int d, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* x = inp + int64_t{row} * d;
  float ss = 0.0f;
  for (int c = lane; c < d; c += 32) ss += x[c] * x[c];
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf(ss / d + eps);
  if (lane == 0) rstd[row] = r;
  Out* y = out + int64_t{row} * d;
  bf16* y16 = out16 != nullptr ? out16 + int64_t{row} * d : nullptr;
  for (int c = lane; c < d; c += 32) {
    const float v = x[c] * r * weight[c];
    StoreOut(y, c, v);
    if (y16 != nullptr) StoreOut(y16, c, v);
  }
}

// The register-resident RMSNorm kernels, for d % 4 == 0, 16-byte aligned pointers and
// d <= 128 * kRmsMaxVecs: one warp per row, lane l holding the row's float4 vectors l, l + 32,
// ..., l + 32 (kVecs - 1) in registers (those past d / 4 are zeros and never stored), so each
// row is read from memory once.
constexpr int kRmsMaxVecs = 8;

__device__ __forceinline__ float4 Zero4() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }

// One warp per row, as RmsNormForwardKernel, the row held in registers.
template <typename Out, int kVecs>
__global__ void __launch_bounds__(kThreads) RmsNormForwardVecKernel(Out* out, bf16* out16, float* rstd,
                                                                    const float* inp,
                                                                    const float* weight, int n,
                                                                    int d, float eps) {
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
  const float r = 1.0f / sqrtf(ss / d + eps);
  if (lane == 0) rstd[row] = r;
  const float4* w4 = reinterpret_cast<const float4*>(weight);
  Out* y = out + int64_t{row} * d;
  bf16* y16 = out16 != nullptr ? out16 + int64_t{row} * d : nullptr;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int v = k * 32 + lane;
    if (v < d4) {
      const float4 w = w4[v];
      const float4 o = make_float4(x[k].x * r * w.x, x[k].y * r * w.y, x[k].z * r * w.z, x[k].w * r * w.w);
      StoreOut4(y, v, o);
      if (y16 != nullptr) StoreOut4(y16, v, o);
    }
  }
}

// The general backward kernel (any d, any alignment). A block of 8 warps takes kRowsPerBlock
// rows at a time (grid-stride), one warp per row; dweight is summed per block in shared memory
// and left as the block's partial (reduce.h), which AddColumnPartials adds in block order.
constexpr int kRmsRowsPerBlock = 64;
// dweight: each warp sums its rows into its own shared slice (no atomics inside the block),
// then the block sums the slices into its row of partials (blocks, d).
__global__ void RmsNormBackwardKernel(float* dinp, float* partials, const float* dout,
                                      const float* inp, const float* weight, const float* rstd,
                                      int n, int d) {
  extern __shared__ float dw_shared[];  // (warps, d)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float* dw_warp = dw_shared + int64_t{warp} * d;
  if (partials != nullptr) {
    for (int c = threadIdx.x; c < warps * d; c += blockDim.x) dw_shared[c] = 0.0f;
    __syncthreads();
  }
  for (int row0 = blockIdx.x * kRmsRowsPerBlock; row0 < n; row0 += gridDim.x * kRmsRowsPerBlock) {
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
      if (partials != nullptr) {
        for (int c = lane; c < d; c += 32) dw_warp[c] += dy[c] * x[c] * r;
      }
    }
  }
  if (partials != nullptr) {
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float sum = 0.0f;
      for (int w = 0; w < warps; ++w) sum += dw_shared[int64_t{w} * d + c];
      partials[int64_t{blockIdx.x} * d + c] = sum;
    }
  }
}

// Register-resident backward: warps walk rows grid-stride (row = global warp, + all warps), one
// row per warp at a time, the row's x and dy in registers. Each lane keeps its columns' dweight
// partial sums in registers across all its rows; at the end the warps' partials meet in shared
// memory (warps, d) and the block writes their sum as its row of partials (blocks, d).
template <int kVecs>
__global__ void __launch_bounds__(kThreads) RmsNormBackwardVecKernel(
    float* dinp, float* partials, const float* dout, const float* inp, const float* weight,
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
    if (partials != nullptr) {
#pragma unroll
      for (int k = 0; k < kVecs; ++k) {
        dw[k].x += dy[k].x * x[k].x * r;
        dw[k].y += dy[k].y * x[k].y * r;
        dw[k].z += dy[k].z * x[k].z * r;
        dw[k].w += dy[k].w * x[k].w * r;
      }
    }
  }
  if (partials == nullptr) return;  // the same for the whole block
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
    partials[int64_t{blockIdx.x} * d + c] = sum;
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

template <typename Out>
void RmsNormForwardAs(Out* out, bf16* out16, float* rstd, const float* inp, const float* weight, int n, int d,
                      float eps, cudaStream_t stream) {
  if (n <= 0) return;
  const unsigned blocks = BlocksFor(n, kThreads / 32);
  // out16's rows take 8-byte stores (StoreBf16x4): 16-byte alignment of the pointer, as the rest.
  if (RmsNormVectorizable(d, {out, inp, weight, out16})) {
    WithRmsVecs((d / 4 + 31) / 32, [&](auto vecs) {
      RmsNormForwardVecKernel<Out, decltype(vecs)::value><<<blocks, kThreads, 0, stream>>>(
          out, out16, rstd, inp, weight, n, d, eps);
    });
  } else {
    RmsNormForwardKernel<Out><<<blocks, kThreads, 0, stream>>>(out, out16, rstd, inp, weight, n, d, eps);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int n, int d, float eps,
                    cudaStream_t stream, bf16* out16) {
  RmsNormForwardAs(out, out16, rstd, inp, weight, n, d, eps, stream);
}

void RmsNormForwardBf16(bf16* out, float* rstd, const float* inp, const float* weight, int n, int d, float eps,
                        cudaStream_t stream) {
  RmsNormForwardAs(out, static_cast<bf16*>(nullptr), rstd, inp, weight, n, d, eps, stream);
}

void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d, float* partials,
                     cudaStream_t stream) {
  if (n <= 0 || (dinp == nullptr && dweight == nullptr)) return;
  float* parts = dweight != nullptr ? partials : nullptr;
  const size_t smem = dweight != nullptr ? sizeof(float) * d * (kThreads / 32) : 0;
  unsigned blocks = 0;
  if (RmsNormVectorizable(d, {dinp, dout, inp, weight})) {
    // As many blocks as fit on the GPU at once (no more than there are rows for their warps):
    // every block leaves d partials, so fewer, longer-lived blocks.
    WithRmsVecs((d / 4 + 31) / 32, [&](auto vecs) {
      const auto kernel = RmsNormBackwardVecKernel<decltype(vecs)::value>;
      int device = 0, sms = 0, per_sm = 0;
      MOE_CUDA_CHECK(cudaGetDevice(&device));
      MOE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      MOE_CUDA_CHECK(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
      blocks = std::max(1u, std::min<unsigned>({BlocksFor(n, kThreads / 32), unsigned(sms * per_sm),
                                                unsigned(kPartialBlocks)}));
      kernel<<<blocks, kThreads, smem, stream>>>(dinp, parts, dout, inp, weight, rstd, n, d);
    });
  } else {
    if (smem > 48 * 1024) {
      MOE_CUDA_CHECK(cudaFuncSetAttribute(RmsNormBackwardKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    blocks = std::min<unsigned>(BlocksFor(n, kRmsRowsPerBlock), kPartialBlocks);
    RmsNormBackwardKernel<<<blocks, kThreads, smem, stream>>>(dinp, parts, dout, inp, weight, rstd, n, d);
  }
  MOE_CUDA_LAUNCH_CHECK();
  if (dweight != nullptr) AddColumnPartials(dweight, partials, static_cast<int>(blocks), d, stream);
}

}  // namespace moe::cuda
