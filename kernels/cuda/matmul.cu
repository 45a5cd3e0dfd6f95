#include "kernels/cuda/matmul.h"

#include <cublasLt.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/device.cuh"

namespace moe::cuda {
namespace {

void CheckLt(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "cuBLASLt error at %s:%d: %s: status %d\n", file, line, what,
               static_cast<int>(st));
  std::abort();
}
#define MOE_LT_CHECK(expr) CheckLt((expr), #expr, __FILE__, __LINE__)

// Element-wise casts, grid-stride. The general kernels: one element per thread per step.
__global__ void CastToBf16Kernel(bf16* out, const float* in, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(in[i]);
  }
}

__global__ void RoundToBf16ValuesKernel(float* x, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = __bfloat162float(__float2bfloat16(x[i]));
  }
}

__global__ void CastToFloatKernel(float* out, const bf16* in, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __bfloat162float(in[i]);
  }
}

// The vectorized casts (float pointer 16-byte, bf16 pointer 8-byte aligned): four elements per
// thread per step, a float4 on the fp32 side and a uint2 (four bf16) on the bf16 side; the n % 4 tail
// elements are done by the first threads of block 0. The same round-to-nearest-even conversions.
__global__ void CastToBf16Vec4Kernel(bf16* out, const float* in, int64_t n) {
  const int64_t n4 = n / 4;
  const float4* in4 = reinterpret_cast<const float4*>(in);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    internal::StoreBf16x4(out + 4 * i, in4[i]);
  }
  if (blockIdx.x == 0 && threadIdx.x < n - n4 * 4) {
    const int64_t i = n4 * 4 + threadIdx.x;
    out[i] = __float2bfloat16(in[i]);
  }
}

__global__ void CastToFloatVec4Kernel(float* out, const bf16* in, int64_t n) {
  const int64_t n4 = n / 4;
  float4* out4 = reinterpret_cast<float4*>(out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out4[i] = internal::LoadBf16x4(in + 4 * i);
  }
  if (blockIdx.x == 0 && threadIdx.x < n - n4 * 4) {
    const int64_t i = n4 * 4 + threadIdx.x;
    out[i] = __bfloat162float(in[i]);
  }
}

// Whether the vectorized casts can take (fp32, bf16) pointers.
bool CastVectorizable(const void* fp32, const void* bf16_ptr) {
  return reinterpret_cast<uintptr_t>(fp32) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(bf16_ptr) % 8 == 0;
}

// Blocks of 256 threads for items (at least one block, at most 16384: then grid-stride).
unsigned CastBlocks(int64_t items) {
  return std::max(1u, std::min<unsigned>(BlocksFor(items, 256), 16384));
}

// The limits every algorithm query gives: the workspace, the operands' alignment.
cublasLtMatmulPreference_t MakePreference(const Blas::Key& key, size_t workspace_bytes) {
  cublasLtMatmulPreference_t pref;
  MOE_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  MOE_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &workspace_bytes, sizeof(workspace_bytes)));
  const uint32_t align_bytes = static_cast<uint32_t>(std::get<9>(key));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    MOE_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align_bytes, sizeof(align_bytes)));
  }
  return pref;
}

// MOE_BLAS_TUNE_REPORT=1: a measurement for moe_bench, not for training (it allocates scratch and
// synchronizes at each shape's first product). Each exact shape's first product times the
// algorithm its plan runs and cuBLASLt's other candidates for the shape on the same inputs, the
// output going to scratch; the Blas prints, when it is destroyed, each shape's runs and both times.
bool TuneReportOn() {
  static const bool on = [] {
    const char* v = std::getenv("MOE_BLAS_TUNE_REPORT");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

}  // namespace

struct Blas::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
  bool queried = false;   // the heuristic was asked for this shape (query_status: its answer)
  int query_status = 0;
  bool has_algo = false;  // algo is this shape's own (the heuristic query found one)
  // algo is the canonical shape's (Blas::Canonical), not queried for this shape; Run asks for
  // this shape's own when cuBLASLt refuses it.
  bool borrowed = false;
  int64_t runs = 0;        // products run on this plan (the tuning report's weights)
  bool reported = false;   // MOE_BLAS_TUNE_REPORT: its candidates were timed
  float ms_plan = -1, ms_best = -1;  // per product: the plan's algorithm, the fastest candidate
  int best = -1, candidates = 0;     // the fastest's place in the heuristic's list, its length
  cublasLtMatmulAlgo_t best_algo;
  std::vector<std::string> lines;  // single products: every candidate's time and configuration
};

