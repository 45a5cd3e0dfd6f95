// A byte-level BPE in GPT-2's file formats (encoder.json, vocab.bpe) small enough to build in a
// test, written plainly or reformatted (same tokens and merges, other bytes).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace moe::testing {

struct TinyGpt2 {
  // Ids 0..255 are the bytes in order (each as GPT-2's stand-in character); these follow from
  // 256. ASCII letters only: a letter is its own stand-in.
  std::vector<std::string> tokens = {"th", "the", "er", "in"};
  std::vector<std::pair<std::string, std::string>> merges = {{"t", "h"}, {"th", "e"}, {"e", "r"}, {"i", "n"}};

  // encoder.json: every token on one line in id order, each character a \uXXXX escape; or
  // reformatted: indented, in reverse id order, with spaces around the colons.
  std::string EncoderJson(bool reformatted = false) const;
  // vocab.bpe: "#version: 0.2" and one merge a line, "\n" between lines and none at the end; or
  // reformatted: "\r\n" after every line and a blank line at the end.
  std::string VocabBpe(bool reformatted = false) const;
  // Both files into dir (made if missing), replacing what is there.
  void Write(const std::string& dir, bool reformatted = false) const;
};

}  // namespace moe::testing
