// Model arithmetic from a spec: parameter counts, FLOPs per token, memory per rank.
#pragma once

#include <cstdint>
#include <string>

#include "common/memory_estimate.h"
#include "moe/v1/job.pb.h"

namespace moe {

struct ModelStats {
  int64_t total_params = 0;
  int64_t active_params = 0;     // as reference_moe.py's active_params(): k of E experts
  double flops_per_token = 0;    // 6 * active + 6 * L * D * T (MODEL.md)
  // Estimated bytes per rank (experts split E / ranks, the rest replicated), as the job's
  // backend stores them (common/memory_estimate.h).
  int64_t weight_bytes = 0;
  int64_t grad_bytes = 0;
  int64_t optimizer_bytes = 0;
  int64_t activation_bytes = 0;
  int64_t workspace_bytes = 0;
  int64_t runtime_bytes = 0;  // cuda: the CUDA context, cuBLAS and NCCL
  int64_t params_per_rank = 0;
  // The sum of the above, saturating at INT64_MAX.
  int64_t total_bytes = 0;
};

// vocab_size must be known (spec.model().vocab_size() > 0). Every count is computed in double
// and saturates at INT64_MAX, so no spec, however absurd, overflows the arithmetic.
ModelStats ComputeModelStats(const moe::v1::JobSpec& spec);
// This rank's parameters for the memory estimate: all, the block matrices, the tensors.
RankParams CountRankParams(const moe::v1::JobSpec& spec);

// The most one rank may need by ComputeModelStats' estimate before a spec is refused as too
// large for any machine: a CPU rank shares one host's memory (2 TiB, a large two-socket
// server), a cuda rank holds its model on one GPU (512 GiB, above the largest GPU made, 288 GB).
inline constexpr int64_t kMaxCpuRankBytes = int64_t{2} << 40;
inline constexpr int64_t kMaxCudaRankBytes = int64_t{512} << 30;
int64_t MaxRankBytes(const moe::v1::JobSpec& spec);

// 1536 -> "1.5 KiB", 13194139533312 -> "12 TiB" (three significant figures, binary units).
std::string FormatBytes(double bytes);

}  // namespace moe