// An algorithm's configuration, for the tuning report: id, tile, split-k and its reduction,
// stages, swizzle, custom option, cluster shape.
static std::string AlgoConfig(const cublasLtMatmulAlgo_t& algo) {
  int32_t id = 0, splitk = 0;
  uint32_t tile = 0, reduction = 0, swizzle = 0, custom = 0, stages = 0;
  uint16_t cluster = 0;
  size_t got = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof(reduction),
                                       &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof(swizzle), &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof(custom), &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &got);
  char buf[160];
  std::snprintf(buf, sizeof(buf), "id=%d tile=%u splitk=%d red=%u stages=%u swizzle=%u custom=%u cluster=%u", id, tile,
                splitk, reduction, stages, swizzle, custom, static_cast<unsigned>(cluster));
  return buf;
}

// The tuning report's timing (TuneReportOn). run(algo, d) runs the product with algo, output d.
template <typename RunAlgo>
void Blas::TimeCandidates(const Key& key, Plan& p, cudaStream_t stream, size_t d_bytes, const RunAlgo& run) {
  const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, sa, sb, sc, c_bf16, pointers] = key;
  void* scratch = nullptr;
  void** ptrs = nullptr;
  void* out = nullptr;
  if (pointers == 1) {
    const size_t each = (size_t(m) * ldc * (c_bf16 == 1 ? 2 : 4) + 255) / 256 * 256;  // aligned as cudaMalloc's
    MOE_CUDA_CHECK(cudaMalloc(&scratch, each * batch));
    std::vector<void*> host(batch);
    for (int i = 0; i < batch; ++i) host[i] = static_cast<char*>(scratch) + i * each;
    MOE_CUDA_CHECK(cudaMalloc(&ptrs, sizeof(void*) * batch));
    MOE_CUDA_CHECK(cudaMemcpy(ptrs, host.data(), sizeof(void*) * batch, cudaMemcpyHostToDevice));
    out = ptrs;
  } else {
    MOE_CUDA_CHECK(cudaMalloc(&scratch, d_bytes));
    out = scratch;
  }
  cudaEvent_t e0, e1;
  MOE_CUDA_CHECK(cudaEventCreate(&e0));
  MOE_CUDA_CHECK(cudaEventCreate(&e1));
  auto time_one = [&](const cublasLtMatmulAlgo_t& algo) -> float {
    if (run(algo, out) != CUBLAS_STATUS_SUCCESS) return -1;
    constexpr int kReps = 5;
    MOE_CUDA_CHECK(cudaEventRecord(e0, stream));
    for (int r = 0; r < kReps; ++r) run(algo, out);
    MOE_CUDA_CHECK(cudaEventRecord(e1, stream));
    MOE_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return ms / kReps;
  };
  p.ms_plan = time_one(p.algo);
  cublasLtMatmulPreference_t pref = MakePreference(key, workspace_bytes_);
  cublasLtMatmulHeuristicResult_t results[16];
  int found = 0;
  if (cublasLtMatmulAlgoGetHeuristic(reinterpret_cast<cublasLtHandle_t>(handle_), p.desc, p.a, p.b, p.c, p.c, pref,
                                     16, results, &found) != CUBLAS_STATUS_SUCCESS) {
    found = 0;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  p.candidates = found;
  for (int i = 0; i < found; ++i) {
    const float ms = time_one(results[i].algo);
    if (batch == 1 && pointers == 0) {
      p.lines.push_back("  candidate " + std::to_string(i) + ": " + std::to_string(ms) + " ms [" +
                        AlgoConfig(results[i].algo) + "] waves " + std::to_string(results[i].wavesCount));
    }
    if (ms > 0 && (p.ms_best < 0 || ms < p.ms_best)) {
      p.ms_best = ms;
      p.best = i;
      p.best_algo = results[i].algo;
    }
  }
  MOE_CUDA_CHECK(cudaEventDestroy(e0));
  MOE_CUDA_CHECK(cudaEventDestroy(e1));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (ptrs != nullptr) MOE_CUDA_CHECK(cudaFree(ptrs));
  MOE_CUDA_CHECK(cudaFree(scratch));
}

