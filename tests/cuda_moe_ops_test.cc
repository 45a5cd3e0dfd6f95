// The MoE layer's CUDA ops against their CPU twins (kernels/router.h, routing_plan.h,
// experts.h) on a sweep of shapes: odd token counts, experts that get no tokens, k = 1..4,
// capacity drops, one hot expert; and the fast path's products (GroupedBlas over the experts'
// layouts) against the grouped-GEMM oracle (the layouts' moves: cuda_expert_layout_test.cc).
// The error is ||cuda - cpu|| / ||cpu|| per output, with a tolerance stated per op. Skips
// without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/moe_bookkeeping.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/common.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/router_product.h"
#include "kernels/experts.h"
#include "kernels/router.h"
#include "kernels/routing_plan.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaOpsTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU ops to test"; }

#else

using testing::Dev;
using testing::kBf16Tol;
using testing::kFp32Tol;
using testing::Randn;
using testing::RelErr;
using testing::ToFloat;

struct MoeCase {
  int n, e, k;
  double capacity;
  bool empty_expert;         // route nothing to the last expert
  bool hot_expert = false;   // route most tokens to expert 0 (the fast path's chunked products)
};

class CudaMoeOpsTest : public ::testing::TestWithParam<MoeCase> {};

TEST_P(CudaMoeOpsTest, RouterPlanPermuteAndExpertsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const MoeCase c = GetParam();
  const int n = c.n, E = c.e, k = c.k, D = 48, F = 40;
  auto logits = Randn(int64_t{n} * E, 22, 2.0f);
  if (c.empty_expert) {
    for (int t = 0; t < n; ++t) logits[int64_t{t} * E + E - 1] = -30.0f;
  }
  if (c.hot_expert) {
    for (int t = 0; t < n; ++t) logits[int64_t{t} * E] += 8.0f;
  }
  // Router forward and stats.
  std::vector<float> probs(n * E), lse(n), w(n * k);
  std::vector<int32_t> idx(n * k);
  kernels::RouterForward(probs.data(), lse.data(), idx.data(), w.data(), logits.data(), n, E, k);
  Dev<float> logits_d(logits), probs_d(n * E), lse_d(n), w_d(n * k);
  Dev<int32_t> idx_d(n * k);
  cuda::RouterForward(probs_d.get(), lse_d.get(), idx_d.get(), w_d.get(), logits_d.get(), n, E, k, nullptr);
  EXPECT_LT(RelErr(probs_d.Host(), probs), kFp32Tol);
  EXPECT_LT(RelErr(lse_d.Host(), lse), kFp32Tol);
  EXPECT_EQ(idx_d.Host(), idx);
  EXPECT_LT(RelErr(w_d.Host(), w), kFp32Tol);
  std::vector<double> prob_sum(E, 0.0);
  double z = 0, ent = 0;
  kernels::RouterStats(prob_sum.data(), &z, &ent, probs.data(), lse.data(), n, E);
  Dev<double> stats_d(E + 2, 0.0);
  cuda::RouterStats(stats_d.get(), stats_d.get() + E, stats_d.get() + E + 1, probs_d.get(), lse_d.get(), n, E,
                    nullptr);
  std::vector<double> st = stats_d.Host();
  for (int x = 0; x < E; ++x) EXPECT_NEAR(st[x], prob_sum[x], 1e-5 * n);
  EXPECT_NEAR(st[E], z, 1e-5 * std::abs(z) + 1e-9);
  EXPECT_NEAR(st[E + 1], ent, 1e-5 * std::abs(ent) + 1e-9);

  // Routing plan: exact.
  kernels::RoutingPlan plan = kernels::BuildRoutingPlan(idx.data(), n, k, E, moe::ExpertCapacity(c.capacity, n, k, E));
  Dev<int32_t> counts_d(E), routed_d(E), offsets_d(E + 1), a2s_d(n * k), s2a_d(n * k, -7);
  const int64_t cap = plan.capacity;
  cuda::BuildRoutingPlan(counts_d.get(), routed_d.get(), offsets_d.get(), a2s_d.get(), s2a_d.get(), idx_d.get(),
                         n, k, E, cap, nullptr);
  EXPECT_EQ(counts_d.Host(), plan.counts);
  EXPECT_EQ(offsets_d.Host(), plan.offsets);
  EXPECT_EQ(a2s_d.Host(), plan.assignment_to_slot);
  std::vector<int32_t> s2a = s2a_d.Host();
  s2a.resize(plan.kept());
  EXPECT_EQ(s2a, plan.slot_to_assignment);
  std::vector<int32_t> routed = routed_d.Host();
  for (int x = 0; x < E; ++x) EXPECT_EQ(routed[x], plan.routed[x]);
  if (c.empty_expert) {
    EXPECT_EQ(plan.counts[E - 1], 0);
  }

  // Permute / experts / unpermute, forward and backward, fp32 and bf16.
  const int kept = plan.kept(), rows = n * k;
  auto x = Randn(int64_t{n} * D, 23), dout = Randn(int64_t{n} * D, 24);
  auto w1 = Randn(int64_t{E} * D * F, 25, 0.2f), w3 = Randn(int64_t{E} * D * F, 26, 0.2f),
       w2 = Randn(int64_t{E} * F * D, 27, 0.2f);
  std::vector<float> xs(int64_t{kept} * D), ys(int64_t{kept} * D), g(int64_t{kept} * F), u(g.size()), h(g.size());
  std::vector<float> out(int64_t{n} * D), dys(int64_t{kept} * D, 0.f), dweights(n * k, 0.f), dxs(xs.size(), 0.f);
  std::vector<float> dx(int64_t{n} * D, 0.f), dw1(w1.size(), 0.f), dw3(w3.size(), 0.f), dw2(w2.size(), 0.f);
  std::vector<float> scratch(2 * g.size() + 1);
  kernels::PermuteForward(xs.data(), x.data(), plan, D);
  kernels::ExpertsForward(ys.data(), g.data(), u.data(), h.data(), xs.data(), w1.data(), w3.data(), w2.data(),
                          plan.counts.data(), E, D, F);
  kernels::UnpermuteForward(out.data(), ys.data(), w.data(), plan, D);
  kernels::UnpermuteBackward(dys.data(), dweights.data(), dout.data(), ys.data(), w.data(), plan, D);
  kernels::ExpertsBackward(dxs.data(), dw1.data(), dw3.data(), dw2.data(), dys.data(), xs.data(), g.data(),
                           u.data(), h.data(), w1.data(), w3.data(), w2.data(), plan.counts.data(), E, D, F,
                           scratch.data());
  kernels::PermuteBackward(dx.data(), dxs.data(), plan, D);
  for (bool tc : {false, true}) {
    const double tol = tc ? kBf16Tol : kFp32Tol;
    Dev<float> x_d(x), dout_d(dout), w1_d(w1), w3_d(w3), w2_d(w2);
    Dev<float> xs_d(int64_t{rows} * D, NAN), ys_d(int64_t{rows} * D, NAN), g_d(int64_t{rows} * F),
        u_d(int64_t{rows} * F), h_d(int64_t{rows} * F), out_d(int64_t{n} * D, NAN);
    Dev<float> dys_d(int64_t{rows} * D), dw_d(n * k), dxs_d(int64_t{rows} * D), dx_d(int64_t{n} * D),
        dw1_d(w1.size()), dw3_d(w3.size()), dw2_d(w2.size()), scr_d(2 * int64_t{rows} * F);
    cuda::PermuteForward(xs_d.get(), x_d.get(), a2s_d.get(), n, k, D, nullptr);
    cuda::ExpertsForward(ys_d.get(), g_d.get(), u_d.get(), h_d.get(), xs_d.get(), w1_d.get(), w3_d.get(),
                         w2_d.get(), offsets_d.get(), rows, E, D, F, tc, nullptr);
    cuda::UnpermuteForward(out_d.get(), ys_d.get(), w_d.get(), a2s_d.get(), n, k, D, nullptr);
    // With a residual (the block's x_mid): residual + the combine, the bits of adding it after.
    Dev<float> with_res(int64_t{n} * D, NAN), added(int64_t{n} * D, NAN);
    cuda::UnpermuteForward(with_res.get(), ys_d.get(), w_d.get(), a2s_d.get(), n, k, D, nullptr, dout_d.get());
    cuda::AddOut(added.get(), dout_d.get(), out_d.get(), int64_t{n} * D, nullptr);
    EXPECT_EQ(with_res.Host(), added.Host());
    cuda::UnpermuteBackward(dys_d.get(), dw_d.get(), dout_d.get(), ys_d.get(), w_d.get(), a2s_d.get(), n, k, D,
                            nullptr);
    cuda::ExpertsBackward(dxs_d.get(), dw1_d.get(), dw3_d.get(), dw2_d.get(), dys_d.get(), xs_d.get(), g_d.get(),
                          u_d.get(), h_d.get(), w1_d.get(), w3_d.get(), w2_d.get(), offsets_d.get(), rows, E, D,
                          F, scr_d.get(), tc, nullptr);
    cuda::PermuteBackward(dx_d.get(), dxs_d.get(), a2s_d.get(), n, k, D, nullptr);
    auto first = [](std::vector<float> v, int64_t count) { v.resize(count); return v; };
    EXPECT_EQ(first(xs_d.Host(), xs.size()), xs);
    EXPECT_LT(RelErr(first(ys_d.Host(), ys.size()), ys), tol) << "bf16 " << tc;
    EXPECT_LT(RelErr(out_d.Host(), out), tol);
    EXPECT_LT(RelErr(first(dys_d.Host(), dys.size()), dys), tol);
    EXPECT_LT(RelErr(dw_d.Host(), dweights), tol);
    EXPECT_LT(RelErr(dx_d.Host(), dx), tol);
    EXPECT_LT(RelErr(dw1_d.Host(), dw1), tol);
    EXPECT_LT(RelErr(dw3_d.Host(), dw3), tol);
    EXPECT_LT(RelErr(dw2_d.Host(), dw2), tol);
  }

  // The fast path (bf16 through cuBLAS: strided batched products, or chunked ones when padding
  // every expert would cost too much) from the counts copied to the host, as the model does once per layer.
  // Expert-row buffers start as NaN: only the layout's own rows may be read.
  {
    const std::vector<int32_t> counts_host = counts_d.Host();
    const int64_t brows = cuda::ExpertLayoutRows(counts_host.data(), E);
    const cuda::ExpertLayout layout = cuda::PlanExpertLayout(counts_host.data(), E);
    const int cap = layout.chunk;
    // Every count in the same 128 rows as the largest: no chunking pads fewer rows.
    bool balanced = true;
    for (int32_t count : counts_host) balanced = balanced && (count + 127) / 128 == (counts_host[0] + 127) / 128;
    if (c.hot_expert) {
      EXPECT_TRUE(cap > 0 && !layout.strided) << "a hot expert takes the chunked products";
    } else if (balanced) {
      EXPECT_TRUE(layout.strided) << "balanced experts take the strided products";
    }
    cuda::GroupedBlas gblas;
    Dev<float> x_d(x), dout_d(dout), w1_d(w1), w3_d(w3), w2_d(w2);
    Dev<float> xs_d(int64_t{rows} * D, NAN), ys_d(int64_t{rows} * D, NAN), out_d(int64_t{n} * D, NAN);
    Dev<float> dys_d(int64_t{rows} * D), dw_d(n * k), dxs_d(int64_t{rows} * D), dx_d(int64_t{n} * D),
        dw1_d(w1.size()), dw3_d(w3.size()), dw2_d(w2.size());
    const cuda::bf16 nan16 = __float2bfloat16(NAN);
    Dev<cuda::bf16> xs16(brows * D, nan16), dys16(brows * D, nan16), g16(brows * F, nan16), u16(brows * F, nan16),
        h16(brows * F, nan16), w1_16(w1.size()), w3_16(w3.size()), w2_16(w2.size()), fwd16(int64_t{rows} * D),
        scr16(cuda::ExpertsBf16Scratch(brows, E, D, F), nan16);
    cuda::CastToBf16(w1_16.get(), w1_d.get(), w1.size(), nullptr);
    cuda::CastToBf16(w3_16.get(), w3_d.get(), w3.size(), nullptr);
    cuda::CastToBf16(w2_16.get(), w2_d.get(), w2.size(), nullptr);
    cuda::PermuteForward(xs_d.get(), x_d.get(), a2s_d.get(), n, k, D, nullptr);
    cuda::ToExpertLayout(xs16.get(), xs_d.get(), counts_host.data(), E, D, nullptr);
    cuda::ExpertsForwardBf16(gblas, counts_host.data(), ys_d.get(), fwd16.get(), g16.get(), u16.get(), h16.get(),
                             xs16.get(), w1_16.get(), w3_16.get(), w2_16.get(), E, D, F, scr16.get(), nullptr);
    auto first = [](std::vector<float> v, int64_t count) { v.resize(count); return v; };
    if (cap == 0) {  // (the backward overwrites g16 with its gradient)
      EXPECT_LT(RelErr(first(ToFloat(g16.Host()), g.size()), g), kBf16Tol);
    }
    cuda::UnpermuteForward(out_d.get(), ys_d.get(), w_d.get(), a2s_d.get(), n, k, D, nullptr);
    cuda::UnpermuteBackward(dys_d.get(), dw_d.get(), dout_d.get(), ys_d.get(), w_d.get(), a2s_d.get(), n, k, D,
                            nullptr);
    cuda::ToExpertLayout(dys16.get(), dys_d.get(), counts_host.data(), E, D, nullptr);
    cuda::ExpertsBackwardBf16(gblas, counts_host.data(), dxs_d.get(), dw1_d.get(), dw3_d.get(), dw2_d.get(),
                              dys16.get(), xs16.get(), g16.get(), u16.get(), h16.get(), w1_16.get(), w3_16.get(),
                              w2_16.get(), E, D, F, scr16.get(), nullptr);
    cuda::PermuteBackward(dx_d.get(), dxs_d.get(), a2s_d.get(), n, k, D, nullptr);
    EXPECT_LT(RelErr(first(ys_d.Host(), ys.size()), ys), kBf16Tol) << "fast path, pad rows " << cap;
    EXPECT_LT(RelErr(first(ToFloat(fwd16.Host()), ys.size()), ys), kBf16Tol);
    EXPECT_LT(RelErr(out_d.Host(), out), kBf16Tol);
    EXPECT_LT(RelErr(first(dys_d.Host(), dys.size()), dys), kBf16Tol);
    EXPECT_LT(RelErr(dw_d.Host(), dweights), kBf16Tol);
    EXPECT_LT(RelErr(dx_d.Host(), dx), kBf16Tol);
    EXPECT_LT(RelErr(dw1_d.Host(), dw1), kBf16Tol);
    EXPECT_LT(RelErr(dw3_d.Host(), dw3), kBf16Tol);
    EXPECT_LT(RelErr(dw2_d.Host(), dw2), kBf16Tol);

    // As the model runs it: no saved h (the forward keeps it in its scratch, the backward computes
    // it again from g, u), and the unpermute over the bf16 output rows. The same bits as above.
    Dev<float> out_b(int64_t{n} * D, NAN), dys_b(int64_t{rows} * D), dwts_b(n * k), dxs_b(int64_t{rows} * D),
        dw1_b(w1.size()), dw3_b(w3.size()), dw2_b(w2.size());
    Dev<cuda::bf16> ys16_b(int64_t{rows} * D), g16_b(brows * F, nan16), u16_b(brows * F, nan16),
        scr16_b(cuda::ExpertsBf16Scratch(brows, E, D, F), nan16);
    cuda::ExpertsForwardBf16(gblas, counts_host.data(), nullptr, ys16_b.get(), g16_b.get(), u16_b.get(), nullptr,
                             xs16.get(), w1_16.get(), w3_16.get(), w2_16.get(), E, D, F, scr16_b.get(), nullptr);
    cuda::UnpermuteForward(out_b.get(), ys16_b.get(), w_d.get(), a2s_d.get(), n, k, D, nullptr);
    Dev<float> with_res16(int64_t{n} * D, NAN), added16(int64_t{n} * D, NAN);
    cuda::UnpermuteForward(with_res16.get(), ys16_b.get(), w_d.get(), a2s_d.get(), n, k, D, nullptr, dout_d.get());
    cuda::AddOut(added16.get(), dout_d.get(), out_b.get(), int64_t{n} * D, nullptr);
    EXPECT_EQ(with_res16.Host(), added16.Host());
    cuda::UnpermuteBackward(dys_b.get(), dwts_b.get(), dout_d.get(), ys16_b.get(), w_d.get(), a2s_d.get(), n, k, D,
                            nullptr);
    cuda::ExpertsBackwardBf16(gblas, counts_host.data(), dxs_b.get(), dw1_b.get(), dw3_b.get(), dw2_b.get(),
                              dys16.get(), xs16.get(), g16_b.get(), u16_b.get(), nullptr, w1_16.get(), w3_16.get(),
                              w2_16.get(), E, D, F, scr16_b.get(), nullptr);
    const int64_t kept_d = int64_t{kept} * D;
    EXPECT_EQ(first(ToFloat(ys16_b.Host()), kept_d), first(ToFloat(fwd16.Host()), kept_d));
    EXPECT_EQ(out_b.Host(), out_d.Host());
    EXPECT_EQ(first(dys_b.Host(), kept_d), first(dys_d.Host(), kept_d));
    EXPECT_EQ(dwts_b.Host(), dw_d.Host());
    EXPECT_EQ(first(dxs_b.Host(), kept_d), first(dxs_d.Host(), kept_d));
    EXPECT_EQ(dw1_b.Host(), dw1_d.Host());
    EXPECT_EQ(dw3_b.Host(), dw3_d.Host());
    EXPECT_EQ(dw2_b.Host(), dw2_d.Host());
  }

  // Router backward (through weights, aux and z).
  std::vector<float> aux(E), dlog(n * E, 0.1f);
  for (int x2 = 0; x2 < E; ++x2) aux[x2] = 0.01f * (x2 + 1);
  kernels::RouterBackward(dlog.data(), dweights.data(), probs.data(), lse.data(), idx.data(), aux.data(), 0.003f,
                          n, E, k);
  Dev<float> dlog_d(n * E, 0.1f), dwts_d(dweights), aux_d(aux);
  cuda::RouterBackward(dlog_d.get(), dwts_d.get(), probs_d.get(), lse_d.get(), idx_d.get(), aux_d.get(), 0.003f,
                       n, E, k, nullptr);
  EXPECT_LT(RelErr(dlog_d.Host(), dlog), 1e-4);
}

