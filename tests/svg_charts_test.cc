// The charts' SVG (common/svg_charts.h) as an XML reader sees it: `moectl metrics --svg` and the
// dashboard's /jobs/ID/charts.svg are standalone image/svg+xml documents, which a browser parses
// as XML and refuses whole on one error; and a long job's chart stays small.
#include "common/svg_charts.h"

#include <cmath>
#include <cstddef>
#include <utility>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moe::charts {
namespace {

// Every attribute repeated within one start tag ("<text font-size=\"11\" font-size=\"16\">"),
// which XML forbids (a well-formedness error), as "tag attribute".
std::vector<std::string> RepeatedAttributes(const std::string& xml) {
  std::vector<std::string> out;
  for (size_t lt = xml.find('<'); lt != std::string::npos; lt = xml.find('<', lt + 1)) {
    if (lt + 1 >= xml.size() || xml[lt + 1] == '/' || xml[lt + 1] == '?' || xml[lt + 1] == '!') continue;
    const size_t gt = xml.find('>', lt);
    if (gt == std::string::npos) break;
    const std::string tag = xml.substr(lt + 1, gt - lt - 1);
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    std::set<std::string> seen;
    bool in_value = false;
    size_t start = std::string::npos;
    for (size_t i = name.size(); i < tag.size(); ++i) {
      const char c = tag[i];
      if (c == '"') {
        in_value = !in_value;
      } else if (!in_value && c == '=' && start != std::string::npos) {
        const std::string attr = tag.substr(start, i - start);
        if (!seen.insert(attr).second) out.push_back(name + " " + attr);
        start = std::string::npos;
      } else if (!in_value && c == ' ') {
        start = i + 1;
      }
    }
  }
  return out;
}

TEST(SvgCharts, TheChartsDocumentRepeatsNoAttribute) {
  std::vector<moe::v1::MetricPoint> points(3);
  for (int i = 0; i < 3; ++i) {
    points[i].set_step(i + 1);
    points[i].set_loss(3.0 - i);
    points[i].set_lr(1e-3);
  }
  EXPECT_EQ(RepeatedAttributes("<t a=\"1\" b=\"2\" a=\"3\">"), std::vector<std::string>{"t a"});
  // Before: every chart's title and the document's title carried font-size twice.
  const std::string doc = ChartsDocument("j-000001 (tiny)", JobCharts(points));
  EXPECT_EQ(RepeatedAttributes(doc), std::vector<std::string>{});
}

TEST(SvgCharts, ALongSeriesIsDrawnThroughAFewHundredOfItsPoints) {
  Series loss{"train", "#1f77b4", {}, {}};
  for (int step = 1; step <= 100000; ++step) {
    loss.x.push_back(step);
    loss.y.push_back(4.0 - step * 1e-5);
  }
  const std::string svg = RenderLineChart({"chart-loss", "loss", {loss}});
  size_t dots = 0;
  for (size_t at = svg.find("<circle"); at != std::string::npos; at = svg.find("<circle", at + 1)) {
    ++dots;
  }
  // Was one dot (about 200 bytes with its title) per point: 20 MB for this one chart.
  EXPECT_EQ(dots, kMaxLinePoints);
  EXPECT_LT(svg.size(), size_t{200000});
  EXPECT_NE(svg.find("data-step=\"1\""), std::string::npos);  // the first and last points stay
  EXPECT_NE(svg.find("data-step=\"100000\""), std::string::npos);
}

// Values a few ulp apart (a learning rate from 0.001 down to 0.0009999999999999998) once gave a
// tick step too small to move a double: the tick loop ran until memory ran out, taking moed down
// on one dashboard visit. Huge, tiny and mixed-sign ranges end with a handful of ticks too.
TEST(SvgCharts, AnyRangeOfValuesGivesAFewTicks) {
  const std::vector<std::pair<double, double>> ranges = {
      {1e-3, 0.0009999999999999998}, {1.0, std::nextafter(1.0, 2.0)}, {-1e300, 1e300},
      {1e-300, 2e-300},              {-5e-324, 5e-324},               {1e15, 1e15 + 2},
      {0.0, 0.0},                    {-3.0, -3.0}};
  for (const auto& [a, b] : ranges) {
    Series s{"lr", "#1f77b4", {1, 2, 3}, {a, b, a}};
    const std::string svg = RenderLineChart({"chart-lr", "lr", {s}});
    size_t lines = 0;
    for (size_t at = svg.find("<line"); at != std::string::npos; at = svg.find("<line", at + 1)) ++lines;
    EXPECT_GE(lines, 1u) << a << " " << b;
    EXPECT_LE(lines, 24u) << a << " " << b;
    EXPECT_LT(svg.size(), size_t{20000}) << a << " " << b;
  }
  // And through JobCharts, the dashboard's and `moectl metrics --svg`'s path.
  std::vector<moe::v1::MetricPoint> points(2);
  points[0].set_step(1);
  points[0].set_lr(1e-3);
  points[1].set_step(2);
  points[1].set_lr(0.0009999999999999998);
  EXPECT_LT(ChartsDocument("ulp", JobCharts(points)).size(), size_t{200000});
}

// Many layers of many experts: each heatmap draws at most kMaxHeatRows rows (bins of consecutive
// experts, their tokens summed) and all of them together about kMaxHeatCells cells. 32 layers of
// 512 experts over 120 columns were 2 million cells, a 450 MB page.
TEST(SvgCharts, ManyLayersOfManyExpertsKeepThePageSmall) {
  const int layers = 32, experts = 512, steps = 400;
  std::vector<moe::v1::MetricPoint> points(steps);
  for (int s = 0; s < steps; ++s) {
    points[s].set_step(s + 1);
    points[s].set_loss(4.0 - s * 1e-3);
    for (int l = 0; l < layers; ++l) {
      moe::v1::MoeLayerStats* m = points[s].add_layers();
      m->set_layer(l);
      for (int e = 0; e < experts; ++e) m->add_tokens_per_expert(e + l);
    }
  }
  const std::vector<Chart> charts = JobCharts(points);
  size_t cells = 0;
  for (const Chart& c : charts) {
    if (c.id.rfind("chart-expert-load-", 0) != 0) continue;
    std::set<std::string> rows;
    for (size_t at = c.svg.find("<rect class=\"cell\""); at != std::string::npos;
         at = c.svg.find("<rect class=\"cell\"", at + 1)) {
      ++cells;
      const size_t y = c.svg.find(" y=\"", at);
      rows.insert(c.svg.substr(y, c.svg.find('"', y + 4) - y));
    }
    EXPECT_EQ(rows.size(), kMaxHeatRows) << c.id;
  }
  EXPECT_LE(cells, kMaxHeatCells);
  EXPECT_GE(cells, kMaxHeatCells / 2);
  // Layer 3's first bin: experts 0-7, each with 3 + e tokens.
  const std::string& layer3 = charts[6 + 3].svg;
  EXPECT_NE(layer3.find("data-expert=\"0\" data-experts=\"0-7\" data-tokens=\"52\""), std::string::npos);
  EXPECT_NE(layer3.find("experts 504-511: "), std::string::npos);
  EXPECT_LT(ChartsDocument("big", charts).size(), size_t{20} << 20);
}

}  // namespace
}  // namespace moe::charts
