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
  // The error's head names what failed; lines past kMessageLines are more of its details (one per
  // tensor that does not fit, ...): counted, with the file that has them all.
  const size_t more = message.size() > kMessageLines ? message.size() - kMessageLines : 0;
  if (more > 0) message.resize(kMessageLines);
  if (!message.empty()) last = absl::StrJoin(message, " | ");
  if (last.size() > kMaxChars) last = last.substr(0, kMaxChars) + "...";
  if (more > 0) absl::StrAppend(&last, " (", more, " more line", more == 1 ? "" : "s", " in ", path, ")");
  return last;
}

}  // namespace moe::daemon
