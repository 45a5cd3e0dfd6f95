#include "kernels/cuda/experts.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/moe_internal.h"

namespace moe::cuda {

void ExpertsForward(float* ys, float* g, float* u, float* h, const float* xs, const float* w1,
                    const float* w3, const float* w2, const int32_t* offsets, int max_rows, int e_local,
                    int d, int f, bool tc, cudaStream_t stream, kernels::ExpertActivation act) {
  if (max_rows <= 0) return;
  const bool gated = act == kernels::ExpertActivation::kSwiglu;
  GroupedGemm(GroupedOp::kNN, e_local, offsets, max_rows, 0, f, d, 1.0f, xs, w1, 0.0f, g, tc, stream);
  if (gated) {
    GroupedGemm(GroupedOp::kNN, e_local, offsets, max_rows, 0, f, d, 1.0f, xs, w3, 0.0f, u, tc, stream);
    SwigluForward(h, g, u, int64_t{max_rows} * f, stream);
  } else {
    ActivationForward(act, h, g, int64_t{max_rows} * f, stream);
  }
  GroupedGemm(GroupedOp::kNN, e_local, offsets, max_rows, 0, d, f, 1.0f, h, w2, 0.0f, ys, tc, stream);
}

void ExpertsBackward(float* dxs, float* dw1, float* dw3, float* dw2, const float* dys, const float* xs,
                     const float* g, const float* u, const float* h, const float* w1, const float* w3,
                     const float* w2, const int32_t* offsets, int max_rows, int e_local, int d, int f,
                     float* scratch, bool tc, cudaStream_t stream, kernels::ExpertActivation act) {
  if (max_rows <= 0) return;
  const bool gated = act == kernels::ExpertActivation::kSwiglu;
  float* dg = scratch;                          // (rows, f)
  float* du = scratch + int64_t{max_rows} * f;  // (rows, f): first dh = dy W2^T, then du
  GroupedGemm(GroupedOp::kNT, e_local, offsets, max_rows, 0, f, d, 1.0f, dys, w2, 0.0f, du, tc, stream);
  if (dw2 != nullptr) GroupedGemm(GroupedOp::kTN, e_local, offsets, max_rows, f, d, 0, 1.0f, h, dys, 1.0f, dw2, tc, stream);
  if (gated) {
    SwigluBackward(dg, du, du, g, u, int64_t{max_rows} * f, /*accumulate=*/false, stream);
  } else {
    ActivationBackward(act, dg, du, g, int64_t{max_rows} * f, /*accumulate=*/false, stream);
  }
  if (dw1 != nullptr) GroupedGemm(GroupedOp::kTN, e_local, offsets, max_rows, d, f, 0, 1.0f, xs, dg, 1.0f, dw1, tc, stream);
  if (gated && dw3 != nullptr) {
    GroupedGemm(GroupedOp::kTN, e_local, offsets, max_rows, d, f, 0, 1.0f, xs, du, 1.0f, dw3, tc, stream);
  }
  if (dxs != nullptr) {
    GroupedGemm(GroupedOp::kNT, e_local, offsets, max_rows, 0, d, f, 1.0f, dg, w1, 1.0f, dxs, tc, stream);
    if (gated) GroupedGemm(GroupedOp::kNT, e_local, offsets, max_rows, 0, d, f, 1.0f, du, w3, 1.0f, dxs, tc, stream);
  }
}

// ---- fast path ----

namespace {

using internal::CountSum;
using internal::kThreads;
using internal::RowBlocksToFloat;

__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

// Eight bf16 as one 16-byte word and back.
__device__ __forceinline__ void Unpack8(uint4 w, float* f) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 p;
    memcpy(&p, &words[i], 4);
    const float2 v = __bfloat1622float2(p);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ uint4 Pack8(const float* f) {
  uint32_t words[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    memcpy(&words[i], &p, 4);
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// h = silu(g) u, eight elements per thread (16-byte aligned pointers), the n % 8 tail by block 0.
__global__ void SwigluForwardBf16Vec8Kernel(bf16* h, const bf16* g, const bf16* u, int64_t n) {
  MOE_GRID_STRIDE(i, n / 8) {
    float gv[8], uv[8];
    Unpack8(reinterpret_cast<const uint4*>(g)[i], gv);
    Unpack8(reinterpret_cast<const uint4*>(u)[i], uv);
#pragma unroll
    for (int e = 0; e < 8; ++e) gv[e] = gv[e] * SigmoidF(gv[e]) * uv[e];
    reinterpret_cast<uint4*>(h)[i] = Pack8(gv);
  }
  const int64_t tail = n - n / 8 * 8;
  if (blockIdx.x == 0 && threadIdx.x < tail) {
    const int64_t i = n / 8 * 8 + threadIdx.x;
    const float gi = __bfloat162float(g[i]), ui = __bfloat162float(u[i]);
    h[i] = __float2bfloat16(gi * SigmoidF(gi) * ui);
  }
}

// Two bf16 per thread; an odd tail element is done alone.
__global__ void SwigluForwardBf16Kernel(bf16* h, const bf16* g, const bf16* u, int64_t n) {
  MOE_GRID_STRIDE(i, n / 2) {
    const float2 gv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(g)[i]);
    const float2 uv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(u)[i]);
    reinterpret_cast<__nv_bfloat162*>(h)[i] =
        __floats2bfloat162_rn(gv.x * SigmoidF(gv.x) * uv.x, gv.y * SigmoidF(gv.y) * uv.y);
  }
  if (n % 2 == 1 && blockIdx.x == 0 && threadIdx.x == 0) {
    const float gi = __bfloat162float(g[n - 1]), ui = __bfloat162float(u[n - 1]);
    h[n - 1] = __float2bfloat16(gi * SigmoidF(gi) * ui);
  }
}

__device__ __forceinline__ void SwigluGrad(float d, float g, float u, float* dg, float* du) {
  const float s = SigmoidF(g);
  *dg = d * u * s * (1.0f + g * (1.0f - s));
  *du = d * g * s;
}

// Eight bf16 per thread (16-byte aligned pointers), the n % 8 tail by block 0.
__global__ void SwigluBackwardBf16Vec8Kernel(bf16* dg, bf16* du, const bf16* dh, const bf16* g, const bf16* u,
                                             int64_t n) {
  MOE_GRID_STRIDE(i, n / 8) {
    float gv[8], uv[8], dv[8], dgv[8], duv[8];
    Unpack8(reinterpret_cast<const uint4*>(g)[i], gv);
    Unpack8(reinterpret_cast<const uint4*>(u)[i], uv);
    Unpack8(reinterpret_cast<const uint4*>(dh)[i], dv);
#pragma unroll
    for (int e = 0; e < 8; ++e) SwigluGrad(dv[e], gv[e], uv[e], &dgv[e], &duv[e]);
    reinterpret_cast<uint4*>(dg)[i] = Pack8(dgv);
    reinterpret_cast<uint4*>(du)[i] = Pack8(duv);
  }
  const int64_t tail = n - n / 8 * 8;
  if (blockIdx.x == 0 && threadIdx.x < tail) {
    const int64_t i = n / 8 * 8 + threadIdx.x;
    float dgi, dui;
    SwigluGrad(__bfloat162float(dh[i]), __bfloat162float(g[i]), __bfloat162float(u[i]), &dgi, &dui);
    dg[i] = __float2bfloat16(dgi);
    du[i] = __float2bfloat16(dui);
  }
}

// Two bf16 per thread when every pointer allows (kPairs), an odd tail alone; else one each.
template <bool kPairs>
__global__ void SwigluBackwardBf16Kernel(bf16* dg, bf16* du, const bf16* dh, const bf16* g, const bf16* u,
                                         int64_t n) {
  if constexpr (kPairs) {
    MOE_GRID_STRIDE(i, n / 2) {
      const float2 gv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(g)[i]);
      const float2 uv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(u)[i]);
      const float2 dv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(dh)[i]);
      float dg0, du0, dg1, du1;
      SwigluGrad(dv.x, gv.x, uv.x, &dg0, &du0);
      SwigluGrad(dv.y, gv.y, uv.y, &dg1, &du1);
      reinterpret_cast<__nv_bfloat162*>(dg)[i] = __floats2bfloat162_rn(dg0, dg1);
      reinterpret_cast<__nv_bfloat162*>(du)[i] = __floats2bfloat162_rn(du0, du1);
    }
  }
  const int64_t first = kPairs ? n - n % 2 : 0;
  for (int64_t i = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float dgi, dui;
    SwigluGrad(__bfloat162float(dh[i]), __bfloat162float(g[i]), __bfloat162float(u[i]), &dgi, &dui);
    dg[i] = __float2bfloat16(dgi);
    du[i] = __float2bfloat16(dui);
  }
}

