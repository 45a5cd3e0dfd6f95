#include "kernels/rmsnorm.h"

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace moe::kernels {

void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int n, int d, float eps) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    const float* x = inp + int64_t{i} * d;
    float* y = out + int64_t{i} * d;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < d; ++c) ss += x[c] * x[c];
    const float r = 1.0f / std::sqrt(ss / d + eps);
    rstd[i] = r;
#pragma omp simd
    for (int c = 0; c < d; ++c) y[c] = x[c] * r * weight[c];
  }
}

void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d) {
  // y_c = x_c r w_c, r = (mean(x^2) + eps)^-1/2:
  // dx_c = r w_c dy_c - x_c r^3 / d * sum_j dy_j w_j x_j ;  dw_c = sum_rows dy_c x_c r.
  // dweight sums over rows: each thread keeps its own partial (d), combined in thread order.
  const int max_threads = omp_get_max_threads();
  std::vector<float> partial(dweight != nullptr ? int64_t{max_threads} * d : 0, 0.0f);
  int used_threads = 1;
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    used_threads = omp_get_num_threads();
    float* dw = dweight != nullptr ? partial.data() + int64_t{tid} * d : nullptr;
#pragma omp for schedule(static)
    for (int i = 0; i < n; ++i) {
      const float* x = inp + int64_t{i} * d;
      const float* dy = dout + int64_t{i} * d;
      const float r = rstd[i];
      if (dinp != nullptr) {
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < d; ++c) dot += dy[c] * weight[c] * x[c];
        const float k = dot * r * r * r / d;
        float* dx = dinp + int64_t{i} * d;
#pragma omp simd
        for (int c = 0; c < d; ++c) dx[c] += r * weight[c] * dy[c] - k * x[c];
      }
      if (dw != nullptr) {
#pragma omp simd
        for (int c = 0; c < d; ++c) dw[c] += dy[c] * x[c] * r;
      }
    }
  }
  if (dweight == nullptr) return;
  for (int th = 0; th < used_threads; ++th) {
    const float* p = partial.data() + int64_t{th} * d;
    for (int c = 0; c < d; ++c) dweight[c] += p[c];
  }
}

}  // namespace moe::kernels
