// Which cuBLASLt algorithm a product runs, measured: the heuristic's first candidate is often not
// the fastest it lists (one H100, config medium: the products would take 5.9% less on the
// fastest listed; wo's forward 0.109 ms on the first, 0.072 ms on the fourth). Blas::MeasureChoice
// times the candidates that compute the first one's bits and keeps the fastest; the tuning report
// (MOE_BLAS_TUNE_REPORT=1) times every candidate of every shape, for measurement only.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/matmul_internal.h"

namespace moe::cuda {

namespace internal {

void CheckLt(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "cuBLASLt error at %s:%d: %s: status %d\n", file, line, what, static_cast<int>(st));
  std::abort();
}

bool TuneReportOn() {
  static const bool on = [] {
    const char* v = std::getenv("MOE_BLAS_TUNE_REPORT");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

bool MeasuredChoiceOn() {
  static const bool on = [] {
    const char* v = std::getenv("MOE_BLAS_CHOICE");
    if (v == nullptr || std::strcmp(v, "measured") == 0) return true;
    if (std::strcmp(v, "heuristic") == 0) return false;
    std::fprintf(stderr,
                 "MOE_BLAS_CHOICE=%s is not one of \"measured\" (the default) or \"heuristic\" (cuBLASLt's first "
                 "candidate): using \"measured\"; unset it or set one of those\n",
                 v);
    return true;
  }();
  return on;
}

}  // namespace internal

namespace {

using internal::MakePreference;

// An algorithm's configuration, for the tuning report: id, tile, split-k and its reduction,
// stages, swizzle, custom option, cluster shape.
std::string AlgoConfig(const cublasLtMatmulAlgo_t& algo) {
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

// Whether an algorithm sums each output element in one pass over k (no split-k, no reduction
// scheme): candidates that split the sum add its parts in another order, so only those that do
// not are compared with the pick.
bool WholeSum(const cublasLtMatmulAlgo_t& algo) {
  int32_t splitk = 0;
  uint32_t reduction = 0;
  size_t got = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &got);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof(reduction),
                                       &got);
  return splitk <= 1 && reduction == CUBLASLT_REDUCTION_SCHEME_NONE;
}

bool SameAlgo(const cublasLtMatmulAlgo_t& x, const cublasLtMatmulAlgo_t& y) {
  return std::memcmp(&x, &y, sizeof(x)) == 0;
}

// flags[0] |= a word of x differs from y's; flags[1] |= a word of x is not zero. words of 16 bytes.
__global__ void CompareWordsKernel(const uint4* x, const uint4* y, int64_t words, unsigned int* flags) {
  bool differ = false, nonzero = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 a = x[i], b = y[i];
    differ |= a.x != b.x || a.y != b.y || a.z != b.z || a.w != b.w;
    nonzero |= (a.x | a.y | a.z | a.w) != 0;
  }
  if (__syncthreads_or(differ) && threadIdx.x == 0) atomicOr(&flags[0], 1u);
  if (__syncthreads_or(nonzero) && threadIdx.x == 0) atomicOr(&flags[1], 1u);
}

// The milliseconds of one product with algo (the mean of 3 after the call before it warmed it), or
// -1 when cuBLASLt refuses it.
float TimeAlgo(const std::function<int(const void*, void*)>& run, const cublasLtMatmulAlgo_t& algo, void* out, cudaStream_t stream,
               cudaEvent_t e0, cudaEvent_t e1) {
  constexpr int kReps = 3;
  MOE_CUDA_CHECK(cudaEventRecord(e0, stream));
  for (int r = 0; r < kReps; ++r) {
    if (run(&algo, out) != CUBLAS_STATUS_SUCCESS) return -1;
  }
  MOE_CUDA_CHECK(cudaEventRecord(e1, stream));
  MOE_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  return ms / kReps;
}

// The heuristic's candidates for a plan's shape (up to 16), best first by its estimate.
std::vector<cublasLtMatmulHeuristicResult_t> Candidates(cublasLtHandle_t handle, const Blas::Key& key,
                                                        cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                                        cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                                        size_t workspace_bytes) {
  cublasLtMatmulPreference_t pref = MakePreference(key, workspace_bytes);
  std::vector<cublasLtMatmulHeuristicResult_t> results(16);
  int found = 0;
  if (cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, c, c, pref, static_cast<int>(results.size()), results.data(),
                                     &found) != CUBLAS_STATUS_SUCCESS) {
    found = 0;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  results.resize(std::max(found, 0));
  return results;
}

}  // namespace

