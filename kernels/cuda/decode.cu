#include "kernels/cuda/decode.h"

#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace moe::cuda {
namespace {

void CheckBlas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuBLAS error %d in %s\n", static_cast<int>(st), what);
    std::abort();
  }
}

// One block per query head: scores over the cache, their softmax, then the weighted values.
__global__ void DecodeAttentionKernel(float* y, const float* q, const float* k_cache, const float* v_cache,
                                      float* scores, int len, int heads, int kv_heads, int hd) {
  const int h = blockIdx.x;
  const int kv = h / (heads / kv_heads);
  const int row = kv_heads * hd;
  const float* qh = q + static_cast<int64_t>(h) * hd;
  float* s = scores + static_cast<int64_t>(h) * len;
  const float scale = rsqrtf(static_cast<float>(hd));
  __shared__ float red[32];
  __shared__ float shared_value;
  float local_max = -INFINITY;
  for (int j = threadIdx.x; j < len; j += blockDim.x) {
    const float* kj = k_cache + static_cast<int64_t>(j) * row + static_cast<int64_t>(kv) * hd;
    float dot = 0.f;
    for (int i = 0; i < hd; ++i) dot += qh[i] * kj[i];
    s[j] = dot * scale;
    local_max = fmaxf(local_max, s[j]);
  }
  // Block max, then block sum of the exponentials.
  for (int o = 16; o > 0; o >>= 1) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffff, local_max, o));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = local_max;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = -INFINITY;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) m = fmaxf(m, red[w]);
    shared_value = m;
  }
  __syncthreads();
  const float mx = shared_value;
  float local_sum = 0.f;
  for (int j = threadIdx.x; j < len; j += blockDim.x) {
    s[j] = expf(s[j] - mx);
    local_sum += s[j];
  }
  for (int o = 16; o > 0; o >>= 1) local_sum += __shfl_xor_sync(0xffffffff, local_sum, o);
  __syncthreads();
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = local_sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += red[w];
    shared_value = total;
  }
  __syncthreads();
  const float inv = 1.f / shared_value;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < len; ++j) {
      acc += s[j] * v_cache[static_cast<int64_t>(j) * row + static_cast<int64_t>(kv) * hd + i];
    }
    y[static_cast<int64_t>(h) * hd + i] = acc * inv;
  }
}

__global__ void ActivationKernel(float* h, const float* g, const float* u, int n, int kind) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float x = g[i];
  if (kind == 0) {
    h[i] = x / (1.f + expf(-x)) * u[i];
  } else if (kind == 1) {
    const float r = fmaxf(x, 0.f);
    h[i] = r * r;
  } else {
    const float c = 0.7978845608028654f;  // sqrt(2 / pi)
    h[i] = 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
  }
}

__global__ void SigmoidGateKernel(float* y, const float* g, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] *= 1.f / (1.f + expf(-g[i]));
}

}  // namespace

Gemv::Gemv(cudaStream_t stream) {
  cublasHandle_t h = nullptr;
  CheckBlas(cublasCreate(&h), "cublasCreate");
  CheckBlas(cublasSetStream(h, stream), "cublasSetStream");
  // fp32 throughout: no TF32 for the oracle-close sampler.
  CheckBlas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  handle_ = h;
}

Gemv::~Gemv() { cublasDestroy(static_cast<cublasHandle_t>(handle_)); }

void Gemv::OutIn(float* y, const float* w, const float* x, int rows, int cols, float alpha, float beta) {
  // Row-major (rows, cols) is column-major (cols, rows) with leading dimension cols: y = A^T x.
  CheckBlas(cublasSgemv(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_T, cols, rows, &alpha, w, cols, x, 1,
                        &beta, y, 1),
            "cublasSgemv (out, in)");
}

void Gemv::InOut(float* y, const float* w, const float* x, int rows, int cols, float alpha, float beta) {
  // y (cols) = x (rows) W (rows, cols): column-major (cols, rows) times x, no transpose.
  CheckBlas(cublasSgemv(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_N, cols, rows, &alpha, w, cols, x, 1,
                        &beta, y, 1),
            "cublasSgemv (in, out)");
}

void DecodeAttention(float* y, const float* q, const float* k_cache, const float* v_cache, float* scores,
                     int len, int heads, int kv_heads, int hd, cudaStream_t stream) {
  DecodeAttentionKernel<<<heads, 128, 0, stream>>>(y, q, k_cache, v_cache, scores, len, heads, kv_heads, hd);
  MOE_CUDA_LAUNCH_CHECK();
}

void DecodeActivation(float* h, const float* g, const float* u, int n, int kind, cudaStream_t stream) {
  ActivationKernel<<<BlocksFor(n, 256), 256, 0, stream>>>(h, g, u, n, kind);
  MOE_CUDA_LAUNCH_CHECK();
}

void SigmoidGateInPlace(float* y, const float* g, int n, cudaStream_t stream) {
  SigmoidGateKernel<<<BlocksFor(n, 256), 256, 0, stream>>>(y, g, n);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
