// CPU kernels of the expert options (MODEL.md "Options: Experts"): relu2 and gelu experts (no
// W3), the router's sigmoid score, temperature and balancing bias (forward against a naive
// version, backward with the aux and z terms against finite differences), expert dropout in
// the routing plan, and loss-free balancing's bookkeeping (which experts are off, the bias
// update, its spread).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/experts.h"
#include "kernels/router.h"
#include "kernels/routing_plan.h"
#include "tests/support/gradcheck.h"
#include "tests/support/naive_experts.h"
#include "worker/model/moe_bookkeeping.h"

namespace moe::kernels {
namespace {

using moe::testing::ExpectGradOk;
using moe::testing::GradCheck;
using moe::testing::GradCheckOptions;
using moe::testing::NaiveAct;
using moe::testing::Randn;
using moe::testing::WeightedSum;

class UngatedExpertsTest : public ::testing::TestWithParam<ExpertActivation> {};

TEST_P(UngatedExpertsTest, ActivationMatchesNaiveAndFiniteDifferences) {
  const ExpertActivation act = GetParam();
  const int n = 41;
  std::vector<float> g = Randn(n, 40, 1.5f), r = Randn(n, 41), h(n);
  for (float& v : g) v += v > 0 ? 0.05f : -0.05f;  // keep relu2's kink out of the eps steps
  ActivationForward(act, h.data(), g.data(), n);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(h[i], NaiveAct(act, g[i]), 1e-5) << i;
  std::vector<float> dg(n, 0.5f);  // accumulates
  ActivationBackward(act, dg.data(), r.data(), g.data(), n);
  for (float& v : dg) v -= 0.5f;
  auto loss = [&] {
    ActivationForward(act, h.data(), g.data(), n);
    return WeightedSum(h, r);
  };
  GradCheckOptions opt;
  opt.eps = 1e-2;
  ExpectGradOk(GradCheck(loss, {{"g", g.data(), dg.data(), n}}, opt), 1e-2);
}

TEST_P(UngatedExpertsTest, ExpertsWithoutW3MatchNaiveAndFiniteDifferences) {
  const ExpertActivation act = GetParam();
  const int e_local = 4, d = 6, f = 7;
  const std::vector<int32_t> counts = {3, 0, 4, 2};
  const int m = 9;
  std::vector<float> xs = Randn(m * d, 42), w1 = Randn(e_local * d * f, 43, 0.5f);
  std::vector<float> w2 = Randn(e_local * f * d, 44, 0.5f), r = Randn(m * d, 45);
  std::vector<float> ys(m * d), g(m * f), h(m * f);
  ExpertsForward(ys.data(), g.data(), nullptr, h.data(), xs.data(), w1.data(), nullptr, w2.data(), counts.data(),
                 e_local, d, f, act);
  const std::vector<double> want = testing::NaiveExperts(xs, w1.data(), nullptr, w2.data(), counts, d, f, act);
  for (int i = 0; i < m * d; ++i) EXPECT_NEAR(ys[i], want[i], 1e-5) << "row " << i / d;
  std::vector<float> dxs(m * d, 0.0f), dw1(e_local * d * f, 0.0f), dw2(e_local * f * d, 0.0f);
  std::vector<float> scratch(2 * m * f, std::numeric_limits<float>::quiet_NaN());
  ExpertsBackward(dxs.data(), dw1.data(), nullptr, dw2.data(), r.data(), xs.data(), g.data(), nullptr, h.data(),
                  w1.data(), nullptr, w2.data(), counts.data(), e_local, d, f, scratch.data(), act);
  for (int i = 0; i < d * f; ++i) EXPECT_EQ(dw1[1 * d * f + i], 0.0f);  // expert 1 has no rows
  auto loss = [&] {
    ExpertsForward(ys.data(), g.data(), nullptr, h.data(), xs.data(), w1.data(), nullptr, w2.data(),
                   counts.data(), e_local, d, f, act);
    return WeightedSum(ys, r);
  };
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = 60;
  ExpectGradOk(GradCheck(loss,
                         {{"xs", xs.data(), dxs.data(), m * d},
                          {"w1", w1.data(), dw1.data(), e_local * d * f},
                          {"w2", w2.data(), dw2.data(), e_local * f * d}},
                         opt),
               1e-2);
}

INSTANTIATE_TEST_SUITE_P(Activations, UngatedExpertsTest,
                         ::testing::Values(ExpertActivation::kRelu2, ExpertActivation::kGelu),
                         [](const ::testing::TestParamInfo<ExpertActivation>& info) {
                           return std::string(info.param == ExpertActivation::kRelu2 ? "relu2" : "gelu");
                         });

// ---------------------------------------------------------------------------------------------
// Router scoring

struct ScoringCase {
  const char* name;
  bool sigmoid;
  float tau;
  bool bias;
  int k;
};

class RouterScoringTest : public ::testing::TestWithParam<ScoringCase> {};

// Logits whose scores (plus bias) are well apart, so that a finite-difference step never changes
// the top-k choice.
std::vector<float> LadderLogits(int n, int e, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> noise(-0.05f, 0.05f);
  std::vector<float> logits(static_cast<size_t>(n) * e);
  std::vector<int> order(e);
  for (int t = 0; t < n; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int x = 0; x < e; ++x) logits[t * e + x] = 0.8f * order[x] - 1.6f + noise(rng);
  }
  return logits;
}

TEST_P(RouterScoringTest, ForwardMatchesNaive) {
  const ScoringCase& c = GetParam();
  const int n = 11, e = 5, k = c.k;
  std::vector<float> logits = Randn(n * e, 50, 1.5f), bias = Randn(e, 51, 0.3f);
  RouterScoring s;
  s.sigmoid = c.sigmoid;
  s.temperature = c.tau;
  s.bias = c.bias ? bias.data() : nullptr;
  std::vector<float> probs(n * e), lse(n), weights(n * k);
  std::vector<int32_t> idx(n * k);
  RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k, s);
  for (int t = 0; t < n; ++t) {
    const float* z = logits.data() + t * e;
    std::vector<double> p(e), key(e);
    double mx = *std::max_element(z, z + e), raw = 0, soft = 0;
    for (int x = 0; x < e; ++x) {
      raw += std::exp(z[x] - mx);
      soft += std::exp((z[x] - mx) / c.tau);
    }
    for (int x = 0; x < e; ++x) {
      p[x] = c.sigmoid ? 1.0 / (1.0 + std::exp(-z[x] / c.tau)) : std::exp((z[x] - mx) / c.tau) / soft;
      key[x] = p[x] + (c.bias ? bias[x] : 0.0);
      EXPECT_NEAR(probs[t * e + x], p[x], 1e-6);
    }
    EXPECT_NEAR(lse[t], mx + std::log(raw), 1e-5);  // of the raw logits, whatever the scoring
    std::vector<int> order(e);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
    double picked = 0;
    for (int j = 0; j < k; ++j) picked += p[order[j]];
    for (int j = 0; j < k; ++j) {
      EXPECT_EQ(idx[t * k + j], order[j]) << "token " << t;
      EXPECT_NEAR(weights[t * k + j], p[order[j]] / picked, 1e-6);  // the bias is not in the weights
    }
  }
}

