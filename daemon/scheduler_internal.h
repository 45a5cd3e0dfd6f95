// What scheduler.cc and scheduler_attempts.cc share: one line to moed's log, and a state change
// applied to a record (with its timestamps) before it is stored.
#pragma once

#include <string>

#include "daemon/job_store.h"
#include "moe/v1/job.pb.h"

namespace moe::daemon {

void LogDaemon(const std::string& msg);
void ApplyState(JobRecord& rec, moe::v1::JobState state, const std::string& reason);

}  // namespace moe::daemon
