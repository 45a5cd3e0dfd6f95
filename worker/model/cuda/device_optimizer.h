// The CUDA model's optimizer on its GPU: AdamW's m and v (Muon's momentum in m's place) stored as
// train.optimizer_state says, byte for byte in the CPU's layout (worker/model/optimizer_state.h:
// the values in the layout's order, int8 blocks of at most 2048 from each tensor's start with one
// fp32 scale each), so that checkpoints go through the CPU's codec; and the step over every
// tensor (kernels/cuda/state_codec.h, kernels/cuda/muon.h).
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"
#include "kernels/adamw.h"
#include "kernels/cuda/muon.h"
#include "kernels/muon_plan.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/cuda/device_grads.h"
#include "worker/model/cuda/device_weights.h"
#include "worker/model/model_config.h"
#include "worker/model/optimizer_state.h"
#include "worker/model/param_layout.h"

namespace moe {

class DeviceOptimizer {
 public:
  // bf16_products: Muon's Newton-Schulz products read bf16 operands. Allocates from `arena`.
  DeviceOptimizer(const ModelConfig& cfg, const ParamLayout& layout, bool bf16_products, DeviceArena* arena,
                  cudaStream_t stream);
  ~DeviceOptimizer();
  DeviceOptimizer(const DeviceOptimizer&) = delete;
  DeviceOptimizer& operator=(const DeviceOptimizer&) = delete;

  // m and v all zero (as a fresh CPU OptimizerStateBuffer).
  void Zero();
  // One AdamW / Muon step over every tensor (the CPU model's OptimizerStep). Synchronous on the
  // model's stream with Muon or MOE_OPT_OVERLAP=0; otherwise it returns once queued: AdamW runs
  // on a stream of its own (the lowest priority) after the model's stream's work so far, group by
  // group in the order the next forward reads them (the embedding, block 0, ..., block L-1, the
  // final norm and head), so that the forward's first blocks run while the later blocks' tensors
  // are updated. The model calls the Wait* below before it reads a group and Join before anything
  // else reads a weight, a gradient or the state (each a no-op when no update is in flight).
  void Step(const DeviceWeights& weights, const DeviceGrads& grads, cuda::Blas* blas, int64_t step, double lr,
            double muon_lr, double weight_decay, float clip_scale);
  void WaitForEmbedding(cudaStream_t s) const { WaitForGroup(s, 0); }
  void WaitForBlock(cudaStream_t s, int l) const { WaitForGroup(s, l + 1); }
  void WaitForHead(cudaStream_t s) const { WaitForGroup(s, layers_ + 1); }
  // `s` waits for the whole update and what AfterUpdate queued; the update is no longer in flight.
  void Join(cudaStream_t s);
  // Queues `work` after the update in flight, on its stream (the gradients' zeroing of the next
  // step, which the update still reads), or on `s` when none is.
  void AfterUpdate(cudaStream_t s, const std::function<void(cudaStream_t)>& work);
  // m (is_m) or v as fp32 in the layout's order, decoded on the host by the CPU's codec; and
  // back, encoded by it (checkpoints hold fp32; a short input is padded with zeros).
  void CopyToHost(bool is_m, std::vector<float>* out);
  void CopyFromHost(bool is_m, const std::vector<float>& in);

 private:
  // One stored buffer: its layout and format (a CPU buffer never allocated: the template of the
  // host copies) and its device storage.
  struct Stored {
    Stored(const ParamLayout& layout, StateFormat format, bool signed_code)
        : shape(layout, format, signed_code), is_signed(signed_code) {}
    OptimizerStateBuffer shape;
    bool is_signed;
    void* values = nullptr;   // (total) 4, 2 or 1 bytes each
    float* scales = nullptr;  // int8: (blocks)
  };
  void Allocate(Stored* s, DeviceArena* arena);
  void WaitForGroup(cudaStream_t s, int group) const;
  // Tensor `tensor` (layout order) of s.
  cuda::StateRef Ref(const Stored& s, size_t tensor) const;
  int64_t ValueBytes() const;

  const ParamLayout& layout_;
  bool muon_on_;
  bool bf16_;
  kernels::AdamWConfig adam_;  // the job's betas (train.beta1 / beta2); eps as the CPU's
  StateFormat format_;
  cudaStream_t stream_;
  Stored m_, v_;
  float* codes_ = nullptr;   // int8: (2 * 256) the signed code, then the unsigned one
  cuda::MuonWorkspace muon_;  // train.optimizer muon: Newton-Schulz scratch
  // The Muon tensors (layout indices) and their Newton-Schulz runs (kernels/muon_plan.h: chunks of
  // one wide shape, indices into muon_tensors_).
  std::vector<size_t> muon_tensors_;
  std::vector<kernels::MuonChunk> muon_chunks_;
  std::vector<cuda::MuonTensor> muon_group_;  // one chunk's tensors, refilled every step
  // The overlapped update (Step): its stream, the tensors of each forward group (layout indices;
  // group 0 the embedding and any tensor of no block, l + 1 block l, L + 1 the final norm and
  // head), an event at the end of each group, and one after the step's last work.
  int layers_;
  bool overlap_;
  bool in_flight_ = false;
  cudaStream_t update_stream_ = nullptr;
  std::vector<std::vector<size_t>> groups_;
  std::vector<cudaEvent_t> group_done_;
  cudaEvent_t grads_ready_ = nullptr, all_done_ = nullptr;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
