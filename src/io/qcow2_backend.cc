// The qcow2 backend: a qcow2 image served through a raw backend of its file,
// with its backing chain under it (DESIGN.md: backends stack). The format's
// rules are in qcow2_format.{h,cc}; opening and detection in image.cc.
//
// Reads. A request is cut at cluster boundaries and each piece goes where
// its L2 entry says: to the image file (through the raw backend, so
// O_DIRECT, bounce buffers and the tmpfs path are the raw backend's), to
// the backing image (any Backend, shared by every image on it), to zeroes,
// or through zlib for a compressed cluster. Neighbouring pieces of one kind
// are merged (contiguous host clusters are one read). An L2 table not in
// the cache is read on the ring; requests that need it wait for it.
// block_status, synchronous by its interface, preads a missing table (one
// small metadata read, like the raw backend's lseek(SEEK_DATA)).
//
// Writes. A write into an allocated cluster goes in place. Into any other
// cluster (unallocated, zero, compressed) it takes a new cluster at the end
// of the file, fills it (the bytes it does not write are read first through
// this backend: backing chain, zeroes or the inflated cluster), writes it,
// and only then links it: the L2 entry in memory points to it, so a read
// sees either the old content or the new, never an unwritten cluster. One
// allocation per guest cluster at a time: another write to that cluster
// waits (busy_). Whole clusters trimmed or zeroed only change their L2
// entry (zero flag, or unallocated with no backing file).
//
// Metadata is written back, as QEMU's caches do: links change tables in
// memory (marked dirty, never evicted while dirty), and refcounts are
// counted at the next flush. A flush (FLUSH, FUA, or too many dirty
// tables) runs stages, each made durable (fdatasync) before the next:
//
//   0. count: every cluster taken since the last flush gets refcount 1
//      (new refcount blocks, and a larger refcount table, are taken and
//      counted the same way); frees made durable by an earlier flush are
//      subtracted                               (memory only)
//   1. refcount blocks                          -> sync
//   2. refcount table clusters                  -> sync
//   3. L2 tables, and the header if the refcount table moved -> sync
//   4. L1 entries                               -> sync
//
// so on disk a refcount is durable before any reference to its cluster,
// a refcount block before the table entry naming it, an L2 table before
// the L1 entry naming it, and the data (written before its link) before
// its L2 entry. No link happens while a flush runs (they wait for its
// end), so the tables a stage writes reference only clusters an earlier
// stage counted. A cluster unlinked (trim, a write over a compressed
// cluster) is freed only by the flush after the one that made its L2
// entry durable (no reference to it is then left on disk). Once no data
// operation that was in flight at its free can still touch it, it is taken
// again before the end of the file grows (data and L2 tables; refcount
// blocks and tables stay at the end), and counted 1 in stage 0 of the next
// flush, before any stage writes a reference to it. So a crash at any point
// leaves at worst leaked clusters, which qemu-img check reports as leaks,
// not corruption. Clusters freed before the open (refcount 0 on disk) are
// found lazily from the refcount blocks and taken the same way (scan_ready).

#include "io/qcow2_backend.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "io/log.h"

namespace ioband::io {

namespace {

using qcow2::Header;
using qcow2::Mapping;

constexpr uint64_t kCopied = 1ull << 63;  // refcount is exactly 1
constexpr uint64_t kZeroFlag = 1;

class Qcow2Backend;

// A client request (or an internal read) in progress. pending counts
// pieces on the storage, plus one while planning.
struct Job {
  IoOp* op = nullptr;
  const uint8_t* data = nullptr;  // a write's bytes: op->buffer, or `copy`
  uint8_t* copy = nullptr;        // a write parked inside submit() keeps its own bytes (see traits)
  uint64_t next = 0;  // guest offset not planned yet
  uint32_t pending = 0;
  int32_t error = 0;
  bool in_submit = false;
};

// One storage operation of a piece, a cluster allocation, or metadata.
struct SubOp final : IoOp {
  enum class Kind : uint8_t {
    kData,        // read or in-place write of host clusters
    kBacking,     // read from the backing image
    kCompressed,  // read of a compressed cluster's bytes
    kTable,       // L2 table load
    kRefblock,    // refcount block load
    kCowRead,     // allocation: the cluster's old content where the write does not reach
    kCowPiece,    // one part of it (head or tail), read through this backend
    kAllocWrite,  // allocation: the new cluster written
    kMeta,        // flush: a metadata write or a sync
  } kind = Kind::kData;
  Qcow2Backend* owner = nullptr;
  Job* job = nullptr;
  uint64_t table = 0;         // kTable, kRefblock: host offset
  uint8_t* target = nullptr;  // kCompressed: where the piece goes
  uint32_t skip = 0;          // kCompressed: the piece's offset in the cluster; kBacking: zero tail starts
  uint32_t piece = 0;         // kCompressed: piece length; kBacking: whole length wanted
  uint64_t host = 0;          // kCompressed: descriptor offset; allocation: the new cluster
  // Allocation and relink:
  uint64_t cluster = 0;        // guest cluster index
  uint64_t entry = 0;          // the new L2 entry
  Mapping old;                 // what it replaces (freed if it held clusters)
  uint32_t from = 0, to = 0;     // the written range inside the cluster
  SubOp* parent = nullptr;       // kCowPiece: its kCowRead
  uint8_t pieces = 0;            // kCowRead: pieces still being read
  int32_t piece_error = 0;       // kCowRead: the first piece's error
  uint8_t epoch = 0;             // kData, kCompressed: the epoch it started in (parity)
  void finish(int32_t result) noexcept override;
};

void* aligned_alloc_or_null(size_t bytes) {
  void* p = nullptr;
  return posix_memalign(&p, 4096, std::max<size_t>(bytes, 4096)) == 0 ? p : nullptr;
}

// The refcount table, kept sparse: a table of one 64 KiB cluster is 8192
// entries, nearly all 0 in a small overlay, and a hundred overlays on one
// base would otherwise hold 6 MiB of zeroes.
class SparseTable {
 public:
  explicit SparseTable(const std::vector<uint64_t>& entries = {}) : size_(entries.size()) {
    for (uint64_t i = 0; i < entries.size(); ++i) {
      if (entries[i]) nonzero_[i] = entries[i];
    }
  }
  uint64_t size() const noexcept { return size_; }
  uint64_t operator[](uint64_t i) const noexcept {
    auto it = nonzero_.find(i);
    return it == nonzero_.end() ? 0 : it->second;
  }
  void set(uint64_t i, uint64_t value) { nonzero_[i] = value; }
  void resize(uint64_t size) noexcept { size_ = size; }

 private:
  uint64_t size_;
  std::map<uint64_t, uint64_t> nonzero_;
};

class Qcow2Backend final : public Backend {
 public:
  explicit Qcow2Backend(Qcow2Parts p)
      : path_(std::move(p.path)),
        h_(std::move(p.header)),
        head_(std::move(p.head)),
        l1_(std::move(p.l1)),
        rt_(std::move(p.refcount_table)),
        file_(std::move(p.file)),
        meta_fd_(p.meta_fd),
        file_size_(p.file_size),
        backing_(std::move(p.backing)),
        backing_size_(backing_ ? backing_->size() : 0),
        max_tables_(std::max<uint64_t>(2, p.cache_bytes / h_.cluster_size())),
        writable_(p.writable),
        chain_in_memory_(file_->traits().memory_speed && (!backing_ || backing_->traits().memory_speed)) {
    const uint64_t cs = h_.cluster_size();
    next_free_ = counted_end_ = (file_size_ + cs - 1) & ~(cs - 1);
    scan_end_ = writable_ ? counted_end_ : 0;
    rt_offset_ = h_.refcount_table_offset;
    rt_clusters_ = h_.refcount_table_clusters;
    head_.resize(512);  // the header sector is all a flush rewrites
    head_.shrink_to_fit();
  }
  ~Qcow2Backend() override {
    if (writable_) {
      // A flush of our own may have been cut short by the stop: its writes
      // are not known to be down, so everything is written again.
      if (flushing_) redirty_all();
      flush_at_close();
    }
    close(meta_fd_);
    free(compressed_cluster_);
    free(zeroes_);
  }

