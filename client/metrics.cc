// moectl metrics: a job's metric points as a table with an ASCII plot of train and val loss, or
// as JSON or CSV for other tools.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "client/connection.h"
#include "client/expert_load.h"
#include "client/plot.h"
#include "google/protobuf/util/json_util.h"

namespace moe::client {

int RunMetrics(int argc, char** argv) {
  absl::StatusOr<Args> args = ParseArgs(argc, argv, {"--format"}, {});
  const std::string format = args.ok() ? args->Get("--format", "table") : "";
  if (!args.ok() || args->positional.size() != 1 ||
      (format != "table" && format != "json" && format != "csv")) {
    std::fprintf(stderr, "moectl metrics: %s\nusage: moectl metrics JOB [--format table|json|csv]\n",
                 !args.ok() ? std::string(args.status().message()).c_str()
                            : "--format is table, json or csv");
    return 2;
  }
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return Fail(std::string(config.status().message()));
  auto stub = NewJobStub(*config);
  grpc::ClientContext ctx;
  PrepareContext(ctx, *config, 60);
  moe::v1::StreamMetricsRequest req;
  req.set_id(args->positional[0]);
  req.set_after_step(-1);
  auto reader = stub->StreamMetrics(&ctx, req);
  // A restart replays steps from its checkpoint: the newest point of a step wins.
  std::map<int64_t, moe::v1::MetricPoint> by_step;
  moe::v1::MetricPoint p;
  while (reader->Read(&p)) by_step[p.step()] = p;
  grpc::Status s = reader->Finish();
  if (!s.ok()) return Fail(DescribeError(s, *config));

  if (format == "json") {
    google::protobuf::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    opts.always_print_primitive_fields = true;
    std::printf("[");
    bool first = true;
    for (const auto& [step, point] : by_step) {
      std::string json;
      (void)google::protobuf::util::MessageToJsonString(point, &json, opts);
      std::printf("%s\n  %s", first ? "" : ",", json.c_str());
      first = false;
    }
    std::printf("%s]\n", by_step.empty() ? "" : "\n");
    return 0;
  }
  if (format == "csv") {
    std::printf("step,loss,val_loss,aux_loss,z_loss,lr,grad_norm,tokens_per_s,mfu,step_ms,"
                "peak_memory_mb,unix_ms\n");
    for (const auto& [step, m] : by_step) {
      std::printf("%lld,%.6g,%s,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%lld\n",
                  static_cast<long long>(step), m.loss(),
                  m.has_val_loss() ? absl::StrFormat("%.6g", m.val_loss()).c_str() : "",
                  m.aux_loss(), m.z_loss(), m.lr(), m.grad_norm(), m.tokens_per_s(), m.mfu(),
                  m.step_ms(), m.peak_memory_mb(), static_cast<long long>(m.unix_ms()));
    }
    return 0;
  }
  if (by_step.empty()) {
    std::printf("no metrics yet for %s\n", args->positional[0].c_str());
    return 0;
  }
  // The job says how the experts sit on the ranks (and GPUs).
  grpc::ClientContext job_ctx;
  PrepareContext(job_ctx, *config, 10);
  moe::v1::GetJobRequest job_req;
  job_req.set_id(args->positional[0]);
  moe::v1::Job job;
  s = stub->GetJob(&job_ctx, job_req, &job);
  if (!s.ok()) return Fail(DescribeError(s, *config));
  const bool shares = !FormatRankShares(job, by_step.rbegin()->second).empty();
  std::printf("%8s %9s %9s %10s %9s %10s %9s %9s%s\n", "STEP", "LOSS", "VAL", "LR", "GRADNORM",
              "TOK/S", "STEP_MS", "PEAK_MB", shares ? "  TOKENS % PER RANK" : "");
  std::vector<double> xs, train, vxs, val;
  for (const auto& [step, m] : by_step) {
    // Peak memory: the largest rank's high-water mark; "-" for points of older workers.
    std::printf("%8lld %9.4f %9s %10.3g %9.3f %10.0f %9.1f %9s%s%s\n", static_cast<long long>(step),
                m.loss(), m.has_val_loss() ? absl::StrFormat("%.4f", m.val_loss()).c_str() : "-",
                m.lr(), m.grad_norm(), m.tokens_per_s(), m.step_ms(),
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
  return 0;
}

}  // namespace moe::client
