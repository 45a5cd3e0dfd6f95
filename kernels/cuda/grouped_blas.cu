#include "kernels/cuda/grouped_blas.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <vector>

namespace moe::cuda {
namespace {

void CheckBlas(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "cuBLAS error at %s:%d: %s: status %d\n", file, line, what, static_cast<int>(st));
  std::abort();
}
#define MOE_BLAS_CHECK(expr) CheckBlas((expr), #expr, __FILE__, __LINE__)

// A pointer table carried by the launch itself (a kernel parameter, up to 24 KB): the host's
// table may go at once, and the stream runs one small kernel where it ran three host-to-device
// copies from pageable memory (each a copy-engine round trip on the stream's critical path).
template <int N>
struct PointerList {
  const void* p[N];
};

// dst[(e / count) * pitch + e % count] = src[e] for e < 3 count: the (3, count) table into the
// (3, pitch) device arrays.
template <int N>
__global__ void WritePointersKernel(void** dst, PointerList<N> src, int count, int pitch) {
  for (int e = threadIdx.x; e < 3 * count; e += blockDim.x) {
    dst[(e / count) * pitch + e % count] = const_cast<void*>(src.p[e]);
  }
}

template <int N>
void WritePointers(void** dst, const void* const* table, int count, int pitch, cudaStream_t stream) {
  PointerList<N> list;
  std::copy(table, table + 3 * count, list.p);
  WritePointersKernel<N><<<1, 256, 0, stream>>>(dst, list, count, pitch);
  MOE_CUDA_LAUNCH_CHECK();
}

size_t ElementBytes(DType t) { return t == DType::kBF16 ? sizeof(bf16) : sizeof(float); }

}  // namespace

GroupedBlas::GroupedBlas() {
  cublasHandle_t h = nullptr;
  MOE_BLAS_CHECK(cublasCreate(&h));
  handle_ = h;
  MOE_CUDA_CHECK(cudaMalloc(&device_ptrs_, sizeof(void*) * 3 * kTable));
}

