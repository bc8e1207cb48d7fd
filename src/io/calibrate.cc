#include "io/calibrate.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>

namespace ioband::io {

namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint32_t kSmallBlock = 4096;
constexpr uint32_t kLargeBlock = 1u << 20;
constexpr uint32_t kSmallDepth = 64;  // blk-iocost's coefficient script uses 64 as well
constexpr uint32_t kLargeDepth = 16;  // 16 MiB in flight
constexpr uint32_t kSweepDepths[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
constexpr uint32_t kMaxDepth = 256;
constexpr double kKneeShare = 0.95;
constexpr auto kStall = std::chrono::seconds(2);
// After a stall or an error, how long the requests still in flight are
// waited for before their buffers are given up (leaked, never reused).
constexpr auto kDrainLimit = std::chrono::seconds(10);
constexpr uint64_t kMinRegion = 16 * kMiB;
// With less allocated data than this in one run, reads go to the scratch
// file: a small region is answered by caches that a real guest's is not.
constexpr uint64_t kMinImageData = 256 * kMiB;
constexpr uint64_t kArenaBytes = uint64_t{kLargeDepth} * kLargeBlock;
static_assert(kArenaBytes >= uint64_t{kMaxDepth} * kSmallBlock);
constexpr uint64_t kPoolBytes = 16 * kMiB;  // in place: each of the two pools of read-back data
static_assert(kPoolBytes / kSmallBlock >= kSmallDepth && kPoolBytes / kLargeBlock >= kLargeDepth);
constexpr int kRounds = 8;
constexpr double kFillShare = 0.25;  // of the time, at most, to fill the scratch file
constexpr unsigned kMaxExtentSteps = 100000;

std::string errno_text(int error) { return std::strerror(error); }

std::string mib(uint64_t bytes) { return std::to_string(bytes / kMiB) + " MiB"; }

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

bool memory_file_system(int fd) {
  struct statfs fs {};
  return fstatfs(fd, &fs) == 0 && (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC);
}

// Where requests go: [base, base + length) of fd.
struct Region {
  int fd = -1;
  uint64_t base = 0;
  uint64_t length = 0;
};

// One kind of request the rounds measure.
struct Workload {
  Workload(const char* name, bool write, bool sequential, uint32_t block, uint32_t depth)
      : name(name), write(write), sequential(sequential), block(block), depth(depth) {}
  const char* name;  // the model's key, or "" for a sweep point
  bool write;
  bool sequential;
  uint32_t block;
  uint32_t depth;
  uint64_t cursor = 0;          // sequential: the next offset within the region; in place: the next pool entry
  std::vector<double> samples;  // requests/s per run
};

class Calibrator {
 public:
  Calibrator(const CalibrationOptions& options, const std::atomic<bool>& cancel)
      : options_(options), cancel_(cancel), random_(std::random_device{}()) {}
  ~Calibrator();

  CalibrationReport run();

 private:
  struct Plan {
    std::string what;  // "4 KiB random reads at depth 64", for messages
    int fd = -1;
    bool write = false;
    uint32_t block = 0;
    uint32_t depth = 0;
    // The n-th request of this plan, in slot `slot`: its offset and buffer.
    std::function<void(uint64_t n, uint32_t slot, uint64_t& offset, uint8_t*& buffer)> next;
    uint64_t max_requests = UINT64_MAX;
    Clock::time_point stop;        // no request is issued from here on
    Clock::time_point count_from;  // completions reaped in [count_from, stop) are counted
  };

  bool fail(std::string message) {
    if (report_.error.empty()) report_.error = std::move(message);
    return false;
  }
  bool open_target();
  bool choose_read_region();
  bool open_scratch();
  bool fill_scratch();
  bool read_pools();
  bool measure();
  bool run_workload(Workload& workload, Seconds slot);
  // Keeps plan.depth requests in flight until plan.stop or plan.max_requests,
  // then waits for the rest. counted: completions in the counting window;
  // completed: all of them. False (report_.error set) on an error, a stall
  // or a cancel.
  bool execute(const Plan& plan, uint64_t& counted, uint64_t& completed);
  void drain();
  void finish_model(std::vector<Workload>& sweep, std::vector<Workload>& figures);

  const CalibrationOptions& options_;
  const std::atomic<bool>& cancel_;
  std::mt19937_64 random_;
  CalibrationReport report_;
  Clock::time_point start_;
  Clock::time_point deadline_;

  io_uring ring_{};
  bool ring_ready_ = false;
  unsigned in_flight_ = 0;
  int image_fd_ = -1;      // reads (O_DIRECT where allowed)
  int write_fd_ = -1;      // the block device for writes in place (O_EXCL)
  int scratch_fd_ = -1;
  bool block_device_ = false;
  uint64_t size_ = 0;      // bytes of the image served
  std::string directory_;  // of the image: where the scratch file goes
  Region read_;
  Region write_;
  uint8_t* read_arena_ = nullptr;
  uint8_t* write_arena_ = nullptr;  // random bytes; in place: the two pools
  std::vector<uint64_t> random_pool_;  // in place: offsets of the random pool's blocks
  uint64_t sequential_pool_ = 0;       // in place: offset of the sequential pool
};

Calibrator::~Calibrator() {
  if (in_flight_ > 0) drain();
  const bool keep_buffers = in_flight_ > 0;  // the storage still owns them
  if (ring_ready_) io_uring_queue_exit(&ring_);
  if (!keep_buffers) {
    std::free(read_arena_);
    std::free(write_arena_);
  }
  for (int fd : {image_fd_, write_fd_, scratch_fd_}) {
    if (fd >= 0) ::close(fd);
  }
}

// Waits for the requests still in flight after an error, a stall or a cancel.
void Calibrator::drain() {
  const auto give_up = Clock::now() + kDrainLimit;
  while (in_flight_ > 0 && Clock::now() < give_up) {
    __kernel_timespec wait{0, 100'000'000};
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &wait, nullptr);
    if (rc < 0 && rc != -ETIME && rc != -EINTR) return;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) { ++seen; }
    io_uring_cq_advance(&ring_, seen);
    in_flight_ -= std::min(in_flight_, seen);
  }
}