// The router's product on the CUDA cores against the host in double: each logit within fp32's
// rounding of its terms' magnitudes, the same bits on a second run, and within kFp32Tol of the
// cuBLAS product it replaces. Odd d (the scalar loads), a misaligned m, e of 1 to 64, every tile.
TEST(CudaOpsTest, RouterProductMatchesHostAndCublas) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int n, d, e, offset;  // offset: m starts this many floats into its buffer
  };
  cuda::Blas blas;
  for (const Shape& c : {Shape{1, 1, 1, 0}, Shape{5, 7, 3, 0}, Shape{130, 48, 8, 0}, Shape{257, 96, 16, 1},
                         Shape{300, 128, 17, 0}, Shape{64, 36, 33, 0}, Shape{1000, 768, 32, 0}, Shape{200, 1024, 64, 0},
                         Shape{77, 1029, 64, 0}, Shape{65, 40, 63, 2}}) {
    SCOPED_TRACE(::testing::Message() << "n " << c.n << " d " << c.d << " e " << c.e << " offset " << c.offset);
    const std::vector<float> m = Randn(int64_t{c.n} * c.d + c.offset, 31, 1.5f), w = Randn(int64_t{c.e} * c.d, 32, 0.02f);
    Dev<float> m_d(m), w_d(w), got_d(int64_t{c.n} * c.e, -1.f), again_d(int64_t{c.n} * c.e), blas_d(int64_t{c.n} * c.e);
    const float* mp = m_d.get() + c.offset;
    cuda::RouterProduct(got_d.get(), mp, w_d.get(), c.n, c.d, c.e, nullptr);
    cuda::RouterProduct(again_d.get(), mp, w_d.get(), c.n, c.d, c.e, nullptr);
    blas.Gemm(false, true, c.n, c.e, c.d, 1.0f, mp, c.d, w_d.get(), c.d, 0.0f, blas_d.get(), c.e, cuda::DType::kF32,
              nullptr);
    const std::vector<float> got = got_d.Host(), again = again_d.Host(), via_blas = blas_d.Host();
    double worst = 0;
    for (int t = 0; t < c.n; ++t) {
      for (int x = 0; x < c.e; ++x) {
        double ref = 0, mag = 0;
        for (int j = 0; j < c.d; ++j) {
          const double term = double{m[c.offset + int64_t{t} * c.d + j]} * w[int64_t{x} * c.d + j];
          ref += term;
          mag += std::fabs(term);
        }
        const double err = std::fabs(got[int64_t{t} * c.e + x] - ref) / (mag + 1e-30);
        worst = std::max(worst, err);
      }
    }
    // fp32 sums of d terms: rounding grows as sqrt(d) (a margin of about 6 over its typical size).
    EXPECT_LT(worst, 5e-7 * std::sqrt(static_cast<double>(c.d)) + 1e-7) << "largest error over the terms' magnitudes";
    EXPECT_EQ(std::memcmp(got.data(), again.data(), sizeof(float) * got.size()), 0) << "a second run differs";
    EXPECT_LT(RelErr(got, via_blas), kFp32Tol);
  }
  EXPECT_THROW(cuda::RouterProduct(nullptr, nullptr, nullptr, 1, 8, cuda::kRouterProductMaxExperts + 1, nullptr),
               std::invalid_argument);
}

