// moe_bench: trains one of reference_moe.py's configurations for N steps on random tokens (as
// the peer's `bench` mode does) and prints one JSON line: tokens/s, model TFLOP/s and MFU
// (MODEL.md: 6 * active params + 6 L D T FLOPs per token, over W GPUs' peak), the step
// time split and device memory.
//   moe_bench --config tiny|tiny-dense|small|medium [--steps 20] [--warmup 5]
//             [--precision bf16|fp32] [--device cuda|cpu] [--profile]
//   --profile: the CUDA profiler records the first measured step only (for
//   `ncu --profile-from-start off`, see bench/ncu_summary.py).
//   --trace N: N more steps after the measured ones, recorded through CUPTI (bench/trace): what
//   the GPU did and where it idled (the host late with a launch, just out of a wait, or the GPU
//   itself), and the kernels by total time, printed after the JSON line as "# trace" lines and a
//   "gpu_trace" JSON line.
//   Under mpirun -np W (device cuda: one GPU per rank), every rank trains the config's batch
//   (weak scaling: W times the tokens per step) with the experts split over the ranks, and rank
//   0 prints tokens/s over all ranks and per GPU, and the GPU time of the collectives.
//   moe_bench --config small --grouped-gemm: times the experts' products alone (cuBLAS grouped,
//             cuBLAS padded batches and the simple oracle kernel), one JSON line per product.
//   moe_bench --job FILE [--steps N] [--warmup N] [--profile]: any job file (the checks of
//             `moectl validate`), trained by moe-worker's own Trainer (the job's device,
//             precision, options, batch_size and grad_accum) on random tokens below
//             model.vocab_size; one JSON line: tokens/s, TFLOP/s and MFU per GPU, the step split
//             and the peak memory. Under mpirun -np W the job runs on W ranks (resources.ranks).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/job_spec.h"
#include "common/model_stats.h"
#include "moe/v1/job.pb.h"
#include "worker/parallel/comm_mpi.h"
#include "worker/model/cuda/cuda_model.h"
#include "worker/model/cuda/host_waits.h"
#include "worker/model/model_config.h"
#include "worker/data/dataset.h"
#include "worker/train/make_model.h"
#include "worker/train/step_metrics.h"
#include "worker/train/trainer.h"

#ifdef MOE_WITH_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "kernels/cuda/expert_layout.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/moe.h"
#endif
#ifdef MOE_WITH_CUPTI
#include "bench/trace/cupti_trace.h"
#endif

namespace {

struct BenchConfig {
  const char* name;
  int vocab, d, layers, heads, experts, k, ffn, seq, batch;
  double dropout;
};

// reference_moe.py's CONFIGS.
constexpr BenchConfig kConfigs[] = {
    {"tiny", 65, 384, 6, 6, 8, 2, 512, 256, 64, 0.2},
    {"tiny-dense", 65, 384, 6, 6, 1, 1, 1024, 256, 64, 0.2},
    {"small", 50304, 768, 12, 12, 8, 2, 1536, 1024, 16, 0.0},
    {"medium", 50304, 1024, 16, 16, 32, 4, 1024, 1024, 16, 0.0},
};

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// The host's side of the measured steps (on the GPU; zeros on the CPU): its wait for the MoE
// layers' expert counts (host_waits.h) and the cuBLASLt plans it made (heuristic queries).
struct HostSide {
  std::vector<double> wait_s;  // per step
  double plan_s = 0;
  int64_t plans = 0, queries = 0, routed_rows = 0, layout_rows = 0;
  double wait0 = 0;
#ifdef MOE_WITH_CUDA
  moe::cuda::BlasPlanStats plan0;
  moe::cuda::ExpertLayoutStats layout0;
#endif
  void Start() {
    wait0 = moe::CountsWaitSeconds();
#ifdef MOE_WITH_CUDA
    plan0 = moe::cuda::PlanStats();
    layout0 = moe::cuda::LayoutStats();
#endif
  }
  void Stop() {
    wait_s.push_back(moe::CountsWaitSeconds() - wait0);
#ifdef MOE_WITH_CUDA
    plan_s += moe::cuda::PlanStats().seconds - plan0.seconds;
    plans += moe::cuda::PlanStats().made - plan0.made;
    queries += moe::cuda::PlanStats().queried - plan0.queried;
    routed_rows += moe::cuda::LayoutStats().routed - layout0.routed;
    layout_rows += moe::cuda::LayoutStats().layout - layout0.layout;
#endif
  }
  // The JSON fields: counts_wait_ms (median per step), plans_per_step, plan_queries_per_step (of
  // cuBLASLt's heuristic), plan_ms (per step), layout_padding (the experts' layouts' rows over the
  // rows routed, less 1: what the padding adds to the experts' products; 0 on the CPU).
  std::string Json() const {
    const double steps = std::max<double>(1, wait_s.size());
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "\"counts_wait_ms\": %.2f, \"plans_per_step\": %.1f, \"plan_queries_per_step\": %.1f, "
                  "\"plan_ms\": %.2f, \"layout_padding\": %.3f",
                  Median(wait_s) * 1e3, plans / steps, queries / steps, plan_s * 1e3 / steps,
                  routed_rows > 0 ? static_cast<double>(layout_rows) / routed_rows - 1 : 0.0);
    return buf;
  }
};

