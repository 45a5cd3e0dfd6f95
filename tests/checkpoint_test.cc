// Checkpoints and safetensors: round trip, keep-N pruning, crash safety (killed writers),
// corruption and truncation detection, shape compatibility, and the safetensors byte layout.
#include "worker/checkpoint/checkpoint.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A small model's worth of tensors (MODEL.md names), values depending on `step`, plus AdamW state.
Checkpoint MakeCheckpoint(int64_t step, int64_t width = 8) {
  Checkpoint c;
  c.step = step;
  c.spec_json = R"({"name": "tiny", "model": {"dModel": 8}})";
  c.tokenizer = "moe-tokenizer char v1\n0a206162";
  c.meta = {{"rng", "12345"}, {"world_size", "2"}, {"note", "quotes \" and\nnewlines \\ ok"}};
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"wte.weight", {13, width}},
      {"blocks.0.attn_norm.weight", {width}},
      {"blocks.0.moe.router.weight", {4, width}},
      {"blocks.0.moe.w1", {4, width, 6}},
      {"blocks.0.empty", {0, 3}}};
  std::vector<NamedTensor> adam;
  for (const auto& [name, shape] : shapes) {
    NamedTensor t{name, shape, {}};
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    for (int64_t i = 0; i < n; ++i) t.data.push_back(static_cast<float>(step) + 0.001f * i);
    NamedTensor m{"adam_m." + name, shape, std::vector<float>(n, 0.5f * step)};
    NamedTensor v{"adam_v." + name, shape, std::vector<float>(n, 0.25f)};
    c.tensors.push_back(std::move(t));
    adam.push_back(std::move(m));
    adam.push_back(std::move(v));
  }
  for (auto& t : adam) c.tensors.push_back(std::move(t));
  return c;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> WeightShapes(const Checkpoint& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const NamedTensor& t : c.tensors) {
    if (t.name.rfind("adam_", 0) != 0) out.emplace_back(t.name, t.shape);
  }
  return out;
}

void ExpectSame(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.spec_json, b.spec_json);
  EXPECT_EQ(a.tokenizer, b.tokenizer);
  EXPECT_EQ(a.meta, b.meta);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
    EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape) << a.tensors[i].name;
    EXPECT_EQ(a.tensors[i].data, b.tensors[i].data) << a.tensors[i].name;
  }
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("checkpoint_test_"); }
  void TearDown() override {
    SetCheckpointTestHook(nullptr);
    fs::remove_all(dir_);
  }
  std::string dir_;
};

