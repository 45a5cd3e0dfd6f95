#include "kernels/experts.h"

#include <algorithm>
#include <cmath>

#include "kernels/matmul.h"

namespace moe::kernels {
namespace {

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;

}  // namespace

void ActivationForward(ExpertActivation act, float* h, const float* g, int64_t n) {
  if (act == ExpertActivation::kRelu2) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float r = g[i] > 0.0f ? g[i] : 0.0f;
      h[i] = r * r;
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    h[i] = 0.5f * x * (1.0f + std::tanh(kGeluC * (x + kGeluA * x * x * x)));
  }
}

void ActivationBackward(ExpertActivation act, float* dg, const float* dh, const float* g, int64_t n) {
  if (act == ExpertActivation::kRelu2) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) dg[i] += g[i] > 0.0f ? dh[i] * 2.0f * g[i] : 0.0f;
    return;
  }
  // d/dx 0.5 x (1 + t), t = tanh(c (x + a x^3)): 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2).
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    const float t = std::tanh(kGeluC * (x + kGeluA * x * x * x));
    dg[i] += dh[i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * kGeluA * x * x));
  }
}

void SwigluForward(float* h, const float* g, const float* u, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) h[i] = g[i] * Sigmoid(g[i]) * u[i];
}

void SwigluBackward(float* dg, float* du, const float* dh, const float* g, const float* u,
                    int64_t n) {
  // silu(g) = g s, s = sigmoid(g) ; silu'(g) = s (1 + g (1 - s)).
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float s = Sigmoid(g[i]);
    if (dg != nullptr) dg[i] += dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    if (du != nullptr) du[i] += dh[i] * g[i] * s;
  }
}

void ExpertsForward(float* ys, float* g, float* u, float* h, const float* xs, const float* w1,
                    const float* w3, const float* w2, const int32_t* counts, int e_local, int d,
                    int f, ExpertActivation act) {
  const bool gated = act == ExpertActivation::kSwiglu;
  int64_t row = 0;  // first row of the current expert
  for (int x = 0; x < e_local; ++x) {
    const int m = counts[x];
    if (m == 0) continue;
    const int64_t wd = int64_t{x} * d * f;  // offset of expert x in w1, w3 and w2
    const float* xs_e = xs + row * d;
    float* g_e = g + row * f;
    float* h_e = h + row * f;
    Gemm(false, false, m, f, d, 1.0f, xs_e, d, w1 + wd, f, 0.0f, g_e, f);  // (m, f)
    if (gated) {
      float* u_e = u + row * f;
      Gemm(false, false, m, f, d, 1.0f, xs_e, d, w3 + wd, f, 0.0f, u_e, f);
      SwigluForward(h_e, g_e, u_e, int64_t{m} * f);
    } else {
      ActivationForward(act, h_e, g_e, int64_t{m} * f);
    }
    Gemm(false, false, m, d, f, 1.0f, h_e, f, w2 + wd, d, 0.0f, ys + row * d, d);  // (m, d)
    row += m;
  }
}

void ExpertsBackward(float* dxs, float* dw1, float* dw3, float* dw2, const float* dys,
                     const float* xs, const float* g, const float* u, const float* h,
                     const float* w1, const float* w3, const float* w2, const int32_t* counts,
                     int e_local, int d, int f, float* scratch, ExpertActivation act) {
  const bool gated = act == ExpertActivation::kSwiglu;
  int64_t m_total = 0;
  for (int x = 0; x < e_local; ++x) m_total += counts[x];
  float* dg = scratch;                // (m, f)
  float* du = scratch + m_total * f;  // (m, f)
  int64_t row = 0;
  for (int x = 0; x < e_local; ++x) {
    const int m = counts[x];
    if (m == 0) continue;
    const int64_t wd = int64_t{x} * d * f;
    const float* xs_e = xs + row * d;
    const float* dys_e = dys + row * d;
    const float* g_e = g + row * f;
    float* dg_e = dg + row * f;
    float* du_e = du + row * f;
    // dh = dy W2^T lands in du's space; the SwiGLU backward below then reads dh and writes
    // dg and du element by element (du[i] overwrites dh[i] only after reading it).
    Gemm(false, true, m, f, d, 1.0f, dys_e, d, w2 + wd, d, 0.0f, du_e, f);
    if (dw2 != nullptr)
      Gemm(true, false, f, d, m, 1.0f, h + row * f, f, dys_e, d, 1.0f, dw2 + wd, d);
    const int64_t mf = int64_t{m} * f;
    if (gated) {
      const float* u_e = u + row * f;
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < mf; ++i) {
        const float s = Sigmoid(g_e[i]);
        const float dh = du_e[i];
        dg_e[i] = dh * u_e[i] * s * (1.0f + g_e[i] * (1.0f - s));
        du_e[i] = dh * g_e[i] * s;
      }
    } else {
      // dh sits in du's space; dg starts at 0 (the scratch may hold anything).
      std::fill(dg_e, dg_e + mf, 0.0f);
      ActivationBackward(act, dg_e, du_e, g_e, mf);
    }
    if (dw1 != nullptr) Gemm(true, false, d, f, m, 1.0f, xs_e, d, dg_e, f, 1.0f, dw1 + wd, f);
    if (gated && dw3 != nullptr) Gemm(true, false, d, f, m, 1.0f, xs_e, d, du_e, f, 1.0f, dw3 + wd, f);
    if (dxs != nullptr) {
      float* dxs_e = dxs + row * d;
      Gemm(false, true, m, d, f, 1.0f, dg_e, f, w1 + wd, f, 1.0f, dxs_e, d);
      if (gated) Gemm(false, true, m, d, f, 1.0f, du_e, f, w3 + wd, f, 1.0f, dxs_e, d);
    }
    row += m;
  }
}

}  // namespace moe::kernels
