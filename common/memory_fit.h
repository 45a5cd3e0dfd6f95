// Whether a cuda job fits the memory of its GPUs, by the estimate of common/memory_estimate.h;
// when it does not, by how much and what would make it fit (the levers, each with its saving).
// moectl validate --gpu-memory prints it, and moed refuses at submit a job that does not fit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model_stats.h"
#include "moe/v1/job.pb.h"

namespace moe {

// "80GiB", "141GB", "24 GiB", "1.5TiB", "512MiB" -> bytes: binary units (KiB, MiB, GiB, TiB)
// are powers of 1024, decimal ones (kB, MB, GB, TB) of 1000, "B" or no unit bytes. The error
// says what is wrong and shows the accepted forms.
absl::StatusOr<int64_t> ParseMemorySize(absl::string_view text);

// One change to the job, and what it saves per rank by the estimate.
struct MemoryLever {
  std::string change;     // e.g. "train.optimizer_state: int8"
  int64_t saving = 0;     // bytes per GPU
  bool enough = false;    // makes the job fit on its own
  std::string note;       // e.g. "not yet run by the cuda backend"; "" when it runs
};

// How far under a bf16 MoE job's measured peak the estimate has run: the experts' rows grow to
// the busiest step's padded layout, and the first steps route unevenly (measured on one H200,
// 2026-12-04: 4-7% under on the sweep's seven shapes, 3-6% under in cuda_memory_estimate_test; fp32
// and dense jobs matched). A job that fits with less spare than this is called narrow.
inline constexpr double kCudaEstimateShortfall = 0.08;

struct MemoryFit {
  int64_t need = 0;  // bytes per GPU, the estimate's total
  int64_t have = 0;  // bytes of one GPU
  bool fits = true;
  ModelStats stats;  // the estimate, per component
  std::vector<MemoryLever> levers;  // only when it does not fit; largest saving first
};

// gpu_bytes: the memory of the smallest GPU the job runs on. A spec whose vocab_size is not yet
// known (char tokenizer) is estimated with 256.
MemoryFit CheckGpuFit(moe::v1::JobSpec spec, int64_t gpu_bytes);

// "fits: needs about 12.3 GiB of the GPU's 80 GiB" (with a warning when the spare is under
// kCudaEstimateShortfall of the need) or "does not fit: ... over; what would make it fit: ..."
// (one paragraph, for validate and for moed's FAILED_PRECONDITION).
std::string DescribeFit(const MemoryFit& fit);

// One lever: "train.batch_size: 8 saves about 3 GiB (enough alone) [note]".
std::string DescribeLever(const MemoryLever& lever);

// The estimate per component: "weights 1 GiB, grads 1 GiB, optimizer 2 GiB, activations ...".
std::string DescribeComponents(const ModelStats& stats);

}  // namespace moe
