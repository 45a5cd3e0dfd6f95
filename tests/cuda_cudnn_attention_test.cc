// cuDNN's fused attention (kernels/cuda/cudnn_sdpa.h) against the CPU's attention (its oracle,
// kernels/attention.h) and against the project's tensor-core kernels through the attention entry
// points. Skips without a GPU or without libcudnn; where cuDNN is there, a shape it refuses
// fails: these are shapes the bf16 jobs run.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/rope.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/cudnn_sdpa.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/rope.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifdef MOE_WITH_CUDA

using testing::Dev;
using testing::RelErr;
using testing::Randn;
using testing::ToFloat;

#define SKIP_WITHOUT_CUDNN()                                                   \
  do {                                                                         \
    SKIP_WITHOUT_GPU();                                                        \
    std::string why;                                                           \
    if (!cuda::cudnn::Available(&why)) GTEST_SKIP() << "no cuDNN here: " << why; \
  } while (0)

// bf16 operands, fp32 accumulation (kAttnBf16Tol of cuda_ops_test), plus the bf16 rounding of
// the gradients cuDNN stores.
constexpr double kTol = 2e-2;

struct Case {
  int b, t, h, hkv, hd;
};

std::string Name(const Case& c) {
  return "b " + std::to_string(c.b) + " t " + std::to_string(c.t) + " heads " + std::to_string(c.h) + "/" +
         std::to_string(c.hkv) + " hd " + std::to_string(c.hd);
}

// Columns [lo, hi) of every row of a (rows, row) matrix.
std::vector<float> Cols(const std::vector<float>& m, int64_t rows, int row, int lo, int hi) {
  std::vector<float> out;
  for (int64_t i = 0; i < rows; ++i)
    for (int k = lo; k < hi; ++k) out.push_back(m[i * row + k]);
  return out;
}

class CudnnAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(CudnnAttentionTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_CUDNN();
  const Case c = GetParam();
  const int row = (c.h + 2 * c.hkv) * c.hd;
  const int64_t n = int64_t{c.b} * c.t, width = int64_t{c.h} * c.hd;
  auto qkv = Randn(n * row, 41), dout = Randn(n * width, 42);
  // The CPU on the bf16-rounded inputs, so that only the GPU's arithmetic differs.
  Dev<float> qkv_d(qkv), dout_d(dout);
  Dev<cuda::bf16> qkv16(qkv.size()), dout16(dout.size());
  cuda::CastToBf16(qkv16.get(), qkv_d.get(), qkv.size(), nullptr);
  cuda::CastToBf16(dout16.get(), dout_d.get(), dout.size(), nullptr);
  qkv = ToFloat(qkv16.Host());
  dout = ToFloat(dout16.Host());
  std::vector<float> out(n * width), lse(int64_t{c.b} * c.h * c.t), dqkv(n * row, 0.f);
  kernels::AttentionForward(out.data(), lse.data(), qkv.data(), c.b, c.t, c.h, c.hkv, c.hd);
  kernels::AttentionBackward(dqkv.data(), dout.data(), out.data(), lse.data(), qkv.data(), c.b, c.t, c.h, c.hkv,
                             c.hd);

  Dev<cuda::bf16> out16(out.size()), dqkv16(dqkv.size(), __float2bfloat16(NAN));
  Dev<float> lse_d(lse.size(), NAN);
  std::string why;
  ASSERT_TRUE(cuda::CudnnAttentionForward(out16.get(), lse_d.get(), qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd, nullptr,
                                          &why))
      << Name(c) << ": " << why;
  EXPECT_LT(RelErr(ToFloat(out16.Host()), out), kTol) << Name(c);
  EXPECT_LT(RelErr(lse_d.Host(), lse), 1e-3) << Name(c) << " (natural-log statistics, as the project's kernels)";

  // The backward from the CPU's forward (out rounded to bf16, as cuDNN reads it).
  Dev<float> out_cpu(out), lse_cpu(lse);
  Dev<cuda::bf16> out_cpu16(out.size());
  cuda::CastToBf16(out_cpu16.get(), out_cpu.get(), out.size(), nullptr);
  ASSERT_TRUE(cuda::CudnnAttentionBackward(dqkv16.get(), qkv16.get(), out_cpu16.get(), dout16.get(), lse_cpu.get(),
                                           c.b, c.t, c.h, c.hkv, c.hd, nullptr, &why))
      << Name(c) << ": " << why;
  const auto got = ToFloat(dqkv16.Host());
  // dq, dk, dv each on its own (dk is the smallest and would hide in the sum). At t = 1 a softmax
  // over one key has no gradient: dq and dk are then measured against dv's size.
  const double dv_size = std::sqrt([&] {
    double s = 0;
    for (float x : Cols(dqkv, n, row, (c.h + c.hkv) * c.hd, row)) s += double{x} * x;
    return s;
  }());
  for (int part = 0; part < 3; ++part) {
    const int lo = part == 0 ? 0 : (c.h + (part - 1) * c.hkv) * c.hd;
    const int hi = part == 0 ? c.h * c.hd : lo + c.hkv * c.hd;
    const auto g = Cols(got, n, row, lo, hi), w = Cols(dqkv, n, row, lo, hi);
    if (c.t == 1 && part < 2) {
      double err = 0;
      for (size_t i = 0; i < g.size(); ++i) err += (double{g[i]} - w[i]) * (double{g[i]} - w[i]);
      EXPECT_LT(std::sqrt(err) / dv_size, kTol) << Name(c) << " part " << "qkv"[part];
      continue;
    }
    EXPECT_LT(RelErr(g, w), kTol) << Name(c) << " part " << "qkv"[part];
  }

  // The same inputs again: the same bits (dq is summed without atomics).
  Dev<cuda::bf16> again(dqkv.size(), __float2bfloat16(NAN));
  ASSERT_TRUE(cuda::CudnnAttentionBackward(again.get(), qkv16.get(), out_cpu16.get(), dout16.get(), lse_cpu.get(), c.b,
                                           c.t, c.h, c.hkv, c.hd, nullptr, &why));
  const auto a = dqkv16.Host(), b = again.Host();
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(cuda::bf16) * a.size())) << Name(c) << ": not deterministic";
}

