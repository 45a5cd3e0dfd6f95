#include "worker/parallel/comm_mpi.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

// Tags keep the point-to-point exchanges of different kinds apart on our communicator.
constexpr int kCountsTag = 101;
constexpr int kPayloadTag = 102;
constexpr int kGatherTag = 103;
constexpr int kNoPeer = -1;  // a request of a collective: no single peer to blame
constexpr int kAbortCode = 3;
// Waiting polls: yield for the first kSpinTime so that quick exchanges add no latency,
// then sleep between polls so that waiting ranks leave the cores to the ranks still
// computing (ranks are oversubscribed on small machines).
constexpr auto kSpinTime = std::chrono::milliseconds(1);
constexpr auto kPollSleep = std::chrono::microseconds(100);

// Adds the wall time of its scope to *total_seconds.
class ScopedSeconds {
 public:
  explicit ScopedSeconds(double* total_seconds)
      : total_seconds_(total_seconds), start_(Clock::now()) {}
  ~ScopedSeconds() {
    *total_seconds_ += std::chrono::duration<double>(Clock::now() - start_).count();
  }

 private:
  double* total_seconds_;
  Clock::time_point start_;
};

// The outstanding requests of one call; peers[i] is the rank request i talks to.
struct Pending {
  std::vector<MPI_Request> requests;
  std::vector<int> peers;
  std::vector<bool> receives;

  void Add(MPI_Request request, int peer, bool receive) {
    requests.push_back(request);
    peers.push_back(peer);
    receives.push_back(receive);
  }
};

