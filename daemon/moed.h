// Moed: the daemon as one object: job store, scheduler, the launchers (local, Slurm), the gRPC
// server (job service, worker report service, health, reflection) and the HTTP port (/metrics,
// /healthz, the dashboard).
// main.cc fills a MoedConfig from flags; tests can run a Moed in process.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpc {
class Server;
}

namespace moe::daemon {

class JobStore;
class Scheduler;
class Launcher;
class TokenAuth;
class JobServiceImpl;
class FollowHub;
class ReportServiceImpl;
class HttpServer;
class PrometheusExporter;
class Dashboard;
class StateDirLock;

struct MoedConfig {
  std::string listen = "127.0.0.1:50051";
  std::string state_dir;
  int max_ranks = 0;  // ranks of device: cpu jobs at once; 0 = the core count
  // GPUs for device: cuda jobs (one rank each); -1 = the CUDA_VISIBLE_DEVICES entries, else
  // the /dev/nvidiaN count.
  int gpus = -1;
  // Bytes of memory of each of those GPUs: a cuda job whose estimate is more is refused at
  // submit (unless it allows oversubscribing). -1 = ask nvidia-smi; 0 = unknown (no check).
  int64_t gpu_memory_bytes = -1;
  std::string metrics_listen = "127.0.0.1:9464";  // "" = no HTTP port (/metrics, dashboard)
  // How long a finished job's final values stay in /metrics.
  std::chrono::milliseconds metrics_retention{3600 * 1000};
  std::string token_file;                         // "" = no auth
  std::string worker_bin;                         // "" = moe-worker beside moed
  std::string mpirun = "mpirun";
  std::string slurm_template;     // "" = deploy/slurm/moe-job.sbatch.tmpl found from moed's path
  // Validate filled slurm_template with the default path (which may not exist: moed copied out of
  // its build tree then starts, and refuses slurm jobs at submit); a second Validate keeps it.
  bool slurm_template_defaulted = false;
  std::string slurm_mpi = "pmix";  // how Slurm jobs start ranks: "pmix" (srun) or "mpirun"
  std::chrono::milliseconds heartbeat_timeout{60000};
  std::chrono::milliseconds cancel_grace{30000};
  // New submissions are refused (RESOURCE_EXHAUSTED) while --state-dir has less free space.
  int64_t min_free_bytes = int64_t{256} << 20;
  // moed as root runs every job as root: refused unless asked for (--allow-root).
  bool allow_root = false;
  // Where jobs may read data and write checkpoints (symlinks resolved); none = anything but
  // the system's directories (common/path_policy.h).
  std::vector<std::string> data_roots;
  std::vector<std::string> checkpoint_roots;

  // Fills the defaults that depend on the machine and checks every field.
  absl::Status Validate();
};

class Moed {
 public:
  static absl::StatusOr<std::unique_ptr<Moed>> Start(MoedConfig config);
  ~Moed();  // stops serving; running jobs keep running and are found again on the next start
  void Wait();
  // Within about a second, followers and report streams open: streams end UNAVAILABLE (moectl
  // and the reporters reconnect to the next moed), and the port is free for it at once.
  void Shutdown();
  const MoedConfig& config() const { return config_; }
  int metrics_port() const;
  // OK, or why moed cannot take new jobs now (the state directory's free space): for /healthz.
  absl::Status Health() const;

 private:
  explicit Moed(MoedConfig config);

  MoedConfig config_;
  // First member, so destroyed last: the next moed gets the state directory only once this one
  // has let go of everything in it.
  std::unique_ptr<StateDirLock> state_lock_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<TokenAuth> auth_;
  std::unique_ptr<Launcher> local_launcher_;
  std::unique_ptr<Launcher> slurm_launcher_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<FollowHub> follow_hub_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<ReportServiceImpl> report_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<PrometheusExporter> exporter_;
  std::unique_ptr<Dashboard> dashboard_;
  std::unique_ptr<HttpServer> http_;
};

}  // namespace moe::daemon
