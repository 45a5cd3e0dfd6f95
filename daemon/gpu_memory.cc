#include "daemon/gpu_memory.h"

#include <cstdio>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace moe::daemon {

int64_t SmallestGpuMemory(const std::string& text) {
  int64_t smallest = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    int64_t mib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &mib) || mib <= 0) continue;
    const int64_t bytes = mib << 20;
    if (smallest == 0 || bytes < smallest) smallest = bytes;
  }
  return smallest;
}

int64_t QueryGpuMemory() {
  // CUDA_VISIBLE_DEVICES narrows the GPUs moed hands out, but the smallest of all is a safe bound.
  FILE* p = popen("nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null", "r");
  if (p == nullptr) return 0;
  std::string out;
  char buf[256];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  return rc == 0 ? SmallestGpuMemory(out) : 0;
}

}  // namespace moe::daemon
