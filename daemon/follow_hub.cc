// FollowHub: one thread, a queue of followers ready to read, and the parked ones waiting for
// the store to change.
#include "daemon/follow_hub.h"

#include <vector>

namespace moe::daemon {

FollowHub::FollowHub(JobStore* store) : store_(store) {
  store_->SetChangeListener([this] { OnStoreChange(); });
  thread_ = std::thread([this] { Run(); });
}

FollowHub::~FollowHub() {
  Shutdown();
  store_->SetChangeListener(nullptr);
}

bool FollowHub::Schedule(Follower* f) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return false;
    ready_.push_back(f);
  }
  cv_.notify_one();
  return true;
}

void FollowHub::Park(Follower* f, uint64_t seen_version) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) {
      // Only Pump parks, on the hub's thread: Shutdown drains the queue once that thread
      // has ended, and Abandon()s f then.
      ready_.push_back(f);
      return;
    }
    // A change between the follower's read and now would otherwise be missed until kRecheck.
    if (store_->Version() != seen_version) {
      ready_.push_back(f);
    } else {
      parked_[f] = std::chrono::steady_clock::now() + kRecheck;
      return;
    }
  }
  cv_.notify_one();
}

void FollowHub::Wake(Follower* f) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (parked_.erase(f) == 0) return;
    ready_.push_back(f);
  }
  cv_.notify_one();
}

void FollowHub::OnStoreChange() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (parked_.empty()) return;
    for (const auto& [f, when] : parked_) ready_.push_back(f);
    parked_.clear();
  }
  cv_.notify_one();
}

void FollowHub::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopped_) {
    if (ready_.empty()) {
      // Sleep until work, a change, or the earliest recheck of a parked follower.
      auto until = std::chrono::steady_clock::now() + kRecheck;
      for (const auto& [f, when] : parked_) until = std::min(until, when);
      cv_.wait_until(lock, until, [&] { return stopped_ || !ready_.empty(); });
      const auto now = std::chrono::steady_clock::now();
      for (auto it = parked_.begin(); it != parked_.end();) {
        if (it->second <= now) {
          ready_.push_back(it->first);
          it = parked_.erase(it);
        } else {
          ++it;
        }
      }
      continue;
    }
    Follower* f = ready_.front();
    ready_.pop_front();
    lock.unlock();
    f->Pump();  // f may be finished (and deleted by gRPC) once this returns
    lock.lock();
  }
}

void FollowHub::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The hub owns what is queued or parked; a follower whose write is in flight finds Schedule
  // refused when the write completes and finishes itself.
  std::vector<Follower*> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    held.assign(ready_.begin(), ready_.end());
    for (const auto& [f, when] : parked_) held.push_back(f);
    ready_.clear();
    parked_.clear();
  }
  for (Follower* f : held) f->Abandon();
}

}  // namespace moe::daemon
