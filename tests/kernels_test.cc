// CPU kernels of the dense ops (matmul, embedding, RMSNorm, RoPE, attention, cross-entropy,
// dropout, AdamW): forward against naive references, backward by finite differences.
// The MoE ops (router, routing plan, experts) are in kernels_moe_test.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/dropout.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "tests/support/gradcheck.h"

namespace moe::kernels {
namespace {

using moe::testing::GradCheck;
using moe::testing::GradCheckOptions;
using moe::testing::GradCheckResult;
using moe::testing::Randn;
using moe::testing::WeightedSum;
using moe::testing::ExpectGradOk;

// ---------------------------------------------------------------------------------------------
// Matmul

TEST(Gemm, MatchesNaiveForEveryTransposeWithStridesAlphaBeta) {
  const int m = 7, n = 5, k = 13;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      // Stored shapes: a is (m, k) or (k, m); b is (k, n) or (n, k); leading dims padded by 3.
      const int a_rows = ta ? k : m, a_cols = ta ? m : k;
      const int b_rows = tb ? n : k, b_cols = tb ? k : n;
      const int lda = a_cols + 3, ldb = b_cols + 3, ldc = n + 3;
      std::vector<float> a = Randn(int64_t{a_rows} * lda, 1), b = Randn(int64_t{b_rows} * ldb, 2);
      std::vector<float> c = Randn(int64_t{m} * ldc, 3), c0 = c;
      const float alpha = 0.7f, beta = -0.4f;
      Gemm(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double s = 0.0;
          for (int p = 0; p < k; ++p) {
            const double av = ta ? a[p * lda + i] : a[i * lda + p];
            const double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
            s += av * bv;
          }
          const double want = alpha * s + beta * c0[i * ldc + j];
          EXPECT_NEAR(c[i * ldc + j], want, 1e-5 * (1 + std::fabs(want)))
              << "ta " << ta << " tb " << tb << " at " << i << "," << j;
        }
        for (int j = n; j < ldc; ++j) EXPECT_EQ(c[i * ldc + j], c0[i * ldc + j]);  // padding
      }
    }
  }
}

TEST(Linear, ForwardMatchesNaiveAndBackwardMatchesFiniteDifferences) {
  const int n = 7, c = 5, oc = 3;
  std::vector<float> inp = Randn(n * c, 4), w = Randn(oc * c, 5), r = Randn(n * oc, 6);
  std::vector<float> out(n * oc);
  LinearForward(out.data(), inp.data(), w.data(), n, c, oc);
  for (int i = 0; i < n; ++i) {
    for (int o = 0; o < oc; ++o) {
      double s = 0.0;
      for (int j = 0; j < c; ++j) s += double{inp[i * c + j]} * w[o * c + j];
      EXPECT_NEAR(out[i * oc + o], s, 1e-5);
    }
  }
  // Backward accumulates: start from 1s and subtract them afterwards.
  std::vector<float> dinp(n * c, 1.0f), dw(oc * c, 1.0f);
  LinearBackward(dinp.data(), dw.data(), r.data(), inp.data(), w.data(), n, c, oc);
  for (float& x : dinp) x -= 1.0f;
  for (float& x : dw) x -= 1.0f;
  auto loss = [&] {
    LinearForward(out.data(), inp.data(), w.data(), n, c, oc);
    return WeightedSum(out, r);
  };
  // The loss is linear in each element, so a large step (0.1) costs no truncation error and
  // keeps fp32 rounding small: max relative error 1e-3.
  GradCheckOptions opt;
  opt.eps = 0.1;
  ExpectGradOk(
      GradCheck(loss, {{"inp", inp.data(), dinp.data(), n * c}, {"w", w.data(), dw.data(), oc * c}},
                opt),
      1e-3);
}

// ---------------------------------------------------------------------------------------------
// Embedding