// The attention entry points with cuDNN asked for against the same calls on the project's
// kernels: the forward's bf16 and fp32 outputs and statistics, and the RoPE backward's bf16
// gradients (cuDNN's, rotated back in place), within bf16 rounding of each other.
TEST_P(CudnnAttentionTest, EntryPointsAgreeWithTheTensorCoreKernels) {
  SKIP_WITHOUT_CUDNN();
  const Case c = GetParam();
  const int row = (c.h + 2 * c.hkv) * c.hd;
  const int64_t n = int64_t{c.b} * c.t, width = int64_t{c.h} * c.hd, count = n * row;
  std::vector<float> cos_t(int64_t{c.t} * (c.hd / 2)), sin_t(cos_t.size());
  kernels::RopeTables(cos_t.data(), sin_t.data(), c.t, c.hd, kernels::kRopeTheta);
  Dev<float> qkv(Randn(count, 51)), dout(Randn(n * width, 52)), cs(cos_t), sn(sin_t);
  Dev<cuda::bf16> qkv16(count), dout16(n * width);
  cuda::CastToBf16(qkv16.get(), qkv.get(), count, nullptr);
  cuda::CastToBf16(dout16.get(), dout.get(), n * width, nullptr);
  struct Result {
    std::vector<float> out, out16, lse, dqkv16;
  };
  auto run = [&](bool cudnn) {
    cuda::SetCudnnAttentionWanted(cudnn);
    Dev<float> out(n * width, NAN), lse(int64_t{c.b} * c.h * c.t, NAN), dqkv(count, NAN),
        scratch(int64_t{c.b} * c.h * c.t);
    Dev<cuda::bf16> out16(n * width), dqkv16(count, __float2bfloat16(NAN));
    cuda::AttentionForwardBf16(out.get(), lse.get(), qkv.get(), qkv16.get(), c.b, c.t, c.h, c.hkv, c.hd,
                               cuda::AttentionDropout{}, nullptr, out16.get());
    cuda::AttentionRopeBackwardBf16(dqkv16.get(), dqkv.get(), dout.get(), dout16.get(), out.get(), lse.get(),
                                    qkv.get(), qkv16.get(), cs.get(), sn.get(), c.b, c.t, c.h, c.hkv, c.hd,
                                    scratch.get(), cuda::AttentionDropout{}, nullptr);
    return Result{out.Host(), ToFloat(out16.Host()), lse.Host(), ToFloat(dqkv16.Host())};
  };
  const Result ours = run(false), theirs = run(true);
  cuda::SetCudnnAttentionWanted(false);
  EXPECT_LT(RelErr(theirs.out, ours.out), kTol) << Name(c);
  EXPECT_EQ(theirs.out, theirs.out16) << Name(c) << ": the fp32 output holds the bf16 values";
  EXPECT_LT(RelErr(theirs.lse, ours.lse), 1e-3) << Name(c);
  for (int part = 0; part < 3; ++part) {
    const int lo = part == 0 ? 0 : (c.h + (part - 1) * c.hkv) * c.hd;
    const int hi = part == 0 ? c.h * c.hd : lo + c.hkv * c.hd;
    if (c.t == 1 && part < 2) continue;  // no gradient through a one-key softmax (see above)
    EXPECT_LT(RelErr(Cols(theirs.dqkv16, n, row, lo, hi), Cols(ours.dqkv16, n, row, lo, hi)), kTol)
        << Name(c) << " part " << "qkv"[part];
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudnnAttentionTest,
                         ::testing::Values(Case{2, 130, 6, 6, 64}, Case{1, 257, 4, 2, 64}, Case{2, 77, 4, 4, 128},
                                           Case{1, 100, 3, 1, 96}, Case{2, 64, 2, 2, 256}, Case{1, 1, 4, 4, 64},
                                           Case{3, 33, 2, 1, 80}, Case{2, 191, 8, 2, 32}, Case{2, 128, 4, 4, 192}));

// RoPE's backward in place on bf16 (after cuDNN's backward) gives the bits of RopeBackwardToBf16
// of the same values in fp32: the rotation is computed in fp32 either way and rounded once. v's
// columns stay as they were. Even and odd pair counts (float4 and scalar kernels), GQA.
TEST(CudnnAttentionRope, InPlaceBf16BackwardMatchesTheFp32One) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : {Case{2, 37, 4, 2, 64}, Case{1, 20, 3, 3, 24}, Case{2, 9, 2, 1, 10}}) {
    const int row = (c.h + 2 * c.hkv) * c.hd;
    const int64_t count = int64_t{c.b} * c.t * row;
    std::vector<float> cos_t(int64_t{c.t} * (c.hd / 2)), sin_t(cos_t.size());
    kernels::RopeTables(cos_t.data(), sin_t.data(), c.t, c.hd, kernels::kRopeTheta);
    Dev<float> x(Randn(count, 61)), cs(cos_t), sn(sin_t);
    Dev<cuda::bf16> x16(count), want(count);
    cuda::CastToBf16(x16.get(), x.get(), count, nullptr);
    const auto before = x16.Host();
    Dev<float> x32(ToFloat(before));
    cuda::RopeBackwardToBf16(want.get(), x32.get(), cs.get(), sn.get(), c.b, c.t, c.h, c.hkv, c.hd, nullptr);
    cuda::RopeBackwardBf16(x16.get(), cs.get(), sn.get(), c.b, c.t, c.h, c.hkv, c.hd, nullptr);
    const auto got = x16.Host(), w = want.Host();
    EXPECT_EQ(0, std::memcmp(got.data(), w.data(), sizeof(cuda::bf16) * got.size())) << Name(c);
    int64_t v_changed = 0;
    for (int64_t i = 0; i < int64_t{c.b} * c.t; ++i)
      for (int k = (c.h + c.hkv) * c.hd; k < row; ++k)
        v_changed += std::memcmp(&got[i * row + k], &before[i * row + k], sizeof(cuda::bf16)) != 0;
    EXPECT_EQ(v_changed, 0) << Name(c);
  }
}

