// Sampling: the KV-cache decoder (sample/decoder.h) gives the logits of Model::Forward over the
// whole context at every position, for several shapes (GQA, MQA, dense, capacity) and recipe
// options; the context window restarts the same way for both samplers; and a trained
// checkpoint samples the same tokens with and without the cache for the same seed, across a
// window restart.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/rmsnorm.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/parallel/comm_single.h"
#include "worker/sample/decoder.h"
#include "worker/sample/generate.h"

namespace moe {
namespace {

struct DecoderCase {
  const char* name;
  testing::ModelCase shape;
  void (*options)(ModelConfig*);  // recipe options to switch on (null: none)
};

void NoOptions(ModelConfig*) {}
// Expert options (MODEL.md "Options: Experts"); expert dropout is training-only, so not here.
void RelU2Shared(ModelConfig* c) {
  c->activation = ModelConfig::Activation::kRelu2;
  c->shared_experts = 2;
  c->shared_ffn = 16;
}
void GeluSigmoidBias(ModelConfig* c) {
  c->activation = ModelConfig::Activation::kGelu;
  c->router_sigmoid = true;
  c->router_temperature = 0.7f;
  c->bias_update_rate = 0.001f;
  c->expert_dropout = 0.5f;  // must not act outside training
}
void GeluShared(ModelConfig* c) {
  c->activation = ModelConfig::Activation::kGelu;
  c->shared_experts = 1;
  c->shared_ffn = 20;
}
void QkNormAndGate(ModelConfig* cfg) {
  cfg->qk_norm = true;
  cfg->attn_gate = true;
  cfg->attn_dropout = 0.2f;  // training only: sampling must not drop
}
// model.norm_eps far from the default, so that a norm left at 1e-5 would show.
void QkNormLargeEps(ModelConfig* cfg) {
  cfg->qk_norm = true;
  cfg->norm_eps = 0.05f;
}

// The prompt the tests below feed (x_t = (11 t + 3) mod V) and the model's logits (T, V) for it,
// one sequence, no training.
std::vector<int32_t> Prompt(int T, int V) {
  std::vector<int32_t> x(T);
  for (int t = 0; t < T; ++t) x[t] = (t * 11 + 3) % V;
  return x;
}
std::vector<float> PromptLogits(Model& model, const std::vector<int32_t>& x) {
  const int T = static_cast<int>(x.size());
  std::vector<int32_t> y(T, 0);
  BatchContext bc;
  bc.train = false;
  bc.global_tokens = T;
  bc.loss_scale = 1.0f / T;
  model.Forward(x.data(), y.data(), 1, bc);
  return model.logits();
}

class DecoderMatchesForward : public ::testing::TestWithParam<DecoderCase> {};

TEST_P(DecoderMatchesForward, AtEveryPosition) {
  kernels::SetNumThreads(1);
  const DecoderCase& c = GetParam();
  const int V = 37, D = 32, T = 12, F = 24;
  ModelConfig cfg = testing::CaseConfig(c.shape, V, D, T, F);
  cfg.dropout = 0;
  if (c.options) c.options(&cfg);
  auto comm = CreateSingleProcessCommunicator();
  Model model(cfg, comm.get());
  model.InitParams(7);
  if (cfg.balances_by_bias()) {  // biases that change choices: the decoder must route with them
    std::vector<float> bias(static_cast<size_t>(cfg.layers) * cfg.experts);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = 0.02f * static_cast<float>(i % 5);
    model.SetRouterBiases(bias);
  }
  const std::vector<int32_t> x = Prompt(T, V);
  const std::vector<float> full = PromptLogits(model, x);

  CpuDecoder decoder(&model);
  for (int t = 0; t < T; ++t) {
    const std::vector<float>& row = decoder.Step(x[t]);
    double err = 0, ref = 0;
    for (int v = 0; v < V; ++v) {
      err = std::max(err, static_cast<double>(std::fabs(row[v] - full[static_cast<size_t>(t) * V + v])));
      ref = std::max(ref, static_cast<double>(std::fabs(full[static_cast<size_t>(t) * V + v])));
    }
    EXPECT_LT(err, 1e-5 * std::max(1.0, ref)) << c.name << " position " << t;
  }
  EXPECT_EQ(decoder.length(), T);
  decoder.Reset();
  EXPECT_EQ(decoder.length(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DecoderMatchesForward,
    ::testing::Values(DecoderCase{"moe_gqa", {"moe_gqa", 4, 2, 4, 2, 0, true, 0}, NoOptions},
                      DecoderCase{"moe_mqa_untied", {"moe_mqa", 4, 1, 4, 1, 0, false, 0}, NoOptions},
                      DecoderCase{"dense", {"dense", 1, 1, 2, 2, 0, true, 0}, NoOptions},
                      DecoderCase{"moe_relu2_shared", {"moe", 4, 2, 4, 2, 0, true, 0}, RelU2Shared},
                      DecoderCase{"moe_gelu_sigmoid_bias", {"moe", 4, 2, 4, 4, 0, false, 0}, GeluSigmoidBias},
                      DecoderCase{"dense_gelu_shared", {"dense", 1, 1, 2, 2, 0, true, 0}, GeluShared},
                      DecoderCase{"qk_norm_gate_gqa", {"qk", 4, 2, 4, 2, 0, true, 0}, QkNormAndGate},
                      DecoderCase{"qk_norm_gate_dense_mqa", {"qk", 1, 1, 4, 1, 0, false, 0}, QkNormAndGate},
                      DecoderCase{"qk_norm_eps", {"qk", 4, 2, 4, 2, 0, true, 0}, QkNormLargeEps}),
    [](const ::testing::TestParamInfo<DecoderCase>& info) { return std::string(info.param.name); });

// model.norm_eps reaches the model's norms: another value moves the logits, the default's value
// given again leaves every bit (the decoder at another value: DecoderMatchesForward's qk_norm_eps).
TEST(NormEps, EveryNormOfTheModelTakesIt) {
  kernels::SetNumThreads(1);
  const int V = 37, D = 32, T = 12, F = 24;
  auto logits = [&](float eps) {
    ModelConfig cfg = testing::CaseConfig({"qk", 4, 2, 4, 2, 0, true, 0}, V, D, T, F);
    cfg.dropout = 0;
    cfg.qk_norm = true;
    cfg.norm_eps = eps;
    auto comm = CreateSingleProcessCommunicator();
    Model model(cfg, comm.get());
    model.InitParams(7);
    return PromptLogits(model, Prompt(T, V));
  };
  const std::vector<float> base = logits(kernels::kRmsNormEps), again = logits(1e-5f), other = logits(0.05f);
  EXPECT_EQ(base, again);
  double moved = 0;
  for (size_t i = 0; i < base.size(); ++i) moved = std::max(moved, double{std::fabs(base[i] - other[i])});
  EXPECT_GT(moved, 1e-3) << "model.norm_eps 0.05 left the logits as they were at 1e-5";
}

TEST(ContextStart, RestartsFromTheLastHalfWindowOnlyWhenFull) {
  EXPECT_EQ(ContextStart(0, 5, 8), 0);
  EXPECT_EQ(ContextStart(0, 8, 8), 0);
  EXPECT_EQ(ContextStart(0, 9, 8), 5);   // 9 tokens do not fit: keep the last 4
  EXPECT_EQ(ContextStart(5, 12, 8), 5);  // 7 since the restart still fit
  EXPECT_EQ(ContextStart(5, 14, 8), 10);
  EXPECT_EQ(ContextStart(0, 3, 1), 2);   // a window of one token keeps one
  EXPECT_EQ(ContextStart(0, 100, 8), 96);  // a long prompt starts at its last half window
}

// The checkpoint directory of the spec trained for 3 steps on one rank ("" when it did not train).
std::string TrainThreeSteps(moe::v1::JobSpec spec) {
  kernels::SetNumThreads(1);
  spec.mutable_train()->set_steps(3);
  spec.mutable_train()->set_eval_every(3);
  spec.mutable_train()->set_eval_batches(1);
  Dataset data = *LoadDataset(spec.data());
  const std::string dir = testing::MakeTempDir(spec.name() + "-");
  TrainerOptions train;
  train.checkpoint_dir = dir;
  return testing::TrainOnOneRank(spec, &data, train).trainer != nullptr ? dir : "";
}

// A trained checkpoint of the spec: 200 sampled tokens with T = 32 restart the window several
// times, and the cached and uncached samplers give the same ones for the same seed.
void ExpectCachedAndUncachedSamplersAgree(const moe::v1::JobSpec& spec) {
  const std::string dir = TrainThreeSteps(spec);
  ASSERT_FALSE(dir.empty());
  SampleOptions opts;
  opts.checkpoint = dir;
  opts.prompt = "ROMEO: ";
  opts.tokens = 200;
  opts.temperature = 1.0;
  opts.top_k = 0;
  opts.seed = 99;
  opts.device = "cpu";  // the GPU sampler has its own test (cuda_decoder_test)
  std::string streamed;
  opts.on_token = [&streamed](const std::string& piece) { streamed += piece; };
  absl::StatusOr<std::string> cached = GenerateText(opts);
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(opts.prompt + streamed, *cached);  // every token was streamed as it came
  opts.kv_cache = false;
  opts.on_token = nullptr;
  absl::StatusOr<std::string> uncached = GenerateText(opts);
  ASSERT_TRUE(uncached.ok()) << uncached.status();
  EXPECT_EQ(*cached, *uncached);
  EXPECT_EQ(cached->size(), opts.prompt.size() + 200);  // char tokens: one byte each
}

TEST(Sampling, CachedAndUncachedSamplersGiveTheSameTokens) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.set_name("sample-kv");
  ExpectCachedAndUncachedSamplersAgree(spec);
}

// A job trained with a capacity factor samples dropless, as the cached decoder (one token at a
// time never fills a capacity) and Hugging Face's Mixtral do: the whole-context sampler applied
// the capacity to the context's tokens and dropped the newest ones' experts, so it sampled other
// tokens than the cached one for the same seed.
TEST(Sampling, ACapacityJobSamplesDroplessWithAndWithoutTheCache) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.set_name("sample-capacity");
  spec.mutable_model()->mutable_moe()->set_capacity_factor(0.25);
  ExpectCachedAndUncachedSamplersAgree(spec);
}

// A model whose vocabulary is padded past its tokenizer's (65 characters, 128 rows, as GPT-2's
// 50257 is padded to 50304) draws only ids the tokenizer can write: the padded rows printed
// U+FFFD. After 3 steps the distribution is still nearly flat, so half the draws were padding.
TEST(Sampling, APaddedVocabularyDrawsOnlyTokensTheTokenizerCanWrite) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.set_name("sample-padded");
  spec.mutable_model()->set_vocab_size(128);
  const std::string dir = TrainThreeSteps(spec);
  ASSERT_FALSE(dir.empty());
  SampleOptions opts;
  opts.checkpoint = dir;
  opts.prompt = "ROMEO: ";
  opts.tokens = 300;
  opts.temperature = 4.0;
  opts.device = "cpu";
  for (bool cached : {true, false}) {
    opts.kv_cache = cached;
    absl::StatusOr<std::string> text = GenerateText(opts);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(text->size(), opts.prompt.size() + 300) << *text;  // one byte a token, none replaced
    EXPECT_EQ(text->find("\xEF\xBF\xBD"), std::string::npos) << *text;
  }
}

}  // namespace
}  // namespace moe
