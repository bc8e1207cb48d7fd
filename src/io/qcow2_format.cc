#include "io/qcow2_format.h"

#include <zlib.h>

#include <cstring>
#include <vector>

namespace ioband::io::qcow2 {

namespace {

std::string hex(uint64_t v) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

// A table of length bytes at offset, checked against the file and the
// cluster alignment.
std::string check_table(const char* what, uint64_t offset, uint64_t length, uint64_t max_length, const Header& h,
                        uint64_t file_size) {
  if (offset % h.cluster_size() != 0) return std::string(what) + " offset " + hex(offset) + " is not cluster aligned";
  if (length > max_length) {
    return std::string(what) + " of " + std::to_string(length) + " bytes is larger than the limit of " +
           std::to_string(max_length);
  }
  if (offset > file_size || length > file_size - offset) {
    return std::string(what) + " at " + hex(offset) + " (" + std::to_string(length) +
           " bytes) lies beyond the end of the file (" + std::to_string(file_size) + " bytes)";
  }
  return {};
}

// The names of the incompatible bits we know, for the refusal.
std::string incompatible_name(int bit) {
  switch (bit) {
    case 0: return "dirty bit";
    case 1: return "corrupt bit";
    case 2: return "external data file";
    case 3: return "compression type other than zlib";
    case 4: return "extended L2 entries (subclusters)";
    default: return "unknown incompatible feature bit " + std::to_string(bit);
  }
}

}  // namespace

bool has_magic(const uint8_t* data, size_t length) noexcept { return length >= 4 && load_be32(data) == kMagic; }

std::string parse_header(const uint8_t* data, size_t length, uint64_t file_size, Header& h) {
  h = Header{};
  if (length < kHeaderV2Length || file_size < kHeaderV2Length) {
    return "truncated header: " + std::to_string(std::min<uint64_t>(length, file_size)) + " bytes, a qcow2 header has " +
           std::to_string(kHeaderV2Length) + " at least";
  }
  if (load_be32(data) != kMagic) return "not a qcow2 image (no QFI\\xfb magic)";
  h.version = load_be32(data + 4);
  if (h.version != 2 && h.version != 3) return "qcow2 version " + std::to_string(h.version) + " is not supported (2 or 3)";
  h.backing_file_offset = load_be64(data + 8);
  h.backing_file_size = load_be32(data + 16);
  h.cluster_bits = load_be32(data + 20);
  h.size = load_be64(data + 24);
  h.crypt_method = load_be32(data + 32);
  h.l1_size = load_be32(data + 36);
  h.l1_table_offset = load_be64(data + 40);
  h.refcount_table_offset = load_be64(data + 48);
  h.refcount_table_clusters = load_be32(data + 56);
  h.nb_snapshots = load_be32(data + 60);
  h.snapshots_offset = load_be64(data + 64);
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return "cluster size 2^" + std::to_string(h.cluster_bits) + " is outside 512 B..2 MiB";
  }
  const uint64_t cluster = h.cluster_size();
  if (h.version == 3) {
    if (length < kHeaderV3MinLength || file_size < kHeaderV3MinLength) {
      return "truncated header: a version 3 header has " + std::to_string(kHeaderV3MinLength) + " bytes at least";
    }
    h.incompatible_features = load_be64(data + 72);
    h.compatible_features = load_be64(data + 80);
    h.autoclear_features = load_be64(data + 88);
    h.refcount_order = load_be32(data + 96);
    h.header_length = load_be32(data + 100);
    if (h.header_length < kHeaderV3MinLength || h.header_length % 8 != 0 || h.header_length > cluster) {
      return "header length " + std::to_string(h.header_length) + " is invalid";
    }
    if (h.header_length > length) return "truncated header: it says " + std::to_string(h.header_length) + " bytes";
    if (h.header_length > kHeaderV3MinLength) h.compression_type = data[104];
  }
  if (h.crypt_method != 0) return "encrypted images are not supported (crypt_method " + std::to_string(h.crypt_method) + ")";
  if (h.refcount_order != 4) {
    return "refcount width of " + std::to_string(1u << std::min<uint32_t>(h.refcount_order, 31)) +
           " bits is not supported (16 only; qemu-img convert -o refcount_bits=16 makes one)";
  }
  for (int bit = 0; bit < 64; ++bit) {
    // Dirty and corrupt are policy (check_features); the rest we cannot read.
    if (bit <= 1 || !(h.incompatible_features & (1ull << bit))) continue;
    return incompatible_name(bit) + " is not supported";
  }
  if (h.compression_type != 0) return "compression type " + std::to_string(h.compression_type) + " is not supported (zlib only)";
  if (h.size > kMaxVirtualSize) return "virtual size " + std::to_string(h.size) + " is too large";

