#include "common/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "google/protobuf/struct.pb.h"
#include "common/json_object.h"

namespace moe {
namespace {

constexpr absl::string_view kCharHeader = "moe-tokenizer char v1\n";
constexpr absl::string_view kGpt2Header = "moe-tokenizer gpt2 v1\n";
constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// "'a'" for printable ASCII, "byte 0xC3" otherwise: how error messages name a character.
std::string NameByte(unsigned char c) {
  if (c >= 0x20 && c < 0x7F) return absl::StrFormat("'%c' (0x%02X)", c, c);
  if (c == '\n') return "'\\n' (0x0A)";
  if (c == '\t') return "'\\t' (0x09)";
  return absl::StrFormat("byte 0x%02X", c);
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// ---------------------------------------------------------------------------------------------
// char

class CharTokenizer final : public Tokenizer {
 public:
  explicit CharTokenizer(std::string symbols) : symbols_(std::move(symbols)) {
    stoi_.fill(-1);
    for (size_t i = 0; i < symbols_.size(); ++i) {
      stoi_[static_cast<unsigned char>(symbols_[i])] = static_cast<int>(i);
    }
  }

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (char c : text) {
      int id = stoi_[static_cast<unsigned char>(c)];
      if (id >= 0) ids.push_back(id);
    }
    return ids;
  }

  absl::StatusOr<std::vector<int32_t>> TryEncode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      unsigned char c = static_cast<unsigned char>(text[i]);
      if (stoi_[c] < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "character ", NameByte(c), " at byte ", i, " is not in the char vocabulary (",
            symbols_.size(), " symbols of the training text); use only characters that occur in "
            "the training text"));
      }
      ids.push_back(stoi_[c]);
    }
    return ids;
  }

  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= 0 && id < vocab_size()) {
        out.push_back(symbols_[id]);
      } else {
        out.append(kReplacement.data(), kReplacement.size());
      }
    }
    return out;
  }

  int vocab_size() const override { return static_cast<int>(symbols_.size()); }
  size_t CutPoint(std::string_view text, size_t from) const override { return std::min(from, text.size()); }
  std::string Describe() const override {
    return absl::StrCat("char (", symbols_.size(), " symbols)");
  }
  const std::string& symbols() const { return symbols_; }
  // Header line, then the symbols as hex so the blob is printable text.
  std::string Serialize() const override {
    std::string out(kCharHeader);
    for (char c : symbols_) absl::StrAppendFormat(&out, "%02x", static_cast<unsigned char>(c));
    return out;
  }

 private:
  std::string symbols_;            // sorted distinct bytes; id = index
  std::array<int, 256> stoi_;      // byte -> id, -1 if absent
};

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level BPE

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order, so every byte has a visible, non-space stand-in.
std::array<uint32_t, 256> BytesToUnicode() {
  std::array<uint32_t, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
  return map;
}

// Character classes of the pre-tokenizer regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Exact for ASCII. Beyond ASCII this is an approximation of the Unicode tables (no ICU here):
// White_Space code points are spaces; Latin-1 digits-like signs, a few digit blocks are numbers;
// Latin-1 symbols, combining marks, general/CJK/fullwidth punctuation, currency, arrows, math,
// box drawing, dingbats and emoji are "other"; every remaining code point counts as a letter.
// Invalid UTF-8 bytes are decoded one by one as "other".
enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass Classify(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
      cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000) {
    return CharClass::kSpace;
  }
  if (cp == 0xB2 || cp == 0xB3 || cp == 0xB9 || (cp >= 0xBC && cp <= 0xBE) ||
      (cp >= 0x660 && cp <= 0x669) || (cp >= 0x6F0 && cp <= 0x6F9) ||
      (cp >= 0x966 && cp <= 0x96F) || (cp >= 0x2160 && cp <= 0x2188) ||
      (cp >= 0x2460 && cp <= 0x249B) || (cp >= 0xFF10 && cp <= 0xFF19)) {
    return CharClass::kNumber;
  }
  if (cp < 0xC0) {
    return (cp == 0xAA || cp == 0xB5 || cp == 0xBA) ? CharClass::kLetter : CharClass::kOther;
  }
  if (cp == 0xD7 || cp == 0xF7 || (cp >= 0x300 && cp <= 0x36F) || (cp >= 0x2000 && cp <= 0x2BFF) ||
      (cp >= 0x3001 && cp <= 0x303F) || (cp >= 0xFE00 && cp <= 0xFE0F) ||
      (cp >= 0xFE30 && cp <= 0xFE6F) || (cp >= 0xFF01 && cp <= 0xFF20) ||
      (cp >= 0xFF3B && cp <= 0xFF40) || (cp >= 0xFF5B && cp <= 0xFF65) ||
      (cp >= 0x1F000 && cp <= 0x1FAFF)) {
    return CharClass::kOther;
  }
  return CharClass::kLetter;
}