  uint64_t size() const noexcept override { return h_.size; }
  BackendTraits traits() const noexcept override {
    BackendTraits t = file_->traits();
    t.read_only = !writable_;
    t.can_trim = writable_;
    t.can_fast_zero = false;
    // Memory speed when the file and the whole chain are (each lookup is
    // then done inline too); writes are not consumed inside submit(): an
    // allocating write copies its bytes after the copy-on-write read.
    t.memory_speed = t.memory_speed && (!backing_ || backing_->traits().memory_speed);
    // A write is consumed inside submit() when the file's are: in place it
    // goes to the file, an allocation copies it into its new cluster, and
    // one that waits (a table load, a cluster being allocated) copies it.
    t.writes_consumed_below = file_->traits().writes_consumed_below;
    return t;
  }
  std::string describe() const override {
    std::string text = "qcow2 v" + std::to_string(h_.version) + " " + path_ + ", " +
                       std::to_string(h_.cluster_size()) + "-byte clusters, L2 cache " +
                       std::to_string(max_tables_ * h_.cluster_size()) + " bytes, on " + file_->describe();
    if (backing_) text += "; backing: " + backing_->describe();
    return text;
  }

  void submit(Reactor& reactor, IoOp& op) noexcept override {
    op.splice_fd = -1;
    op.storage_io = {};
    op.storage_io.set = true;
    reactor_ = &reactor;
    if (op.op == Op::kCache || (!writable_ && op.op != Op::kRead)) {
      const int32_t result = op.op == Op::kCache || op.op == Op::kFlush ? 0 : -EROFS;
      reactor.defer([&op, result] { op.finish(result); });
      return;
    }
    if (op.op == Op::kFlush) {
      flush([this, &op](int rc) {
        bill(op);
        op.finish(rc);
      });
      return;
    }
    Job* job = take_job();
    job->op = &op;
    job->data = op.buffer;
    job->copy = nullptr;
    job->next = op.offset;
    job->pending = 1;
    job->error = 0;
    job->in_submit = true;
    plan(*job);
    job->in_submit = false;
  }

  // The sub-operations complete through SubOp::finish, never here.
  void complete(Reactor&, IoOp&, int32_t) noexcept override {}

  int block_status(uint64_t offset, uint32_t length, std::vector<Extent>& out) noexcept override {
    const uint64_t end = std::min<uint64_t>(offset + length, h_.size);
    uint64_t pos = offset;
    const size_t first = out.size();
    while (pos < end && out.size() - first < 1024) {
      const uint64_t cluster_end = std::min<uint64_t>((pos | (h_.cluster_size() - 1)) + 1, end);
      Mapping m;
      if (int rc = lookup_sync(pos, m); rc < 0) return out.size() > first ? 0 : rc;
      uint64_t run_end = cluster_end;
      while (run_end < end) {  // whole clusters of one kind in a row are one extent
        Mapping n;
        if (lookup_sync(run_end, n) < 0 || n.kind != m.kind) break;
        run_end = std::min<uint64_t>(run_end + h_.cluster_size(), end);
      }
      switch (m.kind) {
        case Mapping::Kind::kNormal:
        case Mapping::Kind::kCompressed: append(out, first, run_end - pos, 0); break;
        case Mapping::Kind::kZero: append(out, first, run_end - pos, m.host ? kExtentZero : kExtentHole | kExtentZero); break;
        case Mapping::Kind::kUnallocated: backing_status(pos, run_end, out, first); break;
      }
      pos = run_end;
    }
    if (out.size() == first) out.push_back({end - offset, 0});
    return 0;
  }

  void sub_done(SubOp& sub, int32_t result) noexcept {
    Job* job = sub.job;
    switch (sub.kind) {
      case SubOp::Kind::kTable: return table_loaded(sub, result);
      case SubOp::Kind::kRefblock: return refblock_loaded(sub, result);
      case SubOp::Kind::kMeta: return meta_done(sub, result);
      case SubOp::Kind::kCowRead: return cow_read_done(sub, result);
      case SubOp::Kind::kCowPiece: return cow_piece_done(sub, result);
      case SubOp::Kind::kAllocWrite:
        if (result >= 0) return link(sub);
        free(sub.buffer);
        unbusy(sub.cluster);
        break;
      case SubOp::Kind::kData: data_done(sub.epoch); break;
      case SubOp::Kind::kBacking:
        if (result >= 0 && sub.skip < sub.piece) std::memset(sub.buffer + sub.skip, 0, sub.piece - sub.skip);
        // A qcow2 backing image says what it read; a raw one read the piece.
        job->op->storage_io += sub.storage_io.set ? sub.storage_io : IoOp::DeviceIo{1, 0, 0, sub.length, 0};
        break;
      case SubOp::Kind::kCompressed:
        data_done(sub.epoch);
        if (result >= 0) result = inflated(sub);
        free(sub.buffer);
        break;
    }
    release(sub);
    if (result < 0 && job->error == 0) job->error = result;
    piece_done(*job);
  }

 private:
  using Callback = std::function<void(int)>;

  // --- requests --------------------------------------------------------

  Job* take_job() {
    if (free_jobs_.empty()) {
      jobs_.push_back(std::make_unique<Job>());
      return jobs_.back().get();
    }
    Job* j = free_jobs_.back();
    free_jobs_.pop_back();
    return j;
  }
  SubOp* take_sub(Job* job, SubOp::Kind kind) {
    SubOp* s;
    if (free_subs_.empty()) {
      subs_.push_back(std::make_unique<SubOp>());
      s = subs_.back().get();
      s->owner = this;
    } else {
      s = free_subs_.back();
      free_subs_.pop_back();
    }
    s->job = job;
    s->kind = kind;
    s->flags = 0;
    s->op = Op::kRead;
    s->storage_io = {};
    return s;
  }
  void release(SubOp& sub) { free_subs_.push_back(&sub); }

  void piece_done(Job& job) noexcept {
    if (--job.pending > 0) return;
    IoOp& op = *job.op;
    const int32_t result = job.error ? job.error : op.op == Op::kRead || op.op == Op::kWrite ? static_cast<int32_t>(op.length) : 0;
    const bool deferred = job.in_submit;
    free(job.copy);
    job.copy = nullptr;
    free_jobs_.push_back(&job);
    if (op.op != Op::kRead) bill(op);
    if (result >= 0 && op.op != Op::kRead && (op.flags & kFua)) {
      return flush([this, &op, result](int rc) {
        bill(op);
        op.finish(rc < 0 ? rc : result);
      });
    }
    // The caller does not expect its op finished inside its own submit().
    if (deferred) {
      reactor_->defer([&op, result] { op.finish(result); });
    } else {
      op.finish(result);
    }
  }

  // Plans pieces from job.next on; stops (the job waits) at an L2 table not
  // in the cache or a cluster being allocated, and resumes from there.
  void plan(Job& job) noexcept {
    IoOp& op = *job.op;
    const uint64_t end = op.offset + op.length;
    const uint64_t cs = h_.cluster_size();
    while (job.next < end && job.error == 0) {
      const uint64_t pos = job.next;
      if (op.op != Op::kRead && !busy_.empty() && busy_.count(pos >> h_.cluster_bits)) {
        busy_waiters_.push_back(&job);
        return parked(job);
      }
      Mapping m;
      const int rc = lookup(pos, m, &job);
      if (rc == -EAGAIN) return parked(job);  // on a table load
      if (rc < 0) {
        job.error = rc;
        break;
      }
      // A change that may take a cluster: the free ones the image held at
      // open are found first, unless free ones are known already (scan_step).
      if ((op.op == Op::kWrite || op.op == Op::kWriteZeroes) && m.kind != Mapping::Kind::kNormal &&
          free_runs_.empty() && scan_pos_ < scan_end_ && !scan_ready()) {
        scan_waiters_.push_back(&job);
        return parked(job);
      }
      uint64_t run_end = std::min<uint64_t>((pos | (cs - 1)) + 1, end);
      // Reads and in-place writes: the following clusters that continue the run.
      if (op.op == Op::kRead || (op.op == Op::kWrite && m.kind == Mapping::Kind::kNormal)) {
        while (run_end < end && m.kind != Mapping::Kind::kCompressed) {
          Mapping n;
          if ((op.op != Op::kRead && !busy_.empty() && busy_.count(run_end >> h_.cluster_bits)) ||
              lookup(run_end, n, nullptr) != 0 ||
              n.kind != m.kind) {
            break;
          }
          if (m.kind == Mapping::Kind::kNormal && n.host != m.host + (run_end - (pos & ~(cs - 1)))) break;
          run_end = std::min<uint64_t>(run_end + cs, end);
        }
      }
      if (op.op == Op::kRead) {
        plan_read(job, pos, run_end, m);
      } else {
        plan_change(job, pos, run_end, m);
      }
      job.next = run_end;
    }
    piece_done(job);
  }

