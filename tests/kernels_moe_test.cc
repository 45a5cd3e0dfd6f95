// CPU kernels of the MoE layer: router (softmax, top-k, stats, backward with aux and z terms),
// routing plan with capacity drops, permute/unpermute, and the SwiGLU experts.
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

using moe::testing::GradCheck;
using moe::testing::GradCheckOptions;
using moe::testing::GradCheckResult;
using moe::testing::Randn;
using moe::testing::WeightedSum;
using moe::testing::ExpectGradOk;

// Router logits whose sorted values are at least 0.4 apart, so that a finite-difference step
// never changes the top-k choice: a shuffled ladder plus small noise, per token.
std::vector<float> SpreadLogits(int n, int e, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> noise(-0.05f, 0.05f);
  std::vector<float> logits(int64_t{n} * e);
  std::vector<int> order(e);
  for (int t = 0; t < n; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int x = 0; x < e; ++x) logits[t * e + x] = 0.5f * order[x] - 1.0f + noise(rng);
  }
  return logits;
}

// ---------------------------------------------------------------------------------------------
// Router

class RouterTest : public ::testing::TestWithParam<int> {};  // parameter: k

TEST_P(RouterTest, ForwardMatchesNaive) {
  const int n = 13, e = 5, k = GetParam();
  std::vector<float> logits = Randn(n * e, 20, 1.5f);
  // Exact ties: token 0 all equal; token 1 a three-way tie for the top.
  for (int x = 0; x < e; ++x) logits[x] = 0.25f;
  const float row1[5] = {1.0f, 2.0f, 2.0f, 0.0f, 2.0f};
  std::copy(row1, row1 + 5, logits.begin() + e);
  std::vector<float> probs(n * e), lse(n), weights(n * k);
  std::vector<int32_t> idx(n * k);
  RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k);
  for (int t = 0; t < n; ++t) {
    double sum = 0.0;
    for (int x = 0; x < e; ++x) sum += std::exp(double{logits[t * e + x]});
    EXPECT_NEAR(lse[t], std::log(sum), 1e-5);
    std::vector<int> order(e);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),  // descending, ties keep the lower index first
                     [&](int a, int b) { return probs[t * e + a] > probs[t * e + b]; });
    double picked = 0.0;
    for (int j = 0; j < k; ++j) picked += std::exp(double{logits[t * e + order[j]]}) / sum;
    for (int x = 0; x < e; ++x) {
      EXPECT_NEAR(probs[t * e + x], std::exp(double{logits[t * e + x]}) / sum, 1e-6);
    }
    for (int j = 0; j < k; ++j) {
      EXPECT_EQ(idx[t * k + j], order[j]) << "token " << t << " choice " << j;
      EXPECT_NEAR(weights[t * k + j], std::exp(double{logits[t * e + order[j]]}) / sum / picked,
                  1e-6);
    }
  }
  for (int j = 0; j < k; ++j) EXPECT_EQ(idx[j], j);  // all tied: 0, 1, 2, ...
  const int want_row1[4] = {1, 2, 4, 0};
  for (int j = 0; j < k; ++j) EXPECT_EQ(idx[k + j], want_row1[j]);
}

TEST_P(RouterTest, BackwardWithAuxAndZMatchesFiniteDifferences) {
  const int n = 7, e = 5, k = GetParam();
  std::vector<float> logits = SpreadLogits(n, e, 21 + k);
  std::vector<float> dweights = Randn(n * k, 22), aux = Randn(e, 23, 0.5f);
  const float z_scale = 0.3f;
  std::vector<float> probs(n * e), lse(n), weights(n * k);
  std::vector<int32_t> idx(n * k);
  RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k);
  std::vector<float> dlogits(n * e, 0.0f);
  RouterBackward(dlogits.data(), dweights.data(), probs.data(), lse.data(), idx.data(), aux.data(),
                 z_scale, n, e, k);
  const std::vector<int32_t> idx0 = idx;
  auto loss = [&] {
    RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k);
    EXPECT_EQ(idx, idx0) << "a finite-difference step changed the top-k choice";
    double l = WeightedSum(weights, dweights);
    for (int t = 0; t < n; ++t) {
      for (int x = 0; x < e; ++x) l += double{aux[x]} * probs[t * e + x];
      l += double{z_scale} * lse[t] * lse[t];
    }
    return l;
  };
  // fp32 softmax, eps 1e-2 on logits spread 0.4 apart: max relative error 1e-2 (floor 1e-2).
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = n * e;
  ExpectGradOk(GradCheck(loss, {{"logits", logits.data(), dlogits.data(), n * e}}, opt), 1e-2);

  RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, k);
  // Each term alone, too (null dweights / null aux / zero z_scale are separate code paths).
  std::vector<float> only_w(n * e, 0.0f), only_aux(n * e, 0.0f), only_z(n * e, 0.0f);
  RouterBackward(only_w.data(), dweights.data(), probs.data(), lse.data(), idx.data(), nullptr,
                 0.0f, n, e, k);
  RouterBackward(only_aux.data(), nullptr, probs.data(), lse.data(), idx.data(), aux.data(), 0.0f,
                 n, e, k);
  RouterBackward(only_z.data(), nullptr, probs.data(), lse.data(), idx.data(), nullptr, z_scale, n,
                 e, k);
  for (int i = 0; i < n * e; ++i) {
    EXPECT_NEAR(only_w[i] + only_aux[i] + only_z[i], dlogits[i], 1e-6);
    if (k == 1) {
      EXPECT_EQ(only_w[i], 0.0f);  // w = p / p = 1 whatever the logits
    }
  }
}