struct CodePoint {
  uint32_t cp;
  CharClass cls;
  size_t begin;  // byte offset in the text
};

// Decodes UTF-8; a byte that does not start a valid sequence is one "other" code point.
std::vector<CodePoint> DecodeUtf8(absl::string_view s) {
  std::vector<CodePoint> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    uint32_t cp = c;
    bool ok = len > 0 && i + len <= s.size();
    if (ok && len > 1) {
      cp = c & (0xFF >> (len + 1));
      for (int k = 1; k < len; ++k) {
        unsigned char cc = static_cast<unsigned char>(s[i + k]);
        if ((cc & 0xC0) != 0x80) ok = false;
        cp = (cp << 6) | (cc & 0x3F);
      }
      static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp < kMin[len] || cp > 0x10FFFF) ok = false;
    }
    if (!ok) {
      out.push_back({c, CharClass::kOther, i});
      i += 1;
    } else {
      out.push_back({cp, Classify(cp), i});
      i += len;
    }
  }
  return out;
}

// Splits text into GPT-2 pre-tokens (byte ranges), following the regex alternation order.
std::vector<absl::string_view> PreTokenize(absl::string_view text) {
  std::vector<CodePoint> cps = DecodeUtf8(text);
  const size_t n = cps.size();
  auto byte_at = [&](size_t i) { return i < n ? cps[i].begin : text.size(); };
  auto is = [&](size_t i, CharClass c) { return i < n && cps[i].cls == c; };
  auto cp_at = [&](size_t i) { return i < n ? cps[i].cp : 0u; };
  std::vector<absl::string_view> out;
  size_t i = 0;
  while (i < n) {
    size_t end = i;
    // 's|'t|'re|'ve|'m|'ll|'d (lower case only, as in GPT-2).
    if (cps[i].cp == '\'') {
      uint32_t a = cp_at(i + 1), b = cp_at(i + 2);
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        end = i + 2;
      } else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
        end = i + 3;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
    if (end == i) {
      for (CharClass cls : {CharClass::kLetter, CharClass::kNumber, CharClass::kOther}) {
        size_t j = i;
        if (cps[j].cp == ' ' && is(j + 1, cls)) ++j;
        if (!is(j, cls)) continue;
        while (is(j, cls)) ++j;
        end = j;
        break;
      }
    }
    // '\s+(?!\S)' then '\s+': a whitespace run leaves its last space to the next word.
    if (end == i) {
      size_t j = i;
      while (is(j, CharClass::kSpace)) ++j;
      if (j == n || j - i == 1) {
        end = j;
      } else {
        end = j - 1;
      }
    }
    out.push_back(text.substr(byte_at(i), byte_at(end) - byte_at(i)));
    i = end;
  }
  return out;
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Gpt2Tokenizer>> Create(std::string encoder_json,
                                                               std::string vocab_bpe,
                                                               const std::string& where);

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3);
    for (absl::string_view piece : PreTokenize(absl::string_view(text.data(), text.size()))) {
      EncodePiece(piece, &ids);
    }
    return ids;
  }
  absl::StatusOr<std::vector<int32_t>> TryEncode(std::string_view text) const override {
    return Encode(text);  // byte-level: every byte sequence is representable
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id >= 0 && id < vocab_size()) {
        out.append(id_bytes_[id]);
      } else {
        out.append(kReplacement.data(), kReplacement.size());
      }
    }
    return out;
  }
  int vocab_size() const override { return static_cast<int>(id_bytes_.size()); }
  // An ASCII whitespace byte after a code point that is no whitespace: every pre-token ends there
  // (none holds a space after other characters), the one before it ends the same way at the end of
  // the first part (its run of one class stops there either way; a contraction is whole), and the
  // scan of the rest starts there afresh (the pre-tokenizer looks ahead, never back). DecodeUtf8
  // starts a code point at such a byte (an ASCII byte continues no sequence) and at the previous
  // code point as read back here (NoSpaceBefore), so both parts decode as the whole does.
  size_t CutPoint(std::string_view text, size_t from) const override {
    for (size_t c = std::max<size_t>(from, 1); c < text.size(); ++c) {
      if (IsAsciiSpace(static_cast<unsigned char>(text[c])) && NoSpaceBefore(text, c)) return c;
    }
    return text.size();
  }
  static bool IsAsciiSpace(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0D); }
  // Whether the code point DecodeUtf8 ends at c (an ASCII byte there) is no whitespace, read back:
  //  - an ASCII byte: itself;
  //  - a byte >= 0xC0: no byte before it covers it (it continues no sequence) and it starts no
  //    valid one (the ASCII byte at c is no continuation): one "other" code point;
  //  - a continuation byte: the valid sequence of at most 4 bytes it ends, if any (its lead byte
  //    continues no sequence, so DecodeUtf8 starts there and reads the same code point); none
  //    (a stray byte, a sequence cut short): no cut, to be safe.
  static bool NoSpaceBefore(std::string_view text, size_t c) {
    const unsigned char last = static_cast<unsigned char>(text[c - 1]);
    if (last < 0x80) return !IsAsciiSpace(last);
    if (last >= 0xC0) return true;
    for (size_t k = 2; k <= 4 && k <= c; ++k) {
      const unsigned char lead = static_cast<unsigned char>(text[c - k]);
      if ((lead & 0xC0) == 0x80) continue;
      const size_t len = (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 0;
      if (len != k) return false;
      uint32_t cp = lead & (0xFF >> (len + 1));
      for (size_t j = 1; j < len; ++j) cp = (cp << 6) | (static_cast<unsigned char>(text[c - k + j]) & 0x3F);
      static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp < kMin[len] || cp > 0x10FFFF) return false;
      return Classify(cp) != CharClass::kSpace;
    }
    return false;
  }
  std::string Describe() const override {
    return absl::StrCat("gpt2 BPE (", vocab_size(), " tokens, ", ranks_.size(), " merges)");
  }
  // Header, then both source files length-prefixed: self-contained, no path to go stale.
  std::string Serialize() const override {
    return absl::StrCat(kGpt2Header, "encoder.json ", encoder_json_.size(), "\n", encoder_json_,
                        "vocab.bpe ", vocab_bpe_.size(), "\n", vocab_bpe_);
  }

  // What the files mean, apart from their formatting (TokenizerDifference compares these).
  const std::vector<std::string>& id_bytes() const { return id_bytes_; }
  const std::vector<std::string>& merges() const { return merges_; }  // "left right", rank order
  int merge_line(size_t rank) const { return merge_lines_[rank]; }     // 1-based, in vocab.bpe
  // Token id's text as encoder.json spells it (each byte as its stand-in character).
  std::string TokenText(int id) const {
    std::string out;
    for (char c : id_bytes_[id]) out += byte_symbol_[static_cast<unsigned char>(c)];
    return out;
  }

 private:
  Gpt2Tokenizer() = default;
  void EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const;
  std::vector<int32_t> Bpe(absl::string_view piece) const;

  std::string encoder_json_, vocab_bpe_;
  std::array<std::string, 256> byte_symbol_;             // byte -> UTF-8 of its stand-in
  std::unordered_map<std::string, int32_t> encoder_;     // stand-in string -> id
  std::unordered_map<std::string, int> ranks_;           // "left right" -> merge rank
  std::vector<std::string> merges_;                      // rank -> "left right"
  std::vector<int> merge_lines_;                         // rank -> its line in vocab.bpe
  std::vector<std::string> id_bytes_;                    // id -> raw bytes
  // Pre-token -> ids. Text repeats words, so this makes tokenizing a corpus cheap.
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

