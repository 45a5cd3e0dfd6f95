// cuda::Blas, the cuBLASLt products every GPU layer runs on, against the CPU: linear layers in
// fp32 and bf16, and the shapes of one plan bucket (Blas::Canonical), each of which must get its
// own product; and the host planning of the products (canonical shapes, the experts' weight
// gradient in runs), which runs without a GPU. The rest skips without one.
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/common.h"
#include "kernels/cuda/expert_layout.h"
#include "kernels/cuda/grouped_blas.h"
#include "kernels/cuda/matmul.h"
#include "kernels/matmul.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaBlasTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU products to test"; }

#else

using testing::Dev;
using testing::kBf16Tol;
using testing::kFp32Tol;
using testing::Randn;
using testing::RelErr;

// Blas::Canonical (host code: runs without a GPU) on the shapes the layers make: the canonical
// shape is its own canonical, never smaller, with n, the leading dimensions, transposes, types
// and alignment kept; every matrix's rows still fit its leading dimension (a row's length is never
// rounded), and strided batches' strides follow the rounded rows.
TEST(CudaBlasTest, CanonicalShapesKeepEveryMatrixWithinItsLeadingDimension) {
  using Key = cuda::Blas::Key;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> size(1, 20000), count(1, 600), coin(0, 1);
  int rounded = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const bool ta = coin(rng), tb = coin(rng), pointers = coin(rng) == 1 && trial % 3 != 0;
    const int m = size(rng), n = size(rng), k = size(rng), batch = trial % 4 == 0 ? 1 : count(rng);
    const int lda = ta ? m : k, ldb = tb ? k : n, ldc = n;  // packed rows, as every caller has them
    const int64_t sa = pointers || batch == 1 ? 0 : int64_t{ta ? k : m} * lda;
    const int64_t sb = pointers || batch == 1 ? 0 : int64_t{tb ? n : k} * ldb;
    const int64_t sc = pointers || batch == 1 ? 0 : int64_t{m} * ldc;
    const Key key{ta, tb, m, n, k, lda, ldb, ldc, 1, 16, batch, sa, sb, sc, 1, pointers ? 1 : 0};
    const Key c = cuda::Blas::Canonical(key);
    ASSERT_EQ(cuda::Blas::Canonical(c), c) << "trial " << trial;
    const auto [cta, ctb, cm, cn, ck, clda, cldb, cldc, ct, calign, cbatch, csa, csb, csc, cct, cp] = c;
    EXPECT_TRUE(cta == ta && ctb == tb && cn == n && clda == lda && cldb == ldb && cldc == ldc && calign == 16 &&
                ct == 1 && cct == 1 && cp == (pointers ? 1 : 0));
    EXPECT_TRUE(cm >= m && ck >= k && cbatch >= batch) << "trial " << trial;
    rounded += c != key;
    // Row-major: a (m, k) or, with ta, (k, m); b (k, n) or, with tb, (n, k); c (m, n).
    EXPECT_LE(ta ? cm : ck, clda) << "a's rows of " << clda;
    EXPECT_LE(tb ? ck : cn, cldb) << "b's rows of " << cldb;
    EXPECT_LE(cn, cldc);
    if (!pointers && batch > 1) {
      EXPECT_EQ(csa, int64_t{ta ? ck : cm} * clda);
      EXPECT_EQ(csb, int64_t{tb ? cn : ck} * cldb);
      EXPECT_EQ(csc, int64_t{cm} * cldc);
    }
  }
  EXPECT_GT(rounded, 10000) << "most of these shapes are off the grid";
  // The experts' products: rows 1100, 1152, 1280 share the canonical 1280; batch 9 and 10 share 10.
  const Key padded{false, true, 1152, 768, 512, 512, 512, 768, 1, 256, 8, 1152 * 512, 768 * 512, 1152 * 768, 1, 0};
  EXPECT_EQ(std::get<2>(cuda::Blas::Canonical(padded)), 1280);
  const Key chunks{false, false, 128, 768, 512, 512, 768, 768, 1, 256, 9, 0, 0, 0, 1, 1};
  EXPECT_EQ(std::get<10>(cuda::Blas::Canonical(chunks)), 10);
  // A stride of another kind (one weight for every product: stride 0) keeps the shape exact.
  const Key shared{false, true, 1152, 768, 512, 512, 512, 768, 1, 256, 8, 1152 * 512, 0, 1152 * 768, 1, 0};
  EXPECT_EQ(cuda::Blas::Canonical(shared), shared);
}

