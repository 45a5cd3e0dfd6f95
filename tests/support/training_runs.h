// What the training tests share: a trainer that must start, the loss curve of a run, a directory
// every rank sees, and a run in two halves with a checkpoint between (the equivalence tests on
// CPU ranks and on GPUs).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moe/v1/job.pb.h"
#include "worker/parallel/comm.h"
#include "worker/data/dataset.h"
#include "worker/train/trainer.h"

namespace moe::testing {

// Trainer::Create, or nullptr after a test failure that says why.
std::unique_ptr<Trainer> NewTrainer(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data,
                                    TrainerOptions opts = {});

// The loss of every step the trainer ran.
std::vector<double> Losses(const Trainer& t);

// A temp directory made by rank 0, its name shared with every rank (collective).
std::string SharedTempDir(Communicator* comm, const std::string& prefix);

// Trains spec's steps on every rank of comm in two runs: the first stops at steps / 2 with a
// checkpoint in dir, the second resumes from it. Returns the losses of all steps; a run that
// fails is a test failure (and the curve comes back short).
std::vector<double> TrainInTwoHalves(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data,
                                     const std::string& dir);
// The same run's metric points, one per step (loss, grad norm, the val loss where it evaluated).
std::vector<moe::v1::MetricPoint> TrainInTwoHalvesPoints(const moe::v1::JobSpec& spec, Communicator* comm,
                                                         Dataset* data, const std::string& dir);

// spec on one rank, straight through. RunOnOneRank gives the run's status as it is (the tests of
// runs that must stop, reading the trainer's history after); the trainer is null only when it
// could not be made (a test failure says why). comm outlives the trainer.
struct OneRankRun {
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<Trainer> trainer;
  absl::Status status;
};
OneRankRun RunOnOneRank(const moe::v1::JobSpec& spec, Dataset* data, TrainerOptions opts = {});
// The same for a run that must succeed (the one-process oracle of the equivalence tests, and the
// trained checkpoint of the sampling and checkpoint-tool tests): a failed run is a test failure
// that says why, and its trainer null.
OneRankRun TrainOnOneRank(const moe::v1::JobSpec& spec, Dataset* data, TrainerOptions opts = {});

// |a - b| / |b| (b floored at 1e-12).
double RelErr(double a, double b);

// Every step of got within tol (relative) of want, and the same number of steps; W names the
// rank count in the failure message.
void ExpectSameCurve(const std::vector<double>& got, const std::vector<double>& want, double tol, int W);

}  // namespace moe::testing
