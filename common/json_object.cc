#include "common/json_object.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/util/json_util.h"

namespace moe {

absl::Status ParseJsonObject(std::string_view json_in, google::protobuf::Struct* out) {
  absl::string_view json(json_in.data(), json_in.size());
  // protobuf would report a top-level array or scalar without a position; say it here.
  size_t first = json.find_first_not_of(" \t\r\n");
  if (first == absl::string_view::npos || json[first] != '{') {
    return absl::InvalidArgumentError(absl::StrCat(
        "JSON error at byte ", first == absl::string_view::npos ? json.size() : first,
        ": expected a JSON object"));
  }
  // Nesting past protobuf's recursion limit read as "invalid protobuf output", and deep nesting
  // took protobuf's parser time quadratic in the depth (minutes at 200,000 levels): refused here,
  // at the byte where it goes too deep, in one pass.
  // (protobuf's parser takes '...' strings too: either quote opens one, and only it closes it.)
  int depth = 0;
  char quote = 0;  // the quote of the string the scan is in, 0 outside strings
  for (size_t i = first; i < json.size(); ++i) {
    const char c = json[i];
    if (quote != 0) {
      if (c == '\\') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(absl::StrCat(
            "JSON error at byte ", i, ": objects and arrays nested more than ", kMaxJsonDepth,
            " deep; no checkpoint or Hugging Face file nests that deep"));
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  out->Clear();
  auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), out);
  if (st.ok()) return absl::OkStatus();
  // Syntax errors read "<what>\n<up to 20 bytes either side>\n<spaces>^". Locate the context in
  // the input to name the byte; if it is not unique, show it with the caret inline instead.
  const std::string msg_text(st.message().data(), st.message().size());
  absl::string_view msg = msg_text;
  size_t nl1 = msg.find('\n'), nl2 = msg.rfind('\n');
  if (nl1 == nl2 || msg.back() != '^') {
    return absl::InvalidArgumentError(absl::StrCat("JSON error: ", msg));
  }
  absl::string_view what = msg.substr(0, nl1);
  absl::string_view context = msg.substr(nl1 + 1, nl2 - nl1 - 1);  // may hold newlines itself
  size_t caret = std::min(msg.size() - nl2 - 2, context.size());
  size_t at = context.empty() ? json.size() : json.find(context);
  if (at != absl::string_view::npos && (context.empty() || json.rfind(context) == at)) {
    return absl::InvalidArgumentError(absl::StrCat("JSON error at byte ", at + caret, ": ", what));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "JSON error: ", what, " (at the ^ in \"", absl::CEscape(context.substr(0, caret)), "^",
      absl::CEscape(context.substr(caret)), "\")"));
}

absl::StatusOr<std::map<std::string, int64_t>> ParseJsonStringIntMap(std::string_view json) {
  google::protobuf::Struct doc;
  if (absl::Status st = ParseJsonObject(json, &doc); !st.ok()) return st;
  std::map<std::string, int64_t> out;
  for (const auto& [key, value] : doc.fields()) {
    // Numbers arrive as double; below 2^53 in magnitude an integer converts exactly.
    double d = value.number_value();
    if (value.kind_case() != google::protobuf::Value::kNumberValue || std::trunc(d) != d ||
        std::fabs(d) >= 9007199254740992.0) {
      return absl::InvalidArgumentError(
          absl::StrCat("value of \"", key, "\" is not an integer below 2^53"));
    }
    out.emplace(key, static_cast<int64_t>(d));
  }
  return out;
}

}  // namespace moe
