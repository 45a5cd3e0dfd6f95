// Central finite-difference gradient checks: perturb a sample of elements of each parameter,
// re-evaluate a scalar loss, and compare with the analytic gradient. Used per kernel and for
// the whole model.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moe::testing {

struct GradCheckParam {
  std::string name;   // for the report
  float* param;       // perturbed in place, restored bit-exactly after each element
  const float* grad;  // analytic d loss / d param, same length
  int64_t n;
};

struct GradCheckOptions {
  double eps = 1e-3;           // step, in units of the parameter
  int samples_per_param = 32;  // elements checked per parameter (all when n is smaller)
  uint64_t seed = 1;           // which elements
  // Relative error = |analytic - numeric| / max(|analytic|, |numeric|, abs_floor): the floor keeps
  // gradients that are ~0 from turning fp32 rounding noise into large relative errors.
  double abs_floor = 1e-3;
};

struct GradCheckResult {
  double max_rel_error = 0.0;  // worst over every checked element
  std::string worst;           // "name[i]: analytic A numeric N"
  int64_t checked = 0;
};

// n normal(0, scale) floats from a seeded generator.
std::vector<float> Randn(int64_t n, uint64_t seed, float scale = 1.0f);

// sum(a * r) in double: the scalar the kernel gradient checks differentiate (dloss/da = r).
double WeightedSum(const std::vector<float>& a, const std::vector<float>& r);

// A gtest expectation: something was checked and the worst relative error is under tol.
void ExpectGradOk(const GradCheckResult& r, double tol);

// loss() must be a pure function of the parameters (recompute the forward pass from them).
GradCheckResult GradCheck(const std::function<double()>& loss,
                          const std::vector<GradCheckParam>& params,
                          const GradCheckOptions& options = {});

}  // namespace moe::testing
