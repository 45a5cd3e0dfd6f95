// The chart drawing: a shared plot frame (margins, nice ticks, axes), then the three chart kinds
// and the job's chart set. Coordinates are pixels in the chart's own viewBox.
#include "common/svg_charts.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::charts {
namespace {

constexpr int kLeft = 70, kRight = 12, kTop = 26, kBottom = 30;
constexpr const char* kFont = "font-family=\"sans-serif\" font-size=\"11\"";
// Titles set their own size: an attribute twice in one tag is not XML, and a browser shows
// nothing of a standalone SVG that is not.
constexpr const char* kFontFamily = "font-family=\"sans-serif\"";

// Exact enough to compare with the stored double: 9 significant digits.
std::string Value(double v) { return absl::StrFormat("%.9g", v); }
std::string Px(double v) { return absl::StrFormat("%.1f", v); }

// Enough significant digits that neighbouring ticks (step apart) read differently.
std::string TickLabel(double v, double step) {
  if (v == 0) return "0";
  // At least every integer digit, so 20 is never written 2e+01.
  const int integer = static_cast<int>(std::floor(std::log10(std::fabs(v)))) + 1;
  const int digits = std::clamp(
      std::max(integer, static_cast<int>(std::ceil(std::log10(std::fabs(v) / step))) + 1), 1, 7);
  return absl::StrFormat("%.*g", digits, v);
}

constexpr int kMaxTicks = 24;  // NiceStep asks for 4 or 5; rounding may add a few

// 1, 2 or 5 times a power of ten, so that about `want` ticks span the range.
double NiceStep(double range, int want) {
  const double raw = range / std::max(1, want);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

struct Range {
  double lo = 0, hi = 1;
};

Range Padded(double lo, double hi, bool from_zero) {
  if (!(lo <= hi)) return {0, 1};
  if (from_zero && lo > 0) lo = 0;
  // Values a few ulp apart are drawn as a flat line: a tick step that small would not move a
  // double (0.001 and 0.0009999999999999998 made the tick loop in Axes run forever), and one
  // near the smallest doubles comes out of NiceStep as 0.
  if (hi - lo <= std::max(std::fabs(lo), std::fabs(hi)) * 1e-9 || hi - lo < 1e-290) {
    const double mid = lo + (hi - lo) / 2;
    const double d = mid == 0 ? 1 : std::max(std::fabs(mid) * 0.1, 1e-300);
    return {mid - d, mid + d};
  }
  const double pad = (hi - lo) * 0.05;
  return {from_zero && lo == 0 ? 0 : lo - pad, hi + pad};
}

// The plot area of a chart and its mapping from data to pixels.
struct Frame {
  int width, height;
  Range x, y;
  double Left() const { return kLeft; }
  double Right() const { return width - kRight; }
  double Top() const { return kTop; }
  double Bottom() const { return height - kBottom; }
  double X(double v) const { return Left() + (v - x.lo) / (x.hi - x.lo) * (Right() - Left()); }
  double Y(double v) const { return Bottom() - (v - y.lo) / (y.hi - y.lo) * (Bottom() - Top()); }
};

std::string Open(const std::string& id, const std::string& kind, const std::string& title,
                 int width, int height) {
  return absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"%s\" class=\"chart %s\" width=\"%d\" "
      "height=\"%d\" viewBox=\"0 0 %d %d\" data-title=\"%s\">"
      "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/>"
      "<text x=\"%d\" y=\"16\" %s font-size=\"13\" font-weight=\"bold\">%s</text>",
      XmlEscape(id), kind, width, height, width, height, XmlEscape(title), width, height, kLeft,
      kFontFamily, XmlEscape(title));
}

// Grid lines and tick labels on y; step labels on x (integers only).
std::string Axes(const Frame& f, bool x_is_step) {
  std::string out;
  // Ticks by count (each v from its index, never by adding up steps), at most kMaxTicks a side.
  const double ystep = NiceStep(f.y.hi - f.y.lo, 4);
  const double y0 = std::ceil(f.y.lo / ystep) * ystep;
  for (int i = 0; i < kMaxTicks; ++i) {
    const double v = y0 + i * ystep;
    if (!(v <= f.y.hi + ystep * 1e-9)) break;
    const double py = f.Y(std::fabs(v) < ystep * 1e-9 ? 0 : v);
    absl::StrAppend(&out, "<line x1=\"", Px(f.Left()), "\" x2=\"", Px(f.Right()), "\" y1=\"",
                    Px(py), "\" y2=\"", Px(py), "\" stroke=\"#e3e3e3\"/>");
    absl::StrAppend(&out, "<text x=\"", Px(f.Left() - 4), "\" y=\"", Px(py + 4),
                    "\" text-anchor=\"end\" ", kFont, " fill=\"#555\">",
                    TickLabel(std::fabs(v) < ystep * 1e-9 ? 0 : v, ystep), "</text>");
  }
  double xstep = NiceStep(f.x.hi - f.x.lo, 5);
  if (x_is_step) xstep = std::max(1.0, std::round(xstep));
  const double x0 = std::ceil(f.x.lo / xstep) * xstep;
  for (int i = 0; i < kMaxTicks; ++i) {
    const double v = x0 + i * xstep;
    if (!(v <= f.x.hi + xstep * 1e-9)) break;
    absl::StrAppend(&out, "<text x=\"", Px(f.X(v)), "\" y=\"", Px(f.Bottom() + 14),
                    "\" text-anchor=\"middle\" ", kFont, " fill=\"#555\">", TickLabel(v, xstep),
                    "</text>");
  }
  absl::StrAppend(&out, "<rect x=\"", Px(f.Left()), "\" y=\"", Px(f.Top()), "\" width=\"",
                  Px(f.Right() - f.Left()), "\" height=\"", Px(f.Bottom() - f.Top()),
                  "\" fill=\"none\" stroke=\"#999\"/>");
  absl::StrAppend(&out, "<text x=\"", Px(f.Right()), "\" y=\"", f.height - 3,
                  "\" text-anchor=\"end\" ", kFont, " fill=\"#555\">step</text>");
  return out;
}

std::string Legend(const std::vector<std::pair<std::string, std::string>>& items, int width) {
  std::string out;
  double x = width - kRight;
  for (auto it = items.rbegin(); it != items.rend(); ++it) {
    x -= 16 + 6.5 * static_cast<double>(it->first.size());
    absl::StrAppend(&out, "<rect x=\"", Px(x), "\" y=\"8\" width=\"10\" height=\"10\" fill=\"",
                    it->second, "\"/><text x=\"", Px(x + 13), "\" y=\"17\" ", kFont, ">",
                    XmlEscape(it->first), "</text>");
  }
  return out;
}

std::string Empty(const std::string& id, const std::string& kind, const std::string& title,
                  int width, int height) {
  return absl::StrCat(Open(id, kind, title, width, height), "<text x=\"", width / 2, "\" y=\"",
                      height / 2, "\" text-anchor=\"middle\" ", kFont,
                      " fill=\"#888\">no data yet</text></svg>");
}

// Blue scale: white at 0 to dark blue at 1.
std::string HeatColor(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const int r = static_cast<int>(std::lround(247 - t * (247 - 8)));
  const int g = static_cast<int>(std::lround(251 - t * (251 - 48)));
  const int b = static_cast<int>(std::lround(255 - t * (255 - 107)));
  return absl::StrFormat("#%02x%02x%02x", r, g, b);
}

// Indices of at most n entries spread evenly over [0, size), always keeping the last.
std::vector<size_t> Thin(size_t size, size_t n) {
  std::vector<size_t> idx;
  if (size <= n || n < 2) {
    for (size_t i = 0; i < size; ++i) idx.push_back(i);
    return idx;
  }
  std::set<size_t> keep;
  for (size_t k = 0; k < n; ++k) keep.insert(k * (size - 1) / (n - 1));
  return std::vector<size_t>(keep.begin(), keep.end());
}

}  // namespace

