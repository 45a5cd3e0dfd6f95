#include "worker/model/cuda/expert_grad_norms.h"

#ifdef MOE_WITH_CUDA

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/reduce.h"

namespace moe {
namespace {

// On unless MOE_GRAD_NORMS_EARLY=0 (an A/B switch: the one pass at the step's end instead).
bool EarlyWanted() {
  const char* v = std::getenv("MOE_GRAD_NORMS_EARLY");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

}  // namespace

ExpertGradNorms::ExpertGradNorms(const ParamLayout& layout, int layers, const DeviceGrads& grads,
                                 bool rounded_later, DeviceArena* arena)
    : grads_(grads), layers_(layers) {
  const int64_t dense = layout.dense_size(), total = layout.total();
  if (rounded_later || layers <= 0 || total <= dense || !EarlyWanted()) return;
  // Layer l's range runs from its first expert tensor to layer l + 1's (the padding between
  // tensors is zero, as the end-of-step pass reads it too): every expert tensor must belong to
  // a block and lie inside its block's range.
  std::vector<int64_t> first(layers, total);
  for (const ParamInfo& p : layout.params()) {
    if (!p.expert) continue;
    if (p.block < 0 || p.block >= layers) return;
    first[p.block] = std::min(first[p.block], p.offset);
  }
  std::vector<int64_t> begin(layers + 1, total);
  begin[0] = dense;
  for (int l = layers - 1; l >= 1; --l) begin[l] = std::min(first[l], begin[l + 1]);
  for (int l = 1; l < layers; ++l) {
    if (begin[l] < begin[l - 1]) return;
  }
  for (const ParamInfo& p : layout.params()) {
    if (p.expert && (p.offset < begin[p.block] || p.offset + p.size > begin[p.block + 1])) return;
  }
  begin_ = std::move(begin);
  stream_ = cuda::NewStream(cuda::StreamPriority::kBackground);
  MOE_CUDA_CHECK(cudaEventCreateWithFlags(&layer_done_, cudaEventDisableTiming));
  MOE_CUDA_CHECK(cudaEventCreateWithFlags(&norms_done_, cudaEventDisableTiming));
  slots_ = arena->Alloc<double>(layers);
  partials_ = arena->Alloc<double>(cuda::kPartialBlocks);
}

ExpertGradNorms::~ExpertGradNorms() {
  if (stream_ == nullptr) return;
  cudaStreamSynchronize(stream_);
  cudaEventDestroy(layer_done_);
  cudaEventDestroy(norms_done_);
  cudaStreamDestroy(stream_);
}

void ExpertGradNorms::AfterLayer(int l, cudaStream_t main) {
  if (!enabled()) return;
  if (l == layers_ - 1) {
    queued_ = 0;
  } else if (queued_ < 0 || l != layers_ - 1 - queued_) {
    queued_ = -1;  // not the next layer down: Collect says no, the step's pass reads them all
    return;
  }
  MOE_CUDA_CHECK(cudaEventRecord(layer_done_, main));
  MOE_CUDA_CHECK(cudaStreamWaitEvent(stream_, layer_done_, 0));
  if (queued_ == 0) MOE_CUDA_CHECK(cudaMemsetAsync(slots_, 0, sizeof(double) * layers_, stream_));
  grads_.ExpertSquaredNorm(slots_ + l, begin_[l], begin_[l + 1], partials_, stream_);
  ++queued_;
}

bool ExpertGradNorms::Collect(cudaStream_t main, const double** slots) {
  const bool all = enabled() && queued_ == layers_;
  queued_ = 0;
  if (!all) return false;
  MOE_CUDA_CHECK(cudaEventRecord(norms_done_, stream_));
  MOE_CUDA_CHECK(cudaStreamWaitEvent(main, norms_done_, 0));
  *slots = slots_;
  return true;
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
