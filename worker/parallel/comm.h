// Communicator: the host collectives expert parallelism and data parallelism need, behind one
// small interface: MPI (comm_mpi.h) and one rank (comm_single.h). The trainer and the CPU
// token dispatcher run on it; the GPU model runs its device collectives through
// DeviceCommunicator (comm_nccl.h, NCCL) and uses this one for the count exchange and scalars.
//
// Contract shared by every implementation:
// - Every rank calls the same collectives in the same order (the trainer's step does).
// - Variable exchanges are two-phase: AllToAllCounts first, so that every rank sizes its
//   receive buffer from counts it received, then AllToAllV with those counts. One message
//   per peer and direction (split only beyond INT_MAX elements), never one per expert.
// - No call waits forever. A call that makes no progress for CommOptions::timeout_seconds
//   prints one line naming this rank, its host, the collective and, where it can be known,
//   the silent peer ranks ("no data from rank(s) 2"), then aborts the whole job
//   (MPI_Abort, exit code 3). Any MPI error likewise aborts with rank, host, file:line and
//   the MPI error string. A collective (all-reduce, broadcast, barrier) cannot tell which
//   peer is missing, so its message says "a peer rank".
//
// A rank that dies (e.g. SIGKILL, OOM kill) under Open MPI 4.1's mpirun: checked by
// tests/rank_failure_test.cc. mpirun notices the lost process within about a second, kills
// the remaining ranks itself (their blocked calls do not matter), exits 137 and prints
// "mpirun noticed that process rank 1 with PID ... on node ... exited on signal 9
// (Killed)". This is Open MPI's default (no MCA option needed; do not set
// orte_abort_on_non_zero_status=0, which would let the survivors run on). A rank that
// hangs is the case mpirun cannot see: the survivors' deadline above handles it.
#pragma once

#include <climits>
#include <cstdint>
#include <string>

namespace moe {

struct CommOptions {
  // How long one call may wait for its peers before the job is aborted. Must be > 0.
  double timeout_seconds = 300;
  // Host name shown in messages; empty: the implementation asks the system.
  std::string host;
  // Largest single message in elements; larger ones are sent in pieces. MPI counts are int,
  // hence INT_MAX; tests set it small to exercise the splitting.
  int64_t max_message_elements = INT_MAX;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Fixed-size all-to-all of int64: `count` values to each peer, contiguous by peer.
  // send: (world, count), recv: (world, count); recv[p] row is what peer p sent to us.
  virtual void AllToAllCounts(const int64_t* send, int64_t* recv, int count) = 0;
  // Variable all-to-all of floats: send_counts[p] elements go to peer p, laid out
  // contiguously in peer order; recv likewise, recv_counts[p] from peer p. Counts are in
  // elements (not bytes); recv_counts come from AllToAllCounts.
  virtual void AllToAllV(const float* send, const int64_t* send_counts, float* recv,
                         const int64_t* recv_counts) = 0;
  // In-place sums over all ranks of `n` elements; every rank gets the result.
  virtual void AllReduceSum(float* data, int64_t n) = 0;
  virtual void AllReduceSum(double* data, int64_t n) = 0;
  // Copies `bytes` bytes from root's `data` into every other rank's `data`.
  virtual void Broadcast(void* data, int64_t bytes, int root) = 0;
  // Gathers `n` floats from every rank into recv (world, n) in rank order on root; recv is
  // not touched (may be null) on other ranks.
  virtual void Gather(const float* send, int64_t n, float* recv, int root) = 0;
  virtual void Barrier() = 0;

  // How long one call may wait for its peers (CommOptions::timeout_seconds): the device
  // collectives (comm_nccl.h) take the job's bound from here.
  virtual double timeout_seconds() const = 0;
  // Ends every rank of the job at once with exit code `code` (MPI_Abort), for a rank that failed
  // alone (its memory, its GPU): returning instead would leave its peers waiting for it in their
  // next collective, on GPUs behind a stream sync with no deadline. One rank: exits.
  [[noreturn]] virtual void Abort(int code) = 0;

  // Wall seconds spent inside AllToAll* and AllReduce* since construction, for the
  // step-time split (compute / all-to-all / all-reduce).
  virtual double all_to_all_seconds() const = 0;
  virtual double all_reduce_seconds() const = 0;
};

}  // namespace moe