std::string XmlEscape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string RenderLineChart(const LineChart& c) {
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (const Series& s : c.series) {
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      xlo = std::min(xlo, s.x[i]);
      xhi = std::max(xhi, s.x[i]);
      ylo = std::min(ylo, s.y[i]);
      yhi = std::max(yhi, s.y[i]);
    }
  }
  if (!(xlo <= xhi)) return Empty(c.id, "line", c.title, c.width, c.height);
  Frame f{c.width, c.height, xlo == xhi ? Range{xlo - 1, xhi + 1} : Range{xlo, xhi},
          Padded(ylo, yhi, false)};
  std::string out = Open(c.id, "line", c.title, c.width, c.height);
  absl::StrAppend(&out, Axes(f, true));
  std::vector<std::pair<std::string, std::string>> legend;
  for (const Series& s : c.series) {
    legend.emplace_back(s.name, s.color);
    std::string poly, dots;
    for (size_t i : Thin(std::min(s.x.size(), s.y.size()), kMaxLinePoints)) {
      if (!std::isfinite(s.y[i])) continue;
      absl::StrAppend(&poly, poly.empty() ? "" : " ", Px(f.X(s.x[i])), ",", Px(f.Y(s.y[i])));
      absl::StrAppend(&dots, "<circle class=\"pt\" cx=\"", Px(f.X(s.x[i])), "\" cy=\"",
                      Px(f.Y(s.y[i])), "\" r=\"2\" fill=\"", s.color, "\" data-series=\"",
                      XmlEscape(s.name), "\" data-step=\"", Value(s.x[i]), "\" data-value=\"",
                      Value(s.y[i]), "\"><title>", XmlEscape(s.name), " step ", Value(s.x[i]),
                      ": ", Value(s.y[i]), "</title></circle>");
    }
    absl::StrAppend(&out, "<g class=\"series\" data-series=\"", XmlEscape(s.name),
                    "\"><polyline fill=\"none\" stroke=\"", s.color,
                    "\" stroke-width=\"1.5\" points=\"", poly, "\"/>", dots, "</g>");
  }
  absl::StrAppend(&out, Legend(legend, c.width), "</svg>");
  return out;
}

