#include "kernels/cuda/expert_layout.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/moe_internal.h"

namespace moe::cuda {
namespace {

using internal::CountSum;
using internal::kThreads;
using internal::LoadBf16x4;
using internal::StoreBf16x4;
using internal::WarpSum;

// grid.y walks the blocks, grid.x and the threads a block's words.
template <typename Word>
__global__ void CopyRowBlocksKernel(char* dst, const char* src, const RowBlocks blocks, int64_t row_bytes) {
  const int i = blockIdx.y;
  const int64_t words = blocks.rows[i] * row_bytes / sizeof(Word);
  const Word* s = reinterpret_cast<const Word*>(src + blocks.src_row[i] * row_bytes);
  Word* d = reinterpret_cast<Word*>(dst + blocks.dst_row[i] * row_bytes);
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    d[w] = s[w];
  }
}

// Rows of `blocks` from bf16 src to fp32 out: out = src, or out += src (kAccumulate); grid.y
// walks the blocks as in CopyRowBlocksKernel. Two elements per thread when the pointers allow.
template <bool kAccumulate, bool kPairs>
__global__ void RowBlocksToFloatKernel(float* out, const bf16* src, const RowBlocks blocks, int d) {
  const int i = blockIdx.y;
  const int64_t n = blocks.rows[i] * d;
  float* o = out + blocks.dst_row[i] * d;
  const bf16* s = src + blocks.src_row[i] * d;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kPairs) {
    for (int64_t j = first; j < n / 2; j += stride) {
      const float2 v = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(s)[j]);
      float2& w = reinterpret_cast<float2*>(o)[j];
      w = kAccumulate ? make_float2(w.x + v.x, w.y + v.y) : v;
    }
  } else {
    for (int64_t j = first; j < n; j += stride) o[j] = (kAccumulate ? o[j] : 0.0f) + __bfloat162float(s[j]);
  }
}

// The layout's rows from compact fp32 rows: grid.y = expert x, whose span[x] rows from
// dst_row[x] on take its rows[x] rows from src row src_row[x] on, then zeros.
struct LayoutBlocks {
  int64_t src_row[RowBlocks::kMax], dst_row[RowBlocks::kMax], rows[RowBlocks::kMax], span[RowBlocks::kMax];
};

__global__ void ToLayoutKernel(bf16* dst, const float* src, const LayoutBlocks blocks, int d) {
  const int x = blockIdx.y;
  const int64_t real = blocks.rows[x] * d, n = blocks.span[x] * d;
  bf16* o = dst + blocks.dst_row[x] * d;
  const float* s = src + blocks.src_row[x] * d;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    o[j] = __float2bfloat16(j < real ? s[j] : 0.0f);
  }
}

// The layout's rows gathered from token rows (one GPU: plan order is expert order). grid.y =
// expert x; a warp per row of its span: row i < rows[x] is slot s = src_row[x] + i, assignment
// a = s2a[s], token a / k, and takes bf16(x[token] * scale[a]) (scale null: x[token]); the rows
// past rows[x] zeros. dots (when not null): dots[a] = x[token] . dot_rows' row i (the same layout
// row, unscaled x), the lanes' partial sums added by WarpSum. kVec4: four columns per lane
// (d % 4 == 0, x 16-byte aligned, dst and dot_rows 8).
template <bool kVec4>
__global__ void GatherToLayoutKernel(bf16* dst, const float* x, const float* scale, const int32_t* s2a, int k,
                                     const LayoutBlocks blocks, int d, const bf16* dot_rows, float* dots) {
  const int e = blockIdx.y, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; i < blocks.span[e];
       i += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t row = (blocks.dst_row[e] + i) * d;
    bf16* o = dst + row;
    const float* src = nullptr;
    float f = 1.0f;
    int a = -1;
    if (i < blocks.rows[e]) {
      a = s2a[blocks.src_row[e] + i];
      src = x + int64_t{a / k} * d;
      if (scale != nullptr) f = scale[a];
    }
    const bf16* y = src != nullptr && dots != nullptr ? dot_rows + row : nullptr;  // warp-uniform
    float dot = 0.0f;
    if constexpr (kVec4) {
      for (int c = 4 * lane; c < d; c += 128) {
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (src != nullptr) {
          v = *reinterpret_cast<const float4*>(src + c);
          if (y != nullptr) {
            const float4 yv = LoadBf16x4(y + c);
            dot += v.x * yv.x;
            dot += v.y * yv.y;
            dot += v.z * yv.z;
            dot += v.w * yv.w;
          }
          v = make_float4(v.x * f, v.y * f, v.z * f, v.w * f);
        }
        StoreBf16x4(o + c, v);
      }
    } else {
      for (int c = lane; c < d; c += 32) {
        const float v = src != nullptr ? src[c] : 0.0f;
        if (y != nullptr) dot += v * __bfloat162float(y[c]);
        o[c] = __float2bfloat16(v * f);
      }
    }
    if (y != nullptr) {
      dot = WarpSum(dot);
      if (lane == 0) dots[a] = dot;
    }
  }
}