TEST_P(RouterScoringTest, BackwardWithAuxAndZMatchesFiniteDifferences) {
  const ScoringCase& c = GetParam();
  const int n = 7, e = 5, k = c.k;
  std::vector<float> logits = LadderLogits(n, e, 52 + k);
  std::vector<float> bias(e, 0.0f);
  for (int x = 0; x < e; ++x) bias[x] = 0.01f * x;  // small: the ladder still decides
  std::vector<float> dweights = Randn(n * k, 53), aux = Randn(e, 54, 0.5f);
  const float z_scale = 0.3f;
  RouterScoring s;
  s.sigmoid = c.sigmoid;
  s.temperature = c.tau;
  s.bias = c.bias ? bias.data() : nullptr;
  std::vector<float> probs(n * e), lse(n), weights(n * k);
  std::vector<int32_t> idx(n * k);
  RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k, s);
  std::vector<float> dlogits(n * e, 0.0f);
  RouterBackward(dlogits.data(), dweights.data(), probs.data(), lse.data(), idx.data(), aux.data(), z_scale, n, e,
                 k, s, logits.data());
  const std::vector<int32_t> idx0 = idx;
  auto loss = [&] {
    RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k, s);
    EXPECT_EQ(idx, idx0) << "a finite-difference step changed the top-k choice";
    double l = WeightedSum(weights, dweights);
    for (int t = 0; t < n; ++t) {
      double sum = 0;
      for (int x = 0; x < e; ++x) sum += probs[t * e + x];
      for (int x = 0; x < e; ++x) l += double{aux[x]} * probs[t * e + x] / sum;  // aux through P_e
      l += double{z_scale} * lse[t] * lse[t];
    }
    return l;
  };
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = n * e;
  ExpectGradOk(GradCheck(loss, {{"logits", logits.data(), dlogits.data(), n * e}}, opt), 1e-2);

  // RouterStats normalises sigmoid scores per token: P_e sums to 1 over the experts.
  std::vector<double> prob_sum(e, 0.0);
  double z_sum = 0, ent = 0;
  RouterStats(prob_sum.data(), &z_sum, &ent, probs.data(), lse.data(), n, e, /*normalize=*/c.sigmoid);
  EXPECT_NEAR(std::accumulate(prob_sum.begin(), prob_sum.end(), 0.0), n, 1e-4);
  EXPECT_GT(ent, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Scorings, RouterScoringTest,
                         ::testing::Values(ScoringCase{"softmax_tau07_k2", false, 0.7f, false, 2},
                                           ScoringCase{"softmax_bias_k2", false, 1.0f, true, 2},
                                           ScoringCase{"sigmoid_k1", true, 1.0f, false, 1},
                                           ScoringCase{"sigmoid_tau2_bias_k3", true, 2.0f, true, 3}),
                         [](const ::testing::TestParamInfo<ScoringCase>& info) { return std::string(info.param.name); });

