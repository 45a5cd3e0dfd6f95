// SVG charts of a job's metrics, drawn once here for moed's dashboard and for
// `moectl metrics JOB --svg FILE`: line charts, an experts x steps heatmap, stacked step bars.
// Every drawn value carries data-* attributes (series, step, value; layer, expert, tokens) so a
// test, or a script, can read back exactly what a chart shows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/v1/metrics.pb.h"

namespace moe::charts {

// Text escaped for XML/HTML content and attribute values.
std::string XmlEscape(const std::string& text);

struct Series {
  std::string name;   // legend text and the points' data-series
  std::string color;  // CSS color
  std::vector<double> x, y;
};

struct LineChart {
  std::string id;     // element id of the <svg>
  std::string title;
  std::vector<Series> series;
  int width = 520, height = 210;
};
// A series of more points is drawn through at most this many of them, spread evenly (the first
// and last kept, each a real point): a chart a few hundred pixels wide shows no more, and a long
// job's page stays small (it was 7.4 MB at 6,000 logged steps, reloaded every 5 s).
inline constexpr size_t kMaxLinePoints = 600;
std::string RenderLineChart(const LineChart& chart);

// cells[c][e]: tokens routed to expert e at steps[c] (one MoE layer). More than kMaxHeatRows
// experts are drawn in bins of consecutive experts (a row per bin: their tokens summed).
inline constexpr size_t kMaxHeatRows = 64;
struct Heatmap {
  std::string id, title;
  int layer = 0;
  std::vector<int64_t> steps;
  std::vector<std::vector<int64_t>> cells;
  int width = 520, height = 210;
};
std::string RenderHeatmap(const Heatmap& map);

// parts[c][p]: milliseconds of part p at steps[c], stacked bottom up.
struct StackedBars {
  std::string id, title;
  std::vector<std::string> part_names, part_colors;
  std::vector<int64_t> steps;
  std::vector<std::vector<double>> parts;
  int width = 520, height = 210;
};
std::string RenderStackedBars(const StackedBars& bars);

// One chart of a job, ready to place.
struct Chart {
  std::string id, title, svg;
  int width = 0, height = 0;
};

// Every chart of a job from its metric points (one per step, in step order): loss (train and
// val), learning rate, grad norm, tokens/s, MFU, the step split, and per MoE layer the expert
// load heatmap, router entropy and drop rate. Steps are thinned evenly to at most max_columns
// (each kept column is a real logged step, never an average); the heatmaps of all layers
// together draw at most about kMaxHeatCells cells (fewer columns each when there are many layers
// and experts: 32 layers of 512 experts drew 2 million cells, 450 MB a page).
inline constexpr size_t kMaxStepColumns = 120;
inline constexpr size_t kMaxHeatCells = 32768;
std::vector<Chart> JobCharts(const std::vector<moe::v1::MetricPoint>& points,
                             size_t max_columns = kMaxStepColumns);

// The charts in a grid as one standalone SVG document (what `moectl metrics --svg` writes).
std::string ChartsDocument(const std::string& title, const std::vector<Chart>& charts,
                           int columns = 2);

}  // namespace moe::charts