bool Blas::PrepareChoiceScratch(const Key& key, size_t d_bytes, cudaStream_t stream, void* out[2], size_t* extent) {
  const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, sa, sb, sc, c_bf16, pointers] = key;
  const size_t each = (size_t(m) * ldc * (c_bf16 == 1 ? 2 : 4) + 255) / 256 * 256;  // aligned as cudaMalloc's
  const size_t bytes = pointers == 1 ? each * batch : (d_bytes + 15) / 16 * 16;
  // Fresh every time and freed after (FreeChoiceScratch): the largest products' outputs (the
  // head's logits) take hundreds of MB, held only while one bucket is measured; past 1 GiB an
  // output is not measured (its product runs on the pick).
  FreeChoiceScratch();
  if (bytes > (size_t{1} << 30)) return false;
  scratch_ = new ChoiceScratch;
  ChoiceScratch& s = *scratch_;
  for (void*& o : s.out) {
    if (cudaMalloc(&o, bytes) != cudaSuccess) {
      cudaGetLastError();  // the failed allocation's error, cleared: the product runs on the pick
      FreeChoiceScratch();
      return false;
    }
  }
  s.bytes = bytes;
  if (cudaMalloc(&s.flags, 2 * sizeof(unsigned int)) != cudaSuccess) {
    cudaGetLastError();
    FreeChoiceScratch();
    return false;
  }
  for (void* o : s.out) MOE_CUDA_CHECK(cudaMemsetAsync(o, 0, bytes, stream));
  *extent = bytes;
  if (pointers != 1) {
    out[0] = s.out[0];
    out[1] = s.out[1];
    return true;
  }
  for (void**& p : s.ptrs) {
    if (cudaMalloc(&p, sizeof(void*) * batch) != cudaSuccess) {
      cudaGetLastError();
      FreeChoiceScratch();
      return false;
    }
  }
  s.ptr_count = batch;
  for (int i = 0; i < 2; ++i) {
    std::vector<void*> host(batch);
    for (int x = 0; x < batch; ++x) host[x] = static_cast<char*>(s.out[i]) + x * each;
    MOE_CUDA_CHECK(cudaMemcpyAsync(s.ptrs[i], host.data(), sizeof(void*) * batch, cudaMemcpyHostToDevice, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));  // host is freed at the end of this iteration
    out[i] = s.ptrs[i];
  }
  return true;
}

void Blas::FreeChoiceScratch() {
  if (scratch_ == nullptr) return;
  cudaDeviceSynchronize();  // nothing queued still reads or writes the scratch (cudaFree would wait too)
  for (void* o : scratch_->out) cudaFree(o);
  for (void** p : scratch_->ptrs) cudaFree(p);
  cudaFree(scratch_->flags);
  delete scratch_;
  scratch_ = nullptr;
}

