// The training loop of one rank: sample -> forward -> backward -> reduce -> clip -> update,
// with evaluation on held-out data, metrics, checkpoints and resume. Every rank runs the same
// loop; the Communicator keeps them in step. A step's MetricPoint is built in step_metrics.h,
// checkpoints are saved and loaded in trainer_checkpoint.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/files.h"
#include "moe/v1/job.pb.h"
#include "moe/v1/metrics.pb.h"
#include "worker/parallel/comm.h"
#include "worker/data/dataset.h"
#include "worker/model/train_model.h"
#include "worker/train/step_metrics.h"

namespace moe {

class CheckpointReader;

struct TrainerOptions {
  std::string checkpoint_dir;  // "" = no checkpoints
  bool resume = false;         // continue from the newest checkpoint in checkpoint_dir
  int max_steps = -1;          // stop after this many steps this run (tests); -1 = spec's steps
  // Who owns checkpoint_dir (its .moe-owner marker): "job <id> of <moed job folder>" for moed's
  // jobs, "standalone job <name>" otherwise. "" = no ownership check (tests).
  std::string checkpoint_owner;
  // Called on rank 0 for every metric point and every log line (besides stdout).
  std::function<void(const moe::v1::MetricPoint&)> on_metrics;
  std::function<void(const std::string&)> on_log;
  std::function<void(int64_t)> on_step;  // heartbeat: every rank, after each step
  // A stop request besides SIGTERM/SIGINT (tests: a stop at a chosen point, no signal raced),
  // polled where they are: at the end of each step and after each evaluation batch.
  std::function<bool()> stop_requested;
};

// What one optimizer step measured, and what the ranks agreed on at its end.
struct StepResult {
  moe::v1::MetricPoint metrics;
  bool stop_requested = false;        // some rank got SIGTERM/SIGINT
  bool checkpoint_requested = false;  // some rank got SIGUSR1
};

// How the run ended.
enum class TrainOutcome { kFinished, kStopped };

class Trainer {
 public:
  // A trainer on the backend spec.resources().device() picks, weights initialised from the
  // spec's seed; an error where that backend cannot start (no CUDA in this build, no GPU).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const moe::v1::JobSpec& spec, Communicator* comm,
                                                        Dataset* data, TrainerOptions opts);
  // The same on a backend the caller built for ModelConfig::FromSpec(spec, data->vocab_size) on
  // comm (tests: a backend that reports a device peak).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const moe::v1::JobSpec& spec, Communicator* comm,
                                                        Dataset* data, TrainerOptions opts,
                                                        std::unique_ptr<TrainModel> model);

  absl::Status Run(TrainOutcome* outcome);

  // One optimizer step (exposed for tests).
  StepResult Step(int64_t step);
  // val CE, averaged over eval_batches micro-batches; none when a stop signal came meanwhile.
  std::optional<double> Evaluate();
  // Checkpoints (trainer_checkpoint.cc): collective over the ranks, rank 0 reads and writes.
  // final_eval_pending: the last step's metric point when a stop skipped its final evaluation
  // (kept in the checkpoint's meta for the resume that runs it).
  absl::Status SaveCheckpoint(int64_t steps_done, const moe::v1::MetricPoint* final_eval_pending = nullptr);
  absl::Status LoadCheckpoint(const CheckpointReader& ckpt, int64_t* steps_done);  // opened: verified
  // model.init_from: the weights of a Hugging Face directory or one of our checkpoints; the
  // optimizer state stays fresh. Collective; every rank reads the files.
  absl::Status InitFrom(const std::string& dir);
  // Claims opts.checkpoint_dir for opts.checkpoint_owner (rank 0, agreed by all): refuses a
  // directory another run is training into (its lock, held until Run returns), one another
  // job owns, or one that is not empty and has no owner unless resuming.
  absl::Status ClaimCheckpointDir();

  TrainModel& model() { return *model_; }  // the backend being trained
  const std::vector<moe::v1::MetricPoint>& history() const { return history_; }

 private:
  Trainer(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data, TrainerOptions opts,
          std::unique_ptr<TrainModel> model);

  // Fills x, y (micro_batch_, T) with this rank's slice of micro-step a of the step, and says
  // where it sits in the step.
  BatchContext SampleMicroBatch(int64_t step, int a, int32_t* x, int32_t* y) const;
  // Loss-free balancing after the optimizer step: the router biases move by the step's
  // counts (MODEL.md "Options: Experts"), and each layer's spread goes into the metrics.
  void UpdateBiases(StepMeasurements* m);
  void Log(const std::string& line);
  void Emit(const moe::v1::MetricPoint& point);
  // SIGTERM/SIGINT or opts_.stop_requested (this rank's view; the ranks agree on it).
  bool StopWanted() const;
  // The last step's metric point a checkpoint keeps for its skipped final evaluation
  // (kFinalEvalPendingMeta); none when it has none (older checkpoints too) or it does not parse.
  std::optional<moe::v1::MetricPoint> FinalEvalPending(const CheckpointReader& ckpt);
  // A resume at train.steps whose checkpoint missed the final evaluation: runs just that, emits
  // the step's point with its val_loss, and checkpoints the step again without the pending mark.
  absl::Status RunMissedFinalEval(int64_t step, moe::v1::MetricPoint point, TrainOutcome* outcome);
  // Rank 0: creates opts_.checkpoint_dir and takes its lock; "" or what is wrong.
  std::string LockCheckpointDir();

  moe::v1::JobSpec spec_;
  Communicator* comm_;
  Dataset* data_;
  TrainerOptions opts_;
  ModelConfig cfg_;
  std::unique_ptr<TrainModel> model_;
  int micro_batch_ = 0;         // sequences per rank per micro-step
  double flops_per_token_ = 0;  // model FLOPs per token, for MFU
  std::vector<moe::v1::MetricPoint> history_;
  std::optional<DirectoryLock> checkpoint_lock_;  // rank 0: opts_.checkpoint_dir's, while Run runs
};

}  // namespace moe
