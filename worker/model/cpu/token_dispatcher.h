// The expert-parallel exchange of one MoE layer (MODEL.md "Parallel layout"): tokens this rank
// routed, grouped by global expert, go to the ranks that own those experts; results come back.
// Preprocessing and postprocessing (reordering) hold no communication; Exchange* calls do.
//
// Layouts, with W ranks and E_local = E / W experts per rank:
//   send side ("plan order"):   rows grouped by global expert e = 0..E-1 (RoutingPlan slots),
//                               so rows for peer p are contiguous (experts p*E_local ...).
//   wire order on receive:      [from rank 0: local expert 0, 1, ...][from rank 1: ...]...
//   expert order (kernel input): [local expert 0: from rank 0, rank 1, ...][local expert 1: ...]
// Expert order keeps each expert's rows in global token order, as one rank would see them.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/routing_plan.h"
#include "worker/parallel/comm.h"

namespace moe {

class TokenDispatcher {
 public:
  TokenDispatcher(Communicator* comm, int experts, int d);

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

  int64_t recv_rows() const { return recv_rows_; }
  Communicator* comm() const { return comm_; }

 private:
  // Moves (peer, local expert) row blocks between wire order and expert order.
  void Reorder(const float* src, float* dst, bool wire_to_expert) const;
  // plan-order rows -> peers -> expert-order rows, and the reverse route.
  void Forward(const float* plan_rows, float* expert_rows);
  void Backward(const float* expert_rows, float* plan_rows);

  Communicator* comm_;
  int world_, experts_, experts_local_, d_;
  std::vector<int64_t> send_rows_;   // (E) rows to each global expert, plan order
  std::vector<int64_t> recv_counts_; // (W * E_local) rows from rank p for local expert j
  std::vector<int64_t> send_elems_, recv_elems_;  // (W) floats to/from each peer
  int64_t send_total_ = 0, recv_rows_ = 0;
  std::vector<float> wire_;  // scratch, wire order
};

}  // namespace moe