std::string RenderHeatmap(const Heatmap& m) {
  size_t experts = 0;
  for (const auto& col : m.cells) experts = std::max(experts, col.size());
  if (m.steps.empty() || experts == 0) return Empty(m.id, "heatmap", m.title, m.width, m.height);
  // A row per bin of `bin` consecutive experts (1 up to kMaxHeatRows experts).
  const size_t bin = (experts + kMaxHeatRows - 1) / kMaxHeatRows;
  const size_t rows = (experts + bin - 1) / bin;
  std::vector<std::vector<int64_t>> sums(m.cells.size(), std::vector<int64_t>(rows, 0));
  int64_t max_tokens = 0;
  for (size_t c = 0; c < m.cells.size(); ++c) {
    for (size_t e = 0; e < m.cells[c].size(); ++e) sums[c][e / bin] += m.cells[c][e];
    for (int64_t t : sums[c]) max_tokens = std::max(max_tokens, t);
  }
  Frame f{m.width, m.height, {0, 1}, {0, 1}};
  const double cw = (f.Right() - f.Left()) / static_cast<double>(m.steps.size());
  const double ch = (f.Bottom() - f.Top()) / static_cast<double>(rows);
  std::string out = Open(m.id, "heatmap", m.title, m.width, m.height);
  absl::StrAppend(&out, "<g class=\"cells\" data-layer=\"", m.layer, "\">");
  for (size_t c = 0; c < m.steps.size(); ++c) {
    const size_t have = (m.cells[c].size() + bin - 1) / bin;  // a short column draws its own rows
    for (size_t r = 0; r < have; ++r) {
      const int64_t t = sums[c][r];
      const size_t first = r * bin, last = std::min(experts, first + bin) - 1;
      const std::string who = bin == 1 ? absl::StrCat("expert ", first) : absl::StrCat("experts ", first, "-", last);
      absl::StrAppend(
          &out, "<rect class=\"cell\" x=\"", Px(f.Left() + c * cw), "\" y=\"",
          Px(f.Top() + r * ch), "\" width=\"", Px(cw + 0.3), "\" height=\"", Px(ch + 0.3),
          "\" fill=\"", HeatColor(max_tokens > 0 ? static_cast<double>(t) / max_tokens : 0),
          "\" data-layer=\"", m.layer, "\" data-step=\"", m.steps[c], "\" data-expert=\"", first,
          bin == 1 ? "" : absl::StrCat("\" data-experts=\"", first, "-", last), "\" data-tokens=\"", t,
          "\"><title>layer ", m.layer, " step ", m.steps[c], " ", who, ": ", t, " tokens</title></rect>");
    }
  }
  absl::StrAppend(&out, "</g>");
  // Expert labels (thinned when there are many) and the first and last step.
  const size_t every = std::max<size_t>(1, rows / 8);
  for (size_t r = 0; r < rows; r += every) {
    absl::StrAppend(&out, "<text x=\"", Px(f.Left() - 4), "\" y=\"", Px(f.Top() + (r + 0.5) * ch + 4),
                    "\" text-anchor=\"end\" ", kFont, " fill=\"#555\">e", r * bin, "</text>");
  }
  absl::StrAppend(&out, "<text x=\"", Px(f.Left()), "\" y=\"", Px(f.Bottom() + 14), "\" ", kFont,
                  " fill=\"#555\">", m.steps.front(), "</text><text x=\"", Px(f.Right()),
                  "\" y=\"", Px(f.Bottom() + 14), "\" text-anchor=\"end\" ", kFont,
                  " fill=\"#555\">", m.steps.back(), "</text>");
  absl::StrAppend(&out, "<text x=\"", Px((f.Left() + f.Right()) / 2), "\" y=\"", f.height - 3,
                  "\" text-anchor=\"middle\" ", kFont,
                  " fill=\"#555\">step (darkest = ", max_tokens, " tokens)</text></svg>");
  return out;
}

