// FollowHub: what lets a followed stream (StreamLogs / StreamMetrics with follow) cost no thread.
// The stream reactors hand themselves to the hub whenever they need to read the store: one hub
// thread runs their Pump() in turn, and a reactor with nothing new is parked until the store
// changes (JobStore's change listener) or kRecheck passes. Shutdown finishes every reactor the
// hub holds, so moed stops at once with followers open.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "daemon/job_store.h"

namespace moe::daemon {

// A stream reactor as the hub sees it. At any moment exactly one party owns a follower: the
// hub (queued, parked or in Pump), gRPC (a write in flight), or nobody (finished). The owner is
// the only one that may touch the call; Finish is its owner's last act.
class Follower {
 public:
  virtual ~Follower() = default;
  // On the hub's thread: read what is new, then write it, park, or finish.
  virtual void Pump() = 0;
  // The hub is shutting down and owns this follower: finish the call (UNAVAILABLE).
  virtual void Abandon() = 0;
};

class FollowHub {
 public:
  // A parked follower looks again after this long even without a change signal.
  static constexpr std::chrono::milliseconds kRecheck{500};

  explicit FollowHub(JobStore* store);
  ~FollowHub();  // Shutdown()

  // Hands f to the hub to Pump soon. False after Shutdown: the caller still owns f.
  bool Schedule(Follower* f);
  // From Pump: run f again once the store's version moves past seen_version (or kRecheck).
  void Park(Follower* f, uint64_t seen_version);
  // A parked f is pumped now (its call was cancelled). Harmless when f is not parked.
  void Wake(Follower* f);
  // Stops the thread, then Abandon()s every follower the hub holds. Idempotent.
  void Shutdown();

 private:
  void Run();
  void OnStoreChange();

  JobStore* const store_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Follower*> ready_ ABSL_GUARDED_BY(mu_);
  // Parked followers and when they look again without a change.
  std::map<Follower*, std::chrono::steady_clock::time_point> parked_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace moe::daemon
