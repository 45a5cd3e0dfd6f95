#include "tests/support/tiny_gpt2.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe::testing {
namespace {

// GPT-2's bytes_to_unicode(), written out again here as the test's own reading of the format:
// printable Latin-1 bytes stand for themselves, the other 68 for U+0100.. in byte order.
std::vector<int> ByteStandIns() {
  std::vector<int> out(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    out[b] = direct ? b : next++;
  }
  return out;
}

std::string Escaped(const std::string& ascii) {
  std::string out;
  for (char c : ascii) absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
  return out;
}

}  // namespace

std::string TinyGpt2::EncoderJson(bool reformatted) const {
  std::vector<std::string> entries;
  const std::vector<int> stand_ins = ByteStandIns();
  for (int b = 0; b < 256; ++b) entries.push_back(absl::StrFormat("\"\\u%04x\"%s%d", stand_ins[b], reformatted ? " : " : ": ", b));
  for (size_t i = 0; i < tokens.size(); ++i) {
    entries.push_back(absl::StrCat("\"", Escaped(tokens[i]), "\"", reformatted ? " : " : ": ", 256 + i));
  }
  if (!reformatted) return absl::StrCat("{", absl::StrJoin(entries, ", "), "}");
  std::reverse(entries.begin(), entries.end());
  return absl::StrCat("{\n    ", absl::StrJoin(entries, ",\n    "), "\n}\n");
}

std::string TinyGpt2::VocabBpe(bool reformatted) const {
  std::vector<std::string> lines = {"#version: 0.2"};
  for (const auto& [left, right] : merges) lines.push_back(left + " " + right);
  if (!reformatted) return absl::StrJoin(lines, "\n");
  return absl::StrCat(absl::StrJoin(lines, "\r\n"), "\r\n\r\n");
}

void TinyGpt2::Write(const std::string& dir, bool reformatted) const {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/encoder.json", std::ios::binary | std::ios::trunc) << EncoderJson(reformatted);
  std::ofstream(dir + "/vocab.bpe", std::ios::binary | std::ios::trunc) << VocabBpe(reformatted);
}

}  // namespace moe::testing