// WeightGradCalls (host code: runs without a GPU) on layouts of random counts: every chunk of
// every expert in exactly one run; runs of one call the same size, at most one per expert; each
// expert's first run (its first chunk, its largest run) in a call of first runs, and every call of
// first runs before the others (they overwrite the gradient the others add to).
TEST(CudaBlasTest, WeightGradRunsCoverEveryChunkOnceFirstRunsFirst) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 400; ++trial) {
    const int e = 1 + static_cast<int>(rng() % 64);
    std::vector<int32_t> counts(e);
    for (int32_t& c : counts) c = rng() % 5 == 0 ? 0 : static_cast<int32_t>(rng() % (200 + trial * 40));
    counts[rng() % e] += 3000;  // a hot expert: the layout goes in chunks
    const cuda::ExpertLayout l = cuda::PlanExpertLayout(counts.data(), e);
    if (l.strided || l.chunk == 0) continue;
    std::vector<int> seen(l.chunks, 0), first_runs(e, 0);
    bool others_began = false;
    for (const cuda::WeightGradCall& call : cuda::WeightGradCalls(l, e)) {
      ASSERT_GT(call.size, 0);
      others_began = others_began || !call.first;
      EXPECT_FALSE(call.first && others_began) << "a call of first runs after the others";
      std::vector<int> in_call(e, 0);
      for (const auto& [x, j] : call.runs) {
        ASSERT_TRUE(x >= 0 && x < e);
        EXPECT_EQ(++in_call[x], 1) << "expert " << x << " twice in one call";
        EXPECT_GE(j, l.first_chunk[x]);
        EXPECT_LE(j + call.size, l.first_chunk[x + 1]) << "a run past expert " << x << "'s chunks";
        for (int i = j; i < j + call.size && i < l.chunks; ++i) ++seen[i];
        if (call.first) {
          ++first_runs[x];
          EXPECT_EQ(j, l.first_chunk[x]) << "a first run starts at its expert's first chunk";
        }
      }
    }
    for (int i = 0; i < l.chunks; ++i) ASSERT_EQ(seen[i], 1) << "chunk " << i << ", trial " << trial;
    for (int x = 0; x < e; ++x) EXPECT_EQ(first_runs[x], l.first_chunk[x + 1] > l.first_chunk[x] ? 1 : 0);
  }
}

TEST(CudaBlasTest, LinearFp32AndBf16) {
  SKIP_WITHOUT_GPU();
  cuda::Blas blas;
  for (auto [n, c, oc] : {std::tuple{37, 48, 40}, std::tuple{128, 384, 1152}, std::tuple{1, 64, 65}}) {
    auto x = Randn(int64_t{n} * c, 19), w = Randn(int64_t{oc} * c, 20), dy = Randn(int64_t{n} * oc, 21);
    std::vector<float> y(n * oc), dx(n * c, 0.5f), dw(oc * c, 0.25f);
    kernels::LinearForward(y.data(), x.data(), w.data(), n, c, oc);
    kernels::LinearBackward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), n, c, oc);
    for (bool bf : {false, true}) {
      Dev<float> x_d(x), w_d(w), dy_d(dy), y_d(n * oc), dx_d(n * c, 0.5f), dw_d(oc * c, 0.25f);
      Dev<cuda::bf16> x16(x.size()), w16(w.size()), dy16(dy.size());
      cuda::CastToBf16(x16.get(), x_d.get(), x.size(), nullptr);
      cuda::CastToBf16(w16.get(), w_d.get(), w.size(), nullptr);
      cuda::CastToBf16(dy16.get(), dy_d.get(), dy.size(), nullptr);
      const cuda::DType t = bf ? cuda::DType::kBF16 : cuda::DType::kF32;
      const void* xa = bf ? static_cast<const void*>(x16.get()) : x_d.get();
      const void* wa = bf ? static_cast<const void*>(w16.get()) : w_d.get();
      const void* dya = bf ? static_cast<const void*>(dy16.get()) : dy_d.get();
      blas.Gemm(false, true, n, oc, c, 1.0f, xa, c, wa, c, 0.0f, y_d.get(), oc, t, nullptr);
      blas.Gemm(false, false, n, c, oc, 1.0f, dya, oc, wa, c, 1.0f, dx_d.get(), c, t, nullptr);
      blas.Gemm(true, false, oc, c, n, 1.0f, dya, oc, xa, c, 1.0f, dw_d.get(), c, t, nullptr);
      const double tol = bf ? kBf16Tol : kFp32Tol;
      EXPECT_LT(RelErr(y_d.Host(), y), tol) << n << "x" << c << "x" << oc << " bf16 " << bf;
      EXPECT_LT(RelErr(dx_d.Host(), dx), tol);
      EXPECT_LT(RelErr(dw_d.Host(), dw), tol);
    }
  }
}

