#pragma once
// Disk images by format: raw files and block devices, and qcow2 images with
// their backing chains. One factory opens a path as a Backend, detecting or
// forcing the format.
//
// Detection (format ""): a regular file that starts with the qcow2 magic
// (QFI\xfb) is qcow2, and is refused with the reason if its header is not
// valid (format=raw serves it as raw: only the operator can say so);
// anything else is raw. A raw image a guest writes could otherwise turn
// into qcow2 at the next start and name any host file as its backing file,
// so, as QEMU does for probed raw images, a raw image served by detection
// refuses (EPERM) a write at offset 0 that starts with the magic.
// format=raw serves the file as raw with no such check; format=qcow2
// refuses a file that is not qcow2. ioband devices (iobandctl create) keep
// the format found at creation in
// state.json, so a restart never detects again.

#include <cstdint>
#include <memory>
#include <string>

#include "io/backend.h"

namespace ioband::io {

// The L2 cache of one qcow2 image (each image of a chain has its own):
// 4 MiB maps 32 GiB of a 64 KiB-cluster image; set with cache=BYTES.
inline constexpr uint64_t kDefaultQcow2CacheBytes = 4ull << 20;

struct ImageOptions {
  std::string path;
  std::string format;  // "", "raw" or "qcow2"
  uint64_t size = 0;   // raw only: 0 for the whole file or device
  bool read_only = false;
  bool direct = true;
  bool lock = true;
  uint64_t cache_bytes = kDefaultQcow2CacheBytes;
  // Backing files are shared between images opened with the same key (the
  // index of the reactor that serves them: a backend is used by one thread).
  int share_key = 0;
};

// "raw" or "qcow2" for path, from its first bytes; "" and error if unreadable.
std::string detect_format(const std::string& path, std::string& error);

// Opens the image; nullptr and error (a sentence naming the file) on failure.
// format_out, if given, receives the format served.
std::unique_ptr<Backend> open_image_backend(const ImageOptions& options, std::string& error,
                                            std::string* format_out = nullptr);

}  // namespace ioband::io
