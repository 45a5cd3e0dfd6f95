// What each backend can run, in one place: the job-spec checks refuse anything else at
// validate and submit (with these lists), and the backends assert the same limits.
#pragma once

#include <array>
#include <string>

namespace moe {

// The CUDA attention kernels are instantiated for these head sizes (d_model / n_heads).
inline constexpr std::array<int, 4> kCudaHeadSizes = {8, 16, 32, 64};
// The CUDA router and the experts' row tables hold at most this many experts per layer.
inline constexpr int kCudaMaxExperts = 64;

inline bool CudaRunsHeadSize(int hd) {
  for (int s : kCudaHeadSizes) {
    if (s == hd) return true;
  }
  return false;
}

inline std::string CudaHeadSizesText() {
  std::string out;
  for (int s : kCudaHeadSizes) out += (out.empty() ? "" : ", ") + std::to_string(s);
  return out;
}

}  // namespace moe
