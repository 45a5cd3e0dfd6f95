// The compact state codes (kernels/state_codec.h): the int8 code tables, an int8 block's round
// trip (relative error bounded by the code's spacing, zeros and the block's extremes exact),
// bf16 rounding to nearest even, and stochastic rounding that is unbiased on average and the
// same for the same draw.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/state_codec.h"

namespace moe::kernels {
namespace {

TEST(StateCodec, Int8CodesAreSortedAndSpanTheRange) {
  for (bool is_signed : {true, false}) {
    const std::vector<float>& code = Int8Code(is_signed);
    ASSERT_EQ(code.size(), 256u);
    for (size_t i = 1; i < code.size(); ++i) EXPECT_LE(code[i - 1], code[i]);
    EXPECT_EQ(code.back(), 1.f);
    EXPECT_EQ(code.front(), is_signed ? -1.f : 0.f);
    EXPECT_NE(std::find(code.begin(), code.end(), 0.f), code.end());
  }
}

TEST(StateCodec, Int8BlockRoundTripKeepsRelativePrecision) {
  std::mt19937 rng(3);
  std::lognormal_distribution<float> mag(-6.f, 2.f);  // moments spread over several decades
  std::bernoulli_distribution neg(0.5);
  for (bool is_signed : {true, false}) {
    std::vector<float> x(kStateBlock), back(kStateBlock);
    for (float& v : x) v = mag(rng) * (is_signed && neg(rng) ? -1.f : 1.f);
    x[7] = 0.f;
    std::vector<uint8_t> q(kStateBlock);
    float scale = 0;
    EncodeInt8Block(x.data(), kStateBlock, is_signed, q.data(), &scale);
    DecodeInt8Block(q.data(), kStateBlock, is_signed, scale, back.data());
    EXPECT_EQ(back[7], 0.f);
    double worst = 0;
    for (int i = 0; i < kStateBlock; ++i) {
      if (std::fabs(x[i]) < 1e-6f * scale) continue;  // below the code's smallest step
      worst = std::max(worst, static_cast<double>(std::fabs(back[i] - x[i]) / std::fabs(x[i])));
    }
    // Neighbouring codes are 10^(7/126) = 1.137 apart (signed) or 10^(7/254) (unsigned).
    EXPECT_LT(worst, is_signed ? 0.07 : 0.035) << (is_signed ? "signed" : "unsigned");
    const int top = static_cast<int>(std::max_element(x.begin(), x.end(), [](float a, float b) {
                                       return std::fabs(a) < std::fabs(b);
                                     }) - x.begin());
    EXPECT_FLOAT_EQ(back[top], x[top]);
  }
  // An all-zero block decodes to zeros.
  std::vector<float> zeros(10, 0.f), back(10, 1.f);
  std::vector<uint8_t> q(10);
  float scale = 1;
  EncodeInt8Block(zeros.data(), 10, true, q.data(), &scale);
  DecodeInt8Block(q.data(), 10, true, scale, back.data());
  for (float v : back) EXPECT_EQ(v, 0.f);
}

TEST(StateCodec, Bf16RoundsToNearestEvenAndStochasticallyWithoutBias) {
  EXPECT_EQ(FromBf16Bits(Bf16Bits(1.0f)), 1.0f);
  EXPECT_EQ(FromBf16Bits(Bf16Bits(1.0f + 1.0f / 512)), 1.0f);             // a quarter step down
  EXPECT_EQ(FromBf16Bits(Bf16Bits(1.0f + 3.0f / 512)), 1.0f + 1.0f / 128);  // three quarters up
  EXPECT_EQ(FromBf16Bits(Bf16Bits(1.0f + 1.0f / 256)), 1.0f);              // a tie goes to even
  EXPECT_TRUE(std::isnan(FromBf16Bits(Bf16Bits(std::nanf("")))));
  for (float x : {1.0f + 1.0f / 1024, -3.3e-3f, 12345.678f}) {
    double sum = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      const uint32_t r = static_cast<uint32_t>(CounterUniform(42, i) * 16777216.0f);
      const float y = FromBf16Bits(Bf16BitsStochastic(x, r));
      const float down = FromBf16Bits(static_cast<uint16_t>(Bf16Bits(x)));
      EXPECT_LE(std::fabs(y - x), std::fabs(down - x) + std::fabs(x) / 64) << x;
      sum += y;
    }
    EXPECT_NEAR(sum / n, x, std::fabs(x) * 2e-4) << x;
    EXPECT_EQ(Bf16BitsStochastic(x, 12345), Bf16BitsStochastic(x, 12345));
  }
}

}  // namespace
}  // namespace moe::kernels
