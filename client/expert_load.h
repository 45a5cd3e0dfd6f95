// Per-expert load per rank (and GPU) for moectl status and metrics: which experts each rank holds
// (E / W consecutive experts per rank: expert e on rank e / (E / W)) and the tokens routed to them
// in one metric point, summed over the MoE layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/v1/control.pb.h"

namespace moe::client {

struct RankLoad {
  int rank = 0;
  std::string gpu;                         // "" for a cpu job
  int first_expert = 0;                    // experts first_expert .. + tokens_per_expert.size() - 1
  std::vector<int64_t> tokens_per_expert;  // summed over the MoE layers
  int64_t tokens = 0;                      // sum of tokens_per_expert
  double share = 0;                        // tokens / all ranks' tokens (0 when none)
};

// One entry per rank; empty for a dense model (num_experts 1) or a point without layer stats.
std::vector<RankLoad> RankLoads(const moe::v1::Job& job, const moe::v1::MetricPoint& point);

// What moectl status prints under "experts": a header line and one line per rank, e.g.
//   experts   4 on 2 ranks (2 each), step 10: tokens routed over 2 MoE layers, busiest rank 1.20x the mean
//             rank 0  GPU 0  experts 0-1  tokens 300  60.0%  [100 200]
// or one line for a dense model or a point without expert counts.
std::string FormatExpertLoad(const moe::v1::Job& job, const moe::v1::MetricPoint& point);

// The expert options' metrics of one point, per MoE layer, when the job has them (loss-free
// balancing's router-bias spread, the share of assignments expert dropout removed), e.g.
//   options   step 10: layer 0 bias spread 0.012 expert dropout 14.2%; layer 1 bias spread 0.008 ...
// "" when the point carries neither.
std::string FormatExpertOptions(const moe::v1::MetricPoint& point);

// Each rank's share of the routed tokens in whole percent, "60/40", for the metrics table; ""
// for a dense or one-rank job or a point without expert counts.
std::string FormatRankShares(const moe::v1::Job& job, const moe::v1::MetricPoint& point);

}  // namespace moe::client