CalibrationReport Calibrator::run() {
  start_ = Clock::now();
  // A twentieth held back: the last runs drain, and the answer is made, by
  // the time asked for.
  const double seconds = std::clamp(options_.seconds, kMinCalibrationSeconds, kMaxCalibrationSeconds);
  deadline_ = start_ + std::chrono::duration_cast<Clock::duration>(Seconds(0.95 * seconds));
  auto done = [&]() -> CalibrationReport {
    report_.seconds = Seconds(Clock::now() - start_).count();
    return report_;
  };
  if (const int rc = io_uring_queue_init(kMaxDepth, &ring_, 0); rc < 0) {
    fail("io_uring: " + errno_text(-rc));
    return done();
  }
  ring_ready_ = true;
  if (posix_memalign(reinterpret_cast<void**>(&read_arena_), 4096, kArenaBytes) != 0 ||
      posix_memalign(reinterpret_cast<void**>(&write_arena_), 4096, std::max(kArenaBytes, 2 * kPoolBytes)) != 0) {
    fail("out of memory for the I/O buffers");
    return done();
  }
  // Data that neither compresses nor deduplicates, as a guest's often is not.
  for (uint64_t i = 0; i < std::max(kArenaBytes, 2 * kPoolBytes) / 8; ++i) {
    const uint64_t word = random_();
    std::memcpy(write_arena_ + i * 8, &word, 8);
  }
  if (!open_target()) return done();
  if (block_device_) {
    if (!read_pools()) return done();
  } else {
    if (!open_scratch() || !fill_scratch() || !choose_read_region()) return done();
  }
  measure();
  return done();
}

