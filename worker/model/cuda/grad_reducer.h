// The replicated ("dense") gradients' sum over GPUs, overlapped with the backward: block l's
// replicated parameters are contiguous in the layout, so as soon as the backward has finished
// block l (on the step's last micro-batch) its bucket is all-reduced on a stream of its own
// while the blocks below run their backward; the embedding and the head follow at the end.
// Finish is the step's reduce (TrainModel::ReduceGrads on GPUs).
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <utility>
#include <vector>

#include "worker/model/param_layout.h"
#include "worker/parallel/comm_nccl.h"

namespace moe {

class DenseGradReducer {
 public:
  // grads: the model's flat gradient buffer, produced on `compute`.
  DenseGradReducer(DeviceCommunicator* comm, const ParamLayout& layout, int layers, float* grads,
                   cudaStream_t compute);
  ~DenseGradReducer();

  // The backward of block l is queued: reduce its bucket once `compute` gets there.
  void BlockDone(int l);
  // The backward is queued to its end: reduce the rest (embedding, final norm, lm_head).
  void BackwardDone();
  // `compute` waits for the queued sums (or sums the whole dense range now when the backward
  // queued none), then the host waits for it, under the communicator's deadline.
  void Finish();

 private:
  void Reduce(int64_t begin, int64_t end);

  DeviceCommunicator* comm_;
  float* grads_;
  int64_t dense_size_;
  cudaStream_t compute_, reduce_ = nullptr;
  cudaEvent_t bucket_ready_ = nullptr, done_ = nullptr;
  bool queued_ = false;
  std::vector<std::pair<int64_t, int64_t>> buckets_;  // per block, its dense [begin, end)
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
