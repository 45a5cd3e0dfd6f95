// The attention options' CUDA kernels (kernels/cuda/attention_options.h: QK-norm, the attention
// gate) against their CPU twins on a sweep of shapes, forward and backward, fp32. The error is
// ||cuda - cpu|| / ||cpu|| per output. Skips without a GPU.
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

#ifdef MOE_WITH_CUDA
#include "kernels/attention_gate.h"
#include "kernels/cuda/attention_options.h"
#include "kernels/cuda/reduce.h"
#include "kernels/qk_norm.h"
#include "kernels/rmsnorm.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA
TEST(CudaAttentionOptionsTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU ops to test"; }
#else

using testing::Dev;
using testing::kFp32Tol;
using testing::Randn;
using testing::RelErr;

struct QkShape {
  int n, h, hkv, hd;
};

class CudaQkNormTest : public ::testing::TestWithParam<QkShape> {};

TEST_P(CudaQkNormTest, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  const QkShape s = GetParam();
  const int64_t row = int64_t{s.h + 2 * s.hkv} * s.hd, heads = s.h + s.hkv;
  std::vector<float> x = Randn(s.n * row, 1, 1.5f), dy = Randn(s.n * row, 2);
  std::vector<float> qw = Randn(s.hd, 3, 0.3f), kw = Randn(s.hd, 4, 0.3f);
  for (float& w : qw) w += 1.0f;
  for (float& w : kw) w += 1.0f;
  // CPU.
  std::vector<float> y = x, rstd(s.n * heads), raw(s.n * heads * s.hd), dx = dy, dqw(s.hd, 0.5f), dkw(s.hd, 0.5f);
  const float eps = s.n % 2 == 0 ? kernels::kRmsNormEps : 0.25f;  // model.norm_eps, the default and another
  kernels::QkNormForward(y.data(), rstd.data(), raw.data(), qw.data(), kw.data(), s.n, s.h, s.hkv, s.hd, eps);
  kernels::QkNormBackward(dx.data(), dqw.data(), dkw.data(), raw.data(), rstd.data(), qw.data(), kw.data(), s.n,
                          s.h, s.hkv, s.hd);
  // GPU.
  Dev<float> gy(x), grstd(rstd.size()), graw(raw.size()), gqw(qw), gkw(kw), gdx(dy), gdqw(s.hd, 0.5f),
      gdkw(s.hd, 0.5f);
  cuda::QkNormForward(gy.get(), grstd.get(), graw.get(), gqw.get(), gkw.get(), s.n, s.h, s.hkv, s.hd, eps, nullptr);
  Dev<float> partials(cuda::PartialsFloats(2 * s.hd));
  Dev<float> gdx2(dy), gdqw2(s.hd, 0.5f), gdkw2(s.hd, 0.5f);
  cuda::QkNormBackward(gdx.get(), gdqw.get(), gdkw.get(), graw.get(), grstd.get(), gqw.get(), gkw.get(), s.n, s.h,
                       s.hkv, s.hd, partials.get(), nullptr);
  cuda::QkNormBackward(gdx2.get(), gdqw2.get(), gdkw2.get(), graw.get(), grstd.get(), gqw.get(), gkw.get(), s.n, s.h,
                       s.hkv, s.hd, partials.get(), nullptr);
  EXPECT_EQ(gdqw2.Host(), gdqw.Host()) << "the weight gradients are summed in a fixed order";
  EXPECT_EQ(gdkw2.Host(), gdkw.Host());
  EXPECT_LT(RelErr(gy.Host(), y), kFp32Tol) << "forward";
  EXPECT_LT(RelErr(grstd.Host(), rstd), kFp32Tol) << "rstd";
  EXPECT_EQ(graw.Host(), raw) << "raw";
  EXPECT_LT(RelErr(gdx.Host(), dx), kFp32Tol) << "dqkv";
  EXPECT_LT(RelErr(gdqw.Host(), dqw), kFp32Tol) << "dq_weight";
  EXPECT_LT(RelErr(gdkw.Host(), dkw), kFp32Tol) << "dk_weight";
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaQkNormTest,
                         ::testing::Values(QkShape{37, 4, 2, 8}, QkShape{64, 6, 6, 64}, QkShape{5, 8, 1, 128},
                                           QkShape{300, 2, 1, 16}, QkShape{1, 1, 1, 32},
                                           // many blocks of the weight-gradient sums; hd 80, 256
                                           QkShape{4096, 8, 2, 64}, QkShape{777, 4, 4, 80},
                                           QkShape{513, 2, 1, 256}));

TEST(CudaAttentionGateTest, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (int64_t count : {int64_t{1}, int64_t{37 * 24}, int64_t{1} << 20}) {
    std::vector<float> y = Randn(count, 11), logits = Randn(count, 12, 2.0f), dout = Randn(count, 13);
    std::vector<float> gate = logits, out(count), dy(count, 0.25f), dlogits(count);
    kernels::AttentionGateForward(out.data(), gate.data(), y.data(), count);
    kernels::AttentionGateBackward(dy.data(), dlogits.data(), dout.data(), y.data(), gate.data(), count);
    Dev<float> gy(y), ggate(logits), gout(count), gdout(dout), gdy(count, 0.25f), gdl(count);
    cuda::AttentionGateForward(gout.get(), ggate.get(), gy.get(), count, nullptr);
    cuda::AttentionGateBackward(gdy.get(), gdl.get(), gdout.get(), gy.get(), ggate.get(), count, nullptr);
    EXPECT_LT(RelErr(gout.Host(), out), kFp32Tol) << count;
    EXPECT_LT(RelErr(ggate.Host(), gate), kFp32Tol) << count;
    EXPECT_LT(RelErr(gdy.Host(), dy), kFp32Tol) << count;
    EXPECT_LT(RelErr(gdl.Host(), dlogits), kFp32Tol) << count;
    // dy written rather than added to (the model's use: no clearing pass first).
    Dev<float> gdy_set(count, 123.0f), gdl_set(count);
    cuda::AttentionGateBackward(gdy_set.get(), gdl_set.get(), gdout.get(), gy.get(), ggate.get(), count, nullptr,
                                /*accumulate=*/false);
    std::vector<float> dy_set = dy;
    for (float& v : dy_set) v -= 0.25f;
    EXPECT_LT(RelErr(gdy_set.Host(), dy_set), 1e-5) << count;
    EXPECT_EQ(gdl_set.Host(), gdl.Host()) << count;
    // The bf16 gated output of the wo product (forward from the logits, backward's recomputation
    // from the sigmoid): the fp32 one rounded to nearest, bit for bit.
    Dev<float> ggate2(logits);
    Dev<cuda::bf16> g16(count), a16(count);
    cuda::AttentionGateForwardBf16(g16.get(), ggate2.get(), gy.get(), count, nullptr);
    cuda::AttentionGateApplyBf16(a16.get(), gy.get(), ggate2.get(), count, nullptr);
    EXPECT_EQ(ggate2.Host(), ggate.Host()) << count;
    const std::vector<float> gout_host = gout.Host();
    const std::vector<cuda::bf16> f16 = g16.Host(), r16 = a16.Host();
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(__bfloat162float(f16[i]), __bfloat162float(__float2bfloat16(gout_host[i]))) << i;
      ASSERT_EQ(__bfloat162float(r16[i]), __bfloat162float(f16[i])) << i;
    }
  }
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