absl::StatusOr<std::unique_ptr<Gpt2Tokenizer>> Gpt2Tokenizer::Create(std::string encoder_json,
                                                                     std::string vocab_bpe,
                                                                     const std::string& where) {
  std::unique_ptr<Gpt2Tokenizer> t(new Gpt2Tokenizer());
  const std::array<uint32_t, 256> b2u = BytesToUnicode();
  std::unordered_map<uint32_t, unsigned char> u2b;
  for (int b = 0; b < 256; ++b) {
    AppendUtf8(b2u[b], &t->byte_symbol_[b]);
    u2b[b2u[b]] = static_cast<unsigned char>(b);
  }

  auto entries = ParseJsonStringIntMap(encoder_json);
  if (!entries.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "/encoder.json: ", entries.status().message(),
                                                   "; re-fetch it with scripts/fetch_data.sh"));
  }
  if (entries->empty() || entries->size() > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(where, "/encoder.json: ", entries->size(),
                                                   " tokens; expected 1..65536 (GPT-2 has 50257)"));
  }
  t->id_bytes_.resize(entries->size());
  std::vector<bool> seen(entries->size(), false);
  for (auto& [token, id] : *entries) {
    if (id < 0 || id >= static_cast<int64_t>(entries->size()) || seen[id]) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "/encoder.json: token \"", token, "\" has id ", id,
          " which is out of range or repeated; ids must be 0..", entries->size() - 1, " once each"));
    }
    seen[id] = true;
    // Map the stand-in characters back to bytes. Special tokens like <|endoftext|> are plain
    // printable characters, so they decode to their own text.
    std::string bytes;
    for (const CodePoint& cp : DecodeUtf8(token)) {
      auto it = u2b.find(cp.cp);
      if (it == u2b.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "/encoder.json: token \"", token, "\" (id ", id,
            ") holds a character outside GPT-2's byte alphabet; is this a GPT-2 encoder.json?"));
      }
      bytes.push_back(static_cast<char>(it->second));
    }
    t->id_bytes_[id] = std::move(bytes);
    t->encoder_.emplace(token, static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    if (!t->encoder_.count(t->byte_symbol_[b])) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "/encoder.json: no token for byte ", b, "; a byte-level BPE needs all 256"));
    }
  }

  // vocab.bpe: "#version: 0.2" then one merge "left right" per line, best (rank 0) first.
  std::vector<absl::string_view> lines = absl::StrSplit(vocab_bpe, '\n');
  int rank = 0;
  for (size_t ln = 0; ln < lines.size(); ++ln) {
    absl::string_view line = lines[ln];
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (ln == 0 && line.substr(0, 1) == "#")) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "/vocab.bpe:", ln + 1,
                                                     ": expected \"left right\", got \"", line,
                                                     "\"; re-fetch it with scripts/fetch_data.sh"));
    }
    t->merges_.push_back(absl::StrCat(parts[0], " ", parts[1]));
    t->merge_lines_.push_back(static_cast<int>(ln + 1));
    t->ranks_.emplace(t->merges_.back(), rank++);
  }
  if (rank == 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, "/vocab.bpe: no merges found"));
  }
  t->encoder_json_ = std::move(encoder_json);
  t->vocab_bpe_ = std::move(vocab_bpe);
  return t;
}