TEST(Xxh64, KnownVectors) {
  EXPECT_EQ(Xxh64("", 0), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(Xxh64("abc", 3), 0x44BC2CF5AD770999ull);
  // Stripes of 32 bytes plus 8-, 4- and 1-byte tails; expected values from `xxhsum -H64`.
  std::string s;
  for (int i = 0; i < 100; ++i) s.push_back(static_cast<char>(i));
  EXPECT_EQ(Xxh64(s.data(), s.size()), 0x6AC1E58032166597ull);
  s.clear();
  for (int i = 0; i < 256 * 5; ++i) s.push_back(static_cast<char>(i & 0xFF));
  s += "xyz";
  EXPECT_EQ(Xxh64(s.data(), s.size()), 0xAFD18A3957D3670Aull);
}

TEST_F(CheckpointTest, RoundTrip) {
  Checkpoint c = MakeCheckpoint(5);
  ASSERT_TRUE(WriteCheckpoint(dir_, c, 3).ok());
  auto latest = LatestCheckpoint(dir_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, dir_ + "/step_00000005");
  EXPECT_THAT(Entries(*latest), ::testing::ElementsAre("MANIFEST", "meta.json", "model.safetensors",
                                                       "optimizer.safetensors", "spec.json",
                                                       "tokenizer.txt"));
  auto back = ReadCheckpoint(*latest);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(c, *back);
  EXPECT_TRUE(CheckCompatible(*back, WeightShapes(c)).ok());
  EXPECT_THAT(Entries(dir_), ::testing::ElementsAre("step_00000005"));  // no temp left
}

TEST_F(CheckpointTest, SafetensorsLayoutIsValid) {
  Checkpoint c = MakeCheckpoint(2);
  ASSERT_TRUE(WriteCheckpoint(dir_, c, 1).ok());
  std::string path = dir_ + "/step_00000002/model.safetensors";
  std::string bytes = *ReadFile(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);  // little-endian
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u);  // data 8-byte aligned
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  EXPECT_THAT(header, HasSubstr(R"("wte.weight":{"dtype":"F32","shape":[13, 8],"data_offsets":[0,416]})"));
  EXPECT_THAT(header, ::testing::Not(HasSubstr("adam_")));
  uint64_t weight_bytes = 0;
  for (const auto& [name, shape] : WeightShapes(c)) {
    int64_t e = 1;
    for (int64_t d : shape) e *= d;
    weight_bytes += 4 * e;
  }
  EXPECT_EQ(bytes.size(), 8 + n + weight_bytes);
  // wte.weight's first float sits right after the header.
  float first;
  std::memcpy(&first, bytes.data() + 8 + n, 4);
  EXPECT_EQ(first, 2.0f);

  auto st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->metadata.at("format"), "pt");
  ASSERT_EQ(st->tensors.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(st->tensors[i].name, c.tensors[i].name);
    EXPECT_EQ(st->tensors[i].shape, c.tensors[i].shape);
    EXPECT_EQ(st->tensors[i].data, c.tensors[i].data);
  }
}

TEST_F(CheckpointTest, SafetensorsRejectsBadFiles) {
  std::string path = dir_ + "/x.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"a", {2, 2}, {1, 2, 3, 4}}, {"b", {1}, {5}}}, {{"k", "v"}}).ok());
  std::string good = *ReadFile(path);
  uint64_t n;
  std::memcpy(&n, good.data(), 8);
  std::string header = good.substr(8, n);
  auto with_header = [&](std::string h, size_t data_bytes) {
    while ((8 + h.size()) % 8) h.push_back(' ');
    uint64_t len = h.size();
    std::string out(reinterpret_cast<const char*>(&len), 8);
    return out + h + std::string(data_bytes, '\0');
  };
  struct Case {
    std::string bytes, expect;
  };
  std::vector<Case> cases = {
      {good.substr(0, good.size() - 3), "truncated"},
      {good.substr(0, 5), "shorter than the 8-byte header"},
      {std::string("\xff\xff\xff\xff\0\0\0\0", 8) + "{}", "exceeds the file"},
      {with_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [2,2]", 16), "bad header"},
      {with_header(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", 4), "dtype BF16"},
      {with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12 bytes"},
      {with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "gap"},
      {with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8), "trailing"},
      {with_header(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "data_offsets"},
      // 2^62 floats are 2^64 bytes, which wraps to the 0 bytes of offsets [0, 0].
      {with_header(R"({"a":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})", 0),
       "bad shape entry"},
  };
  for (const Case& c : cases) {
    ASSERT_TRUE(WriteFileAtomic(path, c.bytes).ok());
    auto st = ReadSafetensors(path);
    ASSERT_FALSE(st.ok()) << c.expect;
    EXPECT_THAT(st.status().message(), HasSubstr(path)) << c.expect;
    EXPECT_THAT(st.status().message(), HasSubstr(c.expect));
  }
  EXPECT_FALSE(WriteSafetensors(path, {{"a", {3}, {1, 2}}}).ok());           // shape vs data
  EXPECT_FALSE(WriteSafetensors(path, {{"a", {1}, {1}}, {"a", {1}, {2}}}).ok());  // repeated
}

TEST_F(CheckpointTest, KeepsNewestN) {
  // What a writer killed while deleting an old checkpoint leaves: a step folder without its
  // manifest, older than every kept one. The rotation sweeps it too.
  fs::create_directories(dir_ + "/step_00000000");
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/step_00000000/model.safetensors", "half deleted").ok());
  for (int step = 1; step <= 5; ++step) ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(step), 2).ok());
  EXPECT_THAT(Entries(dir_), ::testing::ElementsAre("step_00000004", "step_00000005"));
  // Rewriting an existing step (a rerun after a restart) replaces it.
  Checkpoint again = MakeCheckpoint(5);
  again.meta["rerun"] = "yes";
  ASSERT_TRUE(WriteCheckpoint(dir_, again, 2).ok());
  auto back = ReadCheckpoint(dir_ + "/step_00000005");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->meta.at("rerun"), "yes");
  EXPECT_THAT(Entries(dir_), ::testing::ElementsAre("step_00000004", "step_00000005"));
}

TEST_F(CheckpointTest, KeepCountsFromTheStepWrittenDown) {
  // A resume that skipped a damaged step 8 (its sizes right, a byte wrong) and went on from step 4:
  // with keep 1 the step 5 it writes must stay, not be pruned in favour of step 8.
  for (int step : {4, 8}) ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(step), 0).ok());
  std::string bytes = *ReadFile(dir_ + "/step_00000008/model.safetensors");
  bytes[bytes.size() / 2] ^= 0x10;
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/step_00000008/model.safetensors", bytes).ok());
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(5), 1).ok());
  EXPECT_THAT(Entries(dir_), ::testing::ElementsAre("step_00000005", "step_00000008"));
  auto good = NewestGoodCheckpoint(dir_, false, nullptr);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(*good, dir_ + "/step_00000005");
}