void Blas::PrintTuneReport() const {
  double plan_ms = 0, best_ms = 0;
  for (const auto& [key, p] : plans_) {
    if (!p->reported) continue;
    const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, sa, sb, sc, c_bf16, pointers] = key;
    std::fprintf(stderr,
                 "blas tune: m=%d n=%d k=%d ta=%d tb=%d batch=%d %s out=%s runs=%lld plan=%.4f ms best=%.4f ms "
                 "(candidate %d of %d) plan [%s] best [%s]\n",
                 m, n, k, ta ? 1 : 0, tb ? 1 : 0, batch, pointers == 1 ? "pointers" : "strided",
                 c_bf16 == 1 ? "bf16" : "fp32", static_cast<long long>(p->runs), p->ms_plan, p->ms_best, p->best,
                 p->candidates, AlgoConfig(p->algo).c_str(), p->best >= 0 ? AlgoConfig(p->best_algo).c_str() : "-");
    for (const std::string& line : p->lines) std::fprintf(stderr, "blas tune: %s\n", line.c_str());
    if (p->ms_plan > 0 && p->ms_best > 0) {
      plan_ms += p->runs * double(p->ms_plan);
      best_ms += p->runs * double(std::min(p->ms_plan, p->ms_best));
    }
  }
  std::fprintf(stderr, "blas tune total: plan %.2f ms, best %.2f ms (all runs; %.1f%% less)\n", plan_ms, best_ms,
               plan_ms > 0 ? 100.0 * (plan_ms - best_ms) / plan_ms : 0.0);
}

Blas::Blas() {
  MOE_LT_CHECK(cublasLtCreate(reinterpret_cast<cublasLtHandle_t*>(&handle_)));
  workspace_bytes_ = 64u << 20;
  MOE_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

Blas::~Blas() {
  if (TuneReportOn()) PrintTuneReport();
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

BlasPlanStats& PlanStats() {
  static BlasPlanStats stats;
  return stats;
}

namespace {

// Rounds v up to one of four values an octave above `exact` (exact 1024: 1280, 1536, 1792, 2048,
// 2560, ...; exact 8: 10, 12, 14, 16, 20, ...): the expert products' rows (a multiple of 128 that
// follows the routing) and the chunked layout's batch counts share a bucket with their neighbours.
int BucketSize(int v, int exact) {
  if (v <= exact) return v;
  int64_t octave = exact;
  while (octave * 2 < v) octave *= 2;
  const int64_t step = std::max<int64_t>(1, octave / 4);
  return static_cast<int>(std::min<int64_t>((v + step - 1) / step * step, std::numeric_limits<int>::max()));
}

bool LogPlans() {
  static const bool log = [] {
    const char* v = std::getenv("MOE_PLAN_LOG");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return log;
}

}  // namespace

Blas::Key Blas::Canonical(const Key& key) {
  auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, stride_a, stride_b, stride_c, c_bf16, pointers] = key;
  // Rows are rounded up, never a row's length: m unless it is a's row length (ta), k unless it is
  // a's (not ta) or b's (tb); n never. The leading dimensions then still hold every row.
  const int m2 = ta ? m : BucketSize(m, 1024);
  const int k2 = !ta || tb ? k : BucketSize(k, 1024);
  const int batch2 = BucketSize(batch, 8);
  if (pointers == 0 && batch > 1) {
    // Strided batches: each stride that is its operand's rows times its leading dimension follows
    // the rounded rows; a stride of another kind keeps the shape exact.
    const int rows_a = ta ? k : m, rows_b = tb ? n : k;
    const int rows_a2 = ta ? k2 : m2, rows_b2 = tb ? n : k2;
    if (stride_a != int64_t{rows_a} * lda || stride_b != int64_t{rows_b} * ldb || stride_c != int64_t{m} * ldc) {
      return key;
    }
    stride_a = int64_t{rows_a2} * lda;
    stride_b = int64_t{rows_b2} * ldb;
    stride_c = int64_t{m2} * ldc;
  }
  return Key{ta, tb, m2, n, k2, lda, ldb, ldc, type_int, align, batch2, stride_a, stride_b, stride_c, c_bf16, pointers};
}

bool Blas::ChooseAlgorithm(const Key& key, Plan* plan) {
  cublasLtMatmulPreference_t pref = MakePreference(key, workspace_bytes_);
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(reinterpret_cast<cublasLtHandle_t>(handle_), plan->desc, plan->a, plan->b,
                                     plan->c, plan->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  ++PlanStats().queried;
  plan->queried = true;
  plan->query_status = static_cast<int>(status);
  plan->has_algo = status == CUBLAS_STATUS_SUCCESS && found > 0;
  plan->borrowed = false;
  if (plan->has_algo) plan->algo = result.algo;
  return plan->has_algo;
}

void Blas::ChooseOwnAlgorithm(const Key& key, Plan* plan) {
  if (ChooseAlgorithm(key, plan)) return;
  std::fprintf(stderr, "cuBLASLt: no algorithm for m=%d n=%d k=%d batch=%d (%s%s; heuristic status %d)\n",
               std::get<2>(key), std::get<3>(key), std::get<4>(key), std::get<10>(key),
               std::get<8>(key) == 1 ? "bf16" : "fp32", std::get<15>(key) == 1 ? ", pointer arrays" : "",
               plan->query_status);
  std::abort();
}

Blas::Plan* Blas::MakePlan(const Key& key) {
  const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, stride_a, stride_b, stride_c, c_bf16,
              pointers] = key;
  const cudaDataType_t in_type = type_int == 1 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t out_type = c_bf16 == 1 ? CUDA_R_16BF : CUDA_R_32F;
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
  MOE_LT_CHECK(cublasLtMatrixLayoutCreate(&p->c, out_type, n, m, ldc));
  if (pointers == 1) {
    const int32_t count = batch;
    const uint32_t mode = CUBLASLT_BATCH_MODE_POINTER_ARRAY;
    for (cublasLtMatrixLayout_t layout : {p->a, p->b, p->c}) {
      MOE_LT_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      MOE_LT_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, &mode, sizeof(mode)));
    }
  } else if (batch > 1) {
    const int32_t count = batch;
    const std::pair<cublasLtMatrixLayout_t, int64_t> strided[] = {{p->a, stride_b}, {p->b, stride_a}, {p->c, stride_c}};
    for (const auto& [layout, stride] : strided) {
      MOE_LT_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      MOE_LT_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                    sizeof(stride)));
    }
  }
  plans_[key] = p;
  return p;
}