// out += a (+ b when b is not null); two elements per thread when the pointers allow (kPairs).
template <bool kPairs>
__global__ void AccumulateBf16Kernel(float* out, const bf16* a, const bf16* b, int64_t n) {
  if constexpr (kPairs) {
    MOE_GRID_STRIDE(i, n / 2) {
      float2 o = reinterpret_cast<float2*>(out)[i];
      const float2 av = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(a)[i]);
      o.x += av.x;
      o.y += av.y;
      if (b != nullptr) {
        const float2 bv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(b)[i]);
        o.x += bv.x;
        o.y += bv.y;
      }
      reinterpret_cast<float2*>(out)[i] = o;
    }
  }
  const int64_t first = kPairs ? n - n % 2 : 0;
  for (int64_t i = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] += __bfloat162float(a[i]) + (b != nullptr ? __bfloat162float(b[i]) : 0.0f);
  }
}

unsigned ElementwiseBlocks(int64_t n) { return std::min<unsigned>(std::max(1u, BlocksFor(n, kThreads)), 8192); }

// h = act(g, u) (u only for swiglu) over n layout elements: the forward's, and the backward's
// when the forward kept no h (the same kernels, so the same bits: both kernels of swiglu round
// the same float product once).
void HiddenForwardBf16(kernels::ExpertActivation act, bf16* h, const bf16* g, const bf16* u, int64_t n,
                       cudaStream_t stream) {
  if (n <= 0) return;
  if (act != kernels::ExpertActivation::kSwiglu) return ActivationForwardBf16(act, h, g, n, stream);
  if (Aligned(16, {h, g, u})) {
    SwigluForwardBf16Vec8Kernel<<<ElementwiseBlocks(std::max<int64_t>(1, n / 8)), kThreads, 0, stream>>>(h, g, u,
                                                                                                          n);
  } else {
    SwigluForwardBf16Kernel<<<ElementwiseBlocks(n / 2), kThreads, 0, stream>>>(h, g, u, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void AccumulateBf16(float* out, const bf16* a, const bf16* b, int64_t n, cudaStream_t stream) {
  if (out == nullptr || n <= 0) return;
  if (Aligned(8, {out}) && Aligned(4, {a, b})) {
    AccumulateBf16Kernel<true><<<ElementwiseBlocks(n / 2), kThreads, 0, stream>>>(out, a, b, n);
  } else {
    AccumulateBf16Kernel<false><<<ElementwiseBlocks(n), kThreads, 0, stream>>>(out, a, b, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

// Scratch parts start on 16-byte boundaries (8 bf16): paired loads and cuBLAS's fast kernels.
int64_t Pad8(int64_t n) { return (n + 7) / 8 * 8; }

void ExpertsForwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* ys, bf16* ys16, bf16* g16,
                        bf16* u16, bf16* h16, const bf16* xs16, const bf16* w1, const bf16* w3, const bf16* w2,
                        int e_local, int d, int f, bf16* scratch16, cudaStream_t stream,
                        kernels::ExpertActivation act, bf16* y_layout) {
  const int64_t rows = CountSum(host_counts, e_local);
  if (rows <= 0) return;
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  const int64_t lrows = l.rows;
  bf16* y16 = y_layout != nullptr ? y_layout : scratch16;  // (lrows, d): the output in the experts' layout
  // h (lrows, f): kept for the backward, or (h16 null) in the scratch after y16.
  bf16* h = h16 != nullptr ? h16 : scratch16 + Pad8(lrows * d);
  if (act != kernels::ExpertActivation::kSwiglu) {
    // No W3: h = act(x W1).
    if (l.chunk > 0) {
      blas.Products(GroupedOp::kNN, l, e_local, f, d, 0.0f, xs16, w1, g16, stream);
    } else {
      blas.Gemm(GroupedOp::kNN, e_local, host_counts, 0, f, d, 1.0f, 0.0f, {{xs16, w1, g16}}, stream);
    }
  } else {
    if (l.chunk > 0) {
      blas.Products(GroupedOp::kNN, l, e_local, f, d, 0.0f, xs16, w1, g16, stream);
      blas.Products(GroupedOp::kNN, l, e_local, f, d, 0.0f, xs16, w3, u16, stream);
    } else {
      blas.Gemm(GroupedOp::kNN, e_local, host_counts, 0, f, d, 1.0f, 0.0f, {{xs16, w1, g16}, {xs16, w3, u16}},
                stream);
    }
  }
  HiddenForwardBf16(act, h, g16, u16, lrows * f, stream);
  if (l.chunk > 0) {
    blas.Products(GroupedOp::kNN, l, e_local, d, f, 0.0f, h, w2, y16, stream);
  } else {
    blas.Gemm(GroupedOp::kNN, e_local, host_counts, 0, d, f, 1.0f, 0.0f, {{h, w2, y16}}, stream);
  }
  const RowBlocks blocks = ExpertLayoutToCompact(host_counts, e_local);
  if (ys16 != nullptr) CopyRowBlocks(ys16, y16, blocks, sizeof(bf16) * d, stream);
  if (ys != nullptr) RowBlocksToFloat(ys, y16, blocks, d, /*accumulate=*/false, stream);
}

int64_t ExpertsBf16Scratch(int64_t layout_rows, int e_local, int d, int f) {
  // The three weight-sized bf16 products only where the layout can be compact (PlanExpertLayout:
  // more local experts than its tables hold); the strided and chunked layouts' products add to
  // the fp32 gradients themselves.
  const int64_t staged = e_local > RowBlocks::kMax ? 3 * Pad8(int64_t{e_local} * d * f) : 0;
  return Pad8(layout_rows * f) + 2 * Pad8(layout_rows * d) + staged;
}

void ExpertsBackwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* dxs, float* dw1, float* dw3,
                         float* dw2, const bf16* dys16, const bf16* xs16, bf16* g16, bf16* u16,
                         const bf16* h16, const bf16* w1, const bf16* w3, const bf16* w2, int e_local, int d,
                         int f, bf16* scratch16, cudaStream_t stream, kernels::ExpertActivation act) {
  ExpertGrads dw;
  dw.w1 = dw1;
  dw.w3 = dw3;
  dw.w2 = dw2;
  ExpertsBackwardBf16(blas, host_counts, dxs, dw, dys16, xs16, g16, u16, h16, w1, w3, w2, e_local, d, f, scratch16,
                      stream, act);
}

void ExpertsBackwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* dxs, const ExpertGrads& dw,
                         const bf16* dys16, const bf16* xs16, bf16* g16, bf16* u16, const bf16* h16,
                         const bf16* w1, const bf16* w3, const bf16* w2, int e_local, int d, int f,
                         bf16* scratch16, cudaStream_t stream, kernels::ExpertActivation act,
                         const bf16** dx_layout) {
  // fp32 gradients, or none where a bf16 one is given (written by the products themselves).
  float* dw1 = dw.w1_bf16 != nullptr ? nullptr : dw.w1;
  float* dw3 = dw.w3_bf16 != nullptr ? nullptr : dw.w3;
  float* dw2 = dw.w2_bf16 != nullptr ? nullptr : dw.w2;
  const int64_t rows = CountSum(host_counts, e_local);
  const int64_t wsize = int64_t{e_local} * d * f;
  // Unwritten gradients: the strided and chunked layouts' products write them (beta 0); otherwise
  // (no rows, or the compact layout) they are cleared here and added to as usual.
  bool overwrite = dw.unwritten;
  auto clear = [&] {
    for (float* p : {dw1, dw3, dw2}) {
      if (p != nullptr) MOE_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(float) * wsize, stream));
    }
    for (bf16* p : {dw.w1_bf16, dw.w3_bf16, dw.w2_bf16}) {
      if (p != nullptr) MOE_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(bf16) * wsize, stream));
    }
    overwrite = false;
  };
  if (rows <= 0) {
    if (overwrite) clear();
    return;
  }
  const bool gated = act == kernels::ExpertActivation::kSwiglu;
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  if (dx_layout != nullptr && l.chunk == 0) {
    std::fprintf(stderr, "ExpertsBackwardBf16: dx in the layout needs a strided or chunked layout\n");
    std::abort();
  }
  if (overwrite && l.chunk == 0) clear();
  const int64_t lrows = l.rows;
  bf16* dh16 = scratch16;                  // (lrows, f)
  bf16* dg16 = g16;                        // (lrows, f): in place of g and u, which only the
  bf16* du16 = u16;                        // activation's backward reads (each element once)
  bf16* dxa16 = dh16 + Pad8(lrows * f);    // (lrows, d): dg W1^T (padded: + du W3^T)
  bf16* dxb16 = dxa16 + Pad8(lrows * d);   // (lrows, d): du W3^T (compact)
  bf16* dw1_16 = dxb16 + Pad8(lrows * d);  // (e, d, f), compact only (ExpertsBf16Scratch holds them
                                           // then alone): this step's products, added to
  bf16* dw3_16 = dw1_16 + Pad8(wsize);     // the fp32 gradients
  bf16* dw2_16 = dw3_16 + Pad8(wsize);     // (e, f, d)
  // h for dw2 alone: the forward's, or (h16 null) computed again from g, u into dh16's place,
  // which the product dh = dys W2^T takes only after dw2.
  if (h16 == nullptr) {
    HiddenForwardBf16(act, dh16, g16, u16, lrows * f, stream);
    h16 = dh16;
  }
  if (l.chunk > 0) {
    if (dw2 != nullptr) blas.WeightGrad(l, e_local, f, d, h16, dys16, dw2, stream, overwrite);
    if (dw.w2_bf16 != nullptr) {
      blas.WeightGrad(l, e_local, f, d, h16, dys16, dw.w2_bf16, DType::kBF16, stream, overwrite);
    }
    blas.Products(GroupedOp::kNT, l, e_local, f, d, 0.0f, dys16, w2, dh16, stream);
  } else {
    if (dw2 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, f, d, 0, 1.0f, 0.0f, {{h16, dys16, dw2_16}}, stream);
      AccumulateBf16(dw2, dw2_16, nullptr, wsize, stream);
    }
    if (dw.w2_bf16 != nullptr) {  // beta 1: added to the stored gradient (experts with no rows skipped)
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, f, d, 0, 1.0f, 1.0f, {{h16, dys16, dw.w2_bf16}}, stream);
    }
    blas.Gemm(GroupedOp::kNT, e_local, host_counts, 0, f, d, 1.0f, 0.0f, {{dys16, w2, dh16}}, stream);
  }
  // The zero rows of the strided or chunked layout stay zero: dh = 0 there, and so dg = du = 0.
  const int64_t elems = lrows * f;
  if (!gated) {
    // No W3: dg = dh act'(g), then dw1 and dx through dg alone.
    ActivationBackwardBf16(act, dg16, dh16, g16, elems, stream);
    if (l.chunk > 0) {
      if (dw1 != nullptr) blas.WeightGrad(l, e_local, d, f, xs16, dg16, dw1, stream, overwrite);
      if (dw.w1_bf16 != nullptr) {
        blas.WeightGrad(l, e_local, d, f, xs16, dg16, dw.w1_bf16, DType::kBF16, stream, overwrite);
      }
    } else if (dw1 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, d, f, 0, 1.0f, 0.0f, {{xs16, dg16, dw1_16}}, stream);
      AccumulateBf16(dw1, dw1_16, nullptr, wsize, stream);
    } else if (dw.w1_bf16 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, d, f, 0, 1.0f, 1.0f, {{xs16, dg16, dw.w1_bf16}}, stream);
    }
    if (dxs == nullptr && dx_layout == nullptr) return;
    if (l.chunk > 0) {
      blas.Products(GroupedOp::kNT, l, e_local, d, f, 0.0f, dg16, w1, dxa16, stream);
      if (dx_layout != nullptr) {
        *dx_layout = dxa16;
        return;
      }
      RowBlocksToFloat(dxs, dxa16, ExpertLayoutToCompact(host_counts, e_local), d, /*accumulate=*/true, stream);
    } else {
      blas.Gemm(GroupedOp::kNT, e_local, host_counts, 0, d, f, 1.0f, 0.0f, {{dg16, w1, dxa16}}, stream);
      AccumulateBf16(dxs, dxa16, nullptr, rows * d, stream);
    }
    return;
  }
  if (Aligned(16, {dg16, du16, dh16, g16, u16})) {
    SwigluBackwardBf16Vec8Kernel<<<ElementwiseBlocks(std::max<int64_t>(1, elems / 8)), kThreads, 0, stream>>>(
        dg16, du16, dh16, g16, u16, elems);
  } else if (Aligned(4, {dg16, du16, dh16, g16, u16})) {
    SwigluBackwardBf16Kernel<true><<<ElementwiseBlocks(elems / 2), kThreads, 0, stream>>>(dg16, du16, dh16, g16,
                                                                                          u16, elems);
  } else {
    SwigluBackwardBf16Kernel<false><<<ElementwiseBlocks(elems), kThreads, 0, stream>>>(dg16, du16, dh16, g16, u16,
                                                                                       elems);
  }
  MOE_CUDA_LAUNCH_CHECK();
  if (l.chunk > 0) {
    if (dw1 != nullptr) blas.WeightGrad(l, e_local, d, f, xs16, dg16, dw1, stream, overwrite);
    if (dw3 != nullptr) blas.WeightGrad(l, e_local, d, f, xs16, du16, dw3, stream, overwrite);
    if (dw.w1_bf16 != nullptr) {
      blas.WeightGrad(l, e_local, d, f, xs16, dg16, dw.w1_bf16, DType::kBF16, stream, overwrite);
    }
    if (dw.w3_bf16 != nullptr) {
      blas.WeightGrad(l, e_local, d, f, xs16, du16, dw.w3_bf16, DType::kBF16, stream, overwrite);
    }
  } else {
    if (dw1 != nullptr || dw3 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, d, f, 0, 1.0f, 0.0f,
                {{xs16, dg16, dw1_16}, {xs16, du16, dw3_16}}, stream);
      AccumulateBf16(dw1, dw1_16, nullptr, wsize, stream);
      AccumulateBf16(dw3, dw3_16, nullptr, wsize, stream);
    }
    // bf16 gradients: the products add to them (beta 1), both in one call when both are bf16.
    if (dw.w1_bf16 != nullptr && dw.w3_bf16 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, d, f, 0, 1.0f, 1.0f,
                {{xs16, dg16, dw.w1_bf16}, {xs16, du16, dw.w3_bf16}}, stream);
    } else if (dw.w1_bf16 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, d, f, 0, 1.0f, 1.0f, {{xs16, dg16, dw.w1_bf16}}, stream);
    } else if (dw.w3_bf16 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, d, f, 0, 1.0f, 1.0f, {{xs16, du16, dw.w3_bf16}}, stream);
    }
  }
  if (dxs == nullptr && dx_layout == nullptr) return;
  if (l.chunk > 0) {
    // dx = dg W1^T + du W3^T in one layout buffer (the second product adds to the first), then
    // added to the compact fp32 rows (or left there: dx_layout).
    blas.Products(GroupedOp::kNT, l, e_local, d, f, 0.0f, dg16, w1, dxa16, stream);
    blas.Products(GroupedOp::kNT, l, e_local, d, f, 1.0f, du16, w3, dxa16, stream);
    if (dx_layout != nullptr) {
      *dx_layout = dxa16;
      return;
    }
    RowBlocksToFloat(dxs, dxa16, ExpertLayoutToCompact(host_counts, e_local), d, /*accumulate=*/true, stream);
  } else {
    blas.Gemm(GroupedOp::kNT, e_local, host_counts, 0, d, f, 1.0f, 0.0f, {{dg16, w1, dxa16}, {du16, w3, dxb16}},
              stream);
    AccumulateBf16(dxs, dxa16, dxb16, rows * d, stream);
  }
}

}  // namespace moe::cuda
