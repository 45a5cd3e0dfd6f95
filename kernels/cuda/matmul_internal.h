// What the products (matmul.cu) and the choice and timing of their algorithms (matmul_choice.cu)
// share: a shape's plan, the cuBLASLt status check, the heuristic's preference.
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/matmul.h"

namespace moe::cuda {

namespace internal {

// Aborts with the call and cuBLASLt's status unless st is CUBLAS_STATUS_SUCCESS.
void CheckLt(cublasStatus_t st, const char* what, const char* file, int line);
#define MOE_LT_CHECK(expr) ::moe::cuda::internal::CheckLt((expr), #expr, __FILE__, __LINE__)

// The limits every algorithm query gives: the workspace, the operands' alignment.
cublasLtMatmulPreference_t MakePreference(const Blas::Key& key, size_t workspace_bytes);

// MOE_BLAS_TUNE_REPORT=1: a measurement for moe_bench, not for training (it allocates scratch and
// synchronizes at each shape's first product). Each exact shape's first product times the
// algorithm its plan runs and cuBLASLt's other candidates for the shape on the same inputs, the
// output going to scratch; the Blas prints, when it is destroyed, each shape's runs and both times.
bool TuneReportOn();

// Whether a bucket's algorithm is the measured choice (Blas::MeasureChoice), from MOE_BLAS_CHOICE:
// unset or "measured" (the default), or "heuristic" (cuBLASLt's first candidate, as before the
// choice was measured; for A/B runs). Another value is reported once and read as "measured".
bool MeasuredChoiceOn();

}  // namespace internal

struct Blas::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;  // what the products run
  cublasLtMatmulAlgo_t pick;  // the heuristic's first candidate for this shape (when has_algo)
  bool queried = false;       // the heuristic was asked for this shape (query_status: its answer)
  int query_status = 0;
  bool has_algo = false;  // algo is this shape's own (the heuristic query found one)
  // algo is the canonical shape's (Blas::Canonical, the plan `source`), not queried for this
  // shape; Run asks for this shape's own when cuBLASLt refuses it.
  bool borrowed = false;
  Plan* source = nullptr;
  bool pick_tried = false;  // borrowed: its first product ran on source's pick (Blas::Run)
  bool use_pick = false;    // borrowed: cuBLASLt refused source's measured algorithm for it
  bool measured = false;    // MeasureChoice settled this plan's own algorithm
  int measure_tries = 0;    // MeasureChoice's calls that could not compare (see there)
  int64_t runs = 0;        // products run on this plan (the tuning report's weights)
  bool reported = false;   // MOE_BLAS_TUNE_REPORT: its candidates were timed
  float ms_plan = -1, ms_best = -1;  // per product: the plan's algorithm, the fastest candidate
  int best = -1, candidates = 0;     // the fastest's place in the heuristic's list, its length
  cublasLtMatmulAlgo_t best_algo;
  std::vector<std::string> lines;  // single products: every candidate's time and configuration
};

// Device scratch of the measured choice and the tuning report, held while one shape is measured:
// two outputs (the heuristic's pick's and a candidate's) and, for pointer-array products, an array
// of output pointers into each.
struct Blas::ChoiceScratch {
  void* out[2] = {nullptr, nullptr};
  size_t bytes = 0;  // of each out
  void** ptrs[2] = {nullptr, nullptr};
  int ptr_count = 0;               // of each ptrs array
  unsigned int* flags = nullptr;   // the comparison's answers (device, 2)
};

}  // namespace moe::cuda
