// The qcow2 format layer on buffers: headers as qemu-img writes them,
// hostile ones refused by name, L1/L2 entry decoding, compressed clusters.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <vector>

#include "io/qcow2_format.h"

namespace ioband::io::qcow2 {
namespace {

void put32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) b[at + i] = static_cast<uint8_t>(v);
}
void put64(std::vector<uint8_t>& b, size_t at, uint64_t v) { store_be64(b.data() + at, v); }

// A v3 header as `qemu-img create -f qcow2 x 1G` writes it: 64 KiB
// clusters, refcount table at cluster 1, L1 at cluster 3, 4 clusters long.
struct Image {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(65536);
  uint64_t file_size = 4 * 65536;
  Image() {
    put32(bytes, 0, kMagic);
    put32(bytes, 4, 3);
    put32(bytes, 20, 16);
    put64(bytes, 24, 1ull << 30);
    put32(bytes, 36, 2);  // 1 GiB / 512 MiB per L2 table
    put64(bytes, 40, 3 * 65536);
    put64(bytes, 48, 65536);
    put32(bytes, 56, 1);
    put32(bytes, 96, 4);
    put32(bytes, 100, 112);
  }
  std::string parse(Header& h) const { return parse_header(bytes.data(), bytes.size(), file_size, h); }
  std::string parse() const {
    Header h;
    return parse(h);
  }
};

TEST(Qcow2Header, ReadsWhatQemuImgWrites) {
  Image image;
  Header h;
  ASSERT_EQ(image.parse(h), "");
  EXPECT_EQ(h.version, 3u);
  EXPECT_EQ(h.cluster_size(), 65536u);
  EXPECT_EQ(h.size, 1ull << 30);
  EXPECT_EQ(h.l2_span(), 512ull << 20);
  EXPECT_EQ(check_features(h, true), "");
}

TEST(Qcow2Header, ReadsBackingNameAndFormat) {
  Image image;
  // extension: backing format "qcow2", then the end; the name after them
  put32(image.bytes, 112, kExtBackingFormat);
  put32(image.bytes, 116, 5);
  std::memcpy(image.bytes.data() + 120, "qcow2", 5);
  put64(image.bytes, 8, 256);
  put32(image.bytes, 16, 8);
  std::memcpy(image.bytes.data() + 256, "base.img", 8);
  Header h;
  ASSERT_EQ(image.parse(h), "");
  EXPECT_EQ(h.backing_file, "base.img");
  EXPECT_EQ(h.backing_format, "qcow2");
}

TEST(Qcow2Header, RefusesHostileHeadersByName) {
  struct Case {
    const char* what;
    void (*spoil)(Image&);
    const char* says;
  };
  const Case cases[] = {
      {"truncated", [](Image& i) { i.bytes.resize(40); }, "truncated header"},
      {"bad magic", [](Image& i) { i.bytes[0] = 'X'; }, "not a qcow2 image"},
      {"version 4", [](Image& i) { put32(i.bytes, 4, 4); }, "version 4"},
      {"cluster 4 MiB", [](Image& i) { put32(i.bytes, 20, 22); }, "outside 512 B..2 MiB"},
      {"cluster 256 B", [](Image& i) { put32(i.bytes, 20, 8); }, "outside 512 B..2 MiB"},
      {"encrypted", [](Image& i) { put32(i.bytes, 32, 2); }, "encrypted"},
      {"L1 beyond file", [](Image& i) { put64(i.bytes, 40, 1ull << 40); }, "beyond the end of the file"},
      {"L1 too small", [](Image& i) { put32(i.bytes, 36, 1); }, "too small for the virtual size"},
      {"L1 unaligned", [](Image& i) { put64(i.bytes, 40, 3 * 65536 + 8); }, "not cluster aligned"},
      {"L1 huge", [](Image& i) { put32(i.bytes, 36, 0x10000000); }, "larger than the limit"},
      {"refcount over L1", [](Image& i) { put64(i.bytes, 48, 3 * 65536); }, "refcount table overlaps the L1 table"},
      {"refcount over header", [](Image& i) { put64(i.bytes, 48, 0); }, "refcount table overlaps the header"},
      {"refcount empty", [](Image& i) { put32(i.bytes, 56, 0); }, "refcount table is empty"},
      {"refcount 8 bits", [](Image& i) { put32(i.bytes, 96, 3); }, "refcount width of 8 bits"},
      {"external data", [](Image& i) { put64(i.bytes, 72, kIncompatExternalData); }, "external data file"},
      {"extended L2", [](Image& i) { put64(i.bytes, 72, kIncompatExtendedL2); }, "extended L2"},
      {"zstd", [](Image& i) { put64(i.bytes, 72, kIncompatCompressionType); }, "compression type"},
      {"unknown bit", [](Image& i) { put64(i.bytes, 72, 1ull << 40); }, "unknown incompatible feature bit 40"},
      {"header length", [](Image& i) { put32(i.bytes, 100, 100); }, "header length"},
      {"64 KiB backing name", [](Image& i) { put64(i.bytes, 8, 512), put32(i.bytes, 16, 65536); },
       "backing file name of 65536 bytes"},
      {"backing name past cluster", [](Image& i) { put64(i.bytes, 8, 65530), put32(i.bytes, 16, 100); },
       "outside the header cluster"},
      {"extension past header", [](Image& i) { put32(i.bytes, 112, 0x1234), put32(i.bytes, 116, 0x7fffffff); },
       "runs past the header"},
      {"virtual size 2^62", [](Image& i) { put64(i.bytes, 24, 1ull << 62); }, "too large"},
  };
  for (const Case& c : cases) {
    Image image;
    c.spoil(image);
    const std::string why = image.parse();
    EXPECT_NE(why.find(c.says), std::string::npos) << c.what << ": " << why;
  }
}

