// qcow2 headers (src/io/qcow2_format.cc): the input is the image's first
// bytes; bytes 0-7 of the input also stand for an L2 entry and an L1 entry.
// Asserted, besides no crash and no sanitizer report: a refusal is a
// sentence; an accepted header's tables lie inside the file, on cluster
// boundaries, apart from each other and from the header cluster; its
// backing name fits in the header cluster; a decoded normal cluster is
// cluster aligned.
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "io/qcow2_format.h"

using namespace ioband::io;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qcow2::Header h;
  // The file is as long as the input, or much longer (tables may lie past
  // the bytes read): both are checked.
  for (uint64_t file_size : {static_cast<uint64_t>(size), uint64_t{1} << 40}) {
    const std::string why = qcow2::parse_header(data, size, file_size, h);
    if (!why.empty()) continue;
    const uint64_t cs = h.cluster_size();
    FUZZ_CHECK(cs >= 512 && cs <= (2u << 20), "cluster size in range");
    const qcow2::Range header{0, cs}, l1{h.l1_table_offset, uint64_t{h.l1_size} * 8},
        refcount{h.refcount_table_offset, uint64_t{h.refcount_table_clusters} * cs};
    FUZZ_CHECK(l1.offset % cs == 0 && refcount.offset % cs == 0, "tables are cluster aligned");
    FUZZ_CHECK(l1.offset + l1.length <= file_size && refcount.offset + refcount.length <= file_size,
               "tables inside the file");
    FUZZ_CHECK(!l1.overlaps(refcount) && !l1.overlaps(header) && !refcount.overlaps(header), "tables apart");
    FUZZ_CHECK(h.l1_size * h.l2_span() >= h.size, "the L1 table maps the whole disk");
    FUZZ_CHECK(h.backing_file.size() <= qcow2::kMaxBackingNameLength, "backing name bounded");
    (void)qcow2::check_features(h, true);
    if (size >= 8) {
      qcow2::Mapping m;
      if (qcow2::decode_l2(qcow2::load_be64(data), h, m).empty() && m.kind == qcow2::Mapping::Kind::kNormal) {
        FUZZ_CHECK(m.host % cs == 0, "a normal cluster is aligned");
      }
      std::string error;
      const uint64_t table = qcow2::decode_l1(qcow2::load_be64(data), h, error);
      FUZZ_CHECK(table % cs == 0, "an L2 table is aligned");
    }
  }
  if (size > 16) {
    uint8_t out[4096];
    (void)qcow2::inflate_cluster(data, size, out, sizeof out);
  }
  return 0;
}