TEST(RouterScoring, DefaultScoringIsTheBaseRouterBitForBit) {
  const int n = 9, e = 6, k = 2;
  std::vector<float> logits = Randn(n * e, 60, 2.0f), dw = Randn(n * k, 61), aux = Randn(e, 62);
  std::vector<float> p1(n * e), p2(n * e), l1(n), l2(n), w1(n * k), w2(n * k);
  std::vector<int32_t> i1(n * k), i2(n * k);
  RouterForward(p1.data(), l1.data(), i1.data(), w1.data(), logits.data(), n, e, k);
  std::vector<float> zero_bias(e, 0.0f);
  RouterScoring with_zero_bias;
  with_zero_bias.bias = zero_bias.data();
  RouterForward(p2.data(), l2.data(), i2.data(), w2.data(), logits.data(), n, e, k, with_zero_bias);
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(i1, i2);
  EXPECT_EQ(w1, w2);
  std::vector<float> d1(n * e, 0.f), d2(n * e, 0.f);
  RouterBackward(d1.data(), dw.data(), p1.data(), l1.data(), i1.data(), aux.data(), 0.1f, n, e, k);
  RouterBackward(d2.data(), dw.data(), p1.data(), l1.data(), i1.data(), aux.data(), 0.1f, n, e, k, with_zero_bias,
                 logits.data());
  EXPECT_EQ(d1, d2);
}

