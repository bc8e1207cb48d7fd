#pragma once
// The qcow2 format (QEMU's docs/interop/qcow2.txt), as a pure layer: the
// header and its extensions parsed and checked from bytes, the two-level
// map's arithmetic and the decoding of its entries. No I/O here, so every
// rule can be tested on buffers (tests/unit/io_qcow2_format_test.cc) and
// fuzzed (fuzz/qcow2_header_fuzz.cc).
//
// A guest offset g maps through two tables of 64-bit big-endian entries:
//
//   l2_entries = cluster_size / 8
//   L1[g / (cluster_size * l2_entries)] -> host offset of an L2 table
//   L2[(g / cluster_size) % l2_entries] -> host offset of the data cluster
//   host = cluster + g % cluster_size
//
// An L2 entry is unallocated (read from the backing file, or zeroes),
// zero (reads as zeroes, v3), normal (a host cluster) or compressed (a run
// of 512-byte sectors holding the cluster deflated, zlib raw stream).

#include <cstdint>
#include <string>

namespace ioband::io::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kMinClusterBits = 9;  // 512 B
inline constexpr uint32_t kMaxClusterBits = 21; // 2 MiB
inline constexpr uint32_t kHeaderV2Length = 72;
inline constexpr uint32_t kHeaderV3MinLength = 104;
// QEMU's own bounds: a longer backing name or a larger table is not an image
// qemu-img makes, and reading it would let a file make us allocate gigabytes.
inline constexpr uint32_t kMaxBackingNameLength = 1023;
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;
inline constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;
inline constexpr uint64_t kMaxVirtualSize = 1ull << 61;  // offsets stay far from overflow
// The top byte of 0x00ffffffffffffff: host offsets use bits 9..55.
inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;

// Feature bits (header fields incompatible_features, compatible_features,
// autoclear_features).
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatExternalData = 1ull << 2;
inline constexpr uint64_t kIncompatCompressionType = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearRawExternal = 1ull << 1;

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureNames = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtEncryption = 0x0537be77;
inline constexpr uint32_t kExtExternalDataFile = 0x44415441;

inline uint64_t load_be64(const uint8_t* p) noexcept {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}
inline uint32_t load_be32(const uint8_t* p) noexcept {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline void store_be64(uint8_t* p, uint64_t v) noexcept {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

struct Header {
  uint32_t version = 0;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 0;
  uint64_t size = 0;  // virtual size in bytes
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;  // entries
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kHeaderV2Length;
  uint8_t compression_type = 0;  // 0: zlib
  // From the extensions and the backing-name field:
  std::string backing_file;
  std::string backing_format;  // "" if the image does not say

  uint64_t cluster_size() const noexcept { return uint64_t{1} << cluster_bits; }
  uint64_t l2_entries() const noexcept { return cluster_size() / 8; }
  // Guest bytes covered by one L1 entry (one L2 table).
  uint64_t l2_span() const noexcept { return cluster_size() * l2_entries(); }
};

// True if the bytes start with the qcow2 magic (what detection looks at).
bool has_magic(const uint8_t* data, size_t length) noexcept;

// Parses and checks the header from the image's first bytes (at least the
// first cluster, or the whole file if shorter; data may be shorter when
// the file is). file_size bounds every table. Returns "" or a sentence
// naming what is wrong or unsupported. Only structure is checked here: the
// feature policy (dirty, corrupt, snapshots when writing) is check_features.
std::string parse_header(const uint8_t* data, size_t length, uint64_t file_size, Header& out);

// What ioband refuses of a well-formed header, by feature name. writable:
// the image is to be written (internal snapshots refused then, and unknown
// autoclear bits are the writer's to clear).
std::string check_features(const Header& h, bool writable);

// Which host range [offset, offset+length) a table occupies, for the
// overlap checks of parse_header and of the hostile-image tests.
struct Range {
  uint64_t offset, length;
  bool overlaps(const Range& o) const noexcept {
    return length && o.length && offset < o.offset + o.length && o.offset < offset + length;
  }
};

// A decoded L2 entry.
struct Mapping {
  enum class Kind : uint8_t { kUnallocated, kZero, kNormal, kCompressed } kind = Kind::kUnallocated;
  uint64_t host = 0;        // kNormal: cluster start; kZero: preallocated cluster or 0; kCompressed: byte offset
  uint64_t compressed = 0;  // kCompressed: bytes to read from host
};

// Decodes entry (host order). Returns "" or why the entry is invalid
// (an offset not aligned to a cluster, reserved bits set).
std::string decode_l2(uint64_t entry, const Header& h, Mapping& out) noexcept;
// The L2 table offset of an L1 entry, 0 if none; sets error on bad bits.
uint64_t decode_l1(uint64_t entry, const Header& h, std::string& error) noexcept;

// Inflates a compressed cluster (raw deflate, as QEMU writes it) into
// out[0, cluster_size). Returns "" or why it failed.
std::string inflate_cluster(const uint8_t* in, size_t in_length, uint8_t* out, size_t cluster_size);

}  // namespace ioband::io::qcow2
