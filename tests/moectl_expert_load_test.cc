// The per-expert load per rank that moectl status and metrics print, on known numbers: which
// experts each rank holds (expert e on rank e / (E / W)), its tokens summed over the MoE layers,
// its share, and its GPU.
#include "client/expert_load.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace moe::client {
namespace {

moe::v1::Job MakeJob(int experts, int ranks, bool cuda) {
  moe::v1::Job job;
  job.mutable_spec()->mutable_model()->mutable_moe()->set_num_experts(experts);
  job.mutable_spec()->mutable_resources()->set_ranks(ranks);
  if (cuda) job.mutable_spec()->mutable_resources()->set_device(moe::v1::DEVICE_CUDA);
  return job;
}

// Two layers over 4 experts: per expert 10+90, 20+80, 30+170, 40+160 = 100, 100, 200, 200.
moe::v1::MetricPoint MakePoint() {
  moe::v1::MetricPoint p;
  p.set_step(7);
  auto* l0 = p.add_layers();
  for (int64_t t : {10, 20, 30, 40}) l0->add_tokens_per_expert(t);
  auto* l1 = p.add_layers();
  l1->set_layer(1);
  for (int64_t t : {90, 80, 170, 160}) l1->add_tokens_per_expert(t);
  return p;
}

TEST(MoectlExpertLoad, RanksHoldConsecutiveExpertsWithTheirTokensAndShares) {
  std::vector<RankLoad> loads = RankLoads(MakeJob(4, 2, false), MakePoint());
  ASSERT_EQ(loads.size(), 2u);
  EXPECT_EQ(loads[0].first_expert, 0);
  EXPECT_EQ(loads[0].tokens_per_expert, (std::vector<int64_t>{100, 100}));
  EXPECT_EQ(loads[0].tokens, 200);
  EXPECT_DOUBLE_EQ(loads[0].share, 200.0 / 600);
  EXPECT_EQ(loads[0].gpu, "");
  EXPECT_EQ(loads[1].first_expert, 2);
  EXPECT_EQ(loads[1].tokens_per_expert, (std::vector<int64_t>{200, 200}));
  EXPECT_EQ(loads[1].tokens, 400);
  EXPECT_DOUBLE_EQ(loads[1].share, 400.0 / 600);
}

TEST(MoectlExpertLoad, StatusBlockNamesEachRankItsGpuExpertsTokensAndShare) {
  moe::v1::Job job = MakeJob(4, 4, true);
  job.add_gpus("4");
  job.add_gpus("5");
  job.add_gpus("6");
  job.add_gpus("7");
  const std::string text = FormatExpertLoad(job, MakePoint());
  EXPECT_EQ(text,
            "experts   4 on 4 ranks (1 each), step 7: tokens routed over 2 MoE layers, busiest "
            "rank 1.33x the mean\n"
            "          rank 0  GPU 4   expert 0  tokens 100   16.7%  [100]\n"
            "          rank 1  GPU 5   expert 1  tokens 100   16.7%  [100]\n"
            "          rank 2  GPU 6   expert 2  tokens 200   33.3%  [200]\n"
            "          rank 3  GPU 7   expert 3  tokens 200   33.3%  [200]\n");
  EXPECT_EQ(FormatRankShares(job, MakePoint()), "17/17/33/33");
}

TEST(MoectlExpertLoad, CudaJobWithoutPlacementUsesTheNodeLocalGpu) {
  const std::string text = FormatExpertLoad(MakeJob(4, 2, true), MakePoint());
  EXPECT_TRUE(absl::StrContains(text, "rank 0  GPU 0   experts 0-1  tokens 200   33.3%  [100 100]"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "rank 1  GPU 1   experts 2-3  tokens 400   66.7%  [200 200]"))
      << text;
}

TEST(MoectlExpertLoad, DenseModelAndMissingCountsSaySo) {
  EXPECT_EQ(FormatExpertLoad(MakeJob(1, 2, false), MakePoint()),
            "experts   none: a dense model (num_experts 1), no router\n");
  EXPECT_EQ(FormatExpertLoad(MakeJob(4, 2, false), moe::v1::MetricPoint()),
            "experts   4 on 2 ranks (2 each): no expert counts yet\n");
  EXPECT_TRUE(RankLoads(MakeJob(1, 1, false), MakePoint()).empty());
  EXPECT_EQ(FormatRankShares(MakeJob(4, 1, false), MakePoint()), "");
}

TEST(MoectlExpertLoad, ExpertOptionsLineOnlyWhereTheJobHasThem) {
  moe::v1::MetricPoint p = MakePoint();
  EXPECT_EQ(FormatExpertOptions(p), "");
  p.mutable_layers(0)->set_router_bias_spread(0.012);
  p.mutable_layers(1)->set_router_bias_spread(0.004);
  p.mutable_layers(1)->set_expert_dropout_rate(0.142);
  EXPECT_EQ(FormatExpertOptions(p),
            "options   step 7: layer 0 bias spread 0.012 expert dropout 0.0%; layer 1 bias spread 0.004 expert "
            "dropout 14.2%\n");
}

}  // namespace
}  // namespace moe::client
