#include "worker/model/cuda/grad_reducer.h"

#ifdef MOE_WITH_CUDA

#include "kernels/cuda/common.h"

namespace moe {

DenseGradReducer::DenseGradReducer(DeviceCommunicator* comm, const ParamLayout& layout, int layers, float* grads,
                                   cudaStream_t compute)
    : comm_(comm), grads_(grads), dense_size_(layout.dense_size()), compute_(compute) {
  reduce_ = cuda::NewStream(cuda::StreamPriority::kComm);
  MOE_CUDA_CHECK(cudaEventCreateWithFlags(&bucket_ready_, cudaEventDisableTiming));
  MOE_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  // Block l's replicated parameters ("blocks.l.*") are contiguous in the layout: one bucket.
  buckets_.assign(layers, {0, 0});
  for (const ParamInfo& info : layout.params()) {
    if (info.expert || info.block < 0) continue;
    auto& [begin, end] = buckets_[info.block];
    if (end == 0) begin = info.offset;
    end = info.offset + info.size;
  }
}

DenseGradReducer::~DenseGradReducer() {
  cudaStreamSynchronize(reduce_);
  cudaStreamDestroy(reduce_);
  cudaEventDestroy(bucket_ready_);
  cudaEventDestroy(done_);
}

void DenseGradReducer::Reduce(int64_t begin, int64_t end) {
  if (end <= begin) return;
  MOE_CUDA_CHECK(cudaEventRecord(bucket_ready_, compute_));
  MOE_CUDA_CHECK(cudaStreamWaitEvent(reduce_, bucket_ready_, 0));
  comm_->AllReduceSum(grads_ + begin, end - begin, DeviceDType::kF32, reduce_);
}

void DenseGradReducer::BlockDone(int l) { Reduce(buckets_[l].first, buckets_[l].second); }

void DenseGradReducer::BackwardDone() {
  if (buckets_.empty()) return;
  // The embedding before the first block, the final norm (and lm_head) after the last.
  Reduce(0, buckets_.front().first);
  Reduce(buckets_.back().second, dense_size_);
  MOE_CUDA_CHECK(cudaEventRecord(done_, reduce_));
  queued_ = true;
}

void DenseGradReducer::Finish() {
  if (queued_) {
    MOE_CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));
    queued_ = false;
  } else {
    comm_->AllReduceSum(grads_, dense_size_, DeviceDType::kF32, compute_);
  }
  comm_->Wait(compute_, "dense gradient all-reduce");
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
