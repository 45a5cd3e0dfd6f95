// moed: the controller daemon. main parses flags into a MoedConfig, starts the daemon and
// serves until SIGTERM or SIGINT (running jobs keep running; the next moed finds them again).
#include <algorithm>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <limits>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/memory_fit.h"
#include "daemon/local_launcher.h"
#include "daemon/moed.h"
#include "moe_version.h"

namespace {

constexpr char kUsage[] = R"(usage: moed --state-dir DIR [flags]

  --listen HOST:PORT          gRPC address (default 127.0.0.1:50051)
  --state-dir DIR             job store and job files (required)
  --max-ranks N               ranks of device: cpu jobs moed may run at once (default: cores)
  --gpus N                    GPUs for device: cuda jobs, one rank per GPU (default: the
                              CUDA_VISIBLE_DEVICES entries, else the /dev/nvidia* count)
  --gpu-memory SIZE           memory of each GPU, e.g. 80GiB, 141GB (default: nvidia-smi's
                              smallest GPU); a cuda job whose estimate is more is refused at submit
  --metrics-listen HOST:PORT  HTTP port: /metrics (Prometheus), /healthz and the dashboard at /
                              (default 127.0.0.1:9464; "" = off)
  --metrics-retention SECS    how long a finished job stays in /metrics (default 3600)
  --token-file FILE           require this bearer token on every RPC and HTTP request
                              (except /healthz)
  --worker-bin PATH           moe-worker executable (default: beside moed)
  --mpirun PATH               mpirun executable (default: mpirun on PATH)
  --slurm-template PATH       batch script template for launcher: slurm jobs
                              (default: deploy/slurm/moe-job.sbatch.tmpl found from moed's path)
  --slurm-mpi pmix|mpirun     how Slurm jobs start their ranks: srun --mpi=pmix (default) or
                              mpirun inside the allocation
  --heartbeat-timeout SECS    silence after which a running job is lost (default 60)
  --cancel-grace SECS         SIGTERM to SIGKILL delay when cancelling (default 30)
  --min-free-space SIZE       refuse new jobs (RESOURCE_EXHAUSTED) while the state directory
                              has less free space, e.g. 512M, 2G (default 256M; 0 = off)
  --data-root DIR             jobs may read data only under DIR (repeatable; symlinks resolved;
                              default: anywhere but the system's directories)
  --checkpoint-root DIR       jobs may write checkpoints only under DIR (repeatable; same default)
  --allow-root                run as root although every job then runs as root (refused
                              without it)
  --version                   print the version (git describe of the build) and exit
  --help                      print this and exit
)";

// "512M", "2G", "1048576" -> bytes; false when it is not a size.
bool ParseSize(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  int64_t unit = 1;
  std::string digits = text;
  switch (text.back()) {
    case 'K': case 'k': unit = int64_t{1} << 10; break;
    case 'M': case 'm': unit = int64_t{1} << 20; break;
    case 'G': case 'g': unit = int64_t{1} << 30; break;
    case 'T': case 't': unit = int64_t{1} << 40; break;
    default: unit = 1;
  }
  if (unit != 1) digits.pop_back();
  int64_t n = 0;
  if (!absl::SimpleAtoi(digits, &n) || n < 0 || n > (int64_t{1} << 62) / unit) return false;
  *out = n * unit;
  return true;
}

// Why PATH cannot be run as a program ("" when it can): a directory has the x bit too, and
// access(X_OK) alone let one through to fail every job at launch.
std::string ExecutableProblem(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return errno == ENOENT || errno == ENOTDIR
               ? " is missing"
               : std::string(" cannot be reached: ") + std::strerror(errno);
  }
  if (S_ISDIR(st.st_mode)) return " is a directory, not an executable";
  if (!S_ISREG(st.st_mode)) return " is not a regular file, not an executable";
  if (access(path.c_str(), X_OK) != 0) return " is not executable";
  return "";
}

// The flags that take a value (each handled in ParseFlags).
constexpr const char* kValueFlags[] = {
    "--listen", "--state-dir", "--max-ranks", "--gpus", "--gpu-memory", "--metrics-listen",
    "--token-file", "--worker-bin", "--mpirun", "--slurm-template", "--slurm-mpi",
    "--heartbeat-timeout", "--metrics-retention", "--cancel-grace", "--data-root",
    "--checkpoint-root", "--min-free-space"};

// Parses --name VALUE / --name=VALUE into config; false (with a message) on a bad flag.
bool ParseFlags(int argc, char** argv, moe::daemon::MoedConfig* c) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg == "--allow-root") {
      c->allow_root = true;
      continue;
    }
    if (arg == "--version") {
      std::printf("moed %s\n", moe::kMoeVersion);
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) {
      std::fprintf(stderr, "moed: unexpected argument '%s': moed takes only flags (see --help)\n",
                   arg.c_str());
      return false;
    }
    std::string value;
    size_t eq = arg.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    if (std::find(std::begin(kValueFlags), std::end(kValueFlags), arg) == std::end(kValueFlags)) {
      std::fprintf(stderr, "moed: unknown flag %s\n%s", arg.c_str(), kUsage);
      return false;
    }
    if (!inline_value) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "moed: flag %s needs a value\n%s", arg.c_str(), kUsage);
        return false;
      }
      value = argv[++i];
    }
    // Seconds as milliseconds; NaN, infinities and values past a billion seconds have no
    // millisecond count (the cast would be undefined), so they are refused as what they are.
    auto seconds = [&](std::chrono::milliseconds* out) {
      double s = 0;
      if (!absl::SimpleAtod(value, &s) || !(s >= -1e9 && s <= 1e9)) {
        std::fprintf(stderr, "moed: %s: '%s' is not a number of seconds (0 to 1e9)\n", arg.c_str(),
                     value.c_str());
        return false;
      }
      if (s > 0 && s < 0.001) {  // would round to 0 ms, then be refused as "not positive"
        std::fprintf(stderr, "moed: %s: '%s' is under a millisecond; give 0.001 or more seconds\n", arg.c_str(),
                     value.c_str());
        return false;
      }
      *out = std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
      return true;
    };
    // A count: a whole number that fits (a larger one is named as too large, not as no number).
    auto count = [&](int* out) {
      int64_t v = 0;
      if (!absl::SimpleAtoi(value, &v)) {
        std::fprintf(stderr, "moed: %s: '%s' is not a whole number\n", arg.c_str(), value.c_str());
        return false;
      }
      if (v > std::numeric_limits<int>::max() || v < std::numeric_limits<int>::min()) {
        std::fprintf(stderr, "moed: %s: %s is too large (at most %d)\n", arg.c_str(), value.c_str(),
                     std::numeric_limits<int>::max());
        return false;
      }
      *out = static_cast<int>(v);
      return true;
    };
    if (arg == "--listen") {
      c->listen = value;
    } else if (arg == "--state-dir") {
      c->state_dir = value;
    } else if (arg == "--max-ranks") {
      if (!count(&c->max_ranks)) return false;
      if (c->max_ranks < 1) {
        std::fprintf(stderr, "moed: --max-ranks: must be at least 1, got %d (leave it out to use every core)\n",
                     c->max_ranks);
        return false;
      }
    } else if (arg == "--gpus") {
      if (!count(&c->gpus)) return false;
      if (c->gpus < 0) {  // (-1 in MoedConfig means "count them": not for the user to give)
        std::fprintf(stderr, "moed: --gpus: must be 0 or more, got %d (leave it out to use every GPU moed sees)\n",
                     c->gpus);
        return false;
      }
    } else if (arg == "--gpu-memory") {
      absl::StatusOr<int64_t> bytes = moe::ParseMemorySize(value);
      if (!bytes.ok()) {
        std::fprintf(stderr, "moed: --gpu-memory: %s\n", std::string(bytes.status().message()).c_str());
        return false;
      }
      c->gpu_memory_bytes = *bytes;
    } else if (arg == "--metrics-listen") {
      c->metrics_listen = value;
    } else if (arg == "--token-file") {
      c->token_file = value;
    } else if (arg == "--worker-bin") {
      c->worker_bin = value;
    } else if (arg == "--mpirun") {
      c->mpirun = value;
    } else if (arg == "--slurm-template") {
      c->slurm_template = value;
    } else if (arg == "--slurm-mpi") {
      c->slurm_mpi = value;
    } else if (arg == "--heartbeat-timeout") {
      if (!seconds(&c->heartbeat_timeout)) return false;
    } else if (arg == "--metrics-retention") {
      if (!seconds(&c->metrics_retention)) return false;
    } else if (arg == "--cancel-grace") {
      if (!seconds(&c->cancel_grace)) return false;
    } else if (arg == "--data-root") {
      c->data_roots.push_back(value);
    } else if (arg == "--checkpoint-root") {
      c->checkpoint_roots.push_back(value);
    } else if (arg == "--min-free-space") {
      if (!ParseSize(value, &c->min_free_bytes)) {
        std::fprintf(stderr, "moed: --min-free-space: '%s' is not a size (e.g. 512M, 2G)\n",
                     value.c_str());
        return false;
      }
    } else {
      std::fprintf(stderr, "moed: unknown flag %s\n%s", arg.c_str(), kUsage);
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  moe::daemon::MoedConfig config;
  if (!ParseFlags(argc, argv, &config)) return 2;
  // Everything moed and its jobs create (store, specs, logs, checkpoints, token caches) is
  // for the owner alone.
  umask(077);
  // Block the stop signals before any thread starts, so all of them inherit the mask and
  // sigwait below receives the signal.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // The worker moed launches (local jobs; Slurm's nodes see it at the same path): missing, every
  // job would fail at launch, so moed does not start.
  const bool default_worker = config.worker_bin.empty();
  if (absl::Status st = config.Validate(); !st.ok()) {  // fills the default: moe-worker beside moed
    std::fprintf(stderr, "moed: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (const std::string why = ExecutableProblem(config.worker_bin); !why.empty()) {
    if (default_worker) {
      std::fprintf(stderr, "moed: no moe-worker beside moed (%s%s): build or install "
                   "moe-worker there, or give its path with --worker-bin PATH\n", config.worker_bin.c_str(), why.c_str());
    } else {
      std::fprintf(stderr, "moed: --worker-bin: %s%s (build moe-worker, or give the path of its executable)\n",
                   config.worker_bin.c_str(), why.c_str());
    }
    return 2;
  }
  if (absl::StrContains(config.mpirun, "/")) {
    if (const std::string why = ExecutableProblem(config.mpirun); !why.empty()) {
      std::fprintf(stderr, "moed: --mpirun: %s%s (install Open MPI, or give the path of its mpirun executable)\n",
                   config.mpirun.c_str(), why.c_str());
      return 2;
    }
  }
  auto moed = moe::daemon::Moed::Start(config);
  if (!moed.ok()) {
    std::fprintf(stderr, "moed: %s\n", std::string(moed.status().message()).c_str());
    return 2;
  }
  const auto& c = (*moed)->config();
  std::fprintf(stderr,
               "moed: serving on %s, state in %s, max %d CPU ranks, %d GPUs%s, metrics on %s%s\n",
               c.listen.c_str(), c.state_dir.c_str(), c.max_ranks, c.gpus,
               c.gpu_memory_bytes > 0
                   ? (" of " + moe::FormatBytes(static_cast<double>(c.gpu_memory_bytes))).c_str()
                   : "",
               c.metrics_listen.empty() ? "(off)" : c.metrics_listen.c_str(),
               c.token_file.empty() ? "" : ", token required");
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "moed: signal %d, stopping (jobs keep running)\n", sig);
  (*moed)->Shutdown();
  return 0;
}
