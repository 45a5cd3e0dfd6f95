#include "worker/model/cuda/token_dispatcher.h"

#ifdef MOE_WITH_CUDA

namespace moe {

ExchangePlan ExpertExchange::Plan(const int32_t* counts) const {
  const int W = shape_.world, L = shape_.experts_local;
  std::vector<int64_t> send_counts(counts, counts + shape_.experts), recv_counts(static_cast<size_t>(W) * L);
  host_->AllToAllCounts(send_counts.data(), recv_counts.data(), L);
  return PlanExchange(shape_, send_counts.data(), recv_counts.data());
}

void ExpertExchange::Send(const ExchangePlan& plan, const cuda::bf16* plan_rows, cuda::bf16* wire_rows,
                          cudaStream_t stream) {
  Rows(plan.send_rows, plan_rows, plan.recv_rows, wire_rows, stream);
}

void ExpertExchange::Return(const ExchangePlan& plan, const cuda::bf16* wire_rows, cuda::bf16* plan_rows,
                            cudaStream_t stream) {
  // The reverse route: what came from peer p goes back to p.
  Rows(plan.recv_rows, wire_rows, plan.send_rows, plan_rows, stream);
}

void ExpertExchange::Rows(const std::vector<int64_t>& send_rows, const cuda::bf16* send,
                          const std::vector<int64_t>& recv_rows, cuda::bf16* recv, cudaStream_t stream) {
  std::vector<int64_t> send_elems(send_rows), recv_elems(recv_rows);
  for (int64_t& v : send_elems) v *= shape_.d;
  for (int64_t& v : recv_elems) v *= shape_.d;
  device_->AllToAllV(send, send_elems.data(), recv, recv_elems.data(), DeviceDType::kBF16, stream);
}

void ExpertExchange::SumStats(double* stats, int64_t n, cudaStream_t stream) {
  device_->AllReduceSum(stats, n, DeviceDType::kF64, stream);
}

void CudaTokenDispatcher::Preprocess(const int32_t* counts) {
  const int L = shape_.experts_local;
  if (exchange_ == nullptr) {
    // One GPU (or dense): plan order is expert order; nothing moves.
    plan_.local_counts.assign(counts, counts + L);
    plan_.rows_in = 0;
    for (int j = 0; j < L; ++j) plan_.rows_in += counts[j];
    plan_.rows_out = plan_.rows_in;
    layout_ = cuda::PlanExpertLayout(plan_.local_counts.data(), L);
    return;
  }
  plan_ = exchange_->Plan(counts);
  layout_ = cuda::PlanExpertLayout(plan_.local_counts.data(), L);
  // Block (p, j): rows from peer p for local expert j, at its wire row, its compact expert row,
  // and its row in the layout (the layout starts expert j at layout_.start[j]).
  to_layout_.count = to_wire_.count = 0;
  if (L == 1) return;
  std::vector<int64_t> expert_start(L + 1, 0);
  for (int j = 0; j < L; ++j) expert_start[j + 1] = expert_start[j] + plan_.local_counts[j];
  for (const ExchangePlan::Block& b : plan_.blocks) {
    const int i = to_layout_.count++;
    to_wire_.count++;
    to_layout_.src_row[i] = to_wire_.dst_row[i] = b.wire_row;
    to_layout_.dst_row[i] = layout_.start[b.expert] + (b.expert_row - expert_start[b.expert]);
    to_wire_.src_row[i] = b.expert_row;
    to_layout_.rows[i] = to_wire_.rows[i] = b.rows;
  }
}

void CudaTokenDispatcher::Dispatch(const float* plan_rows, cuda::bf16* layout_rows, const DispatchScratch& scratch,
                                   cudaStream_t stream) {
  const int64_t D = shape_.d;
  if (exchange_ == nullptr) {
    cuda::ToExpertLayout(layout_rows, plan_rows, plan_.local_counts.data(), shape_.experts_local, shape_.d, stream);
    return;
  }
  cuda::CastToBf16(scratch.plan, plan_rows, plan_.rows_out * D, stream);
  // With one expert per GPU, wire order is expert order: receive in place.
  cuda::bf16* wire = to_layout_.count > 0 ? scratch.wire : layout_rows;
  exchange_->Send(plan_, scratch.plan, wire, stream);
  if (layout_.chunk > 0) {
    // The layout's rows past each expert's count are zero.
    const int64_t from = to_layout_.count > 0 ? 0 : plan_.rows_in, to = layout_.rows;
    MOE_CUDA_CHECK(cudaMemsetAsync(layout_rows + from * D, 0, sizeof(cuda::bf16) * (to - from) * D, stream));
  }
  cuda::CopyRowBlocks(layout_rows, wire, to_layout_, D * sizeof(cuda::bf16), stream);
}

void CudaTokenDispatcher::Combine(const cuda::bf16* expert_rows, float* plan_rows, const DispatchScratch& scratch,
                                  cudaStream_t stream) {
  Combine(expert_rows, scratch.plan, scratch, stream);
  cuda::CastToFloat(plan_rows, scratch.plan, plan_.rows_out * shape_.d, stream);
}

void CudaTokenDispatcher::Combine(const cuda::bf16* expert_rows, cuda::bf16* plan_rows,
                                  const DispatchScratch& scratch, cudaStream_t stream) {
  const int64_t D = shape_.d;
  const cuda::bf16* wire = expert_rows;
  if (to_wire_.count > 0) {
    cuda::CopyRowBlocks(scratch.wire, expert_rows, to_wire_, D * sizeof(cuda::bf16), stream);
    wire = scratch.wire;
  }
  exchange_->Return(plan_, wire, plan_rows, stream);
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
