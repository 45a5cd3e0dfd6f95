#include "tests/support/training_runs.h"

#include <cstdio>

#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe::testing {

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
  Trainer first(spec, comm, data, first_opts);
  EXPECT_TRUE(first.init_status().ok()) << first.init_status();
  const absl::Status a = first.Run(&outcome);
  EXPECT_TRUE(a.ok()) << a;
  TrainerOptions second_opts;
  second_opts.checkpoint_dir = dir;
  second_opts.resume = true;
  Trainer second(spec, comm, data, second_opts);
  const absl::Status b = second.Run(&outcome);
  EXPECT_TRUE(b.ok()) << b;
  std::vector<double> losses = Losses(first), rest = Losses(second);
  losses.insert(losses.end(), rest.begin(), rest.end());
  return losses;
}

}  // namespace moe::testing
