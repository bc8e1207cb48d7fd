#pragma once
// Every NBD request is checked here, once, before anything else looks at it
// (STYLE.md point 13), and every host errno becomes an NBD error here.

#include <cstdint>

#include "nbd/protocol.h"

namespace ioband::nbd {

// What the checks need to know about the connection and its export.
struct RequestContext {
  uint64_t export_size = 0;
  bool read_only = false;
  bool structured_replies = false;
  bool base_allocation = false;  // base:allocation was selected
};

struct Verdict {
  enum Kind : uint8_t { kServe, kReject, kDisconnect, kBrokenStream } kind = kServe;
  uint32_t error = kOk;         // with kReject: the NBD error to answer
  uint32_t payload = 0;         // bytes of data that follow the header on the wire
  const char* reason = nullptr;  // with kReject / kBrokenStream: for the log and error chunks
};

Verdict validate_request(const RequestHeader& request, const RequestContext& context) noexcept;

// A negative or positive host errno to the NBD error a client understands.
uint32_t nbd_error_from_errno(int err) noexcept;

const char* command_name(uint16_t type) noexcept;

}  // namespace ioband::nbd