GroupedBlas::~GroupedBlas() {
  cudaFree(device_ptrs_);
  cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

void GroupedBlas::Gemm(GroupedOp op, int groups, const int32_t* host_counts, int m, int n, int k, float alpha,
                       float beta, std::initializer_list<Operands> sets, cudaStream_t stream) {
  if (n <= 0 || (op == GroupedOp::kTN && m <= 0)) return;
  // Row-major C (rows, cols) = A B is column-major C^T = B^T A^T: cuBLAS's A is our b.
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> mm, nn, kk, lda, ldb, ldc, group_size;
  std::vector<float> alphas, betas;
  // cuBLAS's A, B and C pointer arrays, (3, kMaxProblems), uploaded below.
  std::vector<const void*> table(3 * kMaxProblems, nullptr);
  int count = 0;
  for (const Operands& s : sets) {
    int64_t o = 0;  // first row of group x
    for (int x = 0; x < groups; ++x) {
      const int rows = host_counts[x];
      if (rows <= 0) {
        if (op == GroupedOp::kTN && beta == 0.0f && m > 0 && n > 0) {
          MOE_CUDA_CHECK(cudaMemsetAsync(s.c + int64_t{x} * m * n, 0, sizeof(bf16) * m * n, stream));
        }
        continue;
      }
      if (count == kMaxProblems) {
        std::fprintf(stderr, "GroupedBlas: more than %d products in one call\n", kMaxProblems);
        std::abort();
      }
      switch (op) {
        case GroupedOp::kNN:  // c[rows] (rows, n) = a[rows] (rows, k) @ b_x (k, n)
          ta.push_back(CUBLAS_OP_N), tb.push_back(CUBLAS_OP_N);
          mm.push_back(n), nn.push_back(rows), kk.push_back(k);
          lda.push_back(n), ldb.push_back(k), ldc.push_back(n);
          table[count] = s.b + int64_t{x} * k * n;
          table[kMaxProblems + count] = s.a + o * k;
          table[2 * kMaxProblems + count] = s.c + o * n;
          break;
        case GroupedOp::kNT:  // c[rows] (rows, n) = a[rows] (rows, k) @ b_x^T, b_x (n, k)
          ta.push_back(CUBLAS_OP_T), tb.push_back(CUBLAS_OP_N);
          mm.push_back(n), nn.push_back(rows), kk.push_back(k);
          lda.push_back(k), ldb.push_back(k), ldc.push_back(n);
          table[count] = s.b + int64_t{x} * n * k;
          table[kMaxProblems + count] = s.a + o * k;
          table[2 * kMaxProblems + count] = s.c + o * n;
          break;
        case GroupedOp::kTN:  // c_x (m, n) = a[rows]^T (m, rows) @ b[rows] (rows, n)
          ta.push_back(CUBLAS_OP_N), tb.push_back(CUBLAS_OP_T);
          mm.push_back(n), nn.push_back(m), kk.push_back(rows);
          lda.push_back(n), ldb.push_back(m), ldc.push_back(n);
          table[count] = s.b + o * n;
          table[kMaxProblems + count] = s.a + o * m;
          table[2 * kMaxProblems + count] = s.c + int64_t{x} * m * n;
          break;
      }
      alphas.push_back(alpha);
      betas.push_back(beta);
      group_size.push_back(1);
      ++count;
      o += rows;
    }
  }
  if (count == 0) return;
  for (int i = 1; i < 3; ++i) {  // (3, count)
    std::copy(table.begin() + i * kMaxProblems, table.begin() + i * kMaxProblems + count, table.begin() + i * count);
  }
  int align = 0;
  void** ptrs = Upload(table.data(), count, &align, stream);
  cublasHandle_t h = static_cast<cublasHandle_t>(handle_);
  MOE_BLAS_CHECK(cublasSetStream(h, stream));
  MOE_BLAS_CHECK(cublasGemmGroupedBatchedEx(
      h, ta.data(), tb.data(), mm.data(), nn.data(), kk.data(), alphas.data(),
      const_cast<const void* const*>(ptrs), CUDA_R_16BF, lda.data(),
      const_cast<const void* const*>(ptrs + kTable), CUDA_R_16BF, ldb.data(), betas.data(),
      ptrs + 2 * kTable, CUDA_R_16BF, ldc.data(), count, group_size.data(), CUBLAS_COMPUTE_32F));
}

void GroupedBlas::Padded(GroupedOp op, int experts, int cap, int n, int k, float beta, const bf16* a,
                         const bf16* b, bf16* c, cudaStream_t stream) {
  if (op == GroupedOp::kTN) {
    std::fprintf(stderr, "GroupedBlas::Padded: kTN is PaddedWeightGrad\n");
    std::abort();
  }
  if (experts <= 0 || cap <= 0 || n <= 0 || k <= 0) return;
  // c_x (cap, n) = a_x (cap, k) @ op(b_x): kNN's b_x is (k, n), kNT's (n, k).
  const bool nt = op == GroupedOp::kNT;
  lt_.GemmBatched(false, nt, cap, n, k, 1.0f, a, k, int64_t{cap} * k, b, nt ? k : n, int64_t{k} * n, beta, c, n,
                  int64_t{cap} * n, experts, DType::kBF16, DType::kBF16, stream);
}

void GroupedBlas::PaddedWeightGrad(int experts, int cap, int m, int n, const bf16* a, const bf16* b, void* c,
                                   DType c_type, cudaStream_t stream, bool overwrite) {
  if (experts <= 0 || m <= 0 || n <= 0) return;
  if (cap <= 0) {
    if (overwrite) MOE_CUDA_CHECK(cudaMemsetAsync(c, 0, int64_t{experts} * m * n * ElementBytes(c_type), stream));
    return;
  }
  // c_x (m, n) += a_x^T (m, cap) @ b_x (cap, n) (= with overwrite; an expert's zero rows give zeros).
  lt_.GemmBatched(true, false, m, n, cap, 1.0f, a, m, int64_t{cap} * m, b, n, int64_t{cap} * n, overwrite ? 0.0f : 1.0f,
                  c, n, int64_t{m} * n, experts, DType::kBF16, c_type, stream);
}

void** GroupedBlas::Upload(const void* const* table, int count, int* align, cudaStream_t stream) {
  *align = CommonAlignment(table, 3 * static_cast<size_t>(count));
  // The calls are ordered on `stream`, so one device table serves them all.
  constexpr int kFew = 64;
  if (count <= kFew) {
    WritePointers<3 * kFew>(device_ptrs_, table, count, kTable, stream);
  } else {
    WritePointers<3 * kTable>(device_ptrs_, table, count, kTable, stream);
  }
  return device_ptrs_;
}

void GroupedBlas::Products(GroupedOp op, const ExpertLayout& l, int e_local, int n, int k, float beta, const bf16* a,
                           const bf16* b, bf16* c, cudaStream_t stream) {
  if (l.strided) return Padded(op, e_local, l.chunk, n, k, beta, a, b, c, stream);
  if (op == GroupedOp::kTN || l.chunk <= 0) {
    std::fprintf(stderr, "GroupedBlas::Products: needs kNN or kNT on a strided or chunked layout\n");
    std::abort();
  }
  if (l.chunks <= 0 || n <= 0 || k <= 0) return;
  // Chunk j of expert x: c_j (chunk, n) = a_j (chunk, k) @ op(b_x) + beta c_j.
  const int chunks = l.chunks;
  std::vector<const void*> table(3 * static_cast<size_t>(chunks));
  for (int x = 0; x < e_local; ++x) {
    for (int j = l.first_chunk[x]; j < l.first_chunk[x + 1]; ++j) {
      table[j] = a + int64_t{j} * l.chunk * k;
      table[chunks + j] = b + int64_t{x} * k * n;
      table[2 * chunks + j] = c + int64_t{j} * l.chunk * n;
    }
  }
  int align = 0;
  void** p = Upload(table.data(), chunks, &align, stream);
  const bool nt = op == GroupedOp::kNT;
  lt_.GemmPointerArray(false, nt, l.chunk, n, k, 1.0f, const_cast<const void* const*>(p), k,
                       const_cast<const void* const*>(p + kTable), nt ? k : n, beta, p + 2 * kTable, n, chunks, align,
                       DType::kBF16, DType::kBF16, stream);
}

std::vector<WeightGradCall> WeightGradCalls(const ExpertLayout& l, int e_local) {
  int bits = 0;
  for (int x = 0; x < e_local; ++x) {
    while ((l.first_chunk[x + 1] - l.first_chunk[x]) >> bits) ++bits;
  }
  std::vector<WeightGradCall> calls;
  for (bool first : {true, false}) {
    for (int bit = bits - 1; bit >= 0; --bit) {
      WeightGradCall call;
      call.size = 1 << bit;
      call.first = first;
      for (int x = 0; x < e_local; ++x) {
        const int count = l.first_chunk[x + 1] - l.first_chunk[x];
        int chunk = l.first_chunk[x];
        for (int hi = bits - 1; hi > bit; --hi) chunk += count & (1 << hi);  // past the larger runs
        const bool has = (count >> bit) & 1, is_first = (count >> (bit + 1)) == 0;
        if (has && is_first == first) call.runs.emplace_back(x, chunk);
      }
      if (!call.runs.empty()) calls.push_back(std::move(call));
    }
  }
  return calls;
}

void GroupedBlas::WeightGrad(const ExpertLayout& l, int e_local, int m, int n, const bf16* a, const bf16* b, void* c,
                             DType c_type, cudaStream_t stream, bool overwrite) {
  if (l.strided) return PaddedWeightGrad(e_local, l.chunk, m, n, a, b, c, c_type, stream, overwrite);
  if (l.chunk <= 0) {
    std::fprintf(stderr, "GroupedBlas::WeightGrad: needs a strided or chunked layout\n");
    std::abort();
  }
  if (m <= 0 || n <= 0) return;
  const size_t elem = ElementBytes(c_type);
  if (overwrite) {  // an expert with no chunk is in no call
    for (int x = 0; x < e_local; ++x) {
      if (l.first_chunk[x] == l.first_chunk[x + 1]) {
        MOE_CUDA_CHECK(
            cudaMemsetAsync(static_cast<char*>(c) + int64_t{x} * m * n * elem, 0, int64_t{m} * n * elem, stream));
      }
    }
  }
  if (l.chunks <= 0) return;
  // c_x (m, n) += sum over expert x's chunks of a_j^T (m, chunk) @ b_j (chunk, n), in runs
  // (WeightGradCalls): a few calls of long products, where one call per chunk index would read and
  // write every gradient once per chunk.
  const std::vector<WeightGradCall> calls = WeightGradCalls(l, e_local);
  // The calls' pointer arrays go up together, call i's at columns [start, start + runs), each
  // call's starting 16 bytes aligned (an even column).
  int total = 0;
  for (const WeightGradCall& call : calls) total = (total + 1) / 2 * 2 + static_cast<int>(call.runs.size());
  if (total > kTable) {
    std::fprintf(stderr, "GroupedBlas::WeightGrad: %d chunks in %zu calls exceed the pointer table (%d)\n", l.chunks,
                 calls.size(), kTable);
    std::abort();
  }
  std::vector<const void*> table(3 * static_cast<size_t>(total), nullptr);
  std::vector<int> first(calls.size(), 0), align(calls.size(), 256);
  int e = 0;
  for (size_t i = 0; i < calls.size(); ++i) {
    e = first[i] = (e + 1) / 2 * 2;
    for (const auto& [x, j] : calls[i].runs) {
      table[e] = a + int64_t{j} * l.chunk * m;
      table[total + e] = b + int64_t{j} * l.chunk * n;
      table[2 * total + e] = static_cast<char*>(c) + int64_t{x} * m * n * elem;
      ++e;
    }
    for (int r = 0; r < 3; ++r) {  // the bytes all three of call i's arrays are aligned to
      align[i] = std::min(align[i], CommonAlignment(table.data() + r * total + first[i], calls[i].runs.size()));
    }
  }
  int ignored = 0;
  void** p = Upload(table.data(), total, &ignored, stream);
  for (size_t i = 0; i < calls.size(); ++i) {
    const int o = first[i];
    lt_.GemmPointerArray(true, false, m, n, calls[i].size * l.chunk, 1.0f, const_cast<const void* const*>(p + o), m,
                         const_cast<const void* const*>(p + kTable + o), n, calls[i].first && overwrite ? 0.0f : 1.0f,
                         p + 2 * kTable + o, n, static_cast<int>(calls[i].runs.size()), align[i], DType::kBF16,
                         c_type, stream);
  }
}

}  // namespace moe::cuda