// GPT-2's bpe(): repeatedly merge the adjacent pair of lowest rank (all its occurrences, left to
// right) until no adjacent pair is a known merge.
std::vector<int32_t> Gpt2Tokenizer::Bpe(absl::string_view piece) const {
  std::vector<std::string> word;
  word.reserve(piece.size());
  for (char c : piece) word.push_back(byte_symbol_[static_cast<unsigned char>(c)]);
  std::string key;
  while (word.size() > 1) {
    int best_rank = INT_MAX;
    size_t best = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      key.assign(word[i]).append(" ").append(word[i + 1]);
      auto it = ranks_.find(key);
      if (it != ranks_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == INT_MAX) break;
    const std::string left = word[best], right = word[best + 1];
    std::vector<std::string> merged;
    merged.reserve(word.size());
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == left && word[i + 1] == right) {
        merged.push_back(left + right);
        i += 2;
      } else {
        merged.push_back(std::move(word[i]));
        i += 1;
      }
    }
    word = std::move(merged);
  }
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  for (const std::string& sym : word) {
    auto it = encoder_.find(sym);
    if (it != encoder_.end()) {
      ids.push_back(it->second);
    } else {
      // A merge result missing from encoder.json (inconsistent files): fall back to bytes,
      // which Create() checked are all present.
      for (const CodePoint& cp : DecodeUtf8(sym)) {
        std::string one;
        AppendUtf8(cp.cp, &one);
        ids.push_back(encoder_.at(one));
      }
    }
  }
  return ids;
}

