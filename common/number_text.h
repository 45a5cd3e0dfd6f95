// Numbers as text for people (tables, CSV, the dashboard): one rule everywhere, so that a value
// that is no number reads "nan", "inf" or "-inf" (printf wrote "-nan" for some NaNs).
#pragma once

#include <string>

namespace moe {

// v with `decimals` digits after the point.
std::string Fixed(double v, int decimals);
// v with at most `digits` significant digits (printf's %g: 0.001, 1.5e+06).
std::string Significant(double v, int digits);

}  // namespace moe
