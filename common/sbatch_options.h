// The sbatch options a job may add (resources.slurm.extra_sbatch_args): an allowlist of options
// that place or limit the job but cannot change who it runs as, its environment, where its
// output goes or what script runs. moectl/moed validation and SlurmLauncher use the same check.
#pragma once

#include <string>
#include <string_view>

namespace moe {

// "" when arg (one argv entry: "--qos=high", "--exclusive", "-pgpu") is allowed; otherwise
// why not, naming the option, e.g. "--uid=0 is refused: it changes who the job runs as".
std::string RefusedSbatchOption(std::string_view arg);

}  // namespace moe
