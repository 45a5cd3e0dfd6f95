// Damaged or hand-edited inputs of the tools that read checkpoints and Hugging Face directories
// (export, sampling, scoring, resume, model.init_from): each error names the file, the tensor or
// key, and what is wrong with it. A safetensors header's data_offsets, spec.json and
// tokenizer.txt in a checkpoint, a weight that is not a finite number behind re-fixed checksums,
// an export OUT_DIR that is empty or holds control bytes, and a dense config.json on an MoE job.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/checkpoint_spec.h"
#include "common/tokenizer.h"
#include "worker/interchange/hf_export.h"
#include "worker/interchange/hf_layout.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// A safetensors file with this header (padded to 8 bytes) and data_bytes zero bytes of data.
std::string WithHeader(std::string header, size_t data_bytes) {
  while ((8 + header.size()) % 8) header.push_back(' ');
  const uint64_t len = header.size();
  return std::string(reinterpret_cast<const char*>(&len), 8) + header + std::string(data_bytes, '\0');
}

absl::Status ReadHeader(const std::string& bytes) {
  const std::string path = testing::MakeTempDir("st-") + "/model.safetensors";
  EXPECT_TRUE(WriteFileAtomic(path, bytes).ok());
  absl::StatusOr<SafetensorsFile> st = ReadSafetensors(path);
  if (st.ok()) return absl::OkStatus();
  EXPECT_THAT(st.status().message(), HasSubstr(path));
  return st.status();
}

TEST(DamagedSafetensors, BadDataOffsetsAreNamedWithTheTensorAndWhatIsWrong) {
  struct Case {
    std::string offsets, expect;
  };
  for (const Case& c : std::vector<Case>{
           {"[-8, 0]", "begin -8 is negative"},
           {"[0.5, 8]", "begin 0.5 is not a whole number"},
           {"[9223372036854775808, 9223372036854775816]", "is past 2^53"},
           {"[0, \"8\"]", "end \"8\" is not a number"},
           {"[0]", "data_offsets is [0]; expected [begin, end]"},
       }) {
    absl::Status st = ReadHeader(WithHeader(
        absl::StrCat(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":)", c.offsets, "}}"), 8));
    ASSERT_FALSE(st.ok()) << c.offsets;
    EXPECT_THAT(st.message(), HasSubstr("tensor \"a\"")) << st;
    EXPECT_THAT(st.message(), HasSubstr(c.expect)) << st;
    EXPECT_THAT(st.message(), Not(HasSubstr("needs dtype, shape and data_offsets"))) << st;
  }
  absl::Status missing = ReadHeader(WithHeader(R"({"a":{"dtype":"F32","shape":[2]}})", 8));
  EXPECT_THAT(missing.message(), HasSubstr("tensor \"a\": header entry has no data_offsets")) << missing;
  absl::Status no_dtype = ReadHeader(WithHeader(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8));
  EXPECT_THAT(no_dtype.message(), HasSubstr("tensor \"a\": header entry has no dtype")) << no_dtype;
}

TEST(DamagedSafetensors, AMissingTensorOrAnOffsetPastTheDataIsToldAsSuch) {
  // b's bytes [0, 8) are named by no entry: a tensor missing from the header, not an overlap.
  absl::Status gap = ReadHeader(WithHeader(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16));
  EXPECT_THAT(gap.message(), HasSubstr("data bytes [0, 8) belong to no tensor")) << gap;
  EXPECT_THAT(gap.message(), HasSubstr("missing from the header")) << gap;
  // a's offsets reach past the file's data: said of a, not of the tensor after it.
  absl::Status past = ReadHeader(WithHeader(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      16));
  EXPECT_THAT(past.message(), HasSubstr("tensor \"a\": data_offsets [12, 20] end past the 16 data bytes")) << past;
  // Two tensors on the same bytes: both named with their ranges.
  absl::Status overlap = ReadHeader(WithHeader(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
      8));
  EXPECT_THAT(overlap.message(), HasSubstr("tensor \"b\" at data_offsets [4, 8] overlaps tensor \"a\" at [0, 8]"))
      << overlap;
}

// A valid checkpoint's small files, for ReadCheckpointModelSpec.
Checkpoint SmallFiles() {
  Checkpoint c;
  (void)google::protobuf::util::MessageToJsonString(testing::SmallShakespeareSpec(), &c.spec_json);
  c.tokenizer = "moe-tokenizer char v1\n0a20616263";
  return c;
}

