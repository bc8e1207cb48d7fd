// The transmission phase of a real Session: a handshake chosen by the first
// two bytes (the export's shape, then structured replies, base:allocation,
// EXPORT_NAME or GO, no-zeroes), then the rest of the input as the request
// stream (headers, WRITE payloads, anything). Each 28-byte window of the
// stream is also checked directly against decode_request and
// validate_request under every context, so the one request check is held
// to its contract whatever the session does with the stream. Asserted,
// besides no crash, no sanitizer report and no leak: the session answers and
// ends once the client has nothing more to say.
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_check.h"
#include "nbd/protocol.h"
#include "nbd/validate.h"
#include "nbd_driver.h"

using namespace ioband;

namespace {

void check_verdict(const uint8_t* bytes, const nbd::RequestContext& context) {
  const nbd::RequestHeader header = nbd::decode_request(bytes);
  uint8_t encoded[nbd::kRequestSize];
  nbd::encode_request(encoded, header);
  FUZZ_CHECK(std::memcmp(encoded, bytes, nbd::kRequestSize) == 0, "encode_request(decode_request(x)) == x");

  const nbd::Verdict verdict = nbd::validate_request(header, context);
  const bool modifies =
      header.type == nbd::kCmdWrite || header.type == nbd::kCmdTrim || header.type == nbd::kCmdWriteZeroes;
  switch (verdict.kind) {
    case nbd::Verdict::kBrokenStream:
      FUZZ_CHECK(header.magic != nbd::kRequestMagic, "only a bad magic breaks the stream");
      break;
    case nbd::Verdict::kDisconnect:
      FUZZ_CHECK(header.type == nbd::kCmdDisc, "only DISC disconnects");
      break;
    case nbd::Verdict::kReject:
      FUZZ_CHECK(verdict.error != nbd::kOk && verdict.reason, "a rejection has an error and a reason");
      // The payload to skip is what the client sends: a WRITE's data, if
      // anything (getting it wrong would desynchronise the stream).
      FUZZ_CHECK(verdict.payload == 0 || (header.type == nbd::kCmdWrite && verdict.payload == header.length),
                 "a rejected request skips exactly its payload");
      break;
    case nbd::Verdict::kServe:
      FUZZ_CHECK(header.magic == nbd::kRequestMagic, "served: good magic");
      FUZZ_CHECK(!(modifies && context.read_only), "served: no change to a read-only export");
      FUZZ_CHECK(verdict.payload == (header.type == nbd::kCmdWrite ? header.length : 0u), "served: its payload");
      if (header.type == nbd::kCmdFlush) {
        FUZZ_CHECK(header.offset == 0 && header.length == 0, "served FLUSH: no range");
      } else {
        FUZZ_CHECK(header.length > 0 && header.offset <= context.export_size &&
                       header.length <= context.export_size - header.offset,
                   "served: within the export");
      }
      if (header.type == nbd::kCmdRead || header.type == nbd::kCmdWrite) {
        FUZZ_CHECK(header.length <= nbd::kMaxPayload, "served: at most 32 MiB");
      }
      if (header.type == nbd::kCmdBlockStatus) FUZZ_CHECK(context.base_allocation, "served BLOCK_STATUS: negotiated");
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const fuzz::ServerShape shape = fuzz::shape_from_byte(data[0]);
  const uint8_t handshake = data[1];
  const bool structured = handshake & 1, base_allocation = handshake & 2, export_name = handshake & 4,
             no_zeroes = handshake & 8;
  data += 2;
  size -= 2;

  for (size_t at = 0; at + nbd::kRequestSize <= size; at += nbd::kRequestSize) {
    for (unsigned variant = 0; variant < 8; ++variant) {
      nbd::RequestContext context;
      context.export_size = variant & 4 ? fuzz::kExportSize : (uint64_t{1} << 63) + 4096;
      context.read_only = variant & 1;
      context.structured_replies = variant & 2;
      context.base_allocation = variant & 6;
      check_verdict(data + at, context);
    }
  }

  std::string stream = fuzz::client_flags(nbd::kClientFixedNewstyle | (no_zeroes ? nbd::kClientNoZeroes : 0));
  if (structured) stream += fuzz::option(nbd::kOptStructuredReply, "");
  if (base_allocation) {
    stream += fuzz::meta_context_option(nbd::kOptSetMetaContext, fuzz::kExportName, {"base:allocation"});
  }
  stream += export_name ? fuzz::option(nbd::kOptExportName, fuzz::kExportName)
                        : fuzz::go_option(nbd::kOptGo, fuzz::kExportName);
  stream.append(reinterpret_cast<const char*>(data), size);
  const auto run =
      fuzz::run_session(shape, reinterpret_cast<const uint8_t*>(stream.data()), stream.size());
  FUZZ_CHECK(run.closed, "the session ended");
  return 0;
}
