// RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, statistics in fp32.
#pragma once

namespace moe::kernels {

// MODEL.md's epsilon, the default of model.norm_eps (ModelConfig::norm_eps).
constexpr float kRmsNormEps = 1e-5f;

// out (n, d), rstd (n) saved for backward ; inp (n, d), weight (d).
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int n, int d, float eps);
// dinp (n, d) += ; dweight (d) += .
void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d);

}  // namespace moe::kernels
