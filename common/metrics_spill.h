// The metrics spill file: the metric points a rank's reporter could not deliver to moed before the
// rank exited (moed was away at the end), left in the attempt's folder for moed to store when it
// reaps the attempt. Written by worker/report/reporter.cc, read by the scheduler.
//
// Format: MetricPoint messages, each preceded by its size as a varint (protobuf's
// length-delimited framing), nothing else; written with temp file + fsync + rename.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moe/v1/metrics.pb.h"

namespace moe {

// <attempt_dir>/unsent-metrics.rank<R>.pb
std::string MetricsSpillPath(const std::string& attempt_dir, int rank);
// Part `part` (1, 2, ...) of a rank's spill, written while the rank still runs when moed has been
// away for longer than the reporter's queue holds: <spill path without .pb>.part<N>.pb.
std::string MetricsSpillPartPath(const std::string& spill_path, int part);
// The spill files (parts included) of any rank in attempt_dir, sorted; none when the folder is absent.
std::vector<std::string> MetricsSpillFiles(const std::string& attempt_dir);

absl::Status WriteMetricsSpill(const std::string& path,
                               const std::vector<moe::v1::MetricPoint>& points);
// Adds records at the end (no temp file: a write cut short leaves a damaged last record, which
// ReadMetricsSpill reports and skips).
absl::Status AppendMetricsSpill(const std::string& path, const std::vector<moe::v1::MetricPoint>& points);

struct MetricsSpill {
  std::vector<moe::v1::MetricPoint> points;  // every record before the first bad one
  // "" when the whole file parsed; else what is wrong and at which byte (the rest is unread).
  std::string damage;
};
// NotFound when there is no file; a damaged file is OK with what parsed and its damage.
absl::StatusOr<MetricsSpill> ReadMetricsSpill(const std::string& path);

}  // namespace moe
