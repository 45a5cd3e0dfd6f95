#include "bench/trace/timeline.h"

#include <cxxabi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <unordered_map>
#include <utility>

namespace moe::trace {
namespace {

bool Contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

double Ms(uint64_t ns) { return static_cast<double>(ns) / 1e6; }

// `s` without what lies between matching < and > (template arguments, nested).
std::string WithoutTemplateArgs(const std::string& s) {
  std::string out;
  int depth = 0;
  for (char c : s) {
    if (c == '<') {
      ++depth;
    } else if (c == '>') {
      depth = std::max(0, depth - 1);
    } else if (depth == 0) {
      out += c;
    }
  }
  return out;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

std::string CallBaseName(const std::string& call) {
  std::string s = call;
  for (const char* tail : {"_ptsz", "_ptds"}) {
    if (s.size() > 5 && s.compare(s.size() - 5, 5, tail) == 0) s.resize(s.size() - 5);
  }
  // A version suffix: _v2, _v3020, ...
  const size_t v = s.rfind("_v");
  if (v != std::string::npos && v + 2 < s.size() &&
      s.find_first_not_of("0123456789", v + 2) == std::string::npos) {
    s.resize(v);
  }
  return s;
}

bool IsHostWait(const std::string& call) {
  const std::string s = CallBaseName(call);
  if (Contains(s, "Synchronize") || Contains(s, "EventQuery") || Contains(s, "StreamQuery")) return true;
  // The blocking copies (their Async forms return at once).
  for (const char* copy : {"cudaMemcpy", "cudaMemcpy2D", "cudaMemcpyFromSymbol", "cuMemcpy", "cuMemcpyDtoH",
                           "cuMemcpyHtoD", "cuMemcpyDtoD"}) {
    if (s == copy) return true;
  }
  return false;
}

std::string ShortKernelName(const std::string& name) {
  std::string s = name;
  if (s.rfind("_Z", 0) == 0) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(s.c_str(), nullptr, nullptr, &status),
                                                     std::free);
    if (status == 0 && demangled) s = demangled.get();
  }
  const bool ours = Contains(s, "moe::");
  if (!ours && (s.rfind("nvjet", 0) == 0 || Contains(s, "xmma") || Contains(s, "cutlass") || Contains(s, "gemm") ||
                Contains(s, "cublas"))) {
    return "cuBLASLt product";
  }
  for (std::string anon = "(anonymous namespace)"; s.find(anon) != std::string::npos;) {
    s.replace(s.find(anon), anon.size(), "anon");
  }
  s = WithoutTemplateArgs(s);
  if (const size_t paren = s.find('('); paren != std::string::npos) s.resize(paren);
  if (const size_t space = s.rfind(' '); space != std::string::npos) s = s.substr(space + 1);
  if (const size_t colons = s.rfind("::"); colons != std::string::npos) s = s.substr(colons + 2);
  if (s.size() > 60) s.resize(60);
  return s.empty() ? name.substr(0, 60) : s;
}

TimelineSummary Summarize(std::vector<GpuActivity> activities, const std::vector<HostCall>& calls,
                          uint64_t window_start, uint64_t window_end, int steps, size_t top_n,
                          uint64_t min_gap_ns) {
  TimelineSummary s;
  s.steps = std::max(1, steps);
  if (window_end <= window_start) return s;
  s.window_ms = Ms(window_end - window_start);

  // The GPU's side, clipped to the window, in order of start.
  std::vector<GpuActivity> acts;
  std::unordered_map<std::string, KernelTotal> by_name;
  for (GpuActivity& a : activities) {
    if (a.end <= window_start || a.start >= window_end || a.end < a.start) continue;
    a.start = std::max(a.start, window_start);
    a.end = std::min(a.end, window_end);
    const double ms = Ms(a.end - a.start);
    switch (a.kind) {
      case ActivityKind::kKernel: {
        s.kernel_ms += ms, ++s.kernels;
        KernelTotal& t = by_name[ShortKernelName(a.name)];
        t.count += 1, t.ms += ms;
        break;
      }
      case ActivityKind::kMemcpy: s.memcpy_ms += ms, ++s.memcpys; break;
      case ActivityKind::kMemset: s.memset_ms += ms, ++s.memsets; break;
    }
    acts.push_back(std::move(a));
  }
  std::stable_sort(acts.begin(), acts.end(),
                   [](const GpuActivity& a, const GpuActivity& b) { return a.start < b.start; });

  // The host's side: when each launch began (by correlation id; the earliest call of an id),
  // and the waits in order of their end.
  std::unordered_map<uint32_t, uint64_t> launched;
  std::vector<const HostCall*> waits;
  for (const HostCall& c : calls) {
    if (c.correlation != 0) {
      auto [it, fresh] = launched.emplace(c.correlation, c.start);
      if (!fresh) it->second = std::min(it->second, c.start);
    }
    if (IsHostWait(c.name)) {
      waits.push_back(&c);
      const uint64_t a = std::max(c.start, window_start), b = std::min(c.end, window_end);
      if (b > a) s.host_wait_ms += Ms(b - a);
    }
  }
  std::sort(waits.begin(), waits.end(), [](const HostCall* a, const HostCall* b) { return a->end < b->end; });
  std::vector<const HostCall*> by_start;
  for (const HostCall& c : calls) by_start.push_back(&c);
  std::sort(by_start.begin(), by_start.end(), [](const HostCall* a, const HostCall* b) { return a->start < b->start; });
  uint64_t longest_call = 0;
  for (const HostCall& c : calls) longest_call = std::max(longest_call, c.end > c.start ? c.end - c.start : 0);
  std::map<std::string, double> late_calls;
  // The host's time in [a, b) by call (nested calls, a runtime call and the driver calls inside
  // it, would count twice: only the outermost call of an overlapping run counts).
  auto host_time = [&](uint64_t a, uint64_t b) {
    if (b <= a) return;
    uint64_t covered_until = a, inside = 0;
    auto it = std::lower_bound(by_start.begin(), by_start.end(), a > longest_call ? a - longest_call : 0,
                               [](const HostCall* c, uint64_t t) { return c->start < t; });
    for (; it != by_start.end() && (*it)->start < b; ++it) {
      const uint64_t c0 = std::max({(*it)->start, a, covered_until}), c1 = std::min((*it)->end, b);
      if (c1 <= c0) continue;
      late_calls[(*it)->name] += Ms(c1 - c0);
      inside += c1 - c0;
      covered_until = c1;
    }
    late_calls["(outside CUDA calls)"] += Ms(b - a - inside);
  };

  std::map<std::pair<std::string, std::string>, GapGroup> groups;
  auto add_gap = [&](uint64_t g0, uint64_t g1, const std::string& before, const GpuActivity* next) {
    const uint64_t len = g1 - g0;
    if (len < min_gap_ns) {
      s.idle_short_ms += Ms(len);
      return;
    }
    ++s.gaps;
    // When the host asked for what came next (the window's end: when the host closed it).
    uint64_t asked = g1;
    bool known = true;
    if (next != nullptr) {
      auto it = launched.find(next->correlation);
      known = next->correlation != 0 && it != launched.end();
      if (known) asked = it->second;
    }
    GapGroup& g = groups[{before, next != nullptr ? next->name : "(window end)"}];
    g.before = before;
    g.after = next != nullptr ? next->name : "(window end)";
    ++g.count;
    g.idle_ms += Ms(len);
    if (!known) {
      s.idle_unknown_ms += Ms(len);
    } else if (asked >= g0) {
      s.idle_host_late_ms += Ms(len);
      g.host_late_ms += Ms(len);
      host_time(g0, std::min(asked, g1));
      // Did the host come out of a wait on the GPU during the gap, before asking?
      auto it = std::upper_bound(waits.begin(), waits.end(), asked,
                                 [](uint64_t t, const HostCall* w) { return t < w->end; });
      if (it != waits.begin() && (*std::prev(it))->end >= g0) {
        s.idle_after_wait_ms += Ms(len);
        g.after_wait_ms += Ms(len);
      }
    } else {
      s.idle_gpu_ms += Ms(len);
    }
  };

  uint64_t busy_until = window_start;
  std::string last = "(window start)";
  uint64_t busy = 0;
  for (const GpuActivity& a : acts) {
    if (a.start > busy_until) add_gap(busy_until, a.start, last, &a);
    if (a.end > busy_until) {
      busy += a.end - std::max(a.start, busy_until);
      busy_until = a.end;
      last = a.name;
    }
  }
  if (window_end > busy_until) add_gap(busy_until, window_end, last, nullptr);
  s.busy_ms = Ms(busy);
  s.idle_ms = s.window_ms - s.busy_ms;

  for (const auto& [name, ms] : late_calls) s.host_late_calls_ms.emplace_back(name, ms);
  std::sort(s.host_late_calls_ms.begin(), s.host_late_calls_ms.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  if (s.host_late_calls_ms.size() > top_n) s.host_late_calls_ms.resize(top_n);
  for (auto& [key, g] : groups) s.top.push_back(g);
  std::sort(s.top.begin(), s.top.end(), [](const GapGroup& a, const GapGroup& b) { return a.idle_ms > b.idle_ms; });
  if (s.top.size() > top_n) s.top.resize(top_n);
  for (auto& [name, t] : by_name) {
    t.name = name;
    s.kernels_by_time.push_back(t);
  }
  std::sort(s.kernels_by_time.begin(), s.kernels_by_time.end(), [](const KernelTotal& a, const KernelTotal& b) {
    return a.ms != b.ms ? a.ms > b.ms : a.name < b.name;
  });
  if (s.kernels_by_time.size() > 2 * top_n + 6) s.kernels_by_time.resize(2 * top_n + 6);
  return s;
}

std::string FormatSummary(const TimelineSummary& s) {
  const double k = 1.0 / s.steps;
  char buf[512];
  std::string out;
  std::snprintf(buf, sizeof(buf),
                "# trace: %d steps, %.2f ms a step: GPU busy %.2f ms (kernels %.2f ms in %d, copies %.2f ms in %d, "
                "memsets %.2f ms in %d), idle %.2f ms (%.1f%%)\n",
                s.steps, s.window_ms * k, s.busy_ms * k, s.kernel_ms * k, s.kernels / s.steps, s.memcpy_ms * k,
                s.memcpys / s.steps, s.memset_ms * k, s.memsets / s.steps, s.idle_ms * k,
                s.window_ms > 0 ? 100.0 * s.idle_ms / s.window_ms : 0.0);
  out += buf;
  std::snprintf(buf, sizeof(buf),
                "# trace: idle a step: host late %.2f ms (of it after a wait on the GPU %.2f ms), GPU side %.2f ms, "
                "gaps too short to attribute %.2f ms, unknown %.2f ms; %.1f gaps; the host waited %.2f ms\n",
                s.idle_host_late_ms * k, s.idle_after_wait_ms * k, s.idle_gpu_ms * k, s.idle_short_ms * k,
                s.idle_unknown_ms * k,
                static_cast<double>(s.gaps) * k, s.host_wait_ms * k);
  out += buf;
  out += "# trace: the host in the host-late gaps, a step:";
  for (const auto& [name, ms] : s.host_late_calls_ms) {
    std::snprintf(buf, sizeof(buf), " %s %.3f ms;", name.c_str(), ms * k);
    out += buf;
  }
  out += "\n";
  out += "# trace: largest idle by neighbours, a step: ms, gaps, host late ms, after a wait ms: before -> after\n";
  for (const GapGroup& g : s.top) {
    std::snprintf(buf, sizeof(buf), "#   %7.3f %5.1f %7.3f %7.3f  %s -> %s\n", g.idle_ms * k, g.count * k,
                  g.host_late_ms * k, g.after_wait_ms * k, g.before.c_str(), g.after.c_str());
    out += buf;
  }
  out += "# trace: kernels by time, a step: ms, launches, name\n";
  for (const KernelTotal& t : s.kernels_by_time) {
    std::snprintf(buf, sizeof(buf), "#   %7.3f %6.1f  %s\n", t.ms * k, t.count * k, t.name.c_str());
    out += buf;
  }
  return out;
}

std::string SummaryJson(const TimelineSummary& s) {
  const double k = 1.0 / s.steps;
  char buf[640];
  std::snprintf(buf, sizeof(buf),
                "{\"bench\": \"gpu_trace\", \"steps\": %d, \"step_ms\": %.3f, \"busy_ms\": %.3f, \"kernel_ms\": %.3f, "
                "\"kernels\": %.1f, \"memcpy_ms\": %.3f, \"memcpys\": %.1f, \"memset_ms\": %.3f, \"memsets\": %.1f, "
                "\"idle_ms\": %.3f, \"idle_host_late_ms\": %.3f, \"idle_after_wait_ms\": %.3f, \"idle_gpu_ms\": %.3f, "
                "\"idle_short_ms\": %.3f, \"idle_unknown_ms\": %.3f, \"gaps\": %.1f, \"host_wait_ms\": %.3f, ",
                s.steps, s.window_ms * k, s.busy_ms * k, s.kernel_ms * k, s.kernels * k, s.memcpy_ms * k,
                s.memcpys * k, s.memset_ms * k, s.memsets * k, s.idle_ms * k, s.idle_host_late_ms * k,
                s.idle_after_wait_ms * k, s.idle_gpu_ms * k, s.idle_short_ms * k, s.idle_unknown_ms * k, s.gaps * k, s.host_wait_ms * k);
  std::string out = buf;
  out += "\"host_late_calls_ms\": {";
  for (size_t i = 0; i < s.host_late_calls_ms.size(); ++i) {
    std::snprintf(buf, sizeof(buf), "%s%s: %.3f", i ? ", " : "", JsonString(s.host_late_calls_ms[i].first).c_str(),
                  s.host_late_calls_ms[i].second * k);
    out += buf;
  }
  out += "}, \"top\": [";
  for (size_t i = 0; i < s.top.size(); ++i) {
    const GapGroup& g = s.top[i];
    std::snprintf(buf, sizeof(buf), "%s{\"before\": %s, \"after\": %s, \"gaps\": %.2f, \"idle_ms\": %.3f, "
                  "\"host_late_ms\": %.3f, \"after_wait_ms\": %.3f}",
                  i ? ", " : "", JsonString(g.before).c_str(), JsonString(g.after).c_str(), g.count * k,
                  g.idle_ms * k, g.host_late_ms * k, g.after_wait_ms * k);
    out += buf;
  }
  out += "], \"kernels_by_time\": [";
  for (size_t i = 0; i < s.kernels_by_time.size(); ++i) {
    const KernelTotal& t = s.kernels_by_time[i];
    std::snprintf(buf, sizeof(buf), "%s{\"name\": %s, \"launches\": %.2f, \"ms\": %.3f}", i ? ", " : "",
                  JsonString(t.name).c_str(), t.count * k, t.ms * k);
    out += buf;
  }
  return out + "]}";
}

}  // namespace moe::trace