std::string RenderStackedBars(const StackedBars& b) {
  double hi = 0;
  for (const auto& col : b.parts) {
    double sum = 0;
    for (double v : col) sum += std::max(0.0, v);
    hi = std::max(hi, sum);
  }
  if (b.steps.empty() || hi <= 0) return Empty(b.id, "bars", b.title, b.width, b.height);
  Frame f{b.width, b.height, {0, 1}, Padded(0, hi, true)};
  const double bw = (f.Right() - f.Left()) / static_cast<double>(b.steps.size());
  std::string out = Open(b.id, "bars", b.title, b.width, b.height);
  Frame axes = f;
  axes.x = {static_cast<double>(b.steps.front()) - 0.5, static_cast<double>(b.steps.back()) + 0.5};
  absl::StrAppend(&out, Axes(axes, true));
  for (size_t c = 0; c < b.steps.size(); ++c) {
    double base = 0;
    for (size_t p = 0; p < b.parts[c].size() && p < b.part_names.size(); ++p) {
      const double v = std::max(0.0, b.parts[c][p]);
      absl::StrAppend(&out, "<rect class=\"seg\" x=\"", Px(f.Left() + c * bw + bw * 0.1),
                      "\" y=\"", Px(f.Y(base + v)), "\" width=\"", Px(bw * 0.8), "\" height=\"",
                      Px(f.Y(base) - f.Y(base + v)), "\" fill=\"", b.part_colors[p],
                      "\" data-series=\"", XmlEscape(b.part_names[p]), "\" data-step=\"",
                      b.steps[c], "\" data-value=\"", Value(b.parts[c][p]), "\"><title>",
                      XmlEscape(b.part_names[p]), " step ", b.steps[c], ": ",
                      Value(b.parts[c][p]), " ms</title></rect>");
      base += v;
    }
  }
  std::vector<std::pair<std::string, std::string>> legend;
  for (size_t p = 0; p < b.part_names.size(); ++p) {
    legend.emplace_back(b.part_names[p], b.part_colors[p]);
  }
  absl::StrAppend(&out, Legend(legend, b.width), "</svg>");
  return out;
}