  // A write that waits from inside submit() copies what it has not written
  // yet: the caller may reuse its buffer once submit() returns (traits()).
  void parked(Job& job) noexcept {
    IoOp& op = *job.op;
    if (!job.in_submit || op.op != Op::kWrite || job.copy) return;
    const uint64_t done = job.next - op.offset;
    job.copy = static_cast<uint8_t*>(malloc(std::max<uint64_t>(op.length - done, 1)));
    if (!job.copy) {
      // No memory: the caller's buffer is used (valid here unless the
      // write came from its staging buffer, which memory-speed files only
      // lend for writes that fit in the raw backend's inline limit).
      return;
    }
    std::memcpy(job.copy, op.buffer + done, op.length - done);
    job.data = job.copy - done;
  }

  void plan_read(Job& job, uint64_t pos, uint64_t run_end, const Mapping& m) noexcept {
    IoOp& op = *job.op;
    uint8_t* buffer = op.buffer + (pos - op.offset);
    const uint32_t length = static_cast<uint32_t>(run_end - pos);
    switch (m.kind) {
      case Mapping::Kind::kZero: std::memset(buffer, 0, length); break;
      case Mapping::Kind::kUnallocated: read_backing(job, pos, buffer, length); break;
      case Mapping::Kind::kNormal: data_io(job, Op::kRead, m.host + (pos & (h_.cluster_size() - 1)), buffer, length); break;
      case Mapping::Kind::kCompressed: read_compressed(job, pos, m, buffer, length); break;
    }
  }

  void data_io(Job& job, Op kind, uint64_t host, uint8_t* buffer, uint32_t length) noexcept {
    count_io(*job.op, kind, length);
    SubOp* s = take_sub(&job, SubOp::Kind::kData);
    s->op = kind;
    s->offset = host;
    s->length = length;
    s->buffer = buffer;
    s->flags = job.op->flags & kSequential;
    s->epoch = data_started();
    ++job.pending;
    file_->submit(*reactor_, *s);
  }

  // A write, zeroing or trim of [pos, run_end) (one cluster, or a run of
  // allocated clusters for a write).
  void plan_change(Job& job, uint64_t pos, uint64_t run_end, const Mapping& m) noexcept {
    IoOp& op = *job.op;
    const uint64_t cs = h_.cluster_size();
    const uint64_t cluster = pos >> h_.cluster_bits;
    const uint64_t cluster_start = cluster << h_.cluster_bits;
    const bool whole = pos == cluster_start && run_end == std::min(cluster_start + cs, h_.size);
    // Zero flags exist from version 3; without a backing file an
    // unallocated cluster reads as zeroes anyway.
    const bool can_unmap = h_.version >= 3 || !backing_;
    const uint64_t unmapped = backing_ ? kZeroFlag : 0;
    switch (op.op) {
      case Op::kWrite:
        if (m.kind == Mapping::Kind::kNormal) {
          return data_io(job, Op::kWrite, m.host + (pos & (cs - 1)), const_cast<uint8_t*>(job.data) + (pos - op.offset),
                         static_cast<uint32_t>(run_end - pos));
        }
        return allocate(job, cluster, m, pos, run_end, job.data + (pos - op.offset));
      case Op::kWriteZeroes:
        if (whole && can_unmap && !(op.flags & kNoHole)) return relink(job, cluster, m, unmapped);
        if (m.kind == Mapping::Kind::kNormal) {
          if (!zeroes()) {
            job.error = -ENOMEM;
            return;
          }
          return data_io(job, Op::kWrite, m.host + (pos & (cs - 1)), zeroes_, static_cast<uint32_t>(run_end - pos));
        }
        if (m.kind == Mapping::Kind::kZero || (m.kind == Mapping::Kind::kUnallocated && !backing_)) return;  // zeroes already
        return allocate(job, cluster, m, pos, run_end, nullptr);
      case Op::kTrim:  // advisory: whole clusters only
        if (whole && can_unmap) return relink(job, cluster, m, unmapped);
        return;
      default:
        return;
    }
  }

  // One cluster of zeroes, made when first needed (most images never
  // need it: 64 KiB each for a hundred overlays would count).
  uint8_t* zeroes() noexcept {
    if (!zeroes_ && (zeroes_ = static_cast<uint8_t*>(aligned_alloc_or_null(h_.cluster_size())))) {
      std::memset(zeroes_, 0, h_.cluster_size());
    }
    return zeroes_;
  }

  // What reaches the storage for an op (the scheduler charges it: IoOp::storage_io).
  static void count_io(IoOp& op, Op kind, uint64_t bytes) noexcept {
    op.storage_io += kind == Op::kRead ? IoOp::DeviceIo{1, 0, 0, bytes, 0} : IoOp::DeviceIo{0, 1, 0, 0, bytes};
  }
  // The metadata written by flushes so far goes to `op`: the FLUSH or FUA
  // write that waited for it, or else the next change to complete (the
  // flushes the cache bound starts are the writers' doing, not the readers').
  void bill(IoOp& op) noexcept {
    op.storage_io += unbilled_;
    unbilled_ = {};
  }

  void relink(Job& job, uint64_t cluster, const Mapping& m, uint64_t entry) noexcept {
    const bool same = (entry == 0 && m.kind == Mapping::Kind::kUnallocated) ||
                      (entry == kZeroFlag && m.kind == Mapping::Kind::kZero && m.host == 0);
    if (same) return;
    SubOp* s = take_sub(&job, SubOp::Kind::kAllocWrite);
    s->cluster = cluster;
    s->entry = entry;
    s->old = m;
    s->buffer = nullptr;
    busy_.insert(cluster);
    ++job.pending;
    link(*s);
  }

  // A new cluster for [pos, run_end) of guest cluster `cluster`: filled
  // with what it held where the write does not reach, then written.
  void allocate(Job& job, uint64_t cluster, const Mapping& m, uint64_t pos, uint64_t run_end, const uint8_t* src) noexcept {
    const uint64_t cs = h_.cluster_size();
    auto* buffer = static_cast<uint8_t*>(aligned_alloc_or_null(cs));
    if (!buffer) {
      job.error = -ENOMEM;
      return;
    }
    SubOp* s = take_sub(&job, SubOp::Kind::kCowRead);
    s->cluster = cluster;
    s->old = m;
    s->from = static_cast<uint32_t>(pos & (cs - 1));
    s->to = static_cast<uint32_t>(s->from + (run_end - pos));
    s->buffer = buffer;
    s->host = take_cluster();
    s->entry = s->host | kCopied;
    busy_.insert(cluster);
    ++job.pending;
    const uint64_t start = cluster << h_.cluster_bits;
    const uint64_t valid = std::min(cs, h_.size - start);
    std::memset(buffer + valid, 0, cs - valid);  // past the virtual size
    // The write's bytes now (the caller may reuse its buffer once submit()
    // returns); the head and tail come in around them.
    if (src) {
      std::memcpy(buffer + s->from, src, s->to - s->from);
    } else {
      std::memset(buffer + s->from, 0, s->to - s->from);
    }
    // What the write does not reach, before and after it, is read through
    // this backend (backing chain, zeroes, inflation); the rest is new.
    // On a device, one read of both (as QEMU does) costs less than two:
    // it goes to a scratch cluster, and the head and tail are copied out.
    s->pieces = 0;
    s->piece_error = 0;
    const auto end = static_cast<uint32_t>(valid);
    if (s->from > 0 && s->to < end && !chain_in_memory_) {
      auto* scratch = static_cast<uint8_t*>(aligned_alloc_or_null(cs));
      if (scratch) return cow_piece(*s, 0, end, scratch);
    }
    if (s->from > 0) cow_piece(*s, 0, s->from, s->buffer);
    if (s->to < end) cow_piece(*s, s->to, end, s->buffer + s->to);
    if (s->pieces == 0) cow_read_done(*s, 0);
  }

