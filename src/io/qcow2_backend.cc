// The qcow2 backend: a qcow2 image served through a raw backend of its file,
// with its backing chain under it (DESIGN.md: backends stack). The format's
// rules are in qcow2_format.{h,cc}; this file does the I/O.
//
// A read is cut at cluster boundaries and each piece goes where its L2
// entry says: to the image file (through the raw backend, so O_DIRECT,
// bounce buffers and the tmpfs path are the raw backend's), to the backing
// image (any Backend: qcow2 or raw, shared by every image on it), to
// zeroes, or through zlib for a compressed cluster. Neighbouring pieces of
// one kind are merged (contiguous host clusters are one read). An L2 table
// not in the cache is read on the ring and the requests that need it wait
// for it; nothing blocks the reactor except block_status, whose interface
// is synchronous: it preads a missing table (like the raw backend's
// lseek(SEEK_DATA), one small metadata read).
//
// Writes are not done yet: a qcow2 image is served read-only, and opening
// one writable is refused with a sentence saying so.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "io/image.h"
#include "io/log.h"
#include "io/qcow2_format.h"

namespace ioband::io {

namespace {

using qcow2::Header;
using qcow2::Mapping;

class Qcow2Backend;

// A client request in progress: the pieces planned so far and the first
// error. pending counts pieces on the storage, plus one while planning.
struct Job {
  Qcow2Backend* owner = nullptr;
  IoOp* op = nullptr;
  uint64_t next = 0;  // guest offset not planned yet
  uint32_t pending = 0;
  int32_t error = 0;
  bool in_submit = false;
};

// One storage operation of a piece, or of an L2 table load.
struct SubOp final : IoOp {
  enum class Kind : uint8_t { kData, kBacking, kCompressed, kTable } kind = Kind::kData;
  Qcow2Backend* owner = nullptr;
  Job* job = nullptr;
  uint64_t table = 0;       // kTable: its host offset
  uint8_t* target = nullptr;  // kCompressed: where the piece goes
  uint32_t skip = 0;          // kCompressed: offset of the piece in the cluster; kBacking: zero tail starts
  uint32_t piece = 0;         // kCompressed: length of the piece; kBacking: whole length wanted
  uint64_t host = 0;          // kCompressed: the cluster's descriptor offset (the cache key)
  void finish(int32_t result) noexcept override;
};

void* aligned_alloc_or_null(size_t bytes) {
  void* p = nullptr;
  return posix_memalign(&p, 4096, std::max<size_t>(bytes, 4096)) == 0 ? p : nullptr;
}

class Qcow2Backend final : public Backend {
 public:
  Qcow2Backend(std::string path, Header header, std::vector<uint64_t> l1, std::unique_ptr<Backend> file, int meta_fd,
               uint64_t file_size, std::shared_ptr<Backend> backing, uint64_t cache_bytes)
      : path_(std::move(path)),
        h_(std::move(header)),
        l1_(std::move(l1)),
        file_(std::move(file)),
        meta_fd_(meta_fd),
        file_size_(file_size),
        backing_(std::move(backing)),
        backing_size_(backing_ ? backing_->size() : 0),
        max_tables_(std::max<uint64_t>(2, cache_bytes / h_.cluster_size())) {}
  ~Qcow2Backend() override {
    close(meta_fd_);
    free(compressed_cluster_);
  }