bool Calibrator::open_target() {
  const std::string& path = options_.path;
  image_fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (image_fd_ < 0 && errno == EINVAL) {
    image_fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (image_fd_ >= 0) {
      report_.direct = false;
      report_.notes.push_back(path + " refused O_DIRECT: reads were measured through the page cache");
    }
  }
  if (image_fd_ < 0) return fail(path + ": " + errno_text(errno));
  struct stat st {};
  if (fstat(image_fd_, &st) != 0) return fail(path + ": " + errno_text(errno));
  uint64_t real_size = 0;
  if (S_ISBLK(st.st_mode)) {
    block_device_ = true;
    if (ioctl(image_fd_, BLKGETSIZE64, &real_size) != 0) {
      return fail(path + ": cannot read the device size: " + errno_text(errno));
    }
  } else if (S_ISREG(st.st_mode)) {
    real_size = static_cast<uint64_t>(st.st_size);
  } else {
    return fail(path + " is neither a regular file nor a block device");
  }
  size_ = options_.size ? std::min(options_.size, real_size) : real_size;
  if (!block_device_) {
    const auto slash = path.rfind('/');
    directory_ = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    if (memory_file_system(image_fd_)) {
      report_.notes.push_back(path + " is on a memory file system: the figures are memory speed, not a disk's");
    }
    return true;
  }

  // A block device: reads and writes in its first size_ bytes.
  const uint64_t length = size_ / kMiB * kMiB;
  if (length < 2 * kPoolBytes + kMinRegion) {
    return fail(path + " serves " + mib(size_) + "; calibration needs at least " + mib(2 * kPoolBytes + kMinRegion));
  }
  read_ = {image_fd_, 0, length};
  report_.notes.push_back("reads: block device " + path + ", its first " + mib(length));
  if (!options_.rewrite_in_place) {
    return fail(path + " is a block device: its writes can be measured only by rewriting data in place, "
                "which the caller did not allow");
  }
  // O_EXCL: refused while the device is mounted or claimed by another
  // driver, whose writes could race with ours.
  write_fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT | O_EXCL);
  if (write_fd_ < 0 && errno == EINVAL) write_fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_EXCL);
  if (write_fd_ < 0) {
    if (errno == EBUSY) {
      return fail(path + " is in use (mounted, or held by another driver), whose writes could race with the "
                  "writes in place");
    }
    return fail(path + ": cannot open it for writing: " + errno_text(errno));
  }
  write_ = {write_fd_, 0, length};
  return true;
}

// Reads on the image where it has enough allocated data in one run.
bool Calibrator::choose_read_region() {
  uint64_t best_start = 0, best_length = 0;
  uint64_t pos = 0;
  for (unsigned step = 0; step < kMaxExtentSteps && pos < size_; ++step) {
    const off_t data = lseek(image_fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0 || static_cast<uint64_t>(data) >= size_) break;  // ENXIO: no data after pos
    const off_t hole = lseek(image_fd_, data, SEEK_HOLE);
    const uint64_t end = hole < 0 ? size_ : std::min<uint64_t>(static_cast<uint64_t>(hole), size_);
    // Whole 4 KiB blocks only.
    const uint64_t first = (static_cast<uint64_t>(data) + kSmallBlock - 1) / kSmallBlock * kSmallBlock;
    const uint64_t last = end / kSmallBlock * kSmallBlock;
    if (last > first && last - first > best_length) {
      best_start = first;
      best_length = last - first;
    }
    if (end <= pos) break;
    pos = end;
  }
  if (best_length >= kMinImageData) {
    read_ = {image_fd_, best_start, best_length};
    report_.notes.push_back("reads: the image " + options_.path + ", " + mib(best_length) + " of data from offset " +
                            std::to_string(best_start));
  } else {
    read_ = write_;
    report_.notes.push_back("reads: the scratch file, because the image has " + mib(best_length) +
                            " of data in one run (a hole reads from no storage; at least " + mib(kMinImageData) +
                            " are needed)");
  }
  return true;
}

