// Small reads of an image on tmpfs go through a mapping of the file
// (io/mapped_file.h, the raw backend's read_mapped). A file cut under the
// daemon must give EIO for what is gone, never a crash (SIGBUS) and never
// zeros for the bytes past the new end; a sparse file must stay sparse when
// its holes are read or trimmed (a read fault on tmpfs allocates the page);
// and a SIGBUS that is not a guarded copy's still ends the process.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "io/backend.h"
#include "io/mapped_file.h"
#include "io/reactor.h"

namespace ioband::io {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kSize = 4 * kMiB;

// One operation; the test's run() stops the loop after the last one.
struct ReadOp final : IoOp {
  ReadOp(Op kind, uint64_t at, uint32_t len, std::function<void()> done)
      : storage(len + 4096), on_done(std::move(done)) {
    op = kind;
    offset = at;
    length = len;
    buffer = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(storage.data()) + 4095) & ~uintptr_t{4095});
  }
  void finish(int32_t r) noexcept override {
    results.push_back(r);
    on_done();
  }
  int32_t result() const { return results.empty() ? INT32_MIN : results.back(); }
  std::vector<int32_t> results;
  std::vector<uint8_t> storage;
  std::function<void()> on_done;
};

class MappedReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    struct statfs fs {};
    if (statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC) GTEST_SKIP() << "/dev/shm is not a tmpfs";
    path_ = "/dev/shm/ioband-mapped-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    image_.resize(kSize);
    std::mt19937 rng(11);
    for (auto& b : image_) b = static_cast<uint8_t>(rng() | 1);  // no zero byte: zeros would show
  }
  void TearDown() override {
    if (!path_.empty()) unlink(path_.c_str());
  }
  void write_image() {
    const int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, image_.data(), kSize, 0), static_cast<ssize_t>(kSize));
    close(fd);
  }
  void open_backend() {
    std::string error;
    RawOptions options{path_};
    options.lock = false;
    backend_ = open_raw_backend(options, error);
    ASSERT_NE(backend_, nullptr) << error;
  }
  // Runs ops (each finishing once) on a new reactor.
  void run(const std::vector<ReadOp*>& ops) {
    Reactor reactor(64);
    size_t pending = ops.size();
    for (ReadOp* op : ops)
      op->on_done = [&] {
        if (--pending == 0) reactor.stop();
      };
    // Submitted from the loop, as a session does: reads of a file in memory
    // finish without the ring, on the loop's next turn.
    reactor.post([&] {
      for (ReadOp* op : ops) backend_->submit(reactor, *op);
    });
    reactor.run();
    for (ReadOp* op : ops) EXPECT_EQ(op->results.size(), 1u) << "op at " << op->offset;
  }
  ReadOp* add(Op kind, uint64_t at, uint32_t len) {
    ops_.push_back(std::make_unique<ReadOp>(kind, at, len, [] {}));
    return ops_.back().get();
  }
  uint64_t blocks() {
    struct stat st {};
    EXPECT_EQ(stat(path_.c_str(), &st), 0);
    return static_cast<uint64_t>(st.st_blocks);
  }

  std::string path_;
  std::vector<uint8_t> image_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::unique_ptr<ReadOp>> ops_;
};