  uint64_t size() const noexcept override { return h_.size; }
  BackendTraits traits() const noexcept override {
    BackendTraits t = file_->traits();
    t.read_only = true;
    t.can_trim = false;
    t.can_fast_zero = false;
    t.memory_speed = false;
    t.writes_consumed_below = 0;
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
    if (op.op != Op::kRead) {
      // The export is read-only (traits); the session refuses writes first.
      const int32_t result = op.op == Op::kFlush || op.op == Op::kCache ? 0 : -EROFS;
      reactor.defer([&op, result] { op.finish(result); });
      return;
    }
    Job* job = take_job();
    job->op = &op;
    job->next = op.offset;
    job->pending = 1;
    job->error = 0;
    job->in_submit = true;
    reactor_ = &reactor;
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
      // Whole clusters of one kind in a row are one extent.
      while (run_end < end) {
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
      case SubOp::Kind::kData: break;
      case SubOp::Kind::kBacking:
        if (result >= 0 && sub.skip < sub.piece) std::memset(sub.buffer + sub.skip, 0, sub.piece - sub.skip);
        break;
      case SubOp::Kind::kCompressed:
        if (result >= 0) {
          if (!compressed_cluster_) compressed_cluster_ = static_cast<uint8_t*>(aligned_alloc_or_null(h_.cluster_size()));
          std::string why = compressed_cluster_ ? qcow2::inflate_cluster(sub.buffer, sub.length, compressed_cluster_,
                                                                          h_.cluster_size())
                                                : "out of memory";
          if (why.empty()) {
            compressed_host_ = sub.host;
            std::memcpy(sub.target, compressed_cluster_ + sub.skip, sub.piece);
          } else {
            compressed_host_ = 0;
            corrupt("compressed cluster at " + std::to_string(sub.host) + ": " + why);
            result = -EIO;
          }
        }
        free(sub.buffer);
        break;
    }
    release(sub);
    if (result < 0 && job->error == 0) job->error = result;
    piece_done(*job);
  }

 private:
  // --- requests --------------------------------------------------------

