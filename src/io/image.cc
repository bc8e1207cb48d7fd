// Opening images: format detection, qcow2 headers and backing chains,
// the backing files shared between images (see image.h).

#include "io/image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "io/log.h"
#include "io/qcow2_backend.h"
#include "io/qcow2_format.h"

namespace ioband::io {

namespace {

using qcow2::Header;

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
  Qcow2Parts parts;
  parts.path = path;
  parts.writable = !options.read_only;
  parts.cache_bytes = options.cache_bytes;
  auto fail = [&](const std::string& why) -> std::unique_ptr<Backend> {
    if (parts.meta_fd >= 0) close(parts.meta_fd);
    error = path + ": " + why;
    return nullptr;
  };
  parts.meta_fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (parts.meta_fd < 0) return fail(std::strerror(errno));
  const int fd = parts.meta_fd;
  struct stat st{};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return fail("a qcow2 image must be a regular file");
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  parts.file_size = static_cast<uint64_t>(st.st_size);
  parts.head.resize(std::min<uint64_t>(parts.file_size, 1u << qcow2::kMaxClusterBits));
  if (pread(fd, parts.head.data(), parts.head.size(), 0) != static_cast<ssize_t>(parts.head.size())) {
    return fail("cannot read the header");
  }
  Header& h = parts.header;
  std::string why = qcow2::parse_header(parts.head.data(), parts.head.size(), parts.file_size, h);
  if (why.empty()) why = qcow2::check_features(h, parts.writable);
  if (!why.empty()) return fail(why);
  auto read_table = [&](uint64_t offset, uint64_t entries, std::vector<uint64_t>& out) {
    std::vector<uint8_t> raw(entries * 8);
    if (!raw.empty() && pread(fd, raw.data(), raw.size(), static_cast<off_t>(offset)) != static_cast<ssize_t>(raw.size())) {
      return false;
    }
    out.resize(entries);
    for (size_t i = 0; i < out.size(); ++i) out[i] = qcow2::load_be64(raw.data() + i * 8);
    return true;
  };
  if (!read_table(h.l1_table_offset, h.l1_size, parts.l1)) return fail("cannot read the L1 table");
  if (parts.writable &&
      !read_table(h.refcount_table_offset, uint64_t{h.refcount_table_clusters} * h.cluster_size() / 8, parts.refcount_table)) {
    return fail("cannot read the refcount table");
  }

  chain.push_back({st.st_dev, st.st_ino});
  if (!h.backing_file.empty()) {
    parts.backing = open_backing(options, h, chain, error);
    if (!parts.backing) {
      close(parts.meta_fd);
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
  parts.file = open_raw_backend(raw, raw_error);
  if (!parts.file) {
    close(parts.meta_fd);
    error = raw_error;
    return nullptr;
  }
  if (parts.writable && h.version >= 3 && h.autoclear_features) {
    // We keep no bitmaps or raw external data in step: as the spec says,
    // a writer that does not know an autoclear feature clears its bit.
    const int wfd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    uint8_t zero[8] = {};
    if (wfd < 0 || pwrite(wfd, zero, 8, 88) != 8 || fdatasync(wfd) != 0) {
      if (wfd >= 0) close(wfd);
      return fail(std::string("cannot clear the autoclear feature bits: ") + std::strerror(errno));
    }
    close(wfd);
    std::memset(parts.head.data() + 88, 0, 8);
    h.autoclear_features = 0;
  }
  return make_qcow2_backend(std::move(parts));
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