// --trace N: the N steps after the measured ones, recorded; the summary is printed last.
struct StepTrace {
  int steps = 0;
  bool recording = false;
  std::string text;
  void Begin() {
#ifdef MOE_WITH_CUPTI
    const std::string why = moe::trace::StartRecording();
    recording = why.empty();
    if (!recording) std::fprintf(stderr, "moe_bench: --trace: CUPTI could not record: %s\n", why.c_str());
#endif
  }
  void End() {
#ifdef MOE_WITH_CUPTI
    if (!recording) return;
    MOE_CUDA_CHECK(cudaDeviceSynchronize());
    moe::trace::Recording rec;
    const std::string why = moe::trace::StopRecording(&rec);
    if (!why.empty()) std::fprintf(stderr, "moe_bench: --trace: %s\n", why.c_str());
    const moe::trace::TimelineSummary sum =
        moe::trace::Summarize(std::move(rec.activities), rec.calls, rec.start, rec.end, steps);
    text = moe::trace::FormatSummary(sum) + moe::trace::SummaryJson(sum) + "\n";
#endif
  }
  void Print() const { std::fputs(text.c_str(), stdout); }
};

#ifdef MOE_WITH_CUDA
// The experts' products of one MoE layer (rows = tokens * k, split over the experts with a
// +-25% and a +-3% skew): forward x@W1 (kNN), dgrad dh@W1^T (kNT), wgrad x^T@dg (kTN), each
// timed with events over `iters` launches after a warm-up, on cuBLAS's grouped GEMM, on the
// padded strided batched GEMM (every expert padded to the largest count; kTN into fp32) and, at
// 25%, on the simple kernels. FLOPs = 2 rows D F per product (the padding's are not counted).
int GroupedGemmBench(const BenchConfig& c, int iters) {
  using moe::cuda::bf16;
  const int E = c.experts, D = c.d, F = c.ffn, rows = c.batch * c.seq * c.k;
  const int64_t big = int64_t{rows} * std::max(D, F), wsize = int64_t{E} * D * F;
  // Padded: up to 1.25 rows in all.
  const int64_t padded = big * 5 / 4 + 64 * std::max(D, F);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> host(std::max(padded, wsize));
  for (float& v : host) v = nd(rng);
  float *a32, *b32, *c32;
  bf16 *a16, *b16, *c16;
  int32_t* off_d;
  MOE_CUDA_CHECK(cudaMalloc(&a32, sizeof(float) * big));
  MOE_CUDA_CHECK(cudaMalloc(&b32, sizeof(float) * std::max(big, wsize)));
  MOE_CUDA_CHECK(cudaMalloc(&c32, sizeof(float) * std::max(big, wsize)));
  MOE_CUDA_CHECK(cudaMalloc(&a16, sizeof(bf16) * padded));
  MOE_CUDA_CHECK(cudaMalloc(&b16, sizeof(bf16) * std::max(padded, wsize)));
  MOE_CUDA_CHECK(cudaMalloc(&c16, sizeof(bf16) * std::max(padded, wsize)));
  MOE_CUDA_CHECK(cudaMalloc(&off_d, sizeof(int32_t) * (E + 1)));
  MOE_CUDA_CHECK(cudaMemcpy(a32, host.data(), sizeof(float) * big, cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(b32, host.data(), sizeof(float) * std::max(big, wsize), cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(c32, host.data(), sizeof(float) * std::max(big, wsize), cudaMemcpyHostToDevice));
  moe::cuda::CastToBf16(a16, c32, std::min(padded, std::max(big, wsize)), nullptr);
  moe::cuda::CastToBf16(b16, b32, std::max(big, wsize), nullptr);
  moe::cuda::GroupedBlas gblas;
  cudaEvent_t e0, e1;
  MOE_CUDA_CHECK(cudaEventCreate(&e0));
  MOE_CUDA_CHECK(cudaEventCreate(&e1));
  using Op = moe::cuda::GroupedOp;
  struct Case { const char* name; Op op; int m, n, k; };
  const Case cases[] = {{"fwd x@W1 (kNN)", Op::kNN, 0, F, D},
                        {"dgrad dg@W1^T (kNT)", Op::kNT, 0, D, F},
                        {"wgrad x^T@dg (kTN)", Op::kTN, D, F, 0}};
  for (const int skew_pct : {25, 3}) {
    std::vector<int32_t> counts(E), offsets(E + 1, 0);
    for (int x = 0; x < E; ++x) counts[x] = rows / E + (x % 2 == 0 ? 1 : -1) * (rows / E * skew_pct / 100);
    int used = 0;
    for (int x = 0; x + 1 < E; ++x) used += counts[x];
    counts[E - 1] = rows - used;
    int cap = 0;
    for (int x = 0; x < E; ++x) {
      offsets[x + 1] = offsets[x] + counts[x];
      cap = std::max(cap, (counts[x] + 7) / 8 * 8);
    }
    MOE_CUDA_CHECK(cudaMemcpy(off_d, offsets.data(), sizeof(int32_t) * (E + 1), cudaMemcpyHostToDevice));
    for (const Case& cs : cases) {
      for (const char* path : {"cublas_grouped", "cublas_padded", "oracle_wmma"}) {
        const std::string p = path;
        if (p == "oracle_wmma" && skew_pct != 25) continue;
        auto launch = [&] {
          if (p == "cublas_grouped") {
            gblas.Gemm(cs.op, E, counts.data(), cs.m, cs.n, cs.k, 1.0f, 0.0f, {{a16, b16, c16}}, nullptr);
          } else if (p == "cublas_padded") {
            if (cs.op == Op::kTN) {
              gblas.PaddedWeightGrad(E, cap, cs.m, cs.n, a16, b16, c32, nullptr);
            } else {
              gblas.Padded(cs.op, E, cap, cs.n, cs.k, 0.0f, a16, b16, c16, nullptr);
            }
          } else {
            moe::cuda::GroupedGemm(cs.op, E, off_d, rows, cs.m, cs.n, cs.k, 1.0f, a32, b32, 0.0f, c32, true,
                                   nullptr);
          }
        };
        const int reps = p == "oracle_wmma" ? std::max(1, iters / 10) : iters;
        for (int i = 0; i < 3; ++i) launch();
        MOE_CUDA_CHECK(cudaEventRecord(e0, nullptr));
        for (int i = 0; i < reps; ++i) launch();
        MOE_CUDA_CHECK(cudaEventRecord(e1, nullptr));
        MOE_CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        const double per = ms / reps, flops = 2.0 * rows * D * F;
        std::printf("{\"bench\": \"grouped_gemm\", \"config\": \"%s\", \"product\": \"%s\", \"path\": \"%s\", "
                    "\"skew_pct\": %d, \"rows\": %d, \"padded_rows\": %d, \"experts\": %d, \"ms\": %.4f, "
                    "\"tflops\": %.1f}\n",
                    c.name, cs.name, path, skew_pct, rows, E * cap, E, per, flops / per / 1e9);
      }
    }
  }
  cudaFree(a32), cudaFree(b32), cudaFree(c32), cudaFree(a16), cudaFree(b16), cudaFree(c16), cudaFree(off_d);
  return 0;
}
#endif

// --job FILE: the job's own step (Trainer::Step: sample, forward, backward, reduce, clip,
// update) on random tokens; the warm-up steps are not measured. Returns the exit code.
int JobBench(const std::string& path, int steps, int warmup, bool profile, StepTrace& trace) {
  absl::StatusOr<moe::v1::JobSpec> loaded = moe::LoadJobSpec(path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "moe_bench: %s\n", std::string(loaded.status().message()).c_str());
    return 2;
  }
  moe::v1::JobSpec spec = *loaded;
  auto comm = moe::CreateMpiCommunicator(moe::CommOptions{});
  const int W = comm->world_size(), rank = comm->rank();
  const auto& m = spec.model();
  const auto& t = spec.train();
  const int vocab = m.vocab_size(), T = m.seq_len();
  auto fail = [&](const std::string& why) {
    if (rank == 0) std::fprintf(stderr, "moe_bench: %s: %s\n", path.c_str(), why.c_str());
    return 2;
  };
  if (vocab <= 0 || vocab > 65536) {
    return fail("set model.vocab_size (1 to 65536): moe_bench draws random tokens below it and reads no data");
  }
  if (t.batch_size() % (W * t.grad_accum()) != 0) {
    return fail("train.batch_size " + std::to_string(t.batch_size()) + " does not split over " + std::to_string(W) +
                " ranks x grad_accum " + std::to_string(t.grad_accum()) + "; run another -np or change the job");
  }
  if (m.moe().num_experts() > 1 && m.moe().num_experts() % W != 0) {
    return fail(std::to_string(m.moe().num_experts()) + " experts do not split over " + std::to_string(W) + " ranks");
  }
  spec.mutable_resources()->set_ranks(W);
  // Random tokens, the same on every rank (each samples its own slice of the global batch).
  moe::Dataset data;
  data.vocab_size = vocab;
  data.source = "random tokens";
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> tok(0, vocab - 1);
  std::vector<uint16_t> tokens(std::max<size_t>(size_t{1} << 20, static_cast<size_t>(T + 1) * 64));
  for (uint16_t& v : tokens) v = static_cast<uint16_t>(tok(rng));
  data.val = moe::TokenSplit(std::vector<uint16_t>(tokens.begin(), tokens.begin() + (T + 1) * 4));
  data.train = moe::TokenSplit(std::move(tokens));
  moe::TrainerOptions opts;
  opts.max_steps = warmup + steps + trace.steps;
  auto made = moe::Trainer::Create(spec, comm.get(), &data, opts);
  if (!made.ok()) {
    if (rank == 0) std::fprintf(stderr, "moe_bench: %s\n", std::string(made.status().message()).c_str());
    return 1;
  }
  moe::Trainer& trainer = **made;
  std::vector<double> tok_s, mfu, step_ms, fwd_ms, bwd_ms, opt_ms, a2a_ms, ar_ms;
  double peak_mb = 0, ce = 0;
  HostSide host;
  for (int s = 0; s < warmup + steps + trace.steps; ++s) {
#ifdef MOE_WITH_CUDA
    if (profile && s == warmup) cudaProfilerStart();
#endif
    if (s == warmup + steps) trace.Begin();
    host.Start();
    const moe::StepResult r = trainer.Step(s);
#ifdef MOE_WITH_CUDA
    if (profile && s == warmup) cudaProfilerStop();
#endif
    if (s < warmup || s >= warmup + steps) continue;
    host.Stop();
    const moe::v1::MetricPoint& p = r.metrics;
    tok_s.push_back(p.tokens_per_s());
    mfu.push_back(p.mfu());
    step_ms.push_back(p.step_ms());
    fwd_ms.push_back(p.times().forward_ms());
    bwd_ms.push_back(p.times().backward_ms());
    opt_ms.push_back(p.times().optimizer_ms());
    a2a_ms.push_back(p.times().all_to_all_ms());
    ar_ms.push_back(p.times().all_reduce_ms());
    peak_mb = std::max(peak_mb, p.peak_memory_mb());
    ce = p.loss();
  }
  if (trace.steps > 0) trace.End();
  if (rank != 0) return 0;
  moe::v1::JobSpec sized = spec;
  sized.mutable_model()->set_vocab_size(vocab);
  const moe::ModelStats stats = moe::ComputeModelStats(sized);
  const double tokens_per_s = Median(tok_s);
  const char* device = spec.resources().device() == moe::v1::DEVICE_CUDA ? "cuda" : "cpu";
  const char* precision = t.precision() == moe::v1::PRECISION_BF16 ? "bf16" : "fp32";
  std::printf(
      "{\"bench\": \"moe_bench\", \"job\": \"%s\", \"name\": \"%s\", \"device\": \"%s\", "
      "\"precision\": \"%s\", \"ranks\": %d, \"steps\": %d, \"tokens_per_step\": %lld, "
      "\"active_params\": %lld, \"total_params\": %lld, \"flops_per_token\": %.4g, \"step_ms\": %.2f, "
      "\"tokens_per_s\": %.0f, \"tokens_per_s_per_gpu\": %.0f, \"model_tflops\": %.1f, \"mfu\": %.4f, "
      "\"forward_ms\": %.2f, \"backward_ms\": %.2f, \"optimizer_ms\": %.2f, \"all_to_all_ms\": %.2f, "
      "\"all_reduce_ms\": %.2f, \"peak_memory_mb\": %.1f, %s, \"ce\": %.4f}\n",
      path.c_str(), spec.name().c_str(), device, precision, W, steps,
      static_cast<long long>(t.batch_size()) * T, static_cast<long long>(stats.active_params),
      static_cast<long long>(stats.total_params), stats.flops_per_token, Median(step_ms), tokens_per_s,
      tokens_per_s / W, stats.flops_per_token * tokens_per_s / W / 1e12, Median(mfu), Median(fwd_ms),
      Median(bwd_ms), Median(opt_ms), Median(a2a_ms), Median(ar_ms), peak_mb, host.Json().c_str(), ce);
  trace.Print();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = "tiny", precision = "bf16", device = "cuda", job;
  int steps = 20, warmup = 5;
  bool grouped_gemm = false;
  StepTrace trace;
  [[maybe_unused]] bool profile = false;  // read in CUDA builds only
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--config" && has_value) {
      config = argv[++i];
    } else if (a == "--job" && has_value) {
      job = argv[++i];
    } else if (a == "--precision" && has_value) {
      precision = argv[++i];
    } else if (a == "--device" && has_value) {
      device = argv[++i];
    } else if (a == "--steps" && has_value && absl::SimpleAtoi(argv[i + 1], &steps)) {
      ++i;
    } else if (a == "--warmup" && has_value && absl::SimpleAtoi(argv[i + 1], &warmup)) {
      ++i;
    } else if (a == "--trace" && has_value && absl::SimpleAtoi(argv[i + 1], &trace.steps)) {
      ++i;
    } else if (a == "--grouped-gemm") {
      grouped_gemm = true;
    } else if (a == "--profile") {
      profile = true;
    } else {
      const std::string why = !absl::StartsWith(a, "--") ? absl::StrCat("unexpected argument '", a, "'")
                              : has_value ? absl::StrCat(a, " ", argv[i + 1], ": not an option, or not a whole number")
                                          : absl::StrCat(a, ": not an option, or it needs a value");
      std::fprintf(stderr, "moe_bench: %s\n", why.c_str());
      std::fprintf(stderr,
                   "usage: moe_bench --config tiny|tiny-dense|small|medium [--steps N] [--warmup N] "
                   "[--precision bf16|fp32] [--device cuda|cpu] [--grouped-gemm] [--profile] [--trace N]\n"
                   "       moe_bench --job FILE [--steps N] [--warmup N] [--profile] [--trace N]\n");
      return 2;
    }
  }
  if (trace.steps < 0) {
    std::fprintf(stderr, "moe_bench: --trace takes the number of steps to record (0: none)\n");
    return 2;
  }
