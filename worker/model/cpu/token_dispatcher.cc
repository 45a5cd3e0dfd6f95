#include "worker/model/cpu/token_dispatcher.h"

#include <cstring>

namespace moe {

TokenDispatcher::TokenDispatcher(Communicator* comm, const MoeShape& shape) : comm_(comm), shape_(shape) {}

void TokenDispatcher::Preprocess(const kernels::RoutingPlan& routing) {
  // Rank p needs, for each of its local experts, how many rows come from us.
  const int W = shape_.world, L = shape_.experts_local;
  std::vector<int64_t> send_counts(routing.counts.begin(), routing.counts.end());
  std::vector<int64_t> recv_counts(static_cast<size_t>(W) * L, 0);
  comm_->AllToAllCounts(send_counts.data(), recv_counts.data(), L);
  plan_ = PlanExchange(shape_, send_counts.data(), recv_counts.data());
  send_elems_.resize(W);
  recv_elems_.resize(W);
  for (int p = 0; p < W; ++p) {
    send_elems_[p] = plan_.send_rows[p] * shape_.d;
    recv_elems_[p] = plan_.recv_rows[p] * shape_.d;
  }
}

void TokenDispatcher::Dispatch(const float* xs, const kernels::RoutingPlan& plan, std::vector<float>* expert_in,
                               std::vector<int32_t>* local_counts) {
  Preprocess(plan);
  *local_counts = plan_.local_counts;
  expert_in->resize(static_cast<size_t>(plan_.rows_in) * shape_.d);
  Forward(xs, expert_in->data());
}

void TokenDispatcher::Combine(const float* expert_out, float* ys) { Backward(expert_out, ys); }

void TokenDispatcher::CombineBackward(const float* dys, float* d_expert_out) { Forward(dys, d_expert_out); }

void TokenDispatcher::DispatchBackward(const float* d_expert_in, float* dxs) { Backward(d_expert_in, dxs); }

void TokenDispatcher::Forward(const float* plan_rows, float* expert_rows) {
  wire_.resize(static_cast<size_t>(plan_.rows_in) * shape_.d);
  comm_->AllToAllV(plan_rows, send_elems_.data(), wire_.data(), recv_elems_.data());
  Reorder(wire_.data(), expert_rows, /*wire_to_expert=*/true);
}

void TokenDispatcher::Backward(const float* expert_rows, float* plan_rows) {
  wire_.resize(static_cast<size_t>(plan_.rows_in) * shape_.d);
  Reorder(expert_rows, wire_.data(), /*wire_to_expert=*/false);
  // The reverse route: what we received from p goes back to p.
  comm_->AllToAllV(wire_.data(), recv_elems_.data(), plan_rows, send_elems_.data());
}

void TokenDispatcher::Reorder(const float* src, float* dst, bool wire_to_expert) const {
  const int64_t d = shape_.d;
  for (const ExchangePlan::Block& b : plan_.blocks) {
    const size_t bytes = sizeof(float) * b.rows * d;
    if (wire_to_expert) {
      std::memcpy(dst + b.expert_row * d, src + b.wire_row * d, bytes);
    } else {
      std::memcpy(dst + b.wire_row * d, src + b.expert_row * d, bytes);
    }
  }
}

}  // namespace moe
