// Dense matrix products on the GPU through cuBLASLt: bf16 or fp32 operands, fp32 accumulation
// (CUBLAS_COMPUTE_32F: no TF32), fp32 output. Row-major, the same contract as kernels/matmul.h.
#pragma once

#include <cstdint>
#include <map>
#include <tuple>

#include "kernels/cuda/common.h"

struct cublasLtContext;

namespace moe::cuda {

enum class DType { kF32, kBF16 };

class Blas {
 public:
  Blas();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // c (m, n) fp32 = alpha * op(a) @ op(b) + beta * c, row-major; op(x) = x^T when trans_x.
  // a and b are both of `type` (device pointers). With c_in given (k > 0), the beta term reads
  // c_in (c's layout) instead of c.
  void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a, int lda,
            const void* b, int ldb, float beta, float* c, int ldc, DType type, cudaStream_t stream,
            const float* c_in = nullptr);
  // The same for `batch` products, operand x at a + x * stride_a (b, c likewise, in elements),
  // c of c_type (fp32 or bf16): one cuBLASLt call (strided batch). k > 0. With c_in given, the
  // beta term reads c_in (c's layout and type) instead of c.
  void GemmBatched(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a, int lda,
                   int64_t stride_a, const void* b, int ldb, int64_t stride_b, float beta, void* c, int ldc,
                   int64_t stride_c, int batch, DType type, DType c_type, cudaStream_t stream,
                   const void* c_in = nullptr);
  // The same over pointer arrays: product x reads a_ptrs[x], b_ptrs[x] and writes c_ptrs[x]
  // (device arrays of `batch` device pointers, each `align` bytes aligned). k > 0.
  void GemmPointerArray(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* const* a_ptrs,
                        int lda, const void* const* b_ptrs, int ldb, float beta, void* const* c_ptrs, int ldc,
                        int batch, int align, DType type, DType c_type, cudaStream_t stream);

  // A product's shape: trans_a, trans_b, m, n, k, lda, ldb, ldc, bf16 in, alignment, batch,
  // strides a b c, bf16 out, pointer arrays (1) or strides (0).
  using Key =
      std::tuple<bool, bool, int, int, int, int, int, int, int, int, int, int64_t, int64_t, int64_t, int, int>;
  // The shape whose algorithm `key` runs on: rows and batch count rounded up (host code; tested
  // without a GPU).
  static Key Canonical(const Key& key);

 private:
  struct Plan;  // descriptors and the algorithm cuBLASLt chose, cached per shape
  // The plan of an exact shape: its descriptors and an algorithm. The expert products' rows and
  // batch counts follow the routing, so new shapes keep coming after the warm-up, and a
  // heuristic query costs about 0.1 ms of host time where the host is on the critical path: a
  // shape takes the algorithm of its canonical shape (Canonical: rows and batch count rounded up
  // to four values an octave), queried once for the whole bucket.
  Plan* GetPlan(const Key& key);
  Plan* MakePlan(const Key& key);  // the descriptors, kept in plans_; no algorithm yet
  // The heuristic's first choice for the plan's own shape; false when it has none.
  bool ChooseAlgorithm(const Key& key, Plan* plan);
  void ChooseOwnAlgorithm(const Key& key, Plan* plan);  // the same; aborts when there is none
  // matmul(plan, algo, d) -> cublasStatus_t: runs the product on the key's plan with algo, its
  // output at d (c, or an array of c pointers; d_bytes: its extent, 0 for pointer arrays); a
  // bucket's algorithm that cuBLASLt refuses for this shape is replaced by the shape's own and
  // the call made again.
  template <typename Matmul>
  void Run(const Key& key, cudaStream_t stream, void* d, size_t d_bytes, const Matmul& matmul);
  // MOE_BLAS_TUNE_REPORT=1 (a measurement, matmul.cu): at each shape's first product, the times
  // of its plan's algorithm and of every candidate the heuristic lists for it, on the same inputs
  // (the output to scratch); the report of them when the Blas is destroyed.
  template <typename RunAlgo>
  void TimeCandidates(const Key& key, Plan& p, cudaStream_t stream, size_t d_bytes, const RunAlgo& run);
  void PrintTuneReport() const;

  cublasLtContext* handle_ = nullptr;
  void* workspace_ = nullptr;  // device
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan*> plans_;
};

// The plans every Blas of this process has made (one per exact shape), the cuBLASLt heuristic
// queries among them (a bucket's canonical shape, or a shape whose borrowed algorithm was
// refused), and the host seconds the plans took: moe_bench reports them per step.
struct BlasPlanStats {
  int64_t made = 0;     // plans (shapes) made
  int64_t queried = 0;  // heuristic queries (a bucket's first shape, or a refused borrow)
  double seconds = 0;
};
BlasPlanStats& PlanStats();

// out (n, c) -> bf16 copy, for operands of bf16 products. n elements.
void CastToBf16(bf16* out, const float* in, int64_t n, cudaStream_t stream);
// x (n) in place rounded to the nearest bf16 values (kept as fp32).
void RoundToBf16Values(float* x, int64_t n, cudaStream_t stream);
// And back: out (n) = in (n) as fp32.
void CastToFloat(float* out, const bf16* in, int64_t n, cudaStream_t stream);

}  // namespace moe::cuda
