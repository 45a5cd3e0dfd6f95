// The CUDA memory estimate (common/memory_estimate.h) against what the CUDA backend allocates:
// on a few shapes (MoE and dense, bf16 and fp32), the model's peak device allocation over two
// training steps (TrainModel::PeakMemoryBytes, the DeviceArena high-water mark) is within 20% of
// the estimate less its fixed CUDA runtime allowance (the context, cuBLAS and NCCL are not
// allocated through the arena), with train.recompute none and full. Skips without a GPU.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/model_stats.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"
#include "worker/data/dataset.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/common.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaMemoryEstimate, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU model to measure"; }

#else

struct Shape {
  const char* name;
  int d, layers, heads, seq, experts, top_k, ffn, vocab, batch;
  bool bf16;
};

std::string WriteShard(int vocab) {
  const std::string path = testing::MakeTempDir("moe-cuda-memory-") + "/tokens.bin";
  std::mt19937 rng(5);
  std::vector<uint16_t> tokens(1 << 20);
  for (uint16_t& t : tokens) t = static_cast<uint16_t>(rng() % static_cast<uint32_t>(vocab));
  tokens[0] = static_cast<uint16_t>(vocab - 1);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
  return path;
}

v1::JobSpec SpecOf(const Shape& s) {
  v1::JobSpec spec;
  spec.set_name("cuda-memory");
  v1::ModelSpec* m = spec.mutable_model();
  m->set_d_model(s.d);
  m->set_n_layers(s.layers);
  m->set_n_heads(s.heads);
  m->set_n_kv_heads(s.heads);
  m->set_seq_len(s.seq);
  m->set_vocab_size(s.vocab);
  m->set_tie_embeddings(true);
  m->mutable_moe()->set_num_experts(s.experts);
  m->mutable_moe()->set_top_k(s.top_k);
  m->mutable_moe()->set_expert_hidden(s.ffn);
  m->mutable_moe()->set_aux_loss_coef(0.01);
  m->mutable_moe()->set_z_loss_coef(0.001);
  spec.mutable_data()->set_path(WriteShard(s.vocab));
  spec.mutable_data()->set_tokenizer(v1::TOKENIZER_PRETOKENIZED);
  spec.mutable_data()->set_val_fraction(0.1);
  v1::TrainSpec* t = spec.mutable_train();
  t->set_steps(2);
  t->set_batch_size(s.batch);
  t->set_grad_accum(1);
  t->set_lr(1e-3);
  t->set_min_lr(1e-4);
  t->set_warmup_steps(1);
  t->set_grad_clip(1.0);
  t->set_seed(3);
  t->set_precision(s.bf16 ? v1::PRECISION_BF16 : v1::PRECISION_FP32);
  t->set_eval_every(0);
  t->set_eval_batches(1);
  t->set_log_every(1);
  spec.mutable_resources()->set_ranks(1);
  spec.mutable_resources()->set_device(v1::DEVICE_CUDA);
  return spec;
}

// Two training steps of spec: the estimate (less the runtime allowance) within 20% of the peak.
void ExpectWithinTwentyPercent(const v1::JobSpec& spec, const char* name) {
  absl::StatusOr<Dataset> data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  std::unique_ptr<Communicator> comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.checkpoint_dir = "";
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(spec, comm.get(), &*data, opts);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainOutcome outcome;
  ASSERT_TRUE((*trainer)->Run(&outcome).ok());
  const int64_t measured = (*trainer)->model().PeakMemoryBytes();
  const ModelStats stats = ComputeModelStats(spec);
  const int64_t estimate = stats.total_bytes - stats.runtime_bytes;
  const double ratio = static_cast<double>(estimate) / static_cast<double>(measured);
  std::printf("%s: estimate %s without the runtime (weights %s, grads %s, optimizer %s, activations %s, "
              "workspace %s), measured %s, ratio %.3f\n",
              name, FormatBytes(static_cast<double>(estimate)).c_str(),
              FormatBytes(static_cast<double>(stats.weight_bytes)).c_str(),
              FormatBytes(static_cast<double>(stats.grad_bytes)).c_str(),
              FormatBytes(static_cast<double>(stats.optimizer_bytes)).c_str(),
              FormatBytes(static_cast<double>(stats.activation_bytes)).c_str(),
              FormatBytes(static_cast<double>(stats.workspace_bytes)).c_str(),
              FormatBytes(static_cast<double>(measured)).c_str(), ratio);
  EXPECT_GT(ratio, 0.8);
  EXPECT_LT(ratio, 1.2);
}

TEST(CudaMemoryEstimate, WithinTwentyPercentOfThePeakAllocation) {
  if (!cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const Shape shapes[] = {
      {"moe-bf16", 512, 4, 8, 512, 8, 2, 1024, 8192, 32, true},
      {"moe-fp32", 256, 2, 4, 256, 8, 2, 512, 4096, 32, false},
      {"dense-bf16", 512, 4, 8, 512, 1, 1, 2048, 8192, 32, true},
      {"fine-experts-bf16", 512, 2, 8, 512, 64, 8, 256, 8192, 32, true},
  };
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    ExpectWithinTwentyPercent(SpecOf(s), s.name);
  }
}

// train.recompute: full: each block's input and one shared set of the rest.
TEST(CudaMemoryEstimate, RecomputeWithinTwentyPercentOfThePeakAllocation) {
  if (!cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const Shape shapes[] = {
      {"recompute-moe-bf16", 512, 6, 8, 512, 8, 2, 1024, 8192, 32, true},
      {"recompute-moe-fp32", 256, 4, 4, 256, 8, 2, 512, 4096, 32, false},
  };
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    v1::JobSpec spec = SpecOf(s);
    spec.mutable_train()->set_recompute(v1::RECOMPUTE_FULL);
    ExpectWithinTwentyPercent(spec, s.name);
  }
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
