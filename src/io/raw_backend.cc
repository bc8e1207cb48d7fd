// The raw backend: a regular file or a block device, O_DIRECT where the
// storage allows it. Aligned reads and writes of whole aligned pages go
// straight to the ring with the caller's buffer; unaligned reads go through
// an aligned bounce buffer, and other writes through a second, buffered
// descriptor of the same file (see whole_pages; and claim_pages for writes
// in flight together on the same pages)
// (the kernel keeps page cache and direct I/O coherent: a direct read flushes
// dirty pages of its range first, a direct write invalidates them). A
// read-modify-write bounce for writes would instead need a lock on every
// block shared by two concurrent unaligned writes.
//
// Files on memory file systems (tmpfs, ramfs) are served with plain
// synchronous calls on the reactor thread: they never wait for a device, and
// io_uring cannot do them without blocking (tmpfs refuses RWF_NOWAIT), so it
// would hand each one to a worker thread, two context switches a request.
// Small reads of such a file without holes are copied from a mapping of it
// instead (mapped_file.h), without the system call and page-cache lookup
// of a pread: see read_mapped.
// Large requests are the exception: there the copy dominates, and the ring's
// worker threads copy on other cores while the reactor goes on. Large reads
// whose caller can send from a file (kSpliceOk) are not copied at all: the
// caller sendfile()s the range, which hands the socket references to the
// page-cache pages (AF_UNIX takes spliced pages since Linux 6.5), so the
// client's copy out of the socket is the only one.
//
// Sequential reads (io::kSequential) on O_DIRECT storage go through the
// page cache: there the kernel's readahead has the device read the next
// part of the stream while the client is still asking for this one, which
// direct I/O, reading only what was asked, cannot do (a disk's sequential
// throughput grows with the bytes in flight). Large ones are read by the
// ring's worker threads (IOSQE_ASYNC), so the copies out of the page cache
// run on other cores. The stream drops what it has consumed behind it
// (POSIX_FADV_DONTNEED), so it does not fill the page cache with the image.
// Large sequential writes (128 KiB or more, no FUA) go through the page
// cache the same way and are written back behind the stream (write_behind):
// the kernel then writes the stream in larger runs, with more of it in
// flight, than the client's requests as they come. Small ones stay direct
// (through the page cache, 4 KiB sequential writes at QD32 were 15 % slower
// and took 50 % more CPU), unless they are not whole pages: those go through
// the page cache in any case, and a stream of them is written back behind
// itself too, or it would stay in the cache.

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "io/backend.h"
#include "io/file_lock.h"
#include "io/mapped_file.h"

namespace ioband::io {

void IoOp::on_complete(int32_t result, uint32_t) noexcept { handler->complete(*reactor, *this, result); }

namespace {

enum Stage : uint8_t {
  kStageMain = 0,
  kStageZeroRange,   // punch-hole refused: retrying as zero-range
  kStageZeroWrite,   // no fallocate: writing zero buffers
  kStageFuaSync,     // the data is down, now fdatasync for FUA
  kStageCached,      // a sequential read through the page cache
  kStageBehind,      // a sequential write into the page cache
  kStageBehindWait,  // ... waiting for the stream's writeback kDropLag behind
};

constexpr uint32_t kZeroChunk = 1u << 20;
constexpr uint32_t kInlineLimit = 128u << 10;
// From here a read is worth a sendfile of its own rather than a copy into
// the reply; below, one pread and one sendmsg for many replies cost less.
constexpr uint32_t kSpliceMin = 64u << 10;
constexpr uint64_t kLargestFolio = 2u << 20;
constexpr uint64_t kDropLag = 8u << 20;
// Reads through the mapping between two looks for holes (see read_mapped).
constexpr uint32_t kHoleCheck = 1024;

class RawBackend final : public Backend {
 public:
  RawBackend(int fd, int buffered_fd, bool direct, bool block_device, bool in_memory, bool always_async,
             uint64_t size, uint32_t align, const RawOptions& options, std::unique_ptr<MappedFile> mapped,
             bool map_reads)
      : mapped_(std::move(mapped)),
        map_reads_(map_reads),
        fd_(fd),
        buffered_fd_(buffered_fd),
        direct_(direct),
        block_device_(block_device),
        in_memory_(in_memory),
        always_async_(always_async),
        size_(size),
        align_(align),
        options_(options) {}
  ~RawBackend() override {
    close(fd_);
    if (buffered_fd_ != fd_) close(buffered_fd_);
    free(zeroes_);
  }

