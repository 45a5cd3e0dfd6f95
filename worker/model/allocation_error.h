// AllocationError: memory a rank could not get (host or GPU), in words: how much and what for.
// The backends throw it where they allocate the model; moe-worker's main turns it (and any
// other std::bad_alloc) into one line on stderr and exit code 1 instead of an abort.
#pragma once

#include <new>
#include <string>
#include <utility>

namespace moe {

class AllocationError : public std::bad_alloc {
 public:
  // message: "could not allocate 12.5 GiB for ...: out of memory".
  explicit AllocationError(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

}  // namespace moe