TEST(DamagedCheckpointFiles, ATokenizerErrorNamesTheFileAndATrailingNewlineIsAccepted) {
  Checkpoint c = SmallFiles();
  c.tokenizer = "moe-tokenizer char v1\nzz\n";
  absl::StatusOr<CheckpointModelSpec> bad = ReadCheckpointModelSpec(c, "/ck/step_00000002");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("/ck/step_00000002/tokenizer.txt: "));
  EXPECT_THAT(bad.status().message(), HasSubstr("\"zz\" is not two hex digits"));
  c.tokenizer = "moe-tokenizer char v1\n0a20\n";  // one line end after the list: harmless
  absl::StatusOr<CheckpointModelSpec> ok = ReadCheckpointModelSpec(c, "/ck/step_00000002");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->tokenizer->vocab_size(), 2);
  // Beside weights trained with 93 tokens, a 2-symbol tokenizer is the damaged file, and is named.
  c.tensors.push_back({"wte.weight", {93, 1}, std::vector<float>(93)});
  absl::StatusOr<CheckpointModelSpec> short_list = ReadCheckpointModelSpec(c, "/ck/step_00000002");
  ASSERT_FALSE(short_list.ok());
  EXPECT_THAT(short_list.status().message(),
              HasSubstr("/ck/step_00000002/tokenizer.txt: holds a tokenizer of 2 tokens"));
  EXPECT_THAT(short_list.status().message(), HasSubstr("wte.weight has 93 rows"));
  for (const char* blob : {"moe-tokenizer char v1\n0a2\n", "moe-tokenizer char v1\n+a\n", "moe-tokenizer char v1\n2020"}) {
    EXPECT_FALSE(DeserializeTokenizer(blob).ok()) << blob;
  }
}

TEST(DamagedCheckpointFiles, ASpecJsonErrorNamesTheFileTheParsersErrorAndItsByte) {
  Checkpoint c = SmallFiles();
  for (const auto& [json, expect] : std::vector<std::pair<std::string, std::string>>{
           {"not json", "JSON error at byte 0"},
           {"[]", "JSON error at byte 0: expected a JSON object"},
           {"{\"name\": \"x\",, }", "JSON error at byte 13"},
           {"{\"noSuchField\": 1}", "noSuchField"},
       }) {
    c.spec_json = json;
    absl::StatusOr<CheckpointModelSpec> r = ReadCheckpointModelSpec(c, "/ck/step_00000002");
    ASSERT_FALSE(r.ok()) << json;
    EXPECT_THAT(r.status().message(), HasSubstr("/ck/step_00000002/spec.json is not a readable job spec")) << json;
    EXPECT_THAT(r.status().message(), HasSubstr(expect)) << r.status();
  }
}

// A checkpoint on disk whose model.safetensors had its first weight set to NaN and its MANIFEST
// checksum fixed to match, as a hand edit would.
std::string CheckpointWithNan(size_t element) {
  const std::string dir = testing::MakeTempDir("nan-ckpt-");
  Checkpoint c = SmallFiles();
  c.step = 2;
  c.tensors.push_back({"wte.weight", {3, 4}, std::vector<float>(12, 0.5f)});
  c.tensors.push_back({"final_norm.weight", {4}, std::vector<float>(4, 1.0f)});
  EXPECT_TRUE(WriteCheckpoint(dir, c, 0).ok());
  const std::string step = dir + "/step_00000002";
  std::string model = *ReadFile(step + "/model.safetensors");
  uint64_t header;
  std::memcpy(&header, model.data(), 8);
  const float nan = std::nanf("");
  std::memcpy(model.data() + 8 + header + 4 * element, &nan, 4);  // wte.weight is first in the data
  EXPECT_TRUE(WriteFileAtomic(step + "/model.safetensors", model).ok());
  std::vector<std::string> lines = absl::StrSplit(*ReadFile(step + "/MANIFEST"), '\n');
  for (std::string& line : lines) {
    if (absl::StartsWith(line, "file model.safetensors ")) {
      line = absl::StrFormat("file model.safetensors %d %016x", model.size(), Xxh64(model.data(), model.size()));
    }
  }
  EXPECT_TRUE(WriteFileAtomic(step + "/MANIFEST", absl::StrJoin(lines, "\n")).ok());
  return step;
}

