// Every dense CUDA op against its CPU twin (kernels/*.h) on a sweep of shapes: embedding,
// dropout, RMSNorm, RoPE, SwiGLU, cross-entropy, AdamW and norms, attention (GQA on and off, fp32
// and tensor cores). The error is ||cuda - cpu|| / ||cpu|| per output, with a
// tolerance stated per op. The MoE layer's ops are in cuda_moe_ops_test.cc, the dense products
// (cuda::Blas) in cuda_blas_test.cc. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "common/backend_limits.h"

#ifdef MOE_WITH_CUDA
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.h"
#include "kernels/cuda/cudnn_sdpa.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/nn.h"
#include "kernels/cuda/reduce.h"
#include "kernels/cuda/rope.h"
#include "kernels/dropout.h"
#include "kernels/embedding.h"
#include "kernels/experts.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifdef MOE_WITH_CUDA
// These tests hold the project's own GPU kernels to the CPU and to each other, bit for bit where
// they say so: the attention entry points keep to those kernels here, not cuDNN's
// (tests/cuda_cudnn_attention_test.cc holds cuDNN's to them).
[[maybe_unused]] const bool kOwnAttention = (cuda::SetCudnnAttentionWanted(false), true);
#endif

#ifndef MOE_WITH_CUDA

TEST(CudaOpsTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU ops to test"; }

#else

using testing::Dev;
using testing::kBf16Tol;
using testing::kFp32Tol;
using testing::Randn;
using testing::RelErr;
using testing::ToFloat;

constexpr double kAttnTol = 1e-5;      // fp32 flash (online softmax) vs two-pass CPU

TEST(CudaOpsTest, Embedding) {
  SKIP_WITHOUT_GPU();
  const int n = 37, d = 24, v = 11;
  std::vector<int32_t> idx(n);
  for (int i = 0; i < n; ++i) idx[i] = (i * 7) % v;
  auto wte = Randn(int64_t{v} * d, 1), dout = Randn(int64_t{n} * d, 2);
  std::vector<float> out(n * d), dwte(v * d, 0.f);
  kernels::EmbeddingForward(out.data(), idx.data(), wte.data(), n, d);
  kernels::EmbeddingBackward(dwte.data(), dout.data(), idx.data(), n, d);
  Dev<int32_t> didx(idx);
  Dev<float> dw(wte), dout_d(dout), out_d(n * d), dwte_d(v * d);
  cuda::EmbeddingForward(out_d.get(), didx.get(), dw.get(), n, d, nullptr);
  const cuda::TokenRuns runs = cuda::GroupTokensById(idx.data(), n, v);
  Dev<int32_t> order(runs.order), starts(runs.starts), ids(runs.ids);
  cuda::EmbeddingBackward(dwte_d.get(), dout_d.get(), order.get(), starts.get(), ids.get(), runs.runs(), d, nullptr);
  EXPECT_EQ(out_d.Host(), out);
  EXPECT_LT(RelErr(dwte_d.Host(), dwte), kFp32Tol);
  // Each id's rows summed in row order, then added once: exactly this, bit for bit.
  std::vector<float> exact(v * d, 0.f);
  for (int c = 0; c < d; ++c) {
    for (int id = 0; id < v; ++id) {
      float acc = 0.f;
      bool any = false;
      for (int i = 0; i < n; ++i) {
        if (idx[i] == id) acc += dout[int64_t{i} * d + c], any = true;
      }
      if (any) exact[int64_t{id} * d + c] += acc;
    }
  }
  EXPECT_EQ(dwte_d.Host(), exact);
}

// GroupTokensById (host code): every row once, grouped by id, each id's rows in order.
TEST(CudaOpsTest, GroupTokensByIdKeepsRowOrderWithinAnId) {
  const std::vector<int32_t> idx = {3, 0, 3, 7, 0, 3};
  const cuda::TokenRuns r = cuda::GroupTokensById(idx.data(), 6, 8);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 3, 7}));
  EXPECT_EQ(r.starts, (std::vector<int32_t>{0, 2, 5, 6}));
  EXPECT_EQ(r.order, (std::vector<int32_t>{1, 4, 0, 2, 5, 3}));
  EXPECT_EQ(cuda::GroupTokensById(idx.data(), 0, 8).runs(), 0);
  const std::vector<int32_t> bad = {3, 8};  // 8 is past a vocabulary of 8
  EXPECT_THROW(cuda::GroupTokensById(bad.data(), 2, 8), std::out_of_range);
  const std::vector<int32_t> negative = {-1};
  EXPECT_THROW(cuda::GroupTokensById(negative.data(), 1, 8), std::out_of_range);
}

TEST(CudaOpsTest, DropoutReproducesCounterUniformExactly) {
  SKIP_WITHOUT_GPU();
  for (float p : {0.0f, 0.1f, 0.5f}) {
    const int64_t n = 10007;
    const uint64_t seed = 1234567, offset = 999;
    auto in = Randn(n, 3), dout = Randn(n, 4);
    std::vector<float> out(n), din(n, 0.5f);
    kernels::DropoutForward(out.data(), in.data(), n, p, seed, offset);
    kernels::DropoutBackward(din.data(), dout.data(), n, p, seed, offset);
    Dev<float> in_d(in), out_d(n), dout_d(dout), din_d(n, 0.5f);
    cuda::DropoutForward(out_d.get(), in_d.get(), n, p, seed, offset, nullptr);
    cuda::DropoutBackward(din_d.get(), dout_d.get(), n, p, seed, offset, nullptr);
    EXPECT_EQ(out_d.Host(), out) << "p " << p;  // bitwise: same mask, same scale
    EXPECT_EQ(din_d.Host(), din) << "p " << p;
  }
}