TEST_F(CheckpointTest, LatestSkipsTempAndIncompleteDirs) {
  EXPECT_EQ(LatestCheckpoint(dir_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LatestCheckpoint(dir_ + "/absent").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(1), 5).ok());
  // A crashed writer's temp dir with partial files, a newer dir without manifest, and one whose
  // file is shorter than its manifest says.
  std::string tmp = dir_ + "/.tmp-step_00000009.somehost.4242";
  fs::create_directory(tmp);
  ASSERT_TRUE(WriteFileAtomic(tmp + "/model.safetensors", "partial").ok());
  fs::copy(dir_ + "/step_00000001", dir_ + "/step_00000003");
  fs::remove(dir_ + "/step_00000003/MANIFEST");
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(2), 5).ok());
  fs::copy(dir_ + "/step_00000002", dir_ + "/step_00000004");
  fs::resize_file(dir_ + "/step_00000004/optimizer.safetensors", 100);
  auto latest = LatestCheckpoint(dir_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, dir_ + "/step_00000002");

  auto no_manifest = ReadCheckpoint(dir_ + "/step_00000003");
  ASSERT_FALSE(no_manifest.ok());
  EXPECT_THAT(no_manifest.status().message(), HasSubstr("MANIFEST"));
  auto truncated = ReadCheckpoint(dir_ + "/step_00000004");
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(truncated.status().message(), HasSubstr("optimizer.safetensors"));
  EXPECT_THAT(truncated.status().message(), HasSubstr("truncated"));
}

TEST_F(CheckpointTest, CorruptByteIsCaught) {
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(3), 5).ok());
  std::string ckpt = dir_ + "/step_00000003";
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "spec.json", "meta.json"}) {
    std::string path = ckpt + "/" + file;
    std::string bytes = *ReadFile(path);
    std::string bad = bytes;
    bad[bad.size() / 2] ^= 0x10;
    ASSERT_TRUE(WriteFileAtomic(path, bad).ok());
    auto r = ReadCheckpoint(ckpt);
    ASSERT_FALSE(r.ok()) << file;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(r.status().message(), HasSubstr(path));
    EXPECT_THAT(r.status().message(), HasSubstr("checksum"));
    ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
  }
  EXPECT_TRUE(ReadCheckpoint(ckpt).ok());
  // A manifest that is not ours.
  ASSERT_TRUE(WriteFileAtomic(ckpt + "/MANIFEST", "hello\n").ok());
  auto foreign = ReadCheckpoint(ckpt);
  ASSERT_FALSE(foreign.ok());
  EXPECT_THAT(foreign.status().message(), HasSubstr("MANIFEST"));
}