TEST(Embedding, ForwardGathersAndBackwardScatterAddsRepeatedRows) {
  const int n = 13, d = 6, v = 5;
  std::vector<int32_t> idx(n);
  for (int i = 0; i < n; ++i) idx[i] = (i * 3) % 4;  // rows 0..3 repeated, row 4 never used
  std::vector<float> wte = Randn(v * d, 7), out(n * d), dout = Randn(n * d, 8);
  EmbeddingForward(out.data(), idx.data(), wte.data(), n, d);
  for (int i = 0; i < n; ++i) {
    for (int c = 0; c < d; ++c) EXPECT_EQ(out[i * d + c], wte[idx[i] * d + c]);
  }
  std::vector<float> dwte(v * d, 0.5f), want(v * d, 0.5f);
  EmbeddingBackward(dwte.data(), dout.data(), idx.data(), n, d);
  for (int i = 0; i < n; ++i) {
    for (int c = 0; c < d; ++c) want[idx[i] * d + c] += dout[i * d + c];
  }
  for (int i = 0; i < v * d; ++i) EXPECT_FLOAT_EQ(dwte[i], want[i]) << i;
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

TEST(RmsNorm, ForwardMatchesNaiveAndBackwardMatchesFiniteDifferences) {
  const int n = 7, d = 13;
  std::vector<float> x = Randn(n * d, 9), w = Randn(d, 10, 0.5f), r = Randn(n * d, 11);
  for (float& wi : w) wi += 1.0f;
  const float eps = 0.25f;  // not the default 1e-5: the argument is what the sum adds (model.norm_eps)
  std::vector<float> out(n * d), rstd(n);
  RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), n, d, eps);
  for (int i = 0; i < n; ++i) {
    double ss = 0.0;
    for (int c = 0; c < d; ++c) ss += double{x[i * d + c]} * x[i * d + c];
    const double want_r = 1.0 / std::sqrt(ss / d + eps);
    EXPECT_NEAR(rstd[i], want_r, 1e-5 * want_r);
    for (int c = 0; c < d; ++c) EXPECT_NEAR(out[i * d + c], x[i * d + c] * want_r * w[c], 1e-5);
  }
  std::vector<float> dx(n * d, 0.0f), dw(d, 0.0f);
  RmsNormBackward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), n, d);
  auto loss = [&] {
    RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), n, d, eps);
    return WeightedSum(out, r);
  };
  // fp32 forward, eps 1e-2 on O(1) inputs: max relative error 1e-2.
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  ExpectGradOk(
      GradCheck(loss, {{"x", x.data(), dx.data(), n * d}, {"w", w.data(), dw.data(), d}}, opt),
      1e-2);
}

// ---------------------------------------------------------------------------------------------
// RoPE

TEST(Rope, ThetaSetsTheBaseOfTheAngles) {
  const int b = 1, t = 9, h = 2, hkv = 1, hd = 8;
  const int row = (h + 2 * hkv) * hd;
  for (float theta : {10000.0f, 1.0e6f, 500.0f}) {
    std::vector<float> qkv = Randn(b * t * row, 14), orig = qkv;
    RopeForward(qkv.data(), b, t, h, hkv, hd, theta);
    for (int pos = 0; pos < t; ++pos) {
      for (int i = 0; i < hd / 2; ++i) {
        const int64_t a = int64_t{pos} * row + i, c = a + hd / 2;  // head 0 (q)
        const double angle = pos * std::pow(static_cast<double>(theta), -2.0 * i / hd);
        EXPECT_NEAR(qkv[a], orig[a] * std::cos(angle) - orig[c] * std::sin(angle), 1e-5) << theta;
        EXPECT_NEAR(qkv[c], orig[a] * std::sin(angle) + orig[c] * std::cos(angle), 1e-5) << theta;
      }
    }
    RopeBackward(qkv.data(), b, t, h, hkv, hd, theta);
    for (size_t i = 0; i < qkv.size(); ++i) EXPECT_NEAR(qkv[i], orig[i], 1e-5);
  }
}

