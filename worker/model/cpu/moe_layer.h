// One MoE feed-forward layer: router -> routing plan (capacity, drops) -> permute -> token
// dispatcher (all-to-all) -> experts -> dispatcher back -> unpermute and weight. Backward mirrors
// it. A dense model (E = 1) runs its one replicated expert on every token with no router.
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

class MoeLayer {
 public:
  MoeLayer(const ModelConfig& cfg, Communicator* comm);

  // m (n, D) -> out (n, D). global_tokens: tokens of this micro-batch over all ranks (for the
  // global f_e and P_e). loss_scale: d(total loss)/d(per-token loss), 1 / tokens in the step.
  void Forward(const float* m, const BlockTensors& w, int n, int64_t global_tokens,
               float loss_scale, float* out, MoeLayerForwardStats* stats);
  // dout (n, D) -> dm (n, D) +=, and parameter gradients += into g.
  void Backward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g,
                float* dm);

 private:
  ModelConfig cfg_;
  MoeShape shape_;
  TokenDispatcher dispatcher_;
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
  std::vector<float> g_, u_, h_;              // (r, F)
  std::vector<int32_t> local_counts_;         // (E_local)
};

}  // namespace moe
