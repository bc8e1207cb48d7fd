#pragma once
// Export specifications (iobandd --export): parsed into values, errors as sentences.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nbd/access.h"

namespace ioband::control {

struct ExportSpec {
  std::string name;
  std::string path;
  uint64_t size = 0;
  bool read_only = false;
  std::string backend = "raw";  // raw | memory
  std::string format;           // "" (detected), raw or qcow2: the image format of a raw-backend export
  uint64_t cache_bytes = 0;     // a qcow2 image's L2 cache; 0: the default
  std::string description;
  int fault_errno = 0;
  double fault_rate = 1.0;
  uint32_t fault_delay_ms = 0;
  nbd::AccessList access;  // allow=, allow-ro=, deny= in order; empty: everyone
  // Faults only for requests overlapping [fault_offset, fault_offset +
  // fault_length); fault_length 0: everywhere.
  uint64_t fault_offset = 0;
  uint64_t fault_length = 0;
};

// Parses "NAME=PATH[,key[=value]...]"; ",," is a comma inside a value (as
// QEMU writes it), for a certificate DN in tls:NAME. Returns an error
// sentence or nothing.
std::optional<std::string> parse_export_spec(const std::string& text, ExportSpec& out);
// "4096", "64K", "1M", "2G", "1GiB": binary multiples.
std::optional<uint64_t> parse_size(const std::string& text);
// "EIO" or "5" to 5.
std::optional<int> parse_errno(const std::string& text);

}  // namespace ioband::control