TEST(Rope, ForwardMatchesNaiveLeavesVAloneAndBackwardIsTheTranspose) {
  const int b = 2, t = 7, h = 4, hkv = 2, hd = 6;
  const int row = (h + 2 * hkv) * hd;
  std::vector<float> qkv = Randn(b * t * row, 12), orig = qkv, r = Randn(b * t * row, 13);
  RopeForward(qkv.data(), b, t, h, hkv, hd);
  for (int bi = 0; bi < b; ++bi) {
    for (int pos = 0; pos < t; ++pos) {
      const int64_t base = (int64_t{bi} * t + pos) * row;
      for (int head = 0; head < h + 2 * hkv; ++head) {
        for (int i = 0; i < hd / 2; ++i) {
          const int64_t a = base + head * hd + i, c = a + hd / 2;
          if (head >= h + hkv) {  // v: untouched
            EXPECT_EQ(qkv[a], orig[a]);
            EXPECT_EQ(qkv[c], orig[c]);
            continue;
          }
          const double angle = pos * std::pow(10000.0, -2.0 * i / hd);
          EXPECT_NEAR(qkv[a], orig[a] * std::cos(angle) - orig[c] * std::sin(angle), 1e-5);
          EXPECT_NEAR(qkv[c], orig[a] * std::sin(angle) + orig[c] * std::cos(angle), 1e-5);
        }
      }
    }
  }
  // Rotation is orthogonal: backward of forward is the identity.
  RopeBackward(qkv.data(), b, t, h, hkv, hd);
  for (size_t i = 0; i < qkv.size(); ++i) EXPECT_NEAR(qkv[i], orig[i], 1e-5);

  std::vector<float> grad = r;
  RopeBackward(grad.data(), b, t, h, hkv, hd);
  std::vector<float> x = orig, work;
  auto loss = [&] {
    work = x;
    RopeForward(work.data(), b, t, h, hkv, hd);
    return WeightedSum(work, r);
  };
  // Linear in qkv: eps 0.1, max relative error 1e-3.
  GradCheckOptions opt;
  opt.eps = 0.1;
  opt.samples_per_param = 64;
  ExpectGradOk(GradCheck(loss, {{"qkv", x.data(), grad.data(), b * t * row}}, opt), 1e-3);
}

// ---------------------------------------------------------------------------------------------
// Attention

struct AttnShape {
  int b, t, h, hkv, hd;
};