#define MOE_MPI_CHECK(call) CheckMpi((call), #call, __FILE__, __LINE__)

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const CommOptions& opts)
      : timeout_seconds_(opts.timeout_seconds),
        max_message_elements_(opts.max_message_elements),
        host_(opts.host) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      // MPI's default handler (errors are fatal) reports a failed start itself.
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owns_mpi_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    if (host_.empty()) {
      char name[MPI_MAX_PROCESSOR_NAME];
      int length = 0;
      MPI_Get_processor_name(name, &length);
      host_.assign(name, length);
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MOE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MOE_MPI_CHECK(MPI_Comm_size(comm_, &world_));
    if (!(timeout_seconds_ > 0)) {
      Fail(absl::StrFormat("communication timeout must be > 0 s, got %g", timeout_seconds_));
    }
    if (max_message_elements_ < 1 || max_message_elements_ > INT_MAX) {
      Fail(absl::StrFormat("max_message_elements must be in [1, %d], got %d", INT_MAX,
                           max_message_elements_));
    }
  }

  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;  // finalised under us: the communicator went with MPI
    MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  double timeout_seconds() const override { return timeout_seconds_; }
  [[noreturn]] void Abort(int code) override {
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();  // MPI_Abort does not return
  }

  void AllToAllCounts(const int64_t* send, int64_t* recv, int count) override {
    ScopedSeconds timer(&all_to_all_seconds_);
    CheckCount(count, "all-to-all (counts)");
    Pending pending;
    // Peers in a rotated order so that not every rank talks to rank 0 first.
    for (int i = 1; i < world_; ++i) {
      const int from = (rank_ - i + world_) % world_;
      PostRecv(recv + int64_t{from} * count, count, MPI_INT64_T, sizeof(int64_t), from, kCountsTag,
               &pending);
    }
    for (int i = 1; i < world_; ++i) {
      const int to = (rank_ + i) % world_;
      PostSend(send + int64_t{to} * count, count, MPI_INT64_T, sizeof(int64_t), to, kCountsTag,
               &pending);
    }
    std::copy_n(send + int64_t{rank_} * count, count, recv + int64_t{rank_} * count);
    Wait(&pending, "all-to-all (counts)");
  }

  void AllToAllV(const float* send, const int64_t* send_counts, float* recv,
                 const int64_t* recv_counts) override {
    ScopedSeconds timer(&all_to_all_seconds_);
    // Offsets of each peer's block, in elements: exclusive prefix sums of the counts.
    std::vector<int64_t> send_offsets(world_), recv_offsets(world_);
    int64_t send_total = 0, recv_total = 0;
    for (int p = 0; p < world_; ++p) {
      CheckCount(send_counts[p], "all-to-all (payload)");
      CheckCount(recv_counts[p], "all-to-all (payload)");
      send_offsets[p] = send_total;
      recv_offsets[p] = recv_total;
      send_total += send_counts[p];
      recv_total += recv_counts[p];
    }
    if (send_counts[rank_] != recv_counts[rank_]) {
      Fail(absl::StrFormat("all-to-all (payload): %d elements to self but %d expected from self",
                           send_counts[rank_], recv_counts[rank_]));
    }
    Pending pending;
    for (int i = 1; i < world_; ++i) {
      const int from = (rank_ - i + world_) % world_;
      PostRecv(recv + recv_offsets[from], recv_counts[from], MPI_FLOAT, sizeof(float), from,
               kPayloadTag, &pending);
    }
    for (int i = 1; i < world_; ++i) {
      const int to = (rank_ + i) % world_;
      PostSend(send + send_offsets[to], send_counts[to], MPI_FLOAT, sizeof(float), to, kPayloadTag,
               &pending);
    }
    std::copy_n(send + send_offsets[rank_], send_counts[rank_], recv + recv_offsets[rank_]);
    Wait(&pending, "all-to-all (payload)");
  }

  void AllReduceSum(float* data, int64_t n) override {
    ScopedSeconds timer(&all_reduce_seconds_);
    AllReduce(data, n, MPI_FLOAT, sizeof(float), "all-reduce (float)");
  }

  void AllReduceSum(double* data, int64_t n) override {
    ScopedSeconds timer(&all_reduce_seconds_);
    AllReduce(data, n, MPI_DOUBLE, sizeof(double), "all-reduce (double)");
  }

  void Broadcast(void* data, int64_t bytes, int root) override {
    const std::string what = absl::StrFormat("broadcast from rank %d", root);
    CheckRoot(root, what);
    CheckCount(bytes, what);
    Pending pending;
    char* base = static_cast<char*>(data);
    ForEachPiece(bytes, [&](int64_t offset, int length) {
      MPI_Request request;
      MOE_MPI_CHECK(MPI_Ibcast(base + offset, length, MPI_BYTE, root, comm_, &request));
      pending.Add(request, kNoPeer, /*receive=*/true);
    });
    Wait(&pending, what);
  }

  void Gather(const float* send, int64_t n, float* recv, int root) override {
    const std::string what = absl::StrFormat("gather to rank %d", root);
    CheckRoot(root, what);
    CheckCount(n, what);
    // Point to point rather than MPI_Igather, so that a timeout on root names the ranks
    // whose rows are missing.
    Pending pending;
    if (rank_ == root) {
      for (int p = 0; p < world_; ++p) {
        if (p != root) PostRecv(recv + p * n, n, MPI_FLOAT, sizeof(float), p, kGatherTag, &pending);
      }
      std::copy_n(send, n, recv + root * n);
    } else {
      PostSend(send, n, MPI_FLOAT, sizeof(float), root, kGatherTag, &pending);
    }
    Wait(&pending, what);
  }

  void Barrier() override {
    Pending pending;
    MPI_Request request;
    MOE_MPI_CHECK(MPI_Ibarrier(comm_, &request));
    pending.Add(request, kNoPeer, /*receive=*/true);
    Wait(&pending, "barrier");
  }

  double all_to_all_seconds() const override { return all_to_all_seconds_; }
  double all_reduce_seconds() const override { return all_reduce_seconds_; }

 private:
  // Calls fn(offset, length) for consecutive pieces of [0, count) of at most
  // max_message_elements_ elements. Both sides of a message cut it the same way, and MPI
  // keeps the order of messages between two ranks on one tag, so the pieces match up.
  template <typename Fn>
  void ForEachPiece(int64_t count, Fn fn) {
    for (int64_t offset = 0; offset < count; offset += max_message_elements_) {
      fn(offset, static_cast<int>(std::min(max_message_elements_, count - offset)));
    }
  }

  void PostRecv(void* buf, int64_t count, MPI_Datatype type, size_t element_bytes, int peer,
                int tag, Pending* pending) {
    char* base = static_cast<char*>(buf);
    ForEachPiece(count, [&](int64_t offset, int length) {
      MPI_Request request;
      MOE_MPI_CHECK(
          MPI_Irecv(base + offset * element_bytes, length, type, peer, tag, comm_, &request));
      pending->Add(request, peer, /*receive=*/true);
    });
  }

  void PostSend(const void* buf, int64_t count, MPI_Datatype type, size_t element_bytes, int peer,
                int tag, Pending* pending) {
    const char* base = static_cast<const char*>(buf);
    ForEachPiece(count, [&](int64_t offset, int length) {
      MPI_Request request;
      MOE_MPI_CHECK(
          MPI_Isend(base + offset * element_bytes, length, type, peer, tag, comm_, &request));
      pending->Add(request, peer, /*receive=*/false);
    });
  }

  void AllReduce(void* data, int64_t n, MPI_Datatype type, size_t element_bytes, const char* what) {
    CheckCount(n, what);
    Pending pending;
    char* base = static_cast<char*>(data);
    ForEachPiece(n, [&](int64_t offset, int length) {
      MPI_Request request;
      MOE_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, base + offset * element_bytes, length, type,
                                   MPI_SUM, comm_, &request));
      pending.Add(request, kNoPeer, /*receive=*/true);
    });
    Wait(&pending, what);
  }

  // Polls until every request of `pending` completes. Aborts the job when none completes
  // for timeout_seconds_, naming the peers still owing data (or taking it).
  void Wait(Pending* pending, const std::string& what) {
    const int total = static_cast<int>(pending->requests.size());
    std::vector<int> indices(total);
    std::vector<MPI_Status> statuses(total);
    std::vector<bool> completed(total, false);
    const auto timeout = std::chrono::duration<double>(timeout_seconds_);
    const Clock::time_point start = Clock::now();
    Clock::time_point last_progress = start;
    int done = 0;
    while (done < total) {
      int outcount = 0;
      const int rc =
          MPI_Testsome(total, pending->requests.data(), &outcount, indices.data(), statuses.data());
      if (rc == MPI_ERR_IN_STATUS) {
        for (int i = 0; i < outcount; ++i) {
          const int peer = pending->peers[indices[i]];
          if (statuses[i].MPI_ERROR != MPI_SUCCESS) {
            const std::string where =
                peer == kNoPeer ? what : absl::StrFormat("%s with rank %d", what, peer);
            CheckMpi(statuses[i].MPI_ERROR, where.c_str(), __FILE__, __LINE__);
          }
        }
      }
      CheckMpi(rc, "MPI_Testsome", __FILE__, __LINE__);
      if (outcount > 0) {
        for (int i = 0; i < outcount; ++i) completed[indices[i]] = true;
        done += outcount;
        last_progress = Clock::now();
        continue;
      }
      const Clock::time_point now = Clock::now();
      if (now - last_progress >= timeout) TimedOut(*pending, completed, what);
      if (now - start < kSpinTime) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(kPollSleep);
      }
    }
  }

  [[noreturn]] void TimedOut(const Pending& pending, const std::vector<bool>& completed,
                             const std::string& what) const {
    std::vector<int> silent_senders, silent_receivers;
    bool collective = false;
    for (size_t i = 0; i < completed.size(); ++i) {
      if (completed[i]) continue;
      const int peer = pending.peers[i];
      if (peer == kNoPeer) {
        collective = true;
      } else {
        (pending.receives[i] ? silent_senders : silent_receivers).push_back(peer);
      }
    }
    for (auto* ranks : {&silent_senders, &silent_receivers}) {
      std::sort(ranks->begin(), ranks->end());
      ranks->erase(std::unique(ranks->begin(), ranks->end()), ranks->end());
    }
    std::string problem;
    if (!silent_senders.empty()) {
      problem = absl::StrFormat("no data from rank(s) %s", absl::StrJoin(silent_senders, ", "));
    } else if (!silent_receivers.empty()) {
      problem = absl::StrFormat("rank(s) %s took no data", absl::StrJoin(silent_receivers, ", "));
    } else if (collective) {
      problem = "a peer rank did not take part";
    }
    Fail(absl::StrFormat("%s for %g s in %s", problem, timeout_seconds_, what));
  }

  void CheckCount(int64_t count, const std::string& what) const {
    if (count < 0) Fail(absl::StrFormat("negative count %d in %s", count, what));
  }

  void CheckRoot(int root, const std::string& what) const {
    if (root < 0 || root >= world_) {
      Fail(absl::StrFormat("root rank %d out of range [0, %d) in %s", root, world_, what));
    }
  }

  void CheckMpi(int rc, const char* call, const char* file, int line) const {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) length = 0;
    Fail(absl::StrFormat("MPI error at %s:%d in %s: %s (code %d)", file, line, call,
                         std::string(text, length), rc));
  }

  // One line on stderr naming this rank and host, then the whole job goes down: a rank
  // that returned instead would leave its peers waiting.
  [[noreturn]] void Fail(const std::string& problem) const {
    std::fprintf(stderr, "moe-worker rank %d (%s): %s; aborting the job\n", rank_, host_.c_str(),
                 problem.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, kAbortCode);
    std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }

  const double timeout_seconds_;
  const int64_t max_message_elements_;
  std::string host_;
  bool owns_mpi_ = false;
  int rank_ = 0;
  int world_ = 1;
  MPI_Comm comm_ = MPI_COMM_NULL;
  double all_to_all_seconds_ = 0;
  double all_reduce_seconds_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> CreateMpiCommunicator(const CommOptions& opts) {
  return std::make_unique<MpiCommunicator>(opts);
}

}  // namespace moe