#ifndef MOE_WITH_CUPTI
  if (trace.steps > 0) {
    std::fprintf(stderr, "moe_bench: --trace records the GPU through CUPTI: this build has no CUDA or no CUPTI\n");
    return 2;
  }
#endif
  if (!job.empty()) {
    if (steps <= 0 || warmup < 0) {
      std::fprintf(stderr, "moe_bench: --steps must be at least 1 and --warmup at least 0\n");
      return 2;
    }
    return JobBench(job, steps, warmup, profile, trace);
  }
  const BenchConfig* c = nullptr;
  for (const BenchConfig& x : kConfigs) {
    if (config == x.name) c = &x;
  }
  std::string bad;
  if (c == nullptr) {
    std::vector<std::string> names;
    for (const BenchConfig& x : kConfigs) names.push_back(x.name);
    bad = absl::StrCat("--config ", config, ": not a configuration; use one of ", absl::StrJoin(names, ", "),
                       ", or --job FILE for any shape");
  } else if (steps <= 0 || warmup < 0) {
    bad = "--steps must be at least 1 and --warmup at least 0";
  } else if (precision != "bf16" && precision != "fp32") {
    bad = absl::StrCat("--precision ", precision, ": use bf16 or fp32");
  } else if (device != "cuda" && device != "cpu") {
    bad = absl::StrCat("--device ", device, ": use cuda or cpu");
  }
  if (!bad.empty()) {
    std::fprintf(stderr, "moe_bench: %s\n", bad.c_str());
    return 2;
  }
  if (trace.steps > 0 && device != "cuda") {
    std::fprintf(stderr, "moe_bench: --trace records the GPU: it needs --device cuda\n");
    return 2;
  }
  if (grouped_gemm) {
#ifdef MOE_WITH_CUDA
    return GroupedGemmBench(*c, steps);
#else
    std::fprintf(stderr, "moe_bench: --grouped-gemm needs a CUDA build\n");
    return 2;
#endif
  }

  moe::v1::JobSpec spec;
  auto* m = spec.mutable_model();
  m->set_d_model(c->d);
  m->set_n_layers(c->layers);
  m->set_n_heads(c->heads);
  m->set_n_kv_heads(c->heads);
  m->set_seq_len(c->seq);
  m->set_vocab_size(c->vocab);
  m->set_tie_embeddings(true);
  m->set_dropout(c->dropout);
  m->mutable_moe()->set_num_experts(c->experts);
  m->mutable_moe()->set_top_k(c->k);
  m->mutable_moe()->set_expert_hidden(c->ffn);
  m->mutable_moe()->set_aux_loss_coef(0.01);
  m->mutable_moe()->set_z_loss_coef(0.001);
  auto* t = spec.mutable_train();
  t->set_batch_size(c->batch);
  t->set_grad_accum(1);
  t->set_precision(precision == "bf16" ? moe::v1::PRECISION_BF16 : moe::v1::PRECISION_FP32);
  auto comm = moe::CreateMpiCommunicator(moe::CommOptions{});
  const int W = comm->world_size(), rank = comm->rank();
  if (c->experts > 1 && c->experts % W != 0) {
    if (rank == 0) std::fprintf(stderr, "moe_bench: %d experts do not split over %d ranks\n", c->experts, W);
    return 2;
  }
  spec.mutable_resources()->set_ranks(W);
  spec.mutable_resources()->set_device(device == "cuda" ? moe::v1::DEVICE_CUDA : moe::v1::DEVICE_CPU);

  const moe::ModelConfig cfg = moe::ModelConfig::FromSpec(spec, c->vocab);
  const moe::ModelStats stats = moe::ComputeModelStats(spec);
  auto made = moe::MakeTrainModel(spec, cfg, comm.get());
  if (!made.ok()) {
    std::fprintf(stderr, "moe_bench: %s\n", std::string(made.status().message()).c_str());
    return 1;
  }
  moe::TrainModel& model = **made;
  model.InitParams(0);

  const int n = c->batch * c->seq;
  std::mt19937 rng(rank);
  std::uniform_int_distribution<int> tok(0, c->vocab - 1);
  std::vector<int32_t> x(n), y(n);
  std::vector<double> step_s, fwd_s, bwd_s, opt_s;
  HostSide host;
  double ce = 0;
  moe::CommSeconds comm_s;  // over the measured steps
  for (int s = 0; s < warmup + steps + trace.steps; ++s) {
    for (int i = 0; i < n; ++i) {
      x[i] = tok(rng);
      y[i] = tok(rng);
    }
    moe::BatchContext ctx;
    ctx.train = true;
    ctx.dropout_seed = static_cast<uint64_t>(s) + 1;
    ctx.first_token = static_cast<int64_t>(rank) * n;
    ctx.global_tokens = static_cast<int64_t>(n) * W;
    ctx.loss_scale = 1.0f / (static_cast<float>(n) * W);
#ifdef MOE_WITH_CUDA
    if (profile && s == warmup) cudaProfilerStart();
#endif
    if (s == warmup + steps) trace.Begin();
    host.Start();
    const auto t0 = Clock::now();
    model.ZeroGrads();
    const moe::ForwardResult r = model.Forward(x.data(), y.data(), c->batch, ctx);
    const auto t1 = Clock::now();
    model.Backward();
    const auto t2 = Clock::now();
    const moe::CommSeconds step_comm = model.ReduceGrads();
    double dense_sq = 0, expert_sq = 0;
    model.GradSquaredNorms(&dense_sq, &expert_sq);
    comm->AllReduceSum(&expert_sq, 1);
    const double norm = std::sqrt(dense_sq + expert_sq);
    model.OptimizerStep(s + 1, 3e-4, 3e-4, 0.1, norm > 1.0 ? static_cast<float>(1.0 / (norm + 1e-6)) : 1.0f);
    const auto t3 = Clock::now();
#ifdef MOE_WITH_CUDA
    if (profile && s == warmup) cudaProfilerStop();
#endif
    if (s >= warmup + steps) continue;  // recorded by --trace, not measured
    ce = r.ce_sum / n;
    if (s >= warmup) {
      comm_s.all_to_all += step_comm.all_to_all;
      comm_s.all_reduce += step_comm.all_reduce;
      step_s.push_back(Seconds(t0, t3));
      fwd_s.push_back(Seconds(t0, t1));
      bwd_s.push_back(Seconds(t1, t2));
      opt_s.push_back(Seconds(t2, t3));
      host.Stop();
    }
  }
  if (trace.steps > 0) trace.End();
  double total = 0;
  for (double v : step_s) total += v;
  // The slowest rank sets the pace: its mean step, over all ranks' tokens.
  double mean_step = total / step_s.size();
  double comm_ms[2] = {comm_s.all_to_all * 1e3 / step_s.size(), comm_s.all_reduce * 1e3 / step_s.size()};
  const double peak_flops = model.PeakFlopsPerSecond();
  comm->AllReduceSum(comm_ms, 2);
  std::vector<float> steps_by_rank(static_cast<size_t>(W));
  const float mine = static_cast<float>(mean_step);
  comm->Gather(&mine, 1, steps_by_rank.data(), 0);
  if (rank != 0) return 0;
  for (float v : steps_by_rank) mean_step = std::max(mean_step, double{v});
  const double tok_s = static_cast<double>(n) * W / mean_step;
  const double tflops = stats.flops_per_token * tok_s / 1e12;
  // The exchange's bus bandwidth (nccl_ceiling.py's definition): each MoE layer sends rows to the
  // experts and back, in the forward and the backward: 4 L all-to-alls per step, each of about
  // n k D bf16 values per rank (balanced routing).
  const double a2a_ms = comm_ms[0] / W, a2a_calls = 4.0 * c->layers;
  const double a2a_bytes = static_cast<double>(n) * c->k * c->d * 2;
  const double a2a_busbw =
      W > 1 && a2a_ms > 0 && c->experts > 1 ? a2a_bytes * (W - 1) / W / (a2a_ms / 1e3 / a2a_calls) / 1e9 : 0;
  double used_gb = 0;
