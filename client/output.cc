// JSON and CSV of jobs and metric points, written from the protos field by field.
#include "client/output.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/connection.h"

namespace moe::client {
namespace {

std::string Num(double v) { return Significant(v, 9); }

}  // namespace

Json JobToJson(const moe::v1::Job& j) {
  Json o;
  o["id"] = j.id();
  o["name"] = j.spec().name();
  o["state"] = StateName(j.state());
  if (!j.reason().empty()) o["reason"] = j.reason();
  if (j.has_latest()) o["step"] = j.latest().step();
  o["steps"] = j.spec().train().steps();
  if (j.has_latest()) {
    o["loss"] = j.latest().loss();
    if (j.latest().has_val_loss()) o["val_loss"] = j.latest().val_loss();
    if (j.latest().tokens_per_s() > 0) o["tokens_per_s"] = j.latest().tokens_per_s();
  }
  if (j.best_val_loss() > 0) o["best_val_loss"] = j.best_val_loss();
  if (j.state() == moe::v1::JOB_STATE_RUNNING) {
    if (double eta = EstimateSecondsLeft(j); eta >= 0) o["eta_s"] = eta;
  }
  o["restarts"] = j.restarts();
  o["max_restarts"] = j.spec().max_restarts();
  o["ranks"] = j.spec().resources().ranks();
  o["device"] = j.spec().resources().device() == moe::v1::DEVICE_CUDA ? "cuda" : "cpu";
  o["launcher"] = j.spec().resources().launcher() == moe::v1::LAUNCHER_SLURM ? "slurm" : "local";
  if (!j.gpus().empty()) o["gpus"] = std::vector<std::string>(j.gpus().begin(), j.gpus().end());
  if (!j.slurm_job_id().empty()) o["slurm_job_id"] = j.slurm_job_id();
  if (!j.node_list().empty()) o["node_list"] = j.node_list();
  if (j.created_unix_ms() > 0) o["created_unix_ms"] = j.created_unix_ms();
  if (j.started_unix_ms() > 0) o["started_unix_ms"] = j.started_unix_ms();
  if (j.ended_unix_ms() > 0) o["ended_unix_ms"] = j.ended_unix_ms();
  if (!j.state_dir().empty()) o["state_dir"] = j.state_dir();
  return o;
}

Json PointToJson(const moe::v1::MetricPoint& p) {
  Json o;
  o["step"] = p.step();
  o["loss"] = p.loss();
  if (p.has_val_loss()) o["val_loss"] = p.val_loss();
  o["aux_loss"] = p.aux_loss();
  o["z_loss"] = p.z_loss();
  o["lr"] = p.lr();
  o["grad_norm"] = p.grad_norm();
  o["tokens_per_s"] = p.tokens_per_s();
  if (p.mfu() > 0) o["mfu"] = p.mfu();  // cuda jobs: a CPU has no peak to measure against
  o["step_ms"] = p.step_ms();
  if (p.has_times()) {
    const moe::v1::StepTimes& t = p.times();
    o["times"] = Json{{"compute_ms", t.compute_ms()},     {"all_to_all_ms", t.all_to_all_ms()},
                      {"all_reduce_ms", t.all_reduce_ms()}, {"forward_ms", t.forward_ms()},
                      {"backward_ms", t.backward_ms()},   {"optimizer_ms", t.optimizer_ms()}};
  }
  if (p.peak_memory_mb() > 0) o["peak_memory_mb"] = p.peak_memory_mb();
  if (p.unix_ms() > 0) o["unix_ms"] = p.unix_ms();
  if (!p.layers().empty()) {
    Json layers = Json::array();
    for (const moe::v1::MoeLayerStats& l : p.layers()) {
      Json layer{{"layer", l.layer()},
                 {"tokens_per_expert", std::vector<int64_t>(l.tokens_per_expert().begin(),
                                                            l.tokens_per_expert().end())},
                 {"load_imbalance", l.load_imbalance()},
                 {"drop_rate", l.drop_rate()},
                 {"router_entropy", l.router_entropy()}};
      // The expert options' metrics, only where the job has them.
      if (l.router_bias_spread() != 0) layer["router_bias_spread"] = l.router_bias_spread();
      if (l.expert_dropout_rate() != 0) layer["expert_dropout_rate"] = l.expert_dropout_rate();
      layers.push_back(std::move(layer));
    }
    o["layers"] = std::move(layers);
  }
  return o;
}

std::string CsvField(const std::string& v) {
  if (v.find_first_of(",\"\n\r") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  return out + "\"";
}

std::string CsvLine(const std::vector<std::string>& fields) {
  std::vector<std::string> quoted;
  for (const std::string& f : fields) quoted.push_back(CsvField(f));
  return absl::StrJoin(quoted, ",") + "\n";
}

std::vector<std::string> JobCsvHeader() {
  return {"id",       "name",         "state",   "step",  "steps",           "loss",
          "val_loss", "tokens_per_s", "eta_s",   "restarts", "ranks",        "device",
          "created_unix_ms", "ended_unix_ms", "reason"};
}

std::vector<std::string> JobCsvRow(const moe::v1::Job& j) {
  const bool has = j.has_latest();
  const double eta = j.state() == moe::v1::JOB_STATE_RUNNING ? EstimateSecondsLeft(j) : -1;
  return {j.id(),
          j.spec().name(),
          StateName(j.state()),
          has ? std::to_string(j.latest().step()) : "",
          std::to_string(j.spec().train().steps()),
          has ? Num(j.latest().loss()) : "",
          has && j.latest().has_val_loss() ? Num(j.latest().val_loss()) : "",
          has && j.latest().tokens_per_s() > 0 ? Num(j.latest().tokens_per_s()) : "",
          eta >= 0 ? Num(eta) : "",
          std::to_string(j.restarts()),
          std::to_string(j.spec().resources().ranks()),
          j.spec().resources().device() == moe::v1::DEVICE_CUDA ? "cuda" : "cpu",
          j.created_unix_ms() > 0 ? std::to_string(j.created_unix_ms()) : "",
          j.ended_unix_ms() > 0 ? std::to_string(j.ended_unix_ms()) : "",
          j.reason()};
}

std::string Clip(const std::string& text, size_t width) {
  std::string one_line = text.substr(0, text.find('\n'));
  if (one_line.size() <= width && one_line.size() == text.size()) return text;
  if (one_line.size() <= width) return one_line + "...";
  return one_line.substr(0, width > 3 ? width - 3 : 0) + "...";
}

}  // namespace moe::client
