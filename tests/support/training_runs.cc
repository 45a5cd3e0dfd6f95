#include "tests/support/training_runs.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "gtest/gtest.h"
#include "tests/support/paths.h"
#include "worker/parallel/comm_single.h"

namespace moe::testing {

std::unique_ptr<Trainer> NewTrainer(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data,
                                    TrainerOptions opts) {
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(spec, comm, data, std::move(opts));
  if (!trainer.ok()) {
    ADD_FAILURE() << "the trainer cannot start: " << trainer.status();
    return nullptr;
  }
  return std::move(*trainer);
}

std::vector<double> Losses(const Trainer& t) {
  std::vector<double> out;
  for (const auto& p : t.history()) out.push_back(p.loss());
  return out;
}

OneRankRun RunOnOneRank(const moe::v1::JobSpec& spec, Dataset* data, TrainerOptions opts) {
  moe::v1::JobSpec one = spec;
  one.mutable_resources()->set_ranks(1);
  OneRankRun run;
  run.comm = CreateSingleProcessCommunicator();
  run.trainer = NewTrainer(one, run.comm.get(), data, std::move(opts));
  if (run.trainer == nullptr) {
    run.status = absl::InternalError("the trainer could not be made");
    return run;
  }
  TrainOutcome outcome;
  run.status = run.trainer->Run(&outcome);
  return run;
}

OneRankRun TrainOnOneRank(const moe::v1::JobSpec& spec, Dataset* data, TrainerOptions opts) {
  OneRankRun run = RunOnOneRank(spec, data, std::move(opts));
  if (run.trainer != nullptr && !run.status.ok()) {
    ADD_FAILURE() << "the one-rank run failed: " << run.status;
    run.trainer.reset();
  }
  return run;
}

double RelErr(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

void ExpectSameCurve(const std::vector<double>& got, const std::vector<double>& want, double tol, int W) {
  ASSERT_EQ(got.size(), want.size()) << "W=" << W;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_LT(RelErr(got[i], want[i]), tol) << "W=" << W << " step " << i + 1 << ": " << got[i] << " vs " << want[i];
  }
}

std::string SharedTempDir(Communicator* comm, const std::string& prefix) {
  char buf[256] = {};
  if (comm->rank() == 0) std::snprintf(buf, sizeof(buf), "%s", MakeTempDir(prefix).c_str());
  comm->Broadcast(buf, sizeof(buf), 0);
  return buf;
}

std::vector<moe::v1::MetricPoint> TrainInTwoHalvesPoints(const moe::v1::JobSpec& spec, Communicator* comm,
                                                         Dataset* data, const std::string& dir) {
  TrainOutcome outcome;
  TrainerOptions first_opts;
  first_opts.checkpoint_dir = dir;
  first_opts.max_steps = spec.train().steps() / 2;
  std::unique_ptr<Trainer> first = NewTrainer(spec, comm, data, first_opts);
  if (first == nullptr) return {};
  const absl::Status a = first->Run(&outcome);
  EXPECT_TRUE(a.ok()) << a;
  TrainerOptions second_opts;
  second_opts.checkpoint_dir = dir;
  second_opts.resume = true;
  std::unique_ptr<Trainer> second = NewTrainer(spec, comm, data, second_opts);
  if (second == nullptr) return {};
  const absl::Status b = second->Run(&outcome);
  EXPECT_TRUE(b.ok()) << b;
  std::vector<moe::v1::MetricPoint> points = first->history();
  points.insert(points.end(), second->history().begin(), second->history().end());
  return points;
}

std::vector<double> TrainInTwoHalves(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data,
                                     const std::string& dir) {
  std::vector<double> losses;
  for (const moe::v1::MetricPoint& p : TrainInTwoHalvesPoints(spec, comm, data, dir)) losses.push_back(p.loss());
  return losses;
}

}  // namespace moe::testing
