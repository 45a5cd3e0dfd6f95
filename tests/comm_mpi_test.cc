// The MPI Communicator on 1, 2 and 4 ranks: inputs are built so that every exchanged value
// is known exactly on every rank. FailureInjection.* and CommStandalone.* only run when
// tests/rank_failure_test.cc starts this binary with their environment variables.
#include "worker/parallel/comm_mpi.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/support/mpi_env.h"

namespace moe {
namespace {

using moe::testing::TestCommOptions;

// MOE_TEST_STANDALONE=1: MPI is left to the communicator (CommStandalone checks that).
[[maybe_unused]] ::testing::Environment* const kMpiEnv =
    std::getenv("MOE_TEST_STANDALONE") != nullptr
        ? nullptr
        : ::testing::AddGlobalTestEnvironment(new moe::testing::MpiEnvironment);

bool Standalone() { return std::getenv("MOE_TEST_STANDALONE") != nullptr; }

std::unique_ptr<Communicator> MakeComm(int64_t max_message_elements = INT_MAX) {
  CommOptions opts = TestCommOptions();
  opts.max_message_elements = max_message_elements;
  return CreateMpiCommunicator(opts);
}

// The exchange pattern: rank `from` sends (from + to + 1) % 3 blocks of `scale` floats to
// rank `to`, so some pairs exchange nothing; with 2 or more ranks the last rank sends
// nothing at all. Element i of the block is from * 100000 + to * 1000 + i (exact in float).
int64_t SendCount(int from, int to, int world, int64_t scale) {
  if (world > 1 && from == world - 1) return 0;
  return (from + to + 1) % 3 * scale;
}

float Value(int from, int to, int64_t i) {
  return static_cast<float>(from * 100000 + to * 1000 + i);
}

TEST(CommMpi, RankAndSizeMatchTheWorld) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm();
  EXPECT_EQ(comm->rank(), moe::testing::WorldRank());
  EXPECT_EQ(comm->world_size(), moe::testing::WorldSize());
}

TEST(CommMpi, AllToAllCountsDeliversEachRow) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm();
  const int rank = comm->rank(), world = comm->world_size();
  constexpr int kCount = 3;
  // Values past 2^32 check that all 64 bits travel.
  auto value = [](int from, int to, int j) { return (int64_t{from + 1} << 40) + to * 10 + j; };
  std::vector<int64_t> send(world * kCount), recv(world * kCount, -1);
  for (int p = 0; p < world; ++p) {
    for (int j = 0; j < kCount; ++j) send[p * kCount + j] = value(rank, p, j);
  }
  comm->AllToAllCounts(send.data(), recv.data(), kCount);
  for (int p = 0; p < world; ++p) {
    for (int j = 0; j < kCount; ++j) {
      EXPECT_EQ(recv[p * kCount + j], value(p, rank, j)) << "from rank " << p << " j " << j;
    }
  }
}

// (max_message_elements, scale): whole messages, and messages cut into pieces of 3.
class CommMpiAllToAllV : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(CommMpiAllToAllV, CountsThenPayloadArriveExactly) {
  if (Standalone()) GTEST_SKIP();
  const auto [max_message_elements, scale] = GetParam();
  auto comm = MakeComm(max_message_elements);
  const int rank = comm->rank(), world = comm->world_size();

  std::vector<int64_t> send_counts(world), recv_counts(world, -1);
  std::vector<float> send;
  for (int p = 0; p < world; ++p) {
    send_counts[p] = SendCount(rank, p, world, scale);
    for (int64_t i = 0; i < send_counts[p]; ++i) send.push_back(Value(rank, p, i));
  }
  comm->AllToAllCounts(send_counts.data(), recv_counts.data(), 1);
  int64_t recv_total = 0;
  for (int p = 0; p < world; ++p) {
    ASSERT_EQ(recv_counts[p], SendCount(p, rank, world, scale)) << "from rank " << p;
    recv_total += recv_counts[p];
  }

  std::vector<float> recv(recv_total, -1.0f);
  comm->AllToAllV(send.data(), send_counts.data(), recv.data(), recv_counts.data());
  int64_t offset = 0;
  for (int p = 0; p < world; ++p) {
    for (int64_t i = 0; i < recv_counts[p]; ++i) {
      EXPECT_EQ(recv[offset + i], Value(p, rank, i)) << "from rank " << p << " element " << i;
    }
    offset += recv_counts[p];
  }
}

INSTANTIATE_TEST_SUITE_P(Pieces, CommMpiAllToAllV,
                         ::testing::Values(std::make_pair(int64_t{INT_MAX}, int64_t{1}),
                                           std::make_pair(int64_t{INT_MAX}, int64_t{50}),
                                           std::make_pair(int64_t{3}, int64_t{7})));

