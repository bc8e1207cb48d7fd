// The raw backend on a file that takes O_DIRECT: aligned and unaligned
// reads and writes, sequential reads through the page cache, FUA, FLUSH,
// TRIM, WRITE_ZEROES and a read past the end, all run on one reactor. Each
// must finish once with the right result and the file must hold what was
// written; afterwards the reactor must count no backend operation as still
// on the ring (a count left behind would keep it polling for ever).

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "io/backend.h"
#include "io/reactor.h"

namespace ioband::io {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kSize = 16 * kMiB;

class TestOp final : public IoOp {
 public:
  TestOp(Op kind, uint64_t at, uint32_t len, uint32_t op_flags, int* pending, std::unique_ptr<Reactor>* r)
      : pending_(pending), reactor_(r), storage_(std::make_unique<uint8_t[]>(len + 4096 + 1)) {
    op = kind;
    offset = at;
    length = len;
    flags = op_flags;
    // 4096-aligned unless the test asks for an odd buffer (offset by one).
    auto base = reinterpret_cast<uintptr_t>(storage_.get());
    buffer = reinterpret_cast<uint8_t*>((base + 4095) & ~uintptr_t{4095});
  }
  void finish(int32_t r) noexcept override {
    ++finished;
    result = r;
    if (--*pending_ == 0) (*reactor_)->stop();
  }
  int finished = 0;
  int32_t result = 0;

 private:
  int* pending_;
  std::unique_ptr<Reactor>* reactor_;
  std::unique_ptr<uint8_t[]> storage_;
};

class RawBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/ioband-raw-XXXXXX";
    int fd = mkstemp(templ.data());
    ASSERT_GE(fd, 0);
    path_ = templ;
    image_.resize(kSize);
    std::mt19937 rng(5);
    for (auto& b : image_) b = static_cast<uint8_t>(rng());
    ASSERT_EQ(pwrite(fd, image_.data(), kSize, 0), static_cast<ssize_t>(kSize));
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    std::string error;
    backend_ = open_raw_backend(RawOptions{path_}, error);
    ASSERT_NE(backend_, nullptr) << error;
  }
  void TearDown() override { unlink(path_.c_str()); }

  TestOp& add(Op kind, uint64_t at, uint32_t len, uint32_t flags = 0) {
    ops_.push_back(std::make_unique<TestOp>(kind, at, len, flags, &pending_, &reactor_));
    return *ops_.back();
  }
  // Submits every op added since the last call, runs a reactor (a new one:
  // a stopped reactor stays stopped) until all have finished.
  void run() {
    reactor_ = std::make_unique<Reactor>(64);
    pending_ = 0;
    for (auto& op : ops_) {
      if (op->finished) continue;
      ++pending_;
    }
    for (auto& op : ops_) {
      if (!op->finished) backend_->submit(*reactor_, *op);
    }
    reactor_->run();
    for (auto& op : ops_) EXPECT_EQ(op->finished, 1) << "op at " << op->offset;
    EXPECT_EQ(reactor_->storage_inflight(), 0u);
  }
  std::vector<uint8_t> file_bytes(uint64_t at, uint32_t len) {
    std::vector<uint8_t> out(len);
    int fd = open(path_.c_str(), O_RDONLY);
    EXPECT_EQ(pread(fd, out.data(), len, static_cast<off_t>(at)), static_cast<ssize_t>(len));
    close(fd);
    return out;
  }

  std::unique_ptr<Reactor> reactor_;
  std::string path_;
  std::vector<uint8_t> image_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::unique_ptr<TestOp>> ops_;
  int pending_ = 0;
};

