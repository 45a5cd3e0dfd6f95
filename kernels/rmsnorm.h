// RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, statistics in fp32.
#pragma once

namespace moe::kernels {

// MODEL.md's epsilon, model.norm_eps's default (the model takes its eps from NormEps in
// common/job_spec.h).
constexpr float kRmsNormEps = 1e-5f;

// out (n, d), rstd (n) saved for backward ; inp (n, d), weight (d).
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int n, int d, float eps);
// dinp (n, d) += ; dweight (d) += .
void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d);

}  // namespace moe::kernels
