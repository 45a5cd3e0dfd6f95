// A submit's request_id (SubmitJobRequest.request_id, moectl submit --request-id): a submit sent
// again answers with the job the first one created, never a second job, also when the two
// arrive at once; another spec under a used request_id is ALREADY_EXISTS; a malformed one is
// INVALID_ARGUMENT; moectl delete frees it.
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "common/job_spec.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"

namespace moe::testing {
namespace {

HarnessOptions SlowFake() {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 5;
  o.env = {{"FAKE_STEPS", "100000"}, {"FAKE_STEP_SECONDS", "0.2"}};
  return o;
}

moe::v1::JobSpec LoadSpec(const std::string& path) {
  absl::StatusOr<moe::v1::JobSpec> spec = LoadJobSpec(path);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : moe::v1::JobSpec();
}

grpc::Status Submit(DaemonHarness& h, const moe::v1::JobSpec& spec, const std::string& request_id,
                    moe::v1::Job* job) {
  moe::v1::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  req.set_request_id(request_id);
  grpc::ClientContext ctx;
  return h.Stub()->SubmitJob(&ctx, req, job);
}

int JobCount(DaemonHarness& h) {
  grpc::ClientContext ctx;
  moe::v1::ListJobsResponse resp;
  EXPECT_TRUE(h.Stub()->ListJobs(&ctx, moe::v1::ListJobsRequest(), &resp).ok());
  return resp.jobs_size();
}

TEST(SubmitRequestId, ASubmitSentAgainGetsTheFirstJob) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const moe::v1::JobSpec spec = LoadSpec(h.WriteJob("again", 1, 5));
  moe::v1::Job first, second;
  ASSERT_TRUE(Submit(h, spec, "build-42.attempt:1", &first).ok());
  grpc::Status s = Submit(h, spec, "build-42.attempt:1", &second);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(second.id(), first.id());
  EXPECT_EQ(JobCount(h), 1);
  // Without a request_id every submit is a job of its own, as before.
  moe::v1::Job plain1, plain2;
  ASSERT_TRUE(Submit(h, spec, "", &plain1).ok());
  ASSERT_TRUE(Submit(h, spec, "", &plain2).ok());
  EXPECT_NE(plain1.id(), plain2.id());
  EXPECT_EQ(JobCount(h), 3);

  // Another spec under a used request_id: refused, naming the job that has it.
  moe::v1::JobSpec other = spec;
  other.mutable_train()->set_steps(spec.train().steps() + 1);
  moe::v1::Job job;
  s = Submit(h, other, "build-42.attempt:1", &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_TRUE(absl::StrContains(s.error_message(), first.id())) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "request_id of its own")) << s.error_message();
  EXPECT_EQ(JobCount(h), 3);
}

TEST(SubmitRequestId, ATwinSentAtTheSameTimeMakesOneJob) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const moe::v1::JobSpec spec = LoadSpec(h.WriteJob("twins", 1, 5));
  constexpr int kSenders = 6;
  std::vector<moe::v1::Job> jobs(kSenders);
  std::vector<grpc::Status> status(kSenders);
  std::vector<std::thread> senders;
  for (int i = 0; i < kSenders; ++i) {
    senders.emplace_back([&, i] { status[i] = Submit(h, spec, "same-for-all", &jobs[i]); });
  }
  for (std::thread& t : senders) t.join();
  for (int i = 0; i < kSenders; ++i) {
    ASSERT_TRUE(status[i].ok()) << i << ": " << status[i].error_message();
    EXPECT_EQ(jobs[i].id(), jobs[0].id());
  }
  EXPECT_EQ(JobCount(h), 1);
}

TEST(SubmitRequestId, MalformedIdsAreRefusedAndDeleteFreesOne) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const moe::v1::JobSpec spec = LoadSpec(h.WriteJob("ids", 1, 5));
  for (const std::string& bad : {std::string(129, 'a'), std::string("has space"), std::string("tab\there"),
                                 std::string("caf\xc3\xa9")}) {
    moe::v1::Job job;
    grpc::Status s = Submit(h, spec, bad, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_TRUE(absl::StrContains(s.error_message(), "request_id: a request id is 1 to 128")) << s.error_message();
  }
  EXPECT_EQ(JobCount(h), 0);

  moe::v1::Job first;
  ASSERT_TRUE(Submit(h, spec, "reused", &first).ok());
  ASSERT_EQ(h.Moectl({"cancel", first.id()}).exit_code, 0);
  CommandResult del = h.Moectl({"delete", first.id()});
  ASSERT_EQ(del.exit_code, 0) << del.err;
  moe::v1::Job again;
  ASSERT_TRUE(Submit(h, spec, "reused", &again).ok());
  EXPECT_NE(again.id(), first.id());
}

// moectl submit --request-id: the same command twice prints one job's id; a malformed id is a
// usage error (exit 2) before anything is sent.
TEST(SubmitRequestId, MoectlSubmitWithARequestIdTwiceIsOneJob) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string file = h.WriteJob("cli", 1, 5);
  CommandResult a = h.Moectl({"submit", file, "--request-id", "nightly-2026-12-07"});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  CommandResult b = h.Moectl({"submit", "--request-id", "nightly-2026-12-07", file});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(JobCount(h), 1);
  // Without one, each moectl submit is a job of its own.
  ASSERT_EQ(h.Moectl({"submit", file}).exit_code, 0);
  ASSERT_EQ(h.Moectl({"submit", file}).exit_code, 0);
  EXPECT_EQ(JobCount(h), 3);
  CommandResult bad = h.Moectl({"submit", file, "--request-id", "two words"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_TRUE(absl::StrContains(bad.err, "byte 4 (' ') is not one of them")) << bad.err;
  EXPECT_EQ(JobCount(h), 3);
}

// submit --from a job with no checkpoint: moed's refusal of model.init_from is said as what the
// user asked for (--from JOB), not as a field the job file never set.
TEST(SubmitRequestId, SubmitFromAJobWithoutACheckpointNamesTheFlag) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string file = h.WriteJob("nockpt", 1, 5);
  CommandResult first = h.Moectl({"submit", file});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string id = first.out.substr(0, first.out.find('\n'));
  ASSERT_EQ(h.Moectl({"cancel", id}).exit_code, 0);
  CommandResult from = h.Moectl({"submit", file, "--from", id});
  EXPECT_EQ(from.exit_code, 1) << from.err;
  EXPECT_TRUE(absl::StartsWith(from.err, "moectl: --from " + id + " (model.init_from = its checkpoint directory "))
      << from.err;
  EXPECT_EQ(JobCount(h), 1);
}

}  // namespace
}  // namespace moe::testing
