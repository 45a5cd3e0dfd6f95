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
  // A long one keeps its head (what failed, the first details) and its last line (what ended
  // it, should the head be a line the worker went on after), the lines between counted.
  std::string tail;
  if (message.size() > kMessageLines) {
    const size_t more = message.size() - kMessageLines;
    tail = absl::StrCat(" | (", more, " more line", more == 1 ? "" : "s", " in ", path, ") | ",
                        message.back().substr(0, kMaxChars));
    message.resize(kMessageLines - 1);
  }
  if (!message.empty()) last = absl::StrJoin(message, " | ");
  if (last.size() > kMaxChars) last = last.substr(0, kMaxChars) + "...";
  return last + tail;
}

}  // namespace moe::daemon
