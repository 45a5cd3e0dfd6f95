// The experts' layout on the GPU (kernels/cuda/expert_layout.h): the layout planner (host
// code, runs without a GPU), the moves into and out of the layout (ToExpertLayout,
// GatherToExpertLayout, AddFromExpertLayout, CombineFromExpertLayout, CopyRowBlocks), each
// against the plan-order path it replaces on one GPU. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/moe.h"
#include "kernels/routing_plan.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaExpertLayoutTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU ops to test"; }

#else

using testing::Dev;
using testing::Randn;
using testing::RelErr;
using testing::ToFloat;

int64_t DifferingBits(const std::vector<cuda::bf16>& a, const std::vector<cuda::bf16>& b) {
  int64_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    uint16_t ua, ub;
    std::memcpy(&ua, &a[i], 2);
    std::memcpy(&ub, &b[i], 2);
    differ += ua != ub;
  }
  return differ;
}

// A routing for the layout tests: k distinct experts per token, the last expert gets nothing,
// most tokens on expert 0 when hot; capacity > 0 drops what overflows.
struct RoutedCase {
  int n, k, e, d;
  int64_t capacity;
  bool hot;
};
std::vector<int32_t> RouteDistinct(const RoutedCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> idx(int64_t{c.n} * c.k);
  for (int t = 0; t < c.n; ++t) {
    for (int j = 0; j < c.k; ++j) {
      const int pick = c.hot && rng() % 4 != 0 ? 0 : static_cast<int>(rng() % (c.e - 1));
      idx[int64_t{t} * c.k + j] = (pick + j) % (c.e - 1);
    }
  }
  return idx;
}
// The plan's slot -> assignment table over every slot (n k, -1 past the kept rows).
std::vector<int32_t> SlotToAssignment(const kernels::RoutingPlan& plan, const RoutedCase& c) {
  std::vector<int32_t> s2a(int64_t{c.n} * c.k, -1);
  const int rows = plan.offsets[c.e];
  std::copy(plan.slot_to_assignment.begin(), plan.slot_to_assignment.begin() + rows, s2a.begin());
  return s2a;
}

// PlanExpertLayout (host code: runs without a GPU): even counts stay strided; an expert that
// takes half as much again as the others goes in chunks, padding far fewer rows than the strided
// layout would; when the largest count is 768 rows or more the layout never has more rows than
// the strided one (its cost is then at least 3 x its rows against 3 x the strided rows); it always
// holds every count, and the layout kept for the last counts is the one computed afresh.
TEST(CudaOpsTest, ExpertLayoutPlanPadsTheFewestRows) {
  std::mt19937 rng(7);
  for (int e : {4, 8, 32, 64}) {
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<int32_t> counts(e);
      std::uniform_int_distribution<int> spread(0, 4 + trial * 40);
      for (int32_t& c : counts) c = 1000 + spread(rng);
      if (trial % 3 == 0) counts[trial % e] = 1000 + 500 + 40 * trial;  // one hot expert
      if (trial % 5 == 0) counts[(trial + 1) % e] = 0;                  // one idle expert
      int64_t rows = 0, cap = 0;
      for (int32_t c : counts) {
        rows += c;
        cap = std::max<int64_t>(cap, (c + 127) / 128 * 128);
      }
      const cuda::ExpertLayout l = cuda::PlanExpertLayout(counts.data(), e);
      ASSERT_GT(l.chunk, 0);
      EXPECT_EQ(l.chunk % 128, 0);
      EXPECT_LE(l.rows, e * cap) << "e " << e << " trial " << trial;
      EXPECT_EQ(l.rows, int64_t{l.chunks} * l.chunk);
      for (int x = 0; x < e; ++x) EXPECT_GE(l.start[x + 1] - l.start[x], counts[x]) << "expert " << x;
      std::vector<int32_t> other(counts), third(counts);
      other[0] += 129;
      third[0] += 257;
      cuda::PlanExpertLayout(other.data(), e);  // two other layouts kept in place of l
      cuda::PlanExpertLayout(third.data(), e);
      for (int pass = 0; pass < 2; ++pass) {    // computed afresh, then the kept one
        const cuda::ExpertLayout again = cuda::PlanExpertLayout(counts.data(), e);
        EXPECT_TRUE(again.chunk == l.chunk && again.chunks == l.chunks && again.rows == l.rows &&
                    std::equal(l.start, l.start + e + 1, again.start))
            << "pass " << pass;
      }
    }
  }
  const std::vector<int32_t> even(32, 2048);
  EXPECT_TRUE(cuda::PlanExpertLayout(even.data(), 32).strided);
  std::vector<int32_t> hot(32, 2000);
  hot[5] = 3100;  // half as much again: strided pads every expert to 3200 rows (1.6 x the rows)
  const cuda::ExpertLayout l = cuda::PlanExpertLayout(hot.data(), 32);
  EXPECT_FALSE(l.strided);
  EXPECT_LT(l.rows, 32 * 3200 * 3 / 4) << "chunk " << l.chunk << " x " << l.chunks;
}

