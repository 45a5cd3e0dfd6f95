// DeviceCommunicator: the collectives of expert parallelism on device buffers, one GPU per
// rank, through NCCL. The host Communicator (comm.h, MPI) stays what the trainer uses for
// scalars, counts and checkpoints; it also carries the NCCL unique id from rank 0 to the
// others when the device communicator is created.
//
// Contract (the same as comm.h's, on the GPU):
// - Every rank calls the same collectives in the same order.
// - Calls are queued on the caller's stream and return at once; Wait() blocks with a deadline.
// - Variable exchanges take host counts that the caller got from the host communicator's
//   AllToAllCounts: one grouped send/recv per peer with data, never one per expert.
// - No wait is endless: Wait() past CommOptions::timeout_seconds, or an asynchronous NCCL
//   error, prints one line naming this rank, its host, its GPU and the collective, aborts the
//   NCCL communicator and exits the process with code 3 (mpirun then stops the other ranks).
// Only built with CUDA (MOE_WITH_CUDA).
#pragma once

#ifdef MOE_WITH_CUDA

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/parallel/comm.h"

namespace moe {

enum class DeviceDType { kF32, kBF16, kF64 };

class DeviceCommunicator {
 public:
  // Collective over every rank of `host`. Picks this rank's GPU, the rank's index among the
  // ranks of its host (ranks compared by host name) modulo the visible GPUs, makes it current,
  // and creates the NCCL communicator from an id rank 0 broadcasts over `host`. An error (no
  // GPU, fewer GPUs than ranks on a host, NCCL init failure) is returned, on every rank.
  static absl::StatusOr<std::unique_ptr<DeviceCommunicator>> Create(Communicator* host,
                                                                    const CommOptions& options);
  ~DeviceCommunicator();
  DeviceCommunicator(const DeviceCommunicator&) = delete;
  DeviceCommunicator& operator=(const DeviceCommunicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  int device() const { return device_; }

  // send_counts[p] elements (host array of world_size()) go to peer p, laid out contiguously
  // in peer order in `send`; recv_counts[p] come from peer p into `recv`, likewise. Queued on
  // `stream`. The part for this rank itself is a device copy.
  void AllToAllV(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                 DeviceDType dtype, cudaStream_t stream);
  // In place: data (n elements) becomes the sum over ranks. Queued on `stream`.
  void AllReduceSum(void* data, int64_t n, DeviceDType dtype, cudaStream_t stream);
  // Blocks until `stream` is done, with the deadline above. `what` names the wait in messages.
  void Wait(cudaStream_t stream, const char* what);
  // Blocks until `event` has completed, with the same deadline.
  void WaitEvent(cudaEvent_t event, const char* what);

  // GPU seconds spent in AllToAllV / AllReduceSum (timed with events around each call) since
  // construction, over the calls that have completed.
  double all_to_all_seconds();
  double all_reduce_seconds();

 private:
  // A cudaEvent pair recorded around one queued call, and the total its GPU time adds to.
  struct Timed {
    cudaEvent_t start = nullptr, stop = nullptr;
    double* total = nullptr;
  };

  DeviceCommunicator() = default;
  // Records the start event of a timed call on `stream` (a pair from the pool).
  Timed Begin(cudaStream_t stream);
  // Records the stop event and queues the pair; adds pairs that have completed meanwhile.
  void End(Timed timed, double* total, cudaStream_t stream);
  // Adds the GPU time of completed pairs to their totals and returns their events to the
  // pool; with `wait`, waits (under the deadline) for every pending pair first.
  void Drain(bool wait);
  // One line on stderr naming this rank, host and GPU, then NCCL abort and exit code 3.
  [[noreturn]] void Fail(const std::string& what, const std::string& reason);

  void* nccl_ = nullptr;  // ncclComm_t
  int rank_ = 0, world_ = 1, device_ = 0;
  CommOptions options_;
  std::string host_;
  std::vector<Timed> pending_;  // recorded, not yet added to a total
  std::vector<Timed> spare_;    // event pairs to reuse
  double a2a_s_ = 0, ar_s_ = 0;
  // A thread that ends the process (Fail) when an NCCL call blocks the host past the deadline
  // (NCCL's first exchange with a peer waits on the host for that peer to connect). Last, so
  // that it stops before the members it reads go.
  struct Watchdog;
  std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
