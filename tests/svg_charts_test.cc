// The charts' SVG (common/svg_charts.h) as an XML reader sees it: `moectl metrics --svg` and the
// dashboard's /jobs/ID/charts.svg are standalone image/svg+xml documents, which a browser parses
// as XML and refuses whole on one error; and a long job's chart stays small.
#include "common/svg_charts.h"

#include <cstddef>
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

}  // namespace
}  // namespace moe::charts
