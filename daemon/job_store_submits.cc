// JobStore::FindSubmit: the job an earlier submit with the same request_id created, so that a
// client that lost a submit's answer can send it again without a second job.
#include "absl/strings/str_cat.h"
#include "daemon/job_store.h"
#include "daemon/sqlite_util.h"
#include "google/protobuf/util/message_differencer.h"

namespace moe::daemon {

absl::StatusOr<std::optional<JobRecord>> JobStore::FindSubmit(const std::string& request_id,
                                                              const moe::v1::JobSpec& spec) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "SELECT job_id, spec FROM submit_requests WHERE request_id = ?");
  q.Bind(1, request_id);
  const int rc = q.Step();
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) return Error("look up the submit's request_id");
  const std::string job_id = q.Text(0);
  moe::v1::JobSpec first;
  if (!first.ParseFromString(q.Text(1)) || !google::protobuf::util::MessageDifferencer::Equals(first, spec)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "request_id \"", request_id, "\" was already used by the submit that created job ", job_id,
        ", with another job spec; give this submit a request_id of its own (moectl submit --request-id), "
        "or see that job with moectl status ", job_id));
  }
  absl::StatusOr<JobRecord> job = GetJobLocked(job_id);
  if (!job.ok()) return job.status();
  return std::optional<JobRecord>(*std::move(job));
}

}  // namespace moe::daemon