// A checkpoint file that is a device or a pipe (a link to /dev/zero, a FIFO) is damage, said at
// once; reading it never ended (/dev/zero) or blocked (a FIFO without writer), in export, sample
// and resume alike. The newest checkpoint without it is the latest.
TEST_F(CheckpointTest, AFileThatIsNoRegularFileIsDamageNotAHang) {
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(1), 5).ok());
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(2), 5).ok());
  const std::string ckpt = dir_ + "/step_00000002";
  fs::remove(ckpt + "/model.safetensors");
  fs::create_symlink("/dev/zero", ckpt + "/model.safetensors");
  auto r = ReadCheckpoint(ckpt);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr("model.safetensors is a character device"));
  EXPECT_EQ(*LatestCheckpoint(dir_), dir_ + "/step_00000001");
  // A step name that is a link to itself: skipped, and said (it was skipped without a word).
  fs::create_symlink("step_00000009", dir_ + "/step_00000009");
  std::vector<std::string> said;
  auto good = NewestGoodCheckpointReader(dir_, false, [&](const std::string& m) { said.push_back(m); });
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->path(), dir_ + "/step_00000001");
  std::string all;
  for (const std::string& m : said) all += m + "\n";
  EXPECT_THAT(all, HasSubstr("skipping " + dir_ + "/step_00000009: not a checkpoint directory"));
  EXPECT_THAT(all, HasSubstr("model.safetensors is a character device"));
  fs::remove(dir_ + "/step_00000009");
  fs::remove(ckpt + "/model.safetensors");
  ASSERT_EQ(::mkfifo((ckpt + "/model.safetensors").c_str(), 0600), 0);
  r = ReadCheckpoint(ckpt);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("model.safetensors is a named pipe"));
  ASSERT_EQ(::mkfifo((dir_ + "/step_00000001/MANIFEST.fifo").c_str(), 0600), 0);
  fs::rename(dir_ + "/step_00000001/MANIFEST", dir_ + "/step_00000001/MANIFEST.real");
  fs::rename(dir_ + "/step_00000001/MANIFEST.fifo", dir_ + "/step_00000001/MANIFEST");
  r = ReadCheckpoint(dir_ + "/step_00000001");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("MANIFEST is a named pipe"));
}

// A resume tells "no checkpoint at all" (a fresh start, said as such) from "every one damaged,
// starting over" by a flag, not by the wording of the message; and moed reads a checkpoint's
// meta.json alone, checked against the manifest.
TEST_F(CheckpointTest, NewestGoodSaysWhetherThereWasNoneAndMetaReadsAlone) {
  bool none_there = false;
  auto r = NewestGoodCheckpointReader(dir_, true, nullptr, &none_there);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(none_there);

  Checkpoint c = MakeCheckpoint(1);
  c.meta["final_eval_pending"] = "{\"step\": 1}";
  ASSERT_TRUE(WriteCheckpoint(dir_, c, 5).ok());
  const std::string ckpt = dir_ + "/step_00000001";
  auto meta = ReadCheckpointMeta(ckpt);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ((*meta)["final_eval_pending"], "{\"step\": 1}");
  r = NewestGoodCheckpointReader(dir_, true, nullptr, &none_there);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(none_there);

  // Damaged (meta.json changed behind the manifest's back): every one is, and start_over says so.
  std::ofstream(ckpt + "/meta.json", std::ios::trunc) << "{\"final_eval_pending\": \"{}\"}\n";
  meta = ReadCheckpointMeta(ckpt);
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.status().code(), absl::StatusCode::kDataLoss);
  r = NewestGoodCheckpointReader(dir_, true, nullptr, &none_there);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(none_there);
}

