// moectl metrics: a job's metric points as a table with an ASCII plot of train and val loss, or
// as JSON or CSV for other tools; --svg also writes the dashboard's charts to a file.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "client/connection.h"
#include "client/expert_load.h"
#include "client/plot.h"
#include "client/output.h"
#include "common/files.h"
#include "common/svg_charts.h"

namespace moe::client {

int RunMetrics(const MetricsOptions& o) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  grpc::ClientContext ctx;
  PrepareContext(ctx, *config, 60);
  moe::v1::StreamMetricsRequest req;
  req.set_id(o.id);
  req.set_after_step(-1);
  auto reader = stub->StreamMetrics(&ctx, req);
  // A restart replays steps from its checkpoint: the newest point of a step wins.
  std::map<int64_t, moe::v1::MetricPoint> by_step;
  moe::v1::MetricPoint p;
  while (reader->Read(&p)) by_step[p.step()] = p;
  grpc::Status s = reader->Finish();
  if (!s.ok()) return Fail(DescribeError(s, *config));

  if (!o.svg_file.empty()) {
    std::vector<moe::v1::MetricPoint> points;
    for (const auto& [step, point] : by_step) points.push_back(point);
    const std::string svg =
        moe::charts::ChartsDocument(absl::StrCat(o.id, " metrics"), moe::charts::JobCharts(points));
    if (absl::Status w = WriteUserFile(o.svg_file, svg); !w.ok()) {
      return Fail(absl::StrCat("cannot write ", o.svg_file, ": ", w.message()));
    }
    std::fprintf(stderr, "moectl: wrote %s (%zu points)\n", o.svg_file.c_str(), points.size());
  }
  if (o.output == OutputFormat::kJson) {
    Json out = Json::array();
    for (const auto& [step, point] : by_step) out.push_back(PointToJson(point));
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  if (o.output == OutputFormat::kCsv) {
    // The step columns, then per MoE layer (as the newest point names them) its entropy, drop
    // rate, imbalance and tokens per expert.
    std::vector<std::string> header = {"step", "loss", "val_loss", "aux_loss", "z_loss", "lr",
                                       "grad_norm", "tokens_per_s", "mfu", "step_ms",
                                       "peak_memory_mb", "unix_ms", "compute_ms",
                                       "all_to_all_ms", "all_reduce_ms"};
    std::vector<std::pair<int, int>> layers;  // layer, experts
    // The expert options' columns, when the job has them (any point has a nonzero value).
    bool bias_spread = false, expert_dropout = false;
    for (const auto& [step, m] : by_step) {
      for (const auto& l : m.layers()) {
        bias_spread = bias_spread || l.router_bias_spread() != 0;
        expert_dropout = expert_dropout || l.expert_dropout_rate() != 0;
      }
    }
    if (!by_step.empty()) {
      for (const auto& l : by_step.rbegin()->second.layers()) {
        layers.emplace_back(l.layer(), l.tokens_per_expert_size());
        for (const char* f : {"router_entropy", "drop_rate", "load_imbalance"}) {
          header.push_back(absl::StrCat("layer", l.layer(), "_", f));
        }
        if (bias_spread) header.push_back(absl::StrCat("layer", l.layer(), "_router_bias_spread"));
        if (expert_dropout) header.push_back(absl::StrCat("layer", l.layer(), "_expert_dropout_rate"));
        for (int e = 0; e < l.tokens_per_expert_size(); ++e) {
          header.push_back(absl::StrCat("layer", l.layer(), "_expert", e, "_tokens"));
        }
      }
    }
    std::printf("%s", CsvLine(header).c_str());
    auto num = [](double v) { return Significant(v, 6); };
    for (const auto& [step, m] : by_step) {
      std::vector<std::string> row = {
          std::to_string(step), num(m.loss()), m.has_val_loss() ? num(m.val_loss()) : "",
          num(m.aux_loss()), num(m.z_loss()), num(m.lr()), num(m.grad_norm()),
          num(m.tokens_per_s()), m.mfu() > 0 ? num(m.mfu()) : "", num(m.step_ms()), num(m.peak_memory_mb()),
          std::to_string(m.unix_ms()), num(m.times().compute_ms()),
          num(m.times().all_to_all_ms()), num(m.times().all_reduce_ms())};
      for (const auto& [layer, experts] : layers) {
        const moe::v1::MoeLayerStats* found = nullptr;
        for (const auto& l : m.layers()) {
          if (l.layer() == layer) found = &l;
        }
        row.push_back(found ? num(found->router_entropy()) : "");
        row.push_back(found ? num(found->drop_rate()) : "");
        row.push_back(found ? num(found->load_imbalance()) : "");
        if (bias_spread) row.push_back(found ? num(found->router_bias_spread()) : "");
        if (expert_dropout) row.push_back(found ? num(found->expert_dropout_rate()) : "");
        for (int e = 0; e < experts; ++e) {
          row.push_back(found && e < found->tokens_per_expert_size()
                            ? std::to_string(found->tokens_per_expert(e))
                            : "");
        }
      }
      std::printf("%s", CsvLine(row).c_str());
    }
    return 0;
  }
  if (by_step.empty()) {
    std::printf("no metrics yet for %s\n", o.id.c_str());
    return 0;
  }
  // The job says how the experts sit on the ranks (and GPUs).
  grpc::ClientContext job_ctx;
  PrepareContext(job_ctx, *config, 10);
  moe::v1::GetJobRequest job_req;
  job_req.set_id(o.id);
  moe::v1::Job job;
  s = stub->GetJob(&job_ctx, job_req, &job);
  if (!s.ok()) return Fail(DescribeError(s, *config));
  const bool shares = !FormatRankShares(job, by_step.rbegin()->second).empty();
  std::printf("%8s %9s %9s %10s %9s %10s %9s %9s%s\n", "STEP", "LOSS", "VAL", "LR", "GRADNORM",
              "TOK/S", "STEP_MS", "PEAK_MB", shares ? "  TOKENS % PER RANK" : "");
  std::vector<double> xs, train, vxs, val;
  for (const auto& [step, m] : by_step) {
    // Peak memory: the largest rank's high-water mark; "-" for points of older workers.
    std::printf("%8lld %9s %9s %10.3g %9s %10.0f %9.1f %9s%s%s\n", static_cast<long long>(step),
                Fixed(m.loss(), 4).c_str(), m.has_val_loss() ? Fixed(m.val_loss(), 4).c_str() : "-",
                m.lr(), Fixed(m.grad_norm(), 3).c_str(), m.tokens_per_s(), m.step_ms(),
                m.peak_memory_mb() > 0 ? absl::StrFormat("%.0f", m.peak_memory_mb()).c_str() : "-",
                shares ? "  " : "",
                shares ? FormatRankShares(job, m).c_str() : "");
    xs.push_back(static_cast<double>(step));
    train.push_back(m.loss());
    if (m.has_val_loss()) {
      vxs.push_back(static_cast<double>(step));
      val.push_back(m.val_loss());
    }
  }
  std::printf("\n%s", RenderLossPlot(xs, train, vxs, val, 64, 16).c_str());
  std::printf("\n%s", FormatExpertLoad(job, by_step.rbegin()->second).c_str());
  std::printf("%s", FormatExpertOptions(by_step.rbegin()->second).c_str());
  return 0;
}

}  // namespace moe::client