TEST(CommMpi, AllToAllVWithNothingToExchange) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm();
  const int world = comm->world_size();
  std::vector<int64_t> zeros(world, 0);
  comm->AllToAllV(nullptr, zeros.data(), nullptr, zeros.data());
}

class CommMpiPieces : public ::testing::TestWithParam<int64_t> {};

TEST_P(CommMpiPieces, AllReduceSumFloatIsExact) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm(GetParam());
  const int rank = comm->rank(), world = comm->world_size();
  constexpr int kN = 1001;
  std::vector<float> data(kN);
  for (int i = 0; i < kN; ++i) data[i] = static_cast<float>(rank * 10 + i);
  comm->AllReduceSum(data.data(), kN);
  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(data[i], static_cast<float>(10 * world * (world - 1) / 2 + world * i)) << i;
  }
}

TEST_P(CommMpiPieces, AllReduceSumDoubleIsExact) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm(GetParam());
  const int rank = comm->rank(), world = comm->world_size();
  constexpr int kN = 777;
  std::vector<double> data(kN);
  // Past float's 24 bits, within double's 53: a float path would round.
  for (int i = 0; i < kN; ++i) data[i] = rank * 1e12 + i * 0.5;
  comm->AllReduceSum(data.data(), kN);
  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(data[i], 1e12 * (world * (world - 1) / 2) + world * i * 0.5) << i;
  }
}

TEST_P(CommMpiPieces, BroadcastCopiesRootBytes) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm(GetParam());
  const int rank = comm->rank(), world = comm->world_size();
  for (int root : {0, world - 1}) {
    std::vector<int32_t> data(37, -1);
    if (rank == root) {
      for (int i = 0; i < 37; ++i) data[i] = i * 7 + root + 1;
    }
    comm->Broadcast(data.data(), data.size() * sizeof(int32_t), root);
    for (int i = 0; i < 37; ++i) ASSERT_EQ(data[i], i * 7 + root + 1) << "root " << root;
  }
}

TEST_P(CommMpiPieces, GatherCollectsRowsInRankOrder) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm(GetParam());
  const int rank = comm->rank(), world = comm->world_size();
  constexpr int kN = 5;
  for (int root : {world - 1, 0}) {
    std::vector<float> send(kN), recv(world * kN, -1.0f);
    for (int i = 0; i < kN; ++i) send[i] = static_cast<float>(rank * 100 + i);
    comm->Gather(send.data(), kN, rank == root ? recv.data() : nullptr, root);
    if (rank != root) continue;
    for (int p = 0; p < world; ++p) {
      for (int i = 0; i < kN; ++i) {
        ASSERT_EQ(recv[p * kN + i], static_cast<float>(p * 100 + i)) << "rank " << p;
      }
    }
  }
  comm->Gather(nullptr, 0, nullptr, 0);  // nothing to gather: returns, touches nothing
}

INSTANTIATE_TEST_SUITE_P(MaxMessageElements, CommMpiPieces,
                         ::testing::Values(int64_t{INT_MAX}, int64_t{16}));

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Ranks reach the barrier at staggered times; none may leave before the last arrived.
// Compares times across ranks: they share one host's monotonic clock (ctest runs them on
// one machine).
TEST(CommMpi, BarrierHoldsEveryRankUntilTheLastArrives) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm();
  const int rank = comm->rank(), world = comm->world_size();
  std::this_thread::sleep_for(std::chrono::milliseconds(40 * rank));
  const double entered = MonotonicSeconds();
  comm->Barrier();
  const double left = MonotonicSeconds();
  std::vector<double> entered_by_rank(world, 0.0);
  entered_by_rank[rank] = entered;
  comm->AllReduceSum(entered_by_rank.data(), world);  // every rank gets every entry
  EXPECT_GE(left, *std::max_element(entered_by_rank.begin(), entered_by_rank.end()));
}