  // The file's blocks cover its size: a read through the mapping will not
  // allocate (see read_mapped).
  static bool without_holes(const struct stat& st) noexcept {
    const uint64_t pages = (static_cast<uint64_t>(st.st_size) + page_size() - 1) / page_size();
    return static_cast<uint64_t>(st.st_blocks) * 512 >= pages * page_size();
  }

  uint64_t size() const noexcept override { return size_; }
  BackendTraits traits() const noexcept override {
    BackendTraits t;
    t.read_only = options_.read_only;
    t.can_trim = true;
    t.can_fast_zero = true;
    t.memory_speed = in_memory_;
    t.writes_consumed_below = in_memory_ ? kInlineLimit : 0;  // see submit()
    t.preferred_block = align_ > 4096 ? align_ : 4096;
    return t;
  }
  std::string describe() const override {
    return std::string(block_device_ ? "block device " : "file ") + options_.path +
           (direct_ ? " (O_DIRECT)" : in_memory_ ? " (memory file system, synchronous)" : " (buffered)");
  }

  void submit(Reactor& reactor, IoOp& op) noexcept override {
    op.handler = this;
    op.reactor = &reactor;
    op.done_bytes = 0;
    op.stage = kStageMain;
    op.bounce = nullptr;
    op.splice_fd = -1;
    // Splicing needs a buffered descriptor: from an O_DIRECT one (tmpfs
    // takes O_DIRECT since Linux 6.6) the kernel copies into fresh pages.
    // The reply promises the data before it is read, so a file that shrank
    // under the export is read the ordinary way: its short read is answered
    // EIO, where a short sendfile could only close the connection.
    if (in_memory_ && op.op == Op::kRead && (op.flags & kSpliceOk) && op.length >= kSpliceMin &&
        file_covers(op.offset + op.length)) {
      op.splice_fd = buffered_fd_;
      reactor.defer([&op] { op.finish(static_cast<int32_t>(op.length)); });
      return;
    }
    if (op.op == Op::kTrim || op.op == Op::kWriteZeroes) map_reads_ = false;  // holes: see read_mapped
    if (in_memory_ && op.length < kInlineLimit) {
      if (op.op == Op::kRead && mapped_ && ++reads_since_hole_check_ >= kHoleCheck) check_holes();
      // A format's file (qcow2) grows past what was mapped at open: there, pread.
      if (op.op == Op::kRead && map_reads_ && op.offset + op.length <= mapped_->length()) {
        return read_mapped(reactor, op);
      }
      const int32_t result = execute_now(op);
      reactor.defer([&op, result] { op.finish(result); });
      return;
    }
    start(op);
  }

  void complete(Reactor& reactor, IoOp& op, int32_t result) noexcept override {
    reactor.storage_end();
    switch (op.op) {
      case Op::kRead: return read_done(op, result);
      case Op::kWrite: return write_done(op, result);
      case Op::kWriteZeroes:
        map_reads_ = false;  // as for a TRIM
        return zeroes_done(op, result);
      case Op::kTrim:
        map_reads_ = false;  // a recheck may have come between its submission and now
        if (op.stage == kStageFuaSync) return op.finish(result < 0 ? result : 0);
        // Trimming is advisory: storage that cannot punch holes just keeps the data.
        if (result == -EOPNOTSUPP || result == -ENOTTY) result = 0;
        return finish_or_sync(op, result);
      case Op::kFlush:
      case Op::kCache:
        return op.finish(result < 0 ? result : 0);
    }
  }