// Naive causal attention with an explicit probability matrix, in double.
void NaiveAttention(std::vector<double>* out, std::vector<double>* lse,
                    const std::vector<float>& qkv, const AttnShape& s) {
  const int row = (s.h + 2 * s.hkv) * s.hd;
  out->assign(int64_t{s.b} * s.t * s.h * s.hd, 0.0);
  lse->assign(int64_t{s.b} * s.h * s.t, 0.0);
  for (int bi = 0; bi < s.b; ++bi) {
    for (int hi = 0; hi < s.h; ++hi) {
      const int g = hi / (s.h / s.hkv);
      std::vector<double> p(int64_t{s.t} * s.t, 0.0);
      for (int i = 0; i < s.t; ++i) {
        double mx = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int c = 0; c < s.hd; ++c) {
            dot += double{qkv[(bi * s.t + i) * row + hi * s.hd + c]} *
                   qkv[(bi * s.t + j) * row + (s.h + g) * s.hd + c];
          }
          p[i * s.t + j] = dot / std::sqrt(static_cast<double>(s.hd));
          mx = std::max(mx, p[i * s.t + j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(p[i * s.t + j] - mx);
        (*lse)[(bi * s.h + hi) * s.t + i] = mx + std::log(sum);
        for (int j = 0; j <= i; ++j) p[i * s.t + j] = std::exp(p[i * s.t + j] - mx) / sum;
      }
      for (int i = 0; i < s.t; ++i) {
        for (int c = 0; c < s.hd; ++c) {
          double acc = 0.0;
          for (int j = 0; j <= i; ++j) {
            acc += p[i * s.t + j] * qkv[(bi * s.t + j) * row + (s.h + s.hkv + g) * s.hd + c];
          }
          (*out)[(bi * s.t + i) * s.h * s.hd + hi * s.hd + c] = acc;
        }
      }
    }
  }
}

class AttentionTest : public ::testing::TestWithParam<AttnShape> {};

TEST_P(AttentionTest, ForwardMatchesNaiveAndBackwardMatchesFiniteDifferences) {
  const AttnShape s = GetParam();
  const int row = (s.h + 2 * s.hkv) * s.hd;
  const int64_t nqkv = int64_t{s.b} * s.t * row, nout = int64_t{s.b} * s.t * s.h * s.hd;
  std::vector<float> qkv = Randn(nqkv, 14), r = Randn(nout, 15);
  std::vector<float> out(nout), lse(int64_t{s.b} * s.h * s.t);
  AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.hkv, s.hd);
  std::vector<double> want_out, want_lse;
  NaiveAttention(&want_out, &want_lse, qkv, s);
  for (int64_t i = 0; i < nout; ++i) EXPECT_NEAR(out[i], want_out[i], 1e-5) << i;
  for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], want_lse[i], 1e-5) << i;

  std::vector<float> dqkv(nqkv, 0.0f);
  AttentionBackward(dqkv.data(), r.data(), out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.hkv,
                    s.hd);
  // Same inputs, same thread count: bitwise the same gradient. And it accumulates (+=).
  std::vector<float> again(nqkv, 0.0f), ones(nqkv, 1.0f);
  AttentionBackward(again.data(), r.data(), out.data(), lse.data(), qkv.data(), s.b, s.t, s.h,
                    s.hkv, s.hd);
  AttentionBackward(ones.data(), r.data(), out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.hkv,
                    s.hd);
  for (int64_t i = 0; i < nqkv; ++i) {
    ASSERT_EQ(again[i], dqkv[i]) << i;
    ASSERT_NEAR(ones[i], 1.0f + dqkv[i], 1e-5) << i;
  }

  auto loss = [&] {
    AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.hkv, s.hd);
    return WeightedSum(out, r);
  };
  // fp32 forward, eps 2e-2 on N(0, 1) inputs (smaller steps drown in fp32 rounding of the
  // loss), every element: max relative error 1e-2 (floor 1e-2). Observed: <= 2e-3.
  GradCheckOptions opt;
  opt.eps = 2e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = 1000;
  ExpectGradOk(GradCheck(loss, {{"qkv", qkv.data(), dqkv.data(), nqkv}}, opt), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttnShape{2, 7, 4, 2, 8},    // GQA 2 q heads per kv
                                           AttnShape{1, 13, 4, 1, 6},   // GQA, one kv head
                                           AttnShape{2, 5, 3, 3, 4},    // no GQA
                                           AttnShape{1, 19, 2, 1, 8},   // GQA, longer T
                                           AttnShape{1, 1, 2, 1, 4}));  // a single token

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST(CrossEntropy, ForwardMatchesNaiveIgnoresNegativeTargetsAndBackwardMatchesFiniteDiffs) {
  const int n = 7, v = 11;
  std::vector<float> logits = Randn(n * v, 16, 2.0f);
  std::vector<int32_t> targets = {3, 0, -1, 10, 5, -1, 7};
  std::vector<float> losses(n), lse(n);
  const double total =
      CrossEntropyForward(losses.data(), lse.data(), logits.data(), targets.data(), n, v);
  double want_total = 0.0;
  for (int i = 0; i < n; ++i) {
    double s = 0.0;
    for (int c = 0; c < v; ++c) s += std::exp(double{logits[i * v + c]});
    EXPECT_NEAR(lse[i], std::log(s), 1e-5);
    const double want = targets[i] < 0 ? 0.0 : std::log(s) - logits[i * v + targets[i]];
    EXPECT_NEAR(losses[i], want, 1e-5);
    want_total += want;
  }
  EXPECT_NEAR(total, want_total, 1e-5);

  const float scale = 1.0f / 5;               // 5 counted tokens
  std::vector<float> dlogits(n * v, 123.0f);  // overwritten, not accumulated
  CrossEntropyBackward(dlogits.data(), logits.data(), lse.data(), targets.data(), scale, n, v);
  for (int c = 0; c < v; ++c) EXPECT_EQ(dlogits[2 * v + c], 0.0f);  // ignored row
  // In place (dlogits aliases logits) gives the same bits.
  std::vector<float> inplace = logits;
  CrossEntropyBackward(inplace.data(), inplace.data(), lse.data(), targets.data(), scale, n, v);
  for (int i = 0; i < n * v; ++i) ASSERT_EQ(inplace[i], dlogits[i]) << i;

  auto loss = [&] {
    return scale *
           CrossEntropyForward(losses.data(), lse.data(), logits.data(), targets.data(), n, v);
  };
  // fp32, eps 1e-2, every logit: max relative error 1e-2 (floor 1e-2).
  GradCheckOptions opt;
  opt.eps = 1e-2;
  opt.abs_floor = 1e-2;
  opt.samples_per_param = 77;
  ExpectGradOk(GradCheck(loss, {{"logits", logits.data(), dlogits.data(), n * v}}, opt), 1e-2);
}

