#include "kernels/embedding.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

namespace moe::kernels {

void EmbeddingForward(float* out, const int32_t* idx, const float* wte, int n, int d) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    std::memcpy(out + int64_t{i} * d, wte + int64_t{idx[i]} * d, sizeof(float) * d);
  }
}

void EmbeddingBackward(float* dwte, const float* dout, const int32_t* idx, int n, int d) {
  // Several tokens may share a row of dwte, so threads split the columns instead of the tokens:
  // no races, and each element sums its tokens in token order (deterministic for any thread count).
#pragma omp parallel
  {
    const int nt = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    const int chunk = (d + nt - 1) / nt;
    const int c0 = std::min(d, tid * chunk);
    const int c1 = std::min(d, c0 + chunk);
    for (int i = 0; i < n; ++i) {
      float* dst = dwte + int64_t{idx[i]} * d;
      const float* src = dout + int64_t{i} * d;
#pragma omp simd
      for (int c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace moe::kernels
