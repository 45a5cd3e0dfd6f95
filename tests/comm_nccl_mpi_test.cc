// The NCCL DeviceCommunicator on 1, 2 and 4 ranks, one GPU each: inputs are built so that
// every exchanged element is known exactly on every rank, and every element is checked. Every
// test skips (on every rank together) without a GPU or when a host has fewer GPUs than ranks.
// NcclFailure.* only runs when started by hand with MOE_NCCL_INJECT set (see there).
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/mpi_env.h"
#include "worker/parallel/comm_mpi.h"

#ifdef MOE_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/common.h"
#include "worker/parallel/comm_nccl.h"
#endif

namespace moe {
namespace {

[[maybe_unused]] ::testing::Environment* const kMpiEnv =
    ::testing::AddGlobalTestEnvironment(new moe::testing::MpiEnvironment);

#ifndef MOE_WITH_CUDA

TEST(CommNccl, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no NCCL communicator to test"; }

#else

using moe::testing::TestCommOptions;

// Ranks on this host (MPI's shared-memory split): the tests' own count, independent of the
// communicator's host-name rule.
int HostRanks(int* local_rank) {
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int size = 0;
  MPI_Comm_size(local, &size);
  MPI_Comm_rank(local, local_rank);
  MPI_Comm_free(&local);
  return size;
}

// Empty when every rank can have a GPU of its own, else why not. The same answer on every
// rank (a rank that skipped alone would leave the others waiting); computed once, collectively.
const std::string& WhyNoGpus() {
  static const std::string why = [] {
    int local_rank = 0;
    const int host_ranks = HostRanks(&local_rank);
    int gpus = 0;
    if (cuda::HaveGpu()) MOE_CUDA_CHECK(cudaGetDeviceCount(&gpus));
    int short_here = gpus < host_ranks ? 1 : 0, short_anywhere = 0;
    MPI_Allreduce(&short_here, &short_anywhere, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (short_anywhere == 0) return std::string();
    return "a host has fewer GPUs than ranks (this one: " + std::to_string(gpus) + " GPU(s) for " +
           std::to_string(host_ranks) + " rank(s))";
  }();
  return why;
}

// A device allocation of `count` elements of T, freed on scope exit.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t count) : count_(count) { MOE_CUDA_CHECK(cudaMalloc(&ptr_, bytes())); }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return ptr_; }
  size_t bytes() const { return count_ * sizeof(T); }
  void Upload(const std::vector<T>& host) {
    MOE_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> host(count_);
    MOE_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  size_t count_;
  T* ptr_ = nullptr;
};

// bf16 is the top half of a float; exact for the small integers these tests use.
uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return static_cast<uint16_t>(bits >> 16);
}
float FromBf16(uint16_t b) {
  const uint32_t bits = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

class CommNccl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!WhyNoGpus().empty()) GTEST_SKIP() << WhyNoGpus();
    host_ = CreateMpiCommunicator(TestCommOptions());
    auto made = DeviceCommunicator::Create(host_.get(), TestCommOptions());
    ASSERT_TRUE(made.ok()) << made.status();
    dev_ = std::move(*made);
    MOE_CUDA_CHECK(cudaStreamCreate(&stream_));
    rank_ = dev_->rank();
    world_ = dev_->world_size();
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    dev_.reset();  // before the host communicator, which may finalise MPI
    host_.reset();
  }

