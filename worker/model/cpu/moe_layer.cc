#include "worker/model/cpu/moe_layer.h"

#include <algorithm>

#include "kernels/experts.h"
#include "kernels/matmul.h"
#include "kernels/router.h"
#include "worker/model/moe_bookkeeping.h"

namespace moe {
namespace {

template <typename T>
void Free(std::vector<T>* v) {
  std::vector<T>().swap(*v);
}

}  // namespace

MoeLayer::MoeLayer(const ModelConfig& cfg, Communicator* comm)
    : cfg_(cfg),
      shape_(MoeShape::Of(cfg, comm->world_size())),
      act_(ExpertActivationOf(cfg)),
      dispatcher_(comm, shape_),
      bias_(cfg.is_moe() ? cfg.experts : 0, 0.f) {}

void MoeLayer::Forward(const float* m, const BlockTensors& w, int n, int64_t global_tokens,
                       float loss_scale, float* out, MoeLayerForwardStats* stats,
                       const MoeLayerStep& step) {
  const int D = cfg_.d, F = cfg_.ffn, E = cfg_.experts, k = cfg_.top_k;
  const bool gated = act_ == kernels::ExpertActivation::kSwiglu;
  n_ = n;
  loss_scale_ = loss_scale;
  if (shape_.dense) {
    // Dense: one expert over every token, no router and no router losses.
    local_counts_.assign(1, n);
    g_.resize(static_cast<size_t>(n) * F);
    u_.resize(gated ? g_.size() : 0);
    h_.resize(g_.size());
    kernels::ExpertsForward(out, g_.data(), u_.data(), h_.data(), m, w.w1, w.w3, w.w2,
                            local_counts_.data(), 1, D, F, act_);
    if (!step.rerun) *stats = MoeLayerForwardStats{};
    SharedForward(m, w, n, out);
    return;
  }

  // Route: router GEMM, fp32 scores, top-k (with the balancing bias), renormalised weights.
  const kernels::RouterScoring scoring = RouterScoringOf(cfg_, bias_.data());
  logits_.resize(static_cast<size_t>(n) * E);
  probs_.resize(logits_.size());
  lse_.resize(n);
  expert_idx_.resize(static_cast<size_t>(n) * k);
  weights_.resize(expert_idx_.size());
  kernels::LinearForward(logits_.data(), m, w.router, n, D, E);
  kernels::RouterForward(probs_.data(), lse_.data(), expert_idx_.data(), weights_.data(),
                         logits_.data(), n, E, k, scoring);
  const std::vector<uint8_t> off =
      step.train ? ExpertsSwitchedOff(step.expert_dropout_seed, cfg_.expert_dropout, E) : std::vector<uint8_t>{};
  plan_ = kernels::BuildRoutingPlan(expert_idx_.data(), n, k, E,
                                    ExpertCapacity(cfg_.capacity_factor, n, k, E),
                                    off.empty() ? nullptr : off.data());

  // Router losses use global f_e and P_e: one small all-reduce of the layer's statistics (a
  // rerun keeps the first run's).
  if (!step.rerun) {
    const RouterStatsSlots slot{E};
    std::vector<double> red(slot.size(), 0.0);
    for (int e = 0; e < E; ++e) red[slot.routed() + e] = static_cast<double>(plan_.routed[e]);
    kernels::RouterStats(red.data() + slot.prob_sum(), &red[slot.z_sum()], &red[slot.entropy_sum()], probs_.data(),
                         lse_.data(), n, E, /*normalize=*/cfg_.router_sigmoid);
    red[slot.dropped()] = static_cast<double>(plan_.dropped);
    red[slot.expert_dropped()] = static_cast<double>(plan_.expert_dropped);
    dispatcher_.comm()->AllReduceSum(red.data(), static_cast<int64_t>(red.size()));
    *stats = ReduceRouterStats(red.data(), shape_, global_tokens, cfg_.aux_coef, cfg_.z_coef);
    aux_grad_ = AuxLossGradient(red.data(), shape_, global_tokens, cfg_.aux_coef, loss_scale);
  }

  // Permute -> exchange -> experts -> exchange back -> unpermute.
  xs_.resize(static_cast<size_t>(plan_.kept()) * D);
  kernels::PermuteForward(xs_.data(), m, plan_, D);
  dispatcher_.Dispatch(xs_.data(), plan_, &expert_in_, &local_counts_);
  const size_t r = static_cast<size_t>(dispatcher_.recv_rows());
  expert_out_.resize(r * D);
  g_.resize(r * F);
  u_.resize(gated ? r * F : 0);
  h_.resize(r * F);
  kernels::ExpertsForward(expert_out_.data(), g_.data(), u_.data(), h_.data(), expert_in_.data(),
                          w.w1, w.w3, w.w2, local_counts_.data(), shape_.experts_local, D, F, act_);
  ys_.resize(xs_.size());
  dispatcher_.Combine(expert_out_.data(), ys_.data());
  kernels::UnpermuteForward(out, ys_.data(), weights_.data(), plan_, D);
  SharedForward(m, w, n, out);
}

void MoeLayer::ReleaseSaved() {
  Free(&logits_);
  Free(&probs_);
  Free(&lse_);
  Free(&expert_idx_);
  Free(&weights_);
  plan_ = kernels::RoutingPlan{};
  Free(&xs_);
  Free(&ys_);
  Free(&expert_in_);
  Free(&expert_out_);
  Free(&g_);
  Free(&u_);
  Free(&h_);
  Free(&shared_g_);
  Free(&shared_u_);
  Free(&shared_h_);
}

void MoeLayer::SharedForward(const float* m, const BlockTensors& w, int n, float* out) {
  const int S = cfg_.shared_experts, D = cfg_.d, Fs = cfg_.shared_ffn;
  if (S == 0) return;
  const bool gated = act_ == kernels::ExpertActivation::kSwiglu;
  const size_t nf = static_cast<size_t>(n) * Fs, nd = static_cast<size_t>(n) * D;
  const int64_t wsize = int64_t{D} * Fs;  // one shared expert's W1, W3 or W2
  shared_g_.resize(S * nf);
  shared_u_.resize(gated ? S * nf : 0);
  shared_h_.resize(S * nf);
  std::vector<float> y(nd);
  const int32_t counts[1] = {n};
  for (int s = 0; s < S; ++s) {
    kernels::ExpertsForward(y.data(), shared_g_.data() + s * nf, gated ? shared_u_.data() + s * nf : nullptr,
                            shared_h_.data() + s * nf, m, w.shared_w1 + s * wsize,
                            gated ? w.shared_w3 + s * wsize : nullptr, w.shared_w2 + s * wsize, counts, 1, D, Fs,
                            act_);
    for (size_t i = 0; i < nd; ++i) out[i] += y[i];
  }
}

void MoeLayer::SharedBackward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g,
                              float* dm) {
  const int S = cfg_.shared_experts, D = cfg_.d, Fs = cfg_.shared_ffn, n = n_;
  if (S == 0) return;
  const bool gated = act_ == kernels::ExpertActivation::kSwiglu;
  const size_t nf = static_cast<size_t>(n) * Fs;
  const int64_t wsize = int64_t{D} * Fs;
  std::vector<float> scratch(2 * nf);
  const int32_t counts[1] = {n};
  for (int s = 0; s < S; ++s) {
    kernels::ExpertsBackward(dm, g.shared_w1 + s * wsize, gated ? g.shared_w3 + s * wsize : nullptr,
                             g.shared_w2 + s * wsize, dout, m, shared_g_.data() + s * nf,
                             gated ? shared_u_.data() + s * nf : nullptr, shared_h_.data() + s * nf,
                             w.shared_w1 + s * wsize, gated ? w.shared_w3 + s * wsize : nullptr,
                             w.shared_w2 + s * wsize, counts, 1, D, Fs, scratch.data(), act_);
  }
}

