// Reporter: a rank's link to moed's WorkerReportService: log lines, metric points and heartbeats
// sent from a background thread, so training never waits on the network. It reconnects with
// backoff when moed restarts and resends what moed has not stored (moed tells it on reconnect);
// metric points still unconfirmed when it closes go to a spill file moed reads after the attempt.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "moe/v1/metrics.pb.h"

namespace moe {

struct ReporterOptions {
  std::string moed_address;  // "" = a reporter that does nothing (standalone runs)
  std::string job_id;
  int rank = 0;
  int world_size = 1;
  int attempt = 0;
  // Bearer token; "" = take it from the MOE_TOKEN environment variable (if set).
  std::string token;
  // The launch's report secret moed checks on every report; "" = MOE_REPORT_SECRET (if set).
  std::string report_secret;
  // Where Close() leaves the metric points moed has not confirmed (common/metrics_spill.h), for
  // moed to store when it reaps the attempt; "" = they are lost (runs not launched by moed).
  std::string spill_path;
  // What the reporter keeps in memory of what moed has not confirmed (metric points, and log
  // lines while moed wants them reported), each: beyond it the oldest go, and once moed confirms
  // again one line says how many and which steps (never a silent hole). 0 = 32 MiB; tests set a
  // small one.
  size_t max_held_bytes = 0;
};

class Reporter {
 public:
  // Never blocks: the connection is made by the background thread.
  static std::unique_ptr<Reporter> Create(const ReporterOptions& opts);
  virtual ~Reporter();  // Close()s
  Reporter(const Reporter&) = delete;
  Reporter& operator=(const Reporter&) = delete;

  // One log line of this rank (already printed to its stdout). Once moed's ack says it reads the
  // rank's output files itself (logs_from_output: the local launcher) lines are neither kept nor
  // sent. Otherwise (Slurm) each is kept until moed stores it; past max_held_bytes the oldest is
  // dropped and counted, and the loss is said in the job's log once moed confirms again.
  void Log(const std::string& line);
  // Rank 0 calls this each log interval.
  void Metrics(const moe::v1::MetricPoint& point);
  // Heartbeats (every ~2 s) carry the latest step.
  void SetStep(int64_t step);
  // Sends what is queued with a short deadline (~3 s) and stops the thread; metric points moed
  // has not confirmed by then are written to spill_path. Idempotent.
  void Close();

  int64_t dropped_lines() const;   // reported log lines lost to the bound (none with logs_from_output)
  int64_t dropped_metrics() const;  // metric points lost to the bound (spill unwritable too)
  bool connected() const;

  struct Impl;

 private:
  explicit Reporter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
