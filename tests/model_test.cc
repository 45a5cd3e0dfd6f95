// Whole-model gradient checks (finite differences against Backward) for dense and MoE models,
// with and without capacity drops, GQA on and off, tied and untied heads, and with recipe
// options on.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "tests/support/test_jobs.h"
#include "worker/parallel/comm_single.h"
#include "worker/model/cpu/model.h"

namespace moe {
namespace {

using Case = testing::ModelCase;

class ModelGradTest : public ::testing::TestWithParam<Case> {};

// The worst relative error over the model's tensors of the gradient of Backward against
// central differences of Forward, with a description of the worst tensor.
double WorstGradError(const ModelConfig& cfg, std::string* worst_name);

TEST_P(ModelGradTest, MatchesFiniteDifferences) {
  const Case& c = GetParam();
  ModelConfig cfg = testing::CaseConfig(c, /*vocab=*/11, /*d=*/16, /*seq_len=*/7, /*ffn=*/12);
  std::string worst_name;
  const double worst = WorstGradError(cfg, &worst_name);
  // fp32 forward, central differences along unit directions: 1e-2 relative (floor 1e-3). A
  // missing or mis-scaled gradient term shows up as an error of order 1.
  EXPECT_LT(worst, 1e-2) << c.name << " worst " << worst_name;
}

double WorstGradError(const ModelConfig& cfg, std::string* worst_name) {
  auto comm = CreateSingleProcessCommunicator();
  Model model(cfg, comm.get());
  model.InitParams(42);
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
  auto loss = [&]() {
    ForwardResult r = model.Forward(idx.data(), tgt.data(), b, ctx);
    return r.ce_sum * ctx.loss_scale + r.aux_loss + r.z_loss;
  };
  loss();
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

INSTANTIATE_TEST_SUITE_P(
    Models, ModelGradTest,
    ::testing::Values(Case{"dense", 1, 1, 4, 4, 0, true, 0.f},
                      Case{"dense_gqa_untied", 1, 1, 4, 2, 0, false, 0.f},
                      Case{"moe_top2", 4, 2, 4, 4, 0, true, 0.f},
                      Case{"moe_top1_gqa", 3, 1, 4, 1, 0, true, 0.f},
                      Case{"moe_top3_capacity", 5, 3, 2, 2, 1.0, false, 0.f},
                      Case{"moe_top2_capacity_dropout", 4, 2, 4, 2, 0.5, true, 0.3f}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// Recipe options on a model shape (MODEL.md "Options: the seeds' recipes").
struct OptionsCase {
  const char* name;
  Case shape;
  void (*options)(ModelConfig*);
};

class ModelOptionsGradTest : public ::testing::TestWithParam<OptionsCase> {};

TEST_P(ModelOptionsGradTest, MatchesFiniteDifferences) {
  const OptionsCase& c = GetParam();
  ModelConfig cfg = testing::CaseConfig(c.shape, /*vocab=*/11, /*d=*/16, /*seq_len=*/7, /*ffn=*/12);
  c.options(&cfg);
  std::string worst_name;
  const double worst = WorstGradError(cfg, &worst_name);
  EXPECT_LT(worst, 1e-2) << c.name << " worst " << worst_name;  // as above
}

void QkNormAndGate(ModelConfig* cfg) {
  cfg->qk_norm = true;
  cfg->attn_gate = true;
}
void QkNormGateAndAttentionDropout(ModelConfig* cfg) {
  QkNormAndGate(cfg);
  cfg->attn_dropout = 0.2f;  // masks are fixed by the context's seed, so the loss is smooth
}

INSTANTIATE_TEST_SUITE_P(
    Attention, ModelOptionsGradTest,
    // The MoE case routes every token to all its experts (k = E): the attention options' checks
    // stay clear of top-k flips, which a perturbed q_norm would otherwise cause.
    ::testing::Values(OptionsCase{"qk_norm_gate_moe_all_experts", {"", 3, 3, 4, 2, 0, true, 0.f}, QkNormAndGate},
                      OptionsCase{"qk_norm_gate_dense_gqa", {"", 1, 1, 4, 2, 0, true, 0.f}, QkNormAndGate},
                      OptionsCase{"qk_norm_gate_dense_untied", {"", 1, 1, 2, 2, 0, false, 0.f}, QkNormAndGate},
                      OptionsCase{"attention_dropout_moe_all_experts", {"", 2, 2, 2, 2, 0, false, 0.f},
                                  QkNormGateAndAttentionDropout}),
    [](const ::testing::TestParamInfo<OptionsCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace moe
