// RenderLossPlot: points are binned into cells; val marks are drawn over train marks.
#include "client/plot.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::client {

std::string RenderLossPlot(const std::vector<double>& train_steps, const std::vector<double>& train,
                           const std::vector<double>& val_steps, const std::vector<double>& val,
                           int width, int height) {
  if (train.empty() && val.empty()) return "";
  width = std::max(width, 8);
  height = std::max(height, 4);
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  auto extend = [&](const std::vector<double>& xs, const std::vector<double>& ys) {
    for (size_t i = 0; i < xs.size() && i < ys.size(); ++i) {
      if (!std::isfinite(ys[i])) continue;
      x0 = std::min(x0, xs[i]);
      x1 = std::max(x1, xs[i]);
      y0 = std::min(y0, ys[i]);
      y1 = std::max(y1, ys[i]);
    }
  };
  extend(train_steps, train);
  extend(val_steps, val);
  if (!std::isfinite(x0) || !std::isfinite(y0)) return "";
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  std::vector<std::string> grid(height, std::string(width, ' '));
  auto put = [&](const std::vector<double>& xs, const std::vector<double>& ys, char mark) {
    for (size_t i = 0; i < xs.size() && i < ys.size(); ++i) {
      if (!std::isfinite(ys[i])) continue;
      int c = static_cast<int>(std::lround((xs[i] - x0) / (x1 - x0) * (width - 1)));
      int r = static_cast<int>(std::lround((y1 - ys[i]) / (y1 - y0) * (height - 1)));
      grid[std::clamp(r, 0, height - 1)][std::clamp(c, 0, width - 1)] = mark;
    }
  };
  put(train_steps, train, '*');
  put(val_steps, val, 'o');
  std::string out = "loss\n";
  for (int r = 0; r < height; ++r) {
    std::string label;
    if (r == 0 || r == height - 1 || r == height / 2) {
      label = absl::StrFormat("%9.4f", y1 - (y1 - y0) * r / (height - 1));
    }
    absl::StrAppend(&out, absl::StrFormat("%9s |", label), grid[r], "\n");
  }
  absl::StrAppend(&out, std::string(10, ' '), "+", std::string(width, '-'), "\n");
  std::string left = absl::StrFormat("%.0f", x0), right = absl::StrFormat("%.0f", x1);
  int gap = std::max(1, width - static_cast<int>(left.size() + right.size()));
  absl::StrAppend(&out, std::string(11, ' '), left, std::string(gap, ' '), right, "  step\n");
  absl::StrAppend(&out, std::string(11, ' '), "* train", val.empty() ? "" : "   o val", "\n");
  return out;
}

}  // namespace moe::client
