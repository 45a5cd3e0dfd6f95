// The CPU memory estimate (common/memory_estimate.h, what moectl validate prints) against what
// the CPU backend really uses: on a few shapes, the growth of the process's peak resident set
// (TrainModel::PeakMemoryBytes, which peak_memory_mb reports) over two training steps, from the
// moment before the model is built, is within 20% of the estimate's total. Each shape runs in a
// child process of its own, so that one shape's high-water mark does not hide the next one's.
// And train.recompute: full lowers that peak by about what the estimate says it saves.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/model_stats.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

struct Shape {
  const char* name;
  int d, layers, heads, kv_heads, seq, experts, top_k, ffn, vocab, batch, accum;
  double capacity;
};

// The process's resident set now, from /proc/self/statm (pages).
int64_t ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

v1::JobSpec SpecOf(const Shape& s, const std::string& shard) {
  v1::JobSpec spec;
  spec.set_name("memory");
  v1::ModelSpec* m = spec.mutable_model();
  m->set_d_model(s.d);
  m->set_n_layers(s.layers);
  m->set_n_heads(s.heads);
  m->set_n_kv_heads(s.kv_heads);
  m->set_seq_len(s.seq);
  m->set_vocab_size(s.vocab);
  m->set_tie_embeddings(true);
  m->mutable_moe()->set_num_experts(s.experts);
  m->mutable_moe()->set_top_k(s.top_k);
  m->mutable_moe()->set_expert_hidden(s.ffn);
  m->mutable_moe()->set_capacity_factor(s.capacity);
  m->mutable_moe()->set_aux_loss_coef(0.01);
  m->mutable_moe()->set_z_loss_coef(0.001);
  spec.mutable_data()->set_path(shard);
  spec.mutable_data()->set_tokenizer(v1::TOKENIZER_PRETOKENIZED);
  spec.mutable_data()->set_val_fraction(0.1);
  v1::TrainSpec* t = spec.mutable_train();
  t->set_steps(2);
  t->set_batch_size(s.batch);
  t->set_grad_accum(s.accum);
  t->set_lr(1e-3);
  t->set_min_lr(1e-4);
  t->set_warmup_steps(1);
  t->set_grad_clip(1.0);
  t->set_seed(7);
  t->set_precision(v1::PRECISION_FP32);
  t->set_eval_every(0);
  t->set_eval_batches(1);
  t->set_log_every(1);
  spec.mutable_resources()->set_ranks(1);
  spec.mutable_resources()->set_device(v1::DEVICE_CPU);
  return spec;
}

// Raw uint16 tokens below `vocab`, the largest one present (so the data's vocabulary is vocab).
std::string WriteShard(int vocab) {
  const std::string path = testing::MakeTempDir("moe-memory-") + "/tokens.bin";
  std::mt19937 rng(11);
  std::vector<uint16_t> tokens(400000);
  for (uint16_t& t : tokens) t = static_cast<uint16_t>(rng() % static_cast<uint32_t>(vocab));
  tokens[0] = static_cast<uint16_t>(vocab - 1);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
  return path;
}

// In a child process: the bytes the process grew by, from before the model to its peak after
// two steps; -1 when training failed.
int64_t MeasuredGrowth(const v1::JobSpec& spec) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    int64_t growth = -1;
    kernels::SetNumThreads(2);
    absl::StatusOr<Dataset> data = LoadDataset(spec.data());
    if (data.ok()) {
      std::unique_ptr<Communicator> comm = CreateSingleProcessCommunicator();
      const int64_t before = ResidentBytes();
      TrainerOptions opts;
      opts.checkpoint_dir = "";
      absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(spec, comm.get(), &*data, opts);
      TrainOutcome outcome;
      if (trainer.ok() && (*trainer)->Run(&outcome).ok()) {
        growth = (*trainer)->model().PeakMemoryBytes() - before;
      }
    }
    (void)!write(fds[1], &growth, sizeof(growth));
    _exit(0);
  }
  close(fds[1]);
  int64_t growth = -1;
  if (read(fds[0], &growth, sizeof(growth)) != static_cast<ssize_t>(sizeof(growth))) growth = -1;
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return growth;
}

