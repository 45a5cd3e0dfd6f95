// CPU kernels of the attention options (MODEL.md "Options: Attention"): QK-norm, the attention
// gate and attention dropout, forward against naive double references, backward by finite
// differences; dropout masks that depend on the global token only (any batch split agrees).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_gate.h"
#include "kernels/dropout.h"
#include "kernels/qk_norm.h"
#include "kernels/rmsnorm.h"
#include "tests/support/gradcheck.h"

namespace moe::kernels {
namespace {

using moe::testing::ExpectGradOk;
using moe::testing::GradCheck;
using moe::testing::GradCheckOptions;
using moe::testing::Randn;
using moe::testing::WeightedSum;

// ---------------------------------------------------------------------------------------------
// QK-norm

struct QkShape {
  int n, h, hkv, hd;
};

class QkNormTest : public ::testing::TestWithParam<QkShape> {};

TEST_P(QkNormTest, ForwardMatchesNaiveLeavesVAloneAndBackwardMatchesFiniteDifferences) {
  const QkShape s = GetParam();
  const int row = (s.h + 2 * s.hkv) * s.hd, qk = (s.h + s.hkv) * s.hd;
  const int64_t total = int64_t{s.n} * row;
  std::vector<float> x = Randn(total, 21, 1.5f), r = Randn(total, 22);
  std::vector<float> qw = Randn(s.hd, 23, 0.5f), kw = Randn(s.hd, 24, 0.5f);
  for (float& w : qw) w += 1.0f;
  for (float& w : kw) w += 1.0f;

  const float eps = 0.25f;  // not the default 1e-5: the argument is what the sum adds (model.norm_eps)
  std::vector<float> y = x, rstd(int64_t{s.n} * (s.h + s.hkv)), raw(int64_t{s.n} * qk);
  QkNormForward(y.data(), rstd.data(), raw.data(), qw.data(), kw.data(), s.n, s.h, s.hkv, s.hd, eps);
  for (int i = 0; i < s.n; ++i) {
    for (int hi = 0; hi < s.h + s.hkv; ++hi) {
      const float* v = x.data() + int64_t{i} * row + int64_t{hi} * s.hd;
      double ss = 0;
      for (int c = 0; c < s.hd; ++c) ss += double{v[c]} * v[c];
      const double want_r = 1.0 / std::sqrt(ss / s.hd + eps);
      EXPECT_NEAR(rstd[i * (s.h + s.hkv) + hi], want_r, 1e-5 * want_r);
      const std::vector<float>& w = hi < s.h ? qw : kw;
      for (int c = 0; c < s.hd; ++c) {
        EXPECT_NEAR(y[int64_t{i} * row + int64_t{hi} * s.hd + c], v[c] * want_r * w[c], 1e-5) << i << " " << hi;
        EXPECT_EQ(raw[int64_t{i} * qk + int64_t{hi} * s.hd + c], v[c]);
      }
    }
    for (int c = qk; c < row; ++c) EXPECT_EQ(y[int64_t{i} * row + c], x[int64_t{i} * row + c]) << "v changed";
  }

  // Backward: dqkv holds d loss / d y; the q and k parts become d loss / d x in place, v's
  // gradient passes through.
  std::vector<float> dx = r, dqw(s.hd, 0.0f), dkw(s.hd, 0.0f);
  QkNormBackward(dx.data(), dqw.data(), dkw.data(), raw.data(), rstd.data(), qw.data(), kw.data(), s.n, s.h,
                 s.hkv, s.hd);
  auto loss = [&] {
    y = x;
    QkNormForward(y.data(), rstd.data(), nullptr, qw.data(), kw.data(), s.n, s.h, s.hkv, s.hd, eps);
    return WeightedSum(y, r);
  };
  // fp32 forward, eps 1e-2 on O(1) inputs, every element: max relative error 1e-2 (floor 1e-2).
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = 2000;
  ExpectGradOk(GradCheck(loss,
                         {{"qkv", x.data(), dx.data(), total},
                          {"q_norm", qw.data(), dqw.data(), s.hd},
                          {"k_norm", kw.data(), dkw.data(), s.hd}},
                         opt),
               1e-2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, QkNormTest,
                         ::testing::Values(QkShape{5, 4, 2, 8},    // GQA
                                           QkShape{3, 3, 3, 6},    // no GQA
                                           QkShape{9, 2, 1, 16},   // one kv head
                                           QkShape{1, 1, 1, 4}));  // a single row

TEST(QkNorm, WeightGradientsAccumulate) {
  const int n = 4, h = 2, hkv = 1, hd = 8, row = (h + 2 * hkv) * hd;
  std::vector<float> x = Randn(n * row, 31), r = Randn(n * row, 32), qw(hd, 1.0f), kw(hd, 1.0f);
  std::vector<float> rstd(n * (h + hkv)), raw(n * (h + hkv) * hd);
  QkNormForward(x.data(), rstd.data(), raw.data(), qw.data(), kw.data(), n, h, hkv, hd, kRmsNormEps);
  std::vector<float> d1 = r, d2 = r, dqw1(hd, 0.0f), dkw1(hd, 0.0f), dqw2(hd, 1.0f), dkw2(hd, 2.0f);
  QkNormBackward(d1.data(), dqw1.data(), dkw1.data(), raw.data(), rstd.data(), qw.data(), kw.data(), n, h, hkv, hd);
  QkNormBackward(d2.data(), dqw2.data(), dkw2.data(), raw.data(), rstd.data(), qw.data(), kw.data(), n, h, hkv, hd);
  for (int c = 0; c < hd; ++c) {
    EXPECT_NEAR(dqw2[c], dqw1[c] + 1.0f, 1e-5);
    EXPECT_NEAR(dkw2[c], dkw1[c] + 2.0f, 1e-5);
  }
  EXPECT_EQ(d1, d2);
}

// ---------------------------------------------------------------------------------------------
// Attention gate

TEST(AttentionGate, ForwardIsSigmoidTimesYAndBackwardMatchesFiniteDifferences) {
  const int64_t count = 6 * 24;
  std::vector<float> y = Randn(count, 41), logits = Randn(count, 42, 2.0f), r = Randn(count, 43);
  std::vector<float> gate = logits, out(count);
  AttentionGateForward(out.data(), gate.data(), y.data(), count);
  for (int64_t i = 0; i < count; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double{logits[i]}));
    EXPECT_NEAR(gate[i], s, 1e-6) << i;
    EXPECT_NEAR(out[i], y[i] * s, 1e-6) << i;
  }
  std::vector<float> dy(count, 1.0f), dlogits(count, 5.0f);  // dy accumulates, dlogits is overwritten
  AttentionGateBackward(dy.data(), dlogits.data(), r.data(), y.data(), gate.data(), count);
  for (float& v : dy) v -= 1.0f;
  std::vector<float> g(count);
  auto loss = [&] {
    g = logits;
    AttentionGateForward(out.data(), g.data(), y.data(), count);
    return WeightedSum(out, r);
  };
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = 1000;
  ExpectGradOk(GradCheck(loss, {{"y", y.data(), dy.data(), count}, {"logits", logits.data(), dlogits.data(), count}},
                         opt),
               1e-2);
}

TEST(AttentionGate, InPlaceForInference) {
  const int64_t count = 40;
  std::vector<float> y = Randn(count, 44), logits = Randn(count, 45), gate = logits, out(count);
  AttentionGateForward(out.data(), gate.data(), y.data(), count);
  std::vector<float> inplace = y, gate2 = logits;
  AttentionGateForward(inplace.data(), gate2.data(), inplace.data(), count);
  EXPECT_EQ(inplace, out);
}

// ---------------------------------------------------------------------------------------------
// Attention dropout

struct DropShape {
  int b, t, h, hkv, hd;
  float p;
};

// Naive causal attention with the dropout factors drawn here from the counter directly, in
// double: out = sum_j P[i, j] M[i, j] v_j, M = keep / (1 - p).
std::vector<double> NaiveDroppedAttention(const std::vector<float>& qkv, const DropShape& s, uint64_t seed,
                                          int64_t first_token, int64_t* dropped, int64_t* drawn) {
  const int row = (s.h + 2 * s.hkv) * s.hd;
  std::vector<double> out(int64_t{s.b} * s.t * s.h * s.hd, 0.0);
  for (int bi = 0; bi < s.b; ++bi) {
    for (int hi = 0; hi < s.h; ++hi) {
      const int g = hi / (s.h / s.hkv);
      for (int i = 0; i < s.t; ++i) {
        std::vector<double> p(i + 1);
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int c = 0; c < s.hd; ++c) {
            dot += double{qkv[(bi * s.t + i) * row + hi * s.hd + c]} * qkv[(bi * s.t + j) * row + (s.h + g) * s.hd + c];
          }
          p[j] = dot / std::sqrt(static_cast<double>(s.hd));
          mx = std::max(mx, p[j]);
        }
        for (int j = 0; j <= i; ++j) sum += std::exp(p[j] - mx);
        const uint64_t query = static_cast<uint64_t>(first_token + int64_t{bi} * s.t + i);
        for (int j = 0; j <= i; ++j) {
          const bool keep = CounterUniform(seed, AttentionDropoutCounter(query, hi, s.h, s.t, j)) >= s.p;
          *drawn += 1;
          *dropped += keep ? 0 : 1;
          const double m = keep ? 1.0 / (1.0 - s.p) : 0.0;
          for (int c = 0; c < s.hd; ++c) {
            out[(int64_t{bi} * s.t + i) * s.h * s.hd + hi * s.hd + c] +=
                std::exp(p[j] - mx) / sum * m * qkv[(bi * s.t + j) * row + (s.h + s.hkv + g) * s.hd + c];
          }
        }
      }
    }
  }
  return out;
}

