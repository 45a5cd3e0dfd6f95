#include "kernels/qk_norm.h"

#include <omp.h>

#include <cmath>
#include <vector>

namespace moe::kernels {
namespace {

// One head vector x (hd) -> y = x r w, r = 1 / sqrt(mean(x^2) + eps). y may alias x.
inline float NormHead(float* y, const float* x, const float* w, int hd, float eps) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int c = 0; c < hd; ++c) ss += x[c] * x[c];
  const float r = 1.0f / std::sqrt(ss / hd + eps);
#pragma omp simd
  for (int c = 0; c < hd; ++c) y[c] = x[c] * r * w[c];
  return r;
}

// In place: dy (hd), the gradient of y = x r w, becomes dx = r w dy - x r^3 / hd sum(dy w x);
// dw (hd) += dy x r when not null.
inline void NormHeadBackward(float* d, float* dw, const float* x, const float* w, float r, int hd) {
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (int c = 0; c < hd; ++c) dot += d[c] * w[c] * x[c];
  if (dw != nullptr) {
#pragma omp simd
    for (int c = 0; c < hd; ++c) dw[c] += d[c] * x[c] * r;
  }
  const float k = dot * r * r * r / hd;
#pragma omp simd
  for (int c = 0; c < hd; ++c) d[c] = r * w[c] * d[c] - k * x[c];
}

}  // namespace

void QkNormForward(float* qkv, float* rstd, float* raw, const float* q_weight, const float* k_weight,
                   int64_t n, int h, int hkv, int hd, float eps) {
  const int64_t row = int64_t{h + 2 * hkv} * hd;
  const int64_t qk = int64_t{h + hkv} * hd;  // the normalised part of a row
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float* x = qkv + i * row;
    if (raw != nullptr) {
      for (int64_t c = 0; c < qk; ++c) raw[i * qk + c] = x[c];
    }
    for (int hi = 0; hi < h + hkv; ++hi) {
      float* v = x + int64_t{hi} * hd;
      rstd[i * (h + hkv) + hi] = NormHead(v, v, hi < h ? q_weight : k_weight, hd, eps);
    }
  }
}

void QkNormBackward(float* dqkv, float* dq_weight, float* dk_weight, const float* raw, const float* rstd,
                    const float* q_weight, const float* k_weight, int64_t n, int h, int hkv, int hd) {
  const int64_t row = int64_t{h + 2 * hkv} * hd;
  const int64_t qk = int64_t{h + hkv} * hd;
  // The weight gradients sum over rows: each thread keeps its own partial (q then k, 2 hd),
  // combined in thread order, so a fixed thread count gives a fixed result.
  const bool weights = dq_weight != nullptr || dk_weight != nullptr;
  std::vector<float> partial(weights ? int64_t{omp_get_max_threads()} * 2 * hd : 0, 0.0f);
  int used_threads = 1;
#pragma omp parallel
  {
#pragma omp single
    used_threads = omp_get_num_threads();
    float* dw = weights ? partial.data() + int64_t{omp_get_thread_num()} * 2 * hd : nullptr;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      for (int hi = 0; hi < h + hkv; ++hi) {
        const bool is_q = hi < h;
        NormHeadBackward(dqkv + i * row + int64_t{hi} * hd, dw == nullptr ? nullptr : dw + (is_q ? 0 : hd),
                         raw + i * qk + int64_t{hi} * hd, is_q ? q_weight : k_weight,
                         rstd[i * (h + hkv) + hi], hd);
      }
    }
  }
  if (!weights) return;
  for (int th = 0; th < used_threads; ++th) {
    const float* p = partial.data() + int64_t{th} * 2 * hd;
    for (int c = 0; c < hd; ++c) {
      if (dq_weight != nullptr) dq_weight[c] += p[c];
      if (dk_weight != nullptr) dk_weight[c] += p[hd + c];
    }
  }
}

}  // namespace moe::kernels
