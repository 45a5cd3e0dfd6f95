// The experts' gradient norm, layer by layer during the backward (one GPU or several): once the
// step's last Backward is done with layer l, layer l's expert gradients are final (experts are
// not summed over ranks), so their squared norm runs then, on a stream of its own, beside the
// backward of the layers below (bound by the products, while the norm is bound by the memory).
// The step's norm then waits only for the dense gradients' pass. Each layer's sum lands in its
// own slot; the host adds the slots in layer order: the same bits every run.
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <vector>

#include "kernels/cuda/common.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/cuda/device_grads.h"
#include "worker/model/param_layout.h"

namespace moe {

class ExpertGradNorms {
 public:
  // Off (every call a no-op, Collect false) when the layout has no expert gradients, when they
  // do not lie layer after layer, when they change after the backward (bf16 values rounded in
  // ReduceGrads), or with MOE_GRAD_NORMS_EARLY=0 in the environment.
  ExpertGradNorms(const ParamLayout& layout, int layers, const DeviceGrads& grads, bool rounded_later,
                  DeviceArena* arena);
  ~ExpertGradNorms();
  ExpertGradNorms(const ExpertGradNorms&) = delete;
  ExpertGradNorms& operator=(const ExpertGradNorms&) = delete;

  bool enabled() const { return !begin_.empty(); }
  // The step's last Backward has written layer l's expert gradients on `main` (layers come
  // from the last down to 0): queues their squared norm after them.
  void AfterLayer(int l, cudaStream_t main);
  // Whether every layer's norm was queued (in order) since the last Collect or Forget; if so,
  // `main` waits for them and *slots (layers device doubles) holds each layer's sum.
  bool Collect(cudaStream_t main, const double** slots);
  // The gradients changed after the backward (an upload, a new step): the sums are stale.
  void Forget() { queued_ = 0; }

 private:
  const DeviceGrads& grads_;
  int layers_ = 0;
  std::vector<int64_t> begin_;  // (layers + 1) layer l's expert range [begin_[l], begin_[l + 1])
  cudaStream_t stream_ = nullptr;
  cudaEvent_t layer_done_ = nullptr, norms_done_ = nullptr;
  double* slots_ = nullptr;     // (layers) device
  double* partials_ = nullptr;  // (cuda::kPartialBlocks) device
  int queued_ = 0;              // layers queued, from the last down; -1: out of order
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
