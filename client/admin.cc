// moectl delete and prune: remove finished jobs (store rows, logs, and on request checkpoints).
#include <cstdio>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "client/connection.h"

namespace moe::client {
namespace {

void PrintDeleted(const moe::v1::DeleteJobResponse& d, bool dry_run) {
  const moe::v1::Job& j = d.job();
  std::printf("%s %s (%s, %s)\n", dry_run ? "would delete" : "deleted", j.id().c_str(),
              j.spec().name().c_str(), StateName(j.state()).c_str());
  for (const std::string& p : d.removed_paths()) std::printf("  %s %s\n", dry_run ? "would remove" : "removed", p.c_str());
  for (const std::string& p : d.kept_paths()) std::printf("  %s %s\n", dry_run ? "would keep" : "kept", p.c_str());
}

moe::v1::JobState ParseState(const std::string& name) {
  for (int s = moe::v1::JOB_STATE_QUEUED; s <= moe::v1::JOB_STATE_CANCELLED; ++s) {
    if (StateName(static_cast<moe::v1::JobState>(s)) == name) return static_cast<moe::v1::JobState>(s);
  }
  return moe::v1::JOB_STATE_UNSPECIFIED;
}

}  // namespace

int RunDelete(const DeleteOptions& o) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  int rc = 0;
  std::set<std::string> asked;  // an id named twice is deleted once, not refused the second time
  for (const std::string& id : o.ids) {
    if (!asked.insert(id).second) continue;
    grpc::ClientContext ctx;
    PrepareContext(ctx, *config, 60);
    moe::v1::DeleteJobRequest req;
    req.set_id(id);
    req.set_checkpoints(o.checkpoints);
    moe::v1::DeleteJobResponse resp;
    grpc::Status s = stub->DeleteJob(&ctx, req, &resp);
    if (!s.ok()) {
      rc = Fail(DescribeError(s, *config));
      continue;
    }
    PrintDeleted(resp, false);
  }
  return rc;
}

int RunPrune(const PruneOptions& o) {
  moe::v1::PruneJobsRequest req;
  req.set_older_than_ms(o.older_than_ms);
  req.set_checkpoints(o.checkpoints);
  req.set_dry_run(o.dry_run);
  for (const std::string& name : o.states) req.add_states(ParseState(name));
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  grpc::ClientContext ctx;
  PrepareContext(ctx, *config, 300);
  moe::v1::PruneJobsResponse resp;
  grpc::Status s = stub->PruneJobs(&ctx, req, &resp);
  if (!s.ok()) return Fail(DescribeError(s, *config));
  for (const moe::v1::DeleteJobResponse& d : resp.deleted()) PrintDeleted(d, o.dry_run);
  std::printf("%s %d job%s\n", o.dry_run ? "would prune" : "pruned", resp.deleted_size(),
              resp.deleted_size() == 1 ? "" : "s");
  return 0;
}

}  // namespace moe::client