  int block_status(uint64_t offset, uint32_t length, std::vector<Extent>& out) noexcept override {
    const uint64_t end = offset + length;
    uint64_t pos = offset;
    while (pos < end && out.size() < 1024) {
      off_t data = lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) {  // no data after pos: a hole to the end
          out.push_back({end - pos, kExtentHole | kExtentZero});
          return 0;
        }
        if (out.empty()) out.push_back({end - pos, 0});  // no sparse support: all data
        return 0;
      }
      if (static_cast<uint64_t>(data) > pos) {
        uint64_t hole_end = std::min<uint64_t>(static_cast<uint64_t>(data), end);
        out.push_back({hole_end - pos, kExtentHole | kExtentZero});
        pos = hole_end;
        continue;
      }
      off_t hole = lseek(fd_, static_cast<off_t>(pos), SEEK_HOLE);
      uint64_t data_end = hole < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(hole), end);
      if (data_end <= pos) data_end = end;
      out.push_back({data_end - pos, 0});
      pos = data_end;
    }
    return 0;
  }

 private:
  // A small read of a file in memory, copied from the mapping. A file cut
  // under the mapping faults (SIGBUS, caught by MappedFile::copy) only in
  // pages wholly past its new end; the rest of the page holding the end
  // reads as zeros, where pread gives a short read and the client EIO. So
  // after the copy MappedFile::copy touches the mapping's last page: when
  // that faults too (or the range reaches into it) an fstat says whether
  // the file still holds the range. A copy that ends before that check
  // describes the file at some moment before it, as a pread would.
  // Reading a hole through the mapping would allocate its page on tmpfs:
  // a TRIM or zeroing of ours stops mapped reads, and every kHoleCheck
  // reads an fstat says whether the file has holes now (its blocks cover
  // less than its size), for holes made by others and to start again once
  // ours are filled.
  void read_mapped(Reactor& reactor, IoOp& op) noexcept {
    int32_t result = static_cast<int32_t>(op.length);
    switch (mapped_->copy(op.buffer, op.offset, op.length)) {
      case MappedFile::Copy::whole: break;
      case MappedFile::Copy::at_end:
        if (!file_covers(op.offset + op.length)) result = -EIO;
        break;
      case MappedFile::Copy::failed: result = -EIO; break;
    }
    reactor.defer([&op, result] { op.finish(result); });
  }

  void check_holes() noexcept {
    reads_since_hole_check_ = 0;
    struct stat st{};
    map_reads_ = mapped_ && fstat(buffered_fd_, &st) == 0 && without_holes(st);
  }

  bool aligned(const IoOp& op) const noexcept { return aligned(op.offset, op.length, op.buffer); }
  bool file_covers(uint64_t end) const noexcept {
    struct stat st{};
    return fstat(buffered_fd_, &st) == 0 && static_cast<uint64_t>(st.st_size) >= end;
  }
  bool aligned(uint64_t offset, uint64_t length, const void* buffer) const noexcept {
    const uint64_t mask = align_ - 1;
    return (offset & mask) == 0 && (length & mask) == 0 && (reinterpret_cast<uintptr_t>(buffer) & mask) == 0;
  }

  // The descriptor a write goes through: direct only for whole pages that
  // the storage's alignment allows (see whole_pages).
  int write_fd(uint64_t offset, uint64_t length, const void* buffer) const noexcept {
    return aligned(offset, length, buffer) && whole_pages(offset, length) ? fd_ : buffered_fd_;
  }

  // A request of a sequential stream on O_DIRECT storage: it may go through
  // the page cache (reads always, writes when large; see the top).
  bool stream_through_cache(const IoOp& op) const noexcept {
    return direct_ && !in_memory_ && (op.flags & kSequential);
  }

  // Every operation this backend puts on the ring is counted by the reactor
  // until it completes (Reactor::storage_begin).
  static io_uring_sqe* ring(IoOp& op) noexcept {
    op.reactor->storage_begin();
    return op.reactor->prepare(&op);
  }

  // An operation of op, prepared with prep(sqe, args...). On FUSE each one
  // goes to the ring's worker threads (IOSQE_ASYNC): tried inline, a FUSE
  // read or write blocks the submitting thread, the reactor, once the file
  // system has its max_background (12) requests waiting, so a stalled FUSE
  // server stalled every device of the reactor (test_stall.py).
  template <typename Prep, typename... Args>
  io_uring_sqe* queue(IoOp& op, Prep prep, Args... args) noexcept {
    io_uring_sqe* sqe = ring(op);
    prep(sqe, args...);
    if (always_async_) sqe->flags |= IOSQE_ASYNC;
    return sqe;
  }

  int32_t execute_now(IoOp& op) noexcept {
    ssize_t n = 0;
    uint32_t done = 0;
    switch (op.op) {
      case Op::kRead:
        while (done < op.length) {
          n = pread(fd_, op.buffer + done, op.length - done, static_cast<off_t>(op.offset + done));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return n < 0 ? -errno : -EIO;
          done += static_cast<uint32_t>(n);
        }
        return static_cast<int32_t>(done);
      case Op::kWrite:
        while (done < op.length) {
          n = pwrite(fd_, op.buffer + done, op.length - done, static_cast<off_t>(op.offset + done));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return n < 0 ? -errno : -EIO;
          done += static_cast<uint32_t>(n);
        }
        return static_cast<int32_t>(done);
      case Op::kFlush:
        return fdatasync(fd_) == 0 ? 0 : -errno;
      case Op::kTrim:
        return fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(op.offset),
                         static_cast<off_t>(op.length)) == 0 || errno == EOPNOTSUPP
                   ? 0
                   : -errno;
      case Op::kWriteZeroes: {
        int mode = (op.flags & kNoHole) ? FALLOC_FL_ZERO_RANGE : (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
        if (fallocate(fd_, mode, static_cast<off_t>(op.offset), static_cast<off_t>(op.length)) == 0) return 0;
        if (errno != EOPNOTSUPP) return -errno;
        if (op.flags & kFastZero) return -ENOTSUP;
        std::vector<uint8_t> zeroes(std::min(op.length, kZeroChunk));
        while (done < op.length) {
          n = pwrite(fd_, zeroes.data(), std::min<size_t>(zeroes.size(), op.length - done),
                     static_cast<off_t>(op.offset + done));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return n < 0 ? -errno : -EIO;
          done += static_cast<uint32_t>(n);
        }
        return 0;
      }
      case Op::kCache:
        return 0;
    }
    return -EINVAL;
  }

  void start(IoOp& op) noexcept {
    switch (op.op) {
      case Op::kRead: {
        if (stream_through_cache(op)) {
          op.stage = kStageCached;
          io_uring_sqe* sqe = queue(op, io_uring_prep_read, buffered_fd_, op.buffer, op.length, op.offset);
          if (op.length >= kInlineLimit) sqe->flags |= IOSQE_ASYNC;
          return;
        }
        if (!direct_ || aligned(op)) {
          queue(op, io_uring_prep_read, fd_, op.buffer, op.length, op.offset);
          return;
        }
        const uint64_t first = op.offset & ~uint64_t{align_ - 1};
        const uint64_t last = (op.offset + op.length + align_ - 1) & ~uint64_t{align_ - 1};
        void* bounce = nullptr;
        if (posix_memalign(&bounce, align_, last - first) != 0) return op.finish(-ENOMEM);
        op.bounce = static_cast<uint8_t*>(bounce);
        queue(op, io_uring_prep_read, fd_, op.bounce, static_cast<unsigned>(last - first), first);
        return;
      }
      case Op::kWrite: {
        int fd = write_fd(op.offset, op.length, op.buffer);
        // Large ones, and those the page cache takes anyway (not whole pages).
        const bool behind =
            stream_through_cache(op) && !(op.flags & kFua) && (op.length >= kInlineLimit || fd == buffered_fd_);
        bool direct = !behind && fd == fd_ && direct_;
        if (!claim_pages(op, direct)) return;  // parked until a direct write on its pages ends
        if (!direct) fd = buffered_fd_;
        if (behind) {
          op.stage = kStageBehind;
          io_uring_sqe* sqe = queue(op, io_uring_prep_write, buffered_fd_, op.buffer, op.length, op.offset);
          if (op.length >= kInlineLimit) sqe->flags |= IOSQE_ASYNC;
          return;
        }
        io_uring_sqe* sqe = queue(op, io_uring_prep_write, fd, op.buffer, op.length, op.offset);
        if (op.flags & kFua) sqe->rw_flags = RWF_DSYNC;
        return;
      }
      case Op::kFlush:
        queue(op, io_uring_prep_fsync, fd_, IORING_FSYNC_DATASYNC);
        return;
      case Op::kTrim:
        queue(op, io_uring_prep_fallocate, fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, op.offset, op.length);
        return;
      case Op::kWriteZeroes: {
        int mode = (op.flags & kNoHole) ? FALLOC_FL_ZERO_RANGE : (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
        if (op.flags & kNoHole) op.stage = kStageZeroRange;
        queue(op, io_uring_prep_fallocate, fd_, mode, op.offset, op.length);
        return;
      }
      case Op::kCache:
        queue(op, io_uring_prep_fadvise, fd_, op.offset, op.length, POSIX_FADV_WILLNEED);
        return;
    }
  }

  void read_done(IoOp& op, int32_t result) noexcept {
    if (result == -EAGAIN || result == -EINTR) return start_remaining_read(op);
    if (op.bounce) {
      const uint64_t first = op.offset & ~uint64_t{align_ - 1};
      const uint64_t need = op.offset + op.length - first;
      int32_t rc = result;
      if (rc >= 0 && static_cast<uint64_t>(rc) < need) rc = -EIO;  // short read past EOF
      if (rc >= 0) {
        std::memcpy(op.buffer, op.bounce + (op.offset - first), op.length);
        rc = static_cast<int32_t>(op.length);
      }
      free(op.bounce);
      op.bounce = nullptr;
      return op.finish(rc);
    }
    if (result < 0) return op.finish(result);
    if (result == 0) return op.finish(-EIO);  // the file shrank under us
    op.done_bytes += static_cast<uint32_t>(result);
    if (op.done_bytes < op.length) return start_remaining_read(op);
    if (op.stage == kStageCached) drop_behind(op);
    op.finish(static_cast<int32_t>(op.length));
  }

  // A sequential stream's whole 2 MiB blocks kDropLag behind op: requests
  // of the stream still in flight (they may finish out of order) are not in
  // them. The page cache holds a file in folios of up to 2 MiB on x86-64
  // (readahead makes them large) and POSIX_FADV_DONTNEED drops only folios
  // wholly inside its range, hence whole blocks; those of a stream's
  // requests tile the stream. Empty (first == last) for most small requests.
  static void behind(const IoOp& op, uint64_t& first, uint64_t& last) noexcept {
    first = last = 0;
    if (op.offset < kDropLag) return;
    first = (op.offset - kDropLag) & ~(kLargestFolio - 1);
    last = (op.offset + op.length - kDropLag) & ~(kLargestFolio - 1);
  }

  // Drops those blocks from the page cache: what stays of a stream is its
  // last kDropLag and, for reads, the readahead ahead of it.
  void drop_behind(const IoOp& op) noexcept {
    uint64_t first, last;
    behind(op, first, last);
    if (last > first) {
      posix_fadvise(buffered_fd_, static_cast<off_t>(first), static_cast<off_t>(last - first), POSIX_FADV_DONTNEED);
    }
  }

  void start_remaining_read(IoOp& op) noexcept {
    if (op.bounce) {  // retry the whole bounce read
      free(op.bounce);
      op.bounce = nullptr;
      return start(op);
    }
    // A short read leaves the rest unaligned in general: finish it buffered.
    int fd = op.done_bytes == 0 && op.stage != kStageCached ? fd_ : buffered_fd_;
    queue(op, io_uring_prep_read, fd, op.buffer + op.done_bytes, op.length - op.done_bytes,
          op.offset + op.done_bytes);
  }

  void write_done(IoOp& op, int32_t result) noexcept {
    if (op.stage == kStageBehindWait) {
      drop_behind(op);
      return write_end(op, result < 0 ? result : static_cast<int32_t>(op.length));
    }
    if (result == -EAGAIN || result == -EINTR) result = 0;
    if (result < 0) return write_end(op, result);
    op.done_bytes += static_cast<uint32_t>(result);
    if (op.done_bytes < op.length) {
      io_uring_sqe* sqe = queue(op, io_uring_prep_write, buffered_fd_, op.buffer + op.done_bytes,
                                op.length - op.done_bytes, op.offset + op.done_bytes);
      if (op.flags & kFua) sqe->rw_flags = RWF_DSYNC;
      return;
    }
    if (op.stage == kStageBehind) return write_behind(op);
    write_end(op, static_cast<int32_t>(op.length));
  }

  // A direct write and a buffered one must never be in flight on the same
  // page at once, even when the client sends overlapping writes together
  // (its right: only the overlapped bytes are then undefined). The direct
  // write's end cannot invalidate the page the buffered one dirtied
  // meanwhile: the kernel reports EIO at the next fdatasync, so a FLUSH
  // failed, and that page's writeback later puts stale bytes over the
  // direct write beyond the overlap. So a direct write that meets a
  // buffered one goes buffered too, and a buffered one that meets a direct
  // one waits until it ends (QEMU likewise serialises overlapping requests
  // that are not aligned). Returns false when op waits; may clear direct.
  bool claim_pages(IoOp& op, bool& direct) noexcept {
    if (!direct_ || in_memory_) return true;  // one kind of write only
    const uint64_t first = op.offset / page_size(), end = (op.offset + op.length + page_size() - 1) / page_size();
    bool meets_direct = false, meets_buffered = false;
    for (const InFlightWrite& w : writes_) {
      if (w.first_page < end && first < w.end_page) (w.direct ? meets_direct : meets_buffered) = true;
    }
    if (meets_buffered) direct = false;
    if (!direct && meets_direct) {
      parked_.push_back(&op);
      return false;
    }
    writes_.push_back({&op, first, end, direct});
    return true;
  }

  // The write's pages are free: writes parked on them start.
  void write_end(IoOp& op, int32_t result) noexcept {
    for (size_t i = 0; i < writes_.size(); ++i) {
      if (writes_[i].op == &op) {
        writes_[i] = writes_.back();
        writes_.pop_back();
        std::vector<IoOp*> parked;
        parked.swap(parked_);
        for (IoOp* p : parked) start(*p);  // parks again if it still must wait
        break;
      }
    }
    op.finish(result);
  }

  static uint64_t page_size() noexcept {
    static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    return page;
  }

  // Writes go direct or through the page cache by whole pages: a direct
  // write next to a buffered one in flight in the same page cannot
  // invalidate that page, whose writeback would later put stale bytes over
  // the direct write (the kernel warns "Page cache invalidation failure on
  // direct I/O" and reports EIO). The storage's direct I/O alignment (512
  // bytes on ext4) is finer than a page, so it alone does not prevent that:
  // a stream of 66048-byte writes at 512-byte offsets, its first write
  // direct and the rest buffered, hit it in a test.
  static bool whole_pages(uint64_t offset, uint64_t length) noexcept {
    return offset % page_size() == 0 && length % page_size() == 0;
  }

  // A sequential write is in the page cache. When it completes a 2 MiB
  // block of the stream, the block's writeback starts (the ring's worker
  // threads run sync_file_range; nothing waits for it). The write is
  // acknowledged once the stream's blocks kDropLag behind are on the device,
  // and those are dropped from the cache: the stream runs at the device's
  // pace, with about kDropLag of it in the page cache. A writeback error
  // there fails this write, and the next FLUSH (fdatasync) reports it too.
  void write_behind(IoOp& op) noexcept {
    const uint64_t done_to = (op.offset + op.length) & ~(kLargestFolio - 1);
    const uint64_t from = op.offset & ~(kLargestFolio - 1);
    if (done_to > from) {
      io_uring_prep_sync_file_range(op.reactor->prepare(nullptr), buffered_fd_, static_cast<unsigned>(done_to - from),
                                    from, SYNC_FILE_RANGE_WRITE);
    }
    uint64_t first, last;
    behind(op, first, last);
    if (last <= first) return write_end(op, static_cast<int32_t>(op.length));
    op.stage = kStageBehindWait;
    queue(op, io_uring_prep_sync_file_range, buffered_fd_, static_cast<unsigned>(last - first), first,
          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
  }

  void zeroes_done(IoOp& op, int32_t result) noexcept {
    const bool unsupported = result == -EOPNOTSUPP || result == -ENOTTY || result == -EINVAL;
    switch (op.stage) {
      case kStageMain:  // punch hole
        if (!unsupported) return finish_or_sync(op, result);
        op.stage = kStageZeroRange;
        queue(op, io_uring_prep_fallocate, fd_, FALLOC_FL_ZERO_RANGE, op.offset, op.length);
        return;
      case kStageZeroRange:
        if (!unsupported) return finish_or_sync(op, result);
        if (op.flags & kFastZero) return op.finish(-ENOTSUP);
        if (!zeroes_ && posix_memalign(reinterpret_cast<void**>(&zeroes_), 4096, kZeroChunk) == 0) {
          std::memset(zeroes_, 0, kZeroChunk);
        }
        if (!zeroes_) return op.finish(-ENOMEM);
        op.stage = kStageZeroWrite;
        op.done_bytes = 0;
        return write_zero_chunk(op);
      case kStageZeroWrite:
        if (result < 0 && result != -EAGAIN && result != -EINTR) return op.finish(result);
        if (result > 0) op.done_bytes += static_cast<uint32_t>(result);
        if (op.done_bytes < op.length) return write_zero_chunk(op);
        return finish_or_sync(op, 0);
      case kStageFuaSync:
        return op.finish(result < 0 ? result : 0);
    }
  }

  void write_zero_chunk(IoOp& op) noexcept {
    uint32_t n = std::min(op.length - op.done_bytes, kZeroChunk);
    const uint64_t pos = op.offset + op.done_bytes;
    queue(op, io_uring_prep_write, write_fd(pos, n, zeroes_), zeroes_, n, pos);
  }

  // Trim and zero with FUA: the metadata change must be durable too.
  void finish_or_sync(IoOp& op, int32_t result) noexcept {
    if (result < 0 || !(op.flags & kFua)) return op.finish(result < 0 ? result : 0);
    op.stage = kStageFuaSync;
    queue(op, io_uring_prep_fsync, fd_, IORING_FSYNC_DATASYNC);
  }

  // Small reads of a file in memory: see read_mapped.
  std::unique_ptr<MappedFile> mapped_;
  bool map_reads_;
  uint32_t reads_since_hole_check_ = 0;
  int fd_;
  int buffered_fd_;  // fd_ itself unless fd_ is O_DIRECT
  bool direct_;
  bool block_device_;
  bool in_memory_;
  bool always_async_;  // FUSE: see queue()
  uint64_t size_;
  uint32_t align_;
  RawOptions options_;
  uint8_t* zeroes_ = nullptr;
  // Writes on the ring, by pages, and writes waiting for them: claim_pages().
  struct InFlightWrite {
    IoOp* op;
    uint64_t first_page, end_page;
    bool direct;
  };
  std::vector<InFlightWrite> writes_;
  std::vector<IoOp*> parked_;
};

uint32_t direct_io_alignment(int fd, bool block_device) {
  struct statx stx{};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) &&
      stx.stx_dio_offset_align != 0) {
    uint32_t a = std::max(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
    return std::max<uint32_t>(a, 512);
  }
  if (block_device) {
    int logical = 0;
    if (ioctl(fd, BLKSSZGET, &logical) == 0 && logical > 0) return static_cast<uint32_t>(logical);
  }
  return 4096;
}

}  // namespace