bool Calibrator::open_scratch() {
  struct statvfs vfs {};
  if (statvfs(directory_.c_str(), &vfs) != 0) return fail(directory_ + ": " + errno_text(errno));
  const uint64_t available = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  const uint64_t bytes = std::min(options_.scratch_bytes, available / 2) / kMiB * kMiB;
  if (bytes < kMinRegion) {
    return fail("only " + mib(available) + " free in " + directory_ + "; the scratch file that writes are measured on "
                "needs " + mib(2 * kMinRegion));
  }
  bool direct = true;
  auto open_unnamed = [&](int flags) {
    return ::open(directory_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC | flags, 0600);
  };
  scratch_fd_ = open_unnamed(O_DIRECT);
  if (scratch_fd_ < 0 && errno == EINVAL) {
    // EINVAL: O_DIRECT refused, or O_TMPFILE unknown to this file system.
    scratch_fd_ = open_unnamed(0);
    if (scratch_fd_ >= 0) direct = false;
  }
  if (scratch_fd_ < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    // No O_TMPFILE: a named file, unlinked at once.
    for (int attempt = 0; attempt < 100 && scratch_fd_ < 0; ++attempt) {
      char name[64];
      std::snprintf(name, sizeof name, "/.ioband-calibrate.%d.%08x", static_cast<int>(getpid()),
                    static_cast<unsigned>(random_()));
      const std::string file = directory_ + name;
      direct = true;
      scratch_fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0600);
      if (scratch_fd_ < 0 && errno == EINVAL) {
        direct = false;
        scratch_fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      }
      if (scratch_fd_ >= 0) {
        ::unlink(file.c_str());
      } else if (errno != EEXIST) {
        break;
      }
    }
  }
  if (scratch_fd_ < 0) {
    return fail("cannot create a scratch file in " + directory_ + " (writes are measured only there): " +
                errno_text(errno));
  }
  if (!direct) {
    report_.direct = false;
    report_.notes.push_back("the file system of " + directory_ +
                            " refused O_DIRECT: writes were measured through the page cache");
  }
  // Reserve the space first: running out of it shows here, not halfway.
  if (fallocate(scratch_fd_, 0, 0, static_cast<off_t>(bytes)) != 0) {
    if (errno == ENOSPC) return fail("scratch file in " + directory_ + ": " + errno_text(errno));
    if (ftruncate(scratch_fd_, static_cast<off_t>(bytes)) != 0) {
      return fail("scratch file in " + directory_ + ": " + errno_text(errno));
    }
  }
  write_ = {scratch_fd_, 0, bytes};
  return true;
}

// Writes data over the scratch file, so that the measured writes overwrite
// (as most of a guest's do) and reads there read from the storage.
bool Calibrator::fill_scratch() {
  const auto limit = start_ + std::chrono::duration_cast<Clock::duration>(
                                  Seconds(kFillShare * Seconds(deadline_ - start_).count()));
  Plan plan;
  plan.what = "filling the scratch file";
  plan.fd = scratch_fd_;
  plan.write = true;
  plan.block = kLargeBlock;
  plan.depth = kLargeDepth;
  plan.max_requests = write_.length / kLargeBlock;
  plan.stop = limit;
  plan.count_from = start_;
  plan.next = [&](uint64_t n, uint32_t slot, uint64_t& offset, uint8_t*& buffer) {
    offset = n * kLargeBlock;
    buffer = write_arena_ + uint64_t{slot} * kLargeBlock;
  };
  uint64_t counted = 0, written = 0;
  if (!execute(plan, counted, written)) return false;
  // Completions come in any order, but every issued request completed:
  // the first `written` MiB are data.
  const uint64_t filled = written * kLargeBlock;
  if (filled < kMinRegion) {
    return fail("the storage wrote only " + mib(filled) + " of the scratch file in " +
                std::to_string(Seconds(limit - start_).count()) + " s; too slow to calibrate in the time given");
  }
  (void)fdatasync(scratch_fd_);
  write_.length = filled;
  report_.notes.push_back("writes: a scratch file of " + mib(filled) + " in " + directory_ +
                          " (unnamed, gone when calibration ends), filled with data first");
  if (memory_file_system(scratch_fd_) && !memory_file_system(image_fd_)) {
    report_.notes.push_back(directory_ + " is on a memory file system: the write figures are memory speed");
  }
  return true;
}

