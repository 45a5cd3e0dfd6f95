// OptimizerStateBuffer (worker/model/optimizer_state.h): each format gives back what was written
// (fp32 exactly, bf16 to its rounding, int8 to its code's spacing), block ranges read what the
// whole read does, int8 blocks never cross a tensor, and the bytes held shrink as they should.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/state_codec.h"
#include "tests/support/test_jobs.h"
#include "worker/model/optimizer_state.h"

namespace moe {
namespace {

ModelConfig SmallConfig() {
  testing::ModelCase c{"moe", 4, 2, 4, 2, 0, false, 0};
  return testing::CaseConfig(c, 300, 64, 16, 80);  // wte 300 x 64 = 19200: several blocks
}

TEST(OptimizerState, EachFormatReadsBackWhatWasWritten) {
  const ModelConfig cfg = SmallConfig();
  ParamLayout layout(cfg, 0, 1);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1e-3f);
  std::vector<float> x(layout.total());
  for (float& v : x) v = normal(rng);
  for (StateFormat f : {StateFormat::kFp32, StateFormat::kBf16, StateFormat::kInt8}) {
    OptimizerStateBuffer buf(layout, f, /*is_signed=*/true);
    buf.Allocate();
    std::vector<float> zero;
    buf.ReadAll(&zero);
    for (float v : zero) ASSERT_EQ(v, 0.f);
    buf.WriteAll(x);
    std::vector<float> back;
    buf.ReadAll(&back);
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::fabs(x[i]) < 1e-5f) continue;
      worst = std::max(worst, static_cast<double>(std::fabs(back[i] - x[i]) / std::fabs(x[i])));
    }
    const double bound = f == StateFormat::kFp32 ? 0 : f == StateFormat::kBf16 ? 1.0 / 256 : 0.07;
    EXPECT_LE(worst, bound) << static_cast<int>(f);
    // A range of whole blocks of the largest tensor reads what the whole read gave.
    const ParamInfo& wte = layout.params()[0];
    ASSERT_GT(wte.size, 2 * kernels::kStateBlock);
    std::vector<float> part(wte.size - kernels::kStateBlock);
    buf.Read(wte, kernels::kStateBlock, static_cast<int64_t>(part.size()), part.data());
    for (size_t i = 0; i < part.size(); ++i) ASSERT_EQ(part[i], back[wte.offset + kernels::kStateBlock + i]);
  }
}

TEST(OptimizerState, BytesShrinkWithTheFormat) {
  ParamLayout layout(SmallConfig(), 0, 1);
  const int64_t n = layout.total();
  auto bytes = [&](StateFormat f) {
    OptimizerStateBuffer buf(layout, f, false);
    buf.Allocate();
    EXPECT_EQ(buf.bytes(), buf.BytesNeeded());
    return buf.bytes();
  };
  EXPECT_EQ(bytes(StateFormat::kFp32), 4 * n);
  EXPECT_EQ(bytes(StateFormat::kBf16), 2 * n);
  const int64_t int8 = bytes(StateFormat::kInt8);
  EXPECT_GE(int8, n);
  EXPECT_LT(int8, n + 4 * (n / kernels::kStateBlock + static_cast<int64_t>(layout.params().size())) + 1);
}

}  // namespace
}  // namespace moe