  std::unique_ptr<Communicator> host_;
  std::unique_ptr<DeviceCommunicator> dev_;
  cudaStream_t stream_ = nullptr;
  int rank_ = 0, world_ = 1;
};

TEST_F(CommNccl, OneGpuPerRankOfAHost) {
  EXPECT_EQ(dev_->rank(), moe::testing::WorldRank());
  EXPECT_EQ(dev_->world_size(), moe::testing::WorldSize());
  int local_rank = 0;
  HostRanks(&local_rank);
  EXPECT_EQ(dev_->device(), local_rank);  // ranks <= GPUs, so no wrap-around
  int current = -1;
  MOE_CUDA_CHECK(cudaGetDevice(&current));
  EXPECT_EQ(current, dev_->device());
}

// The exchange pattern: rank `from` sends (from + to + 1) rows of kWidth elements to rank
// `to`, except none when (from + to + 1) % 3 == 0 (pairs, self included, that exchange
// nothing) and none at all from the last rank of 2 or more (a rank that sends nothing).
constexpr int64_t kWidth = 8;
int64_t Count(int from, int to, int world) {
  if (world > 1 && from == world - 1) return 0;
  const int rows = from + to + 1;
  return rows % 3 == 0 ? 0 : rows * kWidth;
}

// Element i of the block from `from` to `to`; counts stay below 256 for up to 16 ranks
// ((2 * 16 - 1) rows of 8), so both codes are exact and distinct per (from, to, i).
float F32Code(int from, int to, int64_t i) {
  return static_cast<float>(from * 100000 + to * 1000 + i);
}
// The communicator moves bf16 as 16-bit words: a bit pattern is checked exactly.
uint16_t Bf16Code(int from, int to, int64_t i) {
  return static_cast<uint16_t>((from << 12) | (to << 8) | (i & 0xff));
}

// Forward exchange of the pattern above, checked element by element (and that nothing is
// written past the received data), then the reverse exchange, which must give back `send`.
template <typename T>
void CheckExchange(DeviceCommunicator* dev, cudaStream_t stream, DeviceDType dtype,
                   T (*code)(int, int, int64_t)) {
  const int rank = dev->rank(), world = dev->world_size();
  ASSERT_LE(world, 16) << "the codes are exact for up to 16 ranks";
  std::vector<int64_t> send_counts(world), recv_counts(world);
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < world; ++p) {
    send_counts[p] = Count(rank, p, world);
    recv_counts[p] = Count(p, rank, world);
    send_total += send_counts[p];
    recv_total += recv_counts[p];
  }
  std::vector<T> send;
  for (int p = 0; p < world; ++p) {
    for (int64_t i = 0; i < send_counts[p]; ++i) send.push_back(code(rank, p, i));
  }
  constexpr int64_t kGuard = 64;  // elements past the end that must stay as they were
  DeviceArray<T> send_d(send_total + kGuard), recv_d(recv_total + kGuard),
      back_d(send_total + kGuard);
  send_d.Upload(send);
  MOE_CUDA_CHECK(cudaMemset(recv_d.get(), 0xff, recv_d.bytes()));
  MOE_CUDA_CHECK(cudaMemset(back_d.get(), 0xff, back_d.bytes()));

  dev->AllToAllV(send_d.get(), send_counts.data(), recv_d.get(), recv_counts.data(), dtype, stream);
  dev->Wait(stream, "test exchange");
  const std::vector<T> recv = recv_d.Download();
  int64_t wrong = 0, at = 0;
  for (int p = 0; p < world; ++p) {
    for (int64_t i = 0; i < recv_counts[p]; ++i, ++at) {
      if (recv[at] != code(p, rank, i) && wrong++ < 5) {
        ADD_FAILURE() << "rank " << rank << ": element " << i << " from rank " << p << " is "
                      << +recv[at] << ", expected " << +code(p, rank, i);
      }
    }
  }
  T poison;
  std::memset(&poison, 0xff, sizeof(poison));
  for (int64_t i = 0; i < kGuard; ++i) {
    if (std::memcmp(&recv[recv_total + i], &poison, sizeof(T)) != 0 && wrong++ < 5) {
      ADD_FAILURE() << "rank " << rank << ": written past the end, at guard element " << i;
    }
  }
  EXPECT_EQ(wrong, 0) << "rank " << rank << ": wrong elements after the exchange";

  // The reverse exchange, as the combine step does: counts swap roles.
  dev->AllToAllV(recv_d.get(), recv_counts.data(), back_d.get(), send_counts.data(), dtype, stream);
  dev->Wait(stream, "test reverse exchange");
  const std::vector<T> back = back_d.Download();
  int64_t differ = 0;
  for (int64_t i = 0; i < send_total; ++i) differ += back[i] != send[i];
  EXPECT_EQ(differ, 0) << "rank " << rank << ": the reverse exchange did not give back the input";
}

TEST_F(CommNccl, ExchangeF32KnownValuesAndBack) {
  CheckExchange<float>(dev_.get(), stream_, DeviceDType::kF32, F32Code);
}

TEST_F(CommNccl, ExchangeBf16KnownValuesAndBack) {
  CheckExchange<uint16_t>(dev_.get(), stream_, DeviceDType::kBF16, Bf16Code);
}

