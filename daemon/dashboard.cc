// The pages: plain HTML with inline SVG, no script; a meta refresh keeps a live job's page current.
#include "daemon/dashboard.h"

#include <algorithm>
#include <iterator>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/number_text.h"
#include "common/svg_charts.h"
#include "moe_version.h"

namespace moe::daemon {
namespace {

using moe::charts::XmlEscape;
using moe::v1::Job;

constexpr int kBatch = 1000;

constexpr const char* kStyle = R"(<style>
body{font-family:sans-serif;margin:16px 24px;color:#222;background:#f6f6f6}
h1{font-size:20px;margin:0 0 12px} h2{font-size:16px;margin:20px 0 8px}
a{color:#1f5fa8;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;background:#fff} td,th{padding:4px 10px;border-bottom:1px solid #e3e3e3;text-align:left;font-size:13px}
th{background:#eee} .reason{max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{display:inline-block;width:120px;height:10px;background:#e3e3e3;vertical-align:middle}
.bar span{display:block;height:10px;background:#1f77b4}
.state-RUNNING{color:#1f77b4;font-weight:bold} .state-SUCCEEDED{color:#2a8a2a;font-weight:bold}
.state-FAILED{color:#c0392b;font-weight:bold} .state-CANCELLED{color:#888;font-weight:bold}
.charts{display:flex;flex-wrap:wrap;gap:10px} .charts svg{border:1px solid #ddd}
pre{background:#111;color:#ddd;padding:10px;font-size:12px;max-height:420px;overflow:auto}
.muted{color:#777;font-size:12px}
</style>)";

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(unix_ms),
                          absl::LocalTimeZone());
}

std::string FormatDuration(double s) {
  if (s < 0) return "-";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, t / 60 % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

// Seconds left at the latest step's pace, or -1 when unknown.
double SecondsLeft(const Job& j) {
  const int64_t total = j.spec().train().steps(), step = j.latest().step();
  if (!j.has_latest() || total <= 0 || step <= 0) return -1;
  if (step >= total) return 0;
  return j.latest().step_ms() > 0 ? j.latest().step_ms() / 1000.0 * (total - step) : -1;
}

std::string Progress(const Job& j) {
  const int64_t total = j.spec().train().steps(), step = j.has_latest() ? j.latest().step() : 0;
  const double pct = total > 0 ? std::min(100.0, 100.0 * step / total) : 0;
  return absl::StrFormat(
      "<span class=\"bar\"><span style=\"width:%.1f%%\"></span></span> %d/%d", pct, step, total);
}

std::string Page(const std::string& title, const std::string& body, bool refresh) {
  return absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>", XmlEscape(title),
      "</title>",
      refresh ? absl::StrCat("<meta http-equiv=\"refresh\" content=\"", Dashboard::kRefreshSeconds,
                             "\">")
              : "",
      kStyle, "</head>\n", body, "\n<p class=\"muted\">moed ", XmlEscape(kMoeVersion),
      refresh ? absl::StrCat(" &middot; refreshes every ", Dashboard::kRefreshSeconds, " s") : "",
      " &middot; <a href=\"/metrics\">/metrics</a></p></body></html>\n");
}

}  // namespace

Dashboard::JobCache Dashboard::Refresh(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  JobCache& c = cache_[id];
  c.used = ++uses_;
  while (cache_.size() > kCachedJobs) {  // the least recently shown other job goes
    auto oldest = cache_.end();
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if (it->first != id && (oldest == cache_.end() || it->second.used < oldest->second.used)) oldest = it;
    }
    cache_.erase(oldest);
  }
  while (true) {
    absl::StatusOr<std::vector<StoredMetric>> batch = store_->ReadMetrics(id, c.metric_cursor, kBatch);
    if (!batch.ok()) break;
    for (const StoredMetric& m : *batch) {
      c.metric_cursor = m.rowid;
      c.by_step[m.point.step()] = m.point;
    }
    if (static_cast<int>(batch->size()) < kBatch) break;
  }
  while (true) {
    absl::StatusOr<std::vector<StoredLogLine>> batch = store_->ReadLogs(id, c.log_cursor, kBatch);
    if (!batch.ok()) break;
    for (const StoredLogLine& l : *batch) {
      c.log_cursor = l.rowid;
      c.tail.push_back(l.line);
      if (c.tail.size() > kLogTail) c.tail.pop_front();
    }
    if (static_cast<int>(batch->size()) < kBatch) break;
  }
  return c;
}

size_t Dashboard::cached_jobs() {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.size();
}

std::string Dashboard::JobsPage() {
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  std::string body = "<body data-page=\"jobs\"><h1>moed: jobs</h1>";
  bool live = false;
  if (!jobs.ok()) {
    absl::StrAppend(&body, "<p>cannot read the job store: ", XmlEscape(std::string(jobs.status().message())),
                    "</p>");
    return Page("moed: jobs", body + "</body>", true);
  }
  {
    // A deleted job's points leave the cache here (its pages answer 404 from the store).
    std::set<std::string> ids;
    for (const JobRecord& r : *jobs) ids.insert(r.job.id());
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = cache_.begin(); it != cache_.end();) it = ids.count(it->first) ? std::next(it) : cache_.erase(it);
  }
  absl::StrAppend(&body,
                  "<table id=\"jobs\"><tr><th>job</th><th>name</th><th>state</th><th>progress</th>"
                  "<th>loss</th><th>val</th><th>tokens/s</th><th>ETA</th><th>restarts</th>"
                  "<th>created</th><th>reason</th></tr>");
  // Newest first.
  for (auto it = jobs->rbegin(); it != jobs->rend(); ++it) {
    const Job& j = it->job;
    live = live || !IsFinal(j.state());
    const std::string state = StateName(j.state());
    absl::StrAppend(
        &body, "<tr data-job=\"", XmlEscape(j.id()), "\" data-state=\"", state, "\"><td><a href=\"/jobs/",
        XmlEscape(j.id()), "\">", XmlEscape(j.id()), "</a></td><td>", XmlEscape(j.spec().name()),
        "</td><td class=\"state-", state, "\">", state, "</td><td>", Progress(j), "</td><td>",
        j.has_latest() ? Fixed(j.latest().loss(), 4) : "-", "</td><td>",
        j.best_val_loss() > 0 ? Fixed(j.best_val_loss(), 4) : "-", "</td><td>",
        j.has_latest() ? Fixed(j.latest().tokens_per_s(), 0) : "-", "</td><td>",
        j.state() == moe::v1::JOB_STATE_RUNNING ? FormatDuration(SecondsLeft(j)) : "-",
        "</td><td>", j.restarts(), "</td><td>", FormatTime(j.created_unix_ms()),
        "</td><td class=\"reason\" title=\"", XmlEscape(j.reason()), "\">", XmlEscape(j.reason()),
        "</td></tr>");
  }
  absl::StrAppend(&body, "</table>");
  if (jobs->empty()) absl::StrAppend(&body, "<p>no jobs yet: <code>moectl submit JOB.yaml</code></p>");
  absl::StrAppend(&body, "</body>");
  return Page("moed: jobs", body, live);
}

absl::StatusOr<std::string> Dashboard::JobPage(const std::string& id) {
  absl::StatusOr<JobRecord> rec = store_->GetJob(id);
  if (!rec.ok()) return rec.status();
  const Job& j = rec->job;
  const JobCache c = Refresh(id);
  std::vector<moe::v1::MetricPoint> points;
  for (const auto& [step, p] : c.by_step) points.push_back(p);
  const std::string state = StateName(j.state());
  const bool live = !IsFinal(j.state());
  std::string body = absl::StrCat("<body data-page=\"job\" data-job=\"", XmlEscape(j.id()),
                                  "\" data-state=\"", state, "\" data-points=\"", points.size(),
                                  "\"><p><a href=\"/\">&larr; jobs</a></p><h1>",
                                  XmlEscape(j.id()), " (", XmlEscape(j.spec().name()), ")</h1>");
  absl::StrAppend(&body, "<table id=\"summary\"><tr><th>state</th><td class=\"state-", state,
                  "\">", state, "</td></tr><tr><th>progress</th><td>", Progress(j), "</td></tr>");
  if (j.has_latest()) {
    const moe::v1::MetricPoint& p = j.latest();
    absl::StrAppend(&body, "<tr><th>loss</th><td>", Fixed(p.loss(), 4),
                    j.best_val_loss() > 0 ? absl::StrCat(" (best val ", Fixed(j.best_val_loss(), 4), ")") : "",
                    "</td></tr><tr><th>tokens/s</th><td>", Fixed(p.tokens_per_s(), 0),
                    "</td></tr>");
  }
  if (live) {
    absl::StrAppend(&body, "<tr><th>ETA</th><td>", FormatDuration(SecondsLeft(j)), "</td></tr>");
  }
  if (!j.reason().empty()) {
    absl::StrAppend(&body, "<tr><th>reason</th><td>", XmlEscape(j.reason()), "</td></tr>");
  }
  absl::StrAppend(&body, "<tr><th>restarts</th><td>", j.restarts(), " of ", j.spec().max_restarts(),
                  "</td></tr><tr><th>ranks</th><td>", j.spec().resources().ranks(), " (",
                  j.spec().resources().device() == moe::v1::DEVICE_CUDA ? "cuda" : "cpu",
                  ")</td></tr><tr><th>experts</th><td>", j.spec().model().moe().num_experts(),
                  " (top ", j.spec().model().moe().top_k(), ")</td></tr><tr><th>created</th><td>",
                  FormatTime(j.created_unix_ms()), "</td></tr><tr><th>started</th><td>",
                  FormatTime(j.started_unix_ms()), "</td></tr><tr><th>ended</th><td>",
                  FormatTime(j.ended_unix_ms()), "</td></tr></table>");
  absl::StrAppend(&body, "<h2>charts <a class=\"muted\" href=\"/jobs/", XmlEscape(j.id()),
                  "/charts.svg\">(one SVG)</a></h2><div class=\"charts\">");
  for (const moe::charts::Chart& chart : moe::charts::JobCharts(points)) {
    absl::StrAppend(&body, chart.svg);
  }
  absl::StrAppend(&body, "</div><h2>log (last ", kLogTail, " lines)</h2><pre id=\"log-tail\">");
  for (const moe::v1::LogLine& l : c.tail) {
    absl::StrAppend(&body, "[", l.rank(), "] ", XmlEscape(l.text()), "\n");
  }
  absl::StrAppend(&body, "</pre></body>");
  return Page(absl::StrCat("moed: ", j.id()), body, live);
}

absl::StatusOr<std::string> Dashboard::JobChartsSvg(const std::string& id) {
  absl::StatusOr<JobRecord> rec = store_->GetJob(id);
  if (!rec.ok()) return rec.status();
  const JobCache c = Refresh(id);
  std::vector<moe::v1::MetricPoint> points;
  for (const auto& [step, p] : c.by_step) points.push_back(p);
  return moe::charts::ChartsDocument(
      absl::StrCat(rec->job.id(), " (", rec->job.spec().name(), ")"), moe::charts::JobCharts(points));
}

}  // namespace moe::daemon
