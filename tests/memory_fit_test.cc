// Unit tests of the memory estimate per backend and component (common/memory_estimate.h) and of
// the GPU fit check (common/memory_fit.h): sizes, the options' effect on each component, and the
// levers a job that does not fit is offered.
#include "common/memory_fit.h"

#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "common/model_stats.h"
#include "daemon/gpu_memory.h"
#include "gtest/gtest.h"
#include "moe/v1/job.pb.h"

namespace moe {
namespace {

// MODEL.md's "small" on one GPU in bf16.
v1::JobSpec Small() {
  v1::JobSpec s;
  v1::ModelSpec* m = s.mutable_model();
  m->set_vocab_size(50304);
  m->set_d_model(768);
  m->set_n_layers(12);
  m->set_n_heads(12);
  m->set_n_kv_heads(12);
  m->set_seq_len(1024);
  m->set_tie_embeddings(true);
  m->mutable_moe()->set_num_experts(8);
  m->mutable_moe()->set_top_k(2);
  m->mutable_moe()->set_expert_hidden(1536);
  s.mutable_train()->set_batch_size(16);
  s.mutable_train()->set_grad_accum(1);
  s.mutable_train()->set_precision(v1::PRECISION_BF16);
  s.mutable_resources()->set_ranks(1);
  s.mutable_resources()->set_device(v1::DEVICE_CUDA);
  return s;
}

// Three significant digits in the largest unit that keeps the number under 1000: 1000 to 1023 of
// a unit printed as "1e+03 MiB" before.
TEST(FormatBytes, NeverAnExponent) {
  constexpr double kMiB = 1024.0 * 1024.0;
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(999), "999 B");
  EXPECT_EQ(FormatBytes(1000), "0.977 KiB");
  EXPECT_EQ(FormatBytes(999 * kMiB), "999 MiB");
  EXPECT_EQ(FormatBytes(1000 * kMiB), "0.977 GiB");
  EXPECT_EQ(FormatBytes(1023.9 * kMiB), "1 GiB");
  EXPECT_EQ(FormatBytes(1.5 * 1024 * kMiB), "1.5 GiB");
  EXPECT_EQ(FormatBytes(5000.0 * 1024 * 1024 * 1024 * 1024 * kMiB), "5000 EiB");
  for (double b = 1; b < 1e21; b *= 1.37) {
    EXPECT_EQ(FormatBytes(b).find('e'), std::string::npos) << b << ": " << FormatBytes(b);
  }
}

TEST(ParseMemorySize, BinaryAndDecimalUnits) {
  EXPECT_EQ(*ParseMemorySize("80GiB"), int64_t{80} << 30);
  EXPECT_EQ(*ParseMemorySize("141GB"), int64_t{141} * 1000 * 1000 * 1000);
  EXPECT_EQ(*ParseMemorySize("24 GiB"), int64_t{24} << 30);
  EXPECT_EQ(*ParseMemorySize("1.5TiB"), int64_t{3} << 39);
  EXPECT_EQ(*ParseMemorySize("512mib"), int64_t{512} << 20);
  EXPECT_EQ(*ParseMemorySize("4096B"), 4096);
  EXPECT_EQ(*ParseMemorySize("85899345920"), int64_t{80} << 30);  // a bare number is bytes
}

TEST(ParseMemorySize, ABareSmallNumberAsksForAUnit) {
  absl::StatusOr<int64_t> r = ParseMemorySize("141");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "did you mean 141GiB or 141GB?")) << r.status().message();
}