void Blas::MeasureChoice(const Key& key, Plan& owner, cudaStream_t stream, size_t d_bytes, const RunAlgo& run) {
  const auto start = std::chrono::steady_clock::now();
  // Settled: the plan keeps the algorithm chosen here (or the pick) for good.
  auto settle = [&](const cublasLtMatmulAlgo_t& algo) {
    owner.measured = true;
    owner.algo = algo;
    ++PlanStats().measured;
    if (!SameAlgo(algo, owner.pick)) ++PlanStats().changed;
    PlanStats().seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  // This product could not compare (the pick refused for its shape, no scratch, a zero output):
  // a later product of the bucket tries again, three in all.
  auto retry = [&] {
    FreeChoiceScratch();
    if (++owner.measure_tries >= 3) settle(owner.pick);
  };
  const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, sa, sb, sc, c_bf16, pointers] = key;
  // A split sum has no twin to compare; and a small output could hide another order of the
  // sums: that changes most outputs' fp32 bits by an ulp or so, which a bf16 output shows in
  // about one of 65,536 elements (bf16 outputs below 2^22 elements are left alone, fp32 ones below
  // 2^16; the products worth measuring are far larger).
  const double elements = double{1} * m * n * batch;
  if (!owner.has_algo || !WholeSum(owner.pick) || elements < (c_bf16 == 1 ? 4194304.0 : 65536.0)) {
    return settle(owner.pick);
  }
  const std::vector<cublasLtMatmulHeuristicResult_t> candidates =
      Candidates(reinterpret_cast<cublasLtHandle_t>(handle_), key, owner.desc, owner.a, owner.b, owner.c,
                 workspace_bytes_);
  if (candidates.size() < 2) return settle(owner.pick);  // the pick alone
  void* out[2];
  size_t extent = 0;
  if (!PrepareChoiceScratch(key, d_bytes, stream, out, &extent)) return retry();
  // The pick's output, the reference; then each whole-sum candidate's, compared with it word for
  // word. An all-zero reference tells nothing (every order sums zeros the same).
  if (run(&owner.pick, out[0]) != CUBLAS_STATUS_SUCCESS) return retry();
  cudaEvent_t e0, e1;
  MOE_CUDA_CHECK(cudaEventCreate(&e0));
  MOE_CUDA_CHECK(cudaEventCreate(&e1));
  float best_ms = TimeAlgo(run, owner.pick, out[0], stream, e0, e1);
  cublasLtMatmulAlgo_t best = owner.pick;
  const int64_t words = static_cast<int64_t>(extent / 16);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(1, (words + 255) / 256), 4096));
  unsigned int* flags = scratch_->flags;
  bool zero = false;
  for (const cublasLtMatmulHeuristicResult_t& c : candidates) {
    if (best_ms < 0) break;
    if (SameAlgo(c.algo, owner.pick) || !WholeSum(c.algo)) continue;
    if (run(&c.algo, out[1]) != CUBLAS_STATUS_SUCCESS) continue;
    MOE_CUDA_CHECK(cudaMemsetAsync(flags, 0, 2 * sizeof(unsigned int), stream));
    CompareWordsKernel<<<blocks, 256, 0, stream>>>(static_cast<const uint4*>(scratch_->out[0]),
                                                  static_cast<const uint4*>(scratch_->out[1]), words, flags);
    MOE_CUDA_LAUNCH_CHECK();
    unsigned int host[2] = {1, 0};
    MOE_CUDA_CHECK(cudaMemcpyAsync(host, flags, sizeof(host), cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (host[1] == 0) {
      zero = true;
      break;
    }
    if (host[0] != 0) continue;  // other bits: not a choice
    const float ms = TimeAlgo(run, c.algo, out[1], stream, e0, e1);
    if (ms <= 0) continue;
    if (choice_for_test_ && SameAlgo(best, owner.pick)) {  // tests: the first twin, whatever its time
      best_ms = ms;
      best = c.algo;
    } else if (!choice_for_test_ && ms < 0.97f * best_ms) {  // 3%: timing noise does not move a bucket
      best_ms = ms;
      best = c.algo;
    }
  }
  MOE_CUDA_CHECK(cudaEventDestroy(e0));
  MOE_CUDA_CHECK(cudaEventDestroy(e1));
  if (zero || best_ms < 0) return retry();
  FreeChoiceScratch();
  settle(best);
}

void Blas::TimeCandidates(const Key& key, Plan& p, cudaStream_t stream, size_t d_bytes, const RunAlgo& run) {
  const auto [ta, tb, m, n, k, lda, ldb, ldc, type_int, align, batch, sa, sb, sc, c_bf16, pointers] = key;
  void* out[2];
  size_t extent = 0;
  if (!PrepareChoiceScratch(key, d_bytes, stream, out, &extent)) return;
  cudaEvent_t e0, e1;
  MOE_CUDA_CHECK(cudaEventCreate(&e0));
  MOE_CUDA_CHECK(cudaEventCreate(&e1));
  auto time_one = [&](const cublasLtMatmulAlgo_t& algo) -> float {
    if (run(&algo, out[0]) != CUBLAS_STATUS_SUCCESS) return -1;
    return TimeAlgo(run, algo, out[0], stream, e0, e1);
  };
  p.ms_plan = time_one(p.algo);
  const std::vector<cublasLtMatmulHeuristicResult_t> results =
      Candidates(reinterpret_cast<cublasLtHandle_t>(handle_), key, p.desc, p.a, p.b, p.c, workspace_bytes_);
  p.candidates = static_cast<int>(results.size());
  for (int i = 0; i < p.candidates; ++i) {
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
  FreeChoiceScratch();
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

}  // namespace moe::cuda
