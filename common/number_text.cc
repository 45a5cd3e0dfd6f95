#include "common/number_text.h"

#include <cmath>

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

}  // namespace moe