TEST_F(MappedReadTest, CopyReportsPagesCutFromUnderIt) {
  write_image();
  const int fd = open(path_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  auto mapped = MappedFile::map(fd, kSize);
  ASSERT_NE(mapped, nullptr);
  std::vector<uint8_t> out(8192);
  EXPECT_EQ(mapped->copy(out.data(), kMiB, 4096), MappedFile::Copy::whole);
  EXPECT_EQ(std::memcmp(out.data(), image_.data() + kMiB, 4096), 0);
  EXPECT_EQ(mapped->copy(out.data(), kSize - 4096, 4096),
            MappedFile::Copy::at_end);  // in the last page

  const uint64_t end = kMiB + 1000;  // inside a page
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(end)), 0);
  EXPECT_EQ(mapped->copy(out.data(), 2 * kMiB, 4096),
            MappedFile::Copy::failed);  // wholly past the end
  EXPECT_EQ(mapped->copy(out.data(), kMiB, 8192),
            MappedFile::Copy::failed);  // into a page past it
  EXPECT_EQ(mapped->copy(out.data(), kMiB, 1000),
            MappedFile::Copy::at_end);  // the end's page
  // Before it: the data, but the mapping's last page is gone too, so the
  // caller must look at the file's size.
  EXPECT_EQ(mapped->copy(out.data(), kMiB - 4096, 4096), MappedFile::Copy::at_end);
  EXPECT_EQ(std::memcmp(out.data(), image_.data() + kMiB - 4096, 4096), 0);
  // The guard is per copy: it works again and again.
  for (int i = 0; i < 100; ++i) ASSERT_EQ(mapped->copy(out.data(), 3 * kMiB, 512), MappedFile::Copy::failed);
  close(fd);
}

TEST_F(MappedReadTest, ReadsOfAFileCutUnderTheBackendFailWithEio) {
  write_image();
  open_backend();
  ASSERT_TRUE(backend_->traits().memory_speed) << backend_->describe();
  std::vector<ReadOp*> before = {add(Op::kRead, 0, 4096), add(Op::kRead, kMiB + 12345, 70000),
                                 add(Op::kRead, kSize - 4096, 4096)};
  run(before);
  for (ReadOp* r : before) {
    ASSERT_EQ(r->result(), static_cast<int32_t>(r->length));
    EXPECT_EQ(std::memcmp(r->buffer, image_.data() + r->offset, r->length), 0) << "read at " << r->offset;
  }

  const uint64_t end = 2 * kMiB + 1000;
  ASSERT_EQ(truncate(path_.c_str(), static_cast<off_t>(end)), 0);
  struct Case {
    uint64_t at;
    uint32_t length;
    bool fails;
  };
  const Case cases[] = {
      {3 * kMiB, 4096, true},      // wholly past the end: SIGBUS, caught
      {2 * kMiB, 4096, true},      // the end's page, past the end: zeros, found by the size check
      {end - 600, 601, true},      // one byte past the end
      {end - 8192, 16384, true},   // across the end into a gone page
      {kSize - 4096, 4096, true},  // the mapping's last page
      {end - 1000, 1000, false},   // up to the end: the data
      {kMiB, 64 * kKiB, false},    // well before it
  };
  std::vector<ReadOp*> after;
  for (const Case& c : cases) after.push_back(add(Op::kRead, c.at, c.length));
  run(after);
  for (size_t i = 0; i < after.size(); ++i) {
    const ReadOp* r = after[i];
    if (cases[i].fails) {
      EXPECT_EQ(r->result(), -EIO) << "read at " << r->offset << "+" << r->length;
    } else {
      ASSERT_EQ(r->result(), static_cast<int32_t>(r->length)) << "read at " << r->offset;
      EXPECT_EQ(std::memcmp(r->buffer, image_.data() + r->offset, r->length), 0) << "read at " << r->offset;
    }
  }
}

