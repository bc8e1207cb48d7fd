// The NBD handshake (option phase) of a real Session: the input's first byte
// picks the export's shape (nbd_driver.h), the rest is what the client sends
// after the greeting: its flags, then options. Asserted, besides no crash,
// no sanitizer report and no leak: the server greets first, every option
// reply the server sends before transmission is well formed and answers the
// option asked, and the session ends once the client has nothing more to say
// (no hang, nothing left behind).
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "nbd/protocol.h"
#include "nbd_driver.h"

using namespace ioband;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto run = fuzz::run_session(fuzz::shape_from_byte(data[0]), data + 1, size - 1);
  const auto* out = reinterpret_cast<const uint8_t*>(run.output.data());
  FUZZ_CHECK(run.output.size() >= 18, "the server greets");
  FUZZ_CHECK(nbd::load64(out) == nbd::kNbdMagic && nbd::load64(out + 8) == nbd::kOptionMagic, "NBDMAGIC IHAVEOPT");
  // Walk the option replies (the export info of EXPORT_NAME, or
  // transmission replies, end the walk: they have other shapes).
  size_t at = 18;
  while (run.output.size() - at >= 20 && nbd::load64(out + at) == nbd::kOptionReplyMagic) {
    const uint32_t type = nbd::load32(out + at + 12);
    const uint32_t length = nbd::load32(out + at + 16);
    FUZZ_CHECK(length <= run.output.size() - at - 20, "an option reply is sent whole");
    FUZZ_CHECK(type == nbd::kRepAck || type == nbd::kRepServer || type == nbd::kRepInfo ||
                   type == nbd::kRepMetaContext || (type & nbd::kRepErrorBit),
               "a known option reply type");
    if (type == nbd::kRepAck) FUZZ_CHECK(length == 0, "ACK carries no data");
    at += 20 + length;
  }
  return 0;
}
