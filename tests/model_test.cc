// Whole-model gradient checks (finite differences against Backward) for dense and MoE models,
// with and without capacity drops, GQA on and off, tied and untied heads, and the expert options
// (relu2 / gelu experts, shared experts, sigmoid router, temperature, balancing bias, expert
// dropout) and the attention options (QK-norm, gate, attention dropout).
#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

#include "gtest/gtest.h"
#include "tests/support/test_jobs.h"
#include "worker/parallel/comm_single.h"
#include "worker/model/cpu/model.h"

namespace moe {
namespace {

using Case = testing::ModelCase;

// The worst relative error of the directional derivatives of every tensor (see below), and
// which; expert_dropped: assignments expert dropout removed in the checked forward.
double WorstGradError(const ModelConfig& cfg, std::string* worst_name, int64_t* expert_dropped) {
  auto comm = CreateSingleProcessCommunicator();
  Model model(cfg, comm.get());
  model.InitParams(42);
  if (cfg.balances_by_bias()) {
    // Biases that decide some choices outright (expert 0 always in, the last expert never)
    // without making near-ties a finite-difference step could flip.
    std::vector<float> bias(static_cast<size_t>(cfg.layers) * cfg.experts, 0.f);
    for (int l = 0; l < cfg.layers; ++l) {
      bias[static_cast<size_t>(l) * cfg.experts] = 2.f;
      bias[static_cast<size_t>(l + 1) * cfg.experts - 1] = -2.f;
    }
    model.SetRouterBiases(bias);
  }
  // Larger weights than the 0.02 init, so the gradients are well above fp32 noise.
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 0.3f);
  for (float& w : model.params()) w += noise(rng);

  const int b = 3, n = b * cfg.seq_len;
  std::vector<int32_t> idx(n), tgt(n);
  std::uniform_int_distribution<int> tok(0, cfg.vocab - 1);
  for (int i = 0; i < n; ++i) {
    idx[i] = tok(rng);
    tgt[i] = tok(rng);
  }
  BatchContext ctx;
  ctx.train = true;
  ctx.dropout_seed = 99;
  ctx.global_tokens = n;
  ctx.loss_scale = 1.0f / n;
  // The expert counts of the unperturbed forward: a step that changes them changed a top-k
  // choice, and the difference quotient is then no derivative.
  std::vector<std::vector<int64_t>> routed;
  auto loss = [&]() {
    ForwardResult r = model.Forward(idx.data(), tgt.data(), b, ctx);
    for (size_t l = 0; l < r.layers.size() && l < routed.size(); ++l) {
      EXPECT_EQ(r.layers[l].routed, routed[l]) << "a finite-difference step changed a top-k choice in layer " << l;
    }
    return r.ce_sum * ctx.loss_scale + r.aux_loss + r.z_loss;
  };
  *expert_dropped = 0;
  for (const MoeLayerForwardStats& l : model.Forward(idx.data(), tgt.data(), b, ctx).layers) {
    *expert_dropped += l.expert_dropped;
    routed.push_back(l.routed);
  }
  model.ZeroGrads();
  model.Backward();