TEST(DamagedCheckpointFiles, AWeightThatIsNotAFiniteNumberIsRefusedWithTheTensorAndIndex) {
  const std::string step = CheckpointWithNan(5);
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(step);
  ASSERT_TRUE(reader.ok()) << reader.status();  // the checksums agree: only the values tell
  for (const absl::Status& st : {ReadCheckpointWeights(*reader).status(), ReadCheckpoint(step).status()}) {
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(st.message(), HasSubstr(step + "/model.safetensors: tensor wte.weight holds nan at element 5"));
  }
  // A slice past the bad value reads; one over it names the element in the whole tensor.
  std::vector<float> out(6);
  EXPECT_TRUE(reader->Read(*reader->Find("wte.weight"), 6, 6, out.data()).ok());
  EXPECT_THAT(reader->Read(*reader->Find("wte.weight"), 4, 2, out.data()).message(), HasSubstr("at element 5"));
  // The export refuses it and writes nothing.
  const std::string out_dir = testing::MakeTempDir("nan-export-") + "/model";
  absl::StatusOr<HfExportResult> r = ExportHf(step, out_dir, {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("holds nan at element 5"));
  EXPECT_FALSE(fs::exists(out_dir));
}

TEST(ExportOutDir, AnEmptyOrControlCharacterOutDirIsAUsageError) {
  const std::string ckpt = testing::MakeTempDir("export-src-");
  EXPECT_THAT(ExportHf(ckpt, "", {}).status().message(), HasSubstr("OUT_DIR is empty"));
  testing::CommandResult empty =
      testing::RunCommand({testing::BinDir() + "/moectl", "export", ckpt, "--format", "hf", ""}, {}, 30);
  EXPECT_EQ(empty.exit_code, 2) << empty.err;
  EXPECT_THAT(empty.err, HasSubstr("OUT_DIR is empty"));
  EXPECT_THAT(empty.err, HasSubstr("usage: moectl export"));
  testing::CommandResult control =
      testing::RunCommand({testing::BinDir() + "/moectl", "export", ckpt, "--format", "hf", "out/a\x1b[31mb"}, {}, 30);
  EXPECT_EQ(control.exit_code, 2) << control.err;
  EXPECT_THAT(control.err, HasSubstr("out/a\\x1b[31mb"));
  EXPECT_THAT(control.err, HasSubstr("control byte 0x1b"));
  EXPECT_EQ(control.err.find('\x1b'), std::string::npos) << "the raw byte reached the terminal";
}

// A 4-expert job's shape, as a config.json is checked against it.
HfShape FourExperts() {
  HfShape s;
  s.vocab = 93, s.d = 64, s.layers = 2, s.heads = 4, s.kv_heads = 4, s.head_dim = 16;
  s.experts = 4, s.top_k = 2, s.ffn = 128, s.tied = true, s.seq_len = 64;
  return s;
}

TEST(HfConfigCheck, ADenseOrUnknownModelTypeOnAnMoeJobStatesTheJobsExpertCount) {
  for (const char* type : {"llama", "gpt2"}) {
    const std::string json = absl::StrCat(
        R"({"model_type": ")", type,
        R"(", "vocab_size": 93, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "num_local_experts": 4, "num_experts_per_tok": 2})");
    std::vector<std::string> notes;
    absl::Status st = CheckHfConfig(json, "dir/config.json", FourExperts(), 10000, &notes);
    ASSERT_FALSE(st.ok()) << type;
    EXPECT_THAT(st.message(), Not(HasSubstr("model.moe.num_experts is 1"))) << st;
    EXPECT_THAT(st.message(), Not(HasSubstr("num_local_experts is"))) << st;
  }
  // A Mixtral config with another expert count is still told, with the job's real count.
  std::vector<std::string> notes;
  absl::Status mixtral = CheckHfConfig(
      R"({"model_type": "mixtral", "vocab_size": 93, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": true,
          "num_local_experts": 8})",
      "dir/config.json", FourExperts(), 10000, &notes);
  EXPECT_THAT(mixtral.message(), HasSubstr("num_local_experts is 8 in config.json, the job's model.moe.num_experts is 4"));
}

}  // namespace
}  // namespace moe