// The residual's fused dropout sites against the two passes they replace, bit for bit, on
// aligned rows (four a thread) and on rows one float off (one a thread), with tails.
TEST(CudaOpsTest, FusedDropoutSitesEqualTheirTwoPasses) {
  SKIP_WITHOUT_GPU();
  for (float p : {0.0f, 0.2f, 0.5f}) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4099}, int64_t{65536}}) {
      for (int shift : {0, 1}) {  // shift 1: every pointer 4 bytes past 16-byte alignment
        const uint64_t seed = 77, offset = 12345;
        auto x = Randn(n + shift, 11), y = Randn(n + shift, 12), dout = Randn(n + shift, 13);
        y[shift] = -0.0f;  // a signed zero: both forms must give the same sign
        dout[shift] = -0.0f;
        Dev<float> x_d(x), y_d(y), dout_d(dout), tmp(n + shift), two(n + shift), one(n + shift);
        Dev<float> din2(n + shift, 0.0f), din1(n + shift, 9.0f);
        // Two passes: tmp = dropout(y), two = x + tmp; din2 = 0 then += dropout'(dout).
        cuda::DropoutForward(tmp.get() + shift, y_d.get() + shift, n, p, seed, offset, nullptr);
        cuda::AddOut(two.get() + shift, x_d.get() + shift, tmp.get() + shift, n, nullptr);
        cuda::DropoutBackward(din2.get() + shift, dout_d.get() + shift, n, p, seed, offset, nullptr);
        cuda::DropoutAddOut(one.get() + shift, x_d.get() + shift, y_d.get() + shift, n, p, seed, offset, nullptr);
        cuda::DropoutBackwardTo(din1.get() + shift, dout_d.get() + shift, n, p, seed, offset, nullptr);
        std::vector<float> a = two.Host(), b = one.Host(), da = din2.Host(), db = din1.Host();
        const std::string where = absl::StrCat("p ", p, " n ", n, " shift ", shift);
        for (int64_t i = shift; i < n + shift; ++i) {
          ASSERT_EQ(std::signbit(a[i]), std::signbit(b[i])) << where << " at " << i;
          ASSERT_EQ(a[i], b[i]) << where << " at " << i;
          ASSERT_EQ(std::signbit(da[i]), std::signbit(db[i])) << where << " at " << i;
          ASSERT_EQ(da[i], db[i]) << where << " at " << i;
        }
        // out may alias x.
        cuda::DropoutAddOut(x_d.get() + shift, x_d.get() + shift, y_d.get() + shift, n, p, seed, offset, nullptr);
        std::vector<float> c = x_d.Host();
        for (int64_t i = shift; i < n + shift; ++i) ASSERT_EQ(c[i], b[i]) << where << " aliased, at " << i;
      }
    }
  }
}

TEST(CudaOpsTest, RmsNorm) {
  SKIP_WITHOUT_GPU();
  for (int d : {16, 96, 384, 1000, 1026, 2048}) {
    const int n = 37;
    auto x = Randn(int64_t{n} * d, 5), w = Randn(d, 6), dy = Randn(int64_t{n} * d, 7);
    std::vector<float> y(n * d), rstd(n), dx(n * d, 0.1f), dw(d, 0.2f);
    const float eps = d % 3 == 0 ? 0.25f : kernels::kRmsNormEps;  // model.norm_eps: another on both kernels
    kernels::RmsNormForward(y.data(), rstd.data(), x.data(), w.data(), n, d, eps);
    kernels::RmsNormBackward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), n, d);
    Dev<float> x_d(x), w_d(w), dy_d(dy), y_d(n * d), rstd_d(n), dx_d(n * d, 0.1f), dw_d(d, 0.2f);
    Dev<float> partials(cuda::PartialsFloats(d));
    cuda::RmsNormForward(y_d.get(), rstd_d.get(), x_d.get(), w_d.get(), n, d, eps, nullptr);
    cuda::RmsNormBackward(dx_d.get(), dw_d.get(), dy_d.get(), x_d.get(), w_d.get(), rstd_d.get(), n, d,
                          partials.get(), nullptr);
    EXPECT_LT(RelErr(y_d.Host(), y), kFp32Tol) << "d " << d;
    EXPECT_LT(RelErr(rstd_d.Host(), rstd), kFp32Tol);
    EXPECT_LT(RelErr(dx_d.Host(), dx), kFp32Tol);
    EXPECT_LT(RelErr(dw_d.Host(), dw), kFp32Tol);
    // With the bf16 copy written in the same pass: the fp32 output's bits again, and the copy has
    // the bits of casting it (d up to 1024 and a multiple of 4 on the register path, 1026 and 2048
    // on the general kernel).
    Dev<float> y2(n * d), rstd2(n);
    Dev<cuda::bf16> y16(int64_t{n} * d), cast(int64_t{n} * d);
    cuda::RmsNormForward(y2.get(), rstd2.get(), x_d.get(), w_d.get(), n, d, eps, nullptr, y16.get());
    cuda::CastToBf16(cast.get(), y2.get(), int64_t{n} * d, nullptr);
    EXPECT_EQ(y2.Host(), y_d.Host()) << "d " << d;
    const std::vector<cuda::bf16> got16 = y16.Host(), want16 = cast.Host();
    EXPECT_EQ(std::memcmp(got16.data(), want16.data(), sizeof(cuda::bf16) * got16.size()), 0) << "d " << d;
  }
}

TEST(CudaOpsTest, Rope) {
  SKIP_WITHOUT_GPU();
  for (int hkv : {4, 2, 1}) {
    const int b = 2, t = 13, h = 4, hd = 16, row = (h + 2 * hkv) * hd;
    auto qkv = Randn(int64_t{b} * t * row, 8);
    std::vector<float> cpu = qkv, back;
    kernels::RopeForward(cpu.data(), b, t, h, hkv, hd);
    std::vector<float> cos_t(t * hd / 2), sin_t(t * hd / 2);
    kernels::RopeTables(cos_t.data(), sin_t.data(), t, hd, kernels::kRopeTheta);
    Dev<float> c_d(cos_t), s_d(sin_t), q_d(qkv);
    cuda::RopeForward(q_d.get(), c_d.get(), s_d.get(), b, t, h, hkv, hd, nullptr);
    EXPECT_LT(RelErr(q_d.Host(), cpu), kFp32Tol) << "hkv " << hkv;
    kernels::RopeBackward(cpu.data(), b, t, h, hkv, hd);
    cuda::RopeBackward(q_d.get(), c_d.get(), s_d.get(), b, t, h, hkv, hd, nullptr);
    EXPECT_LT(RelErr(q_d.Host(), cpu), kFp32Tol);
    EXPECT_LT(RelErr(q_d.Host(), qkv), 1e-5);  // the backward rotation undoes the forward one
  }
}