#ifdef MOE_WITH_CUDA
  if (device == "cuda") {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) used_gb = (total_b - free_b) / 1073741824.0;
  }
#endif
  std::printf(
      "{\"bench\": \"moe_bench\", \"config\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", "
      "\"ranks\": %d, \"steps\": %d, \"tokens_per_step\": %lld, \"active_params\": %lld, "
      "\"total_params\": %lld, \"flops_per_token\": %.4g, \"step_ms\": %.2f, \"step_ms_median\": %.2f, "
      "\"tokens_per_s\": %.0f, \"tokens_per_s_per_gpu\": %.0f, \"model_tflops\": %.1f, \"mfu\": %.4f, "
      "\"forward_ms\": %.2f, \"backward_ms\": %.2f, \"optimizer_ms\": %.2f, \"all_to_all_ms\": %.2f, "
      "\"all_reduce_ms\": %.2f, \"a2a_mb_per_call\": %.1f, \"a2a_busbw_gbps\": %.1f, \"model_mem_gb\": %.2f, \"device_used_gb\": %.2f, "
      "%s, \"ce\": %.4f}\n",
      c->name, device.c_str(), precision.c_str(), W, steps, static_cast<long long>(n) * W,
      static_cast<long long>(stats.active_params), static_cast<long long>(stats.total_params), stats.flops_per_token,
      mean_step * 1e3, Median(step_s) * 1e3, tok_s, tok_s / W, tflops / W,
      moe::ModelFlopsUtilization(stats.flops_per_token, tok_s, W, peak_flops), Median(fwd_s) * 1e3,
      Median(bwd_s) * 1e3, Median(opt_s) * 1e3, a2a_ms, comm_ms[1] / W, a2a_bytes / 1048576.0, a2a_busbw,
      moe::CudaModelDeviceBytes(model) / 1073741824.0, used_gb, host.Json().c_str(), ce);
  trace.Print();
  return 0;
}