// GatherToLayoutKernel's copy from bf16 rows: a warp per layout row, kVec8: eight columns
// (16 bytes) per lane (d % 8 == 0, x and dst 16-byte aligned).
template <bool kVec8>
__global__ void GatherBf16ToLayoutKernel(bf16* dst, const bf16* x, const int32_t* s2a, int k, const LayoutBlocks blocks,
                                         int d) {
  const int e = blockIdx.y, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; i < blocks.span[e];
       i += static_cast<int64_t>(gridDim.x) * warps) {
    bf16* o = dst + (blocks.dst_row[e] + i) * d;
    const bf16* src = i < blocks.rows[e] ? x + int64_t{s2a[blocks.src_row[e] + i] / k} * d : nullptr;
    if constexpr (kVec8) {
      for (int c = 8 * lane; c < d; c += 256) {
        *reinterpret_cast<uint4*>(o + c) =
            src != nullptr ? *reinterpret_cast<const uint4*>(src + c) : make_uint4(0u, 0u, 0u, 0u);
      }
    } else {
      for (int c = lane; c < d; c += 32) o[c] = src != nullptr ? src[c] : __float2bfloat16(0.0f);
    }
  }
}

// The reverse of the gather, summed per token (one GPU): a warp per token t computes, for j =
// 0..k-1 in order, acc += w[t k + j] * (the layout row of its slot s = a2s[t k + j], skipped
// when dropped: row dst_row[x] + s - src_row[x] of expert x = expert_idx[t k + j]), w null: 1
// (the row itself, exactly); acc starts at out[t] (accumulate) or 0, and out[t] = residual[t] +
// acc when a residual is given, else acc. The order of UnpermuteForward's sums, so its bits.
// kVec4 as above (out and residual 16-byte aligned).
template <bool kVec4>
__global__ void SumFromLayoutKernel(float* out, const bf16* src, const float* weights, const int32_t* a2s,
                                    const int32_t* expert_idx, int n, int k, const LayoutBlocks blocks, int d,
                                    bool accumulate, const float* residual) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= n) return;
  float* o = out + int64_t{t} * d;
  const float* r = residual != nullptr ? residual + int64_t{t} * d : nullptr;
  constexpr int kCols = kVec4 ? 4 : 1;
  for (int c = kCols * lane; c < d; c += 32 * kCols) {
    float acc[kCols] = {};
    if (accumulate) {
      if constexpr (kVec4) {
        const float4 v = *reinterpret_cast<const float4*>(o + c);
        acc[0] = v.x, acc[1] = v.y, acc[2] = v.z, acc[3] = v.w;
      } else {
        acc[0] = o[c];
      }
    }
    for (int j = 0; j < k; ++j) {
      const int64_t a = int64_t{t} * k + j;
      const int s = a2s[a];
      if (s < 0) continue;
      const float w = weights != nullptr ? weights[a] : 1.0f;
      const int x = expert_idx[a];
      const bf16* row = src + (blocks.dst_row[x] + s - blocks.src_row[x]) * d + c;
      if constexpr (kVec4) {
        const float4 y = LoadBf16x4(row);
        acc[0] += w * y.x;
        acc[1] += w * y.y;
        acc[2] += w * y.z;
        acc[3] += w * y.w;
      } else {
        acc[0] += w * __bfloat162float(*row);
      }
    }
    if (r != nullptr) {
      for (int q = 0; q < kCols; ++q) acc[q] = r[c + q] + acc[q];
    }
    if constexpr (kVec4) {
      *reinterpret_cast<float4*>(o + c) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    } else {
      o[c] = acc[0];
    }
  }
}