// RopeForwardToBf16 (the tensor-core attention's input) = CastToBf16(RopeForward(qkv)) bit for bit,
// fp32 qkv untouched, and RopeBackwardToBf16 likewise; hd 16 on the four-pair path, 12 and 6 off
// it (half % 4 != 0).
TEST(CudaOpsTest, RopeToBf16MatchesRopeThenCastBothWays) {
  SKIP_WITHOUT_GPU();
  for (int hd : {16, 12, 6}) {
    for (int hkv : {4, 1}) {
      const int b = 2, t = 13, h = 4, row = (h + 2 * hkv) * hd;
      const int64_t count = int64_t{b} * t * row;
      auto qkv = Randn(count, 12);
      std::vector<float> cos_t(t * hd / 2), sin_t(t * hd / 2);
      kernels::RopeTables(cos_t.data(), sin_t.data(), t, hd, kernels::kRopeTheta);
      Dev<float> c_d(cos_t), s_d(sin_t), q_d(qkv), roped(qkv);
      Dev<cuda::bf16> want(count), got(count, __float2bfloat16(NAN));
      cuda::RopeForward(roped.get(), c_d.get(), s_d.get(), b, t, h, hkv, hd, nullptr);
      cuda::CastToBf16(want.get(), roped.get(), count, nullptr);
      cuda::RopeForwardToBf16(got.get(), q_d.get(), c_d.get(), s_d.get(), b, t, h, hkv, hd, nullptr);
      const std::vector<cuda::bf16> a = want.Host(), c = got.Host();
      int64_t differ = 0;
      for (int64_t i = 0; i < count; ++i) differ += std::memcmp(&a[i], &c[i], sizeof(cuda::bf16)) != 0;
      EXPECT_EQ(differ, 0) << "hd " << hd << " hkv " << hkv;
      EXPECT_EQ(q_d.Host(), qkv) << "the fp32 qkv is left as it is";
      // The backward's twin: bf16(RopeBackward(dqkv)).
      Dev<float> back(qkv);
      cuda::RopeBackward(back.get(), c_d.get(), s_d.get(), b, t, h, hkv, hd, nullptr);
      cuda::CastToBf16(want.get(), back.get(), count, nullptr);
      cuda::RopeBackwardToBf16(got.get(), q_d.get(), c_d.get(), s_d.get(), b, t, h, hkv, hd, nullptr);
      const std::vector<cuda::bf16> a2 = want.Host(), c2 = got.Host();
      differ = 0;
      for (int64_t i = 0; i < count; ++i) differ += std::memcmp(&a2[i], &c2[i], sizeof(cuda::bf16)) != 0;
      EXPECT_EQ(differ, 0) << "backward, hd " << hd << " hkv " << hkv;
    }
  }
}

