// Experts over an expert-grouped buffer (MODEL.md, model.moe.activation):
//   swiglu Expert(z) = (silu(z W1) * (z W3)) W2 ; relu2 relu(z W1)^2 W2 ; gelu gelu_tanh(z W1) W2.
// Weights are in the math layout of MODEL.md: w1, w3 (e_local, d, f), w2 (e_local, f, d); relu2
// and gelu have no W3 (w3, u and dw3 are unused and may be null).
// Rows of xs are grouped by expert: counts (e_local) rows each, in expert order.
#pragma once

#include <cstdint>

namespace moe::kernels {

enum class ExpertActivation { kSwiglu, kRelu2, kGelu };

// Elementwise: h = silu(g) * u.
void SwigluForward(float* h, const float* g, const float* u, int64_t n);
// dg += dh * u * silu'(g) ; du += dh * silu(g).
void SwigluBackward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n);
// Elementwise, the activations without W3: h = act(g) ; dg += dh * act'(g).
// relu2: relu(g)^2 ; gelu: the tanh form 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))).
void ActivationForward(ExpertActivation act, float* h, const float* g, int64_t n);
void ActivationBackward(ExpertActivation act, float* dg, const float* dh, const float* g, int64_t n);

// ys (m, d) ; saves g, u, h (m, f) for backward (u only for swiglu) ; m = sum of counts.
void ExpertsForward(float* ys, float* g, float* u, float* h, const float* xs, const float* w1,
                    const float* w3, const float* w2, const int32_t* counts, int e_local, int d,
                    int f, ExpertActivation act = ExpertActivation::kSwiglu);
// dxs (m, d) += ; dw1, dw3 (e_local, d, f) += ; dw2 (e_local, f, d) += .
// scratch: 2 * m * f floats.
void ExpertsBackward(float* dxs, float* dw1, float* dw3, float* dw2, const float* dys,
                     const float* xs, const float* g, const float* u, const float* h,
                     const float* w1, const float* w3, const float* w2, const int32_t* counts,
                     int e_local, int d, int f, float* scratch,
                     ExpertActivation act = ExpertActivation::kSwiglu);

}  // namespace moe::kernels