// The router's product at the sweep's shapes, this kernel against cuBLAS's fp32 product (median ms
// of 10 runs): run by hand with --gtest_also_run_disabled_tests.
TEST(CudaOpsTest, DISABLED_RouterProductTiming) {
  SKIP_WITHOUT_GPU();
  cuda::Blas blas;
  for (const auto& [n, d, e] : {std::tuple{16384, 768, 8}, std::tuple{16384, 1024, 32}, std::tuple{16384, 1024, 64},
                                std::tuple{32768, 768, 4}}) {
    Dev<float> m(Randn(int64_t{n} * d, 1)), w(Randn(int64_t{e} * d, 2, 0.02f)), out(int64_t{n} * e);
    const double med[2] = {
        testing::MedianMs([&] { cuda::RouterProduct(out.get(), m.get(), w.get(), n, d, e, nullptr); }),
        testing::MedianMs([&] {
          blas.Gemm(false, true, n, e, d, 1.0f, m.get(), d, w.get(), d, 0.0f, out.get(), e, cuda::DType::kF32, nullptr);
        })};
    const double flop = 2.0 * n * d * e;
    std::printf("[ router product n %d d %d e %d ] ours %.1f us (%.1f TFLOP/s), cuBLAS fp32 %.1f us (%.1f TFLOP/s)\n", n,
                d, e, med[0] * 1e3, flop / med[0] / 1e9, med[1] * 1e3, flop / med[1] / 1e9);
  }
}

