// AdamW (decoupled weight decay) and the squared L2 norm used for global gradient clipping.
#pragma once

#include <cstdint>

namespace moe::kernels {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // 0 for norms
};

// grad is multiplied by grad_scale first (clipping); step is 1-based for bias correction.
// param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param).
void AdamWUpdate(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamWConfig& cfg, int64_t step, float grad_scale);

// sum of x^2 in double.
double SquaredNorm(const float* x, int64_t n);

}  // namespace moe::kernels