  // [from, to) of the cluster read into `into`: the cluster buffer itself,
  // or a scratch cluster (from 0 to the end, around the write).
  void cow_piece(SubOp& s, uint32_t from, uint32_t to, uint8_t* into) noexcept {
    SubOp* piece = take_sub(s.job, SubOp::Kind::kCowPiece);
    piece->parent = &s;
    piece->offset = (s.cluster << h_.cluster_bits) + from;
    piece->length = to - from;
    piece->buffer = into;
    ++s.pieces;
    submit(*reactor_, *piece);  // finishes later, never inside (piece_done defers)
  }

  void cow_piece_done(SubOp& piece, int32_t result) noexcept {
    SubOp& s = *piece.parent;
    s.storage_io += piece.storage_io;
    if (result < 0 && s.piece_error == 0) s.piece_error = result;
    if (piece.buffer != s.buffer + (piece.offset & (h_.cluster_size() - 1))) {  // a scratch cluster
      if (result >= 0) {
        std::memcpy(s.buffer, piece.buffer, s.from);
        std::memcpy(s.buffer + s.to, piece.buffer + s.to, piece.length - s.to);
      }
      free(piece.buffer);
    }
    release(piece);
    if (--s.pieces == 0) cow_read_done(s, s.piece_error);
  }

  void cow_read_done(SubOp& s, int32_t result) noexcept {
    if (result < 0) {
      free(s.buffer);
      unbusy(s.cluster);
      Job* job = s.job;
      release(s);
      if (job->error == 0) job->error = result;
      return piece_done(*job);
    }
    s.job->op->storage_io += s.storage_io;  // the read through this backend, if any
    s.kind = SubOp::Kind::kAllocWrite;
    s.op = Op::kWrite;
    s.offset = s.host;
    s.length = static_cast<uint32_t>(h_.cluster_size());
    s.flags = 0;
    count_io(*s.job->op, Op::kWrite, s.length);
    file_->submit(*reactor_, s);
  }

  // The cluster's data is down: its L2 entry now points to it. Waits for
  // a running flush, for the L2 table to be read, or makes a new table.
  void link(SubOp& s) noexcept {
    if (flushing_) {
      deferred_links_.push_back(&s);
      return;
    }
    const uint64_t guest = s.cluster << h_.cluster_bits;
    const uint64_t index = guest / h_.l2_span();
    uint64_t table_offset = 0;
    if (int rc = table_of(guest, table_offset); rc < 0) return link_failed(s, rc);
    auto it = tables_.end();
    if (table_offset == 0) {
      // A new L2 table: counted at the next flush, written before L1 names it.
      table_offset = take_cluster();
      it = insert_table(table_offset);
      it->second.entries.assign(h_.l2_entries(), 0);
      it->second.loaded = true;
      l1_[index] = table_offset | kCopied;
      l1_dirty_.insert(index / 64);
    } else {
      it = tables_.find(table_offset);
      if (it == tables_.end() || !it->second.loaded) {
        auto retry = [this, &s](int rc) { rc < 0 ? link_failed(s, rc) : link(s); };
        if (it != tables_.end()) {
          it->second.waiters.push_back(retry);
        } else if (start_load(table_offset, retry, *s.job->op) < 0) {
          link_failed(s, -ENOMEM);
        }
        return;
      }
    }
    Table& t = it->second;
    touch(t);
    t.entries[s.cluster & (h_.l2_entries() - 1)] = s.entry;
    mark_dirty(t);
    // What it replaces is freed once this entry is durable (see the top).
    if (s.old.kind == Mapping::Kind::kNormal || (s.old.kind == Mapping::Kind::kZero && s.old.host)) {
      pending_frees_.push_back({s.old.host, h_.cluster_size()});
    } else if (s.old.kind == Mapping::Kind::kCompressed) {
      pending_frees_.push_back({s.old.host, s.old.compressed});
    }
    free(s.buffer);
    Job* job = s.job;
    const uint64_t cluster = s.cluster;
    release(s);
    unbusy(cluster);
    piece_done(*job);
    if (dirty_tables_ * 2 > max_tables_ && !flushing_) flush(nullptr);
  }

  void link_failed(SubOp& s, int rc) noexcept {
    free(s.buffer);
    Job* job = s.job;
    unbusy(s.cluster);
    release(s);
    if (job->error == 0) job->error = rc;
    piece_done(*job);
  }

  void unbusy(uint64_t cluster) noexcept {
    busy_.erase(cluster);
    if (busy_waiters_.empty()) return;
    std::vector<Job*> waiters;
    waiters.swap(busy_waiters_);
    for (Job* job : waiters) plan(*job);
  }

  // A cluster for data or an L2 table: a freed one (the lowest) if any,
  // else a new one at the end. A freed cluster has refcount 0 in memory and
  // no reference on disk (its unlink was durable before it was freed), so
  // it may be written at once; the next flush counts it (reused_) before
  // the stage that writes a reference to it.
  uint64_t take_cluster() noexcept {
    if (free_runs_.empty()) return take_clusters(1);
    auto run = free_runs_.begin();
    const uint64_t offset = run->first, length = run->second;
    free_runs_.erase(run);
    if (length > h_.cluster_size()) free_runs_.emplace(offset + h_.cluster_size(), length - h_.cluster_size());
    reused_.push_back(offset);
    return offset;
  }
  // Guest reads and in-place writes go to host clusters with no lock; one
  // still in flight when its cluster was unlinked (a write racing a trim of
  // the same range) must not land in, or read, the cluster's next use. So
  // a freed cluster waits in quarantine until every data operation that
  // was in flight when it was freed is done: operations count in the
  // epoch they start in (two counters, by parity); the epoch moves on when
  // the one before it has drained, and a cluster freed in epoch e is free
  // once the epoch is e + 2.
  uint8_t data_started() noexcept {
    const auto parity = static_cast<uint8_t>(epoch_ & 1);
    ++data_inflight_[parity];
    return parity;
  }
  void data_done(uint8_t parity) noexcept {
    if (--data_inflight_[parity] == 0 && !quarantine_.empty()) advance_epoch();
  }
  void quarantine(uint64_t offset) {
    quarantine_.push_back({epoch_, offset});
    advance_epoch();
  }
  void advance_epoch() {
    // At most twice: enough to free what was freed now when nothing is in flight.
    for (int i = 0; i < 2 && data_inflight_[(epoch_ + 1) & 1] == 0 && !quarantine_.empty(); ++i) {
      ++epoch_;
      while (!quarantine_.empty() && quarantine_.front().first + 2 <= epoch_) {
        add_free(quarantine_.front().second);
        quarantine_.pop_front();
      }
    }
  }

  // Refcount 0 now: reusable (runs of neighbours kept as one).
  void add_free(uint64_t offset) {
    const uint64_t cs = h_.cluster_size();
    uint64_t length = cs;
    auto next = free_runs_.find(offset + cs);
    if (next != free_runs_.end()) {
      length += next->second;
      free_runs_.erase(next);
    }
    auto prev = free_runs_.lower_bound(offset);
    if (prev != free_runs_.begin() && std::prev(prev)->first + std::prev(prev)->second == offset) {
      std::prev(prev)->second += length;
      return;
    }
    free_runs_.emplace(offset, length);
  }

  uint64_t take_clusters(uint64_t n) noexcept {
    const uint64_t offset = next_free_;
    next_free_ += n * h_.cluster_size();
    return offset;
  }
  uint64_t file_end() const noexcept { return writable_ ? std::max(next_free_, file_size_) : file_size_; }
  // Where the last whole cluster of the file starts (0: none past the first).
  uint64_t last_cluster() const noexcept {
    const uint64_t end = file_end();
    return end >= h_.cluster_size() ? end - h_.cluster_size() : 0;
  }

  void read_backing(Job& job, uint64_t pos, uint8_t* buffer, uint32_t length) noexcept {
    const uint32_t from_backing =
        pos >= backing_size_ ? 0 : static_cast<uint32_t>(std::min<uint64_t>(length, backing_size_ - pos));
    if (from_backing == 0) {
      std::memset(buffer, 0, length);
      return;
    }
    SubOp* s = take_sub(&job, SubOp::Kind::kBacking);
    s->offset = pos;
    s->length = from_backing;
    s->buffer = buffer;
    s->skip = from_backing;
    s->piece = length;
    ++job.pending;
    backing_->submit(*reactor_, *s);
  }