TEST(Qcow2Header, DirtyCorruptAndSnapshotsArePolicy) {
  Image image;
  put64(image.bytes, 72, kIncompatDirty);
  Header h;
  ASSERT_EQ(image.parse(h), "");
  EXPECT_NE(check_features(h, false).find("dirty"), std::string::npos);
  put64(image.bytes, 72, kIncompatCorrupt);
  ASSERT_EQ(image.parse(h), "");
  EXPECT_NE(check_features(h, false).find("corrupt"), std::string::npos);
  put64(image.bytes, 72, 0);
  put32(image.bytes, 60, 1);
  put64(image.bytes, 64, 65536 * 4);
  ASSERT_EQ(image.parse(h), "");
  EXPECT_EQ(check_features(h, false), "");  // its active layer reads
  EXPECT_NE(check_features(h, true).find("internal snapshots"), std::string::npos);
}

TEST(Qcow2Entries, DecodesEveryKind) {
  Image image;
  Header h;
  ASSERT_EQ(image.parse(h), "");
  Mapping m;
  EXPECT_EQ(decode_l2(0, h, m), "");
  EXPECT_EQ(m.kind, Mapping::Kind::kUnallocated);
  EXPECT_EQ(decode_l2((1ull << 63) | 0x50000, h, m), "");
  EXPECT_EQ(m.kind, Mapping::Kind::kNormal);
  EXPECT_EQ(m.host, 0x50000u);
  EXPECT_EQ(decode_l2(1, h, m), "");
  EXPECT_EQ(m.kind, Mapping::Kind::kZero);
  EXPECT_EQ(m.host, 0u);
  EXPECT_EQ(decode_l2(0x60000 | 1, h, m), "");
  EXPECT_EQ(m.kind, Mapping::Kind::kZero);
  EXPECT_EQ(m.host, 0x60000u);
  EXPECT_NE(decode_l2(0x50200, h, m).find("not cluster aligned"), std::string::npos);
  EXPECT_NE(decode_l2(0x50000 | 2, h, m).find("reserved"), std::string::npos);
  // compressed, 64 KiB clusters: offset in bits 0..53, extra sectors in 54..61
  const uint64_t entry = (1ull << 62) | (3ull << 54) | 0x12345;
  EXPECT_EQ(decode_l2(entry, h, m), "");
  EXPECT_EQ(m.kind, Mapping::Kind::kCompressed);
  EXPECT_EQ(m.host, 0x12345u);
  EXPECT_EQ(m.compressed, 4u * 512 - 0x145);
  std::string error;
  EXPECT_EQ(decode_l1((1ull << 63) | 0x70000, h, error), 0x70000u);
  EXPECT_EQ(error, "");
  EXPECT_EQ(decode_l1(0x70200, h, error), 0u);
  EXPECT_NE(error.find("not cluster aligned"), std::string::npos);
}

TEST(Qcow2Compressed, InflatesARawDeflateStreamAndRefusesGarbage) {
  std::vector<uint8_t> cluster(65536);
  for (size_t i = 0; i < cluster.size(); ++i) cluster[i] = static_cast<uint8_t>(i * 7 / 5);
  z_stream z{};
  ASSERT_EQ(deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), Z_OK);
  std::vector<uint8_t> packed(70000);
  z.next_in = cluster.data();
  z.avail_in = static_cast<uInt>(cluster.size());
  z.next_out = packed.data();
  z.avail_out = static_cast<uInt>(packed.size());
  ASSERT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  packed.resize(z.total_out + 300);  // the slack of the last sector
  deflateEnd(&z);
  std::vector<uint8_t> out(65536);
  EXPECT_EQ(inflate_cluster(packed.data(), packed.size(), out.data(), out.size()), "");
  EXPECT_EQ(out, cluster);
  std::vector<uint8_t> garbage(1000, 0xff);
  EXPECT_NE(inflate_cluster(garbage.data(), garbage.size(), out.data(), out.size()), "");
  // a stream that ends short of a cluster
  EXPECT_NE(inflate_cluster(packed.data(), 10, out.data(), out.size()), "");
}

}  // namespace
}  // namespace ioband::io::qcow2
