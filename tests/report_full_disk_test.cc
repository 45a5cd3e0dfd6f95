// A full state disk while a job runs: moed answers its reporters RESOURCE_EXHAUSTED (it cannot
// store) and the spill files cannot be written either (they sit on the same disk). The reporter
// keeps what moed has not confirmed and resends it once moed stores again: nothing is lost. What
// its bound (max_held_bytes) drops is said in a "[moed] ... were lost" line, never a silent hole.
// A fake WorkerReportService plays moed, refusing every store while `full` is set.
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/metrics_spill.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "moe/v1/worker.grpc.pb.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"
#include "worker/report/reporter.h"

namespace moe {
namespace {

class FakeMoed final : public moe::v1::WorkerReportService::Service {
 public:
  std::atomic<bool> full{false};

  grpc::Status Report(grpc::ServerContext*, grpc::ServerReader<moe::v1::WorkerReport>* reader,
                      moe::v1::ReportAck* ack) override {
    moe::v1::WorkerReport msg;
    while (reader->Read(&msg)) {
      if (msg.has_hello() || msg.has_heartbeat()) continue;
      if (full) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "database or disk is full");
      std::lock_guard<std::mutex> lock(mu_);
      if (msg.has_metrics()) {
        steps_[msg.metrics().step()] += 1;
        last_step_ = std::max(last_step_, msg.metrics().step());
      } else if (msg.has_log() && msg.log().seq() > last_seq_) {
        lines_.push_back(msg.log().text());
        last_seq_ = msg.log().seq();
      }
    }
    FillAck(ack);
    return grpc::Status::OK;
  }
  grpc::Status LastLogSeq(grpc::ServerContext*, const moe::v1::WorkerHello*, moe::v1::ReportAck* ack) override {
    FillAck(ack);
    return grpc::Status::OK;
  }

  std::map<int64_t, int> steps() {
    std::lock_guard<std::mutex> lock(mu_);
    return steps_;
  }
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }

 private:
  void FillAck(moe::v1::ReportAck* ack) {
    std::lock_guard<std::mutex> lock(mu_);
    ack->set_last_log_seq(last_seq_);
    ack->set_last_metric_step(last_step_);
  }
  std::mutex mu_;
  std::map<int64_t, int> steps_;
  int64_t last_step_ = -1;
  std::vector<std::string> lines_;
  int64_t last_seq_ = 0;
};

struct Fixture {
  FakeMoed service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  Fixture() {
    address = absl::StrCat("127.0.0.1:", testing::FreePort());
    grpc::ServerBuilder b;
    b.AddListeningPort(address, grpc::InsecureServerCredentials());
    b.RegisterService(&service);
    server = b.BuildAndStart();
  }
  ~Fixture() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1)); }
};

moe::v1::MetricPoint Point(int64_t step) {
  moe::v1::MetricPoint p;
  p.set_step(step);
  p.set_loss(1.0 + 1.0 / static_cast<double>(step + 1));
  return p;
}

template <typename F>
bool WaitFor(F done, int seconds = 20) {
  for (int i = 0; i < seconds * 20; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

// The audit's case: moed cannot store for 4500 points (more than the 2000 the queue keeps before
// it spills) and the spill parts cannot be written (the same full disk). All arrive afterwards.
TEST(ReportFullDisk, PointsAndLinesWaitInTheWorkerUntilMoedStoresAgain) {
  Fixture f;
  f.service.full = true;
  const std::string dir = testing::MakeTempDir("moe-full-disk-");
  ReporterOptions o;
  o.moed_address = f.address;
  o.job_id = "j-000001";
  o.spill_path = MetricsSpillPath(dir + "/no-such-folder", 0);  // every spill write fails
  auto reporter = Reporter::Create(o);
  constexpr int64_t kSteps = 4500;
  for (int64_t step = 1; step <= kSteps; ++step) {
    reporter->Metrics(Point(step));
    reporter->Log(absl::StrCat("step ", step, " loss 1.0"));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a few refusals
  EXPECT_TRUE(f.service.steps().empty());
  f.service.full = false;  // room again
  ASSERT_TRUE(WaitFor([&] { return f.service.steps().size() == static_cast<size_t>(kSteps); }))
      << f.service.steps().size() << " points arrived";
  ASSERT_TRUE(WaitFor([&] { return f.service.lines().size() == static_cast<size_t>(kSteps); }))
      << f.service.lines().size() << " lines arrived";
  reporter->Close();
  const std::vector<std::string> lines = f.service.lines();
  for (int64_t i = 0; i < kSteps; ++i) ASSERT_EQ(lines[static_cast<size_t>(i)], absl::StrCat("step ", i + 1, " loss 1.0"));
  EXPECT_EQ(reporter->dropped_lines(), 0);
  EXPECT_EQ(reporter->dropped_metrics(), 0);
  EXPECT_TRUE(MetricsSpillFiles(dir).empty());
}

// Past the bound the oldest go, and the loss is said (count and steps) once moed stores again.
TEST(ReportFullDisk, WhatTheBoundDropsIsSaidOnceMoedStoresAgain) {
  Fixture f;
  f.service.full = true;
  ReporterOptions o;
  o.moed_address = f.address;
  o.job_id = "j-000001";
  o.max_held_bytes = 64 << 10;
  auto reporter = Reporter::Create(o);
  constexpr int64_t kSteps = 3000;
  for (int64_t step = 1; step <= kSteps; ++step) {
    reporter->SetStep(step);
    reporter->Metrics(Point(step));
    reporter->Log(absl::StrCat("step ", step));
  }
  ASSERT_GT(reporter->dropped_lines(), 0);
  ASSERT_GT(reporter->dropped_metrics(), 0);
  const int64_t lost_lines = reporter->dropped_lines(), lost_points = reporter->dropped_metrics();
  f.service.full = false;
  ASSERT_TRUE(WaitFor([&] {
    int notices = 0;
    for (const std::string& l : f.service.lines()) notices += absl::StartsWith(l, "[moed] ");
    return notices == 2;
  }));
  reporter->Close();
  const std::vector<std::string> lines = f.service.lines();
  std::vector<std::string> notices;
  size_t kept = 0;
  for (const std::string& l : lines) {
    if (absl::StartsWith(l, "[moed] ")) {
      notices.push_back(l);
    } else {
      ++kept;
    }
  }
  ASSERT_EQ(notices.size(), 2u);
  EXPECT_EQ(kept + static_cast<size_t>(lost_lines), static_cast<size_t>(kSteps));
  EXPECT_TRUE(absl::StrContains(notices[0], absl::StrCat(lost_lines, " log lines of rank 0 were lost")))
      << notices[0];
  EXPECT_TRUE(absl::StrContains(notices[0], absl::StrCat("(steps 1-", lost_lines, ")"))) << notices[0];
  EXPECT_TRUE(absl::StrContains(notices[1], absl::StrCat(lost_points, " metric points of rank 0 were lost")))
      << notices[1];
  EXPECT_EQ(f.service.steps().size() + static_cast<size_t>(lost_points), static_cast<size_t>(kSteps));
  EXPECT_EQ(f.service.steps().begin()->first, lost_points + 1);  // the oldest went
}

}  // namespace
}  // namespace moe