// In place: reads the data the writes will write back (a pool of random
// blocks and a pool of contiguous data) before any write.
bool Calibrator::read_pools() {
  const uint64_t blocks = kPoolBytes / kSmallBlock;
  random_pool_.resize(blocks);
  const uint64_t slots = (write_.length - kPoolBytes) / kSmallBlock;
  for (uint64_t& offset : random_pool_) offset = random_() % slots * kSmallBlock;
  // The contiguous pool away from the device's first blocks (partition
  // tables, superblocks): identical data, but no need to touch them.
  sequential_pool_ = (write_.length / 2) / kMiB * kMiB;
  uint8_t* random_data = write_arena_;
  uint8_t* sequential_data = write_arena_ + kPoolBytes;

  Plan plan;
  plan.what = "reading the data to write back";
  plan.fd = image_fd_;
  plan.block = kSmallBlock;
  plan.depth = kSmallDepth;
  plan.max_requests = blocks;
  plan.stop = deadline_;
  plan.count_from = start_;
  plan.next = [&](uint64_t n, uint32_t, uint64_t& offset, uint8_t*& buffer) {
    offset = random_pool_[n];
    buffer = random_data + n * kSmallBlock;
  };
  uint64_t counted = 0, done = 0;
  if (!execute(plan, counted, done)) return false;
  plan.block = kLargeBlock;
  plan.depth = kLargeDepth;
  plan.max_requests = kPoolBytes / kLargeBlock;
  plan.next = [&](uint64_t n, uint32_t, uint64_t& offset, uint8_t*& buffer) {
    offset = sequential_pool_ + n * kLargeBlock;
    buffer = sequential_data + n * kLargeBlock;
  };
  uint64_t done_sequential = 0;
  if (!execute(plan, counted, done_sequential)) return false;
  if (done != blocks || done_sequential != kPoolBytes / kLargeBlock) {
    return fail(options_.path + ": the data to write back could not be read in the time given");
  }
  report_.notes.push_back("writes: block device " + options_.path + ", in place: " + mib(kPoolBytes) +
                          " of random 4 KiB blocks and " + mib(kPoolBytes) + " from offset " +
                          std::to_string(sequential_pool_) + ", each written back as it was just read");
  return true;
}

bool Calibrator::execute(const Plan& plan, uint64_t& counted, uint64_t& completed) {
  struct Slot {
    uint64_t offset = 0;
    uint8_t* buffer = nullptr;
  };
  std::array<Slot, kMaxDepth> slots{};
  uint64_t issued = 0;
  auto prepare = [&](uint32_t s) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {  // full: submit what is there (at most kMaxDepth are in flight)
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    if (plan.write) {
      io_uring_prep_write(sqe, plan.fd, slots[s].buffer, plan.block, slots[s].offset);
    } else {
      io_uring_prep_read(sqe, plan.fd, slots[s].buffer, plan.block, slots[s].offset);
    }
    io_uring_sqe_set_data64(sqe, s);
    ++in_flight_;
  };
  auto issue = [&](uint32_t s) {
    plan.next(issued++, s, slots[s].offset, slots[s].buffer);
    prepare(s);
  };
  for (uint32_t s = 0; s < plan.depth && issued < plan.max_requests; ++s) issue(s);

  bool ok = true;
  auto last_progress = Clock::now();
  while (in_flight_ > 0) {
    __kernel_timespec wait{0, 100'000'000};
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &wait, nullptr);
    if (rc < 0 && rc != -ETIME && rc != -EINTR) return fail("io_uring: " + errno_text(-rc));
    const auto now = Clock::now();
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      --in_flight_;
      const auto s = static_cast<uint32_t>(io_uring_cqe_get_data64(cqe));
      const int result = cqe->res;
      if (result == -EAGAIN || result == -EINTR) {
        if (ok) prepare(s);  // the same request again
        continue;
      }
      if (result != static_cast<int>(plan.block)) {
        if (ok) {
          const std::string where = options_.path + ": " + plan.what + ": " + (plan.write ? "write" : "read") +
                                    " at offset " + std::to_string(slots[s].offset);
          fail(result < 0 ? where + ": " + errno_text(-result)
                          : where + " done in part (" + std::to_string(result) + " of " +
                                std::to_string(plan.block) + " bytes)");
        }
        ok = false;
        continue;
      }
      ++completed;
      if (now >= plan.count_from && now < plan.stop) ++counted;
      if (ok && now < plan.stop && issued < plan.max_requests) issue(s);
    }
    io_uring_cq_advance(&ring_, seen);
    if (seen > 0) {
      last_progress = now;
    } else if (now - last_progress > kStall) {
      return fail("the storage stalled: no request completed for " +
                  std::to_string(static_cast<int>(Seconds(now - last_progress).count())) + " s (" + plan.what +
                  ", " + std::to_string(in_flight_) + " in flight)");
    }
    if (ok && cancel_.load(std::memory_order_relaxed)) {
      fail("cancelled (iobandd is stopping)");
      ok = false;
    }
  }
  return ok;
}

