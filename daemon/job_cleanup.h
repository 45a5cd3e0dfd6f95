// Deleting finished jobs: their store rows (JobStore::DeleteJob), their folder under
// <state-dir>/jobs (spec, rank output files), and on request their checkpoint directory.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "daemon/job_store.h"
#include "moe/v1/control.pb.h"

namespace moe::daemon {

// jobs_root is <state-dir>/jobs: a job folder elsewhere is never removed. NotFound,
// FailedPrecondition (not final) come from the store; nothing is removed then.
absl::StatusOr<moe::v1::DeleteJobResponse> DeleteFinishedJob(JobStore& store,
                                                             const std::string& jobs_root,
                                                             const std::string& id,
                                                             bool checkpoints);

// Every final job that ended at least older_than_ms ago, in one of states (empty = any final).
absl::StatusOr<moe::v1::PruneJobsResponse> PruneJobs(JobStore& store, const std::string& jobs_root,
                                                     const moe::v1::PruneJobsRequest& request);

}  // namespace moe::daemon
