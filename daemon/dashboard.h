// Dashboard: the HTML pages on moed's HTTP port: `/` lists the jobs (state, progress, ETA,
// reason); `/jobs/ID` shows one job's charts (common/svg_charts.h) and the tail of its log, and
// reloads itself every few seconds while the job is not final.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "daemon/job_store.h"

namespace moe::daemon {

class Dashboard {
 public:
  explicit Dashboard(JobStore* store) : store_(store) {}
  std::string JobsPage();
  // NotFound for an unknown job.
  absl::StatusOr<std::string> JobPage(const std::string& id);
  // The job's charts as one SVG document (what `moectl metrics --svg` writes).
  absl::StatusOr<std::string> JobChartsSvg(const std::string& id);

  static constexpr int kRefreshSeconds = 5;
  static constexpr size_t kLogTail = 60;
  // Jobs whose points the pages keep between visits; the least recently shown beyond these are
  // dropped (read again from the store when shown next).
  static constexpr size_t kCachedJobs = 16;
  size_t cached_jobs();

 private:
  // What the pages have read of a job so far, by store rowid: the newest point per step (a
  // restart replays steps) and the last lines.
  struct JobCache {
    int64_t metric_cursor = 0;
    std::map<int64_t, moe::v1::MetricPoint> by_step;
    int64_t log_cursor = 0;
    std::deque<moe::v1::LogLine> tail;
    uint64_t used = 0;  // uses_ when last shown
  };
  // Brings the job's cache up to date and returns a copy of it.
  JobCache Refresh(const std::string& id);

  JobStore* const store_;
  std::mutex mu_;
  std::map<std::string, JobCache> cache_ ABSL_GUARDED_BY(mu_);
  uint64_t uses_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moe::daemon
