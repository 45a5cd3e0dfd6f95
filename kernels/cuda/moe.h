// The MoE layer's own ops on the GPU, twins of kernels/router.h, kernels/routing_plan.h and
// kernels/experts.h: router softmax/top-k, router statistics and backward, the routing plan as a
// stable counting sort by expert (capacity: first come by token order), permute/unpermute, and
// the experts as grouped GEMMs over all local experts (one launch per product, no host loop
// over experts, no host sync: group sizes are read on the device). Beside them, the fast path
// (GroupedBlas, ExpertsForwardBf16 / ExpertsBackwardBf16): bf16 operands through cuBLAS, one
// call per product over all local experts (padded strided batches, or the grouped GEMM; see
// "the experts' layout" below); it needs the per-expert counts on the host (the one
// device-to-host count exchange per layer). The simple kernels stay as its test oracle.
// CudaModel uses the fast path in bf16 and the simple kernels in fp32.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"

namespace moe::cuda {

// logits (n, e) -> probs (n, e), lse (n), expert_idx (n, k), weights (n, k). e <= 64.
void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights, const float* logits,
                   int n, int e, int k, cudaStream_t stream);
// prob_sum (e) += , z_sum (1) += sum lse^2, entropy_sum (1) += ; device doubles.
void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, cudaStream_t stream);
// As kernels::RouterBackward; aux_grad (e) device, may be null; dweights may be null.
void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e, int k,
                    cudaStream_t stream);
// This rank's count stats of one layer, in the RouterStatsSlots layout (worker/model/
// moe_bookkeeping.h): stats[x] = routed[x] (x < e), stats[2e + 2] = dropped assignments (the
// other entries are RouterStats'). Summed over ranks, they are the global ones.
void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, cudaStream_t stream);
// aux_grad[x] = coef_e * (stats[x] / (n_global * k)) * loss_scale (in double, then float), from
// the global routed counts in stats. coef_e is aux_coef * E.
void RouterAuxGrad(float* aux_grad, const double* stats, int e, double n_global, int k, double coef_e,
                   float loss_scale, cudaStream_t stream);

// The routing plan of kernels::BuildRoutingPlan on the device: counts (e) kept per expert,
// routed (e) before drops, offsets (e + 1), assignment_to_slot (n k) (-1 when dropped),
// slot_to_assignment (n k; the first offsets[e] entries are valid). capacity 0 = unlimited.
void BuildRoutingPlan(int32_t* counts, int32_t* routed, int32_t* offsets, int32_t* assignment_to_slot,
                      int32_t* slot_to_assignment, const int32_t* expert_idx, int n, int k, int e,
                      int64_t capacity, cudaStream_t stream);

// xs[slot] = x[token of slot] ; dx (n, d) += gathered dxs.
void PermuteForward(float* xs, const float* x, const int32_t* assignment_to_slot, int n, int k, int d,
                    cudaStream_t stream);
void PermuteBackward(float* dx, const float* dxs, const int32_t* assignment_to_slot, int n, int k, int d,
                     cudaStream_t stream);
// out (n, d) = sum over kept j of weights[t, j] ys[slot] ; dys += , dweights += (either may be null).
void UnpermuteForward(float* out, const float* ys, const float* weights, const int32_t* assignment_to_slot,
                      int n, int k, int d, cudaStream_t stream);
void UnpermuteBackward(float* dys, float* dweights, const float* dout, const float* ys, const float* weights,
                       const int32_t* assignment_to_slot, int n, int k, int d, cudaStream_t stream);

// Grouped products over `groups` experts; group x owns rows [offsets[x], offsets[x + 1]) of the
// row-grouped buffers (offsets on the device). max_rows bounds every group's rows (grid size).
//   kNN: c[rows] (m_x, n) = alpha a[rows] (m_x, k) @ b_x (k, n)   + beta c[rows]; b_x = b + x k n
//   kNT: c[rows] (m_x, n) = alpha a[rows] (m_x, k) @ b_x^T, b_x (n, k)  + beta c[rows]
//   kTN: c_x (m, n) = alpha a[rows]^T (m, m_x) @ b[rows] (m_x, n) + beta c_x;     c_x = c + x m n
// tensor_cores: operands rounded to bf16 as they are loaded, fp32 accumulation (wmma); else fp32.
enum class GroupedOp { kNN, kNT, kTN };
void GroupedGemm(GroupedOp op, int groups, const int32_t* offsets, int max_rows, int m, int n, int k,
                 float alpha, const float* a, const float* b, float beta, float* c, bool tensor_cores,
                 cudaStream_t stream);

