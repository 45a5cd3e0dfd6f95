#include "kernels/rope.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace moe::kernels {
namespace {

// sign = +1: forward rotation by the angle; -1: its transpose (rotation by minus the angle).
void Rotate(float* qkv, int b, int t, int h, int hkv, int hd, float theta, float sign) {
  std::vector<float> cos_t(int64_t{t} * (hd / 2)), sin_t(cos_t.size());
  RopeTables(cos_t.data(), sin_t.data(), t, hd, theta);
  const int half = hd / 2;
  const int64_t row = int64_t{h + 2 * hkv} * hd;
  const int rotated_heads = h + hkv;  // q heads then k heads; v follows untouched
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < int64_t{b} * t; ++r) {
    const int pos = static_cast<int>(r % t);
    const float* cs = cos_t.data() + int64_t{pos} * half;
    const float* sn = sin_t.data() + int64_t{pos} * half;
    for (int head = 0; head < rotated_heads; ++head) {
      float* v = qkv + r * row + int64_t{head} * hd;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const float a = v[i], c = v[i + half], s = sign * sn[i];
        v[i] = a * cs[i] - c * s;
        v[i + half] = a * s + c * cs[i];
      }
    }
  }
}

}  // namespace

void RopeForward(float* qkv, int b, int t, int h, int hkv, int hd, float theta) {
  Rotate(qkv, b, t, h, hkv, hd, theta, 1.0f);
}

void RopeBackward(float* dqkv, int b, int t, int h, int hkv, int hd, float theta) {
  Rotate(dqkv, b, t, h, hkv, hd, theta, -1.0f);
}

}  // namespace moe::kernels