TEST(CudaOpsTest, Swiglu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1001;
  auto g = Randn(n, 9), u = Randn(n, 10), dh = Randn(n, 11);
  std::vector<float> h(n), dg(n, 0.3f), du(n, -0.2f);
  kernels::SwigluForward(h.data(), g.data(), u.data(), n);
  kernels::SwigluBackward(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
  Dev<float> g_d(g), u_d(u), dh_d(dh), h_d(n), dg_d(n, 0.3f), du_d(n, -0.2f);
  cuda::SwigluForward(h_d.get(), g_d.get(), u_d.get(), n, nullptr);
  cuda::SwigluBackward(dg_d.get(), du_d.get(), dh_d.get(), g_d.get(), u_d.get(), n, true, nullptr);
  EXPECT_LT(RelErr(h_d.Host(), h), kFp32Tol);
  EXPECT_LT(RelErr(dg_d.Host(), dg), kFp32Tol);
  EXPECT_LT(RelErr(du_d.Host(), du), kFp32Tol);
}

TEST(CudaOpsTest, CrossEntropy) {
  SKIP_WITHOUT_GPU();
  // 50257: a row the four-wide path cannot take; 70000: a longer row than any configuration has.
  for (int v : {65, 1000, 50257, 50304, 70000}) {
    const int n = 37;
    auto logits = Randn(int64_t{n} * v, 12, 2.0f);
    std::vector<int32_t> tgt(n);
    for (int i = 0; i < n; ++i) tgt[i] = (i * 31) % v;
    tgt[5] = -1;  // ignored
    std::vector<float> losses(n), lse(n), dl(logits.size());
    const double sum = kernels::CrossEntropyForward(losses.data(), lse.data(), logits.data(), tgt.data(), n, v);
    kernels::CrossEntropyBackward(dl.data(), logits.data(), lse.data(), tgt.data(), 1.0f / n, n, v);
    Dev<float> l_d(logits), losses_d(n), lse_d(n), dl_d(logits.size());
    Dev<int32_t> t_d(tgt);
    Dev<double> sum_d(1, 0.0);
    cuda::CrossEntropyForward(losses_d.get(), lse_d.get(), l_d.get(), t_d.get(), n, v, nullptr);
    Dev<double> partials(cuda::kPartialBlocks);
    cuda::Sum(sum_d.get(), losses_d.get(), n, partials.get(), nullptr);
    cuda::CrossEntropyBackward(dl_d.get(), l_d.get(), lse_d.get(), t_d.get(), 1.0f / n, n, v, nullptr);
    EXPECT_LT(RelErr(losses_d.Host(), losses), kFp32Tol) << "v " << v;
    EXPECT_LT(RelErr(lse_d.Host(), lse), kFp32Tol);
    EXPECT_NEAR(sum_d.Host()[0], sum, 1e-5 * std::abs(sum));
    EXPECT_LT(RelErr(dl_d.Host(), dl), kFp32Tol);
    // The fused pass of the head's chunks: the same losses, lse and bf16 dlogits.
    Dev<float> losses2_d(n), lse2_d(n);
    Dev<cuda::bf16> dl16f_d(logits.size());
    cuda::CrossEntropyForwardBackwardBf16(losses2_d.get(), lse2_d.get(), dl16f_d.get(), l_d.get(), t_d.get(),
                                          1.0f / n, n, v, nullptr);
    EXPECT_LT(RelErr(losses2_d.Host(), losses), kFp32Tol) << "v " << v;
    EXPECT_LT(RelErr(lse2_d.Host(), lse), kFp32Tol);
    std::vector<float> dl16f;
    for (cuda::bf16 x : dl16f_d.Host()) dl16f.push_back(__bfloat162float(x));
    EXPECT_LT(RelErr(dl16f, dl), kBf16Tol);
    for (int c = 0; c < v; ++c) EXPECT_EQ(dl16f[5 * int64_t{v} + c], 0.0f);  // the ignored row
  }
}

TEST(CudaOpsTest, AdamWAndSquaredNorm) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 4099;
  auto p = Randn(n, 13), g = Randn(n, 14), m = Randn(n, 15, 0.1f), v = Randn(n, 16, 0.1f);
  for (float& x : v) x = std::abs(x);
  kernels::AdamWConfig cfg;
  cfg.lr = 3e-3f;
  cfg.weight_decay = 0.1f;
  const int64_t step = 7;
  std::vector<float> pc = p, mc = m, vc = v;
  kernels::AdamWUpdate(pc.data(), g.data(), mc.data(), vc.data(), n, cfg, step, 0.5f);
  Dev<float> p_d(p), g_d(g), m_d(m), v_d(v);
  Dev<cuda::bf16> p16(n);
  // Bias corrections as the CPU forms them: in double from the float betas, then rounded.
  const float bc1 = static_cast<float>(1.0 - std::pow(double{cfg.beta1}, 7.0));
  const float bc2 = static_cast<float>(1.0 - std::pow(double{cfg.beta2}, 7.0));
  cuda::AdamWUpdate(p_d.get(), p16.get(), g_d.get(), m_d.get(), v_d.get(), n, cfg.lr, cfg.beta1, cfg.beta2,
                    cfg.eps, cfg.weight_decay, bc1, bc2, 0.5f, nullptr);
  EXPECT_LT(RelErr(p_d.Host(), pc), 1e-6);
  EXPECT_LT(RelErr(m_d.Host(), mc), 1e-6);
  EXPECT_LT(RelErr(v_d.Host(), vc), 1e-6);
  std::vector<float> p16f;
  for (cuda::bf16 x : p16.Host()) p16f.push_back(__bfloat162float(x));
  EXPECT_LT(RelErr(p16f, pc), 4e-3);  // the bf16 copy: half an ulp of bf16 at most
  Dev<double> sq(1, 0.0), sq2(1, 0.0), partials(cuda::kPartialBlocks);
  cuda::SquaredNorm(sq.get(), g_d.get(), n, partials.get(), nullptr);
  const double want = kernels::SquaredNorm(g.data(), n);
  EXPECT_NEAR(sq.Host()[0], want, 1e-12 * want);
  cuda::SquaredNorm(sq2.get(), g_d.get(), n, partials.get(), nullptr);
  EXPECT_EQ(sq2.Host()[0], sq.Host()[0]) << "summed in a fixed order";
}

struct AttnCase {
  int b, t, h, hkv, hd;
};

class CudaAttentionTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaAttentionTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const AttnCase c = GetParam();
  const int row = (c.h + 2 * c.hkv) * c.hd;
  const int64_t n = int64_t{c.b} * c.t;
  auto qkv = Randn(n * row, 17), dout = Randn(n * c.h * c.hd, 18);
  std::vector<float> out(n * c.h * c.hd), lse(int64_t{c.b} * c.h * c.t), dqkv(n * row, 0.25f);
  kernels::AttentionForward(out.data(), lse.data(), qkv.data(), c.b, c.t, c.h, c.hkv, c.hd);
  kernels::AttentionBackward(dqkv.data(), dout.data(), out.data(), lse.data(), qkv.data(), c.b, c.t, c.h,
                             c.hkv, c.hd);
  Dev<float> qkv_d(qkv), dout_d(dout), out_d(out.size(), NAN), lse_d(lse.size(), NAN), dqkv_d(n * row, 0.25f),
      scratch(lse.size());
  cuda::AttentionForward(out_d.get(), lse_d.get(), qkv_d.get(), c.b, c.t, c.h, c.hkv, c.hd, nullptr);
  EXPECT_LT(RelErr(out_d.Host(), out), kAttnTol);
  EXPECT_LT(RelErr(lse_d.Host(), lse), kAttnTol);
  // Backward from the CPU's forward outputs, so that only backward is under test.
  Dev<float> out_cpu(out), lse_cpu(lse);
  cuda::AttentionBackward(dqkv_d.get(), dout_d.get(), out_cpu.get(), lse_cpu.get(), qkv_d.get(), c.b, c.t, c.h,
                          c.hkv, c.hd, scratch.get(), nullptr);
  EXPECT_LT(RelErr(dqkv_d.Host(), dqkv), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionTest,
                         ::testing::Values(AttnCase{1, 1, 4, 4, 16}, AttnCase{2, 13, 4, 4, 16},
                                           AttnCase{2, 13, 4, 2, 16}, AttnCase{1, 77, 4, 1, 32},
                                           AttnCase{2, 130, 6, 6, 64}, AttnCase{1, 257, 4, 2, 64},
                                           AttnCase{3, 33, 2, 1, 8},
                                           // Every padded size of the SIMT kernels and between
                                           // them (24, 40, 80, 136), GQA and MQA.
                                           AttnCase{2, 37, 4, 2, 24}, AttnCase{1, 70, 2, 1, 40},
                                           AttnCase{2, 45, 4, 2, 80}, AttnCase{1, 100, 3, 1, 96},
                                           AttnCase{2, 77, 4, 2, 128}, AttnCase{1, 130, 2, 1, 128},
                                           AttnCase{1, 66, 2, 2, 136}, AttnCase{2, 41, 4, 1, 192},
                                           AttnCase{1, 90, 2, 1, 256}, AttnCase{2, 33, 4, 2, 256}));

