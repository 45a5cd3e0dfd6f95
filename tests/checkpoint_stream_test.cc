// The streaming pieces under checkpoints: SafetensorsWriter/Reader and CheckpointWriter/Reader
// (round trips, slices, misuse, corrupt and truncated files caught before any tensor is read).
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"
#include "worker/checkpoint/checkpoint.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::vector<float> Ramp(size_t n, float base) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = base + 0.5f * static_cast<float>(i);
  return v;
}

class CheckpointStreamTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("checkpoint_stream_test_"); }
  void TearDown() override { fs::remove_all(dir_); }

  // weights a (3, 4), b (5), empty (0, 2); moments of a.
  Checkpoint Make(int64_t step) {
    Checkpoint c;
    c.step = step;
    c.spec_json = "{}";
    c.tokenizer = "tok";
    c.meta = {{"world_size", "1"}};
    c.tensors = {{"a", {3, 4}, Ramp(12, 1)},
                 {"b", {5}, Ramp(5, 100)},
                 {"empty", {0, 2}, {}},
                 {"adam_m.a", {3, 4}, Ramp(12, -7)},
                 {"adam_v.a", {3, 4}, Ramp(12, 0.25f)}};
    return c;
  }

  // Streams c through a CheckpointWriter.
  absl::Status Stream(const Checkpoint& c) {
    std::vector<TensorSpec> specs;
    for (const NamedTensor& t : c.tensors) specs.push_back({t.name, t.shape});
    auto w = CheckpointWriter::Start(dir_, c, specs, 2);
    if (!w.ok()) return w.status();
    for (const NamedTensor& t : c.tensors) {
      if (absl::Status st = (*w)->Write(t.name, t.data.data(), t.data.size()); !st.ok()) return st;
    }
    return (*w)->Finish();
  }

  std::string dir_;
};

TEST_F(CheckpointStreamTest, SafetensorsWriterMatchesTheWholeFileWriterAndReadsBackInSlices) {
  const std::vector<NamedTensor> tensors = {{"x", {2, 3}, Ramp(6, 1)}, {"y", {4}, Ramp(4, -2)}};
  ASSERT_TRUE(WriteSafetensors(dir_ + "/whole.safetensors", tensors, {{"format", "pt"}}).ok());
  auto w = SafetensorsWriter::Create(dir_ + "/streamed.safetensors",
                                     {{"x", {2, 3}}, {"y", {4}}}, {{"format", "pt"}});
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->Write("x", tensors[0].data.data(), 6).ok());
  ASSERT_TRUE((*w)->Write("y", tensors[1].data.data(), 4).ok());
  ASSERT_TRUE((*w)->Finish().ok());
  const std::string bytes = *ReadFile(dir_ + "/streamed.safetensors");
  EXPECT_EQ(bytes, *ReadFile(dir_ + "/whole.safetensors"));
  EXPECT_EQ((*w)->size(), bytes.size());
  EXPECT_EQ((*w)->xxh64(), Xxh64(bytes.data(), bytes.size()));

  auto r = SafetensorsReader::Open(dir_ + "/streamed.safetensors");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->header().tensors.size(), 2u);
  EXPECT_EQ(r->header().metadata.at("format"), "pt");
  const TensorEntry& x = r->header().tensors[0];
  EXPECT_EQ(x.name, "x");
  EXPECT_EQ(x.shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> slice(3);
  ASSERT_TRUE(r->Read(x, 2, 3, slice.data()).ok());
  EXPECT_EQ(slice, (std::vector<float>{tensors[0].data[2], tensors[0].data[3], tensors[0].data[4]}));
  absl::Status past = r->Read(x, 4, 3, slice.data());
  EXPECT_FALSE(past.ok());
  EXPECT_THAT(past.message(), HasSubstr("streamed.safetensors"));
}

TEST_F(CheckpointStreamTest, SafetensorsWriterRefusesMisuseAndLeavesNoFile) {
  const std::string path = dir_ + "/x.safetensors";
  EXPECT_FALSE(SafetensorsWriter::Create(path, {{"a", {1}}, {"a", {2}}}).ok());  // repeated
  {
    auto w = SafetensorsWriter::Create(path, {{"a", {2}}, {"b", {1}}});
    ASSERT_TRUE(w.ok());
    const float v[2] = {1, 2};
    absl::Status st = (*w)->Write("b", v, 1);
    EXPECT_THAT(st.message(), HasSubstr("out of order"));
    st = (*w)->Write("a", v, 1);
    EXPECT_THAT(st.message(), HasSubstr("has shape [2] but 1 values"));
    ASSERT_TRUE((*w)->Write("a", v, 2).ok());
    st = (*w)->Finish();
    EXPECT_THAT(st.message(), HasSubstr("after 1 of 2 tensors"));
  }
  EXPECT_TRUE(fs::is_empty(dir_));  // neither the file nor its temp file
}