void Gpt2Tokenizer::EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  std::string key(piece);
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> piece_ids = Bpe(piece);
  ids->insert(ids->end(), piece_ids.begin(), piece_ids.end());
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() >= (1u << 20)) cache_.clear();  // bound memory on huge, varied corpora
  cache_.emplace(std::move(key), std::move(piece_ids));
}

// Reads "<name> <size>\n<bytes>" from the front of *blob.
absl::StatusOr<std::string> TakeSection(absl::string_view* blob, absl::string_view name) {
  size_t nl = blob->find('\n');
  std::vector<absl::string_view> head = absl::StrSplit(blob->substr(0, nl), ' ');
  uint64_t size = 0;
  if (nl == absl::string_view::npos || head.size() != 2 || head[0] != name ||
      !absl::SimpleAtoi(head[1], &size) || size > blob->size() - nl - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("serialized gpt2 tokenizer: bad or truncated section \"", name, "\""));
  }
  std::string out(blob->substr(nl + 1, size));
  blob->remove_prefix(nl + 1 + size);
  return out;
}

// How a message quotes a token or merge: C escapes for control bytes, UTF-8 kept readable.
std::string Quote(absl::string_view s) { return absl::StrCat("\"", absl::Utf8SafeCEscape(s), "\""); }

// The first token id whose bytes differ, or a token one file has and the other lacks; "" when
// the token -> id mappings are the same.
std::string EncoderDifference(const Gpt2Tokenizer& saved, const Gpt2Tokenizer& job, const std::string& file) {
  const int common = std::min(saved.vocab_size(), job.vocab_size());
  for (int id = 0; id < common; ++id) {
    if (saved.id_bytes()[id] == job.id_bytes()[id]) continue;
    return absl::StrCat(file, ": token id ", id, " is ", Quote(saved.TokenText(id)), " in the checkpoint, ",
                        Quote(job.TokenText(id)), " in this job's");
  }
  if (saved.vocab_size() == job.vocab_size()) return "";
  const bool more = job.vocab_size() > common;
  return absl::StrCat(file, ": ", saved.vocab_size(), " tokens in the checkpoint, ", job.vocab_size(),
                      " in this job's (id ", common, " ", Quote((more ? job : saved).TokenText(common)),
                      more ? " is not in the checkpoint's)" : " is not in this job's)");
}

