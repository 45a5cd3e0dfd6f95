// moe-worker stops on SIGTERM within seconds even in the middle of a long evaluation: the
// evaluation ends after its current batch (no val_loss for that step), the step is checkpointed
// and the worker exits as stopped. Before, it finished every eval batch first, which could
// outlast moed's cancel grace or Slurm's signal before the time limit.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"
#include "worker/data/dataset.h"

extern char** environ;

namespace moe::testing {
namespace {

TEST(WorkerStop, SigtermDuringALongEvaluationStopsAfterItsBatch) {
  const std::string dir = MakeTempDir("moe-worker-stop-");
  const std::string job = dir + "/job.yaml";
  std::ofstream(job) << "name: stop\n"
                     << "model: {d_model: 32, n_layers: 1, n_heads: 2, seq_len: 16, vocab_size: 65,\n"
                     << "        moe: {num_experts: 4, top_k: 2, expert_hidden: 32}}\n"
                     << "data: {path: " << ShakespearePath() << ", tokenizer: char}\n"
                     << "train: {steps: 50, batch_size: 4, lr: 1.0e-3, warmup_steps: 0, eval_every: 1,\n"
                     << "        eval_batches: 10000000, log_every: 1}\n";
  const std::string out = dir + "/out.txt";
  const std::string ckpt = dir + "/ckpt";
  const std::string worker = BinDir() + "/moe-worker";
  const std::string cmd = absl::StrCat("exec '", worker, "' --job '", job, "' --checkpoint-dir '", ckpt,
                                       "' --threads 1 > '", out, "' 2>&1");
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
  // Step 1 trains in well under a second (a few on a loaded machine); its evaluation (10 million
  // batches) would take hours.
  std::this_thread::sleep_for(std::chrono::seconds(6));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  pid_t done = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while ((done = waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  std::stringstream text;
  text << std::ifstream(out).rdbuf();
  ASSERT_NE(done, 0) << "still evaluating a minute after SIGTERM:\n" << text.str();
  EXPECT_TRUE(absl::StrContains(text.str(), "stop requested during the evaluation at step 1: it has no val_loss"))
      << text.str();
  EXPECT_TRUE(absl::StrContains(text.str(), "stop requested: checkpointed at step 1, exiting")) << text.str();
  EXPECT_TRUE(std::filesystem::exists(ckpt + "/step_00000001")) << text.str();
}

// SIGTERM while the worker tokenizes its text (sent when it says it started): it exits as stopped
// (143, what moed reads as cancelled) within a second or two, says why, and leaves no cache that
// looks complete unless it is (no meta.txt, or a complete cache that the next load reuses when the
// signal came after the cache was written, as it may on a fast machine; no temp files either way).
// Before, it tokenized on and trained a step first.
TEST(WorkerStop, SigtermWhileTokenizingTheDataExitsPromptlyWithNothingCached) {
  const std::string dir = MakeTempDir("moe-worker-stop-data-");
  const std::string text = dir + "/text.txt";
  {
    std::ifstream in(ShakespearePath(), std::ios::binary);
    std::stringstream one;
    one << in.rdbuf();
    std::ofstream out(text, std::ios::binary);
    for (int i = 0; i < 40; ++i) out << one.str();  // 44.6 MB: about a second to tokenize
  }
  const std::string job = dir + "/job.yaml";
  std::ofstream(job) << "name: stop-data\n"
                     << "model: {d_model: 32, n_layers: 1, n_heads: 2, seq_len: 16, vocab_size: 65,\n"
                     << "        moe: {num_experts: 4, top_k: 2, expert_hidden: 32}}\n"
                     << "data: {path: " << text << ", tokenizer: char, cache_dir: " << dir << "/cache}\n"
                     << "train: {steps: 5, batch_size: 4, lr: 1.0e-3, warmup_steps: 0, log_every: 1}\n";
  const std::string out = dir + "/out.txt";
  const std::string cmd = absl::StrCat("exec '", BinDir(), "/moe-worker' --job '", job, "' --no-checkpoint",
                                       " --threads 1 > '", out, "' 2>&1");
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
  auto output = [&] {
    std::stringstream t;
    t << std::ifstream(out).rdbuf();
    return t.str();
  };
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!absl::StrContains(output(), "tokenizing 44.6 MB of text") && std::chrono::steady_clock::now() < deadline &&
         waitpid(pid, &status, WNOHANG) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(kill(pid, SIGTERM), 0) << output();
  const auto signalled = std::chrono::steady_clock::now();
  pid_t done = 0;
  deadline = signalled + std::chrono::seconds(30);
  while ((done = waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  const std::string text_out = output();
  ASSERT_NE(done, 0) << "still running 30 s after SIGTERM:\n" << text_out;
  EXPECT_LT(took, 3.0) << text_out;
  ASSERT_TRUE(WIFEXITED(status)) << text_out;
  EXPECT_EQ(WEXITSTATUS(status), 143) << text_out;
  EXPECT_TRUE(absl::StrContains(text_out, "stop requested while preparing the data: exiting, nothing to checkpoint"))
      << text_out;
  EXPECT_FALSE(absl::StrContains(text_out, "\"step\"")) << text_out;
  if (std::filesystem::exists(dir + "/cache/meta.txt")) {
    moe::v1::DataSpec spec;
    spec.set_path(text);
    spec.set_tokenizer(moe::v1::TOKENIZER_CHAR);
    spec.set_val_fraction(0.1);
    spec.set_cache_dir(dir + "/cache");
    absl::StatusOr<Dataset> cached = LoadDataset(spec);
    ASSERT_TRUE(cached.ok()) << cached.status();
    EXPECT_TRUE(absl::StrContains(cached->source, "cached in")) << "a meta.txt of an incomplete cache: "
                                                                << cached->source << "\n" << text_out;
    EXPECT_EQ(cached->train.size() + cached->val.size(), 40u * 1115394u);
  }
  if (std::filesystem::exists(dir + "/cache")) {
    for (const auto& e : std::filesystem::directory_iterator(dir + "/cache")) {
      EXPECT_FALSE(absl::StrContains(e.path().filename().string(), ".tmp.")) << e.path();
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe::testing