  // The tables lie inside the file, on cluster boundaries, and apart.
  const uint64_t l1_needed = (h.size + h.l2_span() - 1) / h.l2_span();
  if (h.l1_size < l1_needed) {
    return "L1 table of " + std::to_string(h.l1_size) + " entries is too small for the virtual size (" +
           std::to_string(l1_needed) + " needed)";
  }
  const uint64_t l1_bytes = uint64_t{h.l1_size} * 8;
  if (std::string e = check_table("L1 table", h.l1_table_offset, l1_bytes, kMaxL1Bytes, h, file_size); !e.empty()) return e;
  if (h.l1_size && h.l1_table_offset == 0) return "L1 table at offset 0 overlaps the header";
  const uint64_t rt_bytes = uint64_t{h.refcount_table_clusters} * cluster;
  if (h.refcount_table_clusters == 0) return "refcount table is empty";
  if (std::string e = check_table("refcount table", h.refcount_table_offset, rt_bytes, kMaxRefcountTableBytes, h, file_size);
      !e.empty()) {
    return e;
  }
  const Range header{0, cluster}, l1{h.l1_table_offset, l1_bytes}, refcount{h.refcount_table_offset, rt_bytes};
  if (refcount.overlaps(header)) return "refcount table overlaps the header";
  if (l1.overlaps(header)) return "L1 table overlaps the header";
  if (l1.overlaps(refcount)) return "refcount table overlaps the L1 table";
  if (h.nb_snapshots && h.snapshots_offset % cluster) return "snapshot table offset is not cluster aligned";

  // The backing file's name lies in the header cluster.
  if (h.backing_file_offset) {
    if (h.backing_file_size > kMaxBackingNameLength) {
      return "backing file name of " + std::to_string(h.backing_file_size) + " bytes is longer than " +
             std::to_string(kMaxBackingNameLength);
    }
    if (h.backing_file_offset > cluster || h.backing_file_size > cluster - h.backing_file_offset) {
      return "backing file name at " + hex(h.backing_file_offset) + " lies outside the header cluster";
    }
    if (h.backing_file_offset + h.backing_file_size > length) return "truncated header: the backing file name is cut";
    if (h.backing_file_offset < h.header_length) return "backing file name overlaps the header";
    h.backing_file.assign(reinterpret_cast<const char*>(data + h.backing_file_offset), h.backing_file_size);
    if (h.backing_file.empty()) return "backing file name is empty";
    if (h.backing_file.find('\0') != std::string::npos) return "backing file name holds a NUL byte";
  }