TEST_F(CommNccl, AllToAllOfNothingIsFine) {
  const std::vector<int64_t> zeros(world_, 0);
  dev_->AllToAllV(nullptr, zeros.data(), nullptr, zeros.data(), DeviceDType::kF32, stream_);
  dev_->Wait(stream_, "test empty exchange");
}

// Odd length, so that no chunking of NCCL's lines up with it by accident.
constexpr int64_t kReduceN = 1001;

TEST_F(CommNccl, AllReduceF32MatchesClosedForm) {
  // Rank r holds r + i / 2: halves and small integers add exactly in float.
  std::vector<float> x(kReduceN);
  for (int64_t i = 0; i < kReduceN; ++i) x[i] = rank_ + 0.5f * i;
  DeviceArray<float> d(kReduceN);
  d.Upload(x);
  dev_->AllReduceSum(d.get(), kReduceN, DeviceDType::kF32, stream_);
  dev_->Wait(stream_, "test all-reduce f32");
  const std::vector<float> got = d.Download();
  int64_t wrong = 0;
  for (int64_t i = 0; i < kReduceN; ++i) {
    const float want = world_ * (world_ - 1) / 2 + world_ * 0.5f * i;
    if (got[i] != want && wrong++ < 5)
      ADD_FAILURE() << "element " << i << ": " << got[i] << " != " << want;
  }
  EXPECT_EQ(wrong, 0);
}

TEST_F(CommNccl, AllReduceF64MatchesClosedForm) {
  // Rank r holds r * 1e9 + i + 0.25: beyond float's precision, exact in double.
  std::vector<double> x(kReduceN);
  for (int64_t i = 0; i < kReduceN; ++i) x[i] = rank_ * 1e9 + i + 0.25;
  DeviceArray<double> d(kReduceN);
  d.Upload(x);
  dev_->AllReduceSum(d.get(), kReduceN, DeviceDType::kF64, stream_);
  dev_->Wait(stream_, "test all-reduce f64");
  const std::vector<double> got = d.Download();
  int64_t wrong = 0;
  for (int64_t i = 0; i < kReduceN; ++i) {
    const double want = 1e9 * world_ * (world_ - 1) / 2 + world_ * (i + 0.25);
    if (got[i] != want && wrong++ < 5)
      ADD_FAILURE() << "element " << i << ": " << got[i] << " != " << want;
  }
  EXPECT_EQ(wrong, 0);
}

TEST_F(CommNccl, AllReduceBf16MatchesClosedForm) {
  // Rank r holds r + i % 4: sums below 32, exact in bf16.
  std::vector<uint16_t> x(kReduceN);
  for (int64_t i = 0; i < kReduceN; ++i) x[i] = ToBf16(static_cast<float>(rank_ + i % 4));
  DeviceArray<uint16_t> d(kReduceN);
  d.Upload(x);
  dev_->AllReduceSum(d.get(), kReduceN, DeviceDType::kBF16, stream_);
  dev_->Wait(stream_, "test all-reduce bf16");
  const std::vector<uint16_t> got = d.Download();
  int64_t wrong = 0;
  for (int64_t i = 0; i < kReduceN; ++i) {
    const float want = static_cast<float>(world_ * (world_ - 1) / 2 + world_ * (i % 4));
    if (FromBf16(got[i]) != want && wrong++ < 5) {
      ADD_FAILURE() << "element " << i << ": " << FromBf16(got[i]) << " != " << want;
    }
  }
  EXPECT_EQ(wrong, 0);
}

TEST_F(CommNccl, LargeExchangeOver64MB) {
  // 80 MB of f32 per rank, an equal block to every peer.
  const int64_t per_peer = 20'000'000 / world_;
  const int64_t total = per_peer * world_;
  // Integers below 2^24 are exact in float; the primes keep (from, to) blocks apart.
  auto code = [](int from, int to, int64_t i) {
    return static_cast<float>((from * 7919 + to * 104729 + i) % (int64_t{1} << 24));
  };
  std::vector<float> send(total);
  for (int p = 0; p < world_; ++p) {
    for (int64_t i = 0; i < per_peer; ++i) send[p * per_peer + i] = code(rank_, p, i);
  }
  const std::vector<int64_t> counts(world_, per_peer);
  DeviceArray<float> send_d(total), recv_d(total);
  send_d.Upload(send);
  MOE_CUDA_CHECK(cudaMemset(recv_d.get(), 0xff, recv_d.bytes()));
  dev_->AllToAllV(send_d.get(), counts.data(), recv_d.get(), counts.data(), DeviceDType::kF32,
                  stream_);
  dev_->Wait(stream_, "test large exchange");
  const std::vector<float> recv = recv_d.Download();
  int64_t wrong = 0;
  for (int p = 0; p < world_; ++p) {
    for (int64_t i = 0; i < per_peer; ++i) {
      if (recv[p * per_peer + i] != code(p, rank_, i) && wrong++ < 5) {
        ADD_FAILURE() << "element " << i << " from rank " << p << ": " << recv[p * per_peer + i]
                      << " != " << code(p, rank_, i);
      }
    }
  }
  EXPECT_EQ(wrong, 0);
}