// The fast grouped products against the simple kernel (its oracle) on the same bf16 operands:
// every op, uneven groups, an empty group, beta 0 and 1. The fast path writes bf16: its
// rounding (2^-9 relative) bounds the difference.
TEST(CudaOpsTest, GroupedBlasMatchesGroupedGemmOracle) {
  SKIP_WITHOUT_GPU();
  cuda::GroupedBlas gblas;
  const std::vector<int32_t> counts = {37, 0, 130, 1, 64};
  const int groups = static_cast<int>(counts.size());
  std::vector<int32_t> offsets(groups + 1, 0);
  for (int x = 0; x < groups; ++x) offsets[x + 1] = offsets[x] + counts[x];
  const int rows = offsets[groups];
  Dev<int32_t> offsets_d(offsets);
  for (cuda::GroupedOp op : {cuda::GroupedOp::kNN, cuda::GroupedOp::kNT, cuda::GroupedOp::kTN}) {
    for (float beta : {0.0f, 1.0f}) {
      // kNN/kNT: c (rows, n) from a (rows, k), b (groups, k, n) or (groups, n, k).
      // kTN: c (groups, m, n) from a (rows, m), b (rows, n).
      const int m = 48, n = 72, k = 40;
      const bool tn = op == cuda::GroupedOp::kTN;
      const int64_t a_size = tn ? int64_t{rows} * m : int64_t{rows} * k;
      const int64_t b_size = tn ? int64_t{rows} * n : int64_t{groups} * k * n;
      const int64_t c_size = tn ? int64_t{groups} * m * n : int64_t{rows} * n;
      auto a = Randn(a_size, 31), b = Randn(b_size, 32), c0 = Randn(c_size, 33);
      // Round the operands to bf16 first so that both paths see the same values.
      Dev<float> a_d(a), b_d(b);
      Dev<cuda::bf16> a16(a.size()), b16(b.size());
      cuda::CastToBf16(a16.get(), a_d.get(), a.size(), nullptr);
      cuda::CastToBf16(b16.get(), b_d.get(), b.size(), nullptr);
      Dev<float> c_oracle(c0), c0_d(c0);
      Dev<cuda::bf16> c_fast(c0.size());
      cuda::CastToBf16(c_fast.get(), c0_d.get(), c0.size(), nullptr);
      cuda::GroupedGemm(op, groups, offsets_d.get(), rows, tn ? m : 0, n, tn ? 0 : k, 0.5f, a_d.get(), b_d.get(),
                        beta, c_oracle.get(), /*tensor_cores=*/true, nullptr);
      gblas.Gemm(op, groups, counts.data(), tn ? m : 0, n, tn ? 0 : k, 0.5f, beta, {{a16.get(), b16.get(), c_fast.get()}},
                 nullptr);
      EXPECT_LT(RelErr(ToFloat(c_fast.Host()), c_oracle.Host()), 4e-3)
          << "op " << static_cast<int>(op) << " beta " << beta;
    }
  }
}

