// Tokenizers: text <-> token ids. The nanoGPT character tokenizer and GPT-2's byte-level BPE,
// both rebuildable from a Serialize() blob that checkpoints and the token cache store. In common:
// the job-spec validator loads a gpt2 job's BPE files with it, as the worker does at start.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

class Tokenizer {  // text <-> token ids
 public:
  virtual ~Tokenizer() = default;
  // Encodes text the tokenizer can represent (GPT-2: any bytes; char: bytes of the vocabulary).
  // A char tokenizer drops bytes outside its vocabulary here; use TryEncode for user input.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  // Like Encode, but a byte the tokenizer cannot represent is an InvalidArgument error that
  // names the character and its byte offset (prompts at sampling time, data at load time).
  virtual absl::StatusOr<std::vector<int32_t>> TryEncode(std::string_view text) const = 0;
  // Raw bytes of the tokens, concatenated; an id outside [0, vocab_size) becomes U+FFFD.
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual std::string Describe() const = 0;   // e.g. "char (65 symbols)"
  virtual std::string Serialize() const = 0;  // enough to rebuild it (stored in checkpoints)
  // Where a large text may be cut for encoding it piece by piece: the first point c >= from
  // (text.size() if none) with Encode(text[0, c)) followed by Encode(text[c, end)) equal to
  // Encode(text). The default never cuts.
  virtual size_t CutPoint(std::string_view text, size_t from) const { return text.size(); }
};

// nanoGPT shakespeare_char: the vocabulary is the sorted set of distinct bytes of the corpus,
// id = rank in that set (so tiny shakespeare gives 65 symbols with nanoGPT's stoi). The text is
// treated as bytes: a multibyte UTF-8 character becomes several symbols, one per byte.
absl::StatusOr<std::unique_ptr<Tokenizer>> BuildCharTokenizer(std::string_view corpus);

// GPT-2 byte-level BPE from dir/encoder.json and dir/vocab.bpe (scripts/fetch_data.sh puts them
// in data/gpt2). "<|endoftext|>" in text is encoded as plain text, not as the special token.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGpt2Tokenizer(const std::string& dir);

// Rebuilds a tokenizer from Tokenizer::Serialize().
absl::StatusOr<std::unique_ptr<Tokenizer>> DeserializeTokenizer(std::string_view blob);

// What a checkpoint's tokenizer (saved) and a job's (job) disagree on: "" when they turn text
// into the same ids: the same symbols (char), or for GPT-2 the same token -> id mapping and the
// same merges in the same order, however the files are formatted (JSON whitespace and key
// order, line ends, a trailing newline). Otherwise one part per file that differs, joined by
// "; ", each naming the file (under job_dir, where the job's GPT-2 files are) and the first
// token or merge that differs with both values; for char the first id that decodes otherwise.
std::string TokenizerDifference(const Tokenizer& saved, const Tokenizer& job, const std::string& job_dir);

// GPT-2's two files as a Serialize() blob holds them (for exporting the tokenizer); NotFound
// when the blob is not a GPT-2 tokenizer.
struct Gpt2Files {
  std::string encoder_json;  // Hugging Face calls it vocab.json
  std::string vocab_bpe;     // Hugging Face calls it merges.txt
};
absl::StatusOr<Gpt2Files> Gpt2FilesOf(std::string_view blob);


}  // namespace moe
