// The exposition: job counts by state, then per exported job its counters and gauges from the
// newest metric point, and the running sums kept in Totals.
#include "daemon/prometheus.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "moe_version.h"

namespace moe::daemon {
namespace {

using moe::v1::Job;
using moe::v1::MetricPoint;

constexpr int kBatch = 1000;

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string Num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // Whole numbers in full (counters, steps); others as the shortest text that reads back as v
  // (every digit of a unix time with its milliseconds).
  if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0) return absl::StrCat(static_cast<int64_t>(v));
  char buf[32];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

std::string LowerState(moe::v1::JobState s) {
  std::string name = StateName(s);
  absl::AsciiStrToLower(&name);
  return name;
}

// One metric family: HELP and TYPE once, then its samples.
class Family {
 public:
  Family(std::string* out, const std::string& name, const char* type, const char* help)
      : out_(out), name_(name) {
    absl::StrAppend(out_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  }
  void Add(const std::string& labels, double v) {
    absl::StrAppend(out_, name_, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}",
                    " ", Num(v), "\n");
  }

 private:
  std::string* out_;
  std::string name_;
};

std::string JobLabels(const Job& j) {
  // job_id, not job: Prometheus gives every scraped series a `job` label of its own (the scrape
  // job), which would rename ours to exported_job.
  return absl::StrCat("job_id=\"", Escape(j.id()), "\",name=\"", Escape(j.spec().name()), "\"");
}

// Expert e sits on rank e / (E / W): E / W consecutive experts per rank.
int OwnerRank(const Job& j, int expert) {
  const int experts = std::max(1, j.spec().model().moe().num_experts());
  const int ranks = std::max(1, j.spec().resources().ranks());
  const int per_rank = std::max(1, experts / ranks);
  return std::min(ranks - 1, expert / per_rank);
}

}  // namespace

void PrometheusExporter::Fold(const std::string& job_id, Totals& t) {
  while (true) {
    absl::StatusOr<std::vector<StoredMetric>> batch = store_->ReadMetrics(job_id, t.cursor, kBatch);
    if (!batch.ok()) return;
    for (const StoredMetric& m : *batch) {
      t.cursor = m.rowid;
      const MetricPoint& p = m.point;
      if (p.has_val_loss()) {
        t.has_val = true;
        t.val_loss = p.val_loss();
      }
      // A point stands for the steps since the one before it (log_every), counted once.
      const int64_t steps = p.step() - t.max_step;
      if (steps <= 0) continue;
      t.max_step = p.step();
      for (const moe::v1::MoeLayerStats& l : p.layers()) {
        int64_t assignments = 0;
        for (int e = 0; e < l.tokens_per_expert_size(); ++e) {
          t.expert_tokens[{l.layer(), e}] += l.tokens_per_expert(e) * steps;
          assignments += l.tokens_per_expert(e);
        }
        t.dropped[l.layer()] +=
            static_cast<int64_t>(std::llround(l.drop_rate() * static_cast<double>(assignments))) *
            steps;
      }
    }
    if (static_cast<int>(batch->size()) < kBatch) return;
  }
}

