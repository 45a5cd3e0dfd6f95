#include "tests/support/training_runs.h"

#include <cstdio>
#include <utility>

#include "gtest/gtest.h"
#include "tests/support/paths.h"

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

std::string SharedTempDir(Communicator* comm, const std::string& prefix) {
  char buf[256] = {};
  if (comm->rank() == 0) std::snprintf(buf, sizeof(buf), "%s", MakeTempDir(prefix).c_str());
  comm->Broadcast(buf, sizeof(buf), 0);
  return buf;
}

std::vector<double> TrainInTwoHalves(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data,
                                     const std::string& dir) {
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
  std::vector<double> losses = Losses(*first), rest = Losses(*second);
  losses.insert(losses.end(), rest.begin(), rest.end());
  return losses;
}

}  // namespace moe::testing
