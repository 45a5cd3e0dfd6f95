#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/dropout.h"

namespace moe::kernels {
namespace {

// The factor of probability [i, j]: 0 when dropped, 1 / (1 - p) when kept.
inline float DropFactor(const AttentionDropout& d, int64_t query, int head, int heads, int t, int key) {
  const uint64_t counter = AttentionDropoutCounter(static_cast<uint64_t>(query), head, heads, t, key);
  return CounterUniform(d.seed, counter) < d.p ? 0.0f : 1.0f / (1.0f - d.p);
}

inline float Dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y += alpha * x over n contiguous floats.
inline void Axpy(float* y, float alpha, const float* x, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace

void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv,
                      int hd, const AttentionDropout& dropout) {
  const bool drop = dropout.p > 0.0f;
  const int64_t row = int64_t{h + 2 * hkv} * hd;  // floats per token in qkv
  const int64_t out_row = int64_t{h} * hd;
  const int group = h / hkv;  // query heads per kv head
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    std::vector<float> p(t);  // one score row, reused
#pragma omp for schedule(static)
    for (int bh = 0; bh < b * h; ++bh) {
      const int bi = bh / h, hi = bh % h, g = hi / group;
      const float* base = qkv + int64_t{bi} * t * row;
      const float* kbase = base + int64_t{h + g} * hd;
      const float* vbase = base + int64_t{h + hkv + g} * hd;
      for (int i = 0; i < t; ++i) {
        const float* q = base + i * row + int64_t{hi} * hd;
        float mx = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          p[j] = Dot(q, kbase + j * row, hd) * scale;
          mx = std::max(mx, p[j]);
        }
        float sum = 0.0f;
        for (int j = 0; j <= i; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        if (drop) {  // the normaliser (and lse) stay the undropped softmax's
          const int64_t query = dropout.first_token + int64_t{bi} * t + i;
          for (int j = 0; j <= i; ++j) p[j] *= DropFactor(dropout, query, hi, h, t, j);
        }
        float* o = out + (int64_t{bi} * t + i) * out_row + int64_t{hi} * hd;
        for (int c = 0; c < hd; ++c) o[c] = 0.0f;
        for (int j = 0; j <= i; ++j) Axpy(o, p[j], vbase + j * row, hd);
        const float inv = 1.0f / sum;
        for (int c = 0; c < hd; ++c) o[c] *= inv;
        lse[(int64_t{bi} * h + hi) * t + i] = mx + std::log(sum);
      }
    }
  }
}

void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse,
                       const float* qkv, int b, int t, int h, int hkv, int hd,
                       const AttentionDropout& dropout) {
  const bool drop = dropout.p > 0.0f;
  const int64_t row = int64_t{h + 2 * hkv} * hd;
  const int64_t out_row = int64_t{h} * hd;
  const int group = h / hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // With dropout factors m (O = (P * M) V): dV += P M dO, dP = M (dO v), and the row term
  // sum_j P M (dO v) is still rowsum(dO * O).
  // One task per (sequence, kv head): it owns dk and dv of that kv head and dq of the query
  // heads of its group, so every gradient element is written by exactly one thread.
#pragma omp parallel
  {
    std::vector<float> ds(t);
#pragma omp for schedule(static)
    for (int bg = 0; bg < b * hkv; ++bg) {
      const int bi = bg / hkv, g = bg % hkv;
      const float* base = qkv + int64_t{bi} * t * row;
      float* dbase = dqkv + int64_t{bi} * t * row;
      const float* kbase = base + int64_t{h + g} * hd;
      const float* vbase = base + int64_t{h + hkv + g} * hd;
      float* dkbase = dbase + int64_t{h + g} * hd;
      float* dvbase = dbase + int64_t{h + hkv + g} * hd;
      for (int hi = g * group; hi < (g + 1) * group; ++hi) {
        for (int i = 0; i < t; ++i) {
          const float* q = base + i * row + int64_t{hi} * hd;
          const int64_t orow = (int64_t{bi} * t + i) * out_row + int64_t{hi} * hd;
          const float* o = out + orow;
          const float* dout_i = dout + orow;
          const float l = lse[(int64_t{bi} * h + hi) * t + i];
          const float dsum = Dot(dout_i, o, hd);  // D_i = rowsum(dO * O)
          float* dq = dbase + i * row + int64_t{hi} * hd;
          const int64_t query = dropout.first_token + int64_t{bi} * t + i;
          for (int j = 0; j <= i; ++j) {
            const float* kj = kbase + j * row;
            const float pj = std::exp(Dot(q, kj, hd) * scale - l);
            const float m = drop ? DropFactor(dropout, query, hi, h, t, j) : 1.0f;
            const float dp = Dot(dout_i, vbase + j * row, hd) * m;
            ds[j] = pj * (dp - dsum) * scale;  // scaled dS, used for dq and dk
            Axpy(dvbase + j * row, pj * m, dout_i, hd);
          }
          for (int j = 0; j <= i; ++j) {
            Axpy(dq, ds[j], kbase + j * row, hd);
            Axpy(dkbase + j * row, ds[j], q, hd);
          }
        }
      }
    }
  }
}

}  // namespace moe::kernels
