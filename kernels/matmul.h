// Matrix products on the CPU through BLAS (OpenBLAS sgemm).
#pragma once

namespace moe::kernels {

// c (m, n) = alpha * op(a) @ op(b) + beta * c, row-major; op(x) = x^T when trans_x.
void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc);

// out (n, oc) = inp (n, c) @ weight^T, weight (oc, c).
void LinearForward(float* out, const float* inp, const float* weight, int n, int c, int oc);
// dinp (n, c) += dout (n, oc) @ weight ; dweight (oc, c) += dout^T @ inp.
void LinearBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                    const float* weight, int n, int c, int oc);

}  // namespace moe::kernels
