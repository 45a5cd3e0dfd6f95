// AllocationError: memory a rank could not get (host or GPU), in words: how much, what for, and
// in which step of training. The backends throw it where they allocate; the trainer adds the
// step; moe-worker's main turns it (and any other std::bad_alloc) into one line on stderr,
// "out of GPU memory: ... in step N", and exit code 1 instead of an abort. moed takes that line
// as the job's FAILED reason.
#pragma once

#include <cstdint>
#include <new>
#include <string>
#include <utility>

namespace moe {

class AllocationError : public std::bad_alloc {
 public:
  enum class Memory { kHost, kGpu };

  // message: "could not allocate 12.5 GiB for ...". capacity_bytes: the GPU's whole memory when
  // known (for the fit check in the reason), else 0.
  explicit AllocationError(std::string message, Memory memory = Memory::kHost, int64_t capacity_bytes = 0)
      : message_(std::move(message)), memory_(memory), capacity_bytes_(capacity_bytes) {
    Format();
  }

  // The same failure, during step `step` (1-based) of training.
  AllocationError InStep(int64_t step) const {
    AllocationError e = *this;
    e.step_ = step;
    e.Format();
    return e;
  }

  const char* what() const noexcept override { return text_.c_str(); }
  Memory memory() const { return memory_; }
  int64_t step() const { return step_; }  // 0: before the first step (building the model)
  int64_t capacity_bytes() const { return capacity_bytes_; }

 private:
  // "out of GPU memory: could not allocate 2 GiB on GPU 0 (...) for the model, in step 3".
  void Format() {
    text_ = std::string(memory_ == Memory::kGpu ? "out of GPU memory: " : "out of host memory: ") + message_ +
            (step_ > 0 ? ", in step " + std::to_string(step_) : std::string(", while building the model"));
  }

  std::string message_;
  Memory memory_;
  int64_t capacity_bytes_;
  int64_t step_ = 0;
  std::string text_;
};

}  // namespace moe
