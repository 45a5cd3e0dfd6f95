// The token dispatcher of one CUDA MoE layer, the twin of model/cpu/token_dispatcher.h: the
// rows this rank routed (plan order, grouped by global expert) go to the experts' layout of
// the GPUs that own them (kernels/cuda/expert_layout: padded or chunked bf16 rows), and the
// experts' results come back. Three steps:
//   Preprocess: the count exchange (ExpertExchange on several GPUs; on one, the counts' copy to
//     the host), the route (ExchangePlan, model/moe_bookkeeping.h), the experts' layout;
//   Dispatch / Combine: the row exchange and the reordering between wire order and layout.
// The forward's route is kept for the backward, which sends gradients the same way.
// A dense model (E = 1) has a route too: its one expert takes every token, nothing moves.
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <vector>

#include "kernels/cuda/moe.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/parallel/comm.h"
#include "worker/parallel/comm_nccl.h"

namespace moe {

// The expert exchange between GPUs, one object for the collectives of an MoE layer: the count
// exchange (over the host communicator, one small all-to-all), the row exchange (NCCL, bf16,
// on the stream) and the sum of the router statistics (NCCL).
class ExpertExchange {
 public:
  ExpertExchange(Communicator* host, DeviceCommunicator* device, const MoeShape& shape)
      : host_(host), device_(device), shape_(shape) {}

  // This rank's rows per global expert (host, E) -> the route between ranks.
  ExchangePlan Plan(const int32_t* counts) const;
  // Rows to their experts' ranks (plan order -> wire order), and back (wire -> plan order).
  void Send(const ExchangePlan& plan, const cuda::bf16* plan_rows, cuda::bf16* wire_rows, cudaStream_t stream);
  void Return(const ExchangePlan& plan, const cuda::bf16* wire_rows, cuda::bf16* plan_rows, cudaStream_t stream);
  // The layer's router statistics (device doubles), summed over GPUs in place.
  void SumStats(double* stats, int64_t n, cudaStream_t stream);

 private:
  // send_rows[p] rows of `send` to peer p, recv_rows[p] rows from p into `recv` (bf16, D wide).
  void Rows(const std::vector<int64_t>& send_rows, const cuda::bf16* send, const std::vector<int64_t>& recv_rows,
            cuda::bf16* recv, cudaStream_t stream);

  Communicator* host_;
  DeviceCommunicator* device_;
  MoeShape shape_;
};

// bf16 scratch the dispatchers of every layer share: wire-order rows and plan-order rows.
struct DispatchScratch {
  cuda::bf16* wire = nullptr;  // (expert rows capacity, D)
  cuda::bf16* plan = nullptr;  // (n k, D)
};

class CudaTokenDispatcher {
 public:
  // exchange: null on one GPU.
  CudaTokenDispatcher(const MoeShape& shape, ExpertExchange* exchange) : shape_(shape), exchange_(exchange) {}

  // The route of this layer from this rank's rows per global expert (host, E; a dense model's
  // one count is the number of tokens).
  void Preprocess(const int32_t* counts);
  // fp32 plan-order rows (rows_out() of them) -> the experts' bf16 layout (layout().rows rows).
  void Dispatch(const float* plan_rows, cuda::bf16* layout_rows, const DispatchScratch& scratch,
                cudaStream_t stream);
  // Several GPUs: bf16 rows in compact expert order (rows_in()) -> plan-order rows (rows_out()),
  // fp32 or bf16 (the same values: what comes back is bf16).
  void Combine(const cuda::bf16* expert_rows, float* plan_rows, const DispatchScratch& scratch,
               cudaStream_t stream);
  void Combine(const cuda::bf16* expert_rows, cuda::bf16* plan_rows, const DispatchScratch& scratch,
               cudaStream_t stream);

  // Whether rows travel between GPUs (else the experts read and write plan order directly).
  bool exchanges() const { return exchange_ != nullptr; }
  const int32_t* local_counts() const { return plan_.local_counts.data(); }  // (E_local) host
  int64_t rows_in() const { return plan_.rows_in; }    // rows this rank's experts take
  int64_t rows_out() const { return plan_.rows_out; }  // rows this rank routed and kept
  const cuda::ExpertLayout& layout() const { return layout_; }

 private:
  MoeShape shape_;
  ExpertExchange* exchange_;
  ExchangePlan plan_;
  cuda::ExpertLayout layout_;
  // Several GPUs: wire order -> the layout, and compact expert order -> wire order. No blocks
  // when E_local is 1 (wire order is then expert order).
  cuda::RowBlocks to_layout_, to_wire_;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