TEST_F(RawBackendTest, SequentialReadsReturnTheFile) {
  if (backend_->describe().find("O_DIRECT") == std::string::npos) GTEST_SKIP() << "no O_DIRECT here";
  std::vector<TestOp*> reads;
  for (uint64_t at = 0; at < 12 * kMiB; at += kMiB) reads.push_back(&add(Op::kRead, at, kMiB, kSequential));
  reads.push_back(&add(Op::kRead, 12 * kMiB, 4096, kSequential));
  reads.push_back(&add(Op::kRead, 12 * kMiB + 4096, 1000, kSequential));
  run();
  for (TestOp* r : reads) {
    ASSERT_EQ(r->result, static_cast<int32_t>(r->length));
    EXPECT_EQ(std::memcmp(r->buffer, image_.data() + r->offset, r->length), 0) << "read at " << r->offset;
  }
}

TEST_F(RawBackendTest, SequentialWritesLandInTheFile) {
  if (backend_->describe().find("O_DIRECT") == std::string::npos) GTEST_SKIP() << "no O_DIRECT here";
  std::vector<uint8_t> stream(12 * kMiB + 8192);
  std::mt19937 rng(9);
  for (auto& b : stream) b = static_cast<uint8_t>(rng());
  for (uint64_t at = 0; at < 12 * kMiB; at += kMiB) {
    TestOp& w = add(Op::kWrite, kMiB + at, kMiB, kSequential);
    std::memcpy(w.buffer, stream.data() + at, kMiB);
  }
  TestOp& small = add(Op::kWrite, 13 * kMiB, 8192, kSequential);
  std::memcpy(small.buffer, stream.data() + 12 * kMiB, 8192);
  run();
  for (auto& op : ops_) EXPECT_EQ(op->result, static_cast<int32_t>(op->length)) << "write at " << op->offset;
  add(Op::kFlush, 0, 0);
  run();
  EXPECT_EQ(file_bytes(kMiB, static_cast<uint32_t>(stream.size())), stream);
}

TEST_F(RawBackendTest, WritesOfEveryKindLandAndReadBack) {
  std::vector<uint8_t> a(64 * 1024, 0xa5), b(100, 0x5a);
  TestOp& aligned = add(Op::kWrite, 2 * kMiB, static_cast<uint32_t>(a.size()), kFua);
  std::memcpy(aligned.buffer, a.data(), a.size());
  TestOp& odd = add(Op::kWrite, 3 * kMiB + 4097, static_cast<uint32_t>(b.size()));
  std::memcpy(odd.buffer, b.data(), b.size());
  add(Op::kTrim, 4 * kMiB, 64 * 1024);
  add(Op::kWriteZeroes, 5 * kMiB, 8192, kNoHole);
  add(Op::kWriteZeroes, 6 * kMiB + 512, 1000);
  run();
  for (auto& op : ops_) EXPECT_GE(op->result, 0) << "op at " << op->offset;
  add(Op::kFlush, 0, 0);
  TestOp& back = add(Op::kRead, 3 * kMiB + 4097, 100, kSequential);
  TestOp& zeroes = add(Op::kRead, 5 * kMiB, 8192);
  run();
  EXPECT_EQ(std::memcmp(back.buffer, b.data(), b.size()), 0);
  EXPECT_EQ(zeroes.result, 8192);
  for (uint32_t i = 0; i < 8192; ++i) ASSERT_EQ(zeroes.buffer[i], 0) << "byte " << i;
  EXPECT_EQ(file_bytes(2 * kMiB, static_cast<uint32_t>(a.size())), a);
  EXPECT_EQ(file_bytes(6 * kMiB + 512, 1000), std::vector<uint8_t>(1000, 0));
  EXPECT_EQ(file_bytes(6 * kMiB, 512), std::vector<uint8_t>(image_.begin() + 6 * kMiB, image_.begin() + 6 * kMiB + 512));
}

TEST_F(RawBackendTest, ReadPastTheEndFailsAndCountsNothing) {
  TestOp& past = add(Op::kRead, kSize - 4096, 8192);
  TestOp& seq = add(Op::kRead, kSize - 4096, 8192, kSequential);
  run();
  EXPECT_LT(past.result, 0);
  EXPECT_LT(seq.result, 0);
}

}  // namespace
}  // namespace ioband::io
