// Which files a job may read (data) and write (checkpoints): moed checks a job's paths at submit
// and each worker again when it opens them, with symlinks resolved, so that a job never reaches
// a file through moed (often root) that its submitter could not name on purpose.
//   roots given (moed --data-root / --checkpoint-root, passed to workers in MOE_DATA_ROOTS /
//   MOE_CHECKPOINT_ROOTS): the resolved path must lie under one of them;
//   no roots: anything but the system's own directories (/etc, /proc, /sys, /dev, /boot, /root,
//   /usr, /bin, /sbin, /lib*, /var/lib, /run) and, for checkpoints, / itself.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moe/v1/job.pb.h"

namespace moe {

struct PathPolicy {
  std::vector<std::string> data_roots;
  std::vector<std::string> checkpoint_roots;

  // From MOE_DATA_ROOTS / MOE_CHECKPOINT_ROOTS (':'-separated), as moed sets them for workers.
  static PathPolicy FromEnvironment();
  // The same variables, for a launcher to pass on ("" values when no roots are set).
  std::string DataRootsEnv() const;
  std::string CheckpointRootsEnv() const;
};

// The path with every symlink resolved (the part that does not exist yet kept as written).
std::string ResolvePath(const std::string& path);

// PermissionDenied naming field, the path, what it resolves to and the rule; OK when allowed.
absl::Status CheckDataPath(const PathPolicy& policy, const std::string& field,
                           const std::string& path);
absl::Status CheckCheckpointPath(const PathPolicy& policy, const std::string& field,
                                 const std::string& path);

// Every path of a spec: data.path, data.tokenizer_dir, data.cache_dir (read and written with
// the data) and checkpoint.dir ("" = moed's own directory, always allowed).
absl::Status CheckSpecPaths(const PathPolicy& policy, const moe::v1::JobSpec& spec);

}  // namespace moe
