// What the parts of the job-spec validator share (job_spec*.cc only; callers use job_spec.h):
// sanity limits, dotted field paths, enum names, and the entry points of defaults and checks.
#pragma once

#include <cstdint>
#include <functional>
#include <regex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/job_spec.h"
#include "google/protobuf/descriptor.h"
#include "moe/v1/job.pb.h"

namespace moe::job_spec_internal {

// Sanity limits: far above any model this service trains, low enough that derived values
// (expert_hidden = 4 * d_model, products of sizes) stay far from int32 and int64 limits.
inline constexpr int64_t kMaxDModel = 1 << 16;
inline constexpr int64_t kMaxLayers = 1 << 12;
inline constexpr int64_t kMaxSeqLen = 1 << 20;
inline constexpr int64_t kMaxExperts = 1 << 12;
inline constexpr int64_t kMaxExpertHidden = 1 << 20;
inline constexpr int64_t kMaxRanks = 1 << 16;

// GPT-2's BPE has 50257 tokens; 50304 (a multiple of 64) is the usual padded size.
inline constexpr int64_t kGpt2Vocab = 50257;
inline constexpr int64_t kGpt2PaddedVocab = 50304;
// Token shards hold uint16 ids.
inline constexpr int64_t kMaxVocab = 1 << 16;

// std::regex matches recursively, a stack frame or more per character: a value of 100000 digits
// overflowed the stack (SIGSEGV in moectl validate, and in moed checking a spec sent over gRPC).
// No value these patterns accept is anywhere near this long, so a longer one fails unmatched.
inline constexpr size_t kMaxPatternInput = 256;
bool MatchesPattern(const std::string& value, const std::regex& pattern);

// ---- Field paths ("model.moe.top_k", "resources.slurm.extra_sbatch_args[2]").

// "model" + "d_model" -> "model.d_model"; "" + "name" -> "name".
std::string JoinPath(const std::string& prefix, const std::string& key);
// "a.b[2]" -> "a.b" -> "a" -> "".
std::string ParentPath(const std::string& path);
// Whether path or one of its parents (the whole spec, "", included) is in roots.
bool IsUnderAny(const std::string& path, const std::set<std::string>& roots);

// ---- Values as messages show them.

// One line of at most 40 characters (cut between characters, never inside one).
std::string Truncate(std::string s);

// The length of the well-formed UTF-8 sequence at text[i] (RFC 3629: no overlong forms, no
// UTF-16 surrogates, nothing past U+10FFFF), or 0 when the bytes there are not one.
size_t Utf8SequenceLength(std::string_view text, size_t i);

// Whether the sequence of `len` bytes at text[i] is a control character: C0 (below 0x20), DEL, or
// C1 (U+0080..U+009F, which a terminal may obey as ESC would: U+009B is CSI).
bool IsControlCharacter(std::string_view text, size_t i, size_t len);

// text as a terminal may show it: every control character and every byte that is not part of
// well-formed UTF-8 written as \xNN (\u0085 for C1 controls), so that an error never echoes
// an escape sequence or broken UTF-8 from a job file.
std::string Printable(std::string_view text);

// %g (0.001, 1e-05), or as many more digits as read back as v: 0.9999999, not %g's 1.
std::string FormatDouble(double v);
// A number that is not 0 but below fp32's smallest normal number, `got` as written.
std::string BelowFp32Message(const std::string& got);

// YAML names of an enum's values: TOKENIZER_CHAR -> "char"; UNSPECIFIED is not a choice.
std::vector<std::pair<std::string, int>> EnumChoices(const google::protobuf::EnumDescriptor* e);
// The names alone, in declaration order.
std::vector<std::string> EnumNames(const google::protobuf::EnumDescriptor* e);
// "char" for TOKENIZER_CHAR; "unspecified (0)" for a number that is not a choice.
std::string EnumName(const google::protobuf::EnumDescriptor* e, int number);

// ---- Values the worker keeps in fp32.

// A factor below 1 (train.beta1 and beta2, the dropout probabilities) that is 1 in fp32, where
// the worker computes with it: 0.99999999 is, and AdamW's bias correction 1 - beta^t is then 0
// (nan at the second step), a dropout keeps nothing. Returns the error for such a value, else "".
std::string RoundsToOneInFp32(double v);

// The least model.moe.router_temperature: the router scores logits / tau in fp32, and a tau that
// is 0 in fp32 (1e-300) or near it makes them inf - inf (nan at the first step). At 1e-6 the
// routing is already a hard argmax.
inline constexpr double kMinRouterTemperature = 1e-6;

// ---- The steps after reading (job_spec_defaults.cc, job_spec_checks.cc).

// Relative paths resolve against base_dir and are stored absolute.
void ResolvePaths(moe::v1::JobSpec* s, const std::string& base_dir);

// Fills in every key not in `present` (dotted paths of the keys the file gave). A default
// derived from a key in `bad` (under it, or itself) is not computed; its path joins `bad`.
void ApplyDefaults(moe::v1::JobSpec* s, const std::set<std::string>& present,
                   std::set<std::string>* bad);

// Every range and relation rule; fields under `skip` (already reported) are not checked, nor
// the rules that use them. Errors carry field paths but no file or position.
std::vector<SpecError> CheckJobSpec(const moe::v1::JobSpec& spec,
                                    const std::set<std::string>& skip);

// Advice on a spec that passed CheckJobSpec (job_spec_advice.cc): values in range that are almost
// surely a mistake (an AdamW lr of 5, evaluation longer than training). Field paths, no positions.
std::vector<SpecError> AdviseJobSpec(const moe::v1::JobSpec& spec);
// data.path under a text tokenizer (char, gpt2) that looks like no text: a NUL byte in its first
// 64 KiB, or a .bin name (a token shard). A warning: a byte-level model may mean it.
std::vector<SpecError> TextDataWarnings(const moe::v1::JobSpec& spec);
// Keys a job file gives (`present`) that the job does not read: decay_fraction without the wsd
// schedule, the router's losses and capacity on a dense model. Warnings: the job is still valid.
std::vector<SpecError> UnreadKeyWarnings(const moe::v1::JobSpec& spec, const std::set<std::string>& present);

// The recipe options (MODEL.md "Options"; job_spec_recipe.cc): ranges, the combinations that
// make no sense, and what the job's backend runs. ok(path) says a field is still checkable;
// fail(path, message) reports one.
void CheckRecipeOptions(const moe::v1::JobSpec& spec,
                        const std::function<bool(const std::string&)>& ok,
                        const std::function<void(const std::string&, std::string)>& fail);

// data.path and data.tokenizer_dir (job_spec_data.cc): the files exist and are what the tokenizer
// reads, each split holds a sequence, shard headers are whole, model.vocab_size holds the text's
// token ids; model.init_from has what the worker reads. ok / fail as CheckRecipeOptions.
void CheckDataFiles(const moe::v1::JobSpec& spec, const std::function<bool(const std::string&)>& ok,
                    const std::function<void(const std::string&, std::string)>& fail);

}  // namespace moe::job_spec_internal
