// The dashboard in a real browser: headless Chromium loads the page of a running 2-rank CPU job
// and the test reads back what it rendered (each chart point and heatmap cell against the job's
// stored metrics); after the job is cancelled its counters are still scraped from /metrics.
// Skips when Chromium is not installed (scripts/test.sh installs Debian's `chromium`).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/svg_charts.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/http_client.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

using moe::v1::Job;
using moe::v1::MetricPoint;

using Attrs = std::map<std::string, std::string>;

// Every element <tag ...> inside the <svg id="chart_id"> of dom, as attribute maps.
std::vector<Attrs> Elements(const std::string& dom, const std::string& chart_id,
                            const std::string& tag) {
  std::vector<Attrs> out;
  const size_t start = dom.find("id=\"" + chart_id + "\"");
  if (start == std::string::npos) return out;
  const size_t end = dom.find("</svg>", start);
  const std::string svg = dom.substr(start, end - start);
  static const std::regex attr("([a-z-]+)=\"([^\"]*)\"");
  for (size_t at = svg.find("<" + tag + " "); at != std::string::npos;
       at = svg.find("<" + tag + " ", at + 1)) {
    const std::string element = svg.substr(at, svg.find('>', at) - at);
    Attrs a;
    for (std::sregex_iterator it(element.begin(), element.end(), attr), e; it != e; ++it) {
      a[(*it)[1]] = (*it)[2];
    }
    out.push_back(std::move(a));
  }
  return out;
}

double Num(const Attrs& a, const std::string& key) {
  double v = NAN;
  auto it = a.find(key);
  if (it != a.end()) (void)absl::SimpleAtod(it->second, &v);
  return v;
}

bool Near(double a, double b) { return std::fabs(a - b) <= 1e-6 * std::max(1.0, std::fabs(b)); }

std::vector<std::string> Chromium(const std::string& binary, const std::string& profile) {
  return {binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
          "--no-first-run", "--disable-background-networking", "--disable-component-update",
          "--disable-sync", "--user-data-dir=" + profile};
}