// The tensor-core path (bf16 jobs) against the same CPU twin. 2e-2: bf16 operands (q, k, v,
// dout, and the probabilities and dS fed to the second products) with fp32 accumulation and
// fp32 softmax statistics; measured errors sit near 3e-3. lse is fp32 math on bf16 scores.
constexpr double kAttnBf16Tol = 2e-2;

class CudaAttentionBf16Test : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaAttentionBf16Test, TensorCoreForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const AttnCase c = GetParam();
  const int row = (c.h + 2 * c.hkv) * c.hd;
  const int64_t n = int64_t{c.b} * c.t;
  auto qkv = Randn(n * row, 27), dout = Randn(n * c.h * c.hd, 28);
  std::vector<float> out(n * c.h * c.hd), lse(int64_t{c.b} * c.h * c.t), dqkv(n * row, 0.25f);
  kernels::AttentionForward(out.data(), lse.data(), qkv.data(), c.b, c.t, c.h, c.hkv, c.hd);
  kernels::AttentionBackward(dqkv.data(), dout.data(), out.data(), lse.data(), qkv.data(), c.b, c.t, c.h,
                             c.hkv, c.hd);
  Dev<float> qkv_d(qkv), dout_d(dout), out_d(out.size(), NAN), lse_d(lse.size(), NAN), dqkv_d(n * row, 0.25f),
      scratch(lse.size());
  Dev<cuda::bf16> qkv16(qkv.size()), dout16(dout.size());
  cuda::CastToBf16(qkv16.get(), qkv_d.get(), qkv.size(), nullptr);
  cuda::CastToBf16(dout16.get(), dout_d.get(), dout.size(), nullptr);
  // out16: the output in bf16 as well (wo's product input), the bits of casting out.
  Dev<cuda::bf16> out16(out.size()), cast16(out.size());
  cuda::AttentionForwardBf16(out_d.get(), lse_d.get(), qkv_d.get(), qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd,
                             cuda::AttentionDropout{}, nullptr, out16.get());
  const auto out_h = out_d.Host(), lse_h = lse_d.Host();
  EXPECT_LT(RelErr(out_h, out), kAttnBf16Tol) << "b " << c.b << " t " << c.t << " h " << c.h << "/" << c.hkv;
  EXPECT_LT(RelErr(lse_h, lse), kAttnBf16Tol);
  cuda::CastToBf16(cast16.get(), out_d.get(), out.size(), nullptr);
  const auto got16 = out16.Host(), want16 = cast16.Host();
  EXPECT_EQ(0, std::memcmp(got16.data(), want16.data(), sizeof(cuda::bf16) * got16.size())) << "hd " << c.hd;
  // Backward from the CPU's forward outputs, so that only backward is under test; the 0.25
  // already in dqkv checks that it accumulates.
  Dev<float> out_cpu(out), lse_cpu(lse);
  cuda::AttentionBackwardBf16(dqkv_d.get(), dout_d.get(), dout16.get(), out_cpu.get(), lse_cpu.get(), qkv_d.get(),
                              qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, scratch.get(), nullptr);
  const auto dqkv_h = dqkv_d.Host();
  const auto dsum_fp32 = scratch.Host();  // rowsum(dout * out), per row and head, as the backward took it
  // The row sums on the host, from `out` as given (fp32 here, its bf16 rounding below): within
  // fp32 summation error of the kernel's (hd terms: about hd * 6e-8 of the sum of their sizes at
  // worst, so 4e-5 up to hd 256; a wrong row or head is off by about the sum itself).
  auto check_dsum = [&](const std::vector<float>& got, const std::vector<float>& o, const char* what) {
    for (int bi = 0; bi < c.b; ++bi)
      for (int hi = 0; hi < c.h; ++hi)
        for (int i = 0; i < c.t; ++i) {
          const int64_t at = (int64_t{bi} * c.t + i) * c.h * c.hd + int64_t{hi} * c.hd;
          double sum = 0, size = 0;
          for (int k = 0; k < c.hd; ++k) {
            sum += double{dout[at + k]} * o[at + k];
            size += std::abs(double{dout[at + k]} * o[at + k]);
          }
          const int64_t idx = (int64_t{bi} * c.h + hi) * c.t + i;
          ASSERT_NEAR(got[idx], sum, 4e-5 * (size + 1e-6)) << what << ": b " << bi << " h " << hi << " row " << i
                                                            << ", hd " << c.hd;
        }
  };
  check_dsum(dsum_fp32, out, "dsum from the fp32 output");
  // Without the fp32 output (tensor cores; the kernels allow it, the model gives both): the
  // forward writes the same bf16 bits, the backward's row sums are those of the bf16 values
  // (each row and head compared: a wrong offset shows), and its result within 1e-2 of the fp32
  // output's.
  if (CudaAttentionOnTensorCores(c.hd)) {
    Dev<cuda::bf16> only16(out.size()), cpu16(out.size());
    cuda::AttentionForwardBf16(nullptr, lse_d.get(), qkv_d.get(), qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd,
                               cuda::AttentionDropout{}, nullptr, only16.get());
    const auto alone16 = only16.Host();
    EXPECT_EQ(0, std::memcmp(alone16.data(), want16.data(), sizeof(cuda::bf16) * alone16.size())) << "hd " << c.hd;
    cuda::CastToBf16(cpu16.get(), out_cpu.get(), out.size(), nullptr);
    Dev<float> dqkv_b(n * row, 0.25f);
    cuda::AttentionBackwardBf16(dqkv_b.get(), dout_d.get(), dout16.get(), nullptr, lse_cpu.get(), qkv_d.get(),
                                qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, scratch.get(), cuda::AttentionDropout{},
                                nullptr, false, cpu16.get());
    check_dsum(scratch.Host(), ToFloat(cpu16.Host()), "dsum from the bf16 output");
    EXPECT_LT(RelErr(dqkv_b.Host(), dqkv_h), 1e-2) << "dsum from the bf16 output, hd " << c.hd;
  }
  // Each of dq, dk, dv on its own (dk is the smallest and would hide in the sum). At t = 1 a
  // softmax over one key has no gradient: dq and dk are 0 up to the rounding of dp - dsum
  // (bf16 products against an fp32 sum), so there they are measured against dv's size.
  double dv_norm = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int k = (c.h + c.hkv) * c.hd; k < row; ++k) {
      const double d = double{dqkv[i * row + k]} - 0.25;
      dv_norm += d * d;
    }
  dv_norm = std::sqrt(dv_norm);
  for (int part = 0; part < 3; ++part) {
    const int lo = part == 0 ? 0 : (c.h + (part - 1) * c.hkv) * c.hd;
    const int hi = part == 0 ? c.h * c.hd : lo + c.hkv * c.hd;
    std::vector<float> got, want;
    for (int64_t i = 0; i < n; ++i)
      for (int k = lo; k < hi; ++k) {
        got.push_back(dqkv_h[i * row + k] - 0.25f);
        want.push_back(dqkv[i * row + k] - 0.25f);
      }
    if (c.t == 1 && part < 2) {
      double err = 0;
      for (size_t i = 0; i < got.size(); ++i) err += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
      EXPECT_LT(std::sqrt(err) / dv_norm, kAttnBf16Tol) << "part " << "qkv"[part];
      continue;
    }
    EXPECT_LT(RelErr(got, want), kAttnBf16Tol) << "part " << "qkv"[part] << " t " << c.t << " hd " << c.hd;
  }
}