void MoeLayer::Backward(const float* dout, const float* m, const BlockTensors& w,
                        const BlockTensors& g, float* dm) {
  const int D = cfg_.d, F = cfg_.ffn, E = cfg_.experts, k = cfg_.top_k, n = n_;
  std::vector<float> scratch;
  SharedBackward(dout, m, w, g, dm);
  if (shape_.dense) {
    scratch.assign(static_cast<size_t>(2) * n * F, 0.f);
    kernels::ExpertsBackward(dm, g.w1, g.w3, g.w2, dout, m, g_.data(), u_.data(), h_.data(), w.w1,
                             w.w3, w.w2, local_counts_.data(), 1, D, F, scratch.data(), act_);
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
                           local_counts_.data(), shape_.experts_local, D, F, scratch.data(), act_);
  std::vector<float> dxs(xs_.size());
  dispatcher_.DispatchBackward(d_expert_in.data(), dxs.data());
  kernels::PermuteBackward(dm, dxs.data(), plan_, D);

  // Router: through the combine weights, the aux loss and the z loss.
  std::vector<float> dlogits(static_cast<size_t>(n) * E, 0.f);
  kernels::RouterBackward(dlogits.data(), dweights.data(), probs_.data(), lse_.data(),
                          expert_idx_.data(), aux_grad_.data(),
                          static_cast<float>(cfg_.z_coef * loss_scale_), n, E, k,
                          RouterScoringOf(cfg_, bias_.data()), logits_.data());
  kernels::LinearBackward(dm, g.router, dlogits.data(), m, w.router, n, D, E);
}

}  // namespace moe
