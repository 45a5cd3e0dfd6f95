// device: cuda jobs on the local launcher, through the real moed and moectl with a stand-in
// worker (no GPU needed): moed counts the GPUs it sees (here CUDA_VISIBLE_DEVICES=3,5), refuses
// at submit a job needing more, gives each job its own GPUs through CUDA_VISIBLE_DEVICES (and
// NCCL_NVLS_ENABLE=0), queues a job until enough GPUs are free, and shows the placement.
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "common/job_spec.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

using moe::v1::Job;

// Stands in for moe-worker: prints the GPUs it was given, then runs until SIGTERM.
std::string GpuWorkerScript() {
  const std::string path = MakeTempDir("moe-gpu-worker-") + "/gpu_worker.sh";
  std::ofstream(path) << R"(#!/bin/sh
echo "rank ${OMPI_COMM_WORLD_RANK:-0} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE-unset}"
trap 'exit 143' TERM
while :; do sleep 0.1 & wait $!; done
)";
  chmod(path.c_str(), 0755);
  return path;
}

HarnessOptions GpuOptions(const std::string& visible) {
  unsetenv("NCCL_NVLS_ENABLE");  // moed passes the ranks 0 unless its environment sets it
  HarnessOptions o;
  o.max_ranks = 2;
  o.worker_bin = GpuWorkerScript();
  o.cancel_grace_s = 5;
  o.env = {{"CUDA_VISIBLE_DEVICES", visible}};
  return o;
}

std::string CudaJob(DaemonHarness& h, const std::string& name, int ranks) {
  const std::string path = h.WriteJob(name, ranks, 10);
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(path) << absl::StrReplaceAll(text, {{"device: cpu", "device: cuda"}});
  return path;
}

std::string SubmitOk(DaemonHarness& h, const std::string& path) {
  CommandResult r = h.Moectl({"submit", path});
  EXPECT_EQ(r.exit_code, 0) << r.err << h.MoedLog();
  return r.out.substr(0, r.out.find('\n'));
}

bool LogSays(DaemonHarness& h, const std::string& id, const std::string& text) {
  for (const moe::v1::LogLine& l : h.AllLogs(id)) {
    if (absl::StrContains(l.text(), text)) return true;
  }
  return false;
}

TEST(DaemonGpu, CudaJobNeedingMoreGpusThanMoedSeesIsRefusedAtSubmit) {
  {
    DaemonHarness h(GpuOptions("3,5"));
    ASSERT_TRUE(h.Start()) << h.MoedLog();
    CommandResult r = h.Moectl({"submit", CudaJob(h, "too-big", 4)});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(absl::StrContains(r.err, "asks for 4 ranks, but moed sees only 2 GPUs")) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "lower resources.ranks to 2")) << r.err;
    CommandResult list = h.Moectl({"list"});
    EXPECT_FALSE(absl::StrContains(list.out, "too-big")) << list.out;
  }
  DaemonHarness none(GpuOptions(""));
  ASSERT_TRUE(none.Start()) << none.MoedLog();
  CommandResult r = none.Moectl({"submit", CudaJob(none, "no-gpu", 1)});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "moed sees no GPU")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "use device: cpu")) << r.err;
}

