// The ops of token-by-token inference on one GPU (worker/model/cuda/cuda_decoder.h): products of
// a weight matrix with one row (cuBLAS gemv, fp32), causal attention of one query per head over a
// KV cache, the experts' activations and the attention gate on one row.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// Matrix-vector products on one stream.
class Gemv {
 public:
  explicit Gemv(cudaStream_t stream);
  ~Gemv();
  Gemv(const Gemv&) = delete;
  Gemv& operator=(const Gemv&) = delete;
  // y (rows) = alpha * W x + beta * y, W (rows, cols) row-major: a Linear weight [out, in].
  void OutIn(float* y, const float* w, const float* x, int rows, int cols, float alpha = 1, float beta = 0);
  // y (cols) = alpha * x W + beta * y, W (rows, cols) row-major: an expert weight [in, out].
  void InOut(float* y, const float* w, const float* x, int rows, int cols, float alpha = 1, float beta = 0);

 private:
  void* handle_ = nullptr;  // cublasHandle_t
};

// y (H hd) = softmax(q k^T / sqrt(hd)) v for one query per head over positions 0..len-1 of the
// cache (k_cache, v_cache: rows of H_kv hd; query head h reads kv head h / (H / H_kv)).
// scores: H * len floats of scratch.
void DecodeAttention(float* y, const float* q, const float* k_cache, const float* v_cache, float* scores,
                     int len, int heads, int kv_heads, int hd, cudaStream_t stream);

// h = silu(g) * u (kind 0, swiglu), relu(g)^2 (kind 1, relu2) or gelu_tanh(g) (kind 2, gelu).
void DecodeActivation(float* h, const float* g, const float* u, int n, int kind, cudaStream_t stream);

// y *= sigmoid(g), elementwise over n.
void SigmoidGateInPlace(float* y, const float* g, int n, cudaStream_t stream);

}  // namespace moe::cuda