TEST_F(CommNccl, TimingGrowsWithCalls) {
  EXPECT_EQ(dev_->all_to_all_seconds(), 0);
  EXPECT_EQ(dev_->all_reduce_seconds(), 0);
  const int64_t n = 1 << 20;
  DeviceArray<float> a(n * world_), b(n * world_);
  MOE_CUDA_CHECK(cudaMemset(a.get(), 0, a.bytes()));
  const std::vector<int64_t> counts(world_, n);
  dev_->AllToAllV(a.get(), counts.data(), b.get(), counts.data(), DeviceDType::kF32, stream_);
  dev_->AllReduceSum(a.get(), n, DeviceDType::kF32, stream_);
  // Not waited for: the getters wait for the calls' stop events themselves.
  const double a2a = dev_->all_to_all_seconds(), ar = dev_->all_reduce_seconds();
  EXPECT_GT(a2a, 0);
  EXPECT_GT(ar, 0);
  dev_->AllToAllV(a.get(), counts.data(), b.get(), counts.data(), DeviceDType::kF32, stream_);
  dev_->Wait(stream_, "test timing");
  EXPECT_GT(dev_->all_to_all_seconds(), a2a);
  EXPECT_EQ(dev_->all_reduce_seconds(), ar);
}

// Run by hand, not by ctest (which leaves MOE_NCCL_INJECT unset), to see the deadline at work:
//   MOE_NCCL_INJECT=silent-peer MOE_COMM_TIMEOUT_S=3 mpirun -np 2 comm_nccl_mpi_test
//     --gtest_filter=NcclFailure.*
// Rank 1 stays out of an exchange; rank 0 must print one line ("moe-worker rank 0 (host ...,
// GPU 0): ...: not done after 3 s ...") and exit with code 3. silent-peer: the first exchange
// (NCCL is still connecting to the peer: the call itself waits); silent-peer-later: after one
// exchange together (the call returns; Wait waits).
TEST(NcclFailure, SilentPeerEndsTheJob) {
  const char* inject_env = std::getenv("MOE_NCCL_INJECT");
  const std::string inject = inject_env == nullptr ? "" : inject_env;
  if (inject != "silent-peer" && inject != "silent-peer-later") GTEST_SKIP() << "run by hand";
  if (!WhyNoGpus().empty()) GTEST_SKIP() << WhyNoGpus();
  auto host = CreateMpiCommunicator(TestCommOptions());
  auto made = DeviceCommunicator::Create(host.get(), TestCommOptions());
  ASSERT_TRUE(made.ok()) << made.status();
  DeviceCommunicator& dev = **made;
  if (dev.world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const int64_t n = 1024;
  DeviceArray<float> a(n * dev.world_size()), b(n * dev.world_size());
  std::vector<int64_t> counts(dev.world_size(), n);
  cudaStream_t stream;
  MOE_CUDA_CHECK(cudaStreamCreate(&stream));
  if (inject == "silent-peer-later") {
    dev.AllToAllV(a.get(), counts.data(), b.get(), counts.data(), DeviceDType::kF32, stream);
    dev.Wait(stream, "exchange together");
  }
  if (dev.rank() == 1) {
    // Outlive rank 0's deadline; mpirun ends this rank when rank 0 exits.
    std::this_thread::sleep_for(
        std::chrono::duration<double>(3 * TestCommOptions().timeout_seconds));
    FAIL() << "rank 0 did not end the job";
  }
  dev.AllToAllV(a.get(), counts.data(), b.get(), counts.data(), DeviceDType::kF32, stream);
  dev.Wait(stream, "injected exchange");
  FAIL() << "Wait returned although rank 1 never took part";
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
