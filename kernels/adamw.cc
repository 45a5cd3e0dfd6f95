#include "kernels/adamw.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe::kernels {

void AdamWUpdate(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamWConfig& cfg, int64_t step, float grad_scale) {
  const float b1 = cfg.beta1, b2 = cfg.beta2;
  const float bc1 = static_cast<float>(1.0 - std::pow(double{b1}, static_cast<double>(step)));
  const float bc2 = static_cast<float>(1.0 - std::pow(double{b2}, static_cast<double>(step)));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = grad[i] * grad_scale;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    const float m_hat = m[i] / bc1;
    const float v_hat = v[i] / bc2;
    param[i] -= cfg.lr * (m_hat / (std::sqrt(v_hat) + cfg.eps) + cfg.weight_decay * param[i]);
  }
}

double SquaredNorm(const float* x, int64_t n) {
  // Per-thread partial sums over static chunks, added in thread order: deterministic for a
  // given thread count.
  std::vector<double> partial(omp_get_max_threads(), 0.0);
  int used_threads = 1;
#pragma omp parallel
  {
    const int nt = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    if (tid == 0) used_threads = nt;
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t i0 = std::min(n, tid * chunk);
    const int64_t i1 = std::min(n, i0 + chunk);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = i0; i < i1; ++i) acc += double{x[i]} * x[i];
    partial[tid] = acc;
  }
  double total = 0.0;
  for (int th = 0; th < used_threads; ++th) total += partial[th];
  return total;
}

}  // namespace moe::kernels
