// bench/trace/timeline.h: the summary moe_bench --trace prints, on timelines built by hand
// (times in microseconds below, the trace's clock is in ns).
#include "bench/trace/timeline.h"

#include <gtest/gtest.h>

namespace moe::trace {
namespace {

constexpr uint64_t kUs = 1000;

GpuActivity Kernel(const std::string& name, uint64_t start_us, uint64_t end_us, uint32_t corr) {
  return {ActivityKind::kKernel, name, start_us * kUs, end_us * kUs, corr};
}
HostCall Call(const std::string& name, uint64_t start_us, uint64_t end_us, uint32_t corr = 0) {
  return {name, start_us * kUs, end_us * kUs, corr};
}

TEST(GpuTimelineTest, BusyIsTheUnionAndIdleTheRest) {
  // Two streams overlapping (10-50 and 30-70), then a kernel at 100-120, window 0-200.
  std::vector<GpuActivity> acts = {Kernel("a", 10, 50, 1), Kernel("b", 30, 70, 2), Kernel("c", 100, 120, 3),
                                   {ActivityKind::kMemcpy, "memcpy DtoH", 120 * kUs, 125 * kUs, 4}};
  std::vector<HostCall> calls = {Call("cudaLaunchKernel", 5, 6, 1), Call("cudaLaunchKernel", 6, 7, 2),
                                 Call("cudaLaunchKernel", 7, 8, 3), Call("cudaMemcpyAsync", 8, 9, 4)};
  const TimelineSummary s = Summarize(acts, calls, 0, 200 * kUs, 2);
  EXPECT_DOUBLE_EQ(s.window_ms, 0.2);
  EXPECT_NEAR(s.busy_ms, 0.060 + 0.020 + 0.005, 1e-12);
  EXPECT_NEAR(s.idle_ms, 0.2 - 0.085, 1e-12);
  EXPECT_NEAR(s.kernel_ms, 0.040 + 0.040 + 0.020, 1e-12);  // per activity: overlaps count twice
  EXPECT_EQ(s.kernels, 3);
  EXPECT_EQ(s.memcpys, 1);
  EXPECT_NEAR(s.memcpy_ms, 0.005, 1e-12);
  // Every idle microsecond is in one of the classes.
  EXPECT_NEAR(s.idle_host_late_ms + s.idle_gpu_ms + s.idle_short_ms + s.idle_unknown_ms, s.idle_ms, 1e-12);
  // 70-100: "c" was launched at 7 us, long before the GPU went idle: the GPU's side.
  EXPECT_NEAR(s.idle_gpu_ms, 0.030, 1e-12);
  // 0-10: "a" launched at 5 us, after the window opened; 125-200: the window's end, which the
  // host closed: host late.
  EXPECT_NEAR(s.idle_host_late_ms, 0.010 + 0.075, 1e-12);
}

TEST(GpuTimelineTest, KernelTimeIsSummedByShortNameLargestFirst) {
  // Two launches of one kernel (their template arguments differ), one of another, one clipped by
  // the window's end (80-110 counts 80-100), a copy (not a kernel), two steps.
  std::vector<GpuActivity> acts = {Kernel("_ZN3moe4cuda12_GLOBAL__N_19AddKernelILi4EEEvPfi", 0, 10, 1),
                                   Kernel("_ZN3moe4cuda12_GLOBAL__N_19AddKernelILi8EEEvPfi", 20, 26, 2),
                                   Kernel("RouterKernel", 30, 50, 3), Kernel("RouterKernel", 80, 110, 4),
                                   {ActivityKind::kMemcpy, "memcpy DtoH", 60 * kUs, 70 * kUs, 5}};
  const TimelineSummary s = Summarize(acts, {}, 0, 100 * kUs, 2);
  ASSERT_EQ(s.kernels_by_time.size(), 2u);
  EXPECT_EQ(s.kernels_by_time[0].name, "RouterKernel");
  EXPECT_EQ(s.kernels_by_time[0].count, 2);
  EXPECT_NEAR(s.kernels_by_time[0].ms, 0.040, 1e-12);
  EXPECT_EQ(s.kernels_by_time[1].name, "AddKernel");
  EXPECT_EQ(s.kernels_by_time[1].count, 2);
  EXPECT_NEAR(s.kernels_by_time[1].ms, 0.016, 1e-12);
  // Per step in the text and the JSON.
  EXPECT_NE(FormatSummary(s).find("#     0.020    1.0  RouterKernel\n"), std::string::npos) << FormatSummary(s);
  EXPECT_NE(SummaryJson(s).find("{\"name\": \"AddKernel\", \"launches\": 1.00, \"ms\": 0.008}"), std::string::npos)
      << SummaryJson(s);
}

TEST(GpuTimelineTest, HostLateAfterAWaitIsAttributedToTheWait) {
  // The router's kernel ends at 100; its counts copy 100-102; the host waits (event query loop)
  // until 103, plans until 150, launches the gather at 150, which runs 155-200.
  std::vector<GpuActivity> acts = {Kernel("RouterKernel", 50, 100, 1),
                                   {ActivityKind::kMemcpy, "memcpy DtoH", 100 * kUs, 102 * kUs, 2},
                                   Kernel("GatherKernel", 155, 200, 3), Kernel("late", 230, 240, 4)};
  std::vector<HostCall> calls = {Call("cudaLaunchKernel", 10, 12, 1), Call("cudaMemcpyAsync", 12, 13, 2),
                                 Call("cudaEventQuery", 20, 21), Call("cudaEventQuery", 101, 103),
                                 Call("cudaLaunchKernel", 150, 152, 3), Call("cuLaunchKernel", 220, 221, 4)};
  const TimelineSummary s = Summarize(acts, calls, 50 * kUs, 240 * kUs, 1);
  EXPECT_EQ(s.gaps, 2);
  // 102-155 (53 us): launched at 150 after the wait ended at 103: host late, after a wait.
  // 200-230 (30 us): launched at 220, no wait in between: host late only.
  EXPECT_NEAR(s.idle_host_late_ms, 0.053 + 0.030, 1e-12);
  EXPECT_NEAR(s.idle_after_wait_ms, 0.053, 1e-12);
  EXPECT_NEAR(s.host_wait_ms, 0.002, 1e-12);  // the query inside the window (20-21 is before it)
  ASSERT_EQ(s.top.size(), 2u);
  EXPECT_EQ(s.top[0].before, "memcpy DtoH");
  EXPECT_EQ(s.top[0].after, "GatherKernel");
  EXPECT_EQ(s.top[0].count, 1);
  EXPECT_NEAR(s.top[0].after_wait_ms, 0.053, 1e-12);
  EXPECT_EQ(s.top[1].before, "GatherKernel");
  EXPECT_NEAR(s.top[1].after_wait_ms, 0, 1e-12);
  // The host in those gaps, up to each late launch: 102-150 (in the query until 103) and 200-220.
  ASSERT_EQ(s.host_late_calls_ms.size(), 2u);
  EXPECT_EQ(s.host_late_calls_ms[0].first, "(outside CUDA calls)");
  EXPECT_NEAR(s.host_late_calls_ms[0].second, 0.047 + 0.020, 1e-12);
  EXPECT_EQ(s.host_late_calls_ms[1].first, "cudaEventQuery");
  EXPECT_NEAR(s.host_late_calls_ms[1].second, 0.001, 1e-12);
  EXPECT_NE(SummaryJson(s).find("\"host_late_calls_ms\": {\"(outside CUDA calls)\": 0.067, \"cudaEventQuery\": 0.001}"),
            std::string::npos)
      << SummaryJson(s);
}

TEST(GpuTimelineTest, NestedHostCallsCountOnce) {
  // A runtime call (10-30) with a driver call inside it (15-20), both in a host-late gap 5-40.
  std::vector<GpuActivity> acts = {Kernel("a", 0, 5, 1), Kernel("b", 40, 50, 2)};
  std::vector<HostCall> calls = {Call("cudaLaunchKernel", 0, 1, 1), Call("cudaMemcpyAsync", 10, 30),
                                 Call("cuMemcpyHtoDAsync", 15, 20), Call("cudaLaunchKernel", 35, 36, 2)};
  const TimelineSummary s = Summarize(acts, calls, 0, 50 * kUs, 1);
  double total = 0, copy = 0;
  for (const auto& [name, ms] : s.host_late_calls_ms) {
    total += ms;
    if (name == "cudaMemcpyAsync") copy = ms;
  }
  EXPECT_NEAR(total, 0.030, 1e-12);  // 5-35: every microsecond once
  EXPECT_NEAR(copy, 0.020, 1e-12);
}

TEST(GpuTimelineTest, ShortGapsAndUnknownLaunches) {
  // 2 us between back-to-back kernels: under the 4 us threshold, idle but not grouped. A kernel
  // whose launching call is missing from the trace: unknown.
  std::vector<GpuActivity> acts = {Kernel("a", 0, 10, 1), Kernel("b", 12, 20, 2), Kernel("c", 40, 50, 9)};
  std::vector<HostCall> calls = {Call("cudaLaunchKernel", 0, 1, 1), Call("cudaLaunchKernel", 1, 2, 2)};
  const TimelineSummary s = Summarize(acts, calls, 0, 50 * kUs, 1);
  EXPECT_NEAR(s.idle_short_ms, 0.002, 1e-12);
  EXPECT_NEAR(s.idle_unknown_ms, 0.020, 1e-12);
  EXPECT_EQ(s.gaps, 1);
  ASSERT_EQ(s.top.size(), 1u);
  EXPECT_EQ(s.top[0].after, "c");
}

TEST(GpuTimelineTest, ActivitiesAreClippedToTheWindowAndGroupsAddUp) {
  // The same transition three times (a step's layers), and a kernel straddling the window.
  std::vector<GpuActivity> acts = {Kernel("warm", 0, 20, 1)};
  std::vector<HostCall> calls = {Call("cudaLaunchKernel", 0, 1, 1)};
  uint32_t corr = 2;
  for (uint64_t t = 100; t < 400; t += 100) {
    acts.push_back(Kernel("Router", t, t + 10, corr));
    calls.push_back(Call("cudaLaunchKernel", t - 50, t - 49, corr++));
    acts.push_back(Kernel("Gather", t + 30, t + 40, corr));
    calls.push_back(Call("cudaStreamSynchronize", t - 49, t + 12));
    calls.push_back(Call("cudaLaunchKernel", t + 25, t + 26, corr++));
  }
  const TimelineSummary s = Summarize(acts, calls, 10 * kUs, 340 * kUs, 3);
  EXPECT_NEAR(s.kernel_ms, 0.010 + 6 * 0.010, 1e-12);  // "warm" counts 10-20 only
  const GapGroup* g = nullptr;
  for (const GapGroup& x : s.top) {
    if (x.before == "Router" && x.after == "Gather") g = &x;
  }
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->count, 3);
  EXPECT_NEAR(g->idle_ms, 3 * 0.020, 1e-12);
  EXPECT_NEAR(g->after_wait_ms, 3 * 0.020, 1e-12);
  // Per step in the text and the JSON.
  const std::string text = FormatSummary(s), json = SummaryJson(s);
  EXPECT_NE(text.find("3 steps"), std::string::npos) << text;
  EXPECT_NE(json.find("\"bench\": \"gpu_trace\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"before\": \"Router\", \"after\": \"Gather\", \"gaps\": 1.00"), std::string::npos) << json;
}

TEST(GpuTimelineTest, EmptyOrBackwardWindowIsAllZero) {
  const TimelineSummary s = Summarize({Kernel("a", 0, 10, 1)}, {}, 50 * kUs, 50 * kUs, 0);
  EXPECT_EQ(s.steps, 1);
  EXPECT_EQ(s.window_ms, 0);
  EXPECT_EQ(s.kernels, 0);
  EXPECT_TRUE(s.top.empty());
  EXPECT_NE(SummaryJson(s).find("\"steps\": 1"), std::string::npos);
}

TEST(GpuTimelineTest, NamesAndWaits) {
  EXPECT_EQ(ShortKernelName("_ZN3moe4cuda12_GLOBAL__N_113RmsNormKernelILi4EEEvPfPKfi"), "RmsNormKernel");
  EXPECT_EQ(ShortKernelName("void moe::cuda::(anonymous namespace)::Foo<float, 3>(float*, int)"), "Foo");
  EXPECT_EQ(ShortKernelName("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT"), "cuBLASLt product");
  EXPECT_EQ(ShortKernelName("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"), "cuBLASLt product");
  EXPECT_EQ(ShortKernelName("ncclDevKernel_AllToAll"), "ncclDevKernel_AllToAll");
  EXPECT_EQ(CallBaseName("cudaStreamSynchronize_v3020"), "cudaStreamSynchronize");
  EXPECT_EQ(CallBaseName("cuMemcpyDtoH_v2"), "cuMemcpyDtoH");
  EXPECT_EQ(CallBaseName("cudaLaunchKernel_ptsz"), "cudaLaunchKernel");
  EXPECT_EQ(CallBaseName("cudaMemcpy_v"), "cudaMemcpy_v");  // not a version suffix
  EXPECT_TRUE(IsHostWait("cudaEventSynchronize"));
  EXPECT_TRUE(IsHostWait("cudaEventQuery"));
  EXPECT_TRUE(IsHostWait("cuStreamSynchronize"));
  EXPECT_TRUE(IsHostWait("cudaMemcpy_v3020"));
  EXPECT_TRUE(IsHostWait("cuMemcpyDtoH_v2"));
  EXPECT_FALSE(IsHostWait("cudaMemcpyAsync"));
  EXPECT_FALSE(IsHostWait("cuMemcpyDtoHAsync_v2"));
  EXPECT_FALSE(IsHostWait("cudaLaunchKernel"));
  EXPECT_FALSE(IsHostWait("cudaStreamWaitEvent"));
}

}  // namespace
}  // namespace moe::trace
