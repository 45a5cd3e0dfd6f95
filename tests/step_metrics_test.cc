// A step's MetricPoint from what the step measured (worker/train/step_metrics.h): MFU is per GPU,
// so the same work per GPU gives the same MFU on 1, 2 or 4 of them, and none is reported
// without a known peak; peak memory in MiB; the time split; per-layer routing stats, with a
// step's micro-steps merged by MoeLayerForwardStats::Add.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "client/output.h"
#include "common/number_text.h"
#include "gtest/gtest.h"
#include "worker/model/train_model.h"
#include "worker/train/step_metrics.h"

namespace moe {
namespace {

TEST(StepMetricsTest, MfuPerGpuDoesNotGrowWithTheNumberOfGpus) {
  const double flops_per_token = 6.0e9;           // a ~1B-active model
  const double tokens_per_s_per_gpu = 50000;      // the same work on every GPU
  const double peak = 989e12;                     // one H200's dense bf16 peak
  const double one_gpu = flops_per_token * tokens_per_s_per_gpu / peak;  // 0.3033...
  for (int w : {1, 2, 4}) {
    const double global_tokens_per_s = w * tokens_per_s_per_gpu;
    const double mfu = ModelFlopsUtilization(flops_per_token, global_tokens_per_s, w, peak);
    EXPECT_DOUBLE_EQ(mfu, one_gpu) << w << " GPUs";
    // The old formula (global FLOP/s over one GPU's peak) grew W times.
    EXPECT_DOUBLE_EQ(flops_per_token * global_tokens_per_s / peak, w * one_gpu);
  }
}

TEST(StepMetricsTest, NoMfuWithoutAPeak) {
  EXPECT_EQ(ModelFlopsUtilization(6e9, 5e4, 2, 0), 0);
  StepMeasurements m;
  m.tokens = 512;
  m.step_seconds = 0.5;
  m.flops_per_token = 1e6;
  m.peak_flops_per_device = 0;  // the CPU backend
  EXPECT_EQ(BuildMetricPoint(m).mfu(), 0);
  m.peak_flops_per_device = 1e9;
  m.world_size = 2;
  // 1024 tokens/s * 1e6 FLOPs over 2 devices of 1e9 FLOP/s.
  EXPECT_DOUBLE_EQ(BuildMetricPoint(m).mfu(), 1024 * 1e6 / 2e9);
}

TEST(StepMetricsTest, PointCarriesTheMeasurements) {
  StepMeasurements m;
  m.step = 7;
  m.lr = 1e-3;
  m.loss = 2.5;
  m.aux_loss = 0.01;
  m.z_loss = 0.002;
  m.grad_norm = 0.75;
  m.tokens = 1000;
  m.step_seconds = 0.25;
  m.forward_seconds = 0.1;
  m.backward_seconds = 0.12;
  m.optimizer_seconds = 0.03;
  m.comm.all_to_all = 0.02;
  m.comm.all_reduce = 0.01;
  m.peak_memory_bytes = int64_t{3} << 20;
  const moe::v1::MetricPoint p = BuildMetricPoint(m);
  EXPECT_EQ(p.step(), 7);
  EXPECT_EQ(p.loss(), 2.5);
  EXPECT_EQ(p.aux_loss(), 0.01);
  EXPECT_EQ(p.z_loss(), 0.002);
  EXPECT_EQ(p.lr(), 1e-3);
  EXPECT_EQ(p.grad_norm(), 0.75);
  EXPECT_DOUBLE_EQ(p.tokens_per_s(), 4000);
  EXPECT_DOUBLE_EQ(p.step_ms(), 250);
  EXPECT_DOUBLE_EQ(p.peak_memory_mb(), 3);
  EXPECT_DOUBLE_EQ(p.times().all_to_all_ms(), 20);
  EXPECT_DOUBLE_EQ(p.times().all_reduce_ms(), 10);
  EXPECT_NEAR(p.times().compute_ms(), 220, 1e-9);  // step - all-to-all - all-reduce
  EXPECT_DOUBLE_EQ(p.times().forward_ms(), 100);
  EXPECT_DOUBLE_EQ(p.times().backward_ms(), 120);
  EXPECT_DOUBLE_EQ(p.times().optimizer_ms(), 30);
  EXPECT_EQ(p.layers_size(), 0);  // a dense model
}

TEST(StepMetricsTest, LayerStatsOfTwoMicroStepsAddUp) {
  // Layer 0 of micro-steps 1 and 2: 4 experts, top-2, 8 tokens each.
  MoeLayerForwardStats a, b;
  a.routed = {6, 4, 4, 2};
  a.assignments = 16;
  a.dropped = 1;
  a.entropy_sum = 8.0;
  b.routed = {2, 4, 4, 6};
  b.assignments = 16;
  b.dropped = 3;
  b.entropy_sum = 4.0;
  MoeLayerForwardStats step;  // empty, as before the first micro-step
  step.Add(a);
  step.Add(b);
  EXPECT_EQ(step.routed, (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(step.assignments, 32);
  EXPECT_EQ(step.dropped, 4);
  EXPECT_EQ(step.entropy_sum, 12.0);

  StepMeasurements m;
  m.tokens = 16;
  m.step_seconds = 1;
  m.top_k = 2;
  m.layers = {step, a};
  const moe::v1::MetricPoint p = BuildMetricPoint(m);
  ASSERT_EQ(p.layers_size(), 2);
  EXPECT_EQ(p.layers(0).layer(), 0);
  EXPECT_EQ(p.layers(0).tokens_per_expert_size(), 4);
  EXPECT_EQ(p.layers(0).load_imbalance(), 1.0);
  EXPECT_EQ(p.layers(0).drop_rate(), 4.0 / 32);
  EXPECT_EQ(p.layers(0).router_entropy(), 12.0 / 16);  // per token: 32 assignments / k
  EXPECT_EQ(p.layers(1).layer(), 1);
  EXPECT_EQ(p.layers(1).load_imbalance(), 6.0 / 4);
}

TEST(StepMetricsTest, ExpertOptionsMetricsAreApartFromCapacityDrops) {
  // Two micro-steps: expert dropout removed 3 then 5 of 16 assignments, capacity 1 then 0.
  MoeLayerForwardStats a, b;
  a.routed = {6, 4, 4, 2};
  a.assignments = 16;
  a.dropped = 1;
  a.expert_dropped = 3;
  b.routed = {2, 4, 4, 6};
  b.assignments = 16;
  b.expert_dropped = 5;
  MoeLayerForwardStats step;
  step.Add(a);
  step.Add(b);
  EXPECT_EQ(step.expert_dropped, 8);
  StepMeasurements m;
  m.tokens = 16;
  m.step_seconds = 1;
  m.top_k = 2;
  m.layers = {step, step};
  m.router_bias_spread = {0.03, 0.0};
  const moe::v1::MetricPoint p = BuildMetricPoint(m);
  ASSERT_EQ(p.layers_size(), 2);
  EXPECT_EQ(p.layers(0).drop_rate(), 1.0 / 32);
  EXPECT_EQ(p.layers(0).expert_dropout_rate(), 8.0 / 32);
  EXPECT_EQ(p.layers(0).router_bias_spread(), 0.03);
  EXPECT_EQ(p.layers(1).router_bias_spread(), 0.0);
  // Without balancing (no spreads), the field stays 0.
  m.router_bias_spread.clear();
  EXPECT_EQ(BuildMetricPoint(m).layers(0).router_bias_spread(), 0.0);

  // moectl metrics -o json: the options' values where the job has them, absent otherwise.
  const auto json = client::PointToJson(p);
  EXPECT_EQ(json["layers"][0]["router_bias_spread"].get<double>(), 0.03);
  EXPECT_EQ(json["layers"][0]["expert_dropout_rate"].get<double>(), 8.0 / 32);
  EXPECT_FALSE(json["layers"][1].contains("router_bias_spread"));
  moe::v1::MetricPoint plain = p;
  plain.mutable_layers(0)->set_expert_dropout_rate(0);
  EXPECT_FALSE(client::PointToJson(plain)["layers"][0].contains("expert_dropout_rate"));
  // MFU only where there is a peak to measure against (cuda jobs): a CPU job's 0 is left out.
  EXPECT_FALSE(client::PointToJson(plain).contains("mfu"));
  plain.set_mfu(0.25);
  EXPECT_EQ(client::PointToJson(plain)["mfu"].get<double>(), 0.25);
}

// A diverged job's loss reads "nan" in moectl's tables and CSV (printf printed "-nan" for the
// NaN a sum of infinities gives), and a number as before.
TEST(StepMetricsTest, TablesAndCsvSayNanForALossThatIsNoNumber) {
  const double nan = -std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(Fixed(nan, 4), "nan");
  EXPECT_EQ(Fixed(2.5, 4), "2.5000");
  EXPECT_EQ(Fixed(std::numeric_limits<double>::infinity(), 2), "inf");
  EXPECT_EQ(Significant(nan, 6), "nan");
  EXPECT_EQ(Significant(0.00125, 6), "0.00125");
  // moectl validate's description: the value as written (%g said 1 for 0.9999999).
  EXPECT_EQ(Shortest(0.9999999), "0.9999999");
  EXPECT_EQ(Shortest(0.1), "0.1");
  EXPECT_EQ(Shortest(3e-4), "0.0003");
  EXPECT_EQ(Shortest(1e6), "1e+06");
  EXPECT_EQ(Shortest(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(Shortest(nan), "nan");
  moe::v1::Job job;
  job.set_id("j-000001");
  job.mutable_latest()->set_step(3);
  job.mutable_latest()->set_loss(nan);
  const std::vector<std::string> row = client::JobCsvRow(job);
  const std::vector<std::string> header = client::JobCsvHeader();
  ASSERT_NE(std::find(header.begin(), header.end(), "loss"), header.end());
  for (size_t i = 0; i < header.size() && i < row.size(); ++i) {
    if (header[i] == "loss") {
      EXPECT_EQ(row[i], "nan");
    }
  }
}

}  // namespace
}  // namespace moe
