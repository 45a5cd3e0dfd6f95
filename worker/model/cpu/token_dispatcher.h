// The expert-parallel exchange of one MoE layer over MPI (MODEL.md "Parallel layout"): tokens
// this rank routed, grouped by global expert, go to the ranks that own those experts; results
// come back. The route (plan order -> wire order -> expert order) is ExchangePlan's
// (model/moe_bookkeeping.h), the same one the GPU dispatcher follows. Preprocess (the count
// exchange and the plan), exchange (AllToAllV) and postprocess (reordering) are separate steps.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/routing_plan.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/parallel/comm.h"

namespace moe {

class TokenDispatcher {
 public:
  TokenDispatcher(Communicator* comm, const MoeShape& shape);

  // Exchanges counts (one small all-to-all) and then rows: xs (kept, D) in plan order ->
  // expert_in (recv_rows, D) in expert order. local_counts (E_local) rows per local expert.
  void Dispatch(const float* xs, const kernels::RoutingPlan& plan, std::vector<float>* expert_in,
                std::vector<int32_t>* local_counts);
  // expert_out (recv_rows, D) in expert order -> ys (kept, D) in plan order.
  void Combine(const float* expert_out, float* ys);
  // Backward of Combine: dys (kept, D) -> d_expert_out (recv_rows, D). Same route as Dispatch.
  void CombineBackward(const float* dys, float* d_expert_out);
  // Backward of Dispatch: d_expert_in (recv_rows, D) -> dxs (kept, D) in plan order.
  void DispatchBackward(const float* d_expert_in, float* dxs);

  int64_t recv_rows() const { return plan_.rows_in; }
  Communicator* comm() const { return comm_; }

 private:
  // Preprocess: the count exchange (one small all-to-all) and the plan it gives.
  void Preprocess(const kernels::RoutingPlan& routing);
  // Postprocess: moves (peer, local expert) row blocks between wire order and expert order.
  void Reorder(const float* src, float* dst, bool wire_to_expert) const;
  // plan-order rows -> peers -> expert-order rows, and the reverse route.
  void Forward(const float* plan_rows, float* expert_rows);
  void Backward(const float* expert_rows, float* plan_rows);

  Communicator* comm_;
  MoeShape shape_;
  ExchangePlan plan_;
  std::vector<int64_t> send_elems_, recv_elems_;  // (W) floats to/from each peer
  std::vector<float> wire_;  // scratch, wire order
};

}  // namespace moe
