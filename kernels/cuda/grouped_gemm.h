// The simple grouped products over all local experts (one launch per product, group sizes read
// on the device, no host sync): the fp32 path and the test oracle of grouped_blas.h.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

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

}  // namespace moe::cuda