std::unique_ptr<Backend> open_raw_backend(const RawOptions& options, std::string& error) {
  const int access = options.read_only ? O_RDONLY : O_RDWR;
  bool direct = options.direct;
  // O_NONBLOCK: a FIFO (or a device that waits for a peer) must not hang
  // the open; it is refused below, and the flag is cleared for the rest.
  int fd = open(options.path.c_str(), access | O_CLOEXEC | O_NONBLOCK | (direct ? O_DIRECT : 0));
  if (fd < 0 && direct && errno == EINVAL) {
    // tmpfs and some FUSE file systems refuse O_DIRECT.
    direct = false;
    fd = open(options.path.c_str(), access | O_CLOEXEC | O_NONBLOCK);
  }
  if (fd < 0) {
    error = options.path + ": " + std::strerror(errno);
    return nullptr;
  }
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    error = options.path + ": " + std::strerror(errno);
    close(fd);
    return nullptr;
  }
  const bool block_device = S_ISBLK(st.st_mode);
  uint64_t real_size = 0;
  if (block_device) {
    if (ioctl(fd, BLKGETSIZE64, &real_size) != 0) {
      error = options.path + ": cannot read the device size: " + std::strerror(errno);
      close(fd);
      return nullptr;
    }
  } else if (S_ISREG(st.st_mode)) {
    real_size = static_cast<uint64_t>(st.st_size);
  } else {
    error = options.path + ": not a regular file or block device";
    close(fd);
    return nullptr;
  }
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    error = options.path + ": " + std::strerror(errno);
    close(fd);
    return nullptr;
  }
  // One writer per image, among iobandd daemons and QEMU's programs.
  if (std::string busy = options.lock ? lock_image(fd, options.path, !options.read_only) : std::string();
      !busy.empty()) {
    error = busy;
    close(fd);
    return nullptr;
  }
  uint64_t size = options.size ? options.size : real_size;
  if (size > real_size) {
    error = options.path + ": is " + std::to_string(real_size) + " bytes, smaller than the export size " +
            std::to_string(size);
    close(fd);
    return nullptr;
  }
  const uint32_t align = direct ? direct_io_alignment(fd, block_device) : 1;
  // Unaligned writes, sequential reads and sendfile() need the page cache.
  int buffered_fd = fd;
  if (direct) {
    buffered_fd = open(options.path.c_str(), access | O_CLOEXEC);
    if (buffered_fd < 0) {
      error = options.path + ": " + std::strerror(errno);
      close(fd);
      return nullptr;
    }
  }
  struct statfs fs{};
  const bool in_memory = !block_device && fstatfs(fd, &fs) == 0 &&
                         (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC || fs.f_type == HUGETLBFS_MAGIC);
  const bool fuse = !block_device && fs.f_type == FUSE_SUPER_MAGIC;
  // hugetlbfs maps only whole huge pages: its files keep pread.
  std::unique_ptr<MappedFile> mapped;
  if (in_memory && fs.f_type != HUGETLBFS_MAGIC) mapped = MappedFile::map(buffered_fd, size);
  const bool map_reads = mapped && RawBackend::without_holes(st);
  return std::make_unique<RawBackend>(fd, buffered_fd, direct, block_device, in_memory, fuse, size, align, options,
                                      std::move(mapped), map_reads);
}

}  // namespace ioband::io