// Expert x's blocks of layout l (e_local <= RowBlocks::kMax, the tables' size; validation
// refuses more local experts); most: the longest span.
LayoutBlocks BlocksOf(const ExpertLayout& l, const int32_t* host_counts, int e_local, int64_t* most) {
  if (e_local > RowBlocks::kMax) {
    std::fprintf(stderr, "expert layout: %d local experts, at most %d\n", e_local, RowBlocks::kMax);
    std::abort();
  }
  LayoutBlocks blocks;
  int64_t o = 0;
  for (int x = 0; x < e_local; ++x) {
    blocks.src_row[x] = o;
    blocks.dst_row[x] = l.start[x];
    blocks.rows[x] = host_counts[x];
    blocks.span[x] = l.start[x + 1] - l.start[x];
    *most = std::max(*most, blocks.span[x]);
    o += host_counts[x];
  }
  return blocks;
}

}  // namespace

void CopyRowBlocks(void* dst, const void* src, const RowBlocks& blocks, int64_t row_bytes, cudaStream_t stream) {
  if (blocks.count <= 0 || row_bytes <= 0) return;
  int64_t most = 0;
  for (int i = 0; i < blocks.count; ++i) most = std::max(most, blocks.rows[i]);
  if (most == 0) return;
  const dim3 grid(std::min<unsigned>(BlocksFor(most * row_bytes / 16 + 1, kThreads), 1024), blocks.count);
  const uintptr_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                         static_cast<uintptr_t>(row_bytes);
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  if (bits % 16 == 0) {
    CopyRowBlocksKernel<int4><<<grid, kThreads, 0, stream>>>(d, s, blocks, row_bytes);
  } else if (bits % 4 == 0) {
    CopyRowBlocksKernel<int32_t><<<grid, kThreads, 0, stream>>>(d, s, blocks, row_bytes);
  } else {
    CopyRowBlocksKernel<int16_t><<<grid, kThreads, 0, stream>>>(d, s, blocks, row_bytes);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

namespace internal {

void RowBlocksToFloat(float* out, const bf16* src, const RowBlocks& blocks, int d, bool accumulate,
                      cudaStream_t stream) {
  int64_t most = 0;
  for (int i = 0; i < blocks.count; ++i) most = std::max(most, blocks.rows[i]);
  if (most == 0 || d <= 0) return;
  const bool pairs = d % 2 == 0 && Aligned(8, {out}) && Aligned(4, {src});
  const dim3 grid(std::min<unsigned>(BlocksFor(most * d / (pairs ? 2 : 1), kThreads), 1024), blocks.count);
  if (accumulate) {
    if (pairs) RowBlocksToFloatKernel<true, true><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
    else RowBlocksToFloatKernel<true, false><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
  } else {
    if (pairs) RowBlocksToFloatKernel<false, true><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
    else RowBlocksToFloatKernel<false, false><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace internal

namespace {

// A layout's cost in rows of product work (PlanExpertLayout). The forward's and the input
// gradient's products compute every row of the layout; the weight gradient computes them too, in
// runs (GroupedBlas::WeightGrad: an expert's chunks split by the binary digits of their count),
// and a run shorter than kRunRows costs as much as kRunRows rows: reading and writing its fp32
// gradient then takes longer than its product (about 870 rows' worth on an H100 at 650 TFLOP/s
// and 3 TB/s).
constexpr int64_t kRunRows = 768;
int64_t WeightGradCost(int64_t chunks, int64_t chunk) {
  int64_t cost = 0;
  for (int64_t run = 1; run <= chunks; run <<= 1) {
    if (chunks & run) cost += std::max(run * chunk, kRunRows);
  }
  return cost;
}

ExpertLayout PlanLayout(const int32_t* host_counts, int e_local) {
  // Chunks are 128 rows times 2^i or 3 x 2^i: few distinct shapes over a run, so that cuBLAS picks
  // its kernel for each once (a new shape costs a heuristic query on the host).
  constexpr int64_t kStep = 128;
  auto round_up = [](int64_t v) { return (v + kStep - 1) / kStep * kStep; };
  ExpertLayout l;
  const int64_t rows = CountSum(host_counts, e_local);
  auto compact = [&]() {
    l = ExpertLayout();
    l.rows = rows;
    for (int x = 0; x < e_local; ++x) l.start[x + 1] = l.start[x] + host_counts[x];
    return l;
  };
  if (rows <= 0 || e_local > RowBlocks::kMax || e_local > ExpertLayout::kMaxChunks) return compact();
  int64_t cap = 0;
  for (int x = 0; x < e_local; ++x) cap = std::max(cap, round_up(host_counts[x]));
  // Strided (every expert padded to the largest count, empty ones too) unless chunks cost less:
  // the layout's rows are what the products compute and what every buffer of rows holds (g and u
  // for each layer's backward), so padding is paid in time and memory.
  int64_t best_cost = e_local * (2 * cap + WeightGradCost(1, cap));
  for (int64_t base : {kStep, 3 * kStep}) {
    for (int64_t chunk = base; chunk < cap; chunk *= 2) {
      int64_t chunks = 0, cost = 0;
      for (int x = 0; x < e_local; ++x) {
        const int64_t c = (host_counts[x] + chunk - 1) / chunk;
        chunks += c;
        cost += 2 * c * chunk + WeightGradCost(c, chunk);
      }
      if (chunks <= ExpertLayout::kMaxChunks && cost < best_cost) {
        best_cost = cost;
        l.chunk = static_cast<int>(chunk);
      }
    }
  }
  if (l.chunk == 0) {
    l.chunk = static_cast<int>(cap);
    l.chunks = e_local;
    l.strided = true;
    for (int x = 0; x <= e_local; ++x) l.first_chunk[x] = x;
  } else {
    for (int x = 0; x < e_local; ++x) {
      l.first_chunk[x] = l.chunks;
      l.chunks += static_cast<int>((host_counts[x] + l.chunk - 1) / l.chunk);
    }
    l.first_chunk[e_local] = l.chunks;
  }
  l.rows = int64_t{l.chunks} * l.chunk;
  for (int x = 0; x <= e_local; ++x) l.start[x] = int64_t{l.first_chunk[x]} * l.chunk;
  return l;
}

}  // namespace

// A layer asks for the same counts' layout about eight times (the forward and the backward, the
// gather and the add-back, the dispatcher), its shared experts' in between: the last two are kept,
// per thread.
ExpertLayout PlanExpertLayout(const int32_t* host_counts, int e_local) {
  struct Kept {
    bool valid = false;
    std::vector<int32_t> counts;
    ExpertLayout layout;
  };
  thread_local Kept kept[2];
  thread_local int newest = 0;
  const size_t e = static_cast<size_t>(std::max(e_local, 0));
  for (int i : {newest, 1 - newest}) {
    if (kept[i].valid && kept[i].counts.size() == e && std::equal(kept[i].counts.begin(), kept[i].counts.end(),
                                                                 host_counts)) {
      return kept[i].layout;
    }
  }
  newest = 1 - newest;  // in place of the older one
  Kept& k = kept[newest];
  k.layout = PlanLayout(host_counts, e_local);
  k.counts.assign(host_counts, host_counts + e);
  k.valid = true;
  LayoutStats().routed += CountSum(host_counts, e_local);
  LayoutStats().layout += k.layout.rows;
  return k.layout;
}

ExpertLayoutStats& LayoutStats() {
  static ExpertLayoutStats stats;
  return stats;
}

int64_t ExpertLayoutRows(const int32_t* host_counts, int e_local) {
  return PlanExpertLayout(host_counts, e_local).rows;
}

RowBlocks ExpertLayoutToCompact(const int32_t* host_counts, int e_local) {
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  RowBlocks blocks;
  int64_t o = 0;
  for (int x = 0; x < e_local; ++x) {
    if (host_counts[x] > 0) {
      blocks.src_row[blocks.count] = l.start[x];
      blocks.dst_row[blocks.count] = o;
      blocks.rows[blocks.count] = host_counts[x];
      ++blocks.count;
    }
    o += host_counts[x];
  }
  return blocks;
}

void ToExpertLayout(bf16* dst, const float* src, const int32_t* host_counts, int e_local, int d,
                    cudaStream_t stream) {
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  if (l.chunk == 0) return CastToBf16(dst, src, CountSum(host_counts, e_local) * d, stream);
  int64_t most = 0;
  const LayoutBlocks blocks = BlocksOf(l, host_counts, e_local, &most);  // grid.y: the expert, empty ones too
  if (most == 0) return;
  const dim3 grid(std::min<unsigned>(BlocksFor(most * d, kThreads), 1024), e_local);
  ToLayoutKernel<<<grid, kThreads, 0, stream>>>(dst, src, blocks, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void GatherToExpertLayout(bf16* dst, const float* x, const float* scale, const int32_t* slot_to_assignment, int k,
                          const int32_t* host_counts, int e_local, int d, cudaStream_t stream, const bf16* dot_rows,
                          float* dots) {
  int64_t most = 0;
  const LayoutBlocks blocks = BlocksOf(PlanExpertLayout(host_counts, e_local), host_counts, e_local, &most);
  if (most == 0 || d <= 0) return;
  if (dot_rows == nullptr) dots = nullptr;
  constexpr int kWarps = kThreads / 32;
  const dim3 grid(std::min<unsigned>(BlocksFor(most, kWarps), 4096), e_local);
  if (d % 4 == 0 && Aligned(16, {x}) && Aligned(8, {dst, dot_rows})) {
    GatherToLayoutKernel<true><<<grid, kThreads, 0, stream>>>(dst, x, scale, slot_to_assignment, k, blocks, d,
                                                              dot_rows, dots);
  } else {
    GatherToLayoutKernel<false><<<grid, kThreads, 0, stream>>>(dst, x, scale, slot_to_assignment, k, blocks, d,
                                                               dot_rows, dots);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void GatherToExpertLayout(bf16* dst, const bf16* x, const int32_t* slot_to_assignment, int k,
                          const int32_t* host_counts, int e_local, int d, cudaStream_t stream) {
  int64_t most = 0;
  const LayoutBlocks blocks = BlocksOf(PlanExpertLayout(host_counts, e_local), host_counts, e_local, &most);
  if (most == 0 || d <= 0) return;
  constexpr int kWarps = kThreads / 32;
  const dim3 grid(std::min<unsigned>(BlocksFor(most, kWarps), 4096), e_local);
  if (d % 8 == 0 && Aligned(16, {x, dst})) {
    GatherBf16ToLayoutKernel<true><<<grid, kThreads, 0, stream>>>(dst, x, slot_to_assignment, k, blocks, d);
  } else {
    GatherBf16ToLayoutKernel<false><<<grid, kThreads, 0, stream>>>(dst, x, slot_to_assignment, k, blocks, d);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

namespace {

void SumFromExpertLayout(float* out, const bf16* layout_rows, const float* weights, const int32_t* a2s,
                         const int32_t* expert_idx, int n, int k, const int32_t* host_counts, int e_local, int d,
                         bool accumulate, const float* residual, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return;
  int64_t most = 0;
  const LayoutBlocks blocks = BlocksOf(PlanExpertLayout(host_counts, e_local), host_counts, e_local, &most);
  const unsigned grid = BlocksFor(n, kThreads / 32);
  if (d % 4 == 0 && Aligned(16, {out, residual}) && Aligned(8, {layout_rows})) {
    SumFromLayoutKernel<true><<<grid, kThreads, 0, stream>>>(out, layout_rows, weights, a2s, expert_idx, n, k, blocks,
                                                             d, accumulate, residual);
  } else {
    SumFromLayoutKernel<false><<<grid, kThreads, 0, stream>>>(out, layout_rows, weights, a2s, expert_idx, n, k,
                                                              blocks, d, accumulate, residual);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

void AddFromExpertLayout(float* dx, const bf16* layout_rows, const int32_t* assignment_to_slot,
                         const int32_t* expert_idx, int n, int k, const int32_t* host_counts, int e_local, int d,
                         cudaStream_t stream) {
  SumFromExpertLayout(dx, layout_rows, nullptr, assignment_to_slot, expert_idx, n, k, host_counts, e_local, d,
                      /*accumulate=*/true, nullptr, stream);
}

void CombineFromExpertLayout(float* out, const bf16* layout_rows, const float* weights,
                             const int32_t* assignment_to_slot, const int32_t* expert_idx, int n, int k,
                             const int32_t* host_counts, int e_local, int d, cudaStream_t stream,
                             const float* residual) {
  SumFromExpertLayout(out, layout_rows, weights, assignment_to_slot, expert_idx, n, k, host_counts, e_local, d,
                      /*accumulate=*/false, residual, stream);
}

}  // namespace moe::cuda