std::vector<Chart> JobCharts(const std::vector<moe::v1::MetricPoint>& points,
                             size_t max_columns) {
  using moe::v1::MetricPoint;
  std::vector<Chart> charts;
  auto add = [&](const std::string& id, const std::string& title, std::string svg) {
    charts.push_back({id, title, std::move(svg), 520, 210});
  };
  auto line = [&](const std::string& id, const std::string& title, std::vector<Series> series) {
    add(id, title, RenderLineChart({id, title, std::move(series)}));
  };
  auto over_steps = [&](const std::string& name, const std::string& color,
                        double (*get)(const MetricPoint&), bool (*has)(const MetricPoint&)) {
    Series s{name, color, {}, {}};
    for (const MetricPoint& p : points) {
      if (has != nullptr && !has(p)) continue;
      s.x.push_back(static_cast<double>(p.step()));
      s.y.push_back(get(p));
    }
    return s;
  };
  line("chart-loss", "loss (cross-entropy)",
       {over_steps("train", "#1f77b4", [](const MetricPoint& p) { return p.loss(); }, nullptr),
        over_steps("val", "#d62728", [](const MetricPoint& p) { return p.val_loss(); },
                   [](const MetricPoint& p) { return p.has_val_loss(); })});
  line("chart-lr", "learning rate",
       {over_steps("lr", "#2ca02c", [](const MetricPoint& p) { return p.lr(); }, nullptr)});
  line("chart-grad-norm", "grad norm (before clipping)",
       {over_steps("grad_norm", "#9467bd", [](const MetricPoint& p) { return p.grad_norm(); },
                   nullptr)});
  line("chart-tokens", "tokens/s",
       {over_steps("tokens_per_s", "#ff7f0e",
                   [](const MetricPoint& p) { return p.tokens_per_s(); }, nullptr)});
  line("chart-mfu", "MFU (%)",
       {over_steps("mfu_percent", "#8c564b",
                   [](const MetricPoint& p) { return p.mfu() * 100; }, nullptr)});

  const std::vector<size_t> cols = Thin(points.size(), max_columns);
  StackedBars split{"chart-step-split", "step time split (ms)",
                    {"compute", "all-to-all", "all-reduce"},
                    {"#1f77b4", "#ff7f0e", "#2ca02c"}, {}, {}};
  for (size_t i : cols) {
    const moe::v1::StepTimes& t = points[i].times();
    split.steps.push_back(points[i].step());
    split.parts.push_back({t.compute_ms(), t.all_to_all_ms(), t.all_reduce_ms()});
  }
  add(split.id, split.title, RenderStackedBars(split));

  // MoE layers as the newest point names them (a dense model has none).
  std::vector<int> layers;
  if (!points.empty()) {
    for (const auto& l : points.back().layers()) layers.push_back(l.layer());
  }
  const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                           "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  // The heatmaps' columns: kMaxHeatCells shared by the layers, at least 8 columns each.
  std::vector<size_t> heat_cols = cols;
  if (!layers.empty()) {
    size_t rows = 1;
    for (const auto& l : points.back().layers()) {
      const size_t experts = static_cast<size_t>(l.tokens_per_expert_size());
      rows = std::max(rows, std::min(experts, kMaxHeatRows));
    }
    const size_t per_layer = kMaxHeatCells / layers.size() / rows;
    heat_cols = Thin(points.size(), std::min(max_columns, std::max<size_t>(per_layer, 8)));
  }
  std::vector<Series> entropy, drop;
  for (size_t li = 0; li < layers.size(); ++li) {
    const int layer = layers[li];
    const std::string color = palette[li % 8];
    Series se{absl::StrCat("layer ", layer), color, {}, {}};
    Series sd = se;
    Heatmap map{absl::StrCat("chart-expert-load-", layer),
                absl::StrCat("expert load, layer ", layer, " (experts x steps)"), layer, {}, {}};
    for (size_t i = 0; i < points.size(); ++i) {
      for (const auto& l : points[i].layers()) {
        if (l.layer() != layer) continue;
        se.x.push_back(static_cast<double>(points[i].step()));
        se.y.push_back(l.router_entropy());
        sd.x.push_back(static_cast<double>(points[i].step()));
        sd.y.push_back(l.drop_rate());
      }
    }
    for (size_t i : heat_cols) {
      for (const auto& l : points[i].layers()) {
        if (l.layer() != layer) continue;
        map.steps.push_back(points[i].step());
        map.cells.emplace_back(l.tokens_per_expert().begin(), l.tokens_per_expert().end());
      }
    }
    add(map.id, map.title, RenderHeatmap(map));
    entropy.push_back(std::move(se));
    drop.push_back(std::move(sd));
  }
  if (!layers.empty()) {
    line("chart-router-entropy", "router entropy (nats)", std::move(entropy));
    line("chart-drop-rate", "dropped assignments (fraction)", std::move(drop));
  }
  return charts;
}

std::string ChartsDocument(const std::string& title, const std::vector<Chart>& charts,
                           int columns) {
  columns = std::max(1, columns);
  int cell_w = 0, cell_h = 0;
  for (const Chart& c : charts) {
    cell_w = std::max(cell_w, c.width);
    cell_h = std::max(cell_h, c.height);
  }
  const int rows = (static_cast<int>(charts.size()) + columns - 1) / columns;
  const int width = std::max(1, columns * (cell_w + 10)), height = 34 + rows * (cell_h + 10);
  std::string out = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
      "width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\"><rect width=\"%d\" height=\"%d\" "
      "fill=\"#f6f6f6\"/><text x=\"10\" y=\"22\" %s font-size=\"16\" font-weight=\"bold\">%s"
      "</text>\n",
      width, height, width, height, width, height, kFontFamily, XmlEscape(title));
  for (size_t i = 0; i < charts.size(); ++i) {
    const int col = static_cast<int>(i) % columns, row = static_cast<int>(i) / columns;
    absl::StrAppend(&out, "<g transform=\"translate(", 5 + col * (cell_w + 10), ",",
                    34 + row * (cell_h + 10), ")\">", charts[i].svg, "</g>\n");
  }
  absl::StrAppend(&out, "</svg>\n");
  return out;
}

}  // namespace moe::charts