bool Calibrator::run_workload(Workload& w, Seconds slot) {
  const bool in_place = w.write && block_device_;
  const Region& region = w.write ? write_ : read_;
  uint8_t* arena = w.write ? write_arena_ : read_arena_;
  const uint64_t blocks = region.length / w.block;
  Plan plan;
  char what[96];
  std::snprintf(what, sizeof what, "%u KiB %s %s at depth %u", w.block / 1024, w.sequential ? "sequential" : "random",
                w.write ? "writes" : "reads", w.depth);
  plan.what = what;
  plan.fd = region.fd;
  plan.write = w.write;
  plan.block = w.block;
  plan.depth = w.depth;
  if (in_place && !w.sequential) {
    plan.next = [&](uint64_t, uint32_t, uint64_t& offset, uint8_t*& buffer) {
      const uint64_t i = w.cursor++ % random_pool_.size();
      offset = random_pool_[i];
      buffer = write_arena_ + i * kSmallBlock;
    };
  } else if (in_place) {
    plan.next = [&](uint64_t, uint32_t, uint64_t& offset, uint8_t*& buffer) {
      const uint64_t at = w.cursor % kPoolBytes;
      w.cursor += w.block;
      offset = sequential_pool_ + at;
      buffer = write_arena_ + kPoolBytes + at;
    };
  } else if (w.sequential) {
    plan.next = [&](uint64_t, uint32_t s, uint64_t& offset, uint8_t*& buffer) {
      if (w.cursor + w.block > region.length) w.cursor = 0;
      offset = region.base + w.cursor;
      w.cursor += w.block;
      buffer = arena + uint64_t{s} * w.block;
    };
  } else {
    plan.next = [&](uint64_t, uint32_t s, uint64_t& offset, uint8_t*& buffer) {
      offset = region.base + random_() % blocks * w.block;
      buffer = arena + uint64_t{s} * w.block;
    };
  }
  // A tenth of the slot for the requests in flight to drain; of the rest,
  // the start (at most 50 ms) fills the queue and is not counted.
  const auto now = Clock::now();
  const Seconds busy = slot * 0.9;
  const Seconds warm = std::min(busy * 0.15, Seconds(0.05));
  plan.count_from = now + std::chrono::duration_cast<Clock::duration>(warm);
  plan.stop = now + std::chrono::duration_cast<Clock::duration>(busy);
  uint64_t counted = 0, completed = 0;
  if (!execute(plan, counted, completed)) return false;
  w.samples.push_back(static_cast<double>(counted) / Seconds(plan.stop - plan.count_from).count());
  return true;
}

