// What the GPU did during a few steps, and when it did nothing: a trace of its activities
// (kernels, copies, memsets) and of the host's CUDA calls (bench/trace/cupti_trace.h records
// both on the GPU; tests build them by hand) summed into busy time by kind and idle time, each
// idle gap put down to one of three causes:
//   host late   the call that launched the next activity began after the GPU went idle (the
//               host was doing its own work: layout planning, cuBLASLt's heuristics, ...);
//     of which after a wait: the host had been waiting on the GPU (a synchronize, an event
//               query loop, a blocking copy) and came out of it during the gap, so the gap is
//               the wait's wake-up plus the work between the wait and the next launch;
//   GPU side    the next activity was already launched when the GPU went idle (launch latency,
//               a cross-stream dependency).
// The gaps are also grouped by the activities on either side (top groups by idle time), which
// names the place in the step where the GPU waits.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moe::trace {

enum class ActivityKind { kKernel, kMemcpy, kMemset };

struct GpuActivity {
  ActivityKind kind = ActivityKind::kKernel;
  std::string name;             // the kernel's name, "memcpy DtoH", "memset", ...
  uint64_t start = 0, end = 0;  // ns, the trace's clock
  uint32_t correlation = 0;     // the host call that launched it (0: unknown)
};

struct HostCall {
  std::string name;             // "cudaLaunchKernel", "cuStreamSynchronize", ...
  uint64_t start = 0, end = 0;  // ns, the same clock
  uint32_t correlation = 0;
};

// A call in which the host waits for the GPU: a synchronize, an event or stream query (a
// polling loop's calls), a blocking copy.
bool IsHostWait(const std::string& call);

// A call's name without CUPTI's version suffix (cudaMemcpy_v3020 -> cudaMemcpy) or the
// per-thread stream suffixes (_ptsz, _ptds).
std::string CallBaseName(const std::string& call);

// A kernel's name as the trace prints it: demangled names without their return type, template
// arguments, namespaces and parameters; cuBLASLt's product kernels as one name.
std::string ShortKernelName(const std::string& name);

struct GapGroup {
  std::string before, after;  // the activity ending before the gap and the one starting after it
  int count = 0;
  double idle_ms = 0, host_late_ms = 0, after_wait_ms = 0;
};

struct KernelTotal {
  std::string name;  // ShortKernelName
  int count = 0;
  double ms = 0;
};

struct TimelineSummary {
  int steps = 1;
  double window_ms = 0;  // every figure below is summed over the window: FormatSummary divides by steps
  double busy_ms = 0;    // the union of all activities (streams overlap)
  double kernel_ms = 0, memcpy_ms = 0, memset_ms = 0;  // summed per activity (overlaps count twice)
  int kernels = 0, memcpys = 0, memsets = 0;
  double idle_ms = 0;  // window - busy
  double idle_host_late_ms = 0, idle_after_wait_ms = 0, idle_gpu_ms = 0;
  double idle_short_ms = 0;    // gaps under the threshold, not attributed
  double idle_unknown_ms = 0;  // the next activity's launching call is not in the trace
  int gaps = 0;
  double host_wait_ms = 0;     // the host's time inside waits
  // What the host did in the host-late gaps (from each gap's start to the late launch): time in
  // each kind of CUDA call, largest first, and the rest (the host's own code, cuBLASLt's
  // heuristics, ...) as "(outside CUDA calls)".
  std::vector<std::pair<std::string, double>> host_late_calls_ms;
  std::vector<GapGroup> top;   // the largest groups by idle time
  std::vector<KernelTotal> kernels_by_time;  // kernel time by short name, largest first
};

// Summarizes what lies in [window_start, window_end] (activities are clipped to it), `steps`
// steps long. Gaps shorter than `min_gap_ns` are idle time but not grouped or attributed (a
// stream's back-to-back kernels are a microsecond or two apart). `top_n` caps each list but
// kernels_by_time, which keeps 2 * top_n + 6 names.
TimelineSummary Summarize(std::vector<GpuActivity> activities, const std::vector<HostCall>& calls,
                          uint64_t window_start, uint64_t window_end, int steps, size_t top_n = 12,
                          uint64_t min_gap_ns = 4000);

// A few lines for people (per step), and one JSON object (per step too).
std::string FormatSummary(const TimelineSummary& s);
std::string SummaryJson(const TimelineSummary& s);

}  // namespace moe::trace
