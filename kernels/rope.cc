#include "kernels/rope.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace moe::kernels {
namespace {

// cos/sin tables (t, hd/2), computed in fp32 as reference_moe.py's rope_tables does.
void RopeTables(std::vector<float>* cos_t, std::vector<float>* sin_t, int t, int hd) {
  const int half = hd / 2;
  cos_t->resize(int64_t{t} * half);
  sin_t->resize(int64_t{t} * half);
  for (int i = 0; i < half; ++i) {
    const float inv_freq = 1.0f / std::pow(kRopeTheta, static_cast<float>(2 * i) / hd);
    for (int pos = 0; pos < t; ++pos) {
      const float angle = static_cast<float>(pos) * inv_freq;
      (*cos_t)[int64_t{pos} * half + i] = std::cos(angle);
      (*sin_t)[int64_t{pos} * half + i] = std::sin(angle);
    }
  }
}

// sign = +1: forward rotation by the angle; -1: its transpose (rotation by minus the angle).
void Rotate(float* qkv, int b, int t, int h, int hkv, int hd, float sign) {
  std::vector<float> cos_t, sin_t;
  RopeTables(&cos_t, &sin_t, t, hd);
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

void RopeForward(float* qkv, int b, int t, int h, int hkv, int hd) {
  Rotate(qkv, b, t, h, hkv, hd, 1.0f);
}

void RopeBackward(float* dqkv, int b, int t, int h, int hkv, int hd) {
  Rotate(dqkv, b, t, h, hkv, hd, -1.0f);
}

}  // namespace moe::kernels