// The padded products against the same oracle: every operand's experts `cap` rows apart, the
// rows past each count zero (ToExpertLayout), beta 0 and 1; the weight gradient added to fp32.
TEST(CudaOpsTest, GroupedBlasPaddedMatchesGroupedGemmOracle) {
  SKIP_WITHOUT_GPU();
  cuda::GroupedBlas gblas;
  const std::vector<int32_t> counts = {37, 0, 130, 1, 64};
  const int groups = static_cast<int>(counts.size()), cap = 136;
  std::vector<int32_t> offsets(groups + 1, 0);
  for (int x = 0; x < groups; ++x) offsets[x + 1] = offsets[x] + counts[x];
  const int rows = offsets[groups];
  Dev<int32_t> offsets_d(offsets);
  // Compact (rows, width) to padded (groups * cap, width), zero between; and back.
  auto pad = [&](const std::vector<float>& compact, int width) {
    std::vector<float> out(int64_t{groups} * cap * width, 0.0f);
    for (int x = 0; x < groups; ++x)
      for (int64_t i = 0; i < int64_t{counts[x]} * width; ++i)
        out[int64_t{x} * cap * width + i] = compact[int64_t{offsets[x]} * width + i];
    return out;
  };
  auto unpad = [&](const std::vector<float>& padded, int width) {
    std::vector<float> out(int64_t{rows} * width);
    for (int x = 0; x < groups; ++x)
      for (int64_t i = 0; i < int64_t{counts[x]} * width; ++i)
        out[int64_t{offsets[x]} * width + i] = padded[int64_t{x} * cap * width + i];
    return out;
  };
  auto to16 = [](const std::vector<float>& v) {
    Dev<float> d(v);
    auto out = std::make_unique<Dev<cuda::bf16>>(v.size());
    cuda::CastToBf16(out->get(), d.get(), v.size(), nullptr);
    return out;
  };
  auto rounded = [&](const std::vector<float>& v) { return ToFloat(to16(v)->Host()); };
  const int m = 48, n = 72, k = 40;
  for (cuda::GroupedOp op : {cuda::GroupedOp::kNN, cuda::GroupedOp::kNT}) {
    for (float beta : {0.0f, 1.0f}) {
      auto a = rounded(Randn(int64_t{rows} * k, 51)), b = rounded(Randn(int64_t{groups} * k * n, 52));
      auto c0 = Randn(int64_t{rows} * n, 53);
      Dev<float> a_d(a), b_d(b), c_oracle(c0);
      cuda::GroupedGemm(op, groups, offsets_d.get(), rows, 0, n, k, 1.0f, a_d.get(), b_d.get(), beta, c_oracle.get(),
                        /*tensor_cores=*/true, nullptr);
      auto a16 = to16(pad(a, k)), b16 = to16(b), c16 = to16(pad(c0, n));
      gblas.Padded(op, groups, cap, n, k, beta, a16->get(), b16->get(), c16->get(), nullptr);
      EXPECT_LT(RelErr(unpad(ToFloat(c16->Host()), n), c_oracle.Host()), 4e-3)
          << "op " << static_cast<int>(op) << " beta " << beta;
    }
  }
  auto a = rounded(Randn(int64_t{rows} * m, 54)), b = rounded(Randn(int64_t{rows} * n, 55));
  auto c0 = Randn(int64_t{groups} * m * n, 56);
  Dev<float> a_d(a), b_d(b), c_oracle(c0), c_fast(c0);
  cuda::GroupedGemm(cuda::GroupedOp::kTN, groups, offsets_d.get(), rows, m, n, 0, 1.0f, a_d.get(), b_d.get(), 1.0f,
                    c_oracle.get(), /*tensor_cores=*/true, nullptr);
  const std::vector<int32_t> even = {200, 197, 230, 190, 164};  // pads to 256 rows each
  const cuda::ExpertLayout strided = cuda::PlanExpertLayout(even.data(), groups);
  ASSERT_TRUE(strided.strided);
  ASSERT_EQ(strided.chunk, 256);
  auto a16p = to16(pad(a, m)), b16p = to16(pad(b, n));
  gblas.PaddedWeightGrad(groups, cap, m, n, a16p->get(), b16p->get(), c_fast.get(), nullptr);
  EXPECT_LT(RelErr(c_fast.Host(), c_oracle.Host()), 4e-3) << "kTN into fp32";
}

