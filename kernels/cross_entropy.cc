#include "kernels/cross_entropy.h"

#include <algorithm>
#include <cmath>

namespace moe::kernels {

double CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets,
                           int n, int v) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    const float* z = logits + int64_t{i} * v;
    float mx = z[0];
    for (int c = 1; c < v; ++c) mx = std::max(mx, z[c]);
    float sum = 0.0f;
    for (int c = 0; c < v; ++c) sum += std::exp(z[c] - mx);
    lse[i] = mx + std::log(sum);
    losses[i] = targets[i] >= 0 ? lse[i] - z[targets[i]] : 0.0f;
  }
  double total = 0.0;  // fixed order
  for (int i = 0; i < n; ++i) total += losses[i];
  return total;
}

void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse,
                          const int32_t* targets, float scale, int n, int v) {
  // Element by element: each logit is read before its gradient overwrites it (aliasing allowed).
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    const float* z = logits + int64_t{i} * v;
    float* dz = dlogits + int64_t{i} * v;
    const int32_t target = targets[i];
    if (target < 0) {
      for (int c = 0; c < v; ++c) dz[c] = 0.0f;
      continue;
    }
    const float l = lse[i];
    for (int c = 0; c < v; ++c) dz[c] = scale * std::exp(z[c] - l);
    dz[target] -= scale;
  }
}

}  // namespace moe::kernels