// The first merge (by rank, 1-based as the lines count them) that differs, or one that one
// file has and the other lacks; "" when the merge lists are the same.
std::string MergesDifference(const Gpt2Tokenizer& saved, const Gpt2Tokenizer& job, const std::string& file) {
  const size_t common = std::min(saved.merges().size(), job.merges().size());
  for (size_t r = 0; r < common; ++r) {
    if (saved.merges()[r] == job.merges()[r]) continue;
    return absl::StrCat(file, ": merge ", r + 1, " is ", Quote(saved.merges()[r]), " in the checkpoint, ",
                        Quote(job.merges()[r]), " in this job's (line ", job.merge_line(r), ")");
  }
  if (saved.merges().size() == job.merges().size()) return "";
  if (job.merges().size() > common) {
    return absl::StrCat(file, ": ", saved.merges().size(), " merges in the checkpoint, ", job.merges().size(),
                        " in this job's (its merge ", common + 1, " ", Quote(job.merges()[common]), ", line ",
                        job.merge_line(common), ", is not in the checkpoint's)");
  }
  return absl::StrCat(file, ": ", saved.merges().size(), " merges in the checkpoint, ", job.merges().size(),
                      " in this job's (the checkpoint's merge ", common + 1, " ", Quote(saved.merges()[common]),
                      " is not in this job's)");
}

}  // namespace

