// Numbers as text for people (tables, CSV, the dashboard): one rule everywhere, so that a value
// that is no number reads "nan", "inf" or "-inf" (printf wrote "-nan" for some NaNs).
#pragma once

#include <string>

namespace moe {

// v with `decimals` digits after the point.
std::string Fixed(double v, int decimals);

}  // namespace moe
