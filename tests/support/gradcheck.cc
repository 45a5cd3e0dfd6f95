#include "tests/support/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "gtest/gtest.h"

namespace moe::testing {

GradCheckResult GradCheck(const std::function<double()>& loss,
                          const std::vector<GradCheckParam>& params,
                          const GradCheckOptions& options) {
  GradCheckResult result;
  std::mt19937_64 rng(options.seed);
  for (const GradCheckParam& p : params) {
    // Indices to check: every element when few, else a random sample without repeats.
    std::vector<int64_t> idx;
    if (p.n <= options.samples_per_param) {
      idx.resize(p.n);
      std::iota(idx.begin(), idx.end(), int64_t{0});
    } else {
      std::uniform_int_distribution<int64_t> pick(0, p.n - 1);
      while (static_cast<int>(idx.size()) < options.samples_per_param) {
        const int64_t i = pick(rng);
        if (std::find(idx.begin(), idx.end(), i) == idx.end()) idx.push_back(i);
      }
    }
    for (const int64_t i : idx) {
      const float orig = p.param[i];
      // Divide by the step the float actually took, not by 2 * eps.
      const float plus = static_cast<float>(orig + options.eps);
      const float minus = static_cast<float>(orig - options.eps);
      p.param[i] = plus;
      const double loss_plus = loss();
      p.param[i] = minus;
      const double loss_minus = loss();
      p.param[i] = orig;
      const double numeric = (loss_plus - loss_minus) / (double{plus} - double{minus});
      const double analytic = p.grad[i];
      const double denom = std::max({std::fabs(analytic), std::fabs(numeric), options.abs_floor});
      const double rel = std::fabs(analytic - numeric) / denom;
      ++result.checked;
      if (rel > result.max_rel_error || !std::isfinite(rel)) {
        result.max_rel_error = std::isfinite(rel) ? rel : INFINITY;
        char buf[256];
        std::snprintf(buf, sizeof(buf), "%s[%lld]: analytic %.6g numeric %.6g", p.name.c_str(),
                      static_cast<long long>(i), analytic, numeric);
        result.worst = buf;
      }
    }
  }
  return result;
}

std::vector<float> Randn(int64_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

double WeightedSum(const std::vector<float>& a, const std::vector<float>& r) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += double{a[i]} * r[i];
  return s;
}

void ExpectGradOk(const GradCheckResult& r, double tol) {
  EXPECT_GT(r.checked, 0);
  EXPECT_LT(r.max_rel_error, tol) << "worst: " << r.worst;
}

}  // namespace moe::testing
