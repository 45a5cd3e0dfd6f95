#include "kernels/muon.h"

#include <cmath>
#include <vector>

#include "kernels/matmul.h"

namespace moe::kernels {
namespace {

// x (r, c), r <= c, already normalised: five X <- a X + (b A + c A A) X, A = X X^T (r, r).
// gram, poly: (r, r) scratch; next: (r, c) scratch.
void NewtonSchulzWide(float* x, int r, int c, float* gram, float* poly, float* next) {
  const int64_t rr = int64_t{r} * r, rc = int64_t{r} * c;
  for (int it = 0; it < kNewtonSchulzSteps; ++it) {
    Gemm(false, true, r, r, c, 1.0f, x, c, x, c, 0.0f, gram, r);  // A = X X^T
    std::copy(gram, gram + rr, poly);
    Gemm(false, false, r, r, r, kNewtonSchulzC, gram, r, gram, r, kNewtonSchulzB, poly, r);  // b A + c A A
    std::copy(x, x + rc, next);
    Gemm(false, false, r, c, r, 1.0f, poly, r, x, c, kNewtonSchulzA, next, c);  // a X + (..) X
    std::copy(next, next + rc, x);
  }
}

}  // namespace

void NewtonSchulz(float* x, int64_t batch, int rows, int cols) {
  const bool tall = rows > cols;
  const int r = tall ? cols : rows, c = tall ? rows : cols;  // the wide orientation, r <= c
  const int64_t size = int64_t{rows} * cols;
  std::vector<float> work(size), gram(int64_t{r} * r), poly(gram.size()), next(size);
  for (int64_t m = 0; m < batch; ++m) {
    float* mat = x + m * size;
    double sq = 0;
    for (int64_t i = 0; i < size; ++i) sq += double{mat[i]} * mat[i];
    const float denom = static_cast<float>(std::sqrt(sq)) + kMuonNormEps;
    // work (r, c): mat / denom, transposed when tall.
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < cols; ++j) {
        const float v = mat[int64_t{i} * cols + j] / denom;
        if (tall) {
          work[int64_t{j} * rows + i] = v;
        } else {
          work[int64_t{i} * cols + j] = v;
        }
      }
    }
    NewtonSchulzWide(work.data(), r, c, gram.data(), poly.data(), next.data());
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < cols; ++j) {
        mat[int64_t{i} * cols + j] = tall ? work[int64_t{j} * rows + i] : work[int64_t{i} * cols + j];
      }
    }
  }
}

void MuonUpdate(float* param, const float* grad, float* momentum_buf, int64_t batch, int rows, int cols,
                const MuonConfig& cfg, float grad_scale) {
  const int64_t n = batch * rows * cols;
  const float mu = cfg.momentum;
  std::vector<float> u(n);
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    momentum_buf[i] = mu * momentum_buf[i] + g;
    u[i] = g + mu * momentum_buf[i];  // Nesterov
  }
  NewtonSchulz(u.data(), batch, rows, cols);
  const float decay = 1.0f - cfg.lr * cfg.weight_decay;
  const float step = cfg.lr * MuonScale(rows, cols);
  for (int64_t i = 0; i < n; ++i) param[i] = param[i] * decay - step * u[i];
}

}  // namespace moe::kernels