// kernels::ExpertsForward / ExpertsBackward over grouped rows (offsets as above). ys (rows, d);
// g, u, h (rows, f) saved; weights w1, w3 (e, d, f), w2 (e, f, d). Backward accumulates into
// dxs, dw1, dw3, dw2 (each may be null); scratch: 2 * max_rows * f floats.
void ExpertsForward(float* ys, float* g, float* u, float* h, const float* xs, const float* w1,
                    const float* w3, const float* w2, const int32_t* offsets, int max_rows, int e_local,
                    int d, int f, bool tensor_cores, cudaStream_t stream);
void ExpertsBackward(float* dxs, float* dw1, float* dw3, float* dw2, const float* dys, const float* xs,
                     const float* g, const float* u, const float* h, const float* w1, const float* w3,
                     const float* w2, const int32_t* offsets, int max_rows, int e_local, int d, int f,
                     float* scratch, bool tensor_cores, cudaStream_t stream);

// Moves row blocks between two orders of the same rows (the expert exchange's wire order and
// expert order): block i is rows[i] rows starting at row src_row[i] of src and dst_row[i] of
// dst; a row is row_bytes bytes (even). One launch for every block.
struct RowBlocks {
  static constexpr int kMax = 64;  // W * E_local <= E <= 64
  int count = 0;
  int64_t src_row[kMax], dst_row[kMax], rows[kMax];
};
void CopyRowBlocks(void* dst, const void* src, const RowBlocks& blocks, int64_t row_bytes, cudaStream_t stream);

// ---- fast path ----

// ---- the experts' layout on the fast path ----
// The experts' bf16 rows (their input x, g, u, h and the gradients) lie in one of three layouts:
//   strided: every local expert padded to `chunk` rows (the largest count rounded up to 128),
//     expert x's rows at x * chunk, the rows past its count zero, so that each product is one
//     strided batched GEMM of equal shapes, which cuBLAS runs on its Hopper kernels (about twice
//     as fast as its grouped GEMM, see moe_bench --grouped-gemm), the zero rows adding nothing
//     to the weight gradients;
//   chunked: when one expert takes far more rows than the others (padding every expert to it
//     would more than double the rows), expert x's rows fill ceil(count / chunk) chunks of
//     `chunk` rows, one after the other, zero past its count; each product is then one batched
//     GEMM over the chunks through pointer arrays (the same Hopper kernels, each chunk reading
//     its expert's weights), and a weight gradient one such call per chunk index (the experts
//     that have that many chunks);
//   compact (chunk 0): expert x's rows right after expert x - 1's, one cuBLAS grouped GEMM per
//     product (each expert its own count); only when the chunks would not fit the tables.
// The counts are host values (the one device-to-host count exchange per layer).
struct ExpertLayout {
  static constexpr int kMaxChunks = 256;
  int chunk = 0;         // rows per chunk (a multiple of 128); 0: compact
  int chunks = 0;        // chunks in all (strided: one per expert)
  bool strided = false;  // chunk x is expert x's
  int64_t rows = 0;      // rows of the layout: chunks * chunk, or the sum of the counts
  int32_t first_chunk[RowBlocks::kMax + 1] = {};  // expert x's chunks: [first_chunk[x], first_chunk[x + 1])
  int64_t start[RowBlocks::kMax + 1] = {};        // expert x's first row in the layout
};
ExpertLayout PlanExpertLayout(const int32_t* host_counts, int e_local);
// Rows of the layout (PlanExpertLayout(...).rows).
int64_t ExpertLayoutRows(const int32_t* host_counts, int e_local);
// Compact fp32 rows (sum of counts, d) to the layout in bf16 (dst: ExpertLayoutRows rows).
void ToExpertLayout(bf16* dst, const float* src, const int32_t* host_counts, int e_local, int d,
                    cudaStream_t stream);
// The blocks that move every expert's rows from the layout to compact order (CopyRowBlocks).
RowBlocks ExpertLayoutToCompact(const int32_t* host_counts, int e_local);