// ToExpertLayout: compact fp32 rows to the layout (strided or chunked: zero rows past each
// count), and ExpertLayoutToCompact's blocks back.
TEST(CudaOpsTest, ExpertLayoutPadsAndCompacts) {
  SKIP_WITHOUT_GPU();
  const int d = 6;
  for (const std::vector<int32_t>& counts : {std::vector<int32_t>{120, 100, 70, 112}, std::vector<int32_t>{300, 1, 0, 2}}) {
    const int e = static_cast<int>(counts.size());
    int rows = 0;
    for (int c : counts) rows += c;
    const cuda::ExpertLayout l = cuda::PlanExpertLayout(counts.data(), e);
    const int64_t lrows = cuda::ExpertLayoutRows(counts.data(), e);
    if (counts[0] == 120) {
      EXPECT_TRUE(l.strided && l.chunk == 128 && l.chunks == e) << "every expert padded to 128 rows";
    } else {
      // 300 rows in three chunks of 128, one chunk each for the 1 and the 2, none for the 0.
      EXPECT_TRUE(!l.strided && l.chunk == 128 && l.chunks == 5) << "chunked: " << l.chunk << " x " << l.chunks;
    }
    EXPECT_EQ(lrows, int64_t{l.chunks} * l.chunk);
    auto x = Randn(int64_t{rows} * d, 61);
    Dev<float> x_d(x);
    Dev<cuda::bf16> layout(lrows * d, __float2bfloat16(NAN)), back(int64_t{rows} * d);
    cuda::ToExpertLayout(layout.get(), x_d.get(), counts.data(), e, d, nullptr);
    cuda::CopyRowBlocks(back.get(), layout.get(), cuda::ExpertLayoutToCompact(counts.data(), e), sizeof(cuda::bf16) * d,
                        nullptr);
    EXPECT_LT(RelErr(ToFloat(back.Host()), x), 4e-3) << "chunk " << l.chunk;
    const std::vector<float> v = ToFloat(layout.Host());
    int o = 0;
    for (int xi = 0; xi < e; ++xi) {
      EXPECT_EQ(l.start[xi + 1] - l.start[xi], int64_t{(counts[xi] + l.chunk - 1) / l.chunk} * l.chunk +
                                                  (l.strided && counts[xi] == 0 ? l.chunk : 0))
          << "expert " << xi << "'s chunks";
      for (int64_t i = 0; i < l.start[xi + 1] - l.start[xi]; ++i) {
        for (int c = 0; c < d; ++c) {
          const float got = v[(l.start[xi] + i) * d + c];
          if (i < counts[xi]) {
            const float want = x[(int64_t{o} + i) * d + c];
            EXPECT_NEAR(got, want, 1e-2 * std::abs(want) + 1e-6);
          } else {
            EXPECT_EQ(got, 0.0f) << "pad row " << i << " of expert " << xi;
          }
        }
      }
      o += counts[xi];
    }
  }
}