TEST_F(MappedReadTest, ReadingAndTrimmingHolesAllocatesNothing) {
  // Half data, half holes: reads go through pread, which reads holes as
  // zeros without allocating them.
  write_image();
  ASSERT_EQ(truncate(path_.c_str(), 0), 0);
  const int fd = open(path_.c_str(), O_RDWR);
  ASSERT_EQ(ftruncate(fd, kSize), 0);
  ASSERT_EQ(pwrite(fd, image_.data(), kSize / 2, 0), static_cast<ssize_t>(kSize / 2));
  close(fd);
  open_backend();
  const uint64_t sparse = blocks();
  std::vector<ReadOp*> reads;
  for (uint64_t at = 0; at < kSize; at += 16 * kKiB) reads.push_back(add(Op::kRead, at, 4096));
  run(reads);
  for (ReadOp* r : reads) {
    ASSERT_EQ(r->result(), 4096);
    const bool hole = r->offset >= kSize / 2;
    EXPECT_EQ(std::memcmp(r->buffer, hole ? std::vector<uint8_t>(4096).data() : image_.data() + r->offset, 4096), 0);
  }
  EXPECT_EQ(blocks(), sparse);

  // Fill the holes: the file has none, and after the next look (every
  // 1,024 reads) reads go through the mapping; then TRIM makes holes again,
  // and reading them must not fill them.
  {
    const int w = open(path_.c_str(), O_RDWR);
    ASSERT_EQ(pwrite(w, image_.data() + kSize / 2, kSize / 2, kSize / 2), static_cast<ssize_t>(kSize / 2));
    close(w);
  }
  std::vector<ReadOp*> full;
  for (int i = 0; i < 1100; ++i) full.push_back(add(Op::kRead, (i * 4096ull) % kSize, 4096));
  run(full);
  for (ReadOp* r : full) ASSERT_EQ(r->result(), 4096);
  std::vector<ReadOp*> trim = {add(Op::kTrim, kMiB, kMiB), add(Op::kWriteZeroes, 3 * kMiB, 64 * kKiB)};
  run(trim);
  for (ReadOp* r : trim) ASSERT_EQ(r->result(), 0);
  const uint64_t trimmed = blocks();
  EXPECT_LT(trimmed, kSize / 512);
  std::vector<ReadOp*> holes;
  for (int i = 0; i < 2100; ++i) holes.push_back(add(Op::kRead, kMiB + (i * 4096ull) % kMiB, 4096));
  holes.push_back(add(Op::kRead, 3 * kMiB, 4096));
  run(holes);
  for (ReadOp* r : holes) {
    ASSERT_EQ(r->result(), 4096);
    EXPECT_EQ(std::memcmp(r->buffer, std::vector<uint8_t>(4096).data(), 4096), 0) << "read at " << r->offset;
  }
  EXPECT_EQ(blocks(), trimmed);
}

TEST_F(MappedReadTest, ReadsPastWhatWasMappedReadTheGrownFile) {
  // A qcow2 image grows under its raw backend: reads of the new part must
  // see the file, not run off the end of the mapping made at open.
  write_image();
  open_backend();
  std::vector<uint8_t> more(kSize);
  std::mt19937 rng(12);
  for (auto& b : more) b = static_cast<uint8_t>(rng() | 1);
  {
    const int w = open(path_.c_str(), O_RDWR);
    ASSERT_EQ(pwrite(w, more.data(), kSize, kSize), static_cast<ssize_t>(kSize));
    close(w);
  }
  std::vector<ReadOp*> reads = {add(Op::kRead, kSize - 4096, 8192), add(Op::kRead, kSize + kMiB, 4096),
                                add(Op::kRead, 2 * kSize - 4096, 4096), add(Op::kRead, kMiB, 4096)};
  run(reads);
  std::vector<uint8_t> whole(image_);
  whole.insert(whole.end(), more.begin(), more.end());
  for (ReadOp* r : reads) {
    ASSERT_EQ(r->result(), static_cast<int32_t>(r->length)) << "read at " << r->offset;
    EXPECT_EQ(std::memcmp(r->buffer, whole.data() + r->offset, r->length), 0) << "read at " << r->offset;
  }
}

TEST_F(MappedReadTest, OtherSigbusStillEndsTheProcess) {
  write_image();
  const int fd = open(path_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  auto mapped = MappedFile::map(fd, kSize);  // installs the handler
  ASSERT_NE(mapped, nullptr);
  void* other = mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(other, MAP_FAILED);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  // Killed by SIGBUS; under ASan, whose handler was there first, its report and
  // exit.
  const auto died_of_it = [](int status) {
    return WIFSIGNALED(status) ? WTERMSIG(status) == SIGBUS : WIFEXITED(status) && WEXITSTATUS(status) != 0;
  };
  EXPECT_EXIT((void)*static_cast<volatile uint8_t*>(static_cast<uint8_t*>(other) + kMiB), died_of_it, "");
  munmap(other, kSize);
  close(fd);
}

}  // namespace
}  // namespace ioband::io
