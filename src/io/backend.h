#pragma once
// Storage backends. A backend executes IoOps asynchronously on the reactor of
// the caller and reports each through IoOp::finish() with a byte count or a
// negative errno. Backends may wrap one another (the fault backend wraps any).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/reactor.h"

namespace ioband::io {

enum class Op : uint8_t { kRead, kWrite, kFlush, kTrim, kWriteZeroes, kCache };

enum IoFlag : uint32_t {
  kFua = 1u << 0,       // durable before completion
  kNoHole = 1u << 1,    // write zeroes: keep the range allocated
  kFastZero = 1u << 2,  // write zeroes: fail with -ENOTSUP rather than write
  // kRead: the caller can send the data straight from a file. The backend
  // may then leave buffer unfilled and set IoOp::splice_fd instead.
  kSpliceOk = 1u << 3,
  // kRead, kWrite: continues a sequential stream of the caller's reads or
  // writes. A backend that bypasses the page cache may use it for this one:
  // the kernel's readahead then has the next part under way before it is
  // asked for, and its writeback writes the stream in larger runs.
  kSequential = 1u << 4,
};

class Backend;

// One storage operation. The caller owns it (the NBD layer embeds it in its
// request) and must keep it alive until finish() is called.
class IoOp : public Completion {
 public:
  Op op = Op::kRead;
  uint32_t flags = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint8_t* buffer = nullptr;  // kRead: filled; kWrite: consumed
  // kRead with kSpliceOk: -1 if buffer was filled; else the data is
  // [offset, offset + length) of this file, for the caller to sendfile()
  // from (page references, no copy) while it is served.
  int splice_fd = -1;
  // What reached the storage for this op, when a backend reports it (set:
  // qcow2 counts its L2 table loads, copy-on-write reads, whole-cluster
  // writes and a flush's metadata); unset, the op itself did. The
  // scheduler charges the difference (nbd/scheduler.cc). Reset by submit.
  struct DeviceIo {
    uint32_t reads = 0, writes = 0, syncs = 0;
    uint64_t read_bytes = 0, write_bytes = 0;
    bool set = false;
    DeviceIo& operator+=(const DeviceIo& o) noexcept {
      reads += o.reads, writes += o.writes, syncs += o.syncs;
      read_bytes += o.read_bytes, write_bytes += o.write_bytes;
      return *this;
    }
  } storage_io;

  // Called exactly once per submit: result >= 0 on success, -errno on error.
  virtual void finish(int32_t result) noexcept = 0;

  // Backend-private progress state, reset by each submit.
  Backend* handler = nullptr;
  Reactor* reactor = nullptr;
  uint32_t done_bytes = 0;
  uint8_t stage = 0;
  uint8_t* bounce = nullptr;

  void on_complete(int32_t result, uint32_t cqe_flags) noexcept final;

 protected:
  ~IoOp() = default;
};

// One run of a block-status answer, NBD base:allocation flags.
struct Extent {
  uint64_t length;
  uint32_t flags;  // kExtentHole | kExtentZero
};
inline constexpr uint32_t kExtentHole = 1;
inline constexpr uint32_t kExtentZero = 2;

struct BackendTraits {
  bool can_trim = true;
  bool can_fast_zero = true;
  bool rotational = false;
  bool read_only = false;
  // Served at memory speed: an operation never waits for a device, so
  // reading a request later costs it nothing while its reply would wait
  // anyway (see Session: input is not read while replies are held back).
  bool memory_speed = false;
  // Writes shorter than this are done, their buffer read, before submit()
  // returns (memory-speed storage writes them at once): the caller may pass
  // a buffer that is reused right after. 0: no write is.
  uint32_t writes_consumed_below = 0;
  uint32_t preferred_block = 4096;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual uint64_t size() const noexcept = 0;
  virtual BackendTraits traits() const noexcept = 0;
  // Starts op on reactor; completion arrives through op.finish().
  virtual void submit(Reactor& reactor, IoOp& op) noexcept = 0;
  // The reactor delivers the CQEs of ops this backend submitted here.
  virtual void complete(Reactor& reactor, IoOp& op, int32_t result) noexcept = 0;
  // Allocation map of [offset, offset+length), at least one extent on
  // success; may stop early. Returns 0 or -errno. Synchronous: cheap calls only.
  virtual int block_status(uint64_t offset, uint32_t length, std::vector<Extent>& out) noexcept = 0;
  // A human description for logs: "raw /path (O_DIRECT)".
  virtual std::string describe() const = 0;
};

// Factories. On failure they return nullptr and set error to a sentence.
struct RawOptions {
  std::string path;
  uint64_t size = 0;  // 0: the whole file or device
  bool read_only = false;
  bool direct = true;  // try O_DIRECT, fall back to buffered if refused
  bool lock = true;    // against other writers: flock and QEMU's lock bytes (io/file_lock.h)
};
std::unique_ptr<Backend> open_raw_backend(const RawOptions& options, std::string& error);
std::unique_ptr<Backend> open_memory_backend(uint64_t size, std::string& error);

struct FaultOptions {
  int error_number = 0;       // 0: no errors
  double rate = 1.0;          // probability that an op fails
  uint32_t delay_ms = 0;      // added before every op
  // Only ops overlapping [offset, offset + length) fail or wait, as on a
  // disk with bad sectors there (FLUSH, which has no range, never does);
  // length 0: every op.
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t seed = 0x10bad;
};
std::unique_ptr<Backend> wrap_fault_backend(std::unique_ptr<Backend> inner, const FaultOptions& options);

}  // namespace ioband::io
