#include "kernels/attention_gate.h"

#include <cmath>

namespace moe::kernels {

void AttentionGateForward(float* out, float* gate, const float* y, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const float s = 1.0f / (1.0f + std::exp(-gate[i]));
    gate[i] = s;
    out[i] = y[i] * s;
  }
}

void AttentionGateBackward(float* dy, float* dlogits, const float* dout, const float* y, const float* gate,
                           int64_t count) {
  // out = y s, s = sigmoid(g): dy = dout s ; dg = dout y s (1 - s).
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const float s = gate[i];
    dy[i] += dout[i] * s;
    dlogits[i] = dout[i] * y[i] * s * (1.0f - s);
  }
}

}  // namespace moe::kernels