std::string PrometheusExporter::Render() {
  std::string out;
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  Family(&out, "moe_up", "gauge", "1 when moed can read its job store.").Add("", jobs.ok() ? 1 : 0);
  Family(&out, "moe_build_info", "gauge", "The moed build, as git describe names it.")
      .Add(absl::StrCat("version=\"", Escape(kMoeVersion), "\""), 1);
  std::map<moe::v1::JobState, int> counts;
  for (int s = moe::v1::JOB_STATE_QUEUED; s <= moe::v1::JOB_STATE_CANCELLED; ++s) {
    counts[static_cast<moe::v1::JobState>(s)] = 0;
  }
  // Exported: every job not final, and final jobs that ended within the retention time.
  const int64_t now = NowUnixMs();
  std::vector<const Job*> shown;
  if (jobs.ok()) {
    for (const JobRecord& r : *jobs) {
      counts[r.job.state()]++;
      if (!IsFinal(r.job.state()) || r.job.ended_unix_ms() + retention_.count() >= now) {
        shown.push_back(&r.job);
      }
    }
  }
  Family jobs_family(&out, "moe_jobs", "gauge", "Jobs moed knows, by state.");
  for (const auto& [state, n] : counts) {
    jobs_family.Add(absl::StrCat("state=\"", LowerState(state), "\""), n);
  }

  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, Totals> kept;
  for (const Job* j : shown) {
    Totals& t = kept[j->id()];
    if (auto it = totals_.find(j->id()); it != totals_.end()) t = std::move(it->second);
    Fold(j->id(), t);
  }
  totals_ = std::move(kept);

  {
    Family f(&out, "moe_job_state", "gauge", "1 for the state a job is in now.");
    for (const Job* j : shown) {
      f.Add(absl::StrCat(JobLabels(*j), ",state=\"", LowerState(j->state()), "\""), 1);
    }
  }
  // Gauges from the job record and its newest point; absent values are not exported.
  struct Gauge {
    const char* name;
    const char* help;
    std::function<bool(const Job&, const Totals&, double*)> get;
  };
  const Gauge gauges[] = {
      {"moe_job_target_steps", "Optimizer steps the job is configured to run.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.spec().train().steps();
         return true;
       }},
      {"moe_job_progress_ratio", "Latest step over the configured steps.",
       [](const Job& j, const Totals&, double* v) {
         if (!j.has_latest() || j.spec().train().steps() <= 0) return false;
         *v = static_cast<double>(j.latest().step()) / j.spec().train().steps();
         return true;
       }},
      {"moe_job_start_time_seconds", "Unix time the job first started.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.started_unix_ms() / 1000.0;
         return j.started_unix_ms() > 0;
       }},
      {"moe_job_end_time_seconds", "Unix time the job ended.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.ended_unix_ms() / 1000.0;
         return j.ended_unix_ms() > 0;
       }},
      {"moe_job_loss", "Train cross-entropy loss at the latest logged step.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().loss();
         return j.has_latest();
       }},
      {"moe_job_val_loss", "Validation cross-entropy loss of the newest evaluation.",
       [](const Job&, const Totals& t, double* v) {
         *v = t.val_loss;
         return t.has_val;
       }},
      {"moe_job_aux_loss", "Load-balancing loss times its coefficient, summed over layers.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().aux_loss();
         return j.has_latest();
       }},
      {"moe_job_z_loss", "Router z-loss times its coefficient, summed over layers.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().z_loss();
         return j.has_latest();
       }},
      {"moe_job_learning_rate", "Learning rate at the latest logged step.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().lr();
         return j.has_latest();
       }},
      {"moe_job_grad_norm", "Global gradient norm before clipping, latest logged step.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().grad_norm();
         return j.has_latest();
       }},
      {"moe_job_mfu_ratio", "Model FLOPs utilization at the latest logged step (0..1).",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().mfu();
         // CPU ranks report none (no peak to divide by).
         return j.has_latest() && j.spec().resources().device() == moe::v1::DEVICE_CUDA;
       }},
      {"moe_job_step_duration_seconds", "Wall time of the latest logged step.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().step_ms() / 1000.0;
         return j.has_latest();
       }},
      {"moe_job_peak_memory_bytes", "Peak memory of a rank at the latest logged step.",
       [](const Job& j, const Totals&, double* v) {
         *v = j.latest().peak_memory_mb() * 1024 * 1024;
         return j.has_latest() && j.latest().peak_memory_mb() > 0;
       }},
  };
  for (const Gauge& g : gauges) {
    Family f(&out, g.name, "gauge", g.help);
    for (const Job* j : shown) {
      double v = 0;
      if (g.get(*j, totals_[j->id()], &v)) f.Add(JobLabels(*j), v);
    }
  }
  {
    Family f(&out, "moe_job_step_phase_seconds", "gauge",
             "Time of the latest logged step by phase (compute, all_to_all, all_reduce).");
    for (const Job* j : shown) {
      if (!j->has_latest()) continue;
      const moe::v1::StepTimes& t = j->latest().times();
      const std::pair<const char*, double> phases[] = {{"compute", t.compute_ms()},
                                                       {"all_to_all", t.all_to_all_ms()},
                                                       {"all_reduce", t.all_reduce_ms()}};
      for (const auto& [phase, ms] : phases) {
        f.Add(absl::StrCat(JobLabels(*j), ",phase=\"", phase, "\""), ms / 1000.0);
      }
    }
  }
  // Per MoE layer, from the newest point.
  struct LayerGauge {
    const char* name;
    const char* help;
    double (*get)(const moe::v1::MoeLayerStats&);
  };
  const LayerGauge layer_gauges[] = {
      {"moe_job_router_entropy_nats", "Mean router entropy per token, per MoE layer.",
       [](const moe::v1::MoeLayerStats& l) { return l.router_entropy(); }},
      {"moe_job_expert_drop_ratio", "Dropped over all token assignments, per MoE layer.",
       [](const moe::v1::MoeLayerStats& l) { return l.drop_rate(); }},
      {"moe_job_expert_load_imbalance_ratio", "Max over mean tokens per expert, per MoE layer.",
       [](const moe::v1::MoeLayerStats& l) { return l.load_imbalance(); }},
      {"moe_job_router_bias_spread", "Max minus min of the loss-free balancing router bias, per MoE layer.",
       [](const moe::v1::MoeLayerStats& l) { return l.router_bias_spread(); }},
      {"moe_job_expert_dropout_ratio", "Assignments to experts switched off by expert dropout over all, per MoE layer.",
       [](const moe::v1::MoeLayerStats& l) { return l.expert_dropout_rate(); }},
  };
  for (const LayerGauge& g : layer_gauges) {
    Family f(&out, g.name, "gauge", g.help);
    for (const Job* j : shown) {
      for (const moe::v1::MoeLayerStats& l : j->latest().layers()) {
        f.Add(absl::StrCat(JobLabels(*j), ",layer=\"", l.layer(), "\""), g.get(l));
      }
    }
  }

  // Counters.
  {
    // The furthest step logged, not the latest: a restart from an earlier checkpoint repeats
    // steps, and a counter must never go down (Prometheus would read a reset).
    Family f(&out, "moe_job_steps_total", "counter",
             "Optimizer steps done: the furthest logged step (steps a restart repeats count once).");
    for (const Job* j : shown) f.Add(JobLabels(*j), static_cast<double>(totals_[j->id()].max_step));
  }
  {
    Family f(&out, "moe_job_tokens_total", "counter",
             "Training tokens processed: moe_job_steps_total times batch_size times seq_len.");
    for (const Job* j : shown) {
      f.Add(JobLabels(*j), static_cast<double>(totals_[j->id()].max_step) * j->spec().train().batch_size() *
                               j->spec().model().seq_len());
    }
  }
  {
    Family f(&out, "moe_job_restarts_total", "counter", "Relaunches of the job after a failure.");
    for (const Job* j : shown) f.Add(JobLabels(*j), j->restarts());
  }
  {
    Family f(&out, "moe_job_log_lines_total", "counter", "Log lines stored, per rank.");
    for (const Job* j : shown) {
      absl::StatusOr<std::map<int, int64_t>> seqs = store_->LastSeqs(j->id());
      if (!seqs.ok()) continue;
      for (const auto& [rank, n] : *seqs) {
        f.Add(absl::StrCat(JobLabels(*j), ",rank=\"", rank, "\""), static_cast<double>(n));
      }
    }
  }
  {
    Family f(&out, "moe_job_expert_tokens_total", "counter",
             "Token assignments routed to an expert (each logged step's count times the steps "
             "since the previous logged step); rank is the rank holding the expert.");
    for (const Job* j : shown) {
      for (const auto& [key, n] : totals_[j->id()].expert_tokens) {
        f.Add(absl::StrCat(JobLabels(*j), ",layer=\"", key.first, "\",expert=\"", key.second,
                           "\",rank=\"", OwnerRank(*j, key.second), "\""),
              static_cast<double>(n));
      }
    }
  }
  {
    Family f(&out, "moe_job_dropped_assignments_total", "counter",
             "Token assignments dropped by expert capacity, per MoE layer (estimated like "
             "moe_job_expert_tokens_total).");
    for (const Job* j : shown) {
      for (const auto& [layer, n] : totals_[j->id()].dropped) {
        f.Add(absl::StrCat(JobLabels(*j), ",layer=\"", layer, "\""), static_cast<double>(n));
      }
    }
  }
  return out;
}

}  // namespace moe::daemon