Blas::Plan* Blas::GetPlan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end() && (it->second->has_algo || it->second->borrowed)) return it->second;
  const auto start = std::chrono::steady_clock::now();
  // A shape off the buckets' grid takes the algorithm of its canonical shape (made and queried
  // once, kept as a plan of its own), so that a shape's algorithm never depends on which shapes
  // came before it: a resumed run computes its steps with the same kernels, bit for bit.
  Plan* p = it != plans_.end() ? it->second : MakePlan(key);
  const Key canonical = Canonical(key);
  if (canonical == key) {
    ChooseOwnAlgorithm(key, p);
  } else {
    auto c = plans_.find(canonical);
    Plan* source = c != plans_.end() ? c->second : MakePlan(canonical);
    if (!source->queried) ChooseAlgorithm(canonical, source);  // may find none (then asked once only)
    if (source->has_algo) {
      p->algo = source->algo;
      p->borrowed = true;
    } else {
      ChooseOwnAlgorithm(key, p);
    }
  }
  if (LogPlans()) {
    const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, sa, sb, sc, c_bf16, pointers] = key;
    std::fprintf(stderr,
                 "cublaslt plan: m=%d n=%d k=%d ta=%d tb=%d lda=%d ldb=%d ldc=%d batch=%d %s in=%s out=%s "
                 "align=%d algorithm=%s\n",
                 m, n, k, ta ? 1 : 0, tb ? 1 : 0, lda, ldb, ldc, batch, pointers == 1 ? "pointer-arrays" : "strided",
                 type_int == 1 ? "bf16" : "fp32", c_bf16 == 1 ? "bf16" : "fp32", align,
                 p->borrowed ? "its bucket's" : "its own");
  }
  ++PlanStats().made;
  PlanStats().seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return p;
}

template <typename Matmul>
void Blas::Run(const Key& key, cudaStream_t stream, void* d, size_t d_bytes, const Matmul& matmul) {
  Plan* p = GetPlan(key);
  ++p->runs;
  if (TuneReportOn() && !p->reported) {
    p->reported = true;
    TimeCandidates(key, *p, stream, d_bytes, [&](const cublasLtMatmulAlgo_t& algo, void* out) {
      return matmul(*p, algo, out);
    });
  }
  cublasStatus_t status = matmul(*p, p->algo, d);
  if (p->borrowed && (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE)) {
    // cuBLASLt checks an algorithm against the shape before it launches anything: a bucket's
    // algorithm that does not fit this shape (its workspace, its split) is refused, and the
    // shape's own takes its place for good (the same every run: the refusal depends on the shape).
    if (LogPlans()) std::fprintf(stderr, "cublaslt plan: the bucket's algorithm refused, asking for the shape's own\n");
    ChooseOwnAlgorithm(key, p);
    status = matmul(*p, p->algo, d);
  }
  CheckLt(status, "cublasLtMatmul", __FILE__, __LINE__);
}