// bf16 products of the experts, fp32 accumulation, one cuBLAS call per product.
//   Gemm (compact layout): cublasGemmGroupedBatchedEx over every (expert, operand set) pair,
//     bf16 output, the shapes of GroupedGemm; `sets` lists products of identical shapes (x@W1
//     and x@W3) that share the call. Experts with no rows are skipped (a kTN output then keeps
//     beta * c only for beta 0 or 1). The pointer arrays go up by one copy on the stream.
//   Padded (strided layout, one strided-batch cuBLASLt product, its algorithm cached per shape),
//     every operand's experts `cap` rows apart:
//     kNN: c_x (cap, n) = a_x (cap, k) @ b_x (k, n) + beta c_x, bf16 c
//     kNT: c_x (cap, n) = a_x (cap, k) @ b_x^T + beta c_x, b_x (n, k), bf16 c
//   PaddedWeightGrad: c_x (m, n) += a_x^T (m, cap) @ b_x (cap, n), fp32 c (the gradients).
//   Products / WeightGrad: the same over a strided or chunked layout (chunk j of expert x
//     multiplies b_x; the weight gradient sums expert x's chunks).
class GroupedBlas {
 public:
  struct Operands {
    const bf16* a;
    const bf16* b;
    bf16* c;
  };
  static constexpr int kMaxProblems = 128;  // groups * sets per call (64 experts, 2 sets)
  static constexpr int kTable = ExpertLayout::kMaxChunks;  // entries of each pointer array

  GroupedBlas();
  ~GroupedBlas();
  GroupedBlas(const GroupedBlas&) = delete;
  GroupedBlas& operator=(const GroupedBlas&) = delete;

  void Gemm(GroupedOp op, int groups, const int32_t* host_counts, int m, int n, int k, float alpha,
            float beta, std::initializer_list<Operands> sets, cudaStream_t stream);
  void Padded(GroupedOp op, int experts, int cap, int n, int k, float beta, const bf16* a, const bf16* b, bf16* c,
              cudaStream_t stream);
  void PaddedWeightGrad(int experts, int cap, int m, int n, const bf16* a, const bf16* b, float* c,
                        cudaStream_t stream);
  void Products(GroupedOp op, const ExpertLayout& layout, int e_local, int n, int k, float beta, const bf16* a,
                const bf16* b, bf16* c, cudaStream_t stream);
  void WeightGrad(const ExpertLayout& layout, int e_local, int m, int n, const bf16* a, const bf16* b, float* c,
                  cudaStream_t stream);

 private:
  void* handle_ = nullptr;        // cublasHandle_t
  // Uploads the (3, count) A, B, C pointers of `table` (count entries each) on `stream`; returns
  // the device arrays and the bytes every pointer is aligned to.
  void** Upload(const std::vector<const void*>& table, int count, int* align, cudaStream_t stream);
  void** device_ptrs_ = nullptr;  // (3, kTable) device: A, B, C pointer arrays
  Blas lt_;                       // the padded products
};

// ExpertsForward / ExpertsBackward on the fast path: bf16 operands and products, fp32 where
// the oracle keeps fp32 (the accumulated gradients), rows as in ExpertsForward. xs16, dys16,
// g16, u16, h16: the experts' layout (above; ExpertLayoutRows rows of d or f). The forward
// writes ys (rows, d) in fp32 and/or ys16 in bf16 (either may be null), compact, and saves
// g16, u16, h16 for the backward, which takes the same counts. dw1, dw3, dw2 and the compact
// dxs (each may be null) accumulate in fp32. Scratch (both): ExpertsBf16Scratch bf16.
void ExpertsForwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* ys, bf16* ys16, bf16* g16,
                        bf16* u16, bf16* h16, const bf16* xs16, const bf16* w1, const bf16* w3, const bf16* w2,
                        int e_local, int d, int f, bf16* scratch16, cudaStream_t stream);
int64_t ExpertsBf16Scratch(int64_t layout_rows, int e_local, int d, int f);
void ExpertsBackwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* dxs, float* dw1, float* dw3,
                         float* dw2, const bf16* dys16, const bf16* xs16, const bf16* g16, const bf16* u16,
                         const bf16* h16, const bf16* w1, const bf16* w3, const bf16* w2, int e_local, int d,
                         int f, bf16* scratch16, cudaStream_t stream);

}  // namespace moe::cuda