TEST(MemoryEstimateCpu, WithinTwentyPercentOfThePeakResidentSet) {
  const Shape shapes[] = {
      // MoE, top-2, dropless: the experts' rows dominate.
      {"moe", 64, 2, 4, 2, 128, 8, 2, 128, 512, 64, 1, 0},
      // Dense (one replicated expert).
      {"dense", 96, 2, 4, 4, 64, 1, 1, 384, 1024, 64, 1, 0},
      // A large vocabulary (the logits dominate), capacity drops, two micro-batches.
      {"vocab", 64, 2, 4, 4, 64, 4, 1, 128, 8192, 64, 2, 1.0},
  };
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    const v1::JobSpec spec = SpecOf(s, WriteShard(s.vocab));
    const ModelStats stats = ComputeModelStats(spec);
    const int64_t measured = MeasuredGrowth(spec);
    ASSERT_GT(measured, 0) << "training in the child process failed";
    const double ratio = static_cast<double>(stats.total_bytes) / static_cast<double>(measured);
    std::printf("%s: estimate %s (weights %s, grads %s, optimizer %s, activations %s, workspace %s), "
                "measured %s, ratio %.3f\n",
                s.name, FormatBytes(static_cast<double>(stats.total_bytes)).c_str(),
                FormatBytes(static_cast<double>(stats.weight_bytes)).c_str(),
                FormatBytes(static_cast<double>(stats.grad_bytes)).c_str(),
                FormatBytes(static_cast<double>(stats.optimizer_bytes)).c_str(),
                FormatBytes(static_cast<double>(stats.activation_bytes)).c_str(),
                FormatBytes(static_cast<double>(stats.workspace_bytes)).c_str(),
                FormatBytes(static_cast<double>(measured)).c_str(), ratio);
    EXPECT_GT(ratio, 0.8);
    EXPECT_LT(ratio, 1.2);
  }
}

// Six blocks whose activations dwarf the weights: recompute full keeps each block's input and
// one block's activations, and the process's peak shows it.
TEST(MemoryEstimateCpu, RecomputeLowersThePeakResidentSet) {
  const Shape s{"recompute", 64, 6, 4, 4, 128, 8, 2, 128, 512, 16, 1, 0};
  v1::JobSpec spec = SpecOf(s, WriteShard(s.vocab));
  const ModelStats none = ComputeModelStats(spec);
  const int64_t measured_none = MeasuredGrowth(spec);
  spec.mutable_train()->set_recompute(v1::RECOMPUTE_FULL);
  const ModelStats full = ComputeModelStats(spec);
  const int64_t measured_full = MeasuredGrowth(spec);
  ASSERT_GT(measured_none, 0) << "training in the child process failed";
  ASSERT_GT(measured_full, 0) << "training in the child process failed";
  const int64_t saving = none.activation_bytes - full.activation_bytes;
  std::printf("activations: none %s, full %s (estimate); peak growth: none %s, full %s (measured)\n",
              FormatBytes(static_cast<double>(none.activation_bytes)).c_str(),
              FormatBytes(static_cast<double>(full.activation_bytes)).c_str(),
              FormatBytes(static_cast<double>(measured_none)).c_str(),
              FormatBytes(static_cast<double>(measured_full)).c_str());
  EXPECT_GT(saving * 2, none.activation_bytes) << "the estimate saves less than half the activations";
  // The peak falls by at least half of the estimated saving, and each run is within 20%.
  EXPECT_LT(measured_full, measured_none - saving / 2);
  for (const auto& [estimate, measured] :
       {std::pair{none.total_bytes, measured_none}, std::pair{full.total_bytes, measured_full}}) {
    const double ratio = static_cast<double>(estimate) / static_cast<double>(measured);
    EXPECT_GT(ratio, 0.8) << FormatBytes(static_cast<double>(estimate)) << " estimated";
    EXPECT_LT(ratio, 1.2) << FormatBytes(static_cast<double>(estimate)) << " estimated";
  }
}

}  // namespace
}  // namespace moe
