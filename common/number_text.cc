#include "common/number_text.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/str_format.h"

namespace moe {

std::string Fixed(double v, int decimals) {
  if (std::isnan(v)) return "nan";
  return absl::StrFormat("%.*f", decimals, v);
}

std::string Significant(double v, int digits) {
  if (std::isnan(v)) return "nan";
  return absl::StrFormat("%.*g", digits, v);
}

std::string Shortest(double v) {
  if (std::isnan(v)) return "nan";
  for (int digits = 6; digits < 17; ++digits) {
    std::string text = absl::StrFormat("%.*g", digits, v);
    if (std::strtod(text.c_str(), nullptr) == v) return text;
  }
  return absl::StrFormat("%.17g", v);
}

}  // namespace moe