// Shapes of one bucket (Blas::Canonical: rows and batch counts that follow the routing, rounded
// up) run on the algorithm cuBLASLt chose for the bucket's canonical shape; each product must
// still be its own shape's: strided batches with rows 1152, 1280 (the canonical) and 1100, the
// weight gradient's form with the summed rows varying likewise, pointer arrays with batch 9 and
// 10 (the canonical).
TEST(CudaBlasTest, BlasShapesOfOneBucketEachGetTheirOwnProduct) {
  SKIP_WITHOUT_GPU();
  cuda::Blas blas;
  const int n = 72, k = 64;
  // Random values bf16 holds exactly (both sides read the same), on the host and on the device.
  struct Operand {
    std::vector<float> host;
    std::unique_ptr<Dev<cuda::bf16>> dev;
  };
  auto operand = [](int64_t size, int seed) {
    Dev<float> d(Randn(size, seed));
    Operand o{{}, std::make_unique<Dev<cuda::bf16>>(size)};
    cuda::CastToBf16(o.dev->get(), d.get(), size, nullptr);
    o.host = testing::ToFloat(o.dev->Host());
    return o;
  };
  // c_x (rows, cols) = sum over l of a_x[i, l] b_x[l, j], in double: a_x (rows, inner) or, with
  // trans_a, (inner, rows); b_x (cols, inner) with trans_b, else (inner, cols).
  auto oracle = [](const Operand& a, const Operand& b, int batch, int rows, int cols, int inner, bool trans_a,
                   bool trans_b) {
    std::vector<float> c(int64_t{batch} * rows * cols);
    for (int x = 0; x < batch; ++x)
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
          double sum = 0;
          for (int l = 0; l < inner; ++l) {
            sum += double{a.host[int64_t{x} * rows * inner + (trans_a ? int64_t{l} * rows + i : int64_t{i} * inner + l)]} *
                   b.host[int64_t{x} * cols * inner + (trans_b ? int64_t{j} * inner + l : int64_t{l} * cols + j)];
          }
          c[(int64_t{x} * rows + i) * cols + j] = static_cast<float>(sum);
        }
    return c;
  };
  const int batch = 3;
  // The strided batch c_x (rows, n) = a_x (rows, k) @ b_x^T, through `on`.
  auto strided = [&](cuda::Blas& on, int rows, const Operand& a, const Operand& b) {
    Dev<float> c(int64_t{batch} * rows * n);
    on.GemmBatched(false, true, rows, n, k, 1.0f, a.dev->get(), k, int64_t{rows} * k, b.dev->get(), k,
                   int64_t{n} * k, 0.0f, c.get(), n, int64_t{rows} * n, batch, cuda::DType::kBF16, cuda::DType::kF32,
                   nullptr);
    return c.Host();
  };
  std::map<int, std::vector<float>> first_order;
  for (int rows : {1152, 1280, 1100}) {
    const Operand a = operand(int64_t{batch} * rows * k, rows), b = operand(int64_t{batch} * n * k, 7);
    first_order[rows] = strided(blas, rows, a, b);
    EXPECT_LT(RelErr(first_order[rows], oracle(a, b, batch, rows, n, k, false, true)), 1e-5) << "rows " << rows;
    // The weight gradient's form: c_x (k, n) = a_x^T (k, rows) @ g_x (rows, n).
    const Operand g = operand(int64_t{batch} * rows * n, rows + 1);
    Dev<float> dw(int64_t{batch} * k * n);
    blas.GemmBatched(true, false, k, n, rows, 1.0f, a.dev->get(), k, int64_t{rows} * k, g.dev->get(), n,
                     int64_t{rows} * n, 0.0f, dw.get(), n, int64_t{k} * n, batch, cuda::DType::kBF16,
                     cuda::DType::kF32, nullptr);
    EXPECT_LT(RelErr(dw.Host(), oracle(a, g, batch, k, n, rows, true, false)), 1e-5) << "summed rows " << rows;
  }
  // A shape's algorithm is its bucket's, whatever came first: the same bits in the other order
  // (a resumed run meets the shapes in another order than the run it continues).
  cuda::Blas fresh;
  for (int rows : {1100, 1280, 1152}) {
    const Operand a = operand(int64_t{batch} * rows * k, rows), b = operand(int64_t{batch} * n * k, 7);
    EXPECT_EQ(strided(fresh, rows, a, b), first_order[rows]) << "rows " << rows << " after other shapes";
  }
  for (int count : {9, 10}) {
    const int rows = 128;
    const Operand a = operand(int64_t{count} * rows * k, count), b = operand(int64_t{count} * n * k, 8);
    Dev<float> c(int64_t{count} * rows * n);
    std::vector<const void*> ap(count), bp(count);
    std::vector<void*> cp(count);
    for (int x = 0; x < count; ++x) {
      ap[x] = a.dev->get() + int64_t{x} * rows * k;
      bp[x] = b.dev->get() + int64_t{x} * n * k;
      cp[x] = c.get() + int64_t{x} * rows * n;
    }
    Dev<const void*> ap_d(ap), bp_d(bp);
    Dev<void*> cp_d(cp);
    blas.GemmPointerArray(false, true, rows, n, k, 1.0f, ap_d.get(), k, bp_d.get(), k, 0.0f, cp_d.get(), n, count, 16,
                          cuda::DType::kBF16, cuda::DType::kF32, nullptr);
    EXPECT_LT(RelErr(c.Host(), oracle(a, b, count, rows, n, k, false, true)), 1e-5) << "batch " << count;
  }
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
