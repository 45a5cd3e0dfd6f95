// PrometheusExporter: moed's /metrics in the text exposition format, named after the Prometheus
// naming guide: counters end in _total, gauges carry their unit (_seconds, _bytes, _ratio), and
// every job series has the labels job_id and name (per layer also layer; per expert also expert and
// the rank that holds it). A job's series stay exported for a retention time after it ends.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "daemon/job_store.h"

namespace moe::daemon {

class PrometheusExporter {
 public:
  // retention: how long a finished job's final values stay exported.
  PrometheusExporter(JobStore* store, std::chrono::milliseconds retention)
      : store_(store), retention_(retention) {}
  std::string Render();

 private:
  // Running sums over a job's stored metric points, read incrementally by store rowid.
  struct Totals {
    int64_t cursor = 0;     // last metric rowid folded in
    int64_t max_step = 0;   // newest step folded in: a restart's replayed steps add nothing
    bool has_val = false;
    double val_loss = 0;    // the newest val loss
    // (layer, expert) -> assignments; layer -> dropped assignments.
    std::map<std::pair<int, int>, int64_t> expert_tokens;
    std::map<int, int64_t> dropped;
  };
  void Fold(const std::string& job_id, Totals& t);

  JobStore* const store_;
  const std::chrono::milliseconds retention_;
  std::mutex mu_;
  std::map<std::string, Totals> totals_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::daemon
