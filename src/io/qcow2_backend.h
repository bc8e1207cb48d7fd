#pragma once
// The qcow2 backend's constructor, for the image factory (image.cc): the
// header parsed and checked, the L1 and refcount tables read, the image
// file opened as a raw backend, the backing image opened.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/backend.h"
#include "io/qcow2_format.h"

namespace ioband::io {

struct Qcow2Parts {
  std::string path;
  qcow2::Header header;
  std::vector<uint8_t> head;          // the image's first bytes (at least 512), as read
  std::vector<uint64_t> l1;           // host order
  std::vector<uint64_t> refcount_table;  // host order; read only when writable
  std::unique_ptr<Backend> file;      // the image file, raw
  int meta_fd = -1;                   // a second descriptor for block_status's reads; owned
  uint64_t file_size = 0;
  std::shared_ptr<Backend> backing;   // null: none
  uint64_t cache_bytes = 0;
  bool writable = false;
};

std::unique_ptr<Backend> make_qcow2_backend(Qcow2Parts parts);

}  // namespace ioband::io
