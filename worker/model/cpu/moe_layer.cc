#include "worker/model/cpu/moe_layer.h"

#include <algorithm>

#include "kernels/experts.h"
#include "kernels/matmul.h"
#include "kernels/router.h"

namespace moe {

MoeLayer::MoeLayer(const ModelConfig& cfg, Communicator* comm)
    : cfg_(cfg),
      dispatcher_(comm, cfg.experts, cfg.d),
      experts_local_(cfg.is_moe() ? cfg.experts / comm->world_size() : 1) {}

void MoeLayer::Forward(const float* m, const BlockTensors& w, int n, int64_t global_tokens,
                       float loss_scale, float* out, MoeLayerForwardStats* stats) {
  const int D = cfg_.d, F = cfg_.ffn, E = cfg_.experts, k = cfg_.top_k;
  n_ = n;
  loss_scale_ = loss_scale;
  if (!cfg_.is_moe()) {
    // Dense: one expert over every token, no router and no router losses.
    local_counts_.assign(1, n);
    g_.resize(static_cast<size_t>(n) * F);
    u_.resize(g_.size());
    h_.resize(g_.size());
    kernels::ExpertsForward(out, g_.data(), u_.data(), h_.data(), m, w.w1, w.w3, w.w2,
                            local_counts_.data(), 1, D, F);
    *stats = MoeLayerForwardStats{};
    return;
  }

  // Route: router GEMM, fp32 softmax, top-k, renormalised weights.
  logits_.resize(static_cast<size_t>(n) * E);
  probs_.resize(logits_.size());
  lse_.resize(n);
  expert_idx_.resize(static_cast<size_t>(n) * k);
  weights_.resize(expert_idx_.size());
  kernels::LinearForward(logits_.data(), m, w.router, n, D, E);
  kernels::RouterForward(probs_.data(), lse_.data(), expert_idx_.data(), weights_.data(),
                         logits_.data(), n, E, k);
  plan_ = kernels::BuildRoutingPlan(expert_idx_.data(), n, k, E, cfg_.capacity_factor);

  // Router losses use global f_e and P_e: one small all-reduce of [routed | prob_sum | z, H, drops].
  std::vector<double> red(2 * E + 3, 0.0);
  for (int e = 0; e < E; ++e) red[e] = static_cast<double>(plan_.routed[e]);
  double z_sum = 0, entropy_sum = 0;
  kernels::RouterStats(red.data() + E, &z_sum, &entropy_sum, probs_.data(), lse_.data(), n, E);
  red[2 * E] = z_sum;
  red[2 * E + 1] = entropy_sum;
  red[2 * E + 2] = static_cast<double>(plan_.dropped);
  dispatcher_.comm()->AllReduceSum(red.data(), static_cast<int64_t>(red.size()));

  const double n_global = static_cast<double>(global_tokens);
  stats->routed.assign(E, 0);
  aux_grad_.assign(E, 0.f);
  double aux = 0;
  for (int e = 0; e < E; ++e) {
    const double f_e = red[e] / (n_global * k);
    const double p_e = red[E + e] / n_global;
    aux += f_e * p_e;
    aux_grad_[e] = static_cast<float>(cfg_.aux_coef * E * f_e * loss_scale);
    stats->routed[e] = static_cast<int64_t>(red[e]);
  }
  stats->aux_loss = cfg_.aux_coef * E * aux;
  stats->z_loss = cfg_.z_coef * red[2 * E] / n_global;
  stats->entropy_sum = red[2 * E + 1];
  stats->dropped = static_cast<int64_t>(red[2 * E + 2]);
  stats->assignments = static_cast<int64_t>(n_global) * k;

  // Permute -> exchange -> experts -> exchange back -> unpermute.
  xs_.resize(static_cast<size_t>(plan_.kept()) * D);
  kernels::PermuteForward(xs_.data(), m, plan_, D);
  dispatcher_.Dispatch(xs_.data(), plan_, &expert_in_, &local_counts_);
  const size_t r = static_cast<size_t>(dispatcher_.recv_rows());
  expert_out_.resize(r * D);
  g_.resize(r * F);
  u_.resize(r * F);
  h_.resize(r * F);
  kernels::ExpertsForward(expert_out_.data(), g_.data(), u_.data(), h_.data(), expert_in_.data(),
                          w.w1, w.w3, w.w2, local_counts_.data(), experts_local_, D, F);
  ys_.resize(xs_.size());
  dispatcher_.Combine(expert_out_.data(), ys_.data());
  kernels::UnpermuteForward(out, ys_.data(), weights_.data(), plan_, D);
}

void MoeLayer::Backward(const float* dout, const float* m, const BlockTensors& w,
                        const BlockTensors& g, float* dm) {
  const int D = cfg_.d, F = cfg_.ffn, E = cfg_.experts, k = cfg_.top_k, n = n_;
  std::vector<float> scratch;
  if (!cfg_.is_moe()) {
    scratch.assign(static_cast<size_t>(2) * n * F, 0.f);
    kernels::ExpertsBackward(dm, g.w1, g.w3, g.w2, dout, m, g_.data(), u_.data(), h_.data(), w.w1,
                             w.w3, w.w2, local_counts_.data(), 1, D, F, scratch.data());
    return;
  }
  // Unpermute backward: gradients for the expert outputs and for the combine weights.
  std::vector<float> dys(xs_.size(), 0.f);
  std::vector<float> dweights(static_cast<size_t>(n) * k, 0.f);
  kernels::UnpermuteBackward(dys.data(), dweights.data(), dout, ys_.data(), weights_.data(), plan_, D);

  const size_t r = static_cast<size_t>(dispatcher_.recv_rows());
  std::vector<float> d_expert_out(r * D);
  dispatcher_.CombineBackward(dys.data(), d_expert_out.data());
  std::vector<float> d_expert_in(r * D, 0.f);
  scratch.assign(2 * r * F, 0.f);
  kernels::ExpertsBackward(d_expert_in.data(), g.w1, g.w3, g.w2, d_expert_out.data(),
                           expert_in_.data(), g_.data(), u_.data(), h_.data(), w.w1, w.w3, w.w2,
                           local_counts_.data(), experts_local_, D, F, scratch.data());
  std::vector<float> dxs(xs_.size());
  dispatcher_.DispatchBackward(d_expert_in.data(), dxs.data());
  kernels::PermuteBackward(dm, dxs.data(), plan_, D);

  // Router: through the combine weights, the aux loss and the z loss.
  std::vector<float> dlogits(static_cast<size_t>(n) * E, 0.f);
  kernels::RouterBackward(dlogits.data(), dweights.data(), probs_.data(), lse_.data(),
                          expert_idx_.data(), aux_grad_.data(),
                          static_cast<float>(cfg_.z_coef * loss_scale_), n, E, k);
  kernels::LinearBackward(dm, g.router, dlogits.data(), m, w.router, n, D, E);
}

}  // namespace moe
