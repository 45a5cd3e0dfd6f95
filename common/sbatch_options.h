// The sbatch options a job may add (resources.slurm.extra_sbatch_args): an allowlist of options
// that place or limit the job but cannot change who it runs as, its environment, where its
// output goes or what script runs. moectl/moed validation and SlurmLauncher use the same check.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace moe {

// "" when arg (one argv entry: "--qos=high", "--exclusive", "-pgpu") is allowed; otherwise
// why not, naming the option, e.g. "--uid=0 is refused: it changes who the job runs as".
std::string RefusedSbatchOption(std::string_view arg);

// deploy/slurm/moe-job.sbatch.tmpl's `#SBATCH --signal=B:USR1@300`: Slurm signals the batch
// script this long before the time limit (and up to 60 s earlier); it checkpoints and requeues.
inline constexpr int kSignalLeadSeconds = 300;

// The limit a Slurm time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) sets, in seconds, rounded up to
// whole minutes as Slurm keeps it; 0 for no limit (0, UNLIMITED, INFINITE) or text that is no time.
int64_t SlurmTimeLimitSeconds(std::string_view text);

// An sbatch option --signal[=[B:]SIG[@SECONDS]] read once, for the allowlist and for the
// time-limit check alike.
struct SbatchSignal {
  bool present = false;     // arg is --signal, with or without a value
  bool checkpoint = false;  // the value is the template's signal moved: B:USR1[@SECONDS] (USR1,
                            // SIGUSR1 or 10, any case); nothing else may replace it
  int lead_seconds = -1;    // the value's SECONDS (60 without @); -1 without a value or when
                            // SECONDS is no number
};
SbatchSignal ParseSbatchSignal(std::string_view arg);

}  // namespace moe
