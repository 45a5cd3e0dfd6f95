#include "kernels/cuda/adamw.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/reduce.h"

namespace moe::cuda {
namespace {

using internal::GridFor;
using internal::kThreads;
using internal::WarpSumD;

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
    if (param_bf16 != nullptr) internal::StoreBf16x4(param_bf16 + 4 * i, p);
  }
  if (blockIdx.x == 0 && threadIdx.x < n - n4 * 4) {
    AdamWAt(n4 * 4 + threadIdx.x, param, param_bf16, grad, m, v, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
  }
}

// Each block's sum into partials[blockIdx.x] (reduce.h: added in block order afterwards).
template <bool kSquare, typename T>
__global__ void SumKernel(double* partials, const T* x, int64_t n) {
  double acc = 0.0;
  MOE_GRID_STRIDE(i, n) {
    const double xi = static_cast<float>(x[i]);
    acc += kSquare ? xi * xi : xi;
  }
  acc = WarpSumD(acc);
  __shared__ double partial[kThreads / 32];
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    double v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0;
    v = WarpSumD(v);
    if (threadIdx.x == 0) partials[blockIdx.x] = v;
  }
}

template <bool kSquare, typename T>
void SumInto(double* out, const T* x, int64_t n, double* partials, cudaStream_t stream) {
  if (n <= 0) return;
  const unsigned blocks = std::min<unsigned>(GridFor(n), kPartialBlocks);
  SumKernel<kSquare><<<blocks, kThreads, 0, stream>>>(partials, x, n);
  MOE_CUDA_LAUNCH_CHECK();
  AddPartials(out, partials, static_cast<int>(blocks), stream);
}

}  // namespace

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

void SquaredNorm(double* out, const float* x, int64_t n, double* partials, cudaStream_t stream) {
  SumInto<true>(out, x, n, partials, stream);
}

void SquaredNorm(double* out, const bf16* x, int64_t n, double* partials, cudaStream_t stream) {
  SumInto<true>(out, x, n, partials, stream);
}

void Sum(double* out, const float* x, int64_t n, double* partials, cudaStream_t stream) {
  SumInto<false>(out, x, n, partials, stream);
}

}  // namespace moe::cuda
