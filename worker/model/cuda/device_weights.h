// The CUDA model's weights on its GPU, as train.precision and train.master_weights say:
//   fp32 master weights (default): fp32 and, for bf16 products, their bf16 copy;
//   master_weights bf16, fp32 products: fp32 storage holding bf16 values (as the CPU keeps them);
//   master_weights bf16, bf16 products: the bf16 weights alone (2 bytes a parameter).
// The model's code names a tensor by its place in one fp32 buffer (ParamLayout::Bind). With
// the bf16 weights alone that buffer is a reserved, unmapped address range (a read of it faults
// rather than returning garbage): the products read the bf16 weights through
// CudaContext::Bf16Of, the embedding has a bf16 gather, and the few tensors read in fp32 (norm
// gains and routers: everything that is not a product's matrix) keep an fp32 copy, updated
// with the bf16 weights by the same stochastic rounding.
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cuda/common.h"
#include "kernels/cuda/state_codec.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/param_layout.h"

namespace moe {

class DeviceWeights {
 public:
  DeviceWeights(const ParamLayout& layout, bool bf16_products, bool bf16_master, DeviceArena* arena);
  ~DeviceWeights();
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  // The fp32 buffer the layout binds to (CudaContext::params): real fp32 weights, or the
  // reserved range when the bf16 weights are alone.
  float* handles() const { return f32_ != nullptr ? f32_ : reserved_->base(); }
  // (total) the bf16 weights, or null with fp32 products.
  cuda::bf16* bf16() const { return b16_; }
  // True when the bf16 weights are the only full copy (no fp32 weights but the small copies).
  bool bf16_only() const { return f32_ == nullptr; }
  // Every tensor of the layout at handles(), except those read in fp32 that point at their fp32
  // copy when the bf16 weights are alone.
  ModelTensors Bind() const;
  // Where AdamW or Muon reads and stores tensor `info` at optimizer step `step`.
  cuda::WeightsRef Ref(const ParamInfo& info, int64_t step) const;

  // All weights from / to the host in the layout's order (fp32). From the host into bf16
  // weights rounds to nearest.
  void Upload(const std::vector<float>& host, cudaStream_t stream);
  void Download(std::vector<float>* host, cudaStream_t stream) const;

 private:
  const ParamLayout& layout_;
  bool bf16_master_;
  float* f32_ = nullptr;       // (total) fp32 weights, or null
  cuda::bf16* b16_ = nullptr;  // (total) bf16 weights, or null
  std::unique_ptr<ReservedRange> reserved_;  // bf16 alone: the handles, total floats never mapped
  // bf16 alone: the fp32 copies of the tensors read in fp32.
  Fp32Tensors copies_;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
