// The memory backend: a RAM disk. Its memory is a memfd (shared memory,
// mapped): pages never written stay unallocated, so block status reports
// them as a hole. Each op runs at submit and completes after the current
// batch of completions, so callers see the same asynchronous contract as
// with real storage.
//
// Reads of kSpliceMin and more whose caller can send from a file are not
// copied: the reply's data goes out from the memfd with sendfile(), as the
// raw backend does for files in memory. A burst of large reads (32 MiB
// each) otherwise copied everything on the reactor thread, into fresh
// buffers whose every page faulted, and stalled the other clients of the
// reactor (docs/hostile.md). As with a file, the data is taken when it is
// sent: a write to the range that arrives before the reply has gone out
// may show in it, which NBD allows for requests in flight together.

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "io/backend.h"

namespace ioband::io {
namespace {

class MemoryBackend final : public Backend {
 public:
  MemoryBackend(int fd, uint8_t* base, uint64_t size, uint64_t mapped)
      : fd_(fd), base_(base), size_(size), mapped_(mapped) {}
  ~MemoryBackend() override {
    munmap(base_, mapped_);
    close(fd_);
  }

  uint64_t size() const noexcept override { return size_; }
  BackendTraits traits() const noexcept override {
    BackendTraits t;
    t.memory_speed = true;
    t.writes_consumed_below = UINT32_MAX;
    return t;
  }
  std::string describe() const override { return "memory (" + std::to_string(size_) + " bytes)"; }

  void submit(Reactor& reactor, IoOp& op) noexcept override {
    op.handler = this;
    op.reactor = &reactor;
    op.done_bytes = 0;
    op.stage = 0;
    op.splice_fd = -1;
    if (op.op == Op::kRead && (op.flags & kSpliceOk) && op.length >= kSpliceMin) {
      op.splice_fd = fd_;
      reactor.defer([&op] { op.finish(static_cast<int32_t>(op.length)); });
      return;
    }
    const int32_t result = execute(op);
    reactor.defer([&op, result] { op.finish(result); });
  }

  void complete(Reactor&, IoOp&, int32_t) noexcept override {}

  int block_status(uint64_t offset, uint32_t length, std::vector<Extent>& out) noexcept override {
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const uint64_t end = offset + length;
    uint64_t pos = offset;
    while (pos < end && out.size() < 1024) {
      const uint64_t page_start = pos & ~(page - 1);
      unsigned char resident = 0;
      if (mincore(base_ + page_start, page, &resident) != 0) return -errno;
      const uint32_t flags = (resident & 1) ? 0 : (kExtentHole | kExtentZero);
      const uint64_t run_end = std::min(end, page_start + page);
      if (!out.empty() && out.back().flags == flags) {
        out.back().length += run_end - pos;
      } else {
        out.push_back({run_end - pos, flags});
      }
      pos = run_end;
    }
    return 0;
  }

 private:
  int32_t execute(IoOp& op) noexcept {
    switch (op.op) {
      case Op::kRead:
        std::memcpy(op.buffer, base_ + op.offset, op.length);
        return static_cast<int32_t>(op.length);
      case Op::kWrite:
        std::memcpy(base_ + op.offset, op.buffer, op.length);
        return static_cast<int32_t>(op.length);
      case Op::kTrim:
      case Op::kWriteZeroes:
        zero(op.offset, op.length, !(op.flags & kNoHole));
        return 0;
      case Op::kFlush:
      case Op::kCache:
        return 0;
    }
    return -EINVAL;
  }

  // Smaller reads are copied: one sendmsg then carries many replies, where
  // each sendfile() is a system call of its own.
  static constexpr uint32_t kSpliceMin = 64u << 10;

  // Whole pages are given back to the kernel (they read as zeroes and show
  // as holes) unless the caller asked to keep them allocated.
  void zero(uint64_t offset, uint64_t length, bool may_punch) noexcept {
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    uint64_t first = (offset + page - 1) & ~(page - 1);
    uint64_t last = (offset + length) & ~(page - 1);
    if (!may_punch || first >= last) {
      std::memset(base_ + offset, 0, length);
      return;
    }
    std::memset(base_ + offset, 0, first - offset);
    if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(first),
                  static_cast<off_t>(last - first)) != 0) {
      std::memset(base_ + first, 0, last - first);
    }
    std::memset(base_ + last, 0, offset + length - last);
  }

  int fd_;
  uint8_t* base_;
  uint64_t size_;
  uint64_t mapped_;
};

}  // namespace

std::unique_ptr<Backend> open_memory_backend(uint64_t size, std::string& error) {
  if (size == 0) {
    error = "a memory export needs size=BYTES";
    return nullptr;
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t mapped = (size + page - 1) & ~(page - 1);
  const int fd = memfd_create("ioband-memory", MFD_CLOEXEC);
  if (fd < 0) {
    error = std::string("memfd_create: ") + std::strerror(errno);
    return nullptr;
  }
  if (ftruncate(fd, static_cast<off_t>(mapped)) != 0) {
    error = "cannot size " + std::to_string(size) + " bytes of memory: " + std::strerror(errno);
    close(fd);
    return nullptr;
  }
  void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) {
    error = "cannot map " + std::to_string(size) + " bytes of memory: " + std::strerror(errno);
    close(fd);
    return nullptr;
  }
  return std::make_unique<MemoryBackend>(fd, static_cast<uint8_t*>(base), size, mapped);
}

}  // namespace ioband::io
