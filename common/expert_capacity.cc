#include "common/expert_capacity.h"

#include <algorithm>
#include <cmath>

namespace moe {

int64_t ExpertCapacity(double capacity_factor, int64_t n, int k, int e) {
  if (capacity_factor <= 0.0) return 0;
  // No expert can take more than the n * k assignments there are; the bound also keeps a huge
  // factor (validate takes any finite c >= 0) from a double-to-int64 conversion out of range.
  const double all = static_cast<double>(n) * k;
  return static_cast<int64_t>(std::min(std::ceil(capacity_factor * all / e), all));
}

}  // namespace moe
