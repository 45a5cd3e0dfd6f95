// The CUDA model's gradients on its GPU, as train.master_weights says (MODEL.md "Memory"):
//   fp32 master weights (default): one fp32 buffer of the layout's total;
//   master_weights bf16, bf16 products, one GPU: the blocks' matrices' gradients (Bf16Gradient:
//     nearly all the parameters) stored bf16, 2 bytes a parameter; the products write them
//     through CudaContext::Bf16GradOf (fp32 accumulation inside each product, the sum with the
//     stored gradient rounded as it is stored). The layout binds to a reserved, unmapped range
//     (as DeviceWeights' does) and the other gradients are fp32 tensors of their own;
//   master_weights bf16 otherwise (fp32 products, or several GPUs, whose replicated gradients
//     are summed in fp32): fp32 storage, the same gradients rounded to bf16 values once the
//     step's are summed (RoundToBf16Values in ReduceGrads), as the CPU model does.
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cuda/common.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/param_layout.h"

namespace moe {

class DeviceGrads {
 public:
  // bf16_storage: the bf16 layout above; bf16_values: fp32 storage rounded to bf16 values.
  DeviceGrads(const ParamLayout& layout, bool bf16_storage, bool bf16_values, DeviceArena* arena);
  DeviceGrads(const DeviceGrads&) = delete;
  DeviceGrads& operator=(const DeviceGrads&) = delete;

  // The fp32 buffer the layout binds to: real fp32 gradients, or the reserved range.
  float* handles() const { return f32_ != nullptr ? f32_ : reserved_->base(); }
  // (total) every gradient in fp32 (the reducer's buffer), or null with bf16 storage.
  float* fp32() const { return f32_; }
  // (total, indexed by layout offset) the bf16 gradients, or null.
  cuda::bf16* bf16() const { return b16_; }
  // Every tensor of the layout: at handles(), the fp32 ones of the bf16 layout at their storage.
  ModelTensors Bind() const;
  // Where the optimizer reads tensor `info`'s gradient.
  cuda::GradRef Ref(const ParamInfo& info) const;

  // Clears every gradient, or with experts false all but the expert shard [dense_size, total),
  // which ZeroExperts clears (the bf16 experts' first backward of a step writes it instead).
  void Zero(cudaStream_t stream, bool experts = true);
  void ZeroExperts(cudaStream_t stream);
  // fp32 storage with bf16 values: rounds the Bf16Gradient tensors (once a step, summed).
  void RoundToBf16Values(cudaStream_t stream);
  // norms[0] += the replicated gradients' squared norm, norms[1] += the experts' (device doubles),
  // the same bits every run (partials: cuda::SquaredNorm's scratch).
  void SquaredNorms(double* norms, double* partials, cudaStream_t stream) const;
  // All gradients to / from the host in the layout's order (fp32); a short input sets a prefix.
  void Download(std::vector<float>* host, cudaStream_t stream) const;
  void Upload(const std::vector<float>& host, cudaStream_t stream);

 private:
  const ParamLayout& layout_;
  bool bf16_values_;
  float* f32_ = nullptr;       // (total) fp32 gradients, or null
  cuda::bf16* b16_ = nullptr;  // (total) bf16 storage: the Bf16Gradient tensors (zeros elsewhere)
  std::unique_ptr<ReservedRange> reserved_;
  // bf16 storage: the fp32 gradients (those not Bf16Gradient).
  Fp32Tensors copies_;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
