// Shapes too large for any machine are refused at submit (INVALID_ARGUMENT, the field and the
// fix), and a worker that cannot allocate its model ends FAILED with the reason in words rather
// than an abort by signal 6.
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/model_stats.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

// GPT-2-small sized on one CPU rank: about 40 GiB a rank, valid.
std::string BigBaseYaml() {
  return absl::StrCat(
      "name: big\nmodel: {d_model: 768, n_layers: 12, n_heads: 12, seq_len: 1024,\n"
      "  moe: {num_experts: 8, top_k: 2}}\n"
      "data: {path: \"", ShakespearePath(), "\", tokenizer: char}\n",
      "train: {steps: 10, batch_size: 16}\n");
}

TEST(DaemonAllocation, ShapesBeyondAnyMachineAreRefusedAtSubmit) {
  ParsedSpec base = ParseJobSpec(BigBaseYaml(), "big.yaml", "/");
  ASSERT_TRUE(base.ok()) << FormatSpecErrors(base.errors);
  EXPECT_LT(ComputeModelStats([&] {
              v1::JobSpec s = base.spec;
              s.mutable_model()->set_vocab_size(65);
              return s;
            }()).total_bytes,
            kMaxCpuRankBytes);

  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  auto stub = h.Stub();
  struct Case {
    const char* name;
    void (*shape)(v1::JobSpec*);
    const char* message;
  };
  const Case cases[] = {
      {"d-model",
       [](v1::JobSpec* s) {
         s->mutable_model()->set_d_model(65536);
         s->mutable_model()->set_n_heads(8);
         s->mutable_model()->set_n_kv_heads(8);
         s->mutable_model()->mutable_moe()->set_expert_hidden(4 * 65536);
       },
       "model.d_model: 65536 makes the job need about 77.1 TiB per rank"},
      {"n-layers", [](v1::JobSpec* s) { s->mutable_model()->set_n_layers(4096); },
       "model.n_layers: 4096 makes the job need about 11.4 TiB per rank"},
      {"num-experts",
       [](v1::JobSpec* s) { s->mutable_model()->mutable_moe()->set_num_experts(4096); },
       "model.moe.num_experts: 4096 makes the job need about 5.09 TiB per rank"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    moe::v1::SubmitJobRequest req;
    *req.mutable_spec() = base.spec;
    req.mutable_spec()->set_name(c.name);
    c.shape(req.mutable_spec());
    grpc::ClientContext ctx;
    moe::v1::Job job;
    grpc::Status s = stub->SubmitJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), c.message)) << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(),
                                  "more than the 2 TiB one machine's memory can hold; lower "))
        << s.error_message();
  }
}

TEST(DaemonAllocation, EstimatesSaturateInsteadOfOverflowing) {
  // Every dimension at its largest allowed value: the estimate stays positive and refused.
  ParsedSpec base = ParseJobSpec(BigBaseYaml(), "big.yaml", "/");
  ASSERT_TRUE(base.ok());
  v1::JobSpec s = base.spec;
  v1::ModelSpec* m = s.mutable_model();
  m->set_d_model(1 << 16);
  m->set_n_heads(8);
  m->set_n_kv_heads(8);
  m->set_n_layers(1 << 12);
  m->set_seq_len(1 << 20);
  m->set_vocab_size(1 << 16);
  m->mutable_moe()->set_num_experts(1 << 12);
  m->mutable_moe()->set_expert_hidden(1 << 20);
  s.mutable_train()->set_batch_size(2147483647);
  const ModelStats stats = ComputeModelStats(s);
  EXPECT_GT(stats.total_bytes, kMaxCpuRankBytes);
  EXPECT_GT(stats.activation_bytes, 0);
  std::vector<SpecError> errors = ValidateJobSpec(s);
  // The other error: shakespeare is too short for sequences of 2^20.
  ASSERT_EQ(errors.size(), 2u) << FormatSpecErrors(errors);
  EXPECT_EQ(errors[1].field, "data.path") << FormatSpecErrors(errors);
  EXPECT_TRUE(absl::StrContains(errors[0].message, "makes the job need about")) << errors[0].message;
}

