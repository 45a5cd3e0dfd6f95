// The experts' forward written the obvious way, in double: the oracle of the CPU expert kernels
// (kernels/experts.h) in kernels_moe_test (SwiGLU) and kernels_moe_recipes_test (relu2, gelu).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/experts.h"

namespace moe::testing {

// One value of the ungated activations: relu(g)^2, or GELU's tanh form (MODEL.md).
inline double NaiveAct(kernels::ExpertActivation act, double g) {
  if (act == kernels::ExpertActivation::kRelu2) return g > 0 ? g * g : 0.0;
  return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
}

// ys (sum(counts), d): the rows of xs (sum(counts), d) grouped by expert, counts[x] rows for
// expert x, each through its own w1 (e, d, f), w3 (e, d, f; SwiGLU only, else null) and w2 (e, f, d).
inline std::vector<double> NaiveExperts(const std::vector<float>& xs, const float* w1, const float* w3,
                                        const float* w2, const std::vector<int32_t>& counts, int d, int f,
                                        kernels::ExpertActivation act) {
  std::vector<double> ys;
  int row = 0;
  for (size_t x = 0; x < counts.size(); ++x) {
    for (int i = row; i < row + counts[x]; ++i) {
      std::vector<double> h(f);
      for (int j = 0; j < f; ++j) {
        double g = 0.0, u = 0.0;
        for (int c = 0; c < d; ++c) {
          g += double{xs[i * d + c]} * w1[(x * d + c) * f + j];
          if (w3 != nullptr) u += double{xs[i * d + c]} * w3[(x * d + c) * f + j];
        }
        h[j] = act == kernels::ExpertActivation::kSwiglu ? g / (1.0 + std::exp(-g)) * u : NaiveAct(act, g);
      }
      for (int c = 0; c < d; ++c) {
        double y = 0.0;
        for (int j = 0; j < f; ++j) y += h[j] * w2[(x * f + j) * d + c];
        ys.push_back(y);
      }
    }
    row += counts[x];
  }
  return ys;
}

}  // namespace moe::testing
