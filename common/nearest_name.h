// The name nearest to a word that is none, for "did you mean ...?": an unknown key of a job file
// (common/job_spec_read.cc), an unknown moectl command (client/main.cc).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

// Levenshtein distance: insertions, deletions and substitutions, one each.
size_t EditDistance(std::string_view a, std::string_view b);

// The candidate nearest to `word` (compared in lower case), when it is near enough to be a likely
// typo: at most a third of the word's length away, 1 to 3 edits.
std::optional<std::string> NearestName(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace moe
