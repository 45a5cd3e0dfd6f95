#include "common/schedule.h"

#include <algorithm>
#include <cmath>

namespace moe {

double LearningRateAt(int step, int total_steps, double lr, double min_lr, int warmup_steps) {
  if (step < warmup_steps) return lr * (step + 1) / warmup_steps;
  double ratio = static_cast<double>(step - warmup_steps) / std::max(1, total_steps - warmup_steps);
  ratio = std::min(ratio, 1.0);
  return min_lr + 0.5 * (1.0 + std::cos(M_PI * ratio)) * (lr - min_lr);
}

}  // namespace moe