TEST(DashboardBrowser, ChromiumRendersARunningJobsMetrics) {
  CommandResult which = RunCommand({"/bin/sh", "-c", "command -v chromium"}, {}, 10);
  if (which.exit_code != 0) {
    GTEST_SKIP() << "chromium not installed (Debian package 'chromium'); skipping the browser test";
  }
  const std::string chromium = which.out.substr(0, which.out.find('\n'));
  HarnessOptions o;
  o.max_ranks = 2;
  o.cancel_grace_s = 10;
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string job_file = h.work_dir() + "/dash.yaml";
  std::ofstream(job_file) << "name: dash\n"
                          << "model: {d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, seq_len: 64,\n"
                          << "        moe: {num_experts: 4, top_k: 2, expert_hidden: 64}}\n"
                          << "data: {path: " << ShakespearePath() << ", tokenizer: char}\n"
                          << "train: {steps: 100000, batch_size: 8, lr: 1.0e-3, warmup_steps: 1,\n"
                          << "        log_every: 2, eval_every: 10, eval_batches: 1}\n"
                          << "resources: {ranks: 2, device: cpu, launcher: local}\n"
                          << "checkpoint: {every: 0}\n";
  CommandResult sub = h.Moectl({"submit", job_file});
  ASSERT_EQ(sub.exit_code, 0) << sub.out << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() >= 20; }, 120);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_RUNNING) << job.reason() << h.MoedLog();

  const std::string url = absl::StrCat("http://127.0.0.1:", h.metrics_port(), "/jobs/", id);
  std::vector<std::string> dump = Chromium(chromium, MakeTempDir("moe-chromium-"));
  dump.insert(dump.end(), {"--dump-dom", url});
  CommandResult page = RunCommand(dump, {}, 90);
  ASSERT_EQ(page.exit_code, 0) << page.err;
  const std::string& dom = page.out;
  ASSERT_TRUE(absl::StrContains(dom, "data-state=\"RUNNING\"")) << dom.substr(0, 2000);
  EXPECT_TRUE(absl::StrContains(dom, "http-equiv=\"refresh\"")) << "a live page reloads itself";

  // The store's newest point per step, read after the page: a superset of what it shows.
  std::map<int64_t, MetricPoint> stored;
  for (const MetricPoint& p : h.AllMetrics(id)) stored[p.step()] = p;
  auto at = [&](double step) -> const MetricPoint* {
    auto it = stored.find(static_cast<int64_t>(step));
    return it == stored.end() ? nullptr : &it->second;
  };

  std::vector<Attrs> loss = Elements(dom, "chart-loss", "circle");
  int train = 0, val = 0;
  double last_step = 0;
  for (const Attrs& a : loss) {
    const MetricPoint* p = at(Num(a, "data-step"));
    ASSERT_NE(p, nullptr) << "a point at step " << a.at("data-step") << " that moed never stored";
    if (a.at("data-series") == "train") {
      EXPECT_TRUE(Near(Num(a, "data-value"), p->loss())) << a.at("data-step");
      last_step = std::max(last_step, Num(a, "data-step"));
      ++train;
    } else {
      ASSERT_TRUE(p->has_val_loss()) << a.at("data-step");
      EXPECT_TRUE(Near(Num(a, "data-value"), p->val_loss())) << a.at("data-step");
      ++val;
    }
  }
  // Every stored step up to the newest one drawn is drawn, once.
  int expected = 0, expected_val = 0;
  for (const auto& [step, p] : stored) {
    if (step > last_step) break;
    ++expected;
    expected_val += p.has_val_loss() ? 1 : 0;
  }
  EXPECT_GE(train, 10);
  EXPECT_EQ(train, expected);
  EXPECT_EQ(val, expected_val);
  EXPECT_GE(val, 2);

  for (const auto& [chart, get] :
       std::vector<std::pair<std::string, double (*)(const MetricPoint&)>>{
           {"chart-lr", [](const MetricPoint& p) { return p.lr(); }},
           {"chart-grad-norm", [](const MetricPoint& p) { return p.grad_norm(); }},
           {"chart-tokens", [](const MetricPoint& p) { return p.tokens_per_s(); }}}) {
    std::vector<Attrs> pts = Elements(dom, chart, "circle");
    EXPECT_EQ(static_cast<int>(pts.size()), expected) << chart;
    for (const Attrs& a : pts) {
      const MetricPoint* p = at(Num(a, "data-step"));
      ASSERT_NE(p, nullptr);
      EXPECT_TRUE(Near(Num(a, "data-value"), get(*p))) << chart << " step " << a.at("data-step");
    }
  }
  // The heatmaps and the step bars thin their columns to kMaxStepColumns evenly spread steps (a
  // job under load can log more steps than that before the page is read).
  const int columns = std::min<int>(expected, static_cast<int>(moe::charts::kMaxStepColumns));
  for (int layer = 0; layer < 2; ++layer) {
    std::vector<Attrs> cells = Elements(dom, absl::StrCat("chart-expert-load-", layer), "rect");
    int n = 0;
    for (const Attrs& a : cells) {
      if (a.count("data-expert") == 0) continue;  // the background
      const MetricPoint* p = at(Num(a, "data-step"));
      ASSERT_NE(p, nullptr);
      ASSERT_EQ(p->layers(layer).layer(), layer);
      const int e = static_cast<int>(Num(a, "data-expert"));
      ASSERT_LT(e, p->layers(layer).tokens_per_expert_size());
      EXPECT_EQ(Num(a, "data-tokens"), p->layers(layer).tokens_per_expert(e))
          << "layer " << layer << " step " << a.at("data-step") << " expert " << e;
      ++n;
    }
    EXPECT_EQ(n, columns * 4) << "layer " << layer << ": 4 experts x every column drawn";
  }
  EXPECT_EQ(Elements(dom, "chart-router-entropy", "circle").size(), 2u * expected);
  EXPECT_GE(Elements(dom, "chart-step-split", "rect").size(), 3u * columns);
  EXPECT_TRUE(absl::StrContains(dom, "<pre id=\"log-tail\">[0] "));

  // A screenshot of the page, for people (kept in the test's work dir, or where asked).
  const char* shot_env = std::getenv("MOE_DASHBOARD_SCREENSHOT");
  const std::string shot = shot_env != nullptr ? shot_env : h.work_dir() + "/dashboard.png";
  std::vector<std::string> screenshot = Chromium(chromium, MakeTempDir("moe-chromium-"));
  screenshot.insert(screenshot.end(),
                    {"--window-size=1200,2300", "--hide-scrollbars", "--screenshot=" + shot, url});
  CommandResult png = RunCommand(screenshot, {}, 90);
  EXPECT_EQ(png.exit_code, 0) << png.err;
  EXPECT_TRUE(std::ifstream(shot).good()) << shot;

  // Cancelled, the job's final values are still scraped (within --metrics-retention).
  ASSERT_EQ(h.Moectl({"cancel", id}).exit_code, 0);
  job = h.WaitForState(id, moe::v1::JOB_STATE_CANCELLED, 60);
  HttpResponse m = HttpGet(h.metrics_port(), "/metrics");
  ASSERT_EQ(m.status, 200);
  const std::string labels = absl::StrCat("job_id=\"", id, "\",name=\"dash\"");
  EXPECT_TRUE(absl::StrContains(m.body, absl::StrCat("moe_job_state{", labels, ",state=\"cancelled\"} 1")))
      << m.body;
  EXPECT_TRUE(absl::StrContains(
      m.body, absl::StrCat("moe_job_steps_total{", labels, "} ", job.latest().step(), "\n")))
      << m.body;
  EXPECT_TRUE(absl::StrContains(
      m.body, absl::StrCat("moe_job_tokens_total{", labels, "} ", job.latest().step() * 8 * 64, "\n")))
      << m.body;
  for (int e = 0; e < 4; ++e) {
    EXPECT_TRUE(absl::StrContains(m.body, absl::StrCat("moe_job_expert_tokens_total{", labels,
                                                       ",layer=\"1\",expert=\"", e, "\",rank=\"",
                                                       e / 2, "\"} ")))
        << e << m.body;
  }
  EXPECT_TRUE(absl::StrContains(m.body, absl::StrCat("moe_job_log_lines_total{", labels, ",rank=\"0\"} ")));
  EXPECT_TRUE(absl::StrContains(m.body, "moe_jobs{state=\"cancelled\"} 1"));
  if (RunCommand({"/bin/sh", "-c", "command -v promtool"}, {}, 10).exit_code == 0) {
    const std::string file = h.work_dir() + "/metrics.txt";
    std::ofstream(file) << m.body;
    CommandResult r = RunCommand({"/bin/sh", "-c", "promtool check metrics < " + file}, {}, 30);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(r.out + r.err, "") << "promtool lint";
  }
  HttpResponse ended = HttpGet(h.metrics_port(), "/jobs/" + id);
  EXPECT_EQ(ended.status, 200);
  EXPECT_FALSE(absl::StrContains(ended.body, "http-equiv=\"refresh\"")) << "a final page stays";
}

}  // namespace
}  // namespace moe::testing
