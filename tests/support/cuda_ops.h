// What the CUDA op tests share: device copies of host vectors, seeded normal data, the error
// ||cuda - cpu|| / ||cpu||, the tolerances common to several ops, Muon's device scratch, and the
// skip without a GPU.
// CUDA builds only (include it under #ifdef MOE_WITH_CUDA).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/common.h"
#include "kernels/cuda/muon.h"

#define SKIP_WITHOUT_GPU()                                      \
  do {                                                          \
    if (!::moe::cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine"; \
  } while (0)

namespace moe::testing {

// A device copy of a host vector, and back.
template <typename T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& host) : n_(host.size()) {
    MOE_CUDA_CHECK(cudaMalloc(&p_, sizeof(T) * std::max<size_t>(1, n_)));
    if (n_ > 0) MOE_CUDA_CHECK(cudaMemcpy(p_, host.data(), sizeof(T) * n_, cudaMemcpyHostToDevice));
  }
  explicit Dev(size_t n, T fill = T{}) : Dev(std::vector<T>(n, fill)) {}
  ~Dev() { cudaFree(p_); }
  T* get() { return p_; }
  std::vector<T> Host() const {
    MOE_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> out(n_);
    if (n_ > 0) MOE_CUDA_CHECK(cudaMemcpy(out.data(), p_, sizeof(T) * n_, cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

inline std::vector<float> Randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// ||a - b|| / ||b|| (b the CPU reference); NaN anywhere fails.
inline double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

inline std::vector<float> ToFloat(const std::vector<cuda::bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

// The median milliseconds of `reps` runs of fn() (work queued on the default stream), after
// `warmup` runs not counted: the DISABLED_*Timing tests' clock.
template <typename F>
double MedianMs(F&& fn, int reps = 10, int warmup = 2) {
  cudaEvent_t e0, e1;
  MOE_CUDA_CHECK(cudaEventCreate(&e0));
  MOE_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int rep = 0; rep < warmup + reps; ++rep) {
    MOE_CUDA_CHECK(cudaEventRecord(e0));
    fn();
    MOE_CUDA_CHECK(cudaEventRecord(e1));
    MOE_CUDA_CHECK(cudaEventSynchronize(e1));
    float t_ms = 0;
    MOE_CUDA_CHECK(cudaEventElapsedTime(&t_ms, e0, e1));
    if (rep >= warmup) ms.push_back(t_ms);
  }
  MOE_CUDA_CHECK(cudaEventDestroy(e0));
  MOE_CUDA_CHECK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

constexpr double kFp32Tol = 1e-5;      // same math, another summation order
constexpr double kBf16Tol = 1e-2;      // bf16 operands, fp32 accumulation

// Device scratch of Muon runs that `size` fits (kernels/cuda/muon.h), for the test's lifetime;
// fp32 operand copies are large enough for bf16 ones too.
struct MuonScratch {
  static cuda::MuonWorkspace::Size For(int64_t batch, int rows, int cols) {
    cuda::MuonWorkspace::Size size;
    size.Fit(batch, rows, cols);
    return size;
  }
  explicit MuonScratch(const cuda::MuonWorkspace::Size& fits) : size(fits) {
    ws.x = x.get();
    ws.x_op = x_op.get();
    ws.gram = gram.get();
    ws.poly = poly.get();
    ws.norms = norms.get();
    ws.partials = partials.get();
  }
  cuda::MuonWorkspace::Size size;  // first: the buffers below are sized from it
  Dev<float> x{static_cast<size_t>(size.elements)}, x_op{static_cast<size_t>(size.elements)};
  Dev<float> gram{static_cast<size_t>(size.gram)}, poly{static_cast<size_t>(size.gram)};
  Dev<double> norms{static_cast<size_t>(size.batch)}, partials{static_cast<size_t>(size.partials)};
  cuda::MuonWorkspace ws;
};

}  // namespace moe::testing