  Job* take_job() {
    if (free_jobs_.empty()) {
      jobs_.push_back(std::make_unique<Job>());
      jobs_.back()->owner = this;
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
    return s;
  }
  void release(SubOp& sub) { free_subs_.push_back(&sub); }

  void piece_done(Job& job) noexcept {
    if (--job.pending > 0) return;
    IoOp& op = *job.op;
    const int32_t result = job.error ? job.error : static_cast<int32_t>(op.length);
    const bool deferred = job.in_submit;
    free_jobs_.push_back(&job);
    // The caller does not expect its op finished inside its own submit().
    if (deferred) {
      reactor_->defer([&op, result] { op.finish(result); });
    } else {
      op.finish(result);
    }
  }

  // Plans pieces from job.next on; stops (the job waits) at an L2 table not
  // in the cache, and resumes when it arrives.
  void plan(Job& job) noexcept {
    IoOp& op = *job.op;
    const uint64_t end = op.offset + op.length;
    const uint64_t cs = h_.cluster_size();
    while (job.next < end && job.error == 0) {
      const uint64_t pos = job.next;
      Mapping m;
      const int rc = lookup(pos, m, &job);
      if (rc == -EAGAIN) return;  // parked on a table load
      if (rc < 0) {
        job.error = rc;
        break;
      }
      // The run: this cluster and the following ones that continue it.
      uint64_t run_end = std::min<uint64_t>((pos | (cs - 1)) + 1, end);
      while (run_end < end && m.kind != Mapping::Kind::kCompressed) {
        Mapping n;
        if (lookup(run_end, n, nullptr) != 0 || n.kind != m.kind) break;
        if (m.kind == Mapping::Kind::kNormal && n.host != m.host + (run_end - (pos & ~(cs - 1)))) break;
        run_end = std::min<uint64_t>(run_end + cs, end);
      }
      uint8_t* buffer = op.buffer + (pos - op.offset);
      const uint32_t length = static_cast<uint32_t>(run_end - pos);
      switch (m.kind) {
        case Mapping::Kind::kZero: std::memset(buffer, 0, length); break;
        case Mapping::Kind::kUnallocated: read_backing(job, pos, buffer, length); break;
        case Mapping::Kind::kNormal: {
          SubOp* s = take_sub(&job, SubOp::Kind::kData);
          s->offset = m.host + (pos & (cs - 1));
          s->length = length;
          s->buffer = buffer;
          s->flags = op.flags & kSequential;
          ++job.pending;
          file_->submit(*reactor_, *s);
          break;
        }
        case Mapping::Kind::kCompressed: read_compressed(job, pos, m, buffer, length); break;
      }
      job.next = run_end;
    }
    piece_done(job);
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
    SubOp* s = take_sub(&job, SubOp::Kind::kCompressed);
    s->offset = m.host;
    s->length = static_cast<uint32_t>(compressed);
    s->buffer = in;
    s->target = buffer;
    s->skip = in_cluster;
    s->piece = length;
    s->host = m.host;
    ++job.pending;
    file_->submit(*reactor_, *s);
  }

  // --- the map ---------------------------------------------------------

  struct Table {
    std::vector<uint64_t> entries;  // host order; empty while loading
    std::vector<Job*> waiters;
    std::list<uint64_t>::iterator lru;
    bool loaded = false;
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
      if (it == tables_.end()) return start_load(table_offset, job);
      it->second.waiters.push_back(job);
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
    std::string error;
    table_offset = qcow2::decode_l1(l1_[index], h_, error);
    if (!error.empty()) {
      corrupt(error);
      return -EIO;
    }
    if (table_offset == 0) return 0;
    if (table_offset > file_size_ - h_.cluster_size() || file_size_ < h_.cluster_size()) {
      corrupt("L2 table at " + std::to_string(table_offset) + " lies past the end of the file");
      return -EIO;
    }
    return 1;
  }

  int entry_at(const std::vector<uint64_t>& entries, uint64_t pos, Mapping& m) noexcept {
    const uint64_t entry = entries[(pos >> h_.cluster_bits) & (h_.l2_entries() - 1)];
    if (std::string why = qcow2::decode_l2(entry, h_, m); !why.empty()) {
      corrupt(why);
      return -EIO;
    }
    if ((m.kind == Mapping::Kind::kNormal && (m.host >= file_size_ || file_size_ - m.host < h_.cluster_size())) ||
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

  // Least recently used first; tables being read are not in the way.
  void evict() noexcept {
    auto it = lru_.end();
    while (tables_.size() >= max_tables_ && it != lru_.begin()) {
      --it;
      auto t = tables_.find(*it);
      if (!t->second.loaded) continue;
      it = lru_.erase(it);
      tables_.erase(t);
    }
  }

  void touch(Table& t) noexcept { lru_.splice(lru_.begin(), lru_, t.lru); }

  void fill(std::vector<uint64_t>& entries, const uint8_t* raw) {
    entries.resize(h_.l2_entries());
    for (uint64_t i = 0; i < entries.size(); ++i) entries[i] = qcow2::load_be64(raw + i * 8);
  }

  // Reads the table on the ring; job waits for it. -EAGAIN, or -ENOMEM.
  int start_load(uint64_t offset, Job* job) noexcept {
    auto* buffer = static_cast<uint8_t*>(aligned_alloc_or_null(h_.cluster_size()));
    if (!buffer) return -ENOMEM;
    auto it = insert_table(offset);
    it->second.waiters.push_back(job);  // before submit: the read may fail inside it
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
    if (it == tables_.end()) {  // cannot happen: a loading table is never evicted
      free(buffer);
      return;
    }
    if (result < 0) {
      std::vector<Job*> waiters;
      waiters.swap(it->second.waiters);
      lru_.erase(it->second.lru);
      tables_.erase(it);
      free(buffer);
      for (Job* job : waiters) {
        job->error = result;
        piece_done(*job);
      }
      return;
    }
    fill(it->second.entries, buffer);
    it->second.loaded = true;
    free(buffer);
    wake(it->second);
  }

  void wake(Table& t) noexcept {
    std::vector<Job*> waiters;
    waiters.swap(t.waiters);
    for (Job* job : waiters) plan(*job);  // may evict t: not used after
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
  std::vector<uint64_t> l1_;  // host order
  std::unique_ptr<Backend> file_;
  int meta_fd_;
  uint64_t file_size_;
  std::shared_ptr<Backend> backing_;
  uint64_t backing_size_;
  uint64_t max_tables_;
  Reactor* reactor_ = nullptr;
  std::unordered_map<uint64_t, Table> tables_;
  std::list<uint64_t> lru_;
  std::vector<std::unique_ptr<Job>> jobs_;
  std::vector<Job*> free_jobs_;
  std::vector<std::unique_ptr<SubOp>> subs_;
  std::vector<SubOp*> free_subs_;
  uint8_t* compressed_cluster_ = nullptr;
  uint64_t compressed_host_ = 0;
  RateLimitedLog corrupt_log_;
};

void SubOp::finish(int32_t result) noexcept { owner->sub_done(*this, result); }

// --- opening -------------------------------------------------------------

// A backing file per (device, inode, share key), while some image uses it.
struct Shared {
  std::mutex mutex;
  std::map<std::tuple<dev_t, ino_t, int>, std::weak_ptr<Backend>> backings;
};
Shared& shared() {
  static Shared s;
  return s;
}

// The files of the chain being opened, by identity: a loop is refused.
using Chain = std::vector<std::pair<dev_t, ino_t>>;

constexpr size_t kMaxChainDepth = 256;

std::unique_ptr<Backend> open_image(const ImageOptions& options, Chain& chain, std::string& error,
                                    std::string* format_out);

std::string resolve_backing(const std::string& overlay, const std::string& name) {
  if (name.front() == '/') return name;
  const auto slash = overlay.rfind('/');
  return slash == std::string::npos ? name : overlay.substr(0, slash + 1) + name;
}

std::shared_ptr<Backend> open_backing(const ImageOptions& overlay, const Header& h, Chain& chain, std::string& error) {
  const std::string path = resolve_backing(overlay.path, h.backing_file);
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) {
    error = "backing file " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  for (const auto& [dev, ino] : chain) {
    if (dev == st.st_dev && ino == st.st_ino) {
      error = "backing chain loop: " + path + " is already in the chain";
      return nullptr;
    }
  }
  if (chain.size() >= kMaxChainDepth) {
    error = "backing chain deeper than " + std::to_string(kMaxChainDepth) + " images at " + path;
    return nullptr;
  }
  Shared& s = shared();
  const auto key = std::make_tuple(st.st_dev, st.st_ino, overlay.share_key);
  {
    std::lock_guard lock(s.mutex);
    if (auto found = s.backings[key].lock()) return found;
  }
  ImageOptions backing = overlay;
  backing.path = path;
  backing.format = h.backing_format;  // "" (the image does not say): detected, read-only
  backing.size = 0;
  backing.read_only = true;
  std::string why;
  std::shared_ptr<Backend> opened = open_image(backing, chain, why, nullptr);
  if (!opened) {
    error = why;
    return nullptr;
  }
  std::lock_guard lock(s.mutex);
  std::weak_ptr<Backend>& slot = s.backings[key];
  if (auto raced = slot.lock()) return raced;
  slot = opened;
  return opened;
}

std::unique_ptr<Backend> open_qcow2(const ImageOptions& options, Chain& chain, std::string& error) {
  const std::string& path = options.path;
  auto fail = [&](const std::string& why) -> std::unique_ptr<Backend> {
    error = path + ": " + why;
    return nullptr;
  };
  if (!options.read_only) {
    return fail("writing qcow2 images is not supported yet: export it readonly");
  }
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return fail(std::strerror(errno));
  struct stat st{};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return fail("a qcow2 image must be a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  std::vector<uint8_t> head(std::min<uint64_t>(file_size, 1u << qcow2::kMaxClusterBits));
  if (pread(fd, head.data(), head.size(), 0) != static_cast<ssize_t>(head.size())) {
    close(fd);
    return fail("cannot read the header");
  }
  Header h;
  std::string why = qcow2::parse_header(head.data(), head.size(), file_size, h);
  if (why.empty()) why = qcow2::check_features(h, !options.read_only);
  if (!why.empty()) {
    close(fd);
    return fail(why);
  }
  std::vector<uint8_t> raw_l1(uint64_t{h.l1_size} * 8);
  if (!raw_l1.empty() &&
      pread(fd, raw_l1.data(), raw_l1.size(), static_cast<off_t>(h.l1_table_offset)) != static_cast<ssize_t>(raw_l1.size())) {
    close(fd);
    return fail("cannot read the L1 table");
  }
  std::vector<uint64_t> l1(h.l1_size);
  for (size_t i = 0; i < l1.size(); ++i) l1[i] = qcow2::load_be64(raw_l1.data() + i * 8);

  chain.push_back({st.st_dev, st.st_ino});
  std::shared_ptr<Backend> backing;
  if (!h.backing_file.empty()) {
    backing = open_backing(options, h, chain, error);
    if (!backing) {
      close(fd);
      error = path + ": " + error;
      return nullptr;
    }
  }
  RawOptions raw;
  raw.path = path;
  raw.read_only = options.read_only;
  raw.direct = options.direct;
  raw.lock = options.lock;
  std::string raw_error;
  std::unique_ptr<Backend> file = open_raw_backend(raw, raw_error);
  if (!file) {
    close(fd);
    error = raw_error;
    return nullptr;
  }
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return std::make_unique<Qcow2Backend>(path, std::move(h), std::move(l1), std::move(file), fd, file_size,
                                        std::move(backing), options.cache_bytes);
}

// True if path starts with the qcow2 magic; false with error set if it
// cannot be read.
bool starts_with_qcow2(const std::string& path, std::string& error) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    error = path + ": " + std::strerror(errno);
    return false;
  }
  struct stat st{};
  uint8_t head[4] = {};
  ssize_t n = 0;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) n = pread(fd, head, sizeof head, 0);
  close(fd);
  return n == 4 && qcow2::has_magic(head, 4);
}

// A raw image served by detection: no write may make it look like qcow2
// (see image.h).
class ProbedRawGuard final : public Backend {
 public:
  explicit ProbedRawGuard(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  uint64_t size() const noexcept override { return inner_->size(); }
  BackendTraits traits() const noexcept override { return inner_->traits(); }
  std::string describe() const override { return inner_->describe(); }
  void submit(Reactor& reactor, IoOp& op) noexcept override {
    if (op.op == Op::kWrite && op.offset == 0 && qcow2::has_magic(op.buffer, op.length)) {
      {
        if (!warned_) log_line("refused a write of the qcow2 magic to the first sector of a raw image served by "
                               "detection (" + inner_->describe() + "): use format=raw to allow it");
        warned_ = true;
        reactor.defer([&op] { op.finish(-EPERM); });
        return;
      }
    }
    inner_->submit(reactor, op);
  }
  void complete(Reactor& reactor, IoOp& op, int32_t result) noexcept override { inner_->complete(reactor, op, result); }
  int block_status(uint64_t offset, uint32_t length, std::vector<Extent>& out) noexcept override {
    return inner_->block_status(offset, length, out);
  }

 private:
  std::unique_ptr<Backend> inner_;
  bool warned_ = false;
};

std::unique_ptr<Backend> open_image(const ImageOptions& options, Chain& chain, std::string& error,
                                    std::string* format_out) {
  std::string format = options.format;
  const bool detected = format.empty();
  if (detected) {
    std::string why;  // an unreadable file: the raw backend says why below
    format = starts_with_qcow2(options.path, why) ? "qcow2" : "raw";
  }
  if (format_out) *format_out = format;
  if (format == "qcow2") return open_qcow2(options, chain, error);
  if (format != "raw") {
    error = options.path + ": unknown image format '" + format + "' (raw or qcow2)";
    return nullptr;
  }
  RawOptions raw;
  raw.path = options.path;
  raw.size = options.size;
  raw.read_only = options.read_only;
  raw.direct = options.direct;
  raw.lock = options.lock;
  std::unique_ptr<Backend> backend = open_raw_backend(raw, error);
  if (backend && detected && !options.read_only) return std::make_unique<ProbedRawGuard>(std::move(backend));
  return backend;
}

}  // namespace

std::string detect_format(const std::string& path, std::string& error) {
  error.clear();
  const bool qcow2 = starts_with_qcow2(path, error);
  return qcow2 ? "qcow2" : error.empty() ? "raw" : "";
}

std::unique_ptr<Backend> open_image_backend(const ImageOptions& options, std::string& error, std::string* format_out) {
  Chain chain;
  return open_image(options, chain, error, format_out);
}

}  // namespace ioband::io
