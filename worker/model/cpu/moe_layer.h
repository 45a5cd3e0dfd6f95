// One MoE feed-forward layer: router -> routing plan (capacity, expert dropout) -> permute ->
// token dispatcher (all-to-all) -> experts -> dispatcher back -> unpermute and weight, plus the
// shared experts (replicated, every token). Backward mirrors it. A dense model (E = 1) runs its
// one replicated expert on every token with no router. Loss-free balancing's router bias lives
// here (the trainer updates it between steps through Model::SetRouterBiases).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/routing_plan.h"
#include "worker/parallel/comm.h"
#include "worker/model/model_config.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/model/param_layout.h"
#include "worker/model/cpu/token_dispatcher.h"
#include "worker/model/train_model.h"

namespace moe {

// Where a forward pass sits, for expert dropout: on only in training.
struct MoeLayerStep {
  bool train = false;
  uint64_t expert_dropout_seed = 0;  // ExpertDropoutSeed(micro-step seed, layer)
  // train.recompute full: the backward's second run of the same micro-batch. It routes the same
  // tokens the same way (same input, bias, draws), so it keeps the first run's statistics and
  // aux gradient: no statistics all-reduce, and nothing is counted twice.
  bool rerun = false;
};

class MoeLayer {
 public:
  MoeLayer(const ModelConfig& cfg, Communicator* comm);

  // m (n, D) -> out (n, D). global_tokens: tokens of this micro-batch over all ranks (for the
  // global f_e and P_e). loss_scale: d(total loss)/d(per-token loss), 1 / tokens in the step.
  // stats is left alone on a rerun (and may be null then).
  void Forward(const float* m, const BlockTensors& w, int n, int64_t global_tokens,
               float loss_scale, float* out, MoeLayerForwardStats* stats,
               const MoeLayerStep& step = {});
  // dout (n, D) -> dm (n, D) +=, and parameter gradients += into g.
  void Backward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g,
                float* dm);

  // Frees what Forward saved for Backward (train.recompute full: between the forward and the
  // rerun, and after the backward); the aux gradient (E) stays for the rerun.
  void ReleaseSaved();

  // Loss-free balancing's bias (E), 0 at the start; used only when the job balances by bias.
  std::vector<float>& router_bias() { return bias_; }

 private:
  // The shared experts (model.moe.shared_experts): out (n, D) += sum_s Shared_s(m).
  void SharedForward(const float* m, const BlockTensors& w, int n, float* out);
  void SharedBackward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g,
                      float* dm);

  ModelConfig cfg_;
  MoeShape shape_;
  kernels::ExpertActivation act_;
  TokenDispatcher dispatcher_;
  std::vector<float> bias_;                   // (E)
  int n_ = 0;
  float loss_scale_ = 0;
  // Saved for backward. Shapes: n tokens, kept = assignments not dropped, r = rows received.
  std::vector<float> logits_, probs_, lse_;   // (n, E), (n, E), (n)
  std::vector<int32_t> expert_idx_;           // (n, k)
  std::vector<float> weights_;                // (n, k)
  std::vector<float> aux_grad_;               // (E) coef * E * f_e * loss_scale
  kernels::RoutingPlan plan_;
  std::vector<float> xs_, ys_;                // (kept, D) plan order
  std::vector<float> expert_in_, expert_out_; // (r, D) expert order
  std::vector<float> g_, u_, h_;              // (r, F); u_ only for swiglu
  std::vector<int32_t> local_counts_;         // (E_local)
  std::vector<float> shared_g_, shared_u_, shared_h_;  // (S, n, F_s); shared_u_ only for swiglu
};

}  // namespace moe