TEST_F(CheckpointTest, CheckCompatibleNamesTheMismatch) {
  Checkpoint c = MakeCheckpoint(1);
  auto expected = WeightShapes(c);
  EXPECT_TRUE(CheckCompatible(c, expected).ok());

  auto wider = WeightShapes(MakeCheckpoint(1, 16));
  absl::Status st = CheckCompatible(c, wider);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.message(), HasSubstr("wte.weight"));
  EXPECT_THAT(st.message(), HasSubstr("[13, 8]"));
  EXPECT_THAT(st.message(), HasSubstr("[13, 16]"));

  auto more = expected;
  more.push_back({"lm_head.weight", {13, 8}});
  st = CheckCompatible(c, more);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.message(), HasSubstr("no tensor lm_head.weight"));

  auto fewer = expected;
  fewer.pop_back();
  st = CheckCompatible(c, fewer);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.message(), HasSubstr("blocks.0.empty"));
  EXPECT_THAT(st.message(), HasSubstr("does not have"));
}

const char* g_kill_stage = nullptr;
void KillAtStage(std::string_view stage) {
  if (g_kill_stage != nullptr && stage == g_kill_stage) ::kill(::getpid(), SIGKILL);
}

// Forks a writer of `ckpt` that SIGKILLs itself when it reaches `stage`.
void WriteAndDieAt(const std::string& dir, const Checkpoint& ckpt, const char* stage) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    g_kill_stage = stage;
    SetCheckpointTestHook(&KillAtStage);
    (void)WriteCheckpoint(dir, ckpt, 1);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "writer did not reach " << stage;
}

TEST_F(CheckpointTest, WriterKilledAtEachStageLeavesThePreviousOne) {
  Checkpoint first = MakeCheckpoint(1);
  ASSERT_TRUE(WriteCheckpoint(dir_, first, 1).ok());
  for (const char* stage : {"temp_dir", "file:model.safetensors", "file:optimizer.safetensors",
                            "file:meta.json", "manifest"}) {
    WriteAndDieAt(dir_, MakeCheckpoint(2), stage);
    auto latest = LatestCheckpoint(dir_);
    ASSERT_TRUE(latest.ok()) << stage << ": " << latest.status();
    EXPECT_EQ(*latest, dir_ + "/step_00000001") << stage;
    auto back = ReadCheckpoint(*latest);
    ASSERT_TRUE(back.ok()) << stage << ": " << back.status();
    ExpectSame(first, *back);
  }
  // Killed after the rename, before pruning: the new one is complete and wins.
  WriteAndDieAt(dir_, MakeCheckpoint(2), "renamed");
  auto latest = LatestCheckpoint(dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, dir_ + "/step_00000002");
  EXPECT_TRUE(ReadCheckpoint(*latest).ok());
  // The next successful write prunes and sweeps the dead writers' temp dirs.
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(3), 1).ok());
  EXPECT_THAT(Entries(dir_), ::testing::ElementsAre("step_00000003"));
}

TEST_F(CheckpointTest, WriterKilledAtARandomMomentLeavesALoadableCheckpoint) {
  ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(1), 2).ok());
  Checkpoint big = MakeCheckpoint(2, 8192);  // ~6 MB of weights, ~12 MB of adam state
  for (int delay_ms : {1, 5, 20}) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (int64_t step = 2;; ++step) {
        big.step = step;
        (void)WriteCheckpoint(dir_, big, 2);
      }
    }
    ::usleep(delay_ms * 1000);
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    auto latest = LatestCheckpoint(dir_);
    ASSERT_TRUE(latest.ok()) << latest.status();
    auto back = ReadCheckpoint(*latest);
    ASSERT_TRUE(back.ok()) << *latest << ": " << back.status();
    EXPECT_GE(back->step, 1);
  }
}

}  // namespace
}  // namespace moe