// Scores that underflow in fp32: a sigmoid of logits far below 0 at a small temperature, and a
// softmax pick the balancing bias makes of an expert far below the maximum. Both were 0, so the
// weights p_pick / sum(p_pick) were 0 / 0 and the loss nan at the first step (sigmoid, tau 1e-6;
// softmax, tau 1e-3 with bias_update_rate 1 at step 2).
TEST(RouterScoring, UnderflowingScoresGiveFiniteWeightsAndGradients) {
  const int n = 3, e = 4;
  const std::vector<float> logits = {-0.9f, -0.5f, -0.7f, -0.6f,  //
                                     -0.2f, -0.3f, -0.8f, -0.1f,  //
                                     0.4f,  -0.6f, -0.5f, -0.9f};
  std::vector<float> bias = {-1.0f, -1.0f, 1.0f, 1.0f};  // favours experts 2 and 3
  for (const bool sigmoid : {true, false}) {
    for (const int k : {1, 2}) {
      SCOPED_TRACE(std::string(sigmoid ? "sigmoid" : "softmax") + " k=" + std::to_string(k));
      RouterScoring s;
      s.sigmoid = sigmoid;
      s.temperature = 1e-3f;
      s.bias = bias.data();
      std::vector<float> probs(n * e), lse(n), weights(n * k), dlogits(n * e, 0.f);
      std::vector<int32_t> idx(n * k);
      RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k, s);
      for (int t = 0; t < n; ++t) {
        float sum = 0.f;
        for (int j = 0; j < k; ++j) {
          EXPECT_TRUE(std::isfinite(weights[t * k + j])) << "token " << t;
          EXPECT_GE(idx[t * k + j], 2) << "the bias picks experts 2 and 3";
          sum += weights[t * k + j];
        }
        EXPECT_NEAR(sum, 1.0f, 1e-6f) << "token " << t;
      }
      const std::vector<float> dw = Randn(n * k, 70), aux = Randn(e, 71);
      RouterBackward(dlogits.data(), dw.data(), probs.data(), lse.data(), idx.data(), aux.data(), 0.1f, n, e, k, s,
                     logits.data());
      for (float d : dlogits) EXPECT_TRUE(std::isfinite(d));
      std::vector<double> prob_sum(e, 0.0);
      double z_sum = 0, ent = 0;
      RouterStats(prob_sum.data(), &z_sum, &ent, probs.data(), lse.data(), n, e, /*normalize=*/sigmoid);
      for (double v : prob_sum) EXPECT_TRUE(std::isfinite(v));
      EXPECT_TRUE(std::isfinite(ent));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Expert dropout and loss-free balancing

TEST(ExpertDropout, SwitchedOffExpertsAreCountedApartAndTakeNoCapacity) {
  // 6 tokens, k 2, 4 experts; expert 1 is off.
  const std::vector<int32_t> idx = {0, 1, 1, 2, 0, 3, 1, 0, 2, 0, 0, 1};
  const std::vector<uint8_t> off = {0, 1, 0, 0};
  const RoutingPlan plan = BuildRoutingPlan(idx.data(), 6, 2, 4, /*capacity=*/3, off.data());
  EXPECT_EQ(plan.expert_dropped, 4);  // the four assignments to expert 1
  EXPECT_EQ(plan.dropped, 2);         // expert 0 has 5 assignments, capacity 3
  EXPECT_EQ(plan.routed, (std::vector<int64_t>{5, 4, 2, 1}));
  EXPECT_EQ(plan.counts, (std::vector<int32_t>{3, 0, 2, 1}));
  for (int a = 0; a < 12; ++a) {
    if (idx[a] == 1) {
      EXPECT_EQ(plan.assignment_to_slot[a], -1) << a;
    }
  }
  // Expert 0's first three come first by token order: assignments 0, 4, 7 (not 9, 10).
  EXPECT_GE(plan.assignment_to_slot[7], 0);
  EXPECT_EQ(plan.assignment_to_slot[9], -1);
}

TEST(ExpertDropout, EveryRankDrawsTheSameExpertsAtTheRate) {
  EXPECT_TRUE(moe::ExpertsSwitchedOff(5, 0.0f, 8).empty());
  EXPECT_EQ(moe::ExpertsSwitchedOff(5, 0.3f, 64), moe::ExpertsSwitchedOff(5, 0.3f, 64));
  EXPECT_NE(moe::ExpertsSwitchedOff(5, 0.3f, 64), moe::ExpertsSwitchedOff(6, 0.3f, 64));
  int off = 0;
  const int E = 4000;
  for (uint8_t v : moe::ExpertsSwitchedOff(11, 0.25f, E)) off += v;
  EXPECT_NEAR(off / static_cast<double>(E), 0.25, 0.03);
}

TEST(BiasBalancing, MovesEachBiasTowardTheMeanCount) {
  std::vector<moe::MoeLayerForwardStats> layers(2);
  layers[0].routed = {10, 2, 6, 6};  // mean 6: expert 0 busy, 1 idle, 2 and 3 at the mean
  layers[1].routed = {3, 3, 3, 4};   // mean 3.25
  std::vector<float> b(8, 0.0f);
  b[5] = 0.5f;
  moe::UpdateRouterBiases(&b, layers, 0.01f, 4);
  EXPECT_EQ(b, (std::vector<float>{-0.01f, 0.01f, 0.0f, 0.0f, 0.01f, 0.51f, 0.01f, -0.01f}));
  EXPECT_FLOAT_EQ(moe::RouterBiasSpread(b.data(), 4), 0.02f);
  EXPECT_FLOAT_EQ(moe::RouterBiasSpread(b.data() + 4, 4), 0.52f);
}

}  // namespace
}  // namespace moe::kernels