TEST(CrossEntropy, LargeLogitsStayFinite) {
  const int n = 2, v = 3;
  std::vector<float> logits = {1000.0f, 999.0f, -1000.0f, -5000.0f, 0.0f, 88.0f};
  std::vector<int32_t> targets = {1, 0};
  std::vector<float> losses(n), lse(n);
  CrossEntropyForward(losses.data(), lse.data(), logits.data(), targets.data(), n, v);
  EXPECT_NEAR(losses[0], std::log(1.0 + std::exp(1.0)), 1e-3);
  EXPECT_NEAR(losses[1], 5088.0, 1e-2);
  std::vector<float> d(n * v);
  CrossEntropyBackward(d.data(), logits.data(), lse.data(), targets.data(), 1.0f, n, v);
  for (float x : d) EXPECT_TRUE(std::isfinite(x));
  EXPECT_NEAR(d[3], -1.0f, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Dropout

TEST(Dropout, CounterUniformIsInRangeAndRoughlyUniform) {
  const int n = 100000;
  double sum = 0.0;
  int buckets[10] = {};
  for (int i = 0; i < n; ++i) {
    const float u = CounterUniform(42, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    ++buckets[static_cast<int>(u * 10)];
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);                   // sd of the mean ~0.0009
  for (int b : buckets) EXPECT_NEAR(b, n / 10, 600);  // sd ~95
  EXPECT_NE(CounterUniform(1, 0), CounterUniform(2, 0));
  EXPECT_NE(CounterUniform(1, 0), CounterUniform(1, 1));
}

TEST(Dropout, ZeroProbabilityCopiesAndAccumulates) {
  const int n = 1001;
  std::vector<float> in = Randn(n, 17), out(n, 9.0f);
  DropoutForward(out.data(), in.data(), n, 0.0f, 5, 0);
  for (int i = 0; i < n; ++i) ASSERT_EQ(out[i], in[i]);
  std::vector<float> din(n, 1.0f);
  DropoutBackward(din.data(), in.data(), n, 0.0f, 5, 0);
  for (int i = 0; i < n; ++i) ASSERT_EQ(din[i], 1.0f + in[i]);
}

TEST(Dropout, MaskRateScaleReproducibilityOffsetsAndBackward) {
  const int64_t n = 100000;
  const float p = 0.3f;
  const uint64_t seed = 1234, offset = 777;
  std::vector<float> in(n, 1.0f), out(n);
  DropoutForward(out.data(), in.data(), n, p, seed, offset);
  int64_t kept = 0;
  for (float x : out) {
    if (x != 0.0f) {
      ++kept;
      ASSERT_EQ(x, 1.0f / (1.0f - p));
    }
  }
  EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 0.007);  // sd 0.0014

  // Same seed and offset: the same mask; in place gives the same result.
  std::vector<float> again = in;
  DropoutForward(again.data(), again.data(), n, p, seed, offset);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(again[i], out[i]);

  // The mask of element i depends on offset + i alone.
  const int64_t shift = 123;
  std::vector<float> shifted(n - shift);
  DropoutForward(shifted.data(), in.data(), n - shift, p, seed, offset + shift);
  for (int64_t i = 0; i < n - shift; ++i) ASSERT_EQ(shifted[i], out[i + shift]) << i;

  // Another seed: a different mask.
  std::vector<float> other(n);
  DropoutForward(other.data(), in.data(), n, p, seed + 1, offset);
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) differ += (other[i] == 0.0f) != (out[i] == 0.0f);
  EXPECT_GT(differ, n / 4);  // independent masks differ on 2 p (1 - p) = 42%

  // Backward: the same mask and scale, accumulated.
  std::vector<float> dout = Randn(n, 18), din(n, 0.5f);
  DropoutBackward(din.data(), dout.data(), n, p, seed, offset);
  for (int64_t i = 0; i < n; ++i) {
    const float want = out[i] != 0.0f ? 0.5f + dout[i] * (1.0f / (1.0f - p)) : 0.5f;
    ASSERT_EQ(din[i], want) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW

TEST(AdamW, TwoStepsMatchHandComputedValues) {
  // Element 0: grads 0.5 then -0.25, scaled by 0.5. Element 1: zero grads, so only decay moves it.
  // Step 1: g 0.25, m 0.025, v 0.003125, m_hat 0.25, v_hat 0.0625 -> 1 - 0.1 (1 + 0.1) = 0.89.
  // Step 2: g -0.125, m 0.01, v 0.00375, m_hat 0.01 / 0.19, v_hat 0.00375 / 0.0975
  //         -> 0.89 - 0.1 (0.2683710 + 0.089) = 0.8542631.
  AdamWConfig cfg;
  cfg.lr = 0.1f;
  cfg.beta1 = 0.9f;
  cfg.beta2 = 0.95f;
  cfg.eps = 1e-8f;
  cfg.weight_decay = 0.1f;
  std::vector<float> param = {1.0f, -2.0f}, m(2, 0.0f), v(2, 0.0f);
  std::vector<float> g1 = {0.5f, 0.0f}, g2 = {-0.25f, 0.0f};
  AdamWUpdate(param.data(), g1.data(), m.data(), v.data(), 2, cfg, 1, 0.5f);
  EXPECT_NEAR(param[0], 0.89f, 1e-6);
  EXPECT_NEAR(param[1], -1.98f, 1e-6);
  EXPECT_NEAR(m[0], 0.025f, 1e-8);
  EXPECT_NEAR(v[0], 0.003125f, 1e-9);
  AdamWUpdate(param.data(), g2.data(), m.data(), v.data(), 2, cfg, 2, 0.5f);
  EXPECT_NEAR(param[0], 0.8542631f, 1e-6);
  EXPECT_NEAR(param[1], -1.9602f, 1e-6);
  EXPECT_NEAR(m[0], 0.01f, 1e-8);
  EXPECT_NEAR(v[0], 0.00375f, 1e-9);
}

TEST(SquaredNorm, MatchesDoubleSum) {
  std::vector<float> x(100003);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  double want = 0.0;
  for (float xi : x) want += double{xi} * xi;
  EXPECT_EQ(SquaredNorm(x.data(), static_cast<int64_t>(x.size())), want);  // exact: small ints
  std::vector<float> r = Randn(12345, 19);
  double want_r = 0.0;
  for (float xi : r) want_r += double{xi} * xi;
  EXPECT_NEAR(SquaredNorm(r.data(), 12345), want_r, 1e-9 * want_r);
  EXPECT_EQ(SquaredNorm(r.data(), 0), 0.0);
}

}  // namespace
}  // namespace moe::kernels