// The layout's products (Products, WeightGrad) against the simple kernel on the same bf16
// operands, for a strided and a chunked layout (a hot expert over three chunks: runs of two and
// one in the weight gradient; an empty expert), beta 0 and 1, the weight gradient added to fp32
// and overwriting it. Layout buffers start as NaN past
// what ToExpertLayout writes.
TEST(CudaOpsTest, GroupedBlasLayoutProductsMatchGroupedGemmOracle) {
  SKIP_WITHOUT_GPU();
  cuda::GroupedBlas gblas;
  const int m = 48, n = 72, k = 40;
  auto rounded = [](const std::vector<float>& v) {
    Dev<float> d(v);
    Dev<cuda::bf16> h(v.size());
    cuda::CastToBf16(h.get(), d.get(), v.size(), nullptr);
    return ToFloat(h.Host());
  };
  for (const std::vector<int32_t>& counts :
       {std::vector<int32_t>{120, 100, 90, 112, 101}, std::vector<int32_t>{37, 0, 300, 1, 64}}) {
    const int groups = static_cast<int>(counts.size());
    const cuda::ExpertLayout l = cuda::PlanExpertLayout(counts.data(), groups);
    ASSERT_GT(l.chunk, 0);
    EXPECT_EQ(l.strided, counts[1] != 0) << "the first counts are even, the second have a hot expert";
    std::vector<int32_t> offsets(groups + 1, 0);
    for (int x = 0; x < groups; ++x) offsets[x + 1] = offsets[x] + counts[x];
    const int rows = offsets[groups];
    Dev<int32_t> offsets_d(offsets);
    const cuda::RowBlocks back = cuda::ExpertLayoutToCompact(counts.data(), groups);
    // Compact fp32 rows of `width` to the layout in bf16, and the layout back to compact fp32.
    auto to_layout = [&](const std::vector<float>& compact, int width) {
      Dev<float> d(compact);
      auto out = std::make_unique<Dev<cuda::bf16>>(l.rows * width, __float2bfloat16(NAN));
      cuda::ToExpertLayout(out->get(), d.get(), counts.data(), groups, width, nullptr);
      return out;
    };
    auto to_compact = [&](Dev<cuda::bf16>& lay, int width) {
      Dev<cuda::bf16> c16(int64_t{rows} * width);
      cuda::CopyRowBlocks(c16.get(), lay.get(), back, sizeof(cuda::bf16) * width, nullptr);
      return ToFloat(c16.Host());
    };
    for (cuda::GroupedOp op : {cuda::GroupedOp::kNN, cuda::GroupedOp::kNT}) {
      for (float beta : {0.0f, 1.0f}) {
        auto a = rounded(Randn(int64_t{rows} * k, 71)), b = rounded(Randn(int64_t{groups} * k * n, 72));
        auto c0 = rounded(Randn(int64_t{rows} * n, 73));
        Dev<float> a_d(a), b_d(b), c_oracle(c0);
        cuda::GroupedGemm(op, groups, offsets_d.get(), rows, 0, n, k, 1.0f, a_d.get(), b_d.get(), beta,
                          c_oracle.get(), /*tensor_cores=*/true, nullptr);
        Dev<cuda::bf16> b16(b.size());
        cuda::CastToBf16(b16.get(), b_d.get(), b.size(), nullptr);
        auto a16 = to_layout(a, k), c16 = to_layout(c0, n);
        gblas.Products(op, l, groups, n, k, beta, a16->get(), b16.get(), c16->get(), nullptr);
        EXPECT_LT(RelErr(to_compact(*c16, n), c_oracle.Host()), 4e-3)
            << "op " << static_cast<int>(op) << " beta " << beta << " chunk " << l.chunk << " strided " << l.strided;
      }
    }
    auto a = rounded(Randn(int64_t{rows} * m, 74)), b = rounded(Randn(int64_t{rows} * n, 75));
    auto c0 = Randn(int64_t{groups} * m * n, 76);
    Dev<float> a_d(a), b_d(b), c_oracle(c0), c_fast(c0);
    cuda::GroupedGemm(cuda::GroupedOp::kTN, groups, offsets_d.get(), rows, m, n, 0, 1.0f, a_d.get(), b_d.get(), 1.0f,
                      c_oracle.get(), /*tensor_cores=*/true, nullptr);
    auto a16 = to_layout(a, m), b16 = to_layout(b, n);
    gblas.WeightGrad(l, groups, m, n, a16->get(), b16->get(), c_fast.get(), nullptr);
    EXPECT_LT(RelErr(c_fast.Host(), c_oracle.Host()), 4e-3) << "kTN into fp32, strided " << l.strided;
    // Overwriting (beta 0 for each expert's first run of chunks, 1 for the others; the empty
    // expert cleared): c starts as NaN and must not be read.
    Dev<float> c_zero(c0.size(), 0.0f), c_over(c0.size(), NAN);
    cuda::GroupedGemm(cuda::GroupedOp::kTN, groups, offsets_d.get(), rows, m, n, 0, 1.0f, a_d.get(), b_d.get(), 0.0f,
                      c_zero.get(), /*tensor_cores=*/true, nullptr);
    gblas.WeightGrad(l, groups, m, n, a16->get(), b16->get(), c_over.get(), nullptr, /*overwrite=*/true);
    EXPECT_LT(RelErr(c_over.Host(), c_zero.Host()), 4e-3) << "kTN overwriting, strided " << l.strided;
  }
}