INSTANTIATE_TEST_SUITE_P(K, RouterTest, ::testing::Values(1, 2, 3, 4));

TEST(RouterStats, MatchesNaiveAndTreatsZeroProbabilityAsZeroEntropy) {
  const int n = 3, e = 5;
  // Token 2 has experts whose probability underflows in fp32: they count as the smallest normal
  // float (kernels/router.cc), and a probability of exactly 0 adds no entropy.
  std::vector<float> logits = {0.1f, -0.3f,   0.7f,    0.0f, 1.2f,  //
                               2.0f, 2.0f,    -1.0f,   0.5f, 0.0f,  //
                               0.0f, -200.0f, -300.0f, 1.0f, -250.0f};
  std::vector<float> probs(n * e), lse(n), weights(n * 2);
  std::vector<int32_t> idx(n * 2);
  RouterForward(probs.data(), lse.data(), idx.data(), weights.data(), logits.data(), n, e, 2);
  ASSERT_EQ(probs[2 * e + 1], std::numeric_limits<float>::min());
  probs[2 * e + 2] = 0.0f;
  std::vector<double> prob_sum(e, 1.0);  // accumulates onto existing values
  double z_sum = 2.0, entropy_sum = 3.0;
  RouterStats(prob_sum.data(), &z_sum, &entropy_sum, probs.data(), lse.data(), n, e);
  double want_z = 2.0, want_ent = 3.0;
  for (int t = 0; t < n; ++t) {
    want_z += double{lse[t]} * lse[t];
    for (int x = 0; x < e; ++x) {
      const double p = probs[t * e + x];
      if (p > 0) want_ent -= p * std::log(p);
    }
  }
  for (int x = 0; x < e; ++x) {
    EXPECT_NEAR(prob_sum[x],
                1.0 + double{probs[x]} + double{probs[e + x]} + double{probs[2 * e + x]}, 1e-12);
  }
  EXPECT_NEAR(z_sum, want_z, 1e-9);
  EXPECT_NEAR(entropy_sum, want_ent, 1e-9);
  EXPECT_TRUE(std::isfinite(entropy_sum));
}

// ---------------------------------------------------------------------------------------------
// Routing plan

// 6 tokens, k = 2, 5 experts; expert 4 gets nothing. With capacity_factor 0.8 the capacity is
// ceil(0.8 * 6 * 2 / 5) = ceil(1.92) = 2, and assignments (token, choice) are taken in order.
const std::vector<int32_t> kHandIdx = {1, 0,   // t0: a0 -> e1, a1 -> e0
                                       1, 2,   // t1: a2 -> e1, a3 -> e2
                                       0, 1,   // t2: a4 -> e0, a5 -> e1 (3rd for e1: dropped)
                                       2, 0,   // t3: a6 -> e2, a7 -> e0 (3rd for e0: dropped)
                                       1, 3,   // t4: a8 -> e1 (dropped), a9 -> e3
                                       1, 2};  // t5: a10 -> e1, a11 -> e2 (both dropped)

TEST(RoutingPlan, CapacityDropsHandMadeRoutingExactly) {
  const RoutingPlan plan = BuildRoutingPlan(kHandIdx.data(), 6, 2, 5, moe::ExpertCapacity(0.8, 6, 2, 5));
  EXPECT_EQ(plan.n, 6);
  EXPECT_EQ(plan.k, 2);
  EXPECT_EQ(plan.e, 5);
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_EQ(plan.routed, (std::vector<int64_t>{3, 5, 3, 1, 0}));
  EXPECT_EQ(plan.counts, (std::vector<int32_t>{2, 2, 2, 1, 0}));
  EXPECT_EQ(plan.offsets, (std::vector<int32_t>{0, 2, 4, 6, 7, 7}));
  EXPECT_EQ(plan.dropped, 5);
  EXPECT_EQ(plan.kept(), 7);
  EXPECT_EQ(plan.slot_to_assignment, (std::vector<int32_t>{1, 4, 0, 2, 3, 6, 9}));
  EXPECT_EQ(plan.assignment_to_slot,
            (std::vector<int32_t>{2, 0, 3, 4, 1, -1, 5, -1, -1, 6, -1, -1}));
}