bool Calibrator::measure() {
  std::vector<Workload> sweep;
  for (uint32_t depth : kSweepDepths) sweep.emplace_back("", false, false, kSmallBlock, depth);
  std::vector<Workload> figures = {
      {"rbps", false, true, kLargeBlock, kLargeDepth},
      {"rseqiops", false, true, kSmallBlock, kSmallDepth},
      {"wbps", true, true, kLargeBlock, kLargeDepth},
      {"wseqiops", true, true, kSmallBlock, kSmallDepth},
      {"wrandiops", true, false, kSmallBlock, kSmallDepth},
  };
  // Forward in even rounds, backward in odd ones: every workload's runs are
  // then centred on the same moments, so a drift of the storage's speed
  // during the measurement moves all figures alike rather than skewing
  // their ratios (or the sweep's shape, and with it the knee).
  std::vector<Workload*> order;
  for (Workload& w : sweep) order.push_back(&w);
  for (Workload& w : figures) order.push_back(&w);
  for (int round = 0; round < kRounds; ++round) {
    // The time left, shared by the runs left; at least 20 ms a run.
    const Seconds left = std::max(Seconds(deadline_ - Clock::now()), Seconds(0));
    const Seconds slot = std::max(left / static_cast<double>((kRounds - round) * order.size()), Seconds(0.02));
    for (Workload* w : order) {
      if (!run_workload(*w, slot)) return false;
    }
    std::reverse(order.begin(), order.end());
  }
  finish_model(sweep, figures);
  return report_.error.empty();
}

void Calibrator::finish_model(std::vector<Workload>& sweep, std::vector<Workload>& figures) {
  // The knee: where the sweep first reaches kKneeShare of its best rate.
  std::vector<double> rates;
  double best = 0;
  for (Workload& w : sweep) {
    rates.push_back(median(w.samples));
    best = std::max(best, rates.back());
    report_.sweep.push_back({"4k-randread@" + std::to_string(w.depth), w.depth, rates.back(), w.samples});
  }
  double knee = 0;
  const double target = kKneeShare * best;
  for (size_t i = 0; i < rates.size() && best > 0; ++i) {
    if (rates[i] < target) continue;
    if (i == 0) {
      knee = sweep[0].depth;
    } else {
      const double low = sweep[i - 1].depth, high = sweep[i].depth;
      knee = low + (high - low) * (target - rates[i - 1]) / (rates[i] - rates[i - 1]);
    }
    break;
  }
  auto figure = [&](const char* name) -> Workload& {
    for (Workload& w : figures) {
      if (std::strcmp(w.name, name) == 0) return w;
    }
    std::abort();
  };
  auto add = [&](const char* name, Workload* w, double value, double scale) {
    std::vector<double> samples;
    if (w != nullptr) {
      for (double s : w->samples) samples.push_back(s * scale);
      value = median(samples);
    }
    report_.figures.push_back({name, w ? w->depth : 0, std::round(value), samples});
    return std::round(value);
  };
  qos::DeviceModel& model = report_.model;
  model.read_bps = add("rbps", &figure("rbps"), 0, kLargeBlock);
  model.read_seq_iops = add("rseqiops", &figure("rseqiops"), 0, 1);
  model.read_rand_iops = add("rrandiops", nullptr, best, 1);
  model.write_bps = add("wbps", &figure("wbps"), 0, kLargeBlock);
  model.write_seq_iops = add("wseqiops", &figure("wseqiops"), 0, 1);
  model.write_rand_iops = add("wrandiops", &figure("wrandiops"), 0, 1);
  model.depth = static_cast<uint32_t>(std::clamp(std::ceil(knee), 1.0, static_cast<double>(qos::kMaxModelDepth)));
  // rrandiops: the median of every run at the depths of the plateau (those
  // whose median is within kKneeShare of the best), not the best median
  // alone, which the noise of a busy disk pushes up.
  std::vector<double> plateau;
  for (size_t i = 0; i < rates.size(); ++i) {
    if (best > 0 && rates[i] >= target) plateau.insert(plateau.end(), sweep[i].samples.begin(), sweep[i].samples.end());
    if (rates[i] == best) report_.figures[2].depth = sweep[i].depth;
  }
  report_.figures[2].samples = plateau;
  report_.figures[2].value = std::round(median(plateau));
  model.read_rand_iops = report_.figures[2].value;
  for (const CalibrationFigure& f : report_.figures) {
    if (f.value <= 0) {
      fail(f.name + " is 0: no request completed in its measurement runs");
      return;
    }
  }
  if (auto error = qos::model_error(model)) fail("the measured model cannot be right: " + *error);
}

}  // namespace

CalibrationReport calibrate(const CalibrationOptions& options, const std::atomic<bool>& cancel) {
  Calibrator calibrator(options, cancel);
  return calibrator.run();
}

}  // namespace ioband::io
