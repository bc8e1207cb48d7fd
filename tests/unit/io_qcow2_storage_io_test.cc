// What a qcow2 image reports reaching the storage for each request
// (IoOp::storage_io), which the scheduler charges to the request's group:
// an allocating write costs its copy-on-write read and a whole cluster, an
// overwrite only itself, a FLUSH its metadata writes and syncs, a read of a
// table not in the cache the table too. The images are made by qemu-img.

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
#include "io/image.h"
#include "io/reactor.h"

namespace ioband::io {
namespace {

constexpr uint32_t kCluster = 64 * 1024;

class Op1 final : public IoOp {
 public:
  Op1(Op kind, uint64_t at, uint32_t len, Reactor& r) : reactor_(r), data_(len + 4096) {
    op = kind;
    offset = at;
    length = len;
    auto base = reinterpret_cast<uintptr_t>(data_.data());
    buffer = reinterpret_cast<uint8_t*>((base + 4095) & ~uintptr_t{4095});
    std::memset(buffer, 0x5a, len);
  }
  void finish(int32_t r) noexcept override {
    result = r;
    reactor_.stop();
  }
  int32_t result = -1;

 private:
  Reactor& reactor_;
  std::vector<uint8_t> data_;
};

class Qcow2StorageIo : public ::testing::Test {
 protected:
  void SetUp() override {
    if (system("qemu-img --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "qemu-img is not installed";
    const char* tmp = getenv("TMPDIR");
    dir_ = std::string(tmp && *tmp ? tmp : "/tmp") + "/ioband-q2io-XXXXXX";
    ASSERT_NE(mkdtemp(dir_.data()), nullptr);
    const std::string base = dir_ + "/base.raw";
    const int fd = open(base.c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> bytes(4 << 20);
    std::mt19937 rng(3);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    ASSERT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    close(fd);
    const std::string create = "qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.raw -F raw " + dir_ +
                               "/top.qcow2 4M";
    ASSERT_EQ(system(("cd " + dir_ + " && " + create).c_str()), 0);
    open_top();
  }
  void TearDown() override {
    backend_.reset();
    if (!dir_.empty() && dir_.back() != 'X') system(("rm -rf " + dir_).c_str());
  }
  void open_top() {
    backend_.reset();
    std::string error;
    ImageOptions options;
    options.path = dir_ + "/top.qcow2";
    backend_ = open_image_backend(options, error);
    ASSERT_NE(backend_, nullptr) << error;
  }
  // One op, run to its end; what it reported.
  IoOp::DeviceIo run(Op kind, uint64_t at, uint32_t len) {
    Reactor reactor(64);
    Op1 op(kind, at, len, reactor);
    // Submitted from inside the loop: on a memory file system the file's
    // operations complete through the reactor's deferred queue, which
    // run() drains after each turn, not before its first wait.
    reactor.defer_until_idle([&] { backend_->submit(reactor, op); });
    reactor.run();
    EXPECT_EQ(op.result, kind == Op::kRead || kind == Op::kWrite ? static_cast<int32_t>(len) : 0);
    EXPECT_TRUE(op.storage_io.set);
    return op.storage_io;
  }

  std::string dir_;
  std::unique_ptr<Backend> backend_;
};

TEST_F(Qcow2StorageIo, AllocatingWritesCostTheirCopyOnWriteAndAWholeCluster) {
  // 4 KiB into the middle of an unallocated cluster: what it does not
  // write is read from the base, the whole cluster is written. On memory
  // its head and tail (60 KiB, two reads); on a device one read of the
  // cluster (one operation costs it less than two). Being the first
  // allocation since the open, it also reads the refcount block, looking
  // for clusters freed before the open (there are none).
  IoOp::DeviceIo io = run(Op::kWrite, kCluster + 8192, 4096);
  if (backend_->traits().memory_speed) {
    EXPECT_EQ(io.reads, 2u + 1u);
    EXPECT_EQ(io.read_bytes, kCluster - 4096u + kCluster);
  } else {
    EXPECT_EQ(io.reads, 1u + 1u);
    EXPECT_EQ(io.read_bytes, kCluster + kCluster);
  }
  // Its head only (the write reaches the end): one read, 60 KiB.
  io = run(Op::kWrite, 2 * kCluster + kCluster - 4096, 4096);
  EXPECT_EQ(io.reads, 1u);
  EXPECT_EQ(io.read_bytes, kCluster - 4096u);
  EXPECT_EQ(io.writes, 1u);
  EXPECT_EQ(io.write_bytes, kCluster);
  // The same cluster again: in place, only itself.
  io = run(Op::kWrite, kCluster + 16384, 4096);
  EXPECT_EQ(io.reads, 0u);
  EXPECT_EQ(io.writes, 1u);
  EXPECT_EQ(io.write_bytes, 4096u);
  // A whole cluster written needs nothing read.
  io = run(Op::kWrite, 3 * kCluster, kCluster);
  EXPECT_EQ(io.reads, 0u);
  EXPECT_EQ(io.write_bytes, kCluster);
  // The FLUSH writes the refcounts, the L2 table and the L1 entry, a sync
  // after each stage.
  io = run(Op::kFlush, 0, 0);
  EXPECT_GE(io.writes, 3u);
  EXPECT_GE(io.syncs, 3u);
  // A flush with nothing new: one sync, as asked.
  io = run(Op::kFlush, 0, 0);
  EXPECT_EQ(io.writes, 0u);
  EXPECT_LE(io.syncs, 1u);
}

TEST_F(Qcow2StorageIo, ReadsCountTheTableTheyLoad) {
  run(Op::kWrite, 0, kCluster);
  run(Op::kFlush, 0, 0);
  open_top();  // an empty cache
  IoOp::DeviceIo io = run(Op::kRead, 4096, 4096);
  EXPECT_EQ(io.reads, 2u);  // the L2 table, then the data
  EXPECT_EQ(io.read_bytes, kCluster + 4096u);
  io = run(Op::kRead, 8192, 4096);
  EXPECT_EQ(io.reads, 1u);
  EXPECT_EQ(io.read_bytes, 4096u);
  // Unallocated here: read from the base, as much as asked.
  io = run(Op::kRead, 2 * kCluster, 4096);
  EXPECT_EQ(io.reads, 1u);
  EXPECT_EQ(io.read_bytes, 4096u);
}

}  // namespace
}  // namespace ioband::io