// The backward with RoPE's backward after it (bf16 jobs without QK-norm) gives the bits of
// AttentionBackwardBf16 (overwrite) then RopeBackwardToBf16, whether the kernels rotate as they
// store (hd 16, 32, 64, 96, 128) or not (padded head sizes, the dk/dv column halves, hd 8's fp32
// path), with dropout off and on; and with the rotation in the stores the fp32 dqkv is untouched.
TEST_P(CudaAttentionBf16Test, RopeInTheStoresGivesTheBitsOfRopeAfter) {
  SKIP_WITHOUT_GPU();
  const AttnCase c = GetParam();
  const int row = (c.h + 2 * c.hkv) * c.hd;
  const int64_t n = int64_t{c.b} * c.t, count = n * row;
  auto qkv = Randn(count, 31), dout = Randn(n * c.h * c.hd, 32);
  std::vector<float> out(n * c.h * c.hd), lse(int64_t{c.b} * c.h * c.t);
  kernels::AttentionForward(out.data(), lse.data(), qkv.data(), c.b, c.t, c.h, c.hkv, c.hd);
  std::vector<float> cos_t(int64_t{c.t} * (c.hd / 2)), sin_t(cos_t.size());
  kernels::RopeTables(cos_t.data(), sin_t.data(), c.t, c.hd, kernels::kRopeTheta);
  Dev<float> qkv_d(qkv), dout_d(dout), out_d(out), lse_d(lse), scratch(lse.size()), c_d(cos_t), s_d(sin_t);
  Dev<cuda::bf16> qkv16(count), dout16(dout.size());
  cuda::CastToBf16(qkv16.get(), qkv_d.get(), count, nullptr);
  cuda::CastToBf16(dout16.get(), dout_d.get(), dout.size(), nullptr);
  for (float p : {0.0f, 0.2f}) {
    const cuda::AttentionDropout drop{p, 77, 5};
    Dev<float> dqkv_a(count, NAN), dqkv_b(count, 0.5f);
    Dev<cuda::bf16> want(count), got(count, __float2bfloat16(NAN));
    cuda::AttentionBackwardBf16(dqkv_a.get(), dout_d.get(), dout16.get(), out_d.get(), lse_d.get(), qkv_d.get(),
                                qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, scratch.get(), drop, nullptr, true);
    cuda::RopeBackwardToBf16(want.get(), dqkv_a.get(), c_d.get(), s_d.get(), c.b, c.t, c.h, c.hkv, c.hd, nullptr);
    cuda::AttentionRopeBackwardBf16(got.get(), dqkv_b.get(), dout_d.get(), dout16.get(), out_d.get(), lse_d.get(),
                                    qkv_d.get(), qkv16.get(), c_d.get(), s_d.get(), c.b, c.t, c.h, c.hkv, c.hd,
                                    scratch.get(), drop, nullptr);
    const std::vector<cuda::bf16> a = want.Host(), g = got.Host();
    int64_t differ = 0, first = -1;
    for (int64_t i = 0; i < count; ++i) {
      if (std::memcmp(&a[i], &g[i], sizeof(cuda::bf16)) != 0 && differ++ == 0) first = i;
    }
    EXPECT_EQ(differ, 0) << "hd " << c.hd << " t " << c.t << " h " << c.h << "/" << c.hkv << " p " << p
                         << ": first at row " << first / std::max(row, 1) << " column " << first % std::max(row, 1);
    if (CudaAttentionOnTensorCores(c.hd) && (c.hd == 16 || c.hd == 32 || c.hd == 64 || c.hd == 96 || c.hd == 128)) {
      EXPECT_EQ(dqkv_b.Host(), std::vector<float>(count, 0.5f)) << "the fp32 dqkv is not written, hd " << c.hd;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionBf16Test,
                         ::testing::Values(AttnCase{1, 1, 4, 4, 64}, AttnCase{2, 13, 4, 4, 64},
                                           AttnCase{2, 13, 4, 2, 32}, AttnCase{1, 77, 4, 1, 32},
                                           AttnCase{2, 130, 6, 6, 64}, AttnCase{1, 257, 4, 2, 64},
                                           AttnCase{3, 64, 2, 1, 64}, AttnCase{2, 191, 8, 2, 64},
                                           AttnCase{1, 100, 3, 3, 16}, AttnCase{4, 128, 6, 6, 64},
                                           AttnCase{3, 33, 2, 1, 8},
                                           // Every padded size of the tensor-core kernels and between
                                           // them (24, 40, 72, 80, 136), GQA and MQA; past 128 the
                                           // dk/dv column halves.
                                           AttnCase{2, 37, 4, 2, 24}, AttnCase{1, 70, 2, 1, 40},
                                           AttnCase{1, 65, 2, 2, 72}, AttnCase{2, 130, 4, 2, 80},
                                           AttnCase{1, 77, 4, 1, 80}, AttnCase{2, 100, 3, 1, 96},
                                           AttnCase{2, 191, 4, 2, 128}, AttnCase{1, 64, 4, 1, 128},
                                           AttnCase{1, 66, 2, 2, 136}, AttnCase{2, 129, 4, 1, 192},
                                           AttnCase{1, 200, 2, 1, 256}, AttnCase{2, 70, 4, 2, 256}));

// Attention dropout (model.attention.dropout) in both paths against a float64 host reference
// that draws the same masks (kernels::CounterUniform of kernels::AttentionDropoutCounter, keyed
// by the global token index from first_token), forward and backward. Dropout off must give the
// plain kernels' results bit for bit, and the masks must change the result.
struct AttnDropRef {
  std::vector<double> out, dqkv;
};

AttnDropRef AttentionDropoutReference(const std::vector<float>& qkv, const std::vector<float>& dout, int b, int t,
                                      int h, int hkv, int hd, const cuda::AttentionDropout& drop) {
  const int row = (h + 2 * hkv) * hd, group = h / hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const double keep_scale = 1.0 / (1.0 - drop.p);
  AttnDropRef r;
  r.out.assign(int64_t{b} * t * h * hd, 0.0);
  r.dqkv.assign(int64_t{b} * t * row, 0.0);
  auto at = [&](int bi, int i, int col) { return double{qkv[(int64_t{bi} * t + i) * row + col]}; };
  for (int bi = 0; bi < b; ++bi)
    for (int hi = 0; hi < h; ++hi) {
      const int qc = hi * hd, kc = (h + hi / group) * hd, vc = (h + hkv + hi / group) * hd;
      for (int i = 0; i < t; ++i) {
        std::vector<double> p(i + 1), m(i + 1), dp(i + 1);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double s = 0;
          for (int c = 0; c < hd; ++c) s += at(bi, i, qc + c) * at(bi, j, kc + c);
          p[j] = s * scale;
          mx = std::max(mx, p[j]);
        }
        for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        const uint64_t query = static_cast<uint64_t>(drop.first_token) + static_cast<uint64_t>(bi) * t + i;
        for (int j = 0; j <= i; ++j) {
          p[j] /= sum;
          const float u = kernels::CounterUniform(drop.seed, kernels::AttentionDropoutCounter(query, hi, h, t, j));
          m[j] = drop.p > 0 && u < drop.p ? 0.0 : (drop.p > 0 ? keep_scale : 1.0);
        }
        const int64_t orow = (int64_t{bi} * t + i) * h * hd + qc;
        for (int j = 0; j <= i; ++j)
          for (int c = 0; c < hd; ++c) r.out[orow + c] += p[j] * m[j] * at(bi, j, vc + c);
        double dsum = 0;
        for (int c = 0; c < hd; ++c) dsum += double{dout[orow + c]} * r.out[orow + c];
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int c = 0; c < hd; ++c) d += double{dout[orow + c]} * at(bi, j, vc + c);
          const double ds = p[j] * (m[j] * d - dsum) * scale;
          for (int c = 0; c < hd; ++c) {
            r.dqkv[(int64_t{bi} * t + i) * row + qc + c] += ds * at(bi, j, kc + c);
            r.dqkv[(int64_t{bi} * t + j) * row + kc + c] += ds * at(bi, i, qc + c);
            r.dqkv[(int64_t{bi} * t + j) * row + vc + c] += p[j] * m[j] * dout[orow + c];
          }
        }
      }
    }
  return r;
}

