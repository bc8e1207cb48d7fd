// BackendTraits::writes_consumed_below is a promise: a write shorter than it
// has read its buffer before submit() returns, so the NBD session may hand
// it the payload where it arrived (its staging buffer) and reuse that memory
// at once. Each backend that makes the promise is checked by scribbling
// over the buffer right after submit() and reading the storage back; those
// that cannot keep it (a file opened O_DIRECT, a fault backend that delays)
// must not make it.

#include <fcntl.h>
#include <sys/mman.h>
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

constexpr uint64_t kSize = 4u << 20;

class WriteOp final : public IoOp {
 public:
  void finish(int32_t r) noexcept override {
    ++finished;
    result = r;
    if (--*pending == 0) owner->stop();
  }
  Reactor* owner = nullptr;
  int finished = 0;
  int32_t result = 0;
  int* pending = nullptr;
};

// Writes of several sizes below the backend's promise, each from one
// shared buffer that is overwritten as soon as submit() returns; then every
// range must hold the bytes the buffer had at submit().
void check_promise(Backend& backend) {
  const uint32_t below = backend.traits().writes_consumed_below;
  ASSERT_GT(below, 0u);
  const std::vector<uint32_t> sizes = {512, 4096, 4096 + 512, 65536, 1u << 17};
  std::vector<uint8_t> expected(kSize, 0);
  alignas(4096) static uint8_t shared[1u << 17];
  std::mt19937 rng(17);
  Reactor reactor(64);
  int pending = 0;
  std::vector<std::unique_ptr<WriteOp>> ops;
  uint64_t at = 0;
  // Submitted from the reactor's own thread, as the NBD layer does.
  reactor.post([&] {
    for (uint32_t size : sizes) {
      if (size >= below) continue;
      for (uint32_t i = 0; i < size; ++i) shared[i] = static_cast<uint8_t>(rng());
      std::memcpy(expected.data() + at, shared, size);
      auto op = std::make_unique<WriteOp>();
      op->op = Op::kWrite;
      op->offset = at;
      op->length = size;
      op->buffer = shared;
      op->pending = &pending;
      op->owner = &reactor;
      ++pending;
      backend.submit(reactor, *op);
      std::memset(shared, 0xEE, size);  // the caller reuses its buffer at once
      ops.push_back(std::move(op));
      at += size + 4096;
    }
  });
  reactor.run();
  ASSERT_FALSE(ops.empty());
  for (auto& op : ops) {
    EXPECT_EQ(op->finished, 1);
    EXPECT_EQ(op->result, static_cast<int32_t>(op->length)) << "write at " << op->offset;
  }
  // Read back through the backend itself.
  std::vector<uint8_t> got(at);
  Reactor again(64);
  WriteOp read;
  read.op = Op::kRead;
  read.offset = 0;
  read.length = static_cast<uint32_t>(at);
  read.buffer = got.data();
  read.pending = &pending;
  read.owner = &again;
  pending = 1;
  again.post([&] { backend.submit(again, read); });
  again.run();
  ASSERT_EQ(read.result, static_cast<int32_t>(at));
  for (auto& op : ops) {
    EXPECT_EQ(std::memcmp(got.data() + op->offset, expected.data() + op->offset, op->length), 0)
        << "the write of " << op->length << " bytes at " << op->offset << " took the buffer after submit()";
  }
}

TEST(WriteConsumed, MemoryBackendKeepsItsPromise) {
  std::string error;
  auto backend = open_memory_backend(kSize, error);
  ASSERT_NE(backend, nullptr) << error;
  check_promise(*backend);
}

// A memfd lives in the kernel's internal tmpfs: the raw backend sees a
// memory file system, as it would for an image in /dev/shm.
TEST(WriteConsumed, RawBackendOnMemoryFileSystemKeepsItsPromise) {
  const int fd = memfd_create("ioband-consumed", 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kSize), 0);
  std::string error;
  auto backend = open_raw_backend(RawOptions{"/proc/self/fd/" + std::to_string(fd)}, error);
  ASSERT_NE(backend, nullptr) << error;
  EXPECT_TRUE(backend->traits().memory_speed);
  check_promise(*backend);
  backend.reset();
  close(fd);
}

TEST(WriteConsumed, FaultBackendKeepsItUnlessItDelays) {
  std::string error;
  auto plain = wrap_fault_backend(open_memory_backend(kSize, error), FaultOptions{.error_number = 0});
  ASSERT_NE(plain, nullptr);
  check_promise(*plain);
  auto delayed = wrap_fault_backend(open_memory_backend(kSize, error), FaultOptions{.error_number = 0, .delay_ms = 1});
  EXPECT_EQ(delayed->traits().writes_consumed_below, 0u);
}

TEST(WriteConsumed, DirectFileMakesNoPromise) {
  const char* tmp = getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/ioband-consumed-XXXXXX";
  const int fd = mkstemp(templ.data());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kSize), 0);
  close(fd);
  std::string error;
  auto backend = open_raw_backend(RawOptions{templ}, error);
  ASSERT_NE(backend, nullptr) << error;
  if (backend->traits().memory_speed) {
    unlink(templ.c_str());
    GTEST_SKIP() << "TMPDIR is a memory file system";
  }
  EXPECT_EQ(backend->traits().writes_consumed_below, 0u) << backend->describe();
  unlink(templ.c_str());
}

}  // namespace
}  // namespace ioband::io
