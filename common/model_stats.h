// Model arithmetic from a spec: parameter counts, FLOPs per token, memory per rank.
#pragma once

#include <cstdint>

#include "moe/v1/job.pb.h"

namespace moe {

struct ModelStats {
  int64_t total_params = 0;
  int64_t active_params = 0;     // as reference_moe.py's active_params(): k of E experts
  double flops_per_token = 0;    // 6 * active + 6 * L * D * T (MODEL.md)
  // Estimated bytes per rank (experts split E / ranks, the rest replicated).
  int64_t weight_bytes = 0;
  int64_t grad_bytes = 0;
  int64_t optimizer_bytes = 0;
  int64_t activation_bytes = 0;
  int64_t params_per_rank = 0;
};

// vocab_size must be known (spec.model().vocab_size() > 0).
ModelStats ComputeModelStats(const moe::v1::JobSpec& spec);

}  // namespace moe