  // Per tensor, the directional derivative along a random unit direction: the loss changes by
  // eps * (g . u) summed over the whole tensor, far above fp32 rounding, while each element moves
  // by only ~eps / sqrt(n), too little to flip a top-k choice.
  const std::vector<float> grads = model.grads();
  const double eps = 1e-2;
  double worst = 0;
  for (const ParamInfo& p : model.layout().params()) {
    std::vector<float> dir(p.size);
    double norm = 0;
    for (float& v : dir) {
      v = noise(rng);
      norm += static_cast<double>(v) * v;
    }
    double analytic = 0;
    for (int64_t i = 0; i < p.size; ++i) {
      dir[i] = static_cast<float>(dir[i] / std::sqrt(norm));
      analytic += static_cast<double>(dir[i]) * grads[p.offset + i];
    }
    float* w = model.params().data() + p.offset;
    const std::vector<float> orig(w, w + p.size);
    for (int64_t i = 0; i < p.size; ++i) w[i] = orig[i] + static_cast<float>(eps) * dir[i];
    const double plus = loss();
    for (int64_t i = 0; i < p.size; ++i) w[i] = orig[i] - static_cast<float>(eps) * dir[i];
    const double minus = loss();
    std::copy(orig.begin(), orig.end(), w);
    const double numeric = (plus - minus) / (2 * eps);
    const double err = std::abs(analytic - numeric) / std::max({std::abs(analytic), std::abs(numeric), 1e-3});
    if (err > worst) {
      worst = err;
      *worst_name = p.name + ": analytic " + std::to_string(analytic) + " numeric " + std::to_string(numeric);
    }
  }
  return worst;
}

class ModelGradTest : public ::testing::TestWithParam<Case> {};

TEST_P(ModelGradTest, MatchesFiniteDifferences) {
  const Case& c = GetParam();
  ModelConfig cfg = testing::CaseConfig(c, /*vocab=*/11, /*d=*/16, /*seq_len=*/7, /*ffn=*/12);
  std::string worst_name;
  int64_t expert_dropped = 0;
  const double worst = WorstGradError(cfg, &worst_name, &expert_dropped);
  // fp32 forward, central differences along unit directions: 1e-2 relative (floor 1e-3). A
  // missing or mis-scaled gradient term shows up as an error of order 1.
  EXPECT_LT(worst, 1e-2) << c.name << " worst " << worst_name;
}

INSTANTIATE_TEST_SUITE_P(
    Models, ModelGradTest,
    ::testing::Values(Case{"dense", 1, 1, 4, 4, 0, true, 0.f},
                      Case{"dense_gqa_untied", 1, 1, 4, 2, 0, false, 0.f},
                      Case{"moe_top2", 4, 2, 4, 4, 0, true, 0.f},
                      Case{"moe_top1_gqa", 3, 1, 4, 1, 0, true, 0.f},
                      Case{"moe_top3_capacity", 5, 3, 2, 2, 1.0, false, 0.f},
                      Case{"moe_top2_capacity_dropout", 4, 2, 4, 2, 0.5, true, 0.3f}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// The expert options on a model shape.
struct RecipeCase {
  const char* name;
  Case shape;
  void (*options)(ModelConfig*);
};

class RecipeGradTest : public ::testing::TestWithParam<RecipeCase> {};

TEST_P(RecipeGradTest, MatchesFiniteDifferences) {
  const RecipeCase& c = GetParam();
  ModelConfig cfg = testing::CaseConfig(c.shape, /*vocab=*/11, /*d=*/16, /*seq_len=*/7, /*ffn=*/12);
  c.options(&cfg);
  std::string worst_name;
  int64_t expert_dropped = 0;
  const double worst = WorstGradError(cfg, &worst_name, &expert_dropped);
  EXPECT_LT(worst, 1e-2) << c.name << " worst " << worst_name;
  if (cfg.expert_dropout > 0) {
    EXPECT_GT(expert_dropped, 0) << "expert dropout switched nothing off";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Recipes, RecipeGradTest,
    ::testing::Values(
        RecipeCase{"relu2_shared", {"moe", 4, 2, 4, 2, 0, true, 0.f},
                   [](ModelConfig* c) {
                     c->activation = ModelConfig::Activation::kRelu2;
                     c->shared_experts = 2;
                     c->shared_ffn = 10;
                   }},
        RecipeCase{"gelu_dense_shared", {"dense", 1, 1, 4, 4, 0, false, 0.f},
                   [](ModelConfig* c) {
                     c->activation = ModelConfig::Activation::kGelu;
                     c->shared_experts = 1;
                     c->shared_ffn = 8;
                   }},
        RecipeCase{"swiglu_shared_capacity", {"moe", 5, 3, 2, 2, 1.0, false, 0.f},
                   [](ModelConfig* c) {
                     c->shared_experts = 1;
                     c->shared_ffn = 12;
                   }},
        RecipeCase{"sigmoid_tau05_bias", {"moe", 4, 2, 4, 4, 0, true, 0.f},
                   [](ModelConfig* c) {
                     c->router_sigmoid = true;
                     c->router_temperature = 0.5f;
                     c->bias_update_rate = 0.001f;
                   }},
        RecipeCase{"softmax_tau2_top1", {"moe", 3, 1, 4, 1, 0, true, 0.f},
                   [](ModelConfig* c) { c->router_temperature = 2.0f; }},
        RecipeCase{"expert_dropout_capacity_bias", {"moe", 4, 2, 4, 2, 0.5, true, 0.3f},
                   [](ModelConfig* c) {
                     c->expert_dropout = 0.5f;
                     c->bias_update_rate = 0.01f;
                   }},
        RecipeCase{"all_expert_options", {"moe", 4, 2, 4, 2, 0, false, 0.f},
                   [](ModelConfig* c) {
                     c->activation = ModelConfig::Activation::kGelu;
                     c->shared_experts = 1;
                     c->shared_ffn = 6;
                     c->router_sigmoid = true;
                     c->router_temperature = 1.5f;
                     c->bias_update_rate = 0.001f;
                     c->expert_dropout = 0.4f;
                   }}),
    [](const ::testing::TestParamInfo<RecipeCase>& info) { return std::string(info.param.name); });


void QkNormAndGate(ModelConfig* cfg) {
  cfg->qk_norm = true;
  cfg->attn_gate = true;
}
void QkNormGateAndAttentionDropout(ModelConfig* cfg) {
  QkNormAndGate(cfg);
  cfg->attn_dropout = 0.2f;  // masks are fixed by the context's seed, so the loss is smooth
}

// The attention options. The MoE cases route every token to all its experts (k = E): their
// checks stay clear of top-k flips, which a perturbed q_norm would otherwise cause.
INSTANTIATE_TEST_SUITE_P(
    Attention, RecipeGradTest,
    ::testing::Values(RecipeCase{"qk_norm_gate_moe_all_experts", {"", 3, 3, 4, 2, 0, true, 0.f}, QkNormAndGate},
                      RecipeCase{"qk_norm_gate_dense_gqa", {"", 1, 1, 4, 2, 0, true, 0.f}, QkNormAndGate},
                      RecipeCase{"qk_norm_gate_dense_untied", {"", 1, 1, 2, 2, 0, false, 0.f}, QkNormAndGate},
                      RecipeCase{"attention_dropout_moe_all_experts", {"", 2, 2, 2, 2, 0, false, 0.f},
                                 QkNormGateAndAttentionDropout}),
    [](const ::testing::TestParamInfo<RecipeCase>& info) { return std::string(info.param.name); });

// Sampling and scoring build the model with inference_only: the weights alone. Its forward is
// the training model's to the bit; what only training needs is not there, and asking for it is
// a logic error, not a write through an empty buffer.
TEST(InferenceOnlyModel, SameForwardWithoutTrainingState) {
  ModelConfig cfg = testing::CaseConfig({"moe", 4, 2, 4, 2, 0, false, 0.f}, /*vocab=*/11, /*d=*/16,
                                        /*seq_len=*/7, /*ffn=*/12);
  auto comm = CreateSingleProcessCommunicator();
  Model train(cfg, comm.get());
  train.InitParams(5);
  cfg.inference_only = true;
  Model infer(cfg, comm.get());
  infer.params() = train.params();
  EXPECT_TRUE(infer.grads().empty());
  EXPECT_FALSE(train.grads().empty());
  const int b = 2, n = b * cfg.seq_len;
  std::vector<int32_t> idx(n), tgt(n);
  for (int i = 0; i < n; ++i) {
    idx[i] = (3 * i + 1) % cfg.vocab;
    tgt[i] = (5 * i + 2) % cfg.vocab;
  }
  BatchContext ctx;
  ctx.train = false;
  ctx.global_tokens = n;
  ctx.loss_scale = 1.0f / n;
  const double want = train.Forward(idx.data(), tgt.data(), b, ctx).ce_sum;
  EXPECT_EQ(infer.Forward(idx.data(), tgt.data(), b, ctx).ce_sum, want);
  EXPECT_EQ(infer.logits(), train.logits());
  EXPECT_THROW(infer.ZeroGrads(), std::logic_error);
  EXPECT_THROW(infer.Backward(), std::logic_error);
  EXPECT_THROW(infer.OptimizerStep(1, 1e-3, 0, 0, 1.f), std::logic_error);
}

}  // namespace
}  // namespace moe
