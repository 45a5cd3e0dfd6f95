#include "kernels/cuda/matmul.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace moe::cuda {
namespace {

void CheckLt(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "cuBLASLt error at %s:%d: %s: status %d\n", file, line, what,
               static_cast<int>(st));
  std::abort();
}
#define MOE_LT_CHECK(expr) CheckLt((expr), #expr, __FILE__, __LINE__)

__global__ void CastToBf16Kernel(bf16* out, const float* in, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(in[i]);
  }
}

__global__ void CastToFloatKernel(float* out, const bf16* in, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __bfloat162float(in[i]);
  }
}

// Largest power of two (at most 256) that divides every address: cuBLASLt picks algorithms by
// the alignment it is promised.
int CommonAlignment(const void* a, const void* b, const void* c) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                         reinterpret_cast<uintptr_t>(c) | 256;
  return static_cast<int>(bits & (~bits + 1));
}

}  // namespace

struct Blas::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

Blas::Blas() {
  MOE_LT_CHECK(cublasLtCreate(reinterpret_cast<cublasLtHandle_t*>(&handle_)));
  workspace_bytes_ = 64u << 20;
  MOE_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

Blas::~Blas() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatmulDescDestroy(plan->desc);
    cublasLtMatrixLayoutDestroy(plan->a);
    cublasLtMatrixLayoutDestroy(plan->b);
    cublasLtMatrixLayoutDestroy(plan->c);
    delete plan;
  }
  cudaFree(workspace_);
  cublasLtDestroy(reinterpret_cast<cublasLtHandle_t>(handle_));
}

Blas::Plan* Blas::GetPlan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align] = key;
  const cudaDataType_t in_type = type_int == 1 ? CUDA_R_16BF : CUDA_R_32F;
  // Row-major C (m, n) = op(A) op(B) is column-major C^T (n, m) = op(B)^T op(A)^T: cuBLAS's
  // "A" is our b and its "B" our a, each with the same transpose flag.
  Plan* p = new Plan;
  MOE_LT_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  MOE_LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  MOE_LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  // Column-major shapes: cuBLAS-A = our b: (n, k) when not transposed, stored with ld ldb.
  MOE_LT_CHECK(cublasLtMatrixLayoutCreate(&p->a, in_type, tb ? k : n, tb ? n : k, ldb));
  MOE_LT_CHECK(cublasLtMatrixLayoutCreate(&p->b, in_type, ta ? m : k, ta ? k : m, lda));
  MOE_LT_CHECK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, n, m, ldc));
  cublasLtMatmulPreference_t pref;
  MOE_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  MOE_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &workspace_bytes_, sizeof(workspace_bytes_)));
  const uint32_t align_bytes = static_cast<uint32_t>(align);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    MOE_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align_bytes, sizeof(align_bytes)));
  }
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  MOE_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(reinterpret_cast<cublasLtHandle_t>(handle_), p->desc,
                                              p->a, p->b, p->c, p->c, pref, 1, &result, &found));
  cublasLtMatmulPreferenceDestroy(pref);
  if (found == 0) {
    std::fprintf(stderr, "cuBLASLt: no algorithm for m=%d n=%d k=%d (%s)\n", m, n, k,
                 type_int == 1 ? "bf16" : "fp32");
    std::abort();
  }
  p->algo = result.algo;
  plans_[key] = p;
  return p;
}

void Blas::Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a,
                int lda, const void* b, int ldb, float beta, float* c, int ldc, DType type,
                cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    // c = beta * c: only beta 0 (clear) and 1 (keep) occur here.
    if (beta == 0.0f) {
      for (int i = 0; i < m; ++i) MOE_CUDA_CHECK(cudaMemsetAsync(c + int64_t{i} * ldc, 0, sizeof(float) * n, stream));
    }
    return;
  }
  Plan* p = GetPlan(Key{trans_a, trans_b, m, n, k, lda, ldb, ldc, type == DType::kBF16 ? 1 : 0,
                        CommonAlignment(a, b, c)});
  MOE_LT_CHECK(cublasLtMatmul(reinterpret_cast<cublasLtHandle_t>(handle_), p->desc, &alpha, b,
                              p->a, a, p->b, &beta, c, p->c, c, p->c, &p->algo, workspace_,
                              workspace_bytes_, stream));
}

void CastToBf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  const unsigned blocks = std::min<unsigned>(BlocksFor(n, 256), 16384);
  CastToBf16Kernel<<<blocks, 256, 0, stream>>>(out, in, n);
  MOE_CUDA_LAUNCH_CHECK();
}

void CastToFloat(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  const unsigned blocks = std::min<unsigned>(BlocksFor(n, 256), 16384);
  CastToFloatKernel<<<blocks, 256, 0, stream>>>(out, in, n);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
