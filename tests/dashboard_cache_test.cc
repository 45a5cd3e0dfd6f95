// The dashboard's per-job cache of points and log lines: bounded, and a job whose entry was
// dropped shows everything again when visited next (read back from the store).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/dashboard.h"
#include "daemon/job_store.h"
#include "tests/support/paths.h"

namespace moe::daemon {
namespace {

moe::v1::JobSpec Spec(int i) {
  moe::v1::JobSpec s;
  s.set_name(absl::StrCat("cached-", i));
  s.mutable_resources()->set_ranks(1);
  s.mutable_train()->set_steps(10);
  return s;
}

TEST(DashboardCache, KeepsTheRecentlyShownJobsAndRereadsTheOthers) {
  const std::string dir = moe::testing::MakeTempDir("dashboard_cache");
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(dir + "/moed.db");
  ASSERT_TRUE(store.ok()) << store.status();
  const size_t jobs = Dashboard::kCachedJobs + 5;
  std::vector<std::string> ids;
  for (size_t i = 0; i < jobs; ++i) {
    absl::StatusOr<JobRecord> rec = (*store)->CreateJob(Spec(static_cast<int>(i)), "", dir + "/jobs", "queued");
    ASSERT_TRUE(rec.ok()) << rec.status();
    ids.push_back(rec->job.id());
    for (int step = 1; step <= 3; ++step) {
      moe::v1::MetricPoint p;
      p.set_step(step);
      p.set_loss(5.0 - step);
      ASSERT_TRUE((*store)->AddMetric(ids.back(), 0, p).ok());
    }
  }
  Dashboard dash(store->get());
  for (const std::string& id : ids) {
    absl::StatusOr<std::string> page = dash.JobPage(id);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_TRUE(absl::StrContains(*page, "data-points=\"3\"")) << id;
    EXPECT_LE(dash.cached_jobs(), Dashboard::kCachedJobs);
  }
  EXPECT_EQ(dash.cached_jobs(), Dashboard::kCachedJobs);
  // The first job left the cache long ago: its page still has all of its points, and one more.
  moe::v1::MetricPoint p;
  p.set_step(4);
  p.set_loss(0.5);
  ASSERT_TRUE((*store)->AddMetric(ids.front(), 0, p).ok());
  absl::StatusOr<std::string> page = dash.JobPage(ids.front());
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(absl::StrContains(*page, "data-points=\"4\""));
  EXPECT_EQ(dash.cached_jobs(), Dashboard::kCachedJobs);
  // The SVG of a job shown last is still whole.
  absl::StatusOr<std::string> svg = dash.JobChartsSvg(ids.back());
  ASSERT_TRUE(svg.ok()) << svg.status();
  EXPECT_TRUE(absl::StrContains(*svg, "<svg"));
}

}  // namespace
}  // namespace moe::daemon
