#include "worker/parallel/comm_nccl.h"

// Whole file CUDA-only: the worker library globs worker/*.cc and also builds without nvcc.
#ifdef MOE_WITH_CUDA

#include <nccl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kExitCode = 3;  // the MPI communicator's abort code
// Waiting polls: yield for the first kSpinTime so that quick exchanges add no latency, then
// sleep between polls so that a waiting rank leaves its core to others (as comm_mpi.cc).
constexpr auto kSpinTime = std::chrono::milliseconds(1);
constexpr auto kPollSleep = std::chrono::microseconds(100);
// How often the watchdog looks at the NCCL call in progress.
constexpr auto kWatchdogPeriod = std::chrono::milliseconds(100);

ncclComm_t AsNccl(void* comm) { return static_cast<ncclComm_t>(comm); }

struct NcclType {
  ncclDataType_t type;
  size_t bytes;  // per element
};

NcclType TypeOf(DeviceDType dtype) {
  switch (dtype) {
    case DeviceDType::kF32:
      return {ncclFloat32, 4};
    case DeviceDType::kBF16:
      return {ncclBfloat16, 2};
    case DeviceDType::kF64:
      return {ncclFloat64, 8};
  }
  return {ncclFloat32, 4};  // unreachable: every enumerator is handled above
}

std::string SystemHostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

// FNV-1a: the same 64-bit value for the same name in every process (std::hash need not be).
int64_t HostHash(const std::string& host) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : host) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return static_cast<int64_t>(h);
}

std::string NcclReason(ncclResult_t result, const char* file, int line, ncclComm_t comm) {
  std::string reason =
      absl::StrFormat("NCCL error at %s:%d: %s", file, line, ncclGetErrorString(result));
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && last[0] != '\0') absl::StrAppend(&reason, " (", last, ")");
  return reason;
}

std::string CudaReason(cudaError_t err, const char* file, int line) {
  return absl::StrFormat("CUDA error at %s:%d: %s", file, line, cudaGetErrorString(err));
}

// Polls `query` (cudaStreamQuery or cudaEventQuery) until it reports done. Returns an empty
// string then, else why it stopped: an asynchronous NCCL error (a peer gone, a network
// failure), a CUDA error, or `timeout_seconds` passed.
template <typename Query>
std::string PollUntilDone(Query query, ncclComm_t comm, double timeout_seconds) {
  const Clock::time_point start = Clock::now();
  const auto timeout = std::chrono::duration<double>(timeout_seconds);
  while (true) {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm, &async);
    if (rc != ncclSuccess) return NcclReason(rc, __FILE__, __LINE__, comm);
    if (async != ncclSuccess) {
      return absl::StrFormat("asynchronous NCCL error: %s",
                             NcclReason(async, __FILE__, __LINE__, comm));
    }
    const cudaError_t err = query();
    if (err == cudaSuccess) return "";
    if (err != cudaErrorNotReady) return CudaReason(err, __FILE__, __LINE__);
    const Clock::duration waited = Clock::now() - start;
    if (waited >= timeout) {
      return absl::StrFormat("not done after %g s (a peer rank stopped or fell behind)",
                             timeout_seconds);
    }
    if (waited < kSpinTime) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kPollSleep);
    }
  }
}

}  // namespace

// NCCL calls that can wait on the host for peers (init, the first exchange with a peer, the
// first use of an algorithm, destroy) run under Watch: the communicator stays blocking, since
// a non-blocking one starts a thread per call (150 us more per call on an H200, a2a_bench).
struct DeviceCommunicator::Watchdog {
  Watchdog(DeviceCommunicator* owner, double timeout_seconds)
      : owner(owner), timeout(std::chrono::duration<double>(timeout_seconds)) {
    thread = std::thread([this] { Run(); });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_one();
    thread.join();
  }

  void Run() {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, kWatchdogPeriod, [this] { return stop; })) {
      const int64_t started = started_ns.load();
      if (started != 0 &&
          Clock::now().time_since_epoch() - std::chrono::nanoseconds(started) > timeout) {
        owner->Fail(what.load(), absl::StrFormat("NCCL call not done after %g s (a peer rank "
                                                 "stopped or fell behind)",
                                                 timeout.count()));
      }
    }
  }

  DeviceCommunicator* const owner;
  const std::chrono::duration<double> timeout;
  std::atomic<const char*> what{""};
  std::atomic<int64_t> started_ns{0};  // steady clock; 0: no watched call in progress
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;  // guarded by mu
  std::thread thread;
};

