// Numbers as text for people (tables, CSV, the dashboard): one rule everywhere, so that a value
// that is no number reads "nan", "inf" or "-inf" (printf wrote "-nan" for some NaNs).
#pragma once

#include <string>

namespace moe {

// v with `decimals` digits after the point.
std::string Fixed(double v, int decimals);
// v with at most `digits` significant digits (printf's %g: 0.001, 1.5e+06).
std::string Significant(double v, int digits);
// v as %g writes it when that reads back as v, else with as many more digits as it takes (a
// value written 0.9999999 reads 0.9999999, where %g said 1).
std::string Shortest(double v);

}  // namespace moe
