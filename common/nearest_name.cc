#include "common/nearest_name.h"

#include <algorithm>
#include <limits>

#include "absl/strings/ascii.h"

namespace moe {

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::optional<std::string> NearestName(const std::string& word, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  const std::string lower = absl::AsciiStrToLower(word);
  for (const std::string& c : candidates) {
    size_t d = EditDistance(lower, c);
    if (d < best_distance) best_distance = d, best = c;
  }
  size_t allowed = std::max<size_t>(1, std::min<size_t>(3, word.size() / 3));
  if (best && best_distance <= allowed) return best;
  return std::nullopt;
}

}  // namespace moe