// GatherToExpertLayout (one GPU's permute and layout in one pass) writes the same bits as the
// two-step path: the permuted fp32 rows (scaled by the routing weights, or not) through
// ToExpertLayout, and so does its copy from the rows' bf16 rounding (unscaled);
// AddFromExpertLayout sums each token's rows back as the host does. Strided and chunked layouts,
// an empty expert, capacity drops, d on the four-column path and off it. Layout buffers start as
// NaN: every row must be written.
TEST(CudaOpsTest, GatherToAndAddFromExpertLayoutMatchTheTwoStepPath) {
  SKIP_WITHOUT_GPU();
  for (const RoutedCase& c : {RoutedCase{300, 2, 4, 64, 0, false}, RoutedCase{257, 3, 5, 6, 0, true},
                              RoutedCase{200, 2, 4, 36, 90, false}, RoutedCase{1000, 1, 3, 128, 0, true}}) {
    const std::vector<int32_t> idx = RouteDistinct(c, c.n + c.d);
    const kernels::RoutingPlan plan = kernels::BuildRoutingPlan(idx.data(), c.n, c.k, c.e, c.capacity);
    const int rows = plan.offsets[c.e];
    const std::vector<float> x = Randn(int64_t{c.n} * c.d, 7), w = Randn(int64_t{c.n} * c.k, 8);
    const std::vector<int32_t> s2a = SlotToAssignment(plan, c);
    const int64_t lrows = cuda::ExpertLayoutRows(plan.counts.data(), c.e);
    Dev<float> x_d(x), w_d(w);
    Dev<int32_t> s2a_d(s2a);
    for (bool scaled : {false, true}) {
      std::vector<float> xs(std::max(1, rows) * int64_t{c.d});
      for (int slot = 0; slot < rows; ++slot) {
        const int a = s2a[slot];
        for (int col = 0; col < c.d; ++col) {
          const float v = x[int64_t{a / c.k} * c.d + col];
          xs[int64_t{slot} * c.d + col] = scaled ? v * w[a] : v;
        }
      }
      Dev<float> xs_d(xs);
      Dev<cuda::bf16> want(lrows * c.d, __float2bfloat16(NAN)), got(lrows * c.d, __float2bfloat16(NAN));
      cuda::ToExpertLayout(want.get(), xs_d.get(), plan.counts.data(), c.e, c.d, nullptr);
      cuda::GatherToExpertLayout(got.get(), x_d.get(), scaled ? w_d.get() : nullptr, s2a_d.get(), c.k,
                                 plan.counts.data(), c.e, c.d, nullptr);
      const std::vector<cuda::bf16> a = want.Host(), b = got.Host();
      EXPECT_EQ(DifferingBits(a, b), 0) << "n " << c.n << " k " << c.k << " e " << c.e << " d " << c.d << " scaled " << scaled
                           << " (" << lrows << " layout rows, " << rows << " kept)";
      if (!scaled) {  // from the rows' bf16 copy (the RMSNorm's second output): the same bits
        Dev<cuda::bf16> x16(int64_t{c.n} * c.d), from16(lrows * c.d, __float2bfloat16(NAN));
        cuda::CastToBf16(x16.get(), x_d.get(), int64_t{c.n} * c.d, nullptr);
        cuda::GatherToExpertLayout(from16.get(), x16.get(), s2a_d.get(), c.k, plan.counts.data(), c.e, c.d, nullptr);
        EXPECT_EQ(DifferingBits(a, from16.Host()), 0) << "from bf16 rows, n " << c.n << " d " << c.d;
      }
      // And back: each token's layout rows added to dx in assignment order, as the host adds them.
      const std::vector<float> dx0 = Randn(int64_t{c.n} * c.d, 9);
      std::vector<float> want_dx = dx0;
      const cuda::ExpertLayout l = cuda::PlanExpertLayout(plan.counts.data(), c.e);
      const std::vector<float> layout = ToFloat(b);
      for (int t = 0; t < c.n; ++t) {
        for (int j = 0; j < c.k; ++j) {
          const int64_t a = int64_t{t} * c.k + j;
          const int slot = plan.assignment_to_slot[a];
          if (slot < 0) continue;
          const int x = idx[a];
          const int64_t row = l.start[x] + slot - plan.offsets[x];
          for (int col = 0; col < c.d; ++col) want_dx[int64_t{t} * c.d + col] += layout[row * c.d + col];
        }
      }
      Dev<float> dx_d(dx0);
      Dev<int32_t> a2s_d(plan.assignment_to_slot), idx_d(idx);
      cuda::AddFromExpertLayout(dx_d.get(), got.get(), a2s_d.get(), idx_d.get(), c.n, c.k, plan.counts.data(), c.e,
                                c.d, nullptr);
      EXPECT_EQ(dx_d.Host(), want_dx) << "AddFromExpertLayout, n " << c.n << " d " << c.d;
    }
  }
}