std::string TokenizerDifference(const Tokenizer& saved, const Tokenizer& job, const std::string& job_dir) {
  const auto* saved_gpt2 = dynamic_cast<const Gpt2Tokenizer*>(&saved);
  const auto* job_gpt2 = dynamic_cast<const Gpt2Tokenizer*>(&job);
  if (saved_gpt2 != nullptr && job_gpt2 != nullptr) {
    const std::string in = job_dir.empty() ? "" : job_dir + "/";
    std::string out = EncoderDifference(*saved_gpt2, *job_gpt2, in + "encoder.json");
    if (std::string merges = MergesDifference(*saved_gpt2, *job_gpt2, in + "vocab.bpe"); !merges.empty()) {
      absl::StrAppend(&out, out.empty() ? "" : "; ", merges);
    }
    return out;
  }
  const auto* saved_char = dynamic_cast<const CharTokenizer*>(&saved);
  const auto* job_char = dynamic_cast<const CharTokenizer*>(&job);
  if (saved_char != nullptr && job_char != nullptr) {
    if (saved_char->symbols() == job_char->symbols()) return "";
    for (int id = 0; id < std::min(saved.vocab_size(), job.vocab_size()); ++id) {
      const std::string a = saved.Decode({id}), b = job.Decode({id});
      if (a != b) {
        return absl::StrCat("token id ", id, " is \"", absl::CEscape(a), "\" in the checkpoint, \"", absl::CEscape(b),
                            "\" in this job's data");
      }
    }
  }
  return absl::StrCat(saved.Describe(), " in the checkpoint, ", job.Describe(), " in this job's data");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> BuildCharTokenizer(std::string_view corpus) {
  if (corpus.empty()) {
    return absl::InvalidArgumentError("char tokenizer: the text is empty, nothing to build a "
                                      "vocabulary from");
  }
  std::array<bool, 256> present{};
  for (char c : corpus) present[static_cast<unsigned char>(c)] = true;
  std::string symbols;
  for (int b = 0; b < 256; ++b) {
    if (present[b]) symbols.push_back(static_cast<char>(b));
  }
  return std::unique_ptr<Tokenizer>(new CharTokenizer(std::move(symbols)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGpt2Tokenizer(const std::string& dir) {
  std::string hint = " (scripts/fetch_data.sh puts encoder.json and vocab.bpe in data/gpt2)";
  absl::StatusOr<std::string> encoder = ReadFile(dir + "/encoder.json");
  if (!encoder.ok()) {
    return absl::Status(encoder.status().code(),
                        absl::StrCat("gpt2 tokenizer: ", encoder.status().message(), hint));
  }
  absl::StatusOr<std::string> bpe = ReadFile(dir + "/vocab.bpe");
  if (!bpe.ok()) {
    return absl::Status(bpe.status().code(),
                        absl::StrCat("gpt2 tokenizer: ", bpe.status().message(), hint));
  }
  auto t = Gpt2Tokenizer::Create(*std::move(encoder), *std::move(bpe), dir);
  if (!t.ok()) return t.status();
  return std::unique_ptr<Tokenizer>(*std::move(t));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> DeserializeTokenizer(std::string_view blob_in) {
  absl::string_view blob(blob_in.data(), blob_in.size());
  if (blob.substr(0, kCharHeader.size()) == kCharHeader) {
    // A line end after the list (an editor's, or `echo`'s) changes nothing: it is not a symbol.
    absl::string_view hex = absl::StripTrailingAsciiWhitespace(blob.substr(kCharHeader.size()));
    std::string symbols;
    for (size_t i = 0; i < hex.size(); i += 2) {
      auto bad = [&](absl::string_view why) {
        return absl::InvalidArgumentError(absl::StrCat(
            "serialized char tokenizer: bad symbol list at hex offset ", i, ": ", why,
            "; expected sorted distinct bytes as two hex digits each"));
      };
      const absl::string_view pair = hex.substr(i, 2);
      int v;
      if (pair.size() < 2) return bad(absl::StrCat("a lone digit \"", absl::CHexEscape(pair), "\" at the end"));
      // SimpleHexAtoi takes a sign and a "0x"; a symbol is exactly two hex digits.
      if (!absl::ascii_isxdigit(pair[0]) || !absl::ascii_isxdigit(pair[1]) || !absl::SimpleHexAtoi(pair, &v)) {
        return bad(absl::StrCat("\"", absl::CHexEscape(pair), "\" is not two hex digits"));
      }
      if (!symbols.empty() && static_cast<unsigned char>(symbols.back()) >= v) {
        return bad(absl::StrFormat("%02x does not follow %02x in increasing order", v,
                                   static_cast<unsigned char>(symbols.back())));
      }
      symbols.push_back(static_cast<char>(v));
    }
    if (symbols.empty()) {
      return absl::InvalidArgumentError("serialized char tokenizer: empty symbol list");
    }
    return std::unique_ptr<Tokenizer>(new CharTokenizer(std::move(symbols)));
  }
  if (blob.substr(0, kGpt2Header.size()) == kGpt2Header) {
    blob.remove_prefix(kGpt2Header.size());
    absl::StatusOr<std::string> encoder = TakeSection(&blob, "encoder.json");
    if (!encoder.ok()) return encoder.status();
    absl::StatusOr<std::string> bpe = TakeSection(&blob, "vocab.bpe");
    if (!bpe.ok()) return bpe.status();
    auto t = Gpt2Tokenizer::Create(*std::move(encoder), *std::move(bpe), "serialized gpt2");
    if (!t.ok()) return t.status();
    return std::unique_ptr<Tokenizer>(*std::move(t));
  }
  size_t nl = blob.find('\n');
  return absl::InvalidArgumentError(absl::StrCat(
      "serialized tokenizer: unknown header \"", blob.substr(0, std::min<size_t>(nl, 40)),
      "\"; expected \"moe-tokenizer char v1\" or \"moe-tokenizer gpt2 v1\""));
}

absl::StatusOr<Gpt2Files> Gpt2FilesOf(std::string_view blob_in) {
  absl::string_view blob(blob_in.data(), blob_in.size());
  if (blob.substr(0, kGpt2Header.size()) != kGpt2Header) {
    return absl::NotFoundError("not a serialized GPT-2 tokenizer");
  }
  blob.remove_prefix(kGpt2Header.size());
  Gpt2Files files;
  absl::StatusOr<std::string> encoder = TakeSection(&blob, "encoder.json");
  if (!encoder.ok()) return encoder.status();
  absl::StatusOr<std::string> bpe = TakeSection(&blob, "vocab.bpe");
  if (!bpe.ok()) return bpe.status();
  files.encoder_json = *std::move(encoder);
  files.vocab_bpe = *std::move(bpe);
  return files;
}

}  // namespace moe