TEST(DaemonAllocation, AWorkerOutOfMemoryFailsWithTheReasonInWords) {
  // The real worker under `ulimit -v` of about 2.9 GiB, with a job whose parameters, gradients
  // and AdamW moments need 12 GiB: within the limit for a large machine, not for this one.
  const std::string dir = MakeTempDir("moe-oom-");
  const std::string wrapper = dir + "/moe-worker-ulimit.sh";
  std::ofstream(wrapper) << "#!/bin/sh\nulimit -v 3000000\nexec " << BinDir()
                         << "/moe-worker \"$@\"\n";
  chmod(wrapper.c_str(), 0700);
  HarnessOptions o;
  o.worker_bin = wrapper;
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string job = dir + "/oom.yaml";
  std::ofstream(job) << "name: oom\nmodel: {d_model: 128, n_layers: 4, n_heads: 4, seq_len: 64,\n"
                     << "  moe: {num_experts: 2048, top_k: 2, expert_hidden: 256}}\n"
                     << "data: {path: \"" << ShakespearePath() << "\", tokenizer: char}\n"
                     << "train: {steps: 5, batch_size: 4}\n"
                     << "resources: {ranks: 1, device: cpu, launcher: local}\n";
  CommandResult r = h.Moectl({"submit", job});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string id = r.out.substr(0, r.out.find('\n'));
  moe::v1::Job j = h.WaitFor(
      id, [](const moe::v1::Job& x) { return x.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 120);
  EXPECT_EQ(j.state(), moe::v1::JOB_STATE_FAILED) << j.reason();
  EXPECT_TRUE(absl::StrContains(j.reason(), "rank 0 exited with code 1")) << j.reason();
  EXPECT_TRUE(absl::StrContains(
      j.reason(), "moe-worker rank 0: out of host memory: could not allocate 12 GiB for the model's parameters, "
                  "gradients and AdamW moments, while building the model (the job needs about"))
      << j.reason();
  EXPECT_TRUE(absl::StrContains(j.reason(), "ulimit -v 2.86 GiB")) << j.reason();
  EXPECT_TRUE(absl::StrContains(j.reason(), "or use more ranks")) << j.reason();
  EXPECT_FALSE(absl::StrContains(j.reason(), "signal")) << j.reason();
}

// One rank out of memory while its peer has built its part and waits for it in the first
// collective: before, the failed rank returned and waited in MPI_Finalize while its peer waited
// for it until the communication deadline (300 s; on GPUs, forever). Now the failed rank ends the
// whole job at once and moed names it and its line.
TEST(DaemonAllocation, ARankOutOfMemoryAloneEndsTheWholeJobAtOnce) {
  const std::string dir = MakeTempDir("moe-oom-rank-");
  const std::string wrapper = dir + "/moe-worker-ulimit.sh";
  std::ofstream(wrapper) << "#!/bin/sh\nif [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then ulimit -v 3000000; fi\nexec "
                         << BinDir() << "/moe-worker \"$@\"\n";
  chmod(wrapper.c_str(), 0700);
  HarnessOptions o;
  o.worker_bin = wrapper;
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  // 1024 experts over two ranks: each holds 512 (about 3 GiB with gradients and moments), more
  // than rank 1's limit; rank 0 builds its part and enters the first step.
  const std::string job = dir + "/oom2.yaml";
  std::ofstream(job) << "name: oom-rank\nmodel: {d_model: 128, n_layers: 4, n_heads: 4, seq_len: 64,\n"
                     << "  moe: {num_experts: 1024, top_k: 2, expert_hidden: 256}}\n"
                     << "data: {path: \"" << ShakespearePath() << "\", tokenizer: char}\n"
                     << "train: {steps: 5, batch_size: 4}\n"
                     << "resources: {ranks: 2, device: cpu, launcher: local}\n";
  CommandResult r = h.Moectl({"submit", job});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string id = r.out.substr(0, r.out.find('\n'));
  const auto start = std::chrono::steady_clock::now();
  moe::v1::Job j = h.WaitFor(
      id, [](const moe::v1::Job& x) { return x.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 200);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(j.state(), moe::v1::JOB_STATE_FAILED) << j.reason();
  // Before: 68 s on this machine, and the reason was rank 0's line about a silent peer.
  EXPECT_LT(seconds, 40) << "the job waited for the communication deadline: " << j.reason();
  EXPECT_TRUE(absl::StrContains(j.reason(), "rank 1 stderr: moe-worker rank 1: out of host memory")) << j.reason();
}

// A worker's failure of several lines (a list of problems) reaches the job's reason whole; before,
// only its last line did, which no longer said what the list was about.
TEST(DaemonAllocation, AFailureOfSeveralLinesIsTheReasonWhole) {
  const std::string dir = MakeTempDir("moe-multiline-");
  const std::string worker = dir + "/moe-worker-fails.sh";
  std::ofstream(worker) << "#!/bin/sh\necho 'moe-worker: job x, 1 rank(s)' >&2\n"
                        << "printf 'moe-worker rank 0: init_from: the weights cannot be used:\\nA is NaN\\nB is short\\n' >&2\n"
                        << "exit 1\n";
  chmod(worker.c_str(), 0700);
  HarnessOptions o;
  o.worker_bin = worker;
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string job = dir + "/fails.yaml";
  std::ofstream(job) << "name: fails\nmodel: {d_model: 32, n_layers: 1, n_heads: 2, seq_len: 16}\n"
                     << "data: {path: \"" << ShakespearePath() << "\", tokenizer: char}\n"
                     << "train: {steps: 1, batch_size: 2}\n"
                     << "resources: {ranks: 1, device: cpu, launcher: local}\n";
  CommandResult r = h.Moectl({"submit", job});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string id = r.out.substr(0, r.out.find('\n'));
  moe::v1::Job j = h.WaitFor(
      id, [](const moe::v1::Job& x) { return x.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 60);
  EXPECT_EQ(j.state(), moe::v1::JOB_STATE_FAILED) << j.reason();
  EXPECT_TRUE(absl::StrContains(
      j.reason(), "rank 0 stderr: moe-worker rank 0: init_from: the weights cannot be used: | A is NaN | B is short"))
      << j.reason();
}

}  // namespace
}  // namespace moe::testing