namespace {

// Marks one NCCL call as watched for its scope.
class Watch {
 public:
  Watch(std::atomic<const char*>* what, std::atomic<int64_t>* started_ns, const char* name)
      : started_ns_(started_ns) {
    what->store(name);
    started_ns_->store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
            .count());
  }
  ~Watch() { started_ns_->store(0); }
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

 private:
  std::atomic<int64_t>* started_ns_;
};

}  // namespace

#define MOE_WATCH(name) Watch moe_watch_(&watchdog_->what, &watchdog_->started_ns, name)

// On the hot path every NCCL and CUDA call is checked; a failure ends the process (Fail).
#define MOE_NCCL_OR_DIE(call)                                              \
  do {                                                                     \
    const ncclResult_t moe_rc_ = (call);                                   \
    if (moe_rc_ != ncclSuccess) {                                          \
      Fail(#call, NcclReason(moe_rc_, __FILE__, __LINE__, AsNccl(nccl_))); \
    }                                                                      \
  } while (0)
#define MOE_CUDA_OR_DIE(call)                                                           \
  do {                                                                                  \
    const cudaError_t moe_err_ = (call);                                                \
    if (moe_err_ != cudaSuccess) Fail(#call, CudaReason(moe_err_, __FILE__, __LINE__)); \
  } while (0)

absl::StatusOr<std::unique_ptr<DeviceCommunicator>> DeviceCommunicator::Create(
    Communicator* host, const CommOptions& options) {
  std::unique_ptr<DeviceCommunicator> self(new DeviceCommunicator());
  self->rank_ = host->rank();
  self->world_ = host->world_size();
  self->options_ = options;
  self->host_ = options.host.empty() ? SystemHostName() : options.host;
  const int rank = self->rank_, world = self->world_;
  const std::string& host_name = self->host_;

  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    gpus = 0;
  }
  // This rank's index among the ranks of its host. comm.h has no split, so every rank learns
  // every rank's host-name hash through one fixed-size all-to-all. The system's name, not the
  // one for messages (options.host), says which ranks share GPUs.
  const int64_t hash = HostHash(SystemHostName());
  std::vector<int64_t> mine(world, hash), hashes(world);
  host->AllToAllCounts(mine.data(), hashes.data(), 1);
  int local_rank = 0, host_ranks = 0;
  for (int p = 0; p < world; ++p) {
    if (hashes[p] != hash) continue;
    ++host_ranks;
    if (p < rank) ++local_rank;
  }

  // Problems found here are held, not returned, until every rank knows whether any rank has
  // one: a rank that returned alone would leave the others waiting in NCCL's init.
  absl::Status local;
  ncclUniqueId id{};
  if (!(options.timeout_seconds > 0)) {
    local = absl::InvalidArgumentError(
        absl::StrFormat("communication timeout must be > 0 s, got %g", options.timeout_seconds));
  } else if (gpus == 0) {
    local = absl::FailedPreconditionError(
        absl::StrFormat("host %s has no usable CUDA GPU for rank %d", host_name, rank));
  } else if (host_ranks > gpus) {
    local = absl::FailedPreconditionError(absl::StrFormat(
        "host %s runs %d ranks of this job but has %d GPUs; use ranks <= GPUs per host", host_name,
        host_ranks, gpus));
  } else {
    self->device_ = local_rank % gpus;
    const cudaError_t err = cudaSetDevice(self->device_);
    if (err != cudaSuccess) {
      local =
          absl::InternalError(absl::StrFormat("rank %d on host %s: cudaSetDevice(%d): %s", rank,
                                              host_name, self->device_, cudaGetErrorString(err)));
    } else if (rank == 0) {
      const ncclResult_t rc = ncclGetUniqueId(&id);
      if (rc != ncclSuccess) {
        local = absl::InternalError(absl::StrFormat("rank 0 on host %s: ncclGetUniqueId: %s",
                                                    host_name, ncclGetErrorString(rc)));
      }
    }
  }

  // Every rank marks its own slot; the sum tells every rank which ranks failed.
  auto agree = [&](const absl::Status& status, const char* step) -> absl::Status {
    std::vector<double> failed(world, 0.0);
    failed[rank] = status.ok() ? 0.0 : 1.0;
    host->AllReduceSum(failed.data(), world);
    if (!status.ok()) return status;
    std::vector<int> ranks;
    for (int p = 0; p < world; ++p) {
      if (failed[p] != 0) ranks.push_back(p);
    }
    if (ranks.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrFormat("rank(s) %s failed to %s (see their messages); no device communicator",
                        absl::StrJoin(ranks, ", "), step));
  };
  if (absl::Status s = agree(local, "set up a GPU"); !s.ok()) return s;

  host->Broadcast(&id, sizeof(id), /*root=*/0);
  self->watchdog_ = std::make_unique<Watchdog>(self.get(), options.timeout_seconds);
  ncclComm_t comm = nullptr;
  ncclResult_t rc;
  {
    Watch watch(&self->watchdog_->what, &self->watchdog_->started_ns, "NCCL init");
    rc = ncclCommInitRank(&comm, world, id, rank);
  }
  absl::Status init;
  if (rc != ncclSuccess) {
    init = absl::InternalError(absl::StrFormat("rank %d on host %s, GPU %d: ncclCommInitRank: %s",
                                               rank, host_name, self->device_,
                                               ncclGetErrorString(rc)));
  }
  // Init can fail on some ranks only (e.g. out of device memory): agree once more.
  if (absl::Status s = agree(init, "create the NCCL communicator"); !s.ok()) {
    if (comm != nullptr) ncclCommAbort(comm);
    return s;
  }
  self->nccl_ = comm;
  return self;
}

DeviceCommunicator::~DeviceCommunicator() {
  // Events still pending are released by CUDA once they complete.
  for (const std::vector<Timed>* pairs : {&pending_, &spare_}) {
    for (const Timed& t : *pairs) {
      cudaEventDestroy(t.start);
      cudaEventDestroy(t.stop);
    }
  }
  if (nccl_ == nullptr) return;
  MOE_WATCH("closing the NCCL communicator");
  const ncclResult_t rc = ncclCommDestroy(AsNccl(nccl_));
  if (rc != ncclSuccess) {
    std::fprintf(stderr, "moe-worker rank %d (host %s, GPU %d): ncclCommDestroy: %s\n", rank_,
                 host_.c_str(), device_, ncclGetErrorString(rc));
  }
}

void DeviceCommunicator::AllToAllV(const void* send, const int64_t* send_counts, void* recv,
                                   const int64_t* recv_counts, DeviceDType dtype,
                                   cudaStream_t stream) {
  const NcclType t = TypeOf(dtype);
  // Byte offsets of each peer's block: exclusive prefix sums of the counts.
  std::vector<size_t> send_offsets(world_), recv_offsets(world_);
  size_t send_total = 0, recv_total = 0;
  for (int p = 0; p < world_; ++p) {
    if (send_counts[p] < 0 || recv_counts[p] < 0) {
      Fail("all-to-all", absl::StrFormat("negative count for peer %d (send %d, recv %d)", p,
                                         send_counts[p], recv_counts[p]));
    }
    send_offsets[p] = send_total;
    recv_offsets[p] = recv_total;
    send_total += static_cast<size_t>(send_counts[p]) * t.bytes;
    recv_total += static_cast<size_t>(recv_counts[p]) * t.bytes;
  }
  if (send_counts[rank_] != recv_counts[rank_]) {
    Fail("all-to-all", absl::StrFormat("%d elements to self but %d expected from self",
                                       send_counts[rank_], recv_counts[rank_]));
  }
  const char* send_bytes = static_cast<const char*>(send);
  char* recv_bytes = static_cast<char*>(recv);

  const Timed timed = Begin(stream);
  // One grouped send and receive per peer with data: NCCL runs them concurrently. The part to
  // this rank itself goes through NCCL too, as a device copy that overlaps the transfers (a
  // cudaMemcpyAsync before the group made the whole call 10% slower at 2 ranks, 256 MB).
  MOE_NCCL_OR_DIE(ncclGroupStart());
  for (int p = 0; p < world_; ++p) {
    if (send_counts[p] > 0) {
      MOE_NCCL_OR_DIE(ncclSend(send_bytes + send_offsets[p], static_cast<size_t>(send_counts[p]),
                               t.type, p, AsNccl(nccl_), stream));
    }
    if (recv_counts[p] > 0) {
      MOE_NCCL_OR_DIE(ncclRecv(recv_bytes + recv_offsets[p], static_cast<size_t>(recv_counts[p]),
                               t.type, p, AsNccl(nccl_), stream));
    }
  }
  {
    MOE_WATCH("all-to-all");
    MOE_NCCL_OR_DIE(ncclGroupEnd());
  }
  End(timed, &a2a_s_, stream);
}

void DeviceCommunicator::AllReduceSum(void* data, int64_t n, DeviceDType dtype,
                                      cudaStream_t stream) {
  if (n < 0) Fail("all-reduce", absl::StrFormat("negative count %d", n));
  const Timed timed = Begin(stream);
  {
    MOE_WATCH("all-reduce");
    MOE_NCCL_OR_DIE(ncclAllReduce(data, data, static_cast<size_t>(n), TypeOf(dtype).type, ncclSum,
                                  AsNccl(nccl_), stream));
  }
  End(timed, &ar_s_, stream);
}

void DeviceCommunicator::Wait(cudaStream_t stream, const char* what) {
  const std::string reason = PollUntilDone([stream] { return cudaStreamQuery(stream); },
                                           AsNccl(nccl_), options_.timeout_seconds);
  if (!reason.empty()) Fail(what, reason);
  Drain(/*wait=*/false);
}

void DeviceCommunicator::WaitEvent(cudaEvent_t event, const char* what) {
  const std::string reason = PollUntilDone([event] { return cudaEventQuery(event); }, AsNccl(nccl_),
                                           options_.timeout_seconds);
  if (!reason.empty()) Fail(what, reason);
}

double DeviceCommunicator::all_to_all_seconds() {
  Drain(/*wait=*/true);
  return a2a_s_;
}

double DeviceCommunicator::all_reduce_seconds() {
  Drain(/*wait=*/true);
  return ar_s_;
}

DeviceCommunicator::Timed DeviceCommunicator::Begin(cudaStream_t stream) {
  Timed timed;
  if (spare_.empty()) {
    MOE_CUDA_OR_DIE(cudaEventCreate(&timed.start));
    MOE_CUDA_OR_DIE(cudaEventCreate(&timed.stop));
  } else {
    timed = spare_.back();
    spare_.pop_back();
  }
  MOE_CUDA_OR_DIE(cudaEventRecord(timed.start, stream));
  return timed;
}

void DeviceCommunicator::End(Timed timed, double* total, cudaStream_t stream) {
  MOE_CUDA_OR_DIE(cudaEventRecord(timed.stop, stream));
  timed.total = total;
  pending_.push_back(timed);
  Drain(/*wait=*/false);  // keeps pending_ short without blocking
}

void DeviceCommunicator::Drain(bool wait) {
  size_t kept = 0;  // pairs still pending move to the front, in order
  for (size_t i = 0; i < pending_.size(); ++i) {
    const Timed t = pending_[i];
    if (wait) {
      const std::string reason = PollUntilDone([&t] { return cudaEventQuery(t.stop); },
                                               AsNccl(nccl_), options_.timeout_seconds);
      if (!reason.empty()) Fail("waiting for timed collectives", reason);
    } else {
      const cudaError_t err = cudaEventQuery(t.stop);
      if (err == cudaErrorNotReady) {
        pending_[kept++] = t;
        continue;
      }
      MOE_CUDA_OR_DIE(err);
    }
    float ms = 0;
    MOE_CUDA_OR_DIE(cudaEventElapsedTime(&ms, t.start, t.stop));
    *t.total += ms * 1e-3;
    spare_.push_back(t);
  }
  pending_.resize(kept);
}

void DeviceCommunicator::Fail(const std::string& what, const std::string& reason) {
  // The watchdog and the caller's thread may both fail: the first one reports and exits.
  static std::atomic<bool> failing{false};
  if (failing.exchange(true)) {
    while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  // One line naming rank, host and GPU; then the process goes: a rank that returned instead
  // would leave its peers waiting. mpirun stops the other ranks when this one exits.
  std::fprintf(stderr, "moe-worker rank %d (host %s, GPU %d): %s: %s\n", rank_, host_.c_str(),
               device_, what.c_str(), reason.c_str());
  std::fflush(stderr);
  if (nccl_ != nullptr) ncclCommAbort(AsNccl(nccl_));
  std::_Exit(kExitCode);
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
