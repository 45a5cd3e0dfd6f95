#include "worker/model/cpu/token_dispatcher.h"

#include <cstring>

namespace moe {

TokenDispatcher::TokenDispatcher(Communicator* comm, int experts, int d)
    : comm_(comm),
      world_(comm->world_size()),
      experts_(experts),
      experts_local_(experts / comm->world_size()),
      d_(d) {}

void TokenDispatcher::Dispatch(const float* xs, const kernels::RoutingPlan& plan,
                               std::vector<float>* expert_in, std::vector<int32_t>* local_counts) {
  // Counts first: rank p needs, for each of its local experts, how many rows come from us.
  std::vector<int64_t> send_counts(experts_);
  for (int e = 0; e < experts_; ++e) send_counts[e] = plan.counts[e];
  recv_counts_.assign(static_cast<size_t>(world_) * experts_local_, 0);
  comm_->AllToAllCounts(send_counts.data(), recv_counts_.data(), experts_local_);

  send_elems_.assign(world_, 0);
  recv_elems_.assign(world_, 0);
  local_counts->assign(experts_local_, 0);
  recv_rows_ = 0;
  for (int p = 0; p < world_; ++p) {
    for (int j = 0; j < experts_local_; ++j) {
      send_elems_[p] += send_counts[p * experts_local_ + j] * d_;
      const int64_t rows = recv_counts_[p * experts_local_ + j];
      recv_elems_[p] += rows * d_;
      (*local_counts)[j] += static_cast<int32_t>(rows);
      recv_rows_ += rows;
    }
  }
  expert_in->resize(static_cast<size_t>(recv_rows_) * d_);
  Forward(xs, expert_in->data());
}

void TokenDispatcher::Combine(const float* expert_out, float* ys) { Backward(expert_out, ys); }

void TokenDispatcher::CombineBackward(const float* dys, float* d_expert_out) {
  Forward(dys, d_expert_out);
}

void TokenDispatcher::DispatchBackward(const float* d_expert_in, float* dxs) {
  Backward(d_expert_in, dxs);
}

void TokenDispatcher::Forward(const float* plan_rows, float* expert_rows) {
  wire_.resize(static_cast<size_t>(recv_rows_) * d_);
  comm_->AllToAllV(plan_rows, send_elems_.data(), wire_.data(), recv_elems_.data());
  Reorder(wire_.data(), expert_rows, /*wire_to_expert=*/true);
}

void TokenDispatcher::Backward(const float* expert_rows, float* plan_rows) {
  wire_.resize(static_cast<size_t>(recv_rows_) * d_);
  Reorder(expert_rows, wire_.data(), /*wire_to_expert=*/false);
  // The reverse route: what we received from p goes back to p.
  comm_->AllToAllV(wire_.data(), recv_elems_.data(), plan_rows, send_elems_.data());
}

void TokenDispatcher::Reorder(const float* src, float* dst, bool wire_to_expert) const {
  // Wire offset of block (p, j); expert order walks the blocks in (j, p) order.
  std::vector<int64_t> wire_off(recv_counts_.size() + 1, 0);
  for (size_t i = 0; i < recv_counts_.size(); ++i) wire_off[i + 1] = wire_off[i] + recv_counts_[i];
  int64_t expert_row = 0;
  for (int j = 0; j < experts_local_; ++j) {
    for (int p = 0; p < world_; ++p) {
      const size_t b = static_cast<size_t>(p) * experts_local_ + j;
      const size_t bytes = sizeof(float) * recv_counts_[b] * d_;
      if (wire_to_expert) {
        std::memcpy(dst + expert_row * d_, src + wire_off[b] * d_, bytes);
      } else {
        std::memcpy(dst + wire_off[b] * d_, src + expert_row * d_, bytes);
      }
      expert_row += recv_counts_[b];
    }
  }
}

}  // namespace moe