// One GPU keeps the experts' output where the last product wrote it, in the layout: the combine
// out of the layout (with and without the residual) gives the bits of UnpermuteForward over the
// compact rows, and the gather of the output gradient that also computes the routing weights'
// gradient writes the bits of the plain gather and dots within fp32 rounding of UnpermuteBackward's
// (another order of the same sums); dropped assignments' dots are left as they were. Strided and
// chunked layouts, an empty expert, capacity drops, d on the four-column path and off it.
TEST(CudaOpsTest, CombineAndWeightGradientFromTheLayoutMatchThePlanOrderPath) {
  SKIP_WITHOUT_GPU();
  for (const RoutedCase& c : {RoutedCase{300, 2, 4, 64, 0, false}, RoutedCase{257, 3, 5, 6, 0, true},
                              RoutedCase{200, 2, 4, 36, 90, false}, RoutedCase{1000, 1, 3, 128, 0, true},
                              RoutedCase{640, 4, 6, 20, 0, true}}) {
    const std::vector<int32_t> idx = RouteDistinct(c, c.n * 3 + c.d);
    const kernels::RoutingPlan plan = kernels::BuildRoutingPlan(idx.data(), c.n, c.k, c.e, c.capacity);
    const int rows = plan.offsets[c.e];
    const int64_t lrows = cuda::ExpertLayoutRows(plan.counts.data(), c.e);
    const std::vector<int32_t> s2a = SlotToAssignment(plan, c);
    const std::vector<float> w = Randn(int64_t{c.n} * c.k, 11), dout = Randn(int64_t{c.n} * c.d, 12),
                             residual = Randn(int64_t{c.n} * c.d, 13);
    // The experts' output in the layout: random bf16 rows (the pad rows too: never read).
    Dev<float> y_src(Randn(lrows * c.d, 14));
    Dev<cuda::bf16> y_layout(lrows * c.d);
    cuda::CastToBf16(y_layout.get(), y_src.get(), lrows * c.d, nullptr);
    Dev<cuda::bf16> y_compact(std::max(1, rows) * int64_t{c.d});
    cuda::CopyRowBlocks(y_compact.get(), y_layout.get(), cuda::ExpertLayoutToCompact(plan.counts.data(), c.e),
                        sizeof(cuda::bf16) * c.d, nullptr);
    Dev<float> w_d(w), dout_d(dout), residual_d(residual);
    Dev<int32_t> s2a_d(s2a), a2s_d(plan.assignment_to_slot), idx_d(idx);
    for (bool with_residual : {false, true}) {
      const float* r = with_residual ? residual_d.get() : nullptr;
      Dev<float> want(int64_t{c.n} * c.d, NAN), got(int64_t{c.n} * c.d, NAN);
      cuda::UnpermuteForward(want.get(), y_compact.get(), w_d.get(), a2s_d.get(), c.n, c.k, c.d, nullptr, r);
      cuda::CombineFromExpertLayout(got.get(), y_layout.get(), w_d.get(), a2s_d.get(), idx_d.get(), c.n, c.k,
                                    plan.counts.data(), c.e, c.d, nullptr, r);
      const std::vector<float> a = want.Host(), b = got.Host();
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(float) * a.size()))
          << "combine, n " << c.n << " k " << c.k << " d " << c.d << " residual " << with_residual;
    }
    // The output gradient gathered into the layout, scaled by the weights, and the dots.
    Dev<cuda::bf16> plain(lrows * c.d, __float2bfloat16(NAN)), fused(lrows * c.d, __float2bfloat16(NAN));
    cuda::GatherToExpertLayout(plain.get(), dout_d.get(), w_d.get(), s2a_d.get(), c.k, plan.counts.data(), c.e, c.d,
                               nullptr);
    const float kUntouched = 7.0f;
    Dev<float> dots(int64_t{c.n} * c.k, kUntouched), want_dots(int64_t{c.n} * c.k, 0.0f);
    cuda::GatherToExpertLayout(fused.get(), dout_d.get(), w_d.get(), s2a_d.get(), c.k, plan.counts.data(), c.e, c.d,
                               nullptr, y_layout.get(), dots.get());
    EXPECT_EQ(DifferingBits(plain.Host(), fused.Host()), 0) << "gather, n " << c.n << " d " << c.d;
    cuda::UnpermuteBackward(nullptr, want_dots.get(), dout_d.get(), y_compact.get(), w_d.get(), a2s_d.get(), c.n, c.k,
                            c.d, nullptr);
    const std::vector<float> got_dots = dots.Host(), oracle = want_dots.Host();
    int kept = 0;
    for (int64_t a = 0; a < int64_t{c.n} * c.k; ++a) {
      if (plan.assignment_to_slot[a] < 0) {
        EXPECT_EQ(got_dots[a], kUntouched) << "dropped assignment " << a;
        continue;
      }
      ++kept;
      EXPECT_NEAR(got_dots[a], oracle[a], 1e-5 * std::sqrt(static_cast<double>(c.d)) * (1 + std::abs(oracle[a])))
          << "dot of assignment " << a << ", n " << c.n << " d " << c.d;
    }
    EXPECT_EQ(kept, rows);
  }
}