TEST(CommMpi, TimersCountOnlyTheirOwnCalls) {
  if (Standalone()) GTEST_SKIP();
  auto comm = MakeComm();
  const int world = comm->world_size();
  EXPECT_EQ(comm->all_to_all_seconds(), 0.0);
  EXPECT_EQ(comm->all_reduce_seconds(), 0.0);

  std::vector<int64_t> send(world, 1), recv(world);
  comm->AllToAllCounts(send.data(), recv.data(), 1);
  const double after_counts = comm->all_to_all_seconds();
  EXPECT_GT(after_counts, 0.0);
  EXPECT_EQ(comm->all_reduce_seconds(), 0.0);

  std::vector<float> payload(world, 1.0f), out(world);
  comm->AllToAllV(payload.data(), send.data(), out.data(), recv.data());
  EXPECT_GT(comm->all_to_all_seconds(), after_counts);

  const double all_to_all = comm->all_to_all_seconds();
  float x = 1.0f;
  comm->AllReduceSum(&x, 1);
  EXPECT_GT(comm->all_reduce_seconds(), 0.0);
  comm->Barrier();
  comm->Broadcast(&x, sizeof(x), 0);
  EXPECT_EQ(comm->all_to_all_seconds(), all_to_all);
}

// Run by rank_failure_test without mpirun: the communicator starts MPI as one rank and
// finalises it when it goes.
TEST(CommStandalone, InitialisesAndFinalisesMpi) {
  if (!Standalone()) GTEST_SKIP() << "only with MOE_TEST_STANDALONE=1";
  int flag = 1;
  MPI_Initialized(&flag);
  ASSERT_EQ(flag, 0);
  {
    auto comm = MakeComm();
    MPI_Initialized(&flag);
    EXPECT_EQ(flag, 1);
    EXPECT_EQ(comm->rank(), 0);
    EXPECT_EQ(comm->world_size(), 1);
    std::vector<int64_t> counts{2}, recv_counts(1);
    comm->AllToAllCounts(counts.data(), recv_counts.data(), 1);
    EXPECT_EQ(recv_counts[0], 2);
    std::vector<float> send{1.5f, 2.5f}, recv(2);
    comm->AllToAllV(send.data(), counts.data(), recv.data(), recv_counts.data());
    EXPECT_EQ(recv, send);
  }
  MPI_Finalized(&flag);
  EXPECT_EQ(flag, 1);
}

[[noreturn]] void HangForever() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

int RankFromEnv(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::atoi(value) : -1;
}

// A training-like loop (counts, payload, gradient all-reduce) in which one rank fails at
// step 3: MOE_TEST_DIE_RANK=r kills rank r (SIGKILL); MOE_TEST_HANG_RANK=r makes it sleep
// forever before the all-to-all, or before the all-reduce with MOE_TEST_HANG_IN=all-reduce;
// MOE_TEST_LIE_RANK=r makes rank r send rank r+1 one float more than the counts announced.
// rank_failure_test runs it under mpirun and checks how the job ends.
TEST(FailureInjection, ExchangeLoop) {
  const int die_rank = RankFromEnv("MOE_TEST_DIE_RANK");
  const int hang_rank = RankFromEnv("MOE_TEST_HANG_RANK");
  const int lie_rank = RankFromEnv("MOE_TEST_LIE_RANK");
  if (die_rank < 0 && hang_rank < 0 && lie_rank < 0) {
    GTEST_SKIP() << "only with MOE_TEST_{DIE,HANG,LIE}_RANK";
  }
  const char* hang_in = std::getenv("MOE_TEST_HANG_IN");
  const bool hang_in_all_reduce = hang_in != nullptr && std::string(hang_in) == "all-reduce";
  constexpr int kFailStep = 3;

  auto comm = MakeComm();
  const int rank = comm->rank(), world = comm->world_size();
  for (int step = 0; step < 10; ++step) {
    const bool failing = step == kFailStep;
    if (failing && rank == die_rank) std::raise(SIGKILL);
    if (failing && rank == hang_rank && !hang_in_all_reduce) HangForever();
    std::vector<int64_t> send_counts(world), recv_counts(world);
    for (int p = 0; p < world; ++p) send_counts[p] = SendCount(rank, p, world, 1000) + 1;
    comm->AllToAllCounts(send_counts.data(), recv_counts.data(), 1);
    int64_t send_total = 0, recv_total = 0;
    for (int p = 0; p < world; ++p) {
      send_total += send_counts[p];
      recv_total += recv_counts[p];
    }
    if (failing && rank == lie_rank) ++send_counts[(rank + 1) % world];
    std::vector<float> send(send_total + 1, 1.0f), recv(recv_total);
    comm->AllToAllV(send.data(), send_counts.data(), recv.data(), recv_counts.data());
    if (failing && rank == hang_rank && hang_in_all_reduce) HangForever();
    std::vector<float> grads(4096, 1.0f);
    comm->AllReduceSum(grads.data(), grads.size());
  }
  ADD_FAILURE() << "a rank was to fail at step " << kFailStep << ", yet rank " << rank
                << " finished the loop";
}

}  // namespace
}  // namespace moe
