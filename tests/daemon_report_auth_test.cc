// Worker reports are authenticated per launch: moed gives each launch a secret
// (MOE_REPORT_SECRET) and accepts a report stream only with it, for a rank the job has, and
// metrics only at steps the job can reach. A spoofed report is PERMISSION_DENIED.
#include <string>

#include "absl/strings/match.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "moe/v1/worker.grpc.pb.h"
#include "tests/support/daemon_harness.h"

namespace moe::testing {
namespace {


// One report stream: hello (job, rank of world_size, attempt 0), then a metric at step.
grpc::Status SendReport(const std::string& address, const std::string& job, int rank,
                        int world_size, const std::string& secret, int64_t step) {
  auto stub = moe::v1::WorkerReportService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!secret.empty()) ctx.AddMetadata("x-moe-report-secret", secret);
  moe::v1::ReportAck ack;
  auto writer = stub->Report(&ctx, &ack);
  moe::v1::WorkerReport msg;
  moe::v1::WorkerHello* hello = msg.mutable_hello();
  hello->set_job_id(job);
  hello->set_rank(rank);
  hello->set_world_size(world_size);
  hello->set_attempt(0);
  writer->Write(msg);
  moe::v1::WorkerReport metric;
  metric.mutable_metrics()->set_step(step);
  metric.mutable_metrics()->set_loss(1.5);
  writer->Write(metric);
  writer->WritesDone();
  return writer->Finish();
}

TEST(DaemonReportAuth, SpoofedReportsArePermissionDenied) {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 2;
  o.env = {{"FAKE_STEPS", "100000"}, {"FAKE_STEP_SECONDS", "0.2"}};
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("spoof", 1, 100)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_EQ(h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30).state(),
            moe::v1::JOB_STATE_RUNNING);
  const std::string secret = h.ReportSecret(id);
  ASSERT_EQ(secret.size(), 32u);

  // The report: rank 7 of a 1-rank job, a metric at step 999999, no secret.
  grpc::Status s = SendReport(h.address(), id, 7, 8, "", 999999);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "without report secret")) << s.error_message();
  // A wrong secret.
  s = SendReport(h.address(), id, 0, 1, std::string(32, '0'), 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  // The right secret, a rank the job does not have.
  s = SendReport(h.address(), id, 7, 8, secret, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "no such rank")) << s.error_message();
  // The right secret and rank, a step the job cannot reach.
  s = SendReport(h.address(), id, 0, 1, secret, 999999);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  // LastLogSeq wants the secret too.
  {
    auto stub = moe::v1::WorkerReportService::NewStub(
        grpc::CreateChannel(h.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    moe::v1::WorkerHello hello;
    hello.set_job_id(id);
    hello.set_world_size(1);
    moe::v1::ReportAck ack;
    EXPECT_EQ(stub->LastLogSeq(&ctx, hello, &ack).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  // None of it was stored; the job runs on.
  EXPECT_TRUE(h.AllMetrics(id).empty());
  // What the launched rank would send is accepted.
  s = SendReport(h.address(), id, 0, 1, secret, 3);
  EXPECT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(h.AllMetrics(id).size(), 1u);
  EXPECT_EQ(h.AllMetrics(id)[0].step(), 3);
  EXPECT_EQ(h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 1).state(), moe::v1::JOB_STATE_RUNNING);
  ASSERT_EQ(h.Moectl({"cancel", id}).exit_code, 0);
}

}  // namespace
}  // namespace moe::testing