  void read_compressed(Job& job, uint64_t pos, const Mapping& m, uint8_t* buffer, uint32_t length) noexcept {
    const uint32_t in_cluster = static_cast<uint32_t>(pos & (h_.cluster_size() - 1));
    // Reads of one compressed cluster in a row inflate it once.
    if (compressed_host_ == m.host && compressed_cluster_) {
      std::memcpy(buffer, compressed_cluster_ + in_cluster, length);
      return;
    }
    // The last sector of the last compressed cluster may end past the end
    // of the file (QEMU reads zeroes there): only what the file holds.
    const uint64_t compressed = std::min(m.compressed, file_size_ - m.host);
    auto* in = static_cast<uint8_t*>(malloc(compressed));
    if (!in) {
      job.error = -ENOMEM;
      return;
    }
    count_io(*job.op, Op::kRead, compressed);
    SubOp* s = take_sub(&job, SubOp::Kind::kCompressed);
    s->offset = m.host;
    s->length = static_cast<uint32_t>(compressed);
    s->buffer = in;
    s->target = buffer;
    s->skip = in_cluster;
    s->piece = length;
    s->host = m.host;
    s->epoch = data_started();
    ++job.pending;
    file_->submit(*reactor_, *s);
  }

  int32_t inflated(SubOp& sub) noexcept {
    if (!compressed_cluster_) compressed_cluster_ = static_cast<uint8_t*>(aligned_alloc_or_null(h_.cluster_size()));
    std::string why = compressed_cluster_
                          ? qcow2::inflate_cluster(sub.buffer, sub.length, compressed_cluster_, h_.cluster_size())
                          : "out of memory";
    if (!why.empty()) {
      compressed_host_ = 0;
      corrupt("compressed cluster at " + std::to_string(sub.host) + ": " + why);
      return -EIO;
    }
    compressed_host_ = sub.host;
    std::memcpy(sub.target, compressed_cluster_ + sub.skip, sub.piece);
    return 0;
  }

  // --- the map ---------------------------------------------------------

  struct Table {
    std::vector<uint64_t> entries;  // host order; empty while loading
    std::vector<Callback> waiters;
    std::list<uint64_t>::iterator lru;
    bool loaded = false;
    bool dirty = false;
  };

  // The mapping of guest offset pos. 0, -EIO for a corrupt entry, or
  // -EAGAIN when its table is being read (job, if given, then waits for it).
  int lookup(uint64_t pos, Mapping& m, Job* job) noexcept {
    uint64_t table_offset;
    if (int rc = table_of(pos, table_offset); rc <= 0) {
      m = Mapping{};
      return rc;
    }
    auto it = tables_.find(table_offset);
    if (it == tables_.end() || !it->second.loaded) {
      if (!job) return -EAGAIN;
      Callback resume = [this, job](int rc) {
        if (rc < 0) {
          job->error = rc;
          piece_done(*job);
        } else {
          plan(*job);
        }
      };
      if (it == tables_.end()) return start_load(table_offset, std::move(resume), *job->op);
      it->second.waiters.push_back(std::move(resume));
      return -EAGAIN;
    }
    touch(it->second);
    return entry_at(it->second.entries, pos, m);
  }

  // The same for block_status: a missing table is read here and now.
  int lookup_sync(uint64_t pos, Mapping& m) noexcept {
    uint64_t table_offset;
    if (int rc = table_of(pos, table_offset); rc <= 0) {
      m = Mapping{};
      return rc;
    }
    auto it = tables_.find(table_offset);
    if (it != tables_.end() && it->second.loaded) {
      touch(it->second);
      return entry_at(it->second.entries, pos, m);
    }
    std::vector<uint8_t> raw(h_.cluster_size());
    const ssize_t n = pread(meta_fd_, raw.data(), raw.size(), static_cast<off_t>(table_offset));
    if (n != static_cast<ssize_t>(raw.size())) return n < 0 ? -errno : -EIO;
    std::vector<uint64_t> entries;
    fill(entries, raw.data());
    const int rc = entry_at(entries, pos, m);
    // Kept for the next calls, unless a read of it on the ring has waiters:
    // they are woken by that read, not from inside block_status.
    if (it == tables_.end()) {
      it = insert_table(table_offset);
      it->second.entries = std::move(entries);
      it->second.loaded = true;
    }
    return rc;
  }

  // 1 and the table's offset, 0 if the L1 entry is empty, or -EIO.
  int table_of(uint64_t pos, uint64_t& table_offset) noexcept {
    const uint64_t index = pos / h_.l2_span();
    if (index >= l1_.size()) return 0;
    // The usual entry, decoded here (a few instructions on every request);
    // anything else goes through the format's full check.
    const uint64_t l1 = l1_[index];
    const uint64_t offset = l1 & qcow2::kOffsetMask;
    if ((l1 & ~(kCopied | qcow2::kOffsetMask)) == 0 && (offset & (h_.cluster_size() - 1)) == 0 && offset != 0 &&
        offset <= last_cluster()) {
      table_offset = offset;
      return 1;
    }
    std::string error;
    table_offset = qcow2::decode_l1(l1_[index], h_, error);
    if (!error.empty()) {
      corrupt(error);
      return -EIO;
    }
    if (table_offset == 0) return 0;
    if (file_end() < h_.cluster_size() || table_offset > file_end() - h_.cluster_size()) {
      corrupt("L2 table at " + std::to_string(table_offset) + " lies past the end of the file");
      return -EIO;
    }
    return 1;
  }

  int entry_at(const std::vector<uint64_t>& entries, uint64_t pos, Mapping& m) noexcept {
    const uint64_t entry = entries[(pos >> h_.cluster_bits) & (h_.l2_entries() - 1)];
    // An allocated cluster inside the file: decoded here, as in table_of.
    const uint64_t host = entry & qcow2::kOffsetMask;
    if ((entry & ~(kCopied | qcow2::kOffsetMask)) == 0 && (host & (h_.cluster_size() - 1)) == 0 && host != 0 &&
        host <= last_cluster()) {
      m.kind = Mapping::Kind::kNormal;
      m.host = host;
      m.compressed = 0;
      return 0;
    }
    if (std::string why = qcow2::decode_l2(entry, h_, m); !why.empty()) {
      corrupt(why);
      return -EIO;
    }
    const uint64_t end = file_end();
    if ((m.kind == Mapping::Kind::kNormal && (m.host >= end || end - m.host < h_.cluster_size())) ||
        (m.kind == Mapping::Kind::kCompressed && m.host >= file_size_)) {
      corrupt("cluster at " + std::to_string(m.host) + " lies past the end of the file");
      return -EIO;
    }
    return 0;
  }

  std::unordered_map<uint64_t, Table>::iterator insert_table(uint64_t offset) {
    evict();
    auto [it, added] = tables_.try_emplace(offset);
    lru_.push_front(offset);
    it->second.lru = lru_.begin();
    return it;
  }

  // Least recently used first; tables being read, or dirty, stay, and all
  // do while a flush runs (one being written must not be read back stale).
  void evict() noexcept {
    if (flushing_) return;
    auto it = lru_.end();
    while (tables_.size() >= max_tables_ && it != lru_.begin()) {
      --it;
      auto t = tables_.find(*it);
      if (!t->second.loaded || t->second.dirty) continue;
      it = lru_.erase(it);
      tables_.erase(t);
    }
  }

  void touch(Table& t) noexcept {
    if (t.lru != lru_.begin()) lru_.splice(lru_.begin(), lru_, t.lru);
  }
  void mark_dirty(Table& t) noexcept {
    if (!t.dirty) ++dirty_tables_;
    t.dirty = true;
  }

  void fill(std::vector<uint64_t>& entries, const uint8_t* raw) {
    entries.resize(h_.l2_entries());
    for (uint64_t i = 0; i < entries.size(); ++i) entries[i] = qcow2::load_be64(raw + i * 8);
  }

  // Reads the table on the ring (charged to `cause`); waiter runs when it
  // is in. -EAGAIN, or -ENOMEM.
  int start_load(uint64_t offset, Callback waiter, IoOp& cause) noexcept {
    auto* buffer = static_cast<uint8_t*>(aligned_alloc_or_null(h_.cluster_size()));
    if (!buffer) return -ENOMEM;
    count_io(cause, Op::kRead, h_.cluster_size());
    auto it = insert_table(offset);
    it->second.waiters.push_back(std::move(waiter));  // before submit: the read may fail inside it
    SubOp* s = take_sub(nullptr, SubOp::Kind::kTable);
    s->offset = offset;
    s->length = static_cast<uint32_t>(h_.cluster_size());
    s->buffer = buffer;
    s->table = offset;
    file_->submit(*reactor_, *s);
    return -EAGAIN;
  }

