// The fast path's grouped products: bf16 operands through cuBLAS / cuBLASLt, one call per
// product over all local experts, on the layouts of expert_layout.h (counts on the host).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "kernels/cuda/common.h"
#include "kernels/cuda/expert_layout.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/matmul.h"

namespace moe::cuda {

// bf16 products of the experts, fp32 accumulation, one cuBLAS call per product.
//   Gemm (compact layout): cublasGemmGroupedBatchedEx over every (expert, operand set) pair,
//     bf16 output, the shapes of GroupedGemm; `sets` lists products of identical shapes (x@W1
//     and x@W3) that share the call. Experts with no rows are skipped (a kTN output then keeps
//     beta * c only for beta 0 or 1). The pointer arrays go up in one small kernel's parameters.
//   Padded (strided layout, one strided-batch cuBLASLt product, its algorithm cached per shape),
//     every operand's experts `cap` rows apart:
//     kNN: c_x (cap, n) = a_x (cap, k) @ b_x (k, n) + beta c_x, bf16 c
//     kNT: c_x (cap, n) = a_x (cap, k) @ b_x^T + beta c_x, b_x (n, k), bf16 c
//   PaddedWeightGrad: c_x (m, n) += a_x^T (m, cap) @ b_x (cap, n), fp32 or bf16 c (the gradients);
//     with `overwrite`, c_x = (beta 0: c is not read).
//   Products / WeightGrad: the same over a strided or chunked layout (chunk j of expert x
//     multiplies b_x; the weight gradient sums expert x's chunks in runs, WeightGradCalls; with
//     `overwrite` each expert's first run writes c_x, and an expert with no rows gets zeros).
// The calls of WeightGrad over a chunked layout: an expert's chunks lie one after the other, so a
// run of r of them is one product with k = r chunk rows; expert x's chunks go in runs of the
// binary digits of their count (13 = 8 + 4 + 1, largest first), and one call takes the runs of
// one size from every expert that has that digit (each output once in a call). A run that is its
// expert's first overwrites c_x (with `overwrite`): those runs go in calls of their own, first.
struct WeightGradCall {
  int size = 0;        // chunks a run
  bool first = false;  // the runs are their experts' first
  std::vector<std::pair<int, int>> runs;  // (expert, its run's first chunk)
};
std::vector<WeightGradCall> WeightGradCalls(const ExpertLayout& l, int e_local);

class GroupedBlas {
 public:
  struct Operands {
    const bf16* a;
    const bf16* b;
    bf16* c;
  };
  static constexpr int kMaxProblems = 1024;  // groups * sets per call (512 experts, 2 sets)
  // Entries of each pointer array: every chunk, and room for WeightGrad's calls to start aligned.
  static constexpr int kTable = ExpertLayout::kMaxChunks + 64;
  static_assert(kMaxProblems <= kTable, "Gemm's pointer arrays live in the device table");

  GroupedBlas();
  ~GroupedBlas();
  GroupedBlas(const GroupedBlas&) = delete;
  GroupedBlas& operator=(const GroupedBlas&) = delete;

  void Gemm(GroupedOp op, int groups, const int32_t* host_counts, int m, int n, int k, float alpha,
            float beta, std::initializer_list<Operands> sets, cudaStream_t stream);
  void Padded(GroupedOp op, int experts, int cap, int n, int k, float beta, const bf16* a, const bf16* b, bf16* c,
              cudaStream_t stream);
  // c: fp32 gradients (c_type kF32) or bf16 ones (kBF16: master_weights bf16).
  void PaddedWeightGrad(int experts, int cap, int m, int n, const bf16* a, const bf16* b, void* c, DType c_type,
                        cudaStream_t stream, bool overwrite = false);
  void PaddedWeightGrad(int experts, int cap, int m, int n, const bf16* a, const bf16* b, float* c,
                        cudaStream_t stream, bool overwrite = false) {
    PaddedWeightGrad(experts, cap, m, n, a, b, c, DType::kF32, stream, overwrite);
  }
  void Products(GroupedOp op, const ExpertLayout& layout, int e_local, int n, int k, float beta, const bf16* a,
                const bf16* b, bf16* c, cudaStream_t stream);
  void WeightGrad(const ExpertLayout& layout, int e_local, int m, int n, const bf16* a, const bf16* b, void* c,
                  DType c_type, cudaStream_t stream, bool overwrite = false);
  void WeightGrad(const ExpertLayout& layout, int e_local, int m, int n, const bf16* a, const bf16* b, float* c,
                  cudaStream_t stream, bool overwrite = false) {
    WeightGrad(layout, e_local, m, n, a, b, c, DType::kF32, stream, overwrite);
  }

 private:
  void* handle_ = nullptr;        // cublasHandle_t
  // Uploads the (3, count) A, B, C pointers of `table` (count entries each) on `stream`; returns
  // the device arrays and the bytes every pointer is aligned to.
  void** Upload(const void* const* table, int count, int* align, cudaStream_t stream);
  void** device_ptrs_ = nullptr;  // (3, kTable) device: A, B, C pointer arrays
  Blas lt_;                       // the padded products
};

}  // namespace moe::cuda