TEST(RoutingPlan, DroplessKeepsEverythingAndCapacityRoundsUp) {
  const RoutingPlan plan = BuildRoutingPlan(kHandIdx.data(), 6, 2, 5, moe::ExpertCapacity(0.0, 6, 2, 5));
  EXPECT_EQ(plan.capacity, 0);
  EXPECT_EQ(plan.dropped, 0);
  EXPECT_EQ(plan.counts, (std::vector<int32_t>{3, 5, 3, 1, 0}));
  EXPECT_EQ(plan.routed, (std::vector<int64_t>{3, 5, 3, 1, 0}));
  EXPECT_EQ(plan.slot_to_assignment, (std::vector<int32_t>{1, 4, 7, 0, 2, 5, 8, 10, 3, 6, 11, 9}));
  for (int s = 0; s < plan.kept(); ++s) {
    EXPECT_EQ(plan.assignment_to_slot[plan.slot_to_assignment[s]], s);
  }
  EXPECT_EQ(BuildRoutingPlan(kHandIdx.data(), 6, 2, 5, moe::ExpertCapacity(1.0, 6, 2, 5)).capacity, 3);  // ceil(2.4)
  // Capacity large enough for all: same as dropless but with the capacity recorded.
  const RoutingPlan roomy = BuildRoutingPlan(kHandIdx.data(), 6, 2, 5, moe::ExpertCapacity(2.5, 6, 2, 5));
  EXPECT_EQ(roomy.capacity, 6);
  EXPECT_EQ(roomy.dropped, 0);
  EXPECT_EQ(roomy.slot_to_assignment, plan.slot_to_assignment);
  // A factor whose capacity is past int64 (validate takes any finite c >= 0) is every assignment,
  // not an out-of-range conversion (INT64_MIN on x86, which only happened to read as dropless).
  EXPECT_EQ(moe::ExpertCapacity(20.0, 6, 2, 5), 12);
  EXPECT_EQ(moe::ExpertCapacity(1e300, 6, 2, 5), 12);
  const RoutingPlan huge = BuildRoutingPlan(kHandIdx.data(), 6, 2, 5, moe::ExpertCapacity(1e300, 6, 2, 5));
  EXPECT_EQ(huge.dropped, 0);
  EXPECT_EQ(huge.slot_to_assignment, plan.slot_to_assignment);
}

TEST(Permute, ForwardAndBackwardMatchNaiveWithDrops) {
  const int n = 6, k = 2, d = 3;
  const RoutingPlan plan = BuildRoutingPlan(kHandIdx.data(), n, k, 5, moe::ExpertCapacity(0.8, n, k, 5));
  const int kept = plan.kept();
  std::vector<float> x = Randn(n * d, 24), weights = Randn(n * k, 25);
  std::vector<float> xs(kept * d);
  PermuteForward(xs.data(), x.data(), plan, d);
  for (int s = 0; s < kept; ++s) {
    const int t = plan.slot_to_assignment[s] / k;
    for (int c = 0; c < d; ++c) EXPECT_EQ(xs[s * d + c], x[t * d + c]);
  }
  std::vector<float> dxs = Randn(kept * d, 26), dx(n * d, 1.0f), want_dx(n * d, 1.0f);
  PermuteBackward(dx.data(), dxs.data(), plan, d);
  for (int s = 0; s < kept; ++s) {
    const int t = plan.slot_to_assignment[s] / k;
    for (int c = 0; c < d; ++c) want_dx[t * d + c] += dxs[s * d + c];
  }
  for (int i = 0; i < n * d; ++i) EXPECT_NEAR(dx[i], want_dx[i], 1e-6);

  std::vector<float> ys = Randn(kept * d, 27), out(n * d, 9.0f);
  UnpermuteForward(out.data(), ys.data(), weights.data(), plan, d);
  for (int t = 0; t < n; ++t) {
    for (int c = 0; c < d; ++c) {
      double want = 0.0;
      for (int j = 0; j < k; ++j) {
        const int s = plan.assignment_to_slot[t * k + j];
        if (s >= 0) want += double{weights[t * k + j]} * ys[s * d + c];
      }
      EXPECT_NEAR(out[t * d + c], want, 1e-6);
    }
  }
  for (int c = 0; c < d; ++c) EXPECT_EQ(out[5 * d + c], 0.0f);  // token 5: all dropped

  std::vector<float> dout = Randn(n * d, 28), dys(kept * d, 0.0f), dweights(n * k, 0.0f);
  UnpermuteBackward(dys.data(), dweights.data(), dout.data(), ys.data(), weights.data(), plan, d);
  for (int a = 0; a < n * k; ++a) {
    const int s = plan.assignment_to_slot[a], t = a / k;
    if (s < 0) {
      EXPECT_EQ(dweights[a], 0.0f);
      continue;
    }
    double dot = 0.0;
    for (int c = 0; c < d; ++c) {
      dot += double{dout[t * d + c]} * ys[s * d + c];
      EXPECT_NEAR(dys[s * d + c], weights[a] * dout[t * d + c], 1e-6);
    }
    EXPECT_NEAR(dweights[a], dot, 1e-5);
  }
}

