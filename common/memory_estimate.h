// What one rank of a job holds in memory, per component, as its backend really allocates it:
// the CPU reference (host memory, fp32) or the CUDA backend (one GPU). The formulas follow the
// buffers of worker/model/cpu (model.cc BlockActs, moe_layer, token_dispatcher) and
// worker/model/cuda (cuda_model.cc's activation table, moe_layer.cc, device_arena); change
// them together. common/memory_fit.h compares the total with a GPU's memory.
#pragma once

#include <cstdint>

#include "moe/v1/job.pb.h"

namespace moe {

// Parameters of one rank, split by what their optimizer keeps (MODEL.md "Options: Optimizer").
struct RankParams {
  double total = 0;    // every parameter this rank stores (its experts, the replicated rest)
  double matrices = 0; // 2-D matrices inside the blocks (wqkv, wo, wg, experts): Muon's share
  double tensors = 0;  // tensors of the layout (int8 state: one partial block each, at most)
};

struct MemoryEstimate {
  bool cuda = false;        // a GPU's memory (else the host's)
  int64_t weights = 0;      // fp32 master weights, plus the bf16 copy the bf16 products read
  int64_t grads = 0;        // gradients (fp32, or mostly bf16 with bf16 master weights on one GPU)
  int64_t optimizer = 0;    // AdamW's m and v (Muon: one momentum), as train.optimizer_state says
  int64_t activations = 0;  // what the forward keeps for the backward, one micro-batch
  int64_t workspace = 0;    // alive only inside a pass: the backward's gradients, scratch
  int64_t runtime = 0;      // cuda: the CUDA context, cuBLAS and NCCL (a fixed allowance)
  int64_t total = 0;        // the sum, saturating at INT64_MAX
};

// The CUDA context, cuBLAS (its 64 MiB workspace, kernels) and the caching of a process on
// one GPU; NCCL's buffers add kNcclBytes when the job has several ranks.
inline constexpr int64_t kCudaRuntimeBytes = int64_t{768} << 20;
inline constexpr int64_t kNcclBytes = int64_t{512} << 20;

// The CUDA backend's head with bf16 products (worker/model/cuda/cuda_model_step.cc) runs in chunks of
// rows: each chunk's fp32 logits (rows, V) live only until its loss and its bf16 gradient are
// written, so the forward keeps the bf16 dlogits (n, V) and one chunk of fp32 logits, not all n.
// The rows of a chunk: as many as kCudaHeadChunkBytes of fp32 logits hold, at least 1, at most n.
inline constexpr int64_t kCudaHeadChunkBytes = int64_t{128} << 20;
inline int64_t CudaHeadChunkRows(int64_t n, int64_t vocab) {
  const int64_t rows = kCudaHeadChunkBytes / (4 * (vocab > 0 ? vocab : 1));
  return rows < 1 ? 1 : rows > n ? n : rows;
}

// The CUDA MoE layer's buffers of expert rows (worker/model/cuda/moe_layer.cc: ReserveSaved,
// ReserveExpertRows) are sized by the experts' layout, whose rows change with the routing: when a
// step needs more rows than they hold, they grow to that many plus a 32nd, so that routing
// that wobbles does not reallocate every step (each growth waits for the stream).
inline constexpr int64_t kCudaRowsSlack = 32;
inline int64_t CudaGrownRows(int64_t rows, int64_t capacity) {
  return rows <= capacity ? capacity : rows + rows / kCudaRowsSlack;
}

// Needs vocab_size > 0. Every count is computed in double and saturates at INT64_MAX.
MemoryEstimate EstimateMemory(const moe::v1::JobSpec& spec, const RankParams& params);

}  // namespace moe