  void table_loaded(SubOp& sub, int32_t result) noexcept {
    auto it = tables_.find(sub.table);
    uint8_t* buffer = sub.buffer;
    release(sub);
    std::vector<Callback> waiters;
    waiters.swap(it->second.waiters);
    if (result < 0) {
      lru_.erase(it->second.lru);
      tables_.erase(it);
    } else {
      fill(it->second.entries, buffer);
      it->second.loaded = true;
    }
    free(buffer);
    for (Callback& w : waiters) w(result < 0 ? result : 0);  // may evict the table: not used after
  }

  // --- refcounts and flush ---------------------------------------------

  struct RefBlock {
    std::vector<uint16_t> counts;
    std::vector<Callback> waiters;
    bool loaded = false;
    bool dirty = false;
  };
  struct Extent64 {
    uint64_t offset, length;
  };

  // Runs done(rc) once everything written before it is durable, data and
  // metadata (done may be empty: a flush of our own, for the cache bound).
  void flush(Callback done) noexcept {
    if (flushing_) {
      if (done) next_waiters_.push_back(std::move(done));
      return;
    }
    if (done) flush_waiters_.push_back(std::move(done));
    flushing_ = true;
    flush_error_ = 0;
    synced_ = false;
    frees_at_start_ = pending_frees_.size();
    count_step();
  }

  // Stage 0: refcounts in memory. Loops until every cluster taken is
  // counted (counting may take clusters: refcount blocks, a larger table)
  // and the frees ready are subtracted; waits for refcount blocks to load.
  void count_step() noexcept {
    const uint64_t cs = h_.cluster_size();
    const uint64_t per_block = cs / 2;
    while (counted_end_ < next_free_) {
      const uint64_t index = counted_end_ / cs;
      const uint64_t group = index / per_block;
      if (group >= rt_.size()) {
        grow_refcount_table(group);
        continue;
      }
      if (rt_[group] == 0) {
        // A new block, in the first free cluster: it counts itself when
        // it lies in its own group, else the loop gives it a block.
        const uint64_t block = take_clusters(1);
        rt_.set(group, block);
        rt_dirty_.insert(group * 8 / cs);
        RefBlock& b = refblocks_[block];
        b.counts.assign(per_block, 0);
        b.loaded = true;
        b.dirty = true;
        continue;
      }
      RefBlock* b = refblock(rt_[group]);
      if (!b) return;  // loading: count_step runs again
      const uint64_t group_end = (group + 1) * per_block * cs;
      for (; counted_end_ < std::min(group_end, next_free_); counted_end_ += cs) {
        uint16_t& count = b->counts[(counted_end_ / cs) % per_block];
        if (count != 0) corrupt("cluster at " + std::to_string(counted_end_) + " past the end of the file has a refcount");
        count = 1;
      }
      b->dirty = true;
    }
    // Freed clusters taken again since the last count: refcount 1.
    while (!reused_.empty()) {
      const uint64_t c = reused_.back() / cs;
      const uint64_t group = c / per_block;
      if (group >= rt_.size() || rt_[group] == 0) {
        corrupt("reused cluster " + std::to_string(c) + " has no refcount block");
        reused_.pop_back();
        continue;
      }
      RefBlock* b = refblock(rt_[group]);
      if (!b) return;  // loading: count_step runs again
      uint16_t& count = b->counts[c % per_block];
      if (count != 0) corrupt("reused cluster " + std::to_string(c) + " has a refcount");
      count = 1;
      b->dirty = true;
      reused_.pop_back();
    }
    while (!ready_frees_.empty()) {
      Extent64& e = ready_frees_.back();
      for (uint64_t c = e.offset / cs; c <= (e.offset + e.length - 1) / cs; ++c) {
        const uint64_t group = c / per_block;
        if (group >= rt_.size() || rt_[group] == 0) {
          corrupt("freeing cluster " + std::to_string(c) + " that has no refcount block");
          continue;
        }
        if (!refblock(rt_[group])) return;  // loading: count_step runs again, from this extent
      }
      for (uint64_t c = e.offset / cs; c <= (e.offset + e.length - 1) / cs; ++c) {
        const uint64_t group = c / per_block;
        if (group >= rt_.size() || rt_[group] == 0) continue;
        RefBlock& b = refblocks_[rt_[group]];
        uint16_t& count = b.counts[c % per_block];
        if (count == 0) {
          corrupt("freeing cluster " + std::to_string(c) + " whose refcount is 0");
          continue;
        }
        --count;
        b.dirty = true;
        if (count == 0 && !closing_ && (c + 1) * cs <= next_free_) quarantine(c * cs);
      }
      ready_frees_.pop_back();
    }
    if (closing_) return;
    stage_ = 1;
    run_stage();
  }