// moed --gpu-memory: a cuda job whose memory estimate (common/memory_fit.h) is more than one GPU
// holds is refused at submit with FAILED_PRECONDITION, the numbers and the levers, unless the
// job allows oversubscribing; one that fits is taken.
TEST(DaemonGpu, CudaJobOverTheGpuMemoryIsRefusedAtSubmit) {
  HarnessOptions o = GpuOptions("3,5");
  o.extra_args = {"--gpu-memory", "700MiB"};
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string path = CudaJob(h, "over-memory", 1);
  CommandResult r = h.Moectl({"submit", path});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "does not fit the memory of moed's GPUs (700 MiB each")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "over")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "train.optimizer_state: int8 saves about")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "resources.allow_oversubscribe_memory: true")) << r.err;
  EXPECT_FALSE(absl::StrContains(h.Moectl({"list"}).out, "over-memory"));

  // The gRPC code itself.
  ParsedSpec parsed = LoadJobSpecFile(path);
  ASSERT_TRUE(parsed.ok());
  moe::v1::SubmitJobRequest req;
  *req.mutable_spec() = parsed.spec;
  grpc::ClientContext ctx;
  Job job;
  EXPECT_EQ(h.Stub()->SubmitJob(&ctx, req, &job).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // Allowed to oversubscribe: taken.
  std::string text;
  {
    std::ifstream in(path);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const std::string allowed = h.work_dir() + "/allowed.yaml";
  std::ofstream(allowed) << absl::StrReplaceAll(
      text, {{"name: over-memory", "name: allowed"},
             {"device: cuda", "device: cuda\n  allow_oversubscribe_memory: true"}});
  SubmitOk(h, allowed);
}

TEST(DaemonGpu, CudaJobThatFitsTheGpuMemoryIsTaken) {
  HarnessOptions o = GpuOptions("3");
  o.extra_args = {"--gpu-memory", "80GiB"};
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  SubmitOk(h, CudaJob(h, "fits", 1));
}

TEST(DaemonGpu, BadGpuMemoryFlagStopsMoed) {
  HarnessOptions o = GpuOptions("3");
  o.extra_args = {"--gpu-memory", "80XB"};
  DaemonHarness h(o);
  EXPECT_FALSE(h.Start());
  EXPECT_EQ(h.start_exit_code(), 2);
  EXPECT_TRUE(absl::StrContains(h.MoedLog(), "--gpu-memory: '80XB': unknown unit 'XB'")) << h.MoedLog();
}

TEST(DaemonGpu, CudaJobsGetTheirOwnGpusAndWaitForBusyOnes) {
  DaemonHarness h(GpuOptions("3,5"));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string a = SubmitOk(h, CudaJob(h, "gpu-a", 1));
  const std::string b = SubmitOk(h, CudaJob(h, "gpu-b", 1));
  const std::string c = SubmitOk(h, CudaJob(h, "gpu-c", 2));
  ASSERT_EQ(h.WaitForState(a, moe::v1::JOB_STATE_RUNNING, 30).state(), moe::v1::JOB_STATE_RUNNING);
  ASSERT_EQ(h.WaitForState(b, moe::v1::JOB_STATE_RUNNING, 30).state(), moe::v1::JOB_STATE_RUNNING);
  Job ja = h.WaitFor(a, [&](const Job&) { return LogSays(h, a, "CUDA_VISIBLE_DEVICES"); }, 30);
  h.WaitFor(b, [&](const Job&) { return LogSays(h, b, "CUDA_VISIBLE_DEVICES"); }, 30);
  EXPECT_TRUE(LogSays(h, a, "rank 0 CUDA_VISIBLE_DEVICES=3 NCCL_NVLS_ENABLE=0")) << h.MoedLog();
  EXPECT_TRUE(LogSays(h, b, "rank 0 CUDA_VISIBLE_DEVICES=5 NCCL_NVLS_ENABLE=0")) << h.MoedLog();
  ASSERT_EQ(ja.gpus_size(), 1);
  EXPECT_EQ(ja.gpus(0), "3");
  CommandResult status = h.Moectl({"status", a});
  EXPECT_TRUE(absl::StrContains(status.out, "ranks     1, device cuda on GPUs 3\n")) << status.out;

  // c needs both GPUs: it waits until a and b are gone, then gets them.
  Job jc = h.WaitFor(c, [](const Job& j) { return absl::StrContains(j.reason(), "GPUs"); }, 10);
  EXPECT_EQ(jc.state(), moe::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(jc.reason(), "waiting for 2 GPUs: 2 of 2 in use");
  EXPECT_EQ(h.Moectl({"cancel", a}).exit_code, 0);
  jc = h.WaitFor(c, [](const Job& j) { return absl::StrContains(j.reason(), "1 of 2"); }, 10);
  EXPECT_EQ(jc.state(), moe::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(jc.reason(), "waiting for 2 GPUs: 1 of 2 in use");
  EXPECT_EQ(h.Moectl({"cancel", b}).exit_code, 0);
  ASSERT_EQ(h.WaitForState(c, moe::v1::JOB_STATE_RUNNING, 30).state(), moe::v1::JOB_STATE_RUNNING);
  // Each rank's line, whichever rank starts last (under load rank 0 can be the later one).
  h.WaitFor(c, [&](const Job&) {
    return LogSays(h, c, "rank 0 CUDA_VISIBLE_DEVICES") &&
           LogSays(h, c, "rank 1 CUDA_VISIBLE_DEVICES");
  }, 30);
  EXPECT_TRUE(LogSays(h, c, "rank 0 CUDA_VISIBLE_DEVICES=3,5 NCCL_NVLS_ENABLE=0"));
  EXPECT_TRUE(LogSays(h, c, "rank 1 CUDA_VISIBLE_DEVICES=3,5 NCCL_NVLS_ENABLE=0"));
  CommandResult cancel = h.Moectl({"cancel", c});
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;
  EXPECT_TRUE(ProcessesMentioning(h.state_dir() + "/jobs/").empty());
}

}  // namespace
}  // namespace moe::testing
