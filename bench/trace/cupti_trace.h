// Records what the GPU does (kernels, copies, memsets) and the host's CUDA calls (runtime and
// driver API) between StartRecording and StopRecording, through CUPTI's activity API, as the
// plain records bench/trace/timeline.h summarizes. One recording at a time in a process; the
// recording slows the host a little (every call is timed), so record steps apart from the
// measured ones. CUDA builds with CUPTI only (MOE_WITH_CUPTI).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/trace/timeline.h"

namespace moe::trace {

struct Recording {
  std::vector<GpuActivity> activities;
  std::vector<HostCall> calls;
  uint64_t start = 0, end = 0;  // the window: StartRecording's and StopRecording's clock
};

// "" when recording, else CUPTI's reason it cannot (no GPU, no CUPTI on the machine, ...).
std::string StartRecording();
// Flushes CUPTI's buffers into `out` and stops. Call after the GPU has finished the recorded
// work (a synchronize). "" or CUPTI's error.
std::string StopRecording(Recording* out);

}  // namespace moe::trace
