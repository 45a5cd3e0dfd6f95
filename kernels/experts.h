// SwiGLU experts over an expert-grouped buffer: Expert(z) = (silu(z W1) * (z W3)) W2.
// Weights are in the math layout of MODEL.md: w1, w3 (e_local, d, f), w2 (e_local, f, d).
// Rows of xs are grouped by expert: counts (e_local) rows each, in expert order.
#pragma once

#include <cstdint>

namespace moe::kernels {

// Elementwise: h = silu(g) * u.
void SwigluForward(float* h, const float* g, const float* u, int64_t n);
// dg += dh * u * silu'(g) ; du += dh * silu(g).
void SwigluBackward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n);

// ys (m, d) ; saves g, u, h (m, f) for backward ; m = sum of counts.
void ExpertsForward(float* ys, float* g, float* u, float* h, const float* xs, const float* w1,
                    const float* w3, const float* w2, const int32_t* counts, int e_local, int d,
                    int f);
// dxs (m, d) += ; dw1, dw3 (e_local, d, f) += ; dw2 (e_local, f, d) += .
// scratch: 2 * m * f floats.
void ExpertsBackward(float* dxs, float* dw1, float* dw3, float* dw2, const float* dys,
                     const float* xs, const float* g, const float* u, const float* h,
                     const float* w1, const float* w3, const float* w2, const int32_t* counts,
                     int e_local, int d, int f, float* scratch);

}  // namespace moe::kernels
