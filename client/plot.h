// A terminal plot of train ('*') and val ('o') loss against step.
#pragma once

#include <string>
#include <vector>

namespace moe::client {

// width x height cells of plot area plus axes and a legend; "" when there is nothing to plot.
std::string RenderLossPlot(const std::vector<double>& train_steps, const std::vector<double>& train,
                           const std::vector<double>& val_steps, const std::vector<double>& val,
                           int width, int height);

}  // namespace moe::client