// Row blocks between wire order and expert order: a known permutation of odd-sized blocks,
// some empty, for 2-, 4- and 6-byte rows (the word sizes the kernel picks), and back.
TEST(CudaOpsTest, CopyRowBlocksMovesEveryBlock) {
  SKIP_WITHOUT_GPU();
  for (int row_elems : {1, 2, 3, 8, 384}) {
    const std::vector<int64_t> rows = {3, 0, 5, 1, 7, 2};  // blocks in source order
    const std::vector<int> order = {4, 1, 0, 5, 3, 2};      // destination order of the blocks
    std::vector<int64_t> src_row(rows.size()), dst_row(rows.size());
    int64_t at = 0;
    for (size_t i = 0; i < rows.size(); ++i) src_row[i] = at, at += rows[i];
    const int64_t total = at;
    at = 0;
    for (int i : order) dst_row[i] = at, at += rows[i];
    std::vector<uint16_t> src(total * row_elems);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 7 + 1);
    cuda::RowBlocks fwd, back;
    fwd.count = back.count = static_cast<int>(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      fwd.src_row[i] = src_row[i], fwd.dst_row[i] = dst_row[i], fwd.rows[i] = rows[i];
      back.src_row[i] = dst_row[i], back.dst_row[i] = src_row[i], back.rows[i] = rows[i];
    }
    Dev<uint16_t> src_d(src), mid_d(src.size()), back_d(src.size());
    cuda::CopyRowBlocks(mid_d.get(), src_d.get(), fwd, 2 * row_elems, nullptr);
    cuda::CopyRowBlocks(back_d.get(), mid_d.get(), back, 2 * row_elems, nullptr);
    const std::vector<uint16_t> mid = mid_d.Host();
    for (size_t i = 0; i < rows.size(); ++i) {
      for (int64_t r = 0; r < rows[i] * row_elems; ++r) {
        ASSERT_EQ(mid[dst_row[i] * row_elems + r], src[src_row[i] * row_elems + r]) << "block " << i;
      }
    }
    EXPECT_EQ(back_d.Host(), src) << "row of " << row_elems << " bf16";
  }
}


#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