TEST_F(CheckpointStreamTest, StreamedCheckpointReadsBackWholeAndInSlices) {
  const Checkpoint c = Make(4);
  ASSERT_TRUE(Stream(c).ok());
  const std::string path = dir_ + "/step_00000004";
  auto r = CheckpointReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->info().step, 4);
  EXPECT_EQ(r->info().tokenizer, "tok");
  EXPECT_EQ(r->info().meta, c.meta);
  ASSERT_EQ(r->tensors().size(), c.tensors.size());
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const TensorEntry* t = r->Find(c.tensors[i].name);
    ASSERT_NE(t, nullptr) << c.tensors[i].name;
    EXPECT_EQ(t->shape, c.tensors[i].shape);
    std::vector<float> back(t->elements());
    ASSERT_TRUE(r->Read(*t, 0, back.size(), back.data()).ok());
    EXPECT_EQ(back, c.tensors[i].data) << t->name;
  }
  EXPECT_EQ(r->Find("missing"), nullptr);
  // A rank's slice: rows 1..2 of adam_v.a.
  std::vector<float> rows(8);
  ASSERT_TRUE(r->Read(*r->Find("adam_v.a"), 4, 8, rows.data()).ok());
  EXPECT_EQ(rows, std::vector<float>(c.tensors[4].data.begin() + 4, c.tensors[4].data.end()));
  EXPECT_TRUE(CheckCompatible(*r, {{"a", {3, 4}}, {"b", {5}}, {"empty", {0, 2}}}).ok());
  EXPECT_THAT(CheckCompatible(*r, {{"a", {4, 3}}}).message(), HasSubstr("[3, 4]"));
  // The convenience reader sees the same checkpoint.
  auto whole = ReadCheckpoint(path);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->tensors.size(), c.tensors.size());
  for (size_t i = 0; i < c.tensors.size(); ++i) EXPECT_EQ(whole->tensors[i].data, c.tensors[i].data);
  // The tools' reader: the weights alone, in order.
  auto weights = ReadCheckpointWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ASSERT_EQ(weights->tensors.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(weights->tensors[i].name, c.tensors[i].name);
    EXPECT_EQ(weights->tensors[i].data, c.tensors[i].data);
  }
}

TEST_F(CheckpointStreamTest, CorruptAndTruncatedFilesAreCaughtAtOpen) {
  ASSERT_TRUE(Stream(Make(1)).ok());
  const std::string ckpt = dir_ + "/step_00000001";
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    const std::string path = ckpt + "/" + file;
    const std::string good = *ReadFile(path);
    std::string bad = good;
    bad[bad.size() - 5] ^= 0x01;  // a tensor byte, not the header
    ASSERT_TRUE(WriteFileAtomic(path, bad).ok());
    auto r = CheckpointReader::Open(ckpt);
    ASSERT_FALSE(r.ok()) << file;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(r.status().message(), HasSubstr(path));
    EXPECT_THAT(r.status().message(), HasSubstr("checksum"));
    // The weights-only reader still checks the optimizer's file.
    EXPECT_EQ(ReadCheckpointWeights(ckpt).status().code(), absl::StatusCode::kDataLoss) << file;

    ASSERT_TRUE(WriteFileAtomic(path, good.substr(0, good.size() - 4)).ok());
    r = CheckpointReader::Open(ckpt);
    ASSERT_FALSE(r.ok()) << file;
    EXPECT_THAT(r.status().message(), HasSubstr(path));
    EXPECT_THAT(r.status().message(), HasSubstr("truncated"));
    auto found = NewestGoodCheckpoint(dir_, false, nullptr);
    EXPECT_EQ(found.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(found.status().message(), HasSubstr("truncated"));
    ASSERT_TRUE(WriteFileAtomic(path, good).ok());
  }
  EXPECT_TRUE(CheckpointReader::Open(ckpt).ok());
  auto found = NewestGoodCheckpoint(dir_, false, nullptr);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, ckpt);
}

TEST_F(CheckpointStreamTest, AnAbandonedOrMisfedWriterLeavesOnlyThePreviousCheckpoint) {
  ASSERT_TRUE(Stream(Make(1)).ok());
  const Checkpoint c = Make(2);
  {
    std::vector<TensorSpec> specs;
    for (const NamedTensor& t : c.tensors) specs.push_back({t.name, t.shape});
    auto w = CheckpointWriter::Start(dir_, c, specs, 2);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write("a", c.tensors[0].data.data(), 12).ok());
    // The optimizer's tensors come after every weight.
    absl::Status st = (*w)->Write("adam_m.a", c.tensors[3].data.data(), 12);
    EXPECT_THAT(st.message(), HasSubstr("writing checkpoint " + dir_ + "/step_00000002"));
    EXPECT_THAT(st.message(), HasSubstr("out of order"));
    EXPECT_FALSE((*w)->Finish().ok());
  }
  {
    auto w = CheckpointWriter::Start(dir_, c, {{"a", {3, 4}}}, 2);
    ASSERT_TRUE(w.ok());
    // Dropped before Finish, e.g. a failed gather.
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_THAT(names, ::testing::ElementsAre("step_00000001"));
}

// A diverged run's weights (NaN, inf): with keep 2, writing them at steps 2 and 3 would have
// rotated step 1, the last good checkpoint, out. Each write is refused and step 1 stays.
TEST_F(CheckpointStreamTest, ATensorThatIsNoNumberIsNotWrittenAndTheOlderCheckpointStays) {
  ASSERT_TRUE(Stream(Make(1)).ok());
  Checkpoint nan = Make(2), inf = Make(3);
  nan.tensors[1].data[3] = std::numeric_limits<float>::quiet_NaN();
  inf.tensors[4].data[0] = std::numeric_limits<float>::infinity();  // adam_v.a
  absl::Status st = Stream(nan);
  EXPECT_THAT(st.message(), HasSubstr("tensor b holds nan at element 3, not a finite number"));
  EXPECT_THAT(Stream(inf).message(), HasSubstr("tensor adam_v.a holds inf at element 0"));
  EXPECT_THAT(WriteCheckpoint(dir_, inf, 2).message(), HasSubstr("not a finite number"));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_THAT(names, ::testing::ElementsAre("step_00000001"));
}

}  // namespace
}  // namespace moe
