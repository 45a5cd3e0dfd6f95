// PrepareData on 1, 2 and 4 ranks: a stop that only the last rank sees while the data is prepared
// ends the preparation on every rank (Cancelled), and rank 0 logs why; without a stop every rank
// has the data.
#include "worker/train/prepare_data.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/mpi_env.h"
#include "tests/support/paths.h"
#include "tests/support/training_runs.h"
#include "worker/parallel/comm_mpi.h"

namespace moe {
namespace {

[[maybe_unused]] ::testing::Environment* const kMpiEnv =
    ::testing::AddGlobalTestEnvironment(new testing::MpiEnvironment);

TEST(PrepareData, AStopOneRankSeesStopsEveryRank) {
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size(), rank = comm->rank();
  moe::v1::DataSpec spec;
  spec.set_path(testing::ShakespearePath());
  spec.set_tokenizer(moe::v1::TOKENIZER_CHAR);
  spec.set_val_fraction(0.1);
  spec.set_cache_dir(testing::SharedTempDir(comm.get(), "moe-prepare-data-") + "/cache");
  std::vector<std::string> log;
  auto on_log = [&log](const std::string& line) { log.push_back(line); };

  absl::StatusOr<Dataset> stopped = PrepareData(spec, comm.get(), on_log, [&] { return rank == W - 1; });
  ASSERT_FALSE(stopped.ok());
  EXPECT_TRUE(absl::IsCancelled(stopped.status())) << stopped.status();
  const std::string lines = absl::StrJoin(log, "\n");
  if (rank == 0) {
    EXPECT_THAT(lines, ::testing::HasSubstr(kStoppedWhilePreparingData));
  } else {
    EXPECT_TRUE(log.empty()) << lines;  // rank 0 alone logs
  }

  log.clear();
  absl::StatusOr<Dataset> data = PrepareData(spec, comm.get(), on_log, [] { return false; });
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->train.size() + data->val.size(), 1115394u);
  EXPECT_THAT(absl::StrJoin(log, "\n"), ::testing::Not(::testing::HasSubstr("stop requested")));
}

// A load that fails on one rank only (its text missing, as on a node without the file) returns
// the error there at once, joining no collective (the worker prints it and aborts the job),
// instead of waiting in the agreement for ranks that may tokenize for longer than the
// communication timeout. Here the failed rank joins the others' agreement itself, by hand.
TEST(PrepareData, AFailureOnOneRankReturnsAtOnceWithoutTheAgreement) {
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size(), rank = comm->rank();
  const std::string dir = testing::SharedTempDir(comm.get(), "moe-prepare-data-fail-");
  moe::v1::DataSpec spec;
  spec.set_path(rank == W - 1 && W > 1 ? dir + "/missing.txt" : testing::ShakespearePath());
  spec.set_tokenizer(moe::v1::TOKENIZER_CHAR);
  spec.set_val_fraction(0.1);
  spec.set_cache_dir(dir + "/cache");
  absl::StatusOr<Dataset> data = PrepareData(spec, comm.get(), nullptr, [] { return false; });
  if (rank == W - 1 && W > 1) {
    ASSERT_FALSE(data.ok());
    EXPECT_FALSE(absl::IsCancelled(data.status())) << data.status();
    EXPECT_THAT(std::string(data.status().message()), ::testing::HasSubstr("missing.txt"));
    double none = 0;
    comm->AllReduceSum(&none, 1);  // what the others wait for (the worker aborts instead)
  } else {
    ASSERT_TRUE(data.ok()) << data.status();
    EXPECT_EQ(data->train.size() + data->val.size(), 1115394u);
  }
  comm->Barrier();
}

}  // namespace
}  // namespace moe