class AttentionDropoutTest : public ::testing::TestWithParam<DropShape> {};

TEST_P(AttentionDropoutTest, ForwardMatchesNaiveMasksAndBackwardMatchesFiniteDifferences) {
  const DropShape s = GetParam();
  const int row = (s.h + 2 * s.hkv) * s.hd;
  const int64_t nqkv = int64_t{s.b} * s.t * row, nout = int64_t{s.b} * s.t * s.h * s.hd;
  std::vector<float> qkv = Randn(nqkv, 51), r = Randn(nout, 52);
  AttentionDropout drop;
  drop.p = s.p;
  drop.seed = 0xA77E;
  drop.first_token = 1000;
  std::vector<float> out(nout), lse(int64_t{s.b} * s.h * s.t), out0(nout), lse0(lse.size());
  AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.hkv, s.hd, drop);
  AttentionForward(out0.data(), lse0.data(), qkv.data(), s.b, s.t, s.h, s.hkv, s.hd);
  EXPECT_EQ(lse, lse0) << "lse is the undropped softmax's";
  int64_t dropped = 0, drawn = 0;
  const std::vector<double> want = NaiveDroppedAttention(qkv, s, drop.seed, drop.first_token, &dropped, &drawn);
  for (int64_t i = 0; i < nout; ++i) EXPECT_NEAR(out[i], want[i], 1e-5) << i;
  // Some probabilities dropped, most kept (p <= 0.5 here).
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, drawn * 0.75);

  std::vector<float> dqkv(nqkv, 0.0f);
  AttentionBackward(dqkv.data(), r.data(), out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.hkv, s.hd, drop);
  auto loss = [&] {
    AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.hkv, s.hd, drop);
    return WeightedSum(out, r);
  };
  // As the attention check without dropout: fp32, eps 2e-2, max relative error 1e-2.
  GradCheckOptions opt;
  opt.eps = 2e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = 1000;
  ExpectGradOk(GradCheck(loss, {{"qkv", qkv.data(), dqkv.data(), nqkv}}, opt), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionDropoutTest,
                         ::testing::Values(DropShape{2, 7, 4, 2, 8, 0.3f},    // GQA
                                           DropShape{1, 13, 4, 1, 6, 0.5f},   // one kv head, p 0.5
                                           DropShape{2, 9, 3, 3, 4, 0.1f}));  // no GQA

