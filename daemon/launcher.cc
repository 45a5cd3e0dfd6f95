#include "daemon/launcher.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"

namespace moe::daemon {

std::string LastStderrMessage(const std::string& path) {
  constexpr size_t kMessageLines = 12, kMaxChars = 500;
  std::ifstream in(path);
  std::string line, last;
  std::vector<std::string> message;  // from the last "moe-worker rank " line on
  while (std::getline(in, line)) {
    const std::string text(absl::StripAsciiWhitespace(line));
    if (text.empty()) continue;
    last = text;
    if (absl::StartsWith(text, "moe-worker rank ")) {
      message = {text};
    } else if (!message.empty()) {
      message.push_back(text);
    }
  }
  if (!message.empty() && message.size() <= kMessageLines) last = absl::StrJoin(message, " | ");
  return last.size() > kMaxChars ? last.substr(0, kMaxChars) + "..." : last;
}

}  // namespace moe::daemon
