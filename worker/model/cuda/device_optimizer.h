// The CUDA model's optimizer on its GPU: AdamW's m and v (Muon's momentum in m's place) stored as
// train.optimizer_state says, byte for byte in the CPU's layout (worker/model/optimizer_state.h:
// the values in the layout's order, int8 blocks of at most 2048 from each tensor's start with one
// fp32 scale each), so that checkpoints go through the CPU's codec; and the step over every
// tensor (kernels/cuda/state_codec.h, kernels/cuda/muon.h).
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
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

  // m and v all zero (as a fresh CPU OptimizerStateBuffer).
  void Zero();
  // One AdamW / Muon step over every tensor (the CPU model's OptimizerStep), synchronous.
  void Step(const DeviceWeights& weights, const DeviceGrads& grads, cuda::Blas* blas, int64_t step, double lr,
            double muon_lr, double weight_decay, float clip_scale);
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
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
