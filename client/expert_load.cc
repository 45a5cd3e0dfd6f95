// Per-expert load per rank: the expert -> rank map and the text moectl prints.
#include "client/expert_load.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe::client {
namespace {

constexpr int kMaxExpertsShown = 16;  // per rank; moectl metrics --format json has them all

int NumExperts(const moe::v1::Job& job) { return job.spec().model().moe().num_experts(); }
int NumRanks(const moe::v1::Job& job) { return std::max(1, job.spec().resources().ranks()); }

// The GPU rank r uses: what moed placed it on (local launcher), else its node-local index (the
// worker takes local rank % GPUs of the node).
std::string GpuOf(const moe::v1::Job& job, int r) {
  const moe::v1::ResourceSpec& res = job.spec().resources();
  if (res.device() != moe::v1::DEVICE_CUDA) return "";
  if (r < job.gpus_size()) return job.gpus(r);
  const int per_node = res.slurm().ranks_per_node() > 0 ? res.slurm().ranks_per_node() : NumRanks(job);
  return absl::StrCat(r % per_node);
}

}  // namespace

std::vector<RankLoad> RankLoads(const moe::v1::Job& job, const moe::v1::MetricPoint& point) {
  const int E = NumExperts(job), W = NumRanks(job);
  if (E <= 1 || E % W != 0 || point.layers().empty()) return {};
  std::vector<int64_t> per_expert(static_cast<size_t>(E), 0);
  for (const moe::v1::MoeLayerStats& l : point.layers()) {
    for (int e = 0; e < std::min(E, l.tokens_per_expert_size()); ++e) {
      per_expert[static_cast<size_t>(e)] += l.tokens_per_expert(e);
    }
  }
  int64_t total = 0;
  for (int64_t t : per_expert) total += t;
  const int local = E / W;
  std::vector<RankLoad> out(static_cast<size_t>(W));
  for (int r = 0; r < W; ++r) {
    RankLoad& rl = out[static_cast<size_t>(r)];
    rl.rank = r;
    rl.gpu = GpuOf(job, r);
    rl.first_expert = r * local;
    rl.tokens_per_expert.assign(per_expert.begin() + r * local, per_expert.begin() + (r + 1) * local);
    for (int64_t t : rl.tokens_per_expert) rl.tokens += t;
    rl.share = total > 0 ? static_cast<double>(rl.tokens) / static_cast<double>(total) : 0;
  }
  return out;
}

std::string FormatExpertLoad(const moe::v1::Job& job, const moe::v1::MetricPoint& point) {
  const int E = NumExperts(job), W = NumRanks(job);
  if (E <= 1) return "experts   none: a dense model (num_experts 1), no router\n";
  const std::string head =
      absl::StrCat("experts   ", E, " on ", W, W == 1 ? " rank" : " ranks", " (", E / W, " each)");
  std::vector<RankLoad> loads = RankLoads(job, point);
  if (loads.empty()) return absl::StrCat(head, ": no expert counts yet\n");

  int64_t max_tokens = 0, total = 0;
  size_t range_width = 0;
  std::vector<std::string> ranges;
  for (const RankLoad& rl : loads) {
    max_tokens = std::max(max_tokens, rl.tokens);
    total += rl.tokens;
    const int last = rl.first_expert + static_cast<int>(rl.tokens_per_expert.size()) - 1;
    ranges.push_back(last == rl.first_expert ? absl::StrCat("expert ", last)
                                             : absl::StrCat("experts ", rl.first_expert, "-", last));
    range_width = std::max(range_width, ranges.back().size());
  }
  const double mean = static_cast<double>(total) / W;
  std::string out = absl::StrCat(head, ", step ", point.step(), ": tokens routed over ",
                                 point.layers_size(), " MoE layer", point.layers_size() == 1 ? "" : "s");
  if (W > 1 && mean > 0) absl::StrAppendFormat(&out, ", busiest rank %.2fx the mean", max_tokens / mean);
  out += "\n";
  const int tokens_width = static_cast<int>(absl::StrCat(max_tokens).size());
  const int rank_width = static_cast<int>(absl::StrCat(W - 1).size());
  for (size_t i = 0; i < loads.size(); ++i) {
    const RankLoad& rl = loads[i];
    absl::StrAppendFormat(&out, "          rank %-*d  ", rank_width, rl.rank);
    if (!rl.gpu.empty()) absl::StrAppendFormat(&out, "GPU %-2s  ", rl.gpu);
    std::vector<int64_t> shown(rl.tokens_per_expert.begin(),
                               rl.tokens_per_expert.begin() +
                                   std::min<size_t>(rl.tokens_per_expert.size(), kMaxExpertsShown));
    absl::StrAppendFormat(&out, "%-*s  tokens %*d  %5.1f%%  [%s%s]\n", static_cast<int>(range_width),
                          ranges[i], tokens_width, rl.tokens, 100 * rl.share,
                          absl::StrJoin(shown, " "),
                          shown.size() < rl.tokens_per_expert.size() ? " ..." : "");
  }
  return out;
}

std::string FormatRankShares(const moe::v1::Job& job, const moe::v1::MetricPoint& point) {
  if (NumRanks(job) < 2) return "";
  std::vector<std::string> parts;
  for (const RankLoad& rl : RankLoads(job, point)) {
    parts.push_back(absl::StrFormat("%.0f", 100 * rl.share));
  }
  return absl::StrJoin(parts, "/");
}

std::string FormatExpertOptions(const moe::v1::MetricPoint& point) {
  bool spread = false, off = false;
  for (const auto& l : point.layers()) {
    spread = spread || l.router_bias_spread() != 0;
    off = off || l.expert_dropout_rate() != 0;
  }
  if (!spread && !off) return "";
  std::string out = absl::StrFormat("options   step %d:", point.step());
  for (int i = 0; i < point.layers_size(); ++i) {
    const auto& l = point.layers(i);
    absl::StrAppendFormat(&out, "%s layer %d", i == 0 ? "" : ";", l.layer());
    if (spread) absl::StrAppendFormat(&out, " bias spread %.3g", l.router_bias_spread());
    if (off) absl::StrAppendFormat(&out, " expert dropout %.1f%%", 100.0 * l.expert_dropout_rate());
  }
  return out + "\n";
}

}  // namespace moe::client