// ---------------------------------------------------------------------------------------------
// Experts

TEST(Swiglu, BackwardMatchesFiniteDifferences) {
  const int n = 37;
  std::vector<float> g = Randn(n, 29, 2.0f), u = Randn(n, 30), r = Randn(n, 31), h(n);
  SwigluForward(h.data(), g.data(), u.data(), n);
  for (int i = 0; i < n; ++i) {
    EXPECT_NEAR(h[i], g[i] / (1.0 + std::exp(-double{g[i]})) * u[i], 1e-6);
  }
  std::vector<float> dg(n, 0.0f), du(n, 0.0f);
  SwigluBackward(dg.data(), du.data(), r.data(), g.data(), u.data(), n);
  auto loss = [&] {
    SwigluForward(h.data(), g.data(), u.data(), n);
    return WeightedSum(h, r);
  };
  // fp32, eps 1e-2: max relative error 1e-2.
  GradCheckOptions opt;
  opt.eps = 1e-2;
  ExpectGradOk(GradCheck(loss, {{"g", g.data(), dg.data(), n}, {"u", u.data(), du.data(), n}}, opt),
               1e-2);
}

TEST(Experts, ForwardMatchesNaiveAndBackwardMatchesFiniteDifferences) {
  const int e_local = 5, d = 6, f = 7;
  const std::vector<int32_t> counts = {3, 0, 4, 1, 0};  // experts 1 and 4 get no rows
  const int m = 8;
  std::vector<float> xs = Randn(m * d, 32), w1 = Randn(e_local * d * f, 33, 0.5f);
  std::vector<float> w3 = Randn(e_local * d * f, 34, 0.5f), w2 = Randn(e_local * f * d, 35, 0.5f);
  std::vector<float> r = Randn(m * d, 36);
  std::vector<float> ys(m * d), g(m * f), u(m * f), h(m * f);
  ExpertsForward(ys.data(), g.data(), u.data(), h.data(), xs.data(), w1.data(), w3.data(),
                 w2.data(), counts.data(), e_local, d, f);
  const std::vector<double> want =
      testing::NaiveExperts(xs, w1.data(), w3.data(), w2.data(), counts, d, f, ExpertActivation::kSwiglu);
  for (int i = 0; i < m * d; ++i) EXPECT_NEAR(ys[i], want[i], 1e-5) << "row " << i / d;

  std::vector<float> dxs(m * d, 0.0f), dw1(e_local * d * f, 0.0f), dw3(e_local * d * f, 0.0f);
  std::vector<float> dw2(e_local * f * d, 0.0f);
  // Scratch starts as garbage: the kernel must not read what it did not write.
  std::vector<float> scratch(2 * m * f, std::numeric_limits<float>::quiet_NaN());
  ExpertsBackward(dxs.data(), dw1.data(), dw3.data(), dw2.data(), r.data(), xs.data(), g.data(),
                  u.data(), h.data(), w1.data(), w3.data(), w2.data(), counts.data(), e_local, d, f,
                  scratch.data());
  // Experts with no rows get exactly zero gradient.
  for (int i = 0; i < d * f; ++i) {
    EXPECT_EQ(dw1[1 * d * f + i], 0.0f);
    EXPECT_EQ(dw3[4 * d * f + i], 0.0f);
    EXPECT_EQ(dw2[4 * d * f + i], 0.0f);
  }
  auto loss = [&] {
    ExpertsForward(ys.data(), g.data(), u.data(), h.data(), xs.data(), w1.data(), w3.data(),
                   w2.data(), counts.data(), e_local, d, f);
    return WeightedSum(ys, r);
  };
  // fp32 forward, eps 1e-2: max relative error 1e-2 (floor 1e-2).
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = 60;
  ExpectGradOk(GradCheck(loss,
                         {{"xs", xs.data(), dxs.data(), m * d},
                          {"w1", w1.data(), dw1.data(), e_local * d * f},
                          {"w3", w3.data(), dw3.data(), e_local * d * f},
                          {"w2", w2.data(), dw2.data(), e_local * f * d}},
                         opt),
               1e-2);
}

}  // namespace
}  // namespace moe::kernels