// Back-to-back grouped calls on a non-blocking stream, as CudaModel issues them, each with its
// own operands and no wait in between: every call must use its own pointers (one device
// pointer table serves every call).
TEST(CudaOpsTest, GroupedBlasBackToBackCallsKeepTheirOperands) {
  SKIP_WITHOUT_GPU();
  const int E = 4, D = 64, F = 48, calls = 12;
  const std::vector<int32_t> counts = {25, 31, 0, 24};
  std::vector<int32_t> offsets(E + 1, 0);
  for (int x = 0; x < E; ++x) offsets[x + 1] = offsets[x] + counts[x];
  const int rows = offsets[E];
  Dev<int32_t> offsets_d(offsets);
  auto w1 = Randn(int64_t{E} * D * F, 42, 0.2f);
  Dev<float> w1_d(w1);
  Dev<cuda::bf16> w1_16(w1.size());
  cuda::CastToBf16(w1_16.get(), w1_d.get(), w1.size(), nullptr);
  std::vector<std::unique_ptr<Dev<float>>> xs_d, ref_d;
  std::vector<std::unique_ptr<Dev<cuda::bf16>>> xs16, out16;
  for (int i = 0; i < calls; ++i) {
    auto xs = Randn(int64_t{rows} * D, 100 + i);
    xs_d.push_back(std::make_unique<Dev<float>>(xs));
    ref_d.push_back(std::make_unique<Dev<float>>(int64_t{rows} * F));
    xs16.push_back(std::make_unique<Dev<cuda::bf16>>(xs.size()));
    out16.push_back(std::make_unique<Dev<cuda::bf16>>(int64_t{rows} * F));
    cuda::CastToBf16(xs16[i]->get(), xs_d[i]->get(), xs.size(), nullptr);
    cuda::GroupedGemm(cuda::GroupedOp::kNN, E, offsets_d.get(), rows, 0, F, D, 1.0f, xs_d[i]->get(), w1_d.get(),
                      0.0f, ref_d[i]->get(), /*tensor_cores=*/true, nullptr);
  }
  MOE_CUDA_CHECK(cudaDeviceSynchronize());
  cudaStream_t stream;
  MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cuda::GroupedBlas gblas;
  for (int rep = 0; rep < 5; ++rep) {
    for (int i = 0; i < calls; ++i) {
      MOE_CUDA_CHECK(cudaMemsetAsync(out16[i]->get(), 0xff, sizeof(cuda::bf16) * rows * F, stream));
    }
    for (int i = 0; i < calls; ++i) {
      // A kernel of ours right before each call, as in the model (a cast).
      cuda::CastToBf16(xs16[i]->get(), xs_d[i]->get(), int64_t{rows} * D, stream);
      gblas.Gemm(cuda::GroupedOp::kNN, E, counts.data(), 0, F, D, 1.0f, 0.0f,
                 {{xs16[i]->get(), w1_16.get(), out16[i]->get()}}, stream);
    }
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int i = 0; i < calls; ++i) {
      EXPECT_LT(RelErr(ToFloat(out16[i]->Host()), ref_d[i]->Host()), 4e-3) << "repeat " << rep << " call " << i;
    }
  }
  MOE_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaMoeOpsTest,
                         ::testing::Values(MoeCase{37, 5, 1, 0.0, false}, MoeCase{37, 5, 2, 0.0, true},
                                           MoeCase{37, 8, 3, 0.0, true}, MoeCase{101, 8, 4, 0.0, false},
                                           MoeCase{101, 8, 2, 1.0, false}, MoeCase{77, 6, 4, 0.5, true},
                                           MoeCase{1, 4, 2, 0.0, false}, MoeCase{3001, 32, 4, 1.25, false},
                                           MoeCase{300, 64, 4, 0.0, true}, MoeCase{3001, 8, 2, 0.0, false, true},
                                           MoeCase{400, 6, 2, 0.0, true, true},
                                           // The CUDA limits (common/backend_limits.h): many experts,
                                           // top-8, and the most experts with a capacity.
                                           MoeCase{2000, 256, 8, 0.0, false}, MoeCase{3000, 512, 4, 0.0, true},
                                           MoeCase{700, 512, 8, 1.0, false}, MoeCase{50, 512, 8, 0.0, true}));

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