  // At close (the reactor has stopped): the same stages, with plain
  // synchronous calls, so a clean stop loses nothing written.
  void flush_at_close() noexcept {
    closing_ = true;
    count_step_sync_ = true;
    count_step();  // with closing_, stops before the stages
    const int fd = open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    bool ok = fd >= 0 && close_error_ == 0;
    for (unsigned stage = 1; ok && stage <= 4; ++stage) {
      for (auto& [offset, bytes] : collect_stage(stage)) {
        ok = ok && pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)) == static_cast<ssize_t>(bytes.size());
      }
      ok = ok && fdatasync(fd) == 0;
    }
    // The unlinks are durable now: their clusters are freed too.
    ready_frees_.insert(ready_frees_.end(), pending_frees_.begin(), pending_frees_.end());
    pending_frees_.clear();
    if (ok && !ready_frees_.empty()) {
      count_step();
      for (auto& [offset, bytes] : collect_stage(1)) {
        ok = ok && pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)) == static_cast<ssize_t>(bytes.size());
      }
      ok = ok && fdatasync(fd) == 0;
    }
    if (!ok) log_line("qcow2 " + path_ + ": metadata not written at close: " + std::strerror(errno));
    if (fd >= 0) close(fd);
  }

  // Clusters freed before this open (trims before a restart, QEMU's
  // discards, writes whose refcount never became durable before a crash)
  // have refcount 0 on disk and no reference: the refcounts are durable
  // before any reference (or the image is refused: dirty, corrupt). They
  // are found lazily, as QEMU does: a change that needs a cluster when no
  // free one is known scans the refcount blocks from the lowest group on,
  // one group at a time, and waits for the scan to find one or reach the
  // end of the file as it was at open. An image never written pays
  // nothing, a full one one block read per group (32768 clusters with
  // 64 KiB clusters), once. Nothing in flight can touch such a cluster
  // (no reference to it was ever read), so it is free at once; what this
  // session freed, took or quarantines has refcount 0 in memory too and is
  // left to its own path (scan_block).
  bool scan_ready() noexcept {
    while (free_runs_.empty() && scan_pos_ < scan_end_) {
      if (!scan_step()) return false;
    }
    return true;
  }
  // One group: true when scan_pos_ moved on, false while its block loads.
  bool scan_step() noexcept {
    const uint64_t cs = h_.cluster_size(), per_block = cs / 2;
    const uint64_t group = scan_pos_ / cs / per_block;
    const uint64_t block = group < rt_.size() ? rt_[group] : 0;
    if (block == 0) {  // no block: nothing in the group is counted, so nothing is taken from it
      scan_pos_ = std::min(scan_end_, (group + 1) * per_block * cs);
      return true;
    }
    RefBlock* b = refblock(block, true);
    if (!b) return false;
    scan_block(*b);
    return true;
  }
  void scan_loaded(uint64_t offset, int rc) noexcept {
    auto it = refblocks_.find(offset);
    if (rc < 0 || it == refblocks_.end() || !it->second.loaded) {
      log_line("qcow2 " + path_ + ": refcount block at " + std::to_string(offset) +
               " not read: clusters freed before the open are not reused");
      scan_pos_ = scan_end_;
    } else {
      scan_block(it->second);
      // Read for the scan alone: not kept (a scan of a large image would
      // otherwise hold every block until the next flush). One a flush
      // reads or writes stays, and the last group's, as finish_flush keeps it.
      const uint64_t last = next_free_ / h_.cluster_size() / (h_.cluster_size() / 2);
      const bool last_group = last < rt_.size() && rt_[last] == offset;
      if (!it->second.dirty && !flushing_ && !count_waiting_ && !last_group) refblocks_.erase(it);
    }
    std::vector<Job*> waiters;
    waiters.swap(scan_waiters_);
    for (Job* job : waiters) plan(*job);
  }
  void scan_block(const RefBlock& b) {
    const uint64_t cs = h_.cluster_size(), per_block = cs / 2;
    const uint64_t end = std::min(scan_end_, (scan_pos_ / cs / per_block + 1) * per_block * cs);
    std::unordered_set<uint64_t> ours;  // refcount 0 in memory, known to this session
    bool ours_made = false;
    for (; scan_pos_ < end; scan_pos_ += cs) {
      if (b.counts[scan_pos_ / cs % per_block] != 0) continue;
      if (!ours_made) {
        for (const auto& [epoch, offset] : quarantine_) ours.insert(offset);
        for (uint64_t offset : reused_) ours.insert(offset);
        ours_made = true;
      }
      if (ours.count(scan_pos_) || in_free_run(scan_pos_)) continue;
      add_free(scan_pos_);
    }
  }
  bool in_free_run(uint64_t offset) const noexcept {
    auto it = free_runs_.upper_bound(offset);
    if (it == free_runs_.begin()) return false;
    --it;
    return offset < it->first + it->second;
  }

  // The block at offset if loaded; else starts its load, or joins the one
  // under way (the scan and a flush may want the same block), and returns
  // nullptr: count_step, or for the scan scan_loaded, runs when it is in.
  RefBlock* refblock(uint64_t offset, bool for_scan = false) noexcept {
    RefBlock& b = refblocks_[offset];
    if (b.loaded) return &b;
    if (count_step_sync_ && !for_scan) {  // at close
      std::vector<uint8_t> raw(h_.cluster_size());
      if (pread(meta_fd_, raw.data(), raw.size(), static_cast<off_t>(offset)) != static_cast<ssize_t>(raw.size())) {
        close_error_ = EIO;
        b.counts.assign(h_.cluster_size() / 2, 0);
      } else {
        decode_refblock(b, raw.data());
      }
      b.loaded = true;
      return &b;
    }
    bool& waiting = for_scan ? scan_loading_ : count_waiting_;
    if (waiting) return nullptr;
    waiting = true;
    auto loaded = [this, for_scan, offset](int rc) {
      if (for_scan) {
        scan_loading_ = false;
        return scan_loaded(offset, rc);
      }
      count_waiting_ = false;
      rc < 0 ? flush_failed(rc) : count_step();
    };
    if (offset % h_.cluster_size() || offset + h_.cluster_size() > file_end()) {
      corrupt("refcount block at " + std::to_string(offset) + " is not a cluster of the file");
      reactor_->defer([loaded] { loaded(-EIO); });
      return nullptr;
    }
    const bool under_way = !b.waiters.empty();
    b.waiters.push_back(std::move(loaded));
    if (under_way) return nullptr;
    auto* buffer = static_cast<uint8_t*>(aligned_alloc_or_null(h_.cluster_size()));
    unbilled_ += IoOp::DeviceIo{1, 0, 0, h_.cluster_size(), 0};
    SubOp* s = take_sub(nullptr, SubOp::Kind::kRefblock);
    s->offset = offset;
    s->length = static_cast<uint32_t>(h_.cluster_size());
    s->buffer = buffer;
    s->table = offset;
    file_->submit(*reactor_, *s);
    return nullptr;
  }

  void refblock_loaded(SubOp& sub, int32_t result) noexcept {
    RefBlock& b = refblocks_[sub.table];
    uint8_t* buffer = sub.buffer;
    release(sub);
    if (result >= 0) decode_refblock(b, buffer);
    free(buffer);
    std::vector<Callback> waiters;
    waiters.swap(b.waiters);
    for (Callback& w : waiters) w(result < 0 ? result : 0);
  }

  void decode_refblock(RefBlock& b, const uint8_t* raw) {
    b.counts.resize(h_.cluster_size() / 2);
    for (size_t i = 0; i < b.counts.size(); ++i) b.counts[i] = static_cast<uint16_t>((raw[2 * i] << 8) | raw[2 * i + 1]);
    b.loaded = true;
  }

  // A table for group `group` and more: a new one after the end of the
  // file, the old one freed once the header names the new one.
  void grow_refcount_table(uint64_t group) noexcept {
    const uint64_t cs = h_.cluster_size();
    uint64_t entries = std::max<uint64_t>(rt_.size() * 2, group + 1) + 16;
    const uint64_t clusters = (entries * 8 + cs - 1) / cs;
    entries = clusters * cs / 8;
    pending_frees_.push_back({rt_offset_, rt_clusters_ * cs});
    rt_offset_ = take_clusters(clusters);
    rt_clusters_ = clusters;
    rt_.resize(entries);
    rt_moved_ = true;
    for (uint64_t i = 0; i < clusters; ++i) rt_dirty_.insert(i);
  }

  // Stages 1-4 (see the top): the writes of a stage, then a sync.
  void run_stage() noexcept {
    for (; stage_ <= 4; ++stage_) {
      // Data written before the flush is durable before an L2 entry names it.
      if (stage_ == 3 && !synced_ && dirty_tables_) return sync(3);
      std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes = collect_stage(stage_);
      if (writes.empty()) continue;
      stage_pending_ = writes.size();
      for (auto& [offset, bytes] : writes) {
        SubOp* s = take_sub(nullptr, SubOp::Kind::kMeta);
        auto* buffer = static_cast<uint8_t*>(aligned_alloc_or_null(bytes.size()));
        unbilled_ += IoOp::DeviceIo{0, 1, 0, 0, bytes.size()};
        std::memcpy(buffer, bytes.data(), bytes.size());
        s->op = Op::kWrite;
        s->offset = offset;
        s->length = static_cast<uint32_t>(bytes.size());
        s->buffer = buffer;
        file_->submit(*reactor_, *s);
      }
      return;  // meta_done goes on
    }
    if (!synced_) return sync(5);
    finish_flush(flush_error_);
  }

  void sync(uint8_t next_stage) noexcept {
    stage_ = next_stage;
    stage_pending_ = 1;
    synced_ = true;
    ++unbilled_.syncs;
    SubOp* s = take_sub(nullptr, SubOp::Kind::kMeta);
    s->op = Op::kFlush;
    s->buffer = nullptr;
    s->offset = 0;
    s->length = 0;
    file_->submit(*reactor_, *s);
  }

  void meta_done(SubOp& sub, int32_t result) noexcept {
    const bool was_sync = sub.op == Op::kFlush;
    free(sub.buffer);
    release(sub);
    if (result < 0 && flush_error_ == 0) flush_error_ = result;
    if (--stage_pending_ > 0) return;
    if (flush_error_) return flush_failed(flush_error_);
    if (was_sync) {
      if (stage_ > 4) return finish_flush(0);
      return run_stage();
    }
    sync(static_cast<uint8_t>(stage_ + 1));
  }

  // The writes of a stage, taken out of the dirty sets.
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> collect_stage(unsigned stage) {
    const uint64_t cs = h_.cluster_size();
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes;
    switch (stage) {
      case 1:
        for (auto& [offset, b] : refblocks_) {
          if (!b.dirty) continue;
          std::vector<uint8_t> bytes(cs);
          for (size_t i = 0; i < b.counts.size(); ++i) {
            bytes[2 * i] = static_cast<uint8_t>(b.counts[i] >> 8);
            bytes[2 * i + 1] = static_cast<uint8_t>(b.counts[i]);
          }
          b.dirty = false;
          writes.emplace_back(offset, std::move(bytes));
        }
        break;
      case 2:
        for (uint64_t i : rt_dirty_) {
          std::vector<uint8_t> bytes(cs);
          for (uint64_t e = 0; e < cs / 8 && i * cs / 8 + e < rt_.size(); ++e) {
            qcow2::store_be64(bytes.data() + e * 8, rt_[i * cs / 8 + e]);
          }
          writes.emplace_back(rt_offset_ + i * cs, std::move(bytes));
        }
        rt_dirty_.clear();
        break;
      case 3:
        for (auto& [offset, t] : tables_) {
          if (!t.dirty) continue;
          std::vector<uint8_t> bytes(cs);
          for (size_t i = 0; i < t.entries.size(); ++i) qcow2::store_be64(bytes.data() + i * 8, t.entries[i]);
          t.dirty = false;
          --dirty_tables_;
          writes.emplace_back(offset, std::move(bytes));
        }
        if (rt_moved_) {
          std::vector<uint8_t> sector(head_.begin(), head_.begin() + 512);
          qcow2::store_be64(sector.data() + 48, rt_offset_);
          for (int i = 0; i < 4; ++i) sector[56 + i] = static_cast<uint8_t>(rt_clusters_ >> (24 - 8 * i));
          std::copy(sector.begin(), sector.end(), head_.begin());
          rt_moved_ = false;
          writes.emplace_back(0, std::move(sector));
        }
        break;
      case 4:
        for (uint64_t chunk : l1_dirty_) {
          const uint64_t first = chunk * 64, n = std::min<uint64_t>(64, l1_.size() - first);
          std::vector<uint8_t> bytes(n * 8);
          for (uint64_t i = 0; i < n; ++i) qcow2::store_be64(bytes.data() + i * 8, l1_[first + i]);
          writes.emplace_back(h_.l1_table_offset + first * 8, std::move(bytes));
        }
        l1_dirty_.clear();
        break;
    }
    return writes;
  }

  // A metadata write failed: what was taken out of the dirty sets is
  // dirty again (everything is: a retry writes it all), the waiters fail.
  void redirty_all() noexcept {
    for (auto& [offset, b] : refblocks_) b.dirty = b.dirty || b.loaded;
    for (uint64_t i = 0; i < rt_clusters_; ++i) rt_dirty_.insert(i);
    for (auto& [offset, t] : tables_) {
      if (t.loaded && !t.dirty) mark_dirty(t);
    }
    for (uint64_t i = 0; i < (l1_.size() + 63) / 64; ++i) l1_dirty_.insert(i);
    // The header too, if the table ever moved (writing it again is harmless).
    rt_moved_ = rt_moved_ || rt_offset_ != h_.refcount_table_offset;
  }

  void flush_failed(int rc) noexcept {
    redirty_all();
    log_line("qcow2 " + path_ + ": metadata write failed: " + std::strerror(-rc));
    finish_flush(rc);
  }

  void finish_flush(int rc) noexcept {
    if (rc == 0) {
      // The unlinks this flush made durable: their clusters may be freed.
      ready_frees_.insert(ready_frees_.end(), pending_frees_.begin(), pending_frees_.begin() + frees_at_start_);
      pending_frees_.erase(pending_frees_.begin(), pending_frees_.begin() + frees_at_start_);
      // Clean refcount blocks other than the last group's are dropped.
      const uint64_t last = (next_free_ / h_.cluster_size()) / (h_.cluster_size() / 2);
      for (auto it = refblocks_.begin(); it != refblocks_.end();) {
        const bool keep = it->second.dirty || !it->second.waiters.empty() ||
                          (last < rt_.size() && rt_[last] == it->first);
        it = keep ? std::next(it) : refblocks_.erase(it);
      }
    }
    flushing_ = false;
    std::vector<Callback> done;
    done.swap(flush_waiters_);
    flush_waiters_.swap(next_waiters_);
    std::vector<SubOp*> links;
    links.swap(deferred_links_);
    for (SubOp* s : links) link(*s);
    for (Callback& d : done) d(rc);
    if (!flushing_ && !flush_waiters_.empty()) {
      std::vector<Callback> waiting;
      waiting.swap(flush_waiters_);
      flush(nullptr);
      for (Callback& w : waiting) flush_waiters_.push_back(std::move(w));
    }
  }

  // --- block status ----------------------------------------------------

  static void append(std::vector<Extent>& out, size_t first, uint64_t length, uint32_t flags) {
    if (out.size() > first && out.back().flags == flags) {
      out.back().length += length;
    } else {
      out.push_back({length, flags});
    }
  }

  // Unallocated here: what the backing chain says, zeroes past its end.
  void backing_status(uint64_t pos, uint64_t end, std::vector<Extent>& out, size_t first) noexcept {
    const uint64_t from_backing = pos >= backing_size_ ? 0 : std::min<uint64_t>(end, backing_size_) - pos;
    if (from_backing) {
      std::vector<Extent> below;
      if (backing_->block_status(pos, static_cast<uint32_t>(from_backing), below) < 0 || below.empty()) {
        below = {{from_backing, 0}};
      }
      uint64_t covered = 0;
      for (const Extent& e : below) {
        const uint64_t length = std::min(e.length, from_backing - covered);
        append(out, first, length, e.flags);
        covered += length;
        if (covered == from_backing) break;
      }
      if (covered < from_backing) append(out, first, from_backing - covered, 0);
    }
    if (pos + from_backing < end) append(out, first, end - pos - from_backing, kExtentHole | kExtentZero);
  }

  void corrupt(const std::string& why) { corrupt_log_.log("qcow2 " + path_ + ": corrupt image: " + why); }

  std::string path_;
  Header h_;
  std::vector<uint8_t> head_;
  std::vector<uint64_t> l1_;  // host order
  SparseTable rt_;  // the refcount table
  std::unique_ptr<Backend> file_;
  int meta_fd_;
  uint64_t file_size_;
  std::shared_ptr<Backend> backing_;
  uint64_t backing_size_;
  uint64_t max_tables_;
  bool writable_;
  bool chain_in_memory_;  // the file and the backing chain are memory-speed
  Reactor* reactor_ = nullptr;
  std::unordered_map<uint64_t, Table> tables_;
  std::list<uint64_t> lru_;
  uint64_t dirty_tables_ = 0;
  std::vector<std::unique_ptr<Job>> jobs_;
  std::vector<Job*> free_jobs_;
  std::vector<std::unique_ptr<SubOp>> subs_;
  std::vector<SubOp*> free_subs_;
  uint8_t* compressed_cluster_ = nullptr;
  uint64_t compressed_host_ = 0;
  uint8_t* zeroes_ = nullptr;  // one cluster
  // Writes:
  std::unordered_set<uint64_t> busy_;  // guest clusters being allocated or relinked
  std::vector<Job*> busy_waiters_;
  uint64_t next_free_ = 0;    // allocation: the end of the file, in clusters
  uint64_t counted_end_ = 0;  // clusters below have their refcount in memory
  std::unordered_map<uint64_t, RefBlock> refblocks_;
  std::set<uint64_t> rt_dirty_;  // refcount table clusters
  uint64_t rt_offset_ = 0, rt_clusters_ = 0;
  bool rt_moved_ = false;
  std::set<uint64_t> l1_dirty_;  // 64-entry chunks
  std::vector<Extent64> pending_frees_;  // unlinked; freed after the next flush
  std::vector<Extent64> ready_frees_;    // their unlink is durable
  std::map<uint64_t, uint64_t> free_runs_;  // refcount 0: offset -> bytes, taken again first
  std::vector<uint64_t> reused_;            // taken from free_runs_, not counted yet
  uint64_t scan_pos_ = 0, scan_end_ = 0;    // the refcount scan (scan_ready): next cluster, end at open
  std::vector<Job*> scan_waiters_;
  bool scan_loading_ = false, count_waiting_ = false;  // a refcount block load is awaited by the scan, count_step
  std::deque<std::pair<uint64_t, uint64_t>> quarantine_;  // (epoch freed, offset): see data_started
  uint64_t epoch_ = 0;
  uint32_t data_inflight_[2] = {0, 0};
  size_t frees_at_start_ = 0;
  // The flush in progress:
  bool flushing_ = false;
  bool synced_ = false;
  unsigned stage_ = 0;
  size_t stage_pending_ = 0;
  int flush_error_ = 0;
  std::vector<Callback> flush_waiters_, next_waiters_;
  std::vector<SubOp*> deferred_links_;
  bool closing_ = false, count_step_sync_ = false;
  int close_error_ = 0;
  IoOp::DeviceIo unbilled_;  // flush I/O not charged to a request yet (bill)
  RateLimitedLog corrupt_log_;
};

void SubOp::finish(int32_t result) noexcept { owner->sub_done(*this, result); }

}  // namespace

std::unique_ptr<Backend> make_qcow2_backend(Qcow2Parts parts) {
  return std::make_unique<Qcow2Backend>(std::move(parts));
}

}  // namespace ioband::io