std::vector<float> ToFloats(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

class CudaAttentionDropoutTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaAttentionDropoutTest, MasksMatchTheCounterRngInBothPaths) {
  SKIP_WITHOUT_GPU();
  const AttnCase c = GetParam();
  const int row = (c.h + 2 * c.hkv) * c.hd;
  const int64_t n = int64_t{c.b} * c.t, outs = n * c.h * c.hd, stats = int64_t{c.b} * c.h * c.t;
  auto qkv = Randn(n * row, 37), dout = Randn(outs, 38);
  cuda::AttentionDropout drop;
  drop.p = 0.3f;
  drop.seed = 0x5eed1234abcdull;
  drop.first_token = 1000;  // as on rank 1 of a batch split over ranks
  const AttnDropRef ref = AttentionDropoutReference(qkv, dout, c.b, c.t, c.h, c.hkv, c.hd, drop);
  const AttnDropRef plain = AttentionDropoutReference(qkv, dout, c.b, c.t, c.h, c.hkv, c.hd, cuda::AttentionDropout{});
  ASSERT_GT(RelErr(ToFloats(ref.out), ToFloats(plain.out)), 0.05) << "the masks must matter";
  Dev<float> qkv_d(qkv), dout_d(dout), scratch(stats);
  Dev<cuda::bf16> qkv16(qkv.size()), dout16(dout.size());
  cuda::CastToBf16(qkv16.get(), qkv_d.get(), qkv.size(), nullptr);
  cuda::CastToBf16(dout16.get(), dout_d.get(), dout.size(), nullptr);
  for (bool tc : {false, true}) {
    const double tol = tc ? kAttnBf16Tol : 1e-4;
    Dev<float> out_d(outs, NAN), lse_d(stats, NAN), dqkv_d(n * row, 0.0f);
    if (tc) {
      cuda::AttentionForwardBf16(out_d.get(), lse_d.get(), qkv_d.get(), qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, drop,
                                 nullptr);
      cuda::AttentionBackwardBf16(dqkv_d.get(), dout_d.get(), dout16.get(), out_d.get(), lse_d.get(), qkv_d.get(),
                                  qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, scratch.get(), drop, nullptr);
    } else {
      cuda::AttentionForward(out_d.get(), lse_d.get(), qkv_d.get(), c.b, c.t, c.h, c.hkv, c.hd, drop, nullptr);
      cuda::AttentionBackward(dqkv_d.get(), dout_d.get(), out_d.get(), lse_d.get(), qkv_d.get(), c.b, c.t, c.h, c.hkv,
                              c.hd, scratch.get(), drop, nullptr);
    }
    EXPECT_LT(RelErr(out_d.Host(), ToFloats(ref.out)), tol) << "tc " << tc << " hd " << c.hd;
    EXPECT_LT(RelErr(dqkv_d.Host(), ToFloats(ref.dqkv)), tol) << "tc " << tc << " hd " << c.hd;
    if (tc) {  // overwrite: every element written, the bits of adding to zeros (NaN would show)
      Dev<float> written(n * row, NAN);
      cuda::AttentionBackwardBf16(written.get(), dout_d.get(), dout16.get(), out_d.get(), lse_d.get(), qkv_d.get(),
                                  qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, scratch.get(), drop, nullptr,
                                  /*overwrite=*/true);
      EXPECT_EQ(written.Host(), dqkv_d.Host()) << "hd " << c.hd;
    }
    // p = 0 through the dropout entry points is the plain kernels, bit for bit.
    cuda::AttentionDropout off = drop;
    off.p = 0.0f;
    Dev<float> a_out(outs), a_lse(stats), b_out(outs), b_lse(stats);
    if (tc) {
      cuda::AttentionForwardBf16(a_out.get(), a_lse.get(), qkv_d.get(), qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, off,
                                 nullptr);
      cuda::AttentionForwardBf16(b_out.get(), b_lse.get(), qkv_d.get(), qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd,
                                 nullptr);
    } else {
      cuda::AttentionForward(a_out.get(), a_lse.get(), qkv_d.get(), c.b, c.t, c.h, c.hkv, c.hd, off, nullptr);
      cuda::AttentionForward(b_out.get(), b_lse.get(), qkv_d.get(), c.b, c.t, c.h, c.hkv, c.hd, nullptr);
    }
    EXPECT_EQ(a_out.Host(), b_out.Host());
    EXPECT_LT(RelErr(b_out.Host(), ToFloats(plain.out)), tol);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionDropoutTest,
                         ::testing::Values(AttnCase{2, 77, 4, 2, 64}, AttnCase{1, 130, 4, 1, 32},
                                           AttnCase{2, 70, 2, 1, 128}, AttnCase{1, 66, 4, 2, 256},
                                           AttnCase{1, 40, 2, 2, 80}, AttnCase{2, 33, 2, 1, 8}));

// Not a check: times both attention paths at the reference configurations' shapes (tiny:
// b 64, t 256, h 6; small: b 16, t 1024, h 12; hd 64) and the sweep's large heads (hd 128 and
// 256 at d 1024). Run with --gtest_also_run_disabled_tests.
TEST(CudaOpsTest, DISABLED_AttentionTiming) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    const char* name;
    int b, t, h, hd;
  };
  for (const Shape& c : {Shape{"tiny", 64, 256, 6, 64}, Shape{"small", 16, 1024, 12, 64},
                         Shape{"hd128", 16, 1024, 8, 128}, Shape{"hd256", 16, 1024, 4, 256}}) {
    const int hd = c.hd, row = 3 * c.h * hd;
    const int64_t n = int64_t{c.b} * c.t;
    Dev<float> qkv(Randn(n * row, 5)), dout(Randn(n * c.h * hd, 6)), out(n * c.h * hd), lse(int64_t{c.b} * c.h * c.t),
        dqkv(n * row), scratch(int64_t{c.b} * c.h * c.t);
    Dev<cuda::bf16> qkv16(n * row), dout16(n * c.h * hd);
    cuda::CastToBf16(qkv16.get(), qkv.get(), n * row, nullptr);
    cuda::CastToBf16(dout16.get(), dout.get(), n * c.h * hd, nullptr);
    for (int tc = 0; tc < 2; ++tc) {
      double med[2];
      for (int pass = 0; pass < 2; ++pass) {
        med[pass] = testing::MedianMs([&] {
          if (pass == 0 && tc) {
            cuda::AttentionForwardBf16(out.get(), lse.get(), qkv.get(), qkv16.get(), c.b, c.t, c.h, c.h, hd, nullptr);
          } else if (pass == 0) {
            cuda::AttentionForward(out.get(), lse.get(), qkv.get(), c.b, c.t, c.h, c.h, hd, nullptr);
          } else if (tc) {
            cuda::AttentionBackwardBf16(dqkv.get(), dout.get(), dout16.get(), out.get(), lse.get(), qkv.get(),
                                        qkv16.get(), c.b, c.t, c.h, c.h, hd, scratch.get(), nullptr);
          } else {
            cuda::AttentionBackward(dqkv.get(), dout.get(), out.get(), lse.get(), qkv.get(), c.b, c.t, c.h, c.h, hd,
                                    scratch.get(), nullptr);
          }
        });
      }
      // Causal matmul FLOPs: forward 2 products, backward 5, each 2 b h t^2 hd / 2.
      const double f = static_cast<double>(c.b) * c.h * c.t * c.t * hd;
      std::printf("[ attention %s %s ] forward %.3f ms (%.1f TFLOP/s)  backward %.3f ms (%.1f TFLOP/s)\n", c.name,
                  tc ? "bf16-tc" : "fp32-simt", med[0], 2 * f / med[0] / 1e9, med[1], 5 * f / med[1] / 1e9);
    }
  }
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