TEST(ParseMemorySize, BadValuesSayWhatIsWrong) {
  for (const char* bad : {"", "GiB", "abc", "-1GiB", "0GiB", "1e30GB", "1.2.3GB"}) {
    absl::StatusOr<int64_t> r = ParseMemorySize(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_TRUE(absl::StrContains(r.status().message(), "e.g. 80GiB")) << r.status().message();
  }
  absl::StatusOr<int64_t> unit = ParseMemorySize("80XB");
  ASSERT_FALSE(unit.ok());
  EXPECT_TRUE(absl::StrContains(unit.status().message(), "unknown unit 'XB'")) << unit.status().message();
}

TEST(MemoryEstimate, CudaCountsWhatTheGpuStores) {
  const v1::JobSpec small = Small();
  const ModelStats s = ComputeModelStats(small);
  const int64_t P = s.params_per_rank;
  // fp32 master weights and their bf16 copy, fp32 gradients, AdamW's fp32 m and v.
  EXPECT_EQ(s.weight_bytes, 6 * P);
  EXPECT_EQ(s.grad_bytes, 4 * P);
  EXPECT_EQ(s.optimizer_bytes, 8 * P);
  EXPECT_EQ(s.runtime_bytes, kCudaRuntimeBytes);
  EXPECT_GT(s.activation_bytes, 0);
  EXPECT_GT(s.workspace_bytes, 0);
  EXPECT_EQ(s.total_bytes, s.weight_bytes + s.grad_bytes + s.optimizer_bytes + s.activation_bytes +
                               s.workspace_bytes + s.runtime_bytes);

  // No H x T attention probabilities: doubling T at half the batch keeps the activations
  // (the same tokens) up to the RoPE-free terms, far from the 2x a T^2 term would add.
  v1::JobSpec longer = small;
  longer.mutable_model()->set_seq_len(2048);
  longer.mutable_train()->set_batch_size(8);
  EXPECT_NEAR(static_cast<double>(ComputeModelStats(longer).activation_bytes),
              static_cast<double>(s.activation_bytes), 0.01 * static_cast<double>(s.activation_bytes));

  // Two GPUs: NCCL's buffers, half the experts.
  v1::JobSpec two = small;
  two.mutable_resources()->set_ranks(2);
  EXPECT_EQ(ComputeModelStats(two).runtime_bytes, kCudaRuntimeBytes + kNcclBytes);
  EXPECT_LT(ComputeModelStats(two).params_per_rank, P);
}

TEST(MemoryEstimate, OptimizerStateAndMasterWeightsOptions) {
  v1::JobSpec cpu = Small();
  cpu.mutable_resources()->set_device(v1::DEVICE_CPU);
  cpu.mutable_train()->set_precision(v1::PRECISION_FP32);
  const ModelStats base = ComputeModelStats(cpu);
  const int64_t P = base.params_per_rank;
  EXPECT_EQ(base.weight_bytes, 4 * P);
  EXPECT_EQ(base.runtime_bytes, 0);

  v1::JobSpec bf16 = cpu;
  bf16.mutable_train()->set_optimizer_state(v1::STATE_BF16);
  EXPECT_EQ(ComputeModelStats(bf16).optimizer_bytes, 4 * P);
  // int8: one byte a value and one fp32 scale per block of at most 2048 (blocks never cross a
  // tensor), for m and for v.
  v1::JobSpec int8 = cpu;
  int8.mutable_train()->set_optimizer_state(v1::STATE_INT8);
  const int64_t int8_bytes = ComputeModelStats(int8).optimizer_bytes;
  EXPECT_GE(int8_bytes, 2 * P + 2 * 4 * (P / 2048));
  EXPECT_LE(int8_bytes, 2 * P + 2 * 4 * (P / 2048 + 1 + 12 * 12 + 3));

  // Muon: the block matrices use only m's slot (a momentum), but both backends still allocate v
  // over every parameter, and the estimate counts what is allocated.
  v1::JobSpec muon = cpu;
  muon.mutable_train()->set_optimizer(v1::OPTIMIZER_MUON);
  const RankParams p = CountRankParams(muon);
  EXPECT_EQ(ComputeModelStats(muon).optimizer_bytes, static_cast<int64_t>(8 * p.total));
  EXPECT_EQ(p.total - p.matrices, 12 * (2 * 768 + 768 * 8) + 50304 * 768 + 768);

  // bf16 master weights: the CPU still keeps fp32 values; a GPU keeps only the bf16 weights.
  v1::JobSpec master = cpu;
  master.mutable_train()->set_master_weights(v1::PRECISION_BF16);
  EXPECT_EQ(ComputeModelStats(master).weight_bytes, 4 * P);
  v1::JobSpec gpu_master = Small();
  gpu_master.mutable_train()->set_master_weights(v1::PRECISION_BF16);
  EXPECT_EQ(ComputeModelStats(gpu_master).weight_bytes, 2 * P);
  // ... and on one GPU the blocks' matrices' gradients in bf16 (over the whole layout), the rest
  // fp32; the CPU and several GPUs keep fp32 gradients.
  const RankParams gp = CountRankParams(gpu_master);
  EXPECT_EQ(ComputeModelStats(gpu_master).grad_bytes, static_cast<int64_t>(2 * gp.total + 4 * (gp.total - gp.matrices)));
  EXPECT_EQ(ComputeModelStats(master).grad_bytes, 4 * P);
  v1::JobSpec two_gpus = gpu_master;
  two_gpus.mutable_resources()->set_ranks(2);
  const RankParams tp = CountRankParams(two_gpus);
  EXPECT_EQ(ComputeModelStats(two_gpus).grad_bytes, static_cast<int64_t>(4 * tp.total));
}

TEST(MemoryEstimate, RecomputeKeepsOnlyBlockInputs) {
  for (v1::Device device : {v1::DEVICE_CPU, v1::DEVICE_CUDA}) {
    v1::JobSpec spec = Small();
    spec.mutable_resources()->set_device(device);
    if (device == v1::DEVICE_CPU) spec.mutable_train()->set_precision(v1::PRECISION_FP32);
    const int64_t none = ComputeModelStats(spec).activation_bytes;
    spec.mutable_train()->set_recompute(v1::RECOMPUTE_FULL);
    const int64_t full = ComputeModelStats(spec).activation_bytes;
    EXPECT_LT(full * 5 / 2, none) << device;
    // Each block's input (n, D) fp32 stays, 12 of them.
    EXPECT_GT(full, int64_t{12} * 16 * 1024 * 768 * 4) << device;
  }
}

TEST(MemoryFit, FitsOrSaysByHowMuchAndWhatWouldHelp) {
  const v1::JobSpec small = Small();
  const MemoryFit big = CheckGpuFit(small, int64_t{80} << 30);
  EXPECT_TRUE(big.fits);
  EXPECT_TRUE(big.levers.empty());
  EXPECT_TRUE(absl::StartsWith(DescribeFit(big), "fits: needs about ")) << DescribeFit(big);

  // Fits, but with less spare than the estimate's measured shortfall: said so.
  const int64_t need = ComputeModelStats(small).total_bytes;
  const MemoryFit narrow = CheckGpuFit(small, need + need / 50);
  EXPECT_TRUE(narrow.fits);
  EXPECT_TRUE(absl::StrContains(DescribeFit(narrow), ", narrowly: a bf16 MoE job's peak has run up to 8% over"))
      << DescribeFit(narrow);
  EXPECT_FALSE(absl::StrContains(DescribeFit(big), "narrowly")) << DescribeFit(big);

  const MemoryFit tight = CheckGpuFit(small, int64_t{14} << 30);
  ASSERT_FALSE(tight.fits);
  EXPECT_EQ(tight.need, ComputeModelStats(small).total_bytes);
  const std::string text = DescribeFit(tight);
  EXPECT_TRUE(absl::StrContains(text, "does not fit: needs about ")) << text;
  EXPECT_TRUE(absl::StrContains(text, "the GPU has 14 GiB")) << text;
  EXPECT_TRUE(absl::StrContains(text, " over; what would make it fit: ")) << text;
  bool ranks = false, accum = false, int8 = false, master = false, recompute = false;
  for (const MemoryLever& l : tight.levers) {
    EXPECT_GT(l.saving, 0) << l.change;
    if (l.change == "resources.ranks: 2 (GPUs)") ranks = l.enough;
    if (l.change == "train.grad_accum: 2") accum = l.enough;
    if (l.change == "train.optimizer_state: int8") int8 = true;
    if (l.change == "train.master_weights: bf16") master = true;
    if (l.change == "train.recompute: full") {
      recompute = true;
      EXPECT_EQ(l.note, "") << "both backends run recompute";
    }
  }
  EXPECT_TRUE(ranks && accum && int8 && master && recompute) << text;
  for (size_t i = 1; i < tight.levers.size(); ++i) EXPECT_GE(tight.levers[i - 1].saving, tight.levers[i].saving);

  // Nothing helps enough on a 1 GiB GPU: the levers are still there, none of them enough.
  const MemoryFit tiny = CheckGpuFit(small, int64_t{1} << 30);
  ASSERT_FALSE(tiny.fits);
  for (const MemoryLever& l : tiny.levers) EXPECT_FALSE(l.enough) << l.change;
}

// A tiny job on a GPU far too small (moectl validate --gpu-memory 1MiB): spreading its 4 experts
// over 4 GPUs only adds exchange buffers, so it saves nothing and is not offered ("resources.ranks:
// 4 (GPUs) saves about 0 B" was); every lever offered saves something.
TEST(MemoryFit, ALeverThatSavesNothingIsNotOffered) {
  v1::JobSpec tiny = Small();
  v1::ModelSpec* m = tiny.mutable_model();
  m->set_vocab_size(93);
  m->set_d_model(64);
  m->set_n_layers(2);
  m->set_n_heads(4);
  m->set_n_kv_heads(4);
  m->set_seq_len(64);
  m->mutable_moe()->set_num_experts(4);
  m->mutable_moe()->set_expert_hidden(128);
  tiny.mutable_train()->set_batch_size(4);
  const MemoryFit fit = CheckGpuFit(tiny, int64_t{1} << 20);
  ASSERT_FALSE(fit.fits);
  ASSERT_FALSE(fit.levers.empty());
  for (const MemoryLever& l : fit.levers) {
    EXPECT_GT(l.saving, 0) << l.change;
    EXPECT_FALSE(absl::StartsWith(l.change, "resources.ranks")) << l.change << " saves " << l.saving;
  }
  EXPECT_FALSE(absl::StrContains(DescribeFit(fit), "saves about 0 B")) << DescribeFit(fit);
}

// moed's reading of nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits (MiB).
TEST(GpuMemory, SmallestOfNvidiaSmisGpus) {
  EXPECT_EQ(daemon::SmallestGpuMemory("143771\n143771\n"), int64_t{143771} << 20);
  EXPECT_EQ(daemon::SmallestGpuMemory("81559\n 40960 \n81559\n"), int64_t{40960} << 20);
  EXPECT_EQ(daemon::SmallestGpuMemory(""), 0);
  EXPECT_EQ(daemon::SmallestGpuMemory("[N/A]\n"), 0);
}

}  // namespace
}  // namespace moe