// Milliseconds a layer, the project's tensor-core kernels against cuDNN, at the sweep's sizes
// (run by the device script: --gtest_also_run_disabled_tests).
TEST(CudnnAttentionTiming, DISABLED_AgainstTheTensorCoreKernels) {
  SKIP_WITHOUT_CUDNN();
  struct Shape {
    const char* name;
    int b, t, h, hd;
  };
  for (const Shape& c : {Shape{"small", 16, 1024, 12, 64}, Shape{"medium", 16, 1024, 16, 64},
                         Shape{"hd128", 32, 1024, 6, 128}, Shape{"hd256", 16, 1024, 4, 256}}) {
    const int hd = c.hd, row = 3 * c.h * hd;
    const int64_t n = int64_t{c.b} * c.t, width = int64_t{c.h} * hd;
    std::vector<float> cos_t(int64_t{c.t} * (hd / 2)), sin_t(cos_t.size());
    kernels::RopeTables(cos_t.data(), sin_t.data(), c.t, hd, kernels::kRopeTheta);
    Dev<float> qkv(Randn(n * row, 5)), dout(Randn(n * width, 6)), out(n * width), lse(int64_t{c.b} * c.h * c.t),
        dqkv(n * row), scratch(int64_t{c.b} * c.h * c.t), cs(cos_t), sn(sin_t);
    Dev<cuda::bf16> qkv16(n * row), dout16(n * width), out16(n * width), dqkv16(n * row);
    cuda::CastToBf16(qkv16.get(), qkv.get(), n * row, nullptr);
    cuda::CastToBf16(dout16.get(), dout.get(), n * width, nullptr);
    for (int use_cudnn = 0; use_cudnn < 2; ++use_cudnn) {
      cuda::SetCudnnAttentionWanted(use_cudnn == 1);
      const double fwd = testing::MedianMs([&] {
        cuda::AttentionForwardBf16(out.get(), lse.get(), qkv.get(), qkv16.get(), c.b, c.t, c.h, c.h, hd,
                                   cuda::AttentionDropout{}, nullptr, out16.get());
      });
      const double bwd = testing::MedianMs([&] {
        cuda::AttentionRopeBackwardBf16(dqkv16.get(), dqkv.get(), dout.get(), dout16.get(), out.get(), lse.get(),
                                        qkv.get(), qkv16.get(), cs.get(), sn.get(), c.b, c.t, c.h, c.h, hd,
                                        scratch.get(), cuda::AttentionDropout{}, nullptr);
      });
      const double f = static_cast<double>(c.b) * c.h * c.t * c.t * hd;
      std::printf("[ attention %s %s ] forward %.3f ms (%.1f TFLOP/s)  backward+rope %.3f ms (%.1f TFLOP/s)\n",
                  c.name, use_cudnn ? "cudnn" : "ours", fwd, 2 * f / fwd / 1e9, bwd, 5 * f / bwd / 1e9);
    }
  }
  cuda::SetCudnnAttentionWanted(false);
  std::printf("[ cudnn version %lld ]\n", static_cast<long long>(cuda::cudnn::Version()));
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
