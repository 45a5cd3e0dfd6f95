#include "kernels/state_codec.h"

#include <algorithm>
#include <cmath>

namespace moe::kernels {
namespace {

// Unsigned: 0, then 255 magnitudes geometric from 1e-7 to 1. Signed: 0, then 127 magnitudes
// geometric from 1e-7 to 1 on each side, and -1 once more at the bottom so there are 256.
std::vector<float> MakeCode(bool is_signed) {
  std::vector<float> code;
  const int steps = is_signed ? 127 : 255;
  std::vector<float> mags(steps);
  for (int i = 0; i < steps; ++i) {
    mags[i] = static_cast<float>(std::pow(10.0, -7.0 + 7.0 * i / (steps - 1)));
  }
  code.push_back(0.f);
  for (float m : mags) code.push_back(m);
  if (is_signed) {
    for (float m : mags) code.push_back(-m);
    code.push_back(-1.f);  // the 256th value: a second -1 (never the nearest of two, harmless)
  }
  std::sort(code.begin(), code.end());
  return code;
}

}  // namespace

const std::vector<float>& Int8Code(bool is_signed) {
  static const std::vector<float> kSigned = MakeCode(true);
  static const std::vector<float> kUnsigned = MakeCode(false);
  return is_signed ? kSigned : kUnsigned;
}

void EncodeInt8Block(const float* x, int n, bool is_signed, uint8_t* q, float* scale) {
  float mx = 0.f;
  for (int i = 0; i < n; ++i) mx = std::max(mx, std::fabs(x[i]));
  *scale = mx;
  const float* code = Int8Code(is_signed).data();
  const int zero = NearestCode(code, 0.f);
  for (int i = 0; i < n; ++i) {
    q[i] = static_cast<uint8_t>(mx > 0 ? NearestCode(code, x[i] / mx) : zero);
  }
}

void DecodeInt8Block(const uint8_t* q, int n, bool is_signed, float scale, float* x) {
  const std::vector<float>& code = Int8Code(is_signed);
  for (int i = 0; i < n; ++i) x[i] = code[q[i]] * scale;
}

void RoundToBf16Values(float* x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = FromBf16Bits(Bf16Bits(x[i]));
}

}  // namespace moe::kernels
