#include "kernels/matmul.h"

#include <cblas.h>

#include <cstdint>

namespace moe::kernels {

void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    // BLAS would leave c untouched only for beta == 1; keep the documented meaning c = beta * c.
    for (int i = 0; i < m; ++i) {
      float* row = c + int64_t{i} * ldc;
      for (int j = 0; j < n; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void LinearForward(float* out, const float* inp, const float* weight, int n, int c, int oc) {
  Gemm(false, true, n, oc, c, 1.0f, inp, c, weight, c, 0.0f, out, oc);
}

void LinearBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                    const float* weight, int n, int c, int oc) {
  if (dinp != nullptr) Gemm(false, false, n, c, oc, 1.0f, dout, oc, weight, c, 1.0f, dinp, c);
  if (dweight != nullptr) Gemm(true, false, oc, c, n, 1.0f, dout, oc, inp, c, 1.0f, dweight, c);
}

}  // namespace moe::kernels