  // Header extensions: from the end of the header to the backing name or
  // the end of the cluster.
  uint64_t pos = h.header_length;
  const uint64_t end = std::min<uint64_t>(h.backing_file_offset ? h.backing_file_offset : cluster, length);
  while (pos + 8 <= end) {
    const uint32_t type = load_be32(data + pos);
    const uint32_t ext_length = load_be32(data + pos + 4);
    pos += 8;
    if (type == kExtEnd) break;
    if (ext_length > end - pos) return "header extension " + hex(type) + " runs past the header";
    const uint8_t* body = data + pos;
    switch (type) {
      case kExtBackingFormat:
        h.backing_format.assign(reinterpret_cast<const char*>(body), ext_length);
        if (h.backing_format != "raw" && h.backing_format != "qcow2" && h.backing_format != "file") {
          return "backing file format '" + h.backing_format.substr(0, 64) + "' is not supported (raw or qcow2)";
        }
        if (h.backing_format == "file") h.backing_format = "raw";
        break;
      case kExtExternalDataFile:
        return "external data file is not supported";
      case kExtEncryption:
        return "encryption is not supported";
      default:  // feature names, bitmaps (autoclear: see check_features), unknown: skipped
        break;
    }
    pos += (uint64_t{ext_length} + 7) & ~uint64_t{7};
  }
  return {};
}

std::string check_features(const Header& h, bool writable) {
  if (h.incompatible_features & kIncompatCorrupt) {
    return "the image is marked corrupt: repair it with qemu-img check -r all";
  }
  if (h.incompatible_features & kIncompatDirty) {
    // Only lazy refcounts leave it set: the refcounts may be stale, and
    // serving would let an allocation reuse a cluster still in use.
    return "the image is dirty (lazy refcounts, not closed cleanly): repair it with qemu-img check -r all";
  }
  if (writable && h.nb_snapshots) {
    return "writing an image with internal snapshots (" + std::to_string(h.nb_snapshots) +
           ") is not supported: export it readonly";
  }
  return {};
}

uint64_t decode_l1(uint64_t entry, const Header& h, std::string& error) noexcept {
  const uint64_t offset = entry & kOffsetMask;
  if ((entry & 0x7f000000000001ffull) != 0) {
    error = "L1 entry " + hex(entry) + " has reserved bits set";
    return 0;
  }
  if (offset % h.cluster_size()) {
    error = "L2 table offset " + hex(offset) + " is not cluster aligned";
    return 0;
  }
  return offset;
}

std::string decode_l2(uint64_t entry, const Header& h, Mapping& out) noexcept {
  out = Mapping{};
  if (entry & (1ull << 62)) {
    const unsigned shift = 62 - (h.cluster_bits - 8);
    const uint64_t sectors = ((entry >> shift) & ((uint64_t{1} << (h.cluster_bits - 8)) - 1)) + 1;
    out.kind = Mapping::Kind::kCompressed;
    out.host = entry & ((uint64_t{1} << shift) - 1);
    out.compressed = sectors * 512 - (out.host & 511);
    if (out.host == 0) return "compressed cluster at offset 0";
    return {};
  }
  if (entry & 0x3f000000000001feull) return "L2 entry " + hex(entry) + " has reserved bits set";
  out.host = entry & kOffsetMask;
  if (out.host % h.cluster_size()) return "cluster offset " + hex(out.host) + " is not cluster aligned";
  if (entry & 1) {
    out.kind = Mapping::Kind::kZero;
  } else if (out.host) {
    out.kind = Mapping::Kind::kNormal;
  }
  return {};
}

std::string inflate_cluster(const uint8_t* in, size_t in_length, uint8_t* out, size_t cluster_size) {
  z_stream z{};
  if (inflateInit2(&z, -12) != Z_OK) return "zlib initialisation failed";
  z.next_in = const_cast<uint8_t*>(in);
  z.avail_in = static_cast<uInt>(in_length);
  z.next_out = out;
  z.avail_out = static_cast<uInt>(cluster_size);
  const int rc = inflate(&z, Z_FINISH);
  const bool whole = z.avail_out == 0;
  inflateEnd(&z);
  // QEMU's writer may leave the last sector's slack after the stream: a
  // whole cluster out is what counts.
  if ((rc == Z_STREAM_END || rc == Z_BUF_ERROR || rc == Z_OK) && whole) return {};
  return "compressed cluster does not inflate to a whole cluster (zlib " + std::to_string(rc) + ")";
}

}  // namespace ioband::io::qcow2