TEST(AttentionDropout, MasksFollowTheGlobalTokenSoAnyBatchSplitAgrees) {
  const int b = 4, t = 6, h = 2, hkv = 1, hd = 8, row = (h + 2 * hkv) * hd;
  const int64_t seq_in = int64_t{t} * row, seq_out = int64_t{t} * h * hd;
  std::vector<float> qkv = Randn(b * seq_in, 61), r = Randn(b * seq_out, 62);
  AttentionDropout drop;
  drop.p = 0.4f;
  drop.seed = 77;
  drop.first_token = 3 * t;
  std::vector<float> whole(b * seq_out), lse(b * h * t), dwhole(b * seq_in, 0.0f);
  AttentionForward(whole.data(), lse.data(), qkv.data(), b, t, h, hkv, hd, drop);
  AttentionBackward(dwhole.data(), r.data(), whole.data(), lse.data(), qkv.data(), b, t, h, hkv, hd, drop);
  // Each sequence alone, as a rank holding only that sequence: its first token moves with it.
  for (int bi = 0; bi < b; ++bi) {
    AttentionDropout part = drop;
    part.first_token = drop.first_token + int64_t{bi} * t;
    std::vector<float> out(seq_out), l(h * t), d(seq_in, 0.0f);
    AttentionForward(out.data(), l.data(), qkv.data() + bi * seq_in, 1, t, h, hkv, hd, part);
    AttentionBackward(d.data(), r.data() + bi * seq_out, out.data(), l.data(), qkv.data() + bi * seq_in, 1, t, h,
                      hkv, hd, part);
    for (int64_t i = 0; i < seq_out; ++i) ASSERT_EQ(out[i], whole[bi * seq_out + i]) << bi << " " << i;
    for (int64_t i = 0; i < seq_in; ++i) ASSERT_EQ(d[i], dwhole[bi * seq_in + i]) << bi << " " << i;
  }
  // Another seed or another place in the global batch draws other masks.
  std::vector<float> other(b * seq_out);
  AttentionDropout reseeded = drop;
  reseeded.seed = 78;
  AttentionForward(other.data(), lse.data(), qkv.data(), b, t, h, hkv, hd, reseeded);
  EXPECT_NE(other, whole);
  AttentionDropout moved = drop;
  moved.first_token += t;
  AttentionForward(other.data(), lse.data(), qkv.data(), b, t, h, hkv, hd, moved);
  EXPECT_NE(other, whole);
}

TEST(AttentionDropout, ZeroProbabilityIsBitwiseTheUndroppedAttention) {
  const int b = 2, t = 5, h = 4, hkv = 2, hd = 8, row = (h + 2 * hkv) * hd;
  std::vector<float> qkv = Randn(b * t * row, 71), r = Randn(b * t * h * hd, 72);
  AttentionDropout none;
  none.seed = 5;
  none.first_token = 17;
  std::vector<float> a(b * t * h * hd), la(b * h * t), da(b * t * row, 0.0f);
  std::vector<float> c(a.size()), lc(la.size()), dc(da.size(), 0.0f);
  AttentionForward(a.data(), la.data(), qkv.data(), b, t, h, hkv, hd);
  AttentionForward(c.data(), lc.data(), qkv.data(), b, t, h, hkv, hd, none);
  AttentionBackward(da.data(), r.data(), a.data(), la.data(), qkv.data(), b, t, h, hkv, hd);
  AttentionBackward(dc.data(), r.data(), c.data(), lc.data(), qkv.data(), b, t, h, hkv, hd, none);
  EXPECT_EQ(a, c);
  EXPECT_EQ(da, dc);
}

}  // namespace
}  // namespace moe::kernels
