// Where the experts' rows lie on the fast path (strided, chunked or compact) and the moves
// between orders of the same rows: RowBlocks / CopyRowBlocks, PlanExpertLayout, ToExpertLayout.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// Moves row blocks between two orders of the same rows (the expert exchange's wire order and
// expert order): block i is rows[i] rows starting at row src_row[i] of src and dst_row[i] of
// dst; a row is row_bytes bytes (even). One launch for every block.
struct RowBlocks {
  static constexpr int kMax = 512;  // W * E_local <= E <= 512 (a kernel parameter of 12 KB)
  int count = 0;
  int64_t src_row[kMax], dst_row[kMax], rows[kMax];
};
void CopyRowBlocks(void* dst, const void* src, const RowBlocks& blocks, int64_t row_bytes, cudaStream_t stream);

// The experts' layout on the fast path: the experts' bf16 rows (their input x, g, u, h and the
// gradients) lie in one of three layouts:
//   strided: every local expert padded to `chunk` rows (the largest count rounded up to 128),
//     expert x's rows at x * chunk, the rows past its count zero, so that each product is one
//     strided batched GEMM of equal shapes, which cuBLAS runs on its Hopper kernels (about twice
//     as fast as its grouped GEMM, see moe_bench --grouped-gemm), the zero rows adding nothing
//     to the weight gradients;
//   chunked: when the counts differ (so that chunks of 128 x 2^i or 384 x 2^i rows pad fewer rows
//     than padding every expert to the largest count, PlanExpertLayout's cost), expert x's rows
//     fill ceil(count / chunk) chunks of `chunk` rows, one after the other, zero past its count;
//     each product is then one batched GEMM over the chunks through pointer arrays (the same
//     Hopper kernels, each chunk reading its expert's weights), and a weight gradient a few such
//     calls over runs of an expert's chunks (the binary digits of its chunk count: 13 = 8 + 4 + 1,
//     one call per run size);
//   compact (chunk 0): expert x's rows right after expert x - 1's, one cuBLAS grouped GEMM per
//     product (each expert its own count); only with more local experts than RowBlocks::kMax
//     (the strided layout fits the tables otherwise).
// The counts are host values (the one device-to-host count exchange per layer).
struct ExpertLayout {
  static constexpr int kMaxChunks = 1024;
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
// The rows routed and the rows of the layouts PlanExpertLayout planned, over the process (counted
// when a thread's counts differ from its previous call's: once a layer a step): moe_bench reports
// how many rows the padding adds.
struct ExpertLayoutStats {
  int64_t routed = 0;
  int64_t layout = 0;
};
ExpertLayoutStats& LayoutStats();
// Compact fp32 rows (sum of counts, d) to the layout in bf16 (dst: ExpertLayoutRows rows).
void ToExpertLayout(bf16* dst, const float* src, const int32_t* host_counts, int e_local, int d,
                    cudaStream_t stream);
// The same rows gathered from the tokens' rows instead (one GPU, where plan order is expert
// order: the permute and the layout in one pass): slot s of the plan takes row a / k of x (n, d)
// for its assignment a = slot_to_assignment[s] (the routing plan's), times scale[a] when scale
// is not null (the routing weights). The same values as ToExpertLayout of the permuted rows
// (scaled in fp32 first); bf16(0) past each expert's count. With dot_rows (rows in the same
// layout) and dots: also dots[a] = x[a / k] . dot_rows' row of a's slot (x unscaled): the
// routing weights' gradient, when x is the combine's output gradient and dot_rows the experts'
// output (UnpermuteBackward's dweights, summed in another order); dots of dropped assignments
// untouched.
void GatherToExpertLayout(bf16* dst, const float* x, const float* scale, const int32_t* slot_to_assignment, int k,
                          const int32_t* host_counts, int e_local, int d, cudaStream_t stream,
                          const bf16* dot_rows = nullptr, float* dots = nullptr);
// The same gather from rows already in bf16 (x: the fp32 rows' bf16 rounding, as the MoE's
// RMSNorm writes it beside them): each slot's row copied, zeros past each expert's count. The
// same bits as the fp32 gather of the rows x rounds (no scale).
void GatherToExpertLayout(bf16* dst, const bf16* x, const int32_t* slot_to_assignment, int k,
                          const int32_t* host_counts, int e_local, int d, cudaStream_t stream);
// And back, summed per token (one GPU): dx (n, d) += for each token t, over j = 0..k-1 in order,
// the layout row of its slot a2s[t k + j] (skipped when -1), expert expert_idx[t k + j] (the
// routing plan's). The same sums as RowBlocksToFloat to zeroed compact rows, then PermuteBackward.
void AddFromExpertLayout(float* dx, const bf16* layout_rows, const int32_t* assignment_to_slot,
                         const int32_t* expert_idx, int n, int k, const int32_t* host_counts, int e_local, int d,
                         cudaStream_t stream);
// The combine from the layout (one GPU, the experts' output left where the last product wrote
// it): out (n, d) = for each token t, the sum over j = 0..k-1 in order of weights[t k + j] times
// the layout row of its slot (as above), then residual + that sum when a residual (n, d) is
// given. The same bits as UnpermuteForward over the compact rows (CopyRowBlocks of
// ExpertLayoutToCompact).
void CombineFromExpertLayout(float* out, const bf16* layout_rows, const float* weights,
                             const int32_t* assignment_to_slot, const int32_t* expert_idx, int n, int k,
                             const int32_t* host_counts, int e_local, int d, cudaStream_t stream,
                             const float* residual = nullptr);
// The blocks that move every expert's rows from the layout to compact order (CopyRowBlocks).
RowBlocks ExpertLayoutToCompact(const int32_t* host_counts, int e_local);

}  // namespace moe::cuda