void Blas::Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a,
                int lda, const void* b, int ldb, float beta, float* c, int ldc, DType type,
                cudaStream_t stream, const float* c_in) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (c_in != nullptr) {
      std::fprintf(stderr, "Blas::Gemm: k = %d with c_in, needs k > 0\n", k);
      std::abort();
    }
    // c = beta * c: only beta 0 (clear) and 1 (keep) occur here.
    if (beta == 0.0f) {
      for (int i = 0; i < m; ++i) MOE_CUDA_CHECK(cudaMemsetAsync(c + int64_t{i} * ldc, 0, sizeof(float) * n, stream));
    }
    return;
  }
  GemmBatched(trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1, type, DType::kF32, stream,
              c_in);
}

void Blas::GemmBatched(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a, int lda,
                       int64_t stride_a, const void* b, int ldb, int64_t stride_b, float beta, void* c, int ldc,
                       int64_t stride_c, int batch, DType type, DType c_type, cudaStream_t stream,
                       const void* c_in) {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  if (k <= 0) {
    // An empty sum leaves beta * c, which cuBLASLt does not compute (Gemm clears c for it).
    std::fprintf(stderr, "Blas::GemmBatched: k = %d, needs k > 0\n", k);
    std::abort();
  }
  if (batch == 1) stride_a = stride_b = stride_c = 0;
  if (c_in == nullptr) c_in = c;
  const void* operands[] = {a, b, c, c_in};
  const Key key{trans_a, trans_b, m, n, k, lda, ldb, ldc, type == DType::kBF16 ? 1 : 0,
                CommonAlignment(operands, 4), batch, stride_a, stride_b, stride_c, c_type == DType::kBF16 ? 1 : 0,
                0};
  const int elem_c = c_type == DType::kBF16 ? 2 : 4;
  const size_t c_bytes = (size_t(batch - 1) * stride_c + size_t(m) * ldc) * elem_c;
  Run(key, stream, c, c_bytes, [&](const Plan& p, const cublasLtMatmulAlgo_t& algo, void* d) {
    return cublasLtMatmul(reinterpret_cast<cublasLtHandle_t>(handle_), p.desc, &alpha, b, p.a, a, p.b, &beta, c_in,
                          p.c, d, p.c, &algo, workspace_, workspace_bytes_, stream);
  });
}

void Blas::GemmPointerArray(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* const* a_ptrs,
                            int lda, const void* const* b_ptrs, int ldb, float beta, void* const* c_ptrs, int ldc,
                            int batch, int align, DType type, DType c_type, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  if (k <= 0) {
    std::fprintf(stderr, "Blas::GemmPointerArray: k = %d, needs k > 0\n", k);
    std::abort();
  }
  const Key key{trans_a, trans_b, m, n, k, lda, ldb, ldc, type == DType::kBF16 ? 1 : 0, align, batch, 0, 0, 0,
                c_type == DType::kBF16 ? 1 : 0, 1};
  // As in GemmBatched, cuBLAS's A is our b; with pointer arrays the operands are the arrays.
  void* c_arg = const_cast<void**>(c_ptrs);
  // d_bytes 0: the tuning report's scratch output for pointer arrays is an array of `batch`
  // pointers (the key says pointer arrays), each to m rows of ldc.
  Run(key, stream, c_arg, 0, [&](const Plan& p, const cublasLtMatmulAlgo_t& algo, void* d) {
    return cublasLtMatmul(reinterpret_cast<cublasLtHandle_t>(handle_), p.desc, &alpha, b_ptrs, p.a, a_ptrs, p.b,
                          &beta, c_arg, p.c, d, p.c, &algo, workspace_, workspace_bytes_, stream);
  });
}

void CastToBf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (CastVectorizable(in, out)) {
    CastToBf16Vec4Kernel<<<CastBlocks(n / 4), 256, 0, stream>>>(out, in, n);
  } else {
    CastToBf16Kernel<<<CastBlocks(n), 256, 0, stream>>>(out, in, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void RoundToBf16Values(float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  RoundToBf16ValuesKernel<<<CastBlocks(n), 256, 0, stream>>>(x, n);
  MOE_CUDA_LAUNCH_CHECK();
}

void CastToFloat(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (CastVectorizable(out, in)) {
    CastToFloatVec4Kernel<<<CastBlocks(n / 4), 256, 0, stream>>>(out, in, n);
  } else {
    CastToFloatKernel<<<CastBlocks(n), 256, 0, stream>>>(out, in, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
